//! Turning an uploaded file into a stored dataset version: detect the format (and for CSV the
//! delimiter and header), infer or apply column types, validate every row, and write a
//! normalised Parquet file with per-column statistics.
//!
//! Pure and synchronous (callers run it on the blocking pool) and file to file: memory stays
//! bounded by one batch of rows, whatever the input size. CSV and JSON lines take two passes
//! (types must be known before the first value is written); Parquet takes one.

mod column;
mod csv_in;
mod growing;
mod jsonl_in;
mod parquet_in;
mod sink;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use mlmesh_protocol::data::{ColumnInfo, ColumnType};
use serde::{Deserialize, Serialize};

pub use csv_in::detect_delimiter;
pub use growing::Growing;
pub use sink::{read_rows, write_csv};

use std::sync::Arc;

/// How much of the file is looked at to detect format and delimiter.
const SNIFF_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Jsonl,
    Parquet,
}

impl Format {
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "csv" | "tsv" | "txt" => Some(Self::Csv),
            "jsonl" | "ndjson" | "json" => Some(Self::Jsonl),
            "parquet" | "pq" => Some(Self::Parquet),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Jsonl => "jsonl",
            Self::Parquet => "parquet",
        }
    }
}

/// What the uploader said about the file; everything not given is detected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Options {
    pub format: Option<Format>,
    pub delimiter: Option<u8>,
    pub header: Option<bool>,
    pub target: Option<String>,
    pub types: BTreeMap<String, ColumnType>,
    /// Cells equal to one of these (after trimming) are missing values.
    pub null_tokens: Vec<String>,
    #[serde(skip)]
    pub max_columns: usize,
    /// Cells per written batch (rows per batch = this / columns): the memory bound.
    #[serde(skip)]
    pub batch_cells: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            format: None,
            delimiter: None,
            header: None,
            target: None,
            types: BTreeMap::new(),
            null_tokens: default_null_tokens(),
            max_columns: 2_000,
            batch_cells: 4 << 20,
        }
    }
}

pub fn default_null_tokens() -> Vec<String> {
    [
        "", "NA", "N/A", "na", "n/a", "?", "null", "NULL", "None", "NaN", "nan",
    ]
    .iter()
    .map(ToString::to_string)
    .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The file or the options are wrong: a 400 with this message.
    #[error("{0}")]
    Invalid(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("parquet: {0}")]
    Parquet(String),
}

impl From<parquet::errors::ParquetError> for IngestError {
    fn from(error: parquet::errors::ParquetError) -> Self {
        Self::Parquet(error.to_string())
    }
}

impl From<arrow_schema::ArrowError> for IngestError {
    fn from(error: arrow_schema::ArrowError) -> Self {
        Self::Parquet(error.to_string())
    }
}

pub fn invalid(message: impl Into<String>) -> IngestError {
    IngestError::Invalid(message.into())
}

/// The result of a successful ingest.
#[derive(Debug, Clone, PartialEq)]
pub struct Ingested {
    pub format: Format,
    pub rows: u64,
    pub columns: Vec<ColumnInfo>,
    pub target: Option<String>,
}

/// Reads the complete file `input`, validates it and writes the normalised Parquet file
/// `output`.
pub fn ingest(input: &Path, output: &Path, options: &Options) -> Result<Ingested, IngestError> {
    run(input, output, options, None)
}

/// Like [`ingest`], while `input` is still being written: CSV is parsed as it arrives; other
/// formats wait for the complete file (Parquet keeps its schema at the end; JSON lines take two
/// passes anyway).
pub fn ingest_growing(
    input: &Path,
    output: &Path,
    options: &Options,
    growing: &Arc<Growing>,
) -> Result<Ingested, IngestError> {
    run(input, output, options, Some(growing))
}

fn run(
    input: &Path,
    output: &Path,
    options: &Options,
    growing: Option<&Arc<Growing>>,
) -> Result<Ingested, IngestError> {
    let mut sample = Vec::with_capacity(SNIFF_BYTES);
    match growing {
        Some(growing) => growing
            .reader(input)?
            .take(SNIFF_BYTES as u64)
            .read_to_end(&mut sample)?,
        None => std::fs::File::open(input)?
            .take(SNIFF_BYTES as u64)
            .read_to_end(&mut sample)?,
    };
    if sample.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid("the file is empty"));
    }
    let format = options.format.unwrap_or_else(|| detect_format(&sample));
    if format != Format::Parquet && sample.contains(&0) {
        return Err(invalid(
            "the file contains NUL bytes: it is binary, not CSV or JSON lines text",
        ));
    }
    if format != Format::Csv
        && let Some(growing) = growing
    {
        growing.wait_complete()?;
    }
    let columns = match format {
        Format::Csv => csv_in::ingest(input, output, options, &sample, growing)?,
        Format::Jsonl => jsonl_in::ingest(input, output, options)?,
        Format::Parquet => parquet_in::ingest(input, output, options)?,
    };
    if columns.is_empty() {
        return Err(invalid("the file has no columns"));
    }
    let rows = columns.first().map_or(0, |c| c.stats.count + c.stats.nulls);
    Ok(Ingested {
        format,
        rows,
        columns,
        target: options.target.clone(),
    })
}

fn detect_format(sample: &[u8]) -> Format {
    if sample.starts_with(b"PAR1") {
        return Format::Parquet;
    }
    match sample.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Format::Jsonl,
        _ => Format::Csv,
    }
}

/// Names for an error message: all of them when few, else the first ones and a count.
fn some_names(names: &[String]) -> String {
    const SHOWN: usize = 12;
    if names.len() <= SHOWN {
        return names.join(", ");
    }
    format!("{}, … ({} columns)", names[..SHOWN].join(", "), names.len())
}

/// Checks names decided for the columns: non-empty, unique, within the limit, and every type
/// override and the target naming one of them.
fn check_names(names: &[String], options: &Options) -> Result<(), IngestError> {
    if names.len() > options.max_columns {
        return Err(invalid(format!(
            "the file has {} columns; the limit is {} (data.max_columns)",
            names.len(),
            options.max_columns
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for (index, name) in names.iter().enumerate() {
        if name.trim().is_empty() {
            return Err(invalid(format!(
                "column {} has an empty name; every column needs a name",
                index + 1
            )));
        }
        if !seen.insert(name.as_str()) {
            return Err(invalid(format!("column name {name:?} appears twice")));
        }
    }
    for name in options.types.keys() {
        if !seen.contains(name.as_str()) {
            return Err(invalid(format!(
                "type override for unknown column {name:?}; the columns are: {}",
                some_names(names)
            )));
        }
    }
    if let Some(target) = &options.target
        && !seen.contains(target.as_str())
    {
        return Err(invalid(format!(
            "unknown target column {target:?}; the columns are: {}",
            some_names(names)
        )));
    }
    Ok(())
}

/// Each column's type: the user's override, else what inference found.
fn resolve_types(
    names: &[String],
    inference: &[column::Inference],
    options: &Options,
) -> Vec<ColumnType> {
    names
        .iter()
        .zip(inference)
        .map(|(name, inferred)| {
            options
                .types
                .get(name)
                .copied()
                .unwrap_or_else(|| inferred.resolve())
        })
        .collect()
}

/// Rows per written batch for `columns` columns.
fn batch_rows(options: &Options, columns: usize) -> usize {
    (options.batch_cells / columns.max(1)).clamp(1_024, 65_536)
}

#[cfg(test)]
mod tests;
