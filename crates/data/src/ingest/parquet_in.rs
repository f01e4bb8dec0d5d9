//! Parquet uploads: one pass, types from the file's own schema.

use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrowPrimitiveType};
use arrow_schema::DataType;
use mlmesh_protocol::data::{ColumnInfo, ColumnType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::column::ColumnBuilder;
use super::sink::Sink;
use super::{IngestError, Options, batch_rows, check_names, invalid};

fn mlmesh_type(name: &str, data_type: &DataType) -> Result<ColumnType, IngestError> {
    use DataType as D;
    match data_type {
        D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::UInt8 | D::UInt16 | D::UInt32 | D::UInt64 => {
            Ok(ColumnType::Integer)
        }
        D::Float32 | D::Float64 => Ok(ColumnType::Float),
        D::Boolean => Ok(ColumnType::Boolean),
        D::Utf8 | D::LargeUtf8 | D::Utf8View => Ok(ColumnType::String),
        other => Err(invalid(format!(
            "column {name:?} has Parquet/Arrow type {other}, which mlmesh does not store; convert it to an integer, float, boolean or string column"
        ))),
    }
}

pub fn ingest(
    input: &Path,
    output: &Path,
    options: &Options,
) -> Result<Vec<ColumnInfo>, IngestError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(input)?)
        .map_err(|e| invalid(format!("not a readable Parquet file: {e}")))?;
    let schema = builder.schema().clone();
    let mut columns = Vec::new();
    for field in schema.fields() {
        let native = mlmesh_type(field.name(), field.data_type())?;
        if let Some(wanted) = options.types.get(field.name())
            && *wanted != native
        {
            return Err(invalid(format!(
                "column {:?} is stored as {} in the Parquet file; type overrides apply to CSV and JSON lines only",
                field.name(),
                native.name()
            )));
        }
        columns.push((field.name().clone(), native));
    }
    let names: Vec<String> = columns.iter().map(|(n, _)| n.clone()).collect();
    check_names(&names, options)?;
    let mut sink = Sink::create(output, columns, batch_rows(options, names.len()))?;
    let reader = builder
        .with_batch_size(batch_rows(options, names.len()))
        .build()
        .map_err(|e| invalid(format!("not a readable Parquet file: {e}")))?;
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| invalid(format!("corrupt Parquet data: {e}")))?;
        for row in 0..batch.num_rows() {
            for (array, column) in batch.columns().iter().zip(&mut sink.columns) {
                push(column, array.as_ref(), row)?;
            }
            sink.end_row()?;
        }
        rows += batch.num_rows() as u64;
    }
    if rows == 0 {
        return Err(invalid("the Parquet file has no rows"));
    }
    sink.finish()
}

fn int<T: ArrowPrimitiveType>(array: &dyn Array, row: usize) -> Option<i64>
where
    T::Native: TryInto<i64>,
{
    array.as_primitive_opt::<T>()?.value(row).try_into().ok()
}

fn push(column: &mut ColumnBuilder, array: &dyn Array, row: usize) -> Result<(), IngestError> {
    use DataType as D;
    if array.is_null(row) {
        column.null();
        return Ok(());
    }
    match array.data_type() {
        D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::UInt8 | D::UInt16 | D::UInt32 | D::UInt64 => {
            let value = match array.data_type() {
                D::Int8 => int::<Int8Type>(array, row),
                D::Int16 => int::<Int16Type>(array, row),
                D::Int32 => int::<Int32Type>(array, row),
                D::Int64 => int::<Int64Type>(array, row),
                D::UInt8 => int::<UInt8Type>(array, row),
                D::UInt16 => int::<UInt16Type>(array, row),
                D::UInt32 => int::<UInt32Type>(array, row),
                _ => int::<UInt64Type>(array, row),
            };
            let value = value.ok_or_else(|| {
                invalid(format!(
                    "column {:?} row {}: integer out of the 64-bit signed range",
                    column.name,
                    row + 1
                ))
            })?;
            column.int(value);
        }
        D::Float32 | D::Float64 => {
            let value = match array.data_type() {
                D::Float32 => f64::from(array.as_primitive::<Float32Type>().value(row)),
                _ => array.as_primitive::<Float64Type>().value(row),
            };
            if value.is_finite() {
                column.float(value);
            } else if value.is_nan() {
                // pandas writes missing floats as NaN.
                column.null();
            } else {
                return Err(invalid(format!(
                    "column {:?} row {}: infinite value",
                    column.name,
                    row + 1
                )));
            }
        }
        D::Boolean => column.boolean(array.as_boolean().value(row)),
        D::Utf8 => column.string(array.as_string::<i32>().value(row)),
        D::LargeUtf8 => column.string(array.as_string::<i64>().value(row)),
        D::Utf8View => column.string(array.as_string_view().value(row)),
        other => {
            return Err(invalid(format!(
                "column {:?}: unsupported type {other}",
                column.name
            )));
        }
    }
    Ok(())
}
