//! Open Inference Protocol v2 for trained models: request tensors → feature columns (checked
//! against the version's signature) → prediction → `label` / `probabilities` / `value`.

use mlmesh_learn::Prediction;
use mlmesh_learn::prep::{ColumnData, Frame};
use mlmesh_protocol::data::ColumnType;
use mlmesh_protocol::model::Signature;
use mlmesh_protocol::v2::{Datatype, InferInput, InferOutput, InferRequest, TensorMetadata};
use serde_json::{Map, Value};

use crate::artifact::Artifact;

/// Why a request cannot be answered; both are the caller's to fix.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooLarge(String),
}

fn invalid(message: impl Into<String>) -> InferError {
    InferError::Invalid(message.into())
}

/// The tensor type a column takes in a per-column request.
pub fn datatype(column: ColumnType) -> Datatype {
    match column {
        ColumnType::Integer => Datatype::Int64,
        ColumnType::Float => Datatype::Fp64,
        ColumnType::Boolean => Datatype::Bool,
        ColumnType::String => Datatype::Bytes,
    }
}

/// Input and output tensors of a trained model, for `GET /v2/models/{name}`.
pub fn metadata(
    signature: &Signature,
    label_type: Option<ColumnType>,
) -> (Vec<TensorMetadata>, Vec<TensorMetadata>) {
    let inputs = signature
        .inputs
        .iter()
        .map(|f| TensorMetadata {
            name: f.name.clone(),
            datatype: datatype(f.column_type),
            shape: vec![-1],
        })
        .collect();
    let outputs = match &signature.classes {
        Some(classes) => vec![
            TensorMetadata {
                name: "label".into(),
                datatype: if label_type == Some(ColumnType::Integer) {
                    Datatype::Int64
                } else {
                    Datatype::Bytes
                },
                shape: vec![-1],
            },
            TensorMetadata {
                name: "probabilities".into(),
                datatype: Datatype::Fp64,
                shape: vec![-1, classes.len() as i64],
            },
        ],
        None => vec![TensorMetadata {
            name: "value".into(),
            datatype: Datatype::Fp64,
            shape: vec![-1],
        }],
    };
    (inputs, outputs)
}

/// Checks the batch size of a decoded input against the limit.
fn check_batch(rows: usize, max_rows: usize) -> Result<(), InferError> {
    if rows > max_rows {
        return Err(InferError::TooLarge(format!(
            "the batch has {rows} rows; at most {max_rows} per request (model.max_batch_rows)"
        )));
    }
    Ok(())
}

/// The feature columns a request carries: one `[batch, n_features]` numeric tensor in
/// signature order, or one `[batch]` (or `[batch, 1]`) tensor per feature, named as it.
pub fn frame(
    signature: &Signature,
    request: &InferRequest,
    max_rows: usize,
) -> Result<Frame, InferError> {
    let features = &signature.inputs;
    let names: Vec<String> = features.iter().map(|f| f.name.clone()).collect();
    let max_elements = max_rows.saturating_mul(features.len().max(1));
    if request.inputs.is_empty() {
        return Err(invalid(format!(
            "the request has no inputs; send one [batch, {}] FP64 tensor or one tensor per column: {}",
            features.len(),
            names.join(", ")
        )));
    }
    let single = &request.inputs[0];
    let matrix_form = request.inputs.len() == 1
        && single.shape.len() == 2
        && (features.len() != 1 || single.name != features[0].name || single.shape[1] == 1);
    if matrix_form {
        if single.datatype == Datatype::Bytes {
            return Err(invalid(format!(
                "input {:?}: a [batch, n_features] tensor must be numeric (FP64, FP32 or an integer type); text columns need one input per column",
                single.name
            )));
        }
        if let Some(text) = features
            .iter()
            .find(|f| f.column_type == ColumnType::String)
        {
            return Err(invalid(format!(
                "column \"{}\" holds text, which a numeric tensor cannot carry; send one input per column",
                text.name
            )));
        }
        let width = usize::try_from(single.shape[1]).unwrap_or(usize::MAX);
        if width != features.len() {
            return Err(invalid(format!(
                "input {:?} has {} columns; the model takes {} ({})",
                single.name,
                single.shape[1],
                features.len(),
                names.join(", ")
            )));
        }
        let rows = usize::try_from(single.shape[0]).unwrap_or(usize::MAX);
        check_batch(rows, max_rows)?;
        let tensor = single
            .to_f64(max_elements)
            .map_err(|e| invalid(e.to_string()))?;
        let columns = (0..width)
            .map(|j| ColumnData::Numeric((0..rows).map(|r| tensor.data[r * width + j]).collect()))
            .collect();
        return Ok(Frame { names, columns });
    }
    let mut columns: Vec<Option<ColumnData>> = vec![None; features.len()];
    let mut rows: Option<usize> = None;
    for input in &request.inputs {
        let Some(at) = names.iter().position(|n| *n == input.name) else {
            return Err(invalid(format!(
                "unknown input {:?}; the model's columns are {}",
                input.name,
                names.join(", ")
            )));
        };
        if columns[at].is_some() {
            return Err(invalid(format!("input {:?} is given twice", input.name)));
        }
        let (column, count) = column(input, features[at].column_type, max_rows)?;
        if *rows.get_or_insert(count) != count {
            return Err(invalid(format!(
                "input {:?} has {count} rows; the other inputs have {}",
                input.name,
                rows.unwrap_or(0)
            )));
        }
        columns[at] = Some(column);
    }
    let missing: Vec<&str> = names
        .iter()
        .zip(&columns)
        .filter(|(_, c)| c.is_none())
        .map(|(n, _)| n.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(invalid(format!("missing inputs: {}", missing.join(", "))));
    }
    Ok(Frame {
        names,
        columns: columns.into_iter().flatten().collect(),
    })
}

