//! CSV (RFC 4180 quoting, any single-byte delimiter, header or not).
//!
//! Types are guessed from the first 64 KiB and the file is written in one pass. Should a later
//! value contradict a guess (an integer column meets `2.5`), or a column that was empty in the
//! sample turn out to hold typed values, the work is redone exactly: a pass that infers types
//! over the whole file, then the writing pass. The result is the same either way; the common
//! case parses the file once instead of twice.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use csv::{Reader, ReaderBuilder, StringRecord};
use mlmesh_protocol::data::{ColumnInfo, ColumnType};

use super::column::Inference;
use super::growing::Growing;
use super::sink::Sink;
use super::{IngestError, Options, batch_rows, check_names, invalid, resolve_types};

const DELIMITERS: [u8; 4] = [b',', b';', b'\t', b'|'];
/// Records handed from the parsing thread to the typing loop at a time.
const CHUNK: usize = 4_096;
/// Records of the sample compared when detecting the delimiter.
const SNIFF_RECORDS: usize = 50;

/// The missing-value tokens, with a length check first: most cells are longer than any token.
struct NullTokens<'a> {
    tokens: &'a [String],
    longest: usize,
}

impl<'a> NullTokens<'a> {
    fn new(tokens: &'a [String]) -> Self {
        Self {
            tokens,
            longest: tokens.iter().map(String::len).max().unwrap_or(0),
        }
    }
    fn contains(&self, cell: &str) -> bool {
        cell.len() <= self.longest && self.tokens.iter().any(|t| t == cell)
    }
}

/// Everything decided before the writing pass.
struct Plan<'a> {
    delimiter: u8,
    header: bool,
    names: Vec<String>,
    nulls: NullTokens<'a>,
}

pub fn ingest(
    input: &Path,
    output: &Path,
    options: &Options,
    sample: &[u8],
    growing: Option<&Arc<Growing>>,
) -> Result<Vec<ColumnInfo>, IngestError> {
    let complete = || growing.map_or(Ok(()), |g| g.wait_complete());
    let delimiter = options
        .delimiter
        .unwrap_or_else(|| detect_delimiter(sample));
    let nulls = NullTokens::new(&options.null_tokens);
    let sample_records = sample_records(sample, delimiter);
    let first = match sample_records.first() {
        Some(first) => first.clone(),
        // Not one whole line in the sample (a giant first line): read it from the file.
        None => {
            complete()?;
            first_record(input, delimiter)?
        }
    };
    check_width_limit(first.len(), options)?;
    let mut guess = vec![Inference::default(); first.len()];
    for record in sample_records
        .iter()
        .skip(1)
        .filter(|r| r.len() == first.len())
    {
        observe(&mut guess, record, &nulls);
    }
    let header = options
        .header
        .unwrap_or_else(|| looks_like_header(&first, &guess, &nulls));
    let names: Vec<String> = if header {
        first.iter().map(|n| n.trim().to_string()).collect()
    } else {
        observe(&mut guess, &first, &nulls);
        (1..=first.len()).map(|i| format!("column_{i}")).collect()
    };
    check_names(&names, options)?;
    let plan = Plan {
        delimiter,
        header,
        names,
        nulls,
    };
    let guessed = resolve_types(&plan.names, &guess, options);
    if let Some(columns) = write(input, growing, output, options, &plan, &guessed, true)? {
        return Ok(columns);
    }
    complete()?;
    let inferred = infer(input, &plan)?;
    let exact = resolve_types(&plan.names, &inferred, options);
    write(input, None, output, options, &plan, &exact, false)?
        .ok_or_else(|| IngestError::Parquet("exact pass asked for another pass".into()))
}

fn observe(inference: &mut [Inference], record: &StringRecord, nulls: &NullTokens<'_>) {
    for (field, column) in record.iter().zip(inference) {
        let text = field.trim();
        if !nulls.contains(text) {
            column.text(text);
        }
    }
}

/// Infers every column's type over the whole file (the exact path).
fn infer(input: &Path, plan: &Plan<'_>) -> Result<Vec<Inference>, IngestError> {
    let mut reader = open(input, plan.delimiter)?;
    let mut record = StringRecord::new();
    let mut inference = vec![Inference::default(); plan.names.len()];
    if plan.header {
        read(&mut reader, &mut record)?;
    }
    while read(&mut reader, &mut record)? {
        check_width(&record, plan.names.len())?;
        observe(&mut inference, &record, &plan.nulls);
    }
    Ok(inference)
}

/// The writing pass. With `speculative`, a value that contradicts a guessed (not overridden)
/// type, or a text column whose values all turn out to be typed, returns `None`: redo exactly.
fn write(
    input: &Path,
    growing: Option<&Arc<Growing>>,
    output: &Path,
    options: &Options,
    plan: &Plan<'_>,
    types: &[ColumnType],
    speculative: bool,
) -> Result<Option<Vec<ColumnInfo>>, IngestError> {
    let width = plan.names.len();
    let overridden: Vec<bool> = plan
        .names
        .iter()
        .map(|n| options.types.contains_key(n))
        .collect();
    // Text columns guessed from the sample keep inferring, to catch "empty in the sample".
    let mut text_check: Vec<Option<Inference>> = types
        .iter()
        .zip(&overridden)
        .map(|(ty, o)| (speculative && *ty == ColumnType::String && !o).then(Inference::default))
        .collect();
    let mut sink = Sink::create(
        output,
        plan.names
            .iter()
            .cloned()
            .zip(types.iter().copied())
            .collect(),
        batch_rows(options, width),
    )?;
    let source: Box<dyn Read + Send> = match growing {
        Some(growing) => Box::new(growing.reader(input)?),
        None => Box::new(std::fs::File::open(input)?),
    };
    let records = spawn_reader(source, plan.delimiter, plan.header, width)?;
    let mut rows = 0u64;
    for chunk in &records.chunks {
        let (chunk, filled) = chunk?;
        for record in &chunk[..filled] {
            for (index, (raw, column)) in record.iter().zip(&mut sink.columns).enumerate() {
                let text = raw.trim();
                if plan.nulls.contains(text) {
                    column.null();
                    continue;
                }
                if let Some(inference) = &mut text_check[index] {
                    inference.text(text);
                }
                if !column.try_text(raw, text) {
                    if speculative && !overridden[index] {
                        return Ok(None);
                    }
                    return Err(column.mismatch(text, line_of(record)));
                }
            }
            sink.end_row()?;
        }
        rows += filled as u64;
        // Hand the buffers back for reuse; if the reader is gone, they are simply dropped.
        let _ = records.recycle.try_send(chunk);
    }
    if rows == 0 {
        return Err(invalid("the file has a header but no rows"));
    }
    if text_check
        .iter()
        .flatten()
        .any(|i| i.resolve() != ColumnType::String)
    {
        return Ok(None);
    }
    sink.finish().map(Some)
}

