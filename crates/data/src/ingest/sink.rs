//! The normalised Parquet files: writing them in bounded batches, and reading them back as row
//! pages or CSV.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use mlmesh_protocol::data::{Column, ColumnInfo, ColumnType};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use super::IngestError;
use super::column::ColumnBuilder;

pub fn arrow_type(column_type: ColumnType) -> DataType {
    match column_type {
        ColumnType::Integer => DataType::Int64,
        ColumnType::Float => DataType::Float64,
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::String => DataType::Utf8,
    }
}

fn column_type(data_type: &DataType) -> Result<ColumnType, IngestError> {
    match data_type {
        DataType::Int64 => Ok(ColumnType::Integer),
        DataType::Float64 => Ok(ColumnType::Float),
        DataType::Boolean => Ok(ColumnType::Boolean),
        DataType::Utf8 => Ok(ColumnType::String),
        other => Err(IngestError::Parquet(format!(
            "stored file has an unexpected column type {other}"
        ))),
    }
}

/// Writes rows column by column into Parquet row groups of `batch_rows` rows. Encoding and
/// writing run on a thread of their own, fed finished batches through a channel of depth 2, so
/// they overlap with parsing and typing while at most three batches are in memory.
#[derive(Debug)]
pub struct Sink {
    schema: SchemaRef,
    pub columns: Vec<ColumnBuilder>,
    rows_in_batch: usize,
    batch_rows: usize,
    batches: Option<std::sync::mpsc::SyncSender<RecordBatch>>,
    writer: Option<std::thread::JoinHandle<Result<File, IngestError>>>,
}

impl Sink {
    pub fn create(
        path: &Path,
        columns: Vec<(String, ColumnType)>,
        batch_rows: usize,
    ) -> Result<Self, IngestError> {
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|(name, ty)| Field::new(name, arrow_type(*ty), true))
                .collect::<Vec<_>>(),
        ));
        // Dictionary encoding pays for text (categories repeat) and costs for numbers (mostly
        // distinct, so the encoder builds a dictionary only to abandon it).
        let mut properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(batch_rows))
            .set_dictionary_enabled(false);
        for (name, ty) in &columns {
            if *ty == ColumnType::String {
                properties =
                    properties.set_column_dictionary_enabled(ColumnPath::from(name.as_str()), true);
            }
        }
        let mut writer = ArrowWriter::try_new(
            File::create(path)?,
            Arc::clone(&schema),
            Some(properties.build()),
        )?;
        let (batches, incoming) = std::sync::mpsc::sync_channel::<RecordBatch>(2);
        let writer = std::thread::Builder::new()
            .name("parquet-writer".into())
            .spawn(move || {
                for batch in incoming {
                    writer.write(&batch)?;
                    writer.flush()?;
                }
                Ok(writer.into_inner()?)
            })?;
        Ok(Self {
            schema,
            columns: columns
                .into_iter()
                .map(|(name, ty)| ColumnBuilder::new(name, ty))
                .collect(),
            rows_in_batch: 0,
            batch_rows,
            batches: Some(batches),
            writer: Some(writer),
        })
    }

    /// Marks the end of a row (every column got one value or null).
    pub fn end_row(&mut self) -> Result<(), IngestError> {
        self.rows_in_batch += 1;
        if self.rows_in_batch >= self.batch_rows {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), IngestError> {
        if self.rows_in_batch == 0 {
            return Ok(());
        }
        let arrays = self
            .columns
            .iter_mut()
            .map(ColumnBuilder::finish_batch)
            .collect();
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), arrays)?;
        self.rows_in_batch = 0;
        let sent = self.batches.as_ref().is_some_and(|b| b.send(batch).is_ok());
        if !sent {
            // The writer stopped early: its own error says why.
            return Err(self
                .join()
                .err()
                .unwrap_or_else(|| IngestError::Parquet("the Parquet writer stopped".into())));
        }
        Ok(())
    }

    /// Stops the writer thread and waits for it; the file it wrote.
    fn join(&mut self) -> Result<File, IngestError> {
        self.batches = None;
        match self.writer.take() {
            Some(handle) => handle
                .join()
                .map_err(|_| IngestError::Parquet("the Parquet writer panicked".into()))?,
            None => Err(IngestError::Parquet(
                "the Parquet writer already stopped".into(),
            )),
        }
    }

    /// Writes what is left, closes the file and syncs it to disk.
    pub fn finish(mut self) -> Result<Vec<ColumnInfo>, IngestError> {
        self.flush()?;
        self.join()?.sync_all()?;
        Ok(self
            .columns
            .iter()
            .map(|c| ColumnInfo {
                name: c.name.clone(),
                column_type: c.column_type,
                stats: c.stats(),
            })
            .collect())
    }
}