fn column(
    input: &InferInput,
    column_type: ColumnType,
    max_rows: usize,
) -> Result<(ColumnData, usize), InferError> {
    let rows = match input.shape.as_slice() {
        [n] | [n, 1] => usize::try_from(*n)
            .map_err(|_| invalid(format!("input {:?}: a negative dimension", input.name)))?,
        other => {
            return Err(invalid(format!(
                "input {:?} has shape {other:?}; a column takes [batch] or [batch, 1]",
                input.name
            )));
        }
    };
    check_batch(rows, max_rows)?;
    if column_type == ColumnType::String {
        if input.datatype != Datatype::Bytes {
            return Err(invalid(format!(
                "input {:?} is a text column; send it as BYTES, not {:?}",
                input.name, input.datatype
            )));
        }
        let tensor = input
            .to_strings(max_rows)
            .map_err(|e| invalid(e.to_string()))?;
        return Ok((
            ColumnData::Categorical(tensor.data.into_iter().map(Some).collect()),
            rows,
        ));
    }
    if input.datatype == Datatype::Bytes {
        return Err(invalid(format!(
            "input {:?} is a {} column; send numbers, not BYTES",
            input.name,
            column_type.name()
        )));
    }
    let tensor = input.to_f64(max_rows).map_err(|e| invalid(e.to_string()))?;
    Ok((ColumnData::Numeric(tensor.data), rows))
}

/// Which outputs to answer: those requested, else the defaults (`label`, plus `probabilities`
/// with parameter `probabilities: true`; `value` for regressors).
pub fn wanted(request: &InferRequest, classifier: bool) -> Result<Vec<String>, InferError> {
    let valid: &[&str] = if classifier {
        &["label", "probabilities"]
    } else {
        &["value"]
    };
    if let Some(outputs) = &request.outputs {
        if outputs.is_empty() {
            return Err(invalid(format!(
                "\"outputs\" is empty; ask for {} or leave it out",
                valid.join(", ")
            )));
        }
        for o in outputs {
            if !valid.contains(&o.name.as_str()) {
                return Err(invalid(format!(
                    "unknown output {:?}; this model answers {}",
                    o.name,
                    valid.join(", ")
                )));
            }
        }
        return Ok(outputs.iter().map(|o| o.name.clone()).collect());
    }
    let mut out = vec![valid[0].to_string()];
    let asked = request
        .parameters
        .as_ref()
        .and_then(|p| p.get("probabilities"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if classifier && asked {
        out.push("probabilities".into());
    }
    Ok(out)
}

/// Output tensors for a prediction.
pub fn outputs(
    prediction: &Prediction,
    classes: Option<&[String]>,
    integer_labels: bool,
    wanted: &[String],
) -> Vec<InferOutput> {
    let mut out = Vec::new();
    match (prediction, classes) {
        (Prediction::Probabilities(p), Some(classes)) => {
            for name in wanted {
                if name == "label" {
                    let labels = p.argmax_rows().into_iter().map(|i| classes[i].as_str());
                    let (datatype, data) = if integer_labels {
                        (
                            Datatype::Int64,
                            labels
                                .map(|l| l.parse::<i64>().map_or(Value::from(l), Value::from))
                                .collect(),
                        )
                    } else {
                        (Datatype::Bytes, labels.map(Value::from).collect())
                    };
                    out.push(InferOutput {
                        name: "label".into(),
                        shape: vec![p.rows as u64],
                        datatype,
                        parameters: None,
                        data,
                    });
                } else {
                    let mut parameters = Map::new();
                    parameters.insert("classes".into(), Value::from(classes.to_vec()));
                    out.push(InferOutput {
                        name: "probabilities".into(),
                        shape: vec![p.rows as u64, p.cols as u64],
                        datatype: Datatype::Fp64,
                        parameters: Some(parameters),
                        data: p.data.iter().map(|v| Value::from(*v)).collect(),
                    });
                }
            }
        }
        (Prediction::Values(v), _) => out.push(InferOutput {
            name: "value".into(),
            shape: vec![v.len() as u64],
            datatype: Datatype::Fp64,
            parameters: None,
            data: v.iter().map(|x| Value::from(*x)).collect(),
        }),
        (Prediction::Probabilities(_), None) => {}
    }
    out
}

/// Predicts with a trained artifact.
pub fn predict(
    artifact: &Artifact,
    request: &InferRequest,
    max_rows: usize,
) -> Result<Vec<InferOutput>, InferError> {
    let classifier = artifact.signature.classes.is_some();
    let wanted = wanted(request, classifier)?;
    let frame = frame(&artifact.signature, request, max_rows)?;
    let x = artifact.preprocessor.transform(&frame);
    let prediction = artifact.estimator.predict(&x);
    Ok(outputs(
        &prediction,
        artifact.signature.classes.as_deref(),
        artifact.label_type == Some(ColumnType::Integer),
        &wanted,
    ))
}