/// Chunks of parsed records (and how many of each chunk's records are filled), from a thread
/// that parses while the caller types the previous chunk; spent chunks go back for reuse.
struct Records {
    chunks: std::sync::mpsc::Receiver<Result<(Vec<StringRecord>, usize), IngestError>>,
    recycle: std::sync::mpsc::SyncSender<Vec<StringRecord>>,
}

fn spawn_reader(
    source: Box<dyn Read + Send>,
    delimiter: u8,
    skip_header: bool,
    width: usize,
) -> Result<Records, IngestError> {
    let mut reader = reader(source, delimiter);
    let (send, chunks) = std::sync::mpsc::sync_channel(2);
    let (recycle, spent) = std::sync::mpsc::sync_channel::<Vec<StringRecord>>(4);
    std::thread::Builder::new()
        .name("csv-reader".into())
        .spawn(move || {
            let mut scratch = StringRecord::new();
            if skip_header && let Err(error) = read(&mut reader, &mut scratch) {
                let _ = send.send(Err(error));
                return;
            }
            loop {
                let mut chunk = spent.try_recv().unwrap_or_default();
                let mut filled = 0;
                while filled < CHUNK {
                    if chunk.len() == filled {
                        chunk.push(StringRecord::new());
                    }
                    match read(&mut reader, &mut chunk[filled]).and_then(|more| {
                        more.then(|| check_width(&chunk[filled], width)).transpose()
                    }) {
                        Ok(Some(())) => filled += 1,
                        Ok(None) => break,
                        Err(error) => {
                            let _ = send.send(Err(error));
                            return;
                        }
                    }
                }
                let last = filled < CHUNK;
                // A closed channel means the caller stopped early: stop too.
                if (filled > 0 && send.send(Ok((chunk, filled))).is_err()) || last {
                    return;
                }
            }
        })?;
    Ok(Records { chunks, recycle })
}

fn reader<R: Read>(source: R, delimiter: u8) -> Reader<R> {
    ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(1 << 20)
        .from_reader(source)
}

fn open(path: &Path, delimiter: u8) -> Result<Reader<std::fs::File>, IngestError> {
    Ok(reader(std::fs::File::open(path)?, delimiter))
}

/// Reads one record; the record's bytes are checked as UTF-8 once, as a whole.
fn read<R: Read>(reader: &mut Reader<R>, record: &mut StringRecord) -> Result<bool, IngestError> {
    reader.read_record(record).map_err(|e| match e.kind() {
        csv::ErrorKind::Utf8 { pos, .. } => invalid(format!(
            "line {}: the bytes are not valid UTF-8 text; re-encode the file as UTF-8",
            pos.as_ref().map_or(0, csv::Position::line)
        )),
        _ => invalid(format!("unreadable CSV: {e}")),
    })
}

fn line_of(record: &StringRecord) -> u64 {
    record.position().map_or(0, csv::Position::line)
}

fn check_width(record: &StringRecord, width: usize) -> Result<(), IngestError> {
    if record.len() != width {
        return Err(invalid(format!(
            "line {} has {} fields but the first row has {width}; every row needs the same number of fields",
            line_of(record),
            record.len()
        )));
    }
    Ok(())
}

fn check_width_limit(width: usize, options: &Options) -> Result<(), IngestError> {
    if width > options.max_columns {
        return Err(invalid(format!(
            "the file has {width} columns; the limit is {} (data.max_columns)",
            options.max_columns
        )));
    }
    Ok(())
}

/// The whole lines of the sample as records (a record that is not UTF-8 ends the sample: the
/// full pass reports it with its line).
fn sample_records(sample: &[u8], delimiter: u8) -> Vec<StringRecord> {
    let whole = sample
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(&sample[..0], |i| &sample[..=i]);
    ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(whole)
        .records()
        .map_while(Result::ok)
        .collect()
}

fn first_record(input: &Path, delimiter: u8) -> Result<StringRecord, IngestError> {
    let mut reader = open(input, delimiter)?;
    let mut record = StringRecord::new();
    if !read(&mut reader, &mut record)? {
        return Err(invalid("the file is empty"));
    }
    Ok(record)
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
    first: &StringRecord,
    inference: &[Inference],
    nulls: &NullTokens<'_>,
) -> bool {
    let mut data_evidence = false;
    for (cell, column) in first.iter().zip(inference) {
        let column_type = column.resolve();
        if column_type == ColumnType::String {
            continue;
        }
        let cell = cell.trim();
        if nulls.contains(cell) || Inference::fits(column_type, cell) {
            data_evidence = true;
        } else {
            return true;
        }
    }
    !data_evidence
}
