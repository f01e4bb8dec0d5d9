//! CSV (RFC 4180 quoting, any single-byte delimiter, header or not) in two passes.

use std::path::Path;

use csv::{ByteRecord, Reader, ReaderBuilder};
use mlmesh_protocol::data::{ColumnInfo, ColumnType};

use super::column::Inference;
use super::sink::Sink;
use super::{IngestError, Options, batch_rows, check_names, invalid};

const DELIMITERS: [u8; 4] = [b',', b';', b'\t', b'|'];
/// Records of the sample compared when detecting the delimiter.
const SNIFF_RECORDS: usize = 50;

pub fn ingest(
    input: &Path,
    output: &Path,
    options: &Options,
    sample: &[u8],
) -> Result<Vec<ColumnInfo>, IngestError> {
    let delimiter = options
        .delimiter
        .unwrap_or_else(|| detect_delimiter(sample));
    let is_null = |cell: &str| options.null_tokens.iter().any(|t| t == cell);

    // Pass 1: shape, encoding and types.
    let mut reader = open(input, delimiter)?;
    let mut record = ByteRecord::new();
    let mut first: Option<Vec<String>> = None;
    let mut inference = Vec::new();
    let mut rows_after_first = 0u64;
    while read(&mut reader, &mut record)? {
        let line = line_of(&record);
        let Some(first) = &first else {
            let fields = utf8_fields(&record, line)?;
            if fields.len() > options.max_columns {
                return Err(invalid(format!(
                    "the file has {} columns; the limit is {} (data.max_columns)",
                    fields.len(),
                    options.max_columns
                )));
            }
            inference = vec![Inference::default(); fields.len()];
            first = Some(fields);
            continue;
        };
        check_width(&record, first.len(), line)?;
        for (field, column) in record.iter().zip(&mut inference) {
            let text = utf8(field, line)?.trim();
            if !is_null(text) {
                column.text(text);
            }
        }
        rows_after_first += 1;
    }
    let first = first.ok_or_else(|| invalid("the file is empty"))?;

    let header = options
        .header
        .unwrap_or_else(|| looks_like_header(&first, &inference, &is_null));
    let names: Vec<String> = if header {
        first.iter().map(|n| n.trim().to_string()).collect()
    } else {
        for (text, column) in first.iter().zip(&mut inference) {
            let text = text.trim();
            if !is_null(text) {
                column.text(text);
            }
        }
        (1..=first.len()).map(|i| format!("column_{i}")).collect()
    };
    let rows = rows_after_first + u64::from(!header);
    if rows == 0 {
        return Err(invalid("the file has a header but no rows"));
    }
    check_names(&names, options)?;
    let types: Vec<ColumnType> = names
        .iter()
        .zip(&inference)
        .map(|(name, inferred)| {
            options
                .types
                .get(name)
                .copied()
                .unwrap_or(inferred.resolve())
        })
        .collect();

    // Pass 2: typed values and statistics into Parquet.
    let mut sink = Sink::create(
        output,
        names.into_iter().zip(types).collect(),
        batch_rows(options, first.len()),
    )?;
    let mut reader = open(input, delimiter)?;
    if header {
        read(&mut reader, &mut record)?;
    }
    while read(&mut reader, &mut record)? {
        let line = line_of(&record);
        for (field, column) in record.iter().zip(&mut sink.columns) {
            let raw = utf8(field, line)?;
            let text = raw.trim();
            if is_null(text) {
                column.null();
            } else {
                column.text(raw, text, line)?;
            }
        }
        sink.end_row()?;
    }
    sink.finish()
}

fn open(path: &Path, delimiter: u8) -> Result<Reader<std::fs::File>, IngestError> {
    ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .from_path(path)
        .map_err(|e| IngestError::Io(std::io::Error::other(e.to_string())))
}

fn read(reader: &mut Reader<std::fs::File>, record: &mut ByteRecord) -> Result<bool, IngestError> {
    reader
        .read_byte_record(record)
        .map_err(|e| invalid(format!("unreadable CSV: {e}")))
}

fn line_of(record: &ByteRecord) -> u64 {
    record.position().map_or(0, csv::Position::line)
}

fn utf8(field: &[u8], line: u64) -> Result<&str, IngestError> {
    std::str::from_utf8(field).map_err(|_| {
        invalid(format!(
            "line {line}: the bytes are not valid UTF-8 text; re-encode the file as UTF-8"
        ))
    })
}

fn utf8_fields(record: &ByteRecord, line: u64) -> Result<Vec<String>, IngestError> {
    record
        .iter()
        .map(|f| utf8(f, line).map(str::to_string))
        .collect()
}

fn check_width(record: &ByteRecord, width: usize, line: u64) -> Result<(), IngestError> {
    if record.len() != width {
        return Err(invalid(format!(
            "line {line} has {} fields but the first row has {width}; every row needs the same number of fields",
            record.len()
        )));
    }
    Ok(())
}

/// Picks the candidate delimiter that splits the sample's records into the same number (> 1)
/// of fields, the most fields winning; `,` when none does (a one-column file).
pub fn detect_delimiter(sample: &[u8]) -> u8 {
    // Only whole lines: the sample may end mid-record.
    let whole = sample
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(sample, |i| &sample[..=i]);
    let mut best = (b',', 1);
    for delimiter in DELIMITERS {
        let mut reader = ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(false)
            .flexible(true)
            .from_reader(whole);
        let widths: Vec<usize> = reader
            .byte_records()
            .take(SNIFF_RECORDS)
            .map_while(Result::ok)
            .map(|r| r.len())
            .collect();
        if let Some(&width) = widths.first()
            && width > best.1
            && widths.iter().all(|w| *w == width)
        {
            best = (delimiter, width);
        }
    }
    best.0
}

/// The first row is a header when one of its cells does not fit the type the rest of its
/// column has (a name above numbers), or when every column is text (then nothing tells a
/// header from data, and files with a header are the common case).
fn looks_like_header(
    first: &[String],
    inference: &[Inference],
    is_null: &impl Fn(&str) -> bool,
) -> bool {
    let mut data_evidence = false;
    for (cell, column) in first.iter().zip(inference) {
        let column_type = column.resolve();
        if column_type == ColumnType::String {
            continue;
        }
        let cell = cell.trim();
        if is_null(cell) || Inference::fits(column_type, cell) {
            data_evidence = true;
        } else {
            return true;
        }
    }
    !data_evidence
}
