//! Reading one member's answer, aligned by class *name* to the ensemble's classes.

use mlmesh_protocol::gateway::MemberInfo;
use mlmesh_protocol::v2::{Datatype, InferOutput, InferResponse};
use serde_json::Value;

/// One member's predictions for a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Classifier: the predicted class of each row (index into the ensemble's classes) and,
    /// when the member gave them, probabilities as `[rows, n_classes]` row-major, in the
    /// ensemble's class order.
    Classes {
        labels: Vec<usize>,
        probabilities: Option<Vec<f64>>,
    },
    /// Regressor: one value per row.
    Values(Vec<f64>),
}

impl Answer {
    pub fn rows(&self) -> usize {
        match self {
            Self::Classes { labels, .. } => labels.len(),
            Self::Values(values) => values.len(),
        }
    }
}

/// The text of a label as classes are named: integers without a fraction, strings as they are.
pub fn label_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(u8::from(*b).to_string()),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(i.to_string())
            } else if let Some(u) = n.as_u64() {
                Some(u.to_string())
            } else {
                let f = n.as_f64()?;
                if f.fract() == 0.0 && f.abs() < 9.0e15 {
                    #[allow(clippy::cast_possible_truncation)]
                    Some((f as i64).to_string())
                } else {
                    Some(f.to_string())
                }
            }
        }
        _ => None,
    }
}

fn numbers(output: &InferOutput) -> Result<Vec<f64>, String> {
    if output.datatype == Datatype::Bytes {
        return Err(format!("output {} is BYTES, not numbers", output.name));
    }
    output
        .data
        .iter()
        .map(|v| match v {
            Value::Number(n) => n.as_f64().filter(|f| f.is_finite()),
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| format!("output {} holds a value that is not a number", output.name))
}

/// `(rows, columns)` of an output: `[rows]` is one column.
fn matrix_shape(output: &InferOutput) -> Result<(usize, usize), String> {
    let dims: Vec<usize> = output.shape.iter().map(|&d| d as usize).collect();
    let (rows, columns) = match dims.as_slice() {
        [rows] => (*rows, 1),
        [rows, columns] => (*rows, *columns),
        other => return Err(format!("output {} has shape {other:?}", output.name)),
    };
    if rows * columns != output.data.len() {
        return Err(format!(
            "output {} has {} values for shape {:?}",
            output.name,
            output.data.len(),
            output.shape
        ));
    }
    Ok((rows, columns))
}

fn class_index(classes: &[String], name: &str) -> Result<usize, String> {
    classes
        .iter()
        .position(|c| c == name)
        .ok_or_else(|| format!("answered class {name:?}, which is not one of {classes:?}"))
}

/// Probabilities whose columns are `member_classes`, moved into the ensemble's class order.
fn aligned(
    values: &[f64],
    rows: usize,
    member_classes: &[String],
    classes: &[String],
) -> Result<(Vec<usize>, Vec<f64>), String> {
    let k = classes.len();
    let map = member_classes
        .iter()
        .map(|c| class_index(classes, c))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = vec![0.0; rows * k];
    let mut labels = Vec::with_capacity(rows);
    for row in 0..rows {
        let source = &values[row * map.len()..(row + 1) * map.len()];
        for (column, &target) in map.iter().enumerate() {
            out[row * k + target] = source[column];
        }
        labels.push(argmax(&out[row * k..(row + 1) * k]));
    }
    Ok((labels, out))
}

/// Index of the largest value; ties go to the first.
pub fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

/// Reads `response` as the member described by `member` answered it. `classes` are the
/// ensemble's classes (classifiers only).
pub fn read(
    response: &InferResponse,
    member: &MemberInfo,
    classes: Option<&[String]>,
) -> Result<Answer, String> {
    let find = |name: &str| response.outputs.iter().find(|o| o.name == name);
    let chosen = match &member.spec.output {
        Some(name) => Some(find(name).ok_or_else(|| format!("the answer has no output {name:?}"))?),
        None => None,
    };
    let Some(classes) = classes else {
        // Regression: `value`, the named output, or the only output.
        let output = chosen
            .or_else(|| find("value"))
            .or_else(|| response.outputs.first())
            .ok_or("the answer has no outputs")?;
        let (_, columns) = matrix_shape(output)?;
        if columns != 1 {
            return Err(format!(
                "output {} has {columns} columns, not one value per row",
                output.name
            ));
        }
        return Ok(Answer::Values(numbers(output)?));
    };
    if member.spec.url.is_none() {
        // An mlmesh classifier: `probabilities` names its classes; `label` otherwise.
        if let Some(p) = find("probabilities") {
            let (rows, columns) = matrix_shape(p)?;
            let member_classes: Vec<String> = p
                .parameters
                .as_ref()
                .and_then(|m| m.get("classes"))
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(label_text).collect())
                .ok_or("output probabilities does not name its classes")?;
            if member_classes.len() != columns {
                return Err("output probabilities names the wrong number of classes".into());
            }
            let (labels, probabilities) = aligned(&numbers(p)?, rows, &member_classes, classes)?;
            return Ok(Answer::Classes {
                labels,
                probabilities: Some(probabilities),
            });
        }
        let label = find("label").ok_or("the answer has no output label")?;
        return labels_of(label, classes);
    }
    // A foreign server: the chosen output (or the first) holds labels, or probabilities when
    // the member's classes were given.
    let output = chosen
        .or_else(|| response.outputs.first())
        .ok_or("the answer has no outputs")?;
    let (rows, columns) = matrix_shape(output)?;
    if columns == 1 {
        return labels_of(output, classes);
    }
    let member_classes = member.member_classes.as_ref().ok_or_else(|| {
        format!(
            "output {} has {columns} columns; give the member \"classes\" to read them as probabilities",
            output.name
        )
    })?;
    if columns != member_classes.len() {
        return Err(format!(
            "output {} has {columns} columns for {} classes",
            output.name,
            member_classes.len()
        ));
    }
    let (labels, probabilities) = aligned(&numbers(output)?, rows, member_classes, classes)?;
    Ok(Answer::Classes {
        labels,
        probabilities: Some(probabilities),
    })
}