impl Drop for Sink {
    /// An abandoned sink (an error, or a speculative pass redone) still waits for its writer,
    /// so nothing writes to the file after the caller moved on.
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = self.join();
        }
    }
}

fn open(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>, IngestError> {
    Ok(ParquetRecordBatchReaderBuilder::try_new(File::open(path)?)?)
}

fn schema_columns(schema: &Schema) -> Result<Vec<Column>, IngestError> {
    schema
        .fields()
        .iter()
        .map(|f| {
            Ok(Column {
                name: f.name().clone(),
                column_type: column_type(f.data_type())?,
            })
        })
        .collect()
}

fn cell(array: &dyn Array, row: usize) -> serde_json::Value {
    use serde_json::Value;
    if array.is_null(row) {
        return Value::Null;
    }
    let any = array.as_any();
    if let Some(a) = any.downcast_ref::<Int64Array>() {
        Value::from(a.value(row))
    } else if let Some(a) = any.downcast_ref::<Float64Array>() {
        Value::from(a.value(row))
    } else if let Some(a) = any.downcast_ref::<BooleanArray>() {
        Value::from(a.value(row))
    } else if let Some(a) = any.downcast_ref::<StringArray>() {
        Value::from(a.value(row))
    } else {
        Value::Null
    }
}

/// A page read back: the schema, the file's total row count, and the rows as JSON values.
pub type Page = (Vec<Column>, u64, Vec<Vec<serde_json::Value>>);

/// Rows `offset .. offset + limit` as JSON values, with the schema and the total row count.
pub fn read_rows(path: &Path, offset: usize, limit: usize) -> Result<Page, IngestError> {
    let builder = open(path)?;
    let total = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
    let columns = schema_columns(builder.schema())?;
    let mut rows = Vec::with_capacity(limit.min(10_000));
    if limit > 0 {
        let reader = builder
            .with_offset(offset)
            .with_limit(limit)
            .with_batch_size(limit.min(8_192))
            .build()?;
        for batch in reader {
            let batch = batch?;
            for row in 0..batch.num_rows() {
                rows.push(
                    batch
                        .columns()
                        .iter()
                        .map(|a| cell(a.as_ref(), row))
                        .collect(),
                );
            }
        }
    }
    Ok((columns, total, rows))
}

/// Writes the whole file as CSV with a header row (missing values as empty cells).
pub fn write_csv(path: &Path, out: impl Write) -> Result<(), IngestError> {
    let builder = open(path)?;
    let columns = schema_columns(builder.schema())?;
    let mut writer = csv::Writer::from_writer(out);
    writer
        .write_record(columns.iter().map(|c| c.name.as_str()))
        .map_err(csv_error)?;
    let mut record: Vec<String> = Vec::with_capacity(columns.len());
    for batch in builder.with_batch_size(8_192).build()? {
        let batch = batch?;
        for row in 0..batch.num_rows() {
            record.clear();
            for array in batch.columns() {
                record.push(match cell(array.as_ref(), row) {
                    serde_json::Value::Null => String::new(),
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                });
            }
            writer.write_record(&record).map_err(csv_error)?;
        }
    }
    writer.flush()?;
    Ok(())
}

fn csv_error(error: csv::Error) -> IngestError {
    IngestError::Io(std::io::Error::other(error.to_string()))
}
