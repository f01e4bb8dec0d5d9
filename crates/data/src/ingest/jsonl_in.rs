//! JSON lines: one object per line, scalar values; columns in order of first appearance, a
//! missing key is a missing value.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use mlmesh_protocol::data::ColumnInfo;
use serde_json::{Map, Value};

use super::column::Inference;
use super::sink::Sink;
use super::{IngestError, Options, batch_rows, check_names, invalid, resolve_types};

/// Calls `each` with every non-blank line's object and its line number.
fn for_each_object(
    path: &Path,
    mut each: impl FnMut(Map<String, Value>, u64) -> Result<(), IngestError>,
) -> Result<(), IngestError> {
    let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        number += 1;
        let text = std::str::from_utf8(&line).map_err(|_| {
            invalid(format!(
                "line {number}: the bytes are not valid UTF-8 text; re-encode the file as UTF-8"
            ))
        })?;
        if text.trim().is_empty() {
            continue;
        }
        let object = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(object)) => object,
            Ok(_) => return Err(invalid(format!("line {number}: expected a JSON object"))),
            Err(e) => return Err(invalid(format!("line {number}: not valid JSON: {e}"))),
        };
        each(object, number)?;
    }
}

pub fn ingest(
    input: &Path,
    output: &Path,
    options: &Options,
) -> Result<Vec<ColumnInfo>, IngestError> {
    let mut names: Vec<String> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut inference: Vec<Inference> = Vec::new();
    let mut rows = 0u64;
    for_each_object(input, |object, line| {
        for (key, value) in &object {
            if matches!(value, Value::Array(_) | Value::Object(_)) {
                return Err(invalid(format!(
                    "line {line}: column {key:?} holds a nested value; only scalars (numbers, strings, booleans, null) can be stored"
                )));
            }
            let column = match index.get(key) {
                Some(&i) => i,
                None => {
                    if names.len() >= options.max_columns {
                        return Err(invalid(format!(
                            "line {line}: more than {} columns (data.max_columns)",
                            options.max_columns
                        )));
                    }
                    index.insert(key.clone(), names.len());
                    names.push(key.clone());
                    inference.push(Inference::default());
                    names.len() - 1
                }
            };
            if !value.is_null() {
                inference[column].json(value);
            }
        }
        rows += 1;
        Ok(())
    })?;
    if rows == 0 {
        return Err(invalid("the file has no rows"));
    }
    check_names(&names, options)?;
    let types = resolve_types(&names, &inference, options);
    let mut sink = Sink::create(
        output,
        names.iter().cloned().zip(types).collect(),
        batch_rows(options, names.len()),
    )?;
    for_each_object(input, |object, line| {
        for (name, column) in names.iter().zip(&mut sink.columns) {
            match object.get(name) {
                None | Some(Value::Null) => column.null(),
                Some(value) => column.json(value, line)?,
            }
        }
        sink.end_row()
    })?;
    sink.finish()
}