fn labels_of(output: &InferOutput, classes: &[String]) -> Result<Answer, String> {
    let (_, columns) = matrix_shape(output)?;
    if columns != 1 {
        return Err(format!(
            "output {} has {columns} columns, not one label per row",
            output.name
        ));
    }
    let labels = output
        .data
        .iter()
        .map(|v| {
            let text = label_text(v).ok_or_else(|| format!("label {v} is not a class name"))?;
            class_index(classes, &text)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Answer::Classes {
        labels,
        probabilities: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlmesh_protocol::gateway::MemberSpec;
    use serde_json::json;

    fn member(url: Option<&str>, output: Option<&str>, classes: Option<&[&str]>) -> MemberInfo {
        MemberInfo {
            spec: MemberSpec {
                model: "m".into(),
                version: None,
                weight: None,
                url: url.map(str::to_string),
                output: output.map(str::to_string),
                classes: None,
            },
            task: "classification".into(),
            member_classes: classes.map(|c| c.iter().map(|s| s.to_string()).collect()),
            integer_labels: false,
        }
    }

    fn response(outputs: serde_json::Value) -> InferResponse {
        serde_json::from_value(json!({"model_name": "m", "outputs": outputs})).unwrap()
    }

    #[test]
    fn native_probabilities_are_aligned_by_class_name() {
        let classes = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let r = response(json!([
            {"name": "label", "shape": [2], "datatype": "BYTES", "data": ["c", "b"]},
            {"name": "probabilities", "shape": [2, 3], "datatype": "FP64",
             "parameters": {"classes": ["c", "a", "b"]}, "data": [0.7, 0.2, 0.1, 0.1, 0.3, 0.6]}
        ]));
        let answer = read(&r, &member(None, None, None), Some(&classes)).unwrap();
        assert_eq!(
            answer,
            Answer::Classes {
                labels: vec![2, 1],
                probabilities: Some(vec![0.2, 0.1, 0.7, 0.3, 0.6, 0.1])
            }
        );
    }

    #[test]
    fn foreign_labels_and_probabilities() {
        let classes = vec!["0".to_string(), "1".to_string()];
        let labels = response(
            json!([{"name": "predict", "shape": [3], "datatype": "INT64", "data": [1, 0, 1]}]),
        );
        let a = read(
            &labels,
            &member(Some("http://x"), None, None),
            Some(&classes),
        )
        .unwrap();
        assert_eq!(
            a,
            Answer::Classes {
                labels: vec![1, 0, 1],
                probabilities: None
            }
        );
        let probs = response(
            json!([{"name": "predict_proba", "shape": [1, 2], "datatype": "FP64", "data": [0.25, 0.75]}]),
        );
        let a = read(
            &probs,
            &member(Some("http://x"), Some("predict_proba"), Some(&["0", "1"])),
            Some(&classes),
        )
        .unwrap();
        assert_eq!(
            a,
            Answer::Classes {
                labels: vec![1],
                probabilities: Some(vec![0.25, 0.75])
            }
        );
    }

    #[test]
    fn unknown_classes_and_bad_shapes_are_errors() {
        let classes = vec!["0".to_string(), "1".to_string()];
        let r =
            response(json!([{"name": "label", "shape": [1], "datatype": "INT64", "data": [7]}]));
        assert!(
            read(&r, &member(None, None, None), Some(&classes))
                .unwrap_err()
                .contains("not one of")
        );
        let r =
            response(json!([{"name": "value", "shape": [2], "datatype": "FP64", "data": [1.0]}]));
        assert!(read(&r, &member(None, None, None), None).is_err());
        let r = response(
            json!([{"name": "value", "shape": [2, 1], "datatype": "FP64", "data": [1.0, 2.5]}]),
        );
        assert_eq!(
            read(&r, &member(None, None, None), None).unwrap(),
            Answer::Values(vec![1.0, 2.5])
        );
    }
}
