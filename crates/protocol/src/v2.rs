//! Open Inference Protocol v2 (REST) types, with the checks every endpoint needs: a strict
//! datatype list, shapes of non-negative dimensions, data (flat or nested, row-major) whose
//! element count and nesting match the shape, and elements of the declared type.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// The tensor element types of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Datatype {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
}

impl Datatype {
    /// Inclusive integer range of integer types.
    fn integer_range(self) -> Option<(i128, i128)> {
        Some(match self {
            Self::Uint8 => (0, u8::MAX.into()),
            Self::Uint16 => (0, u16::MAX.into()),
            Self::Uint32 => (0, u32::MAX.into()),
            Self::Uint64 => (0, u64::MAX.into()),
            Self::Int8 => (i8::MIN.into(), i8::MAX.into()),
            Self::Int16 => (i16::MIN.into(), i16::MAX.into()),
            Self::Int32 => (i32::MIN.into(), i32::MAX.into()),
            Self::Int64 => (i64::MIN.into(), i64::MAX.into()),
            _ => return None,
        })
    }
}

/// `POST /v2/models/{name}[/versions/{v}]/infer` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InferRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    pub inputs: Vec<InferInput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// One input tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InferInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: Datatype,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    /// Row-major elements, flat or nested to the shape (absent when sent as binary data).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
}

/// Inference answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InferResponse {
    pub model_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    pub outputs: Vec<InferOutput>,
}

/// One output tensor (data flat, row-major).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InferOutput {
    pub name: String,
    pub shape: Vec<u64>,
    pub datatype: Datatype,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<Value>,
}

/// `GET /v2/models/{name}` answer; `-1` marks a variable dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: Datatype,
    pub shape: Vec<i64>,
}

/// `GET /v2` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

/// Why a tensor cannot be used; the message names the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("input {input:?}: {message}")]
pub struct TensorError {
    pub input: String,
    pub message: String,
}

/// A decoded tensor: its shape and its elements, flat and row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

impl InferInput {
    fn error(&self, message: impl Into<String>) -> TensorError {
        TensorError {
            input: self.name.clone(),
            message: message.into(),
        }
    }

    /// The shape as sizes, with its element count (bounded by `max_elements`).
    pub fn dims(&self, max_elements: usize) -> Result<(Vec<usize>, usize), TensorError> {
        let mut count: usize = 1;
        let mut dims = Vec::with_capacity(self.shape.len());
        for &dim in &self.shape {
            let dim = usize::try_from(dim).map_err(|_| {
                self.error(format!("shape {:?} has a negative dimension", self.shape))
            })?;
            count = count
                .checked_mul(dim)
                .filter(|c| *c <= max_elements)
                .ok_or_else(|| {
                    self.error(format!(
                        "shape {:?} has more than {max_elements} elements",
                        self.shape
                    ))
                })?;
            dims.push(dim);
        }
        Ok((dims, count))
    }

    /// The elements in row-major order, checked against the shape (flat data must have the
    /// shape's element count; nested data must nest exactly as the shape says).
    fn elements(&self, max_elements: usize) -> Result<(Vec<usize>, Vec<&Value>), TensorError> {
        let (dims, count) = self.dims(max_elements)?;
        let mut out = Vec::with_capacity(count);
        let Value::Array(top) = &self.data else {
            return Err(self.error("data must be an array"));
        };
        let nested = top.first().is_some_and(Value::is_array);
        if nested {
            self.walk(&self.data, &dims, &mut out)?;
        } else {
            if top.iter().any(Value::is_array) {
                return Err(self.error("data mixes arrays and scalars"));
            }
            out.extend(top.iter());
        }
        if out.len() != count {
            return Err(self.error(format!(
                "shape {:?} needs {count} elements, data has {}",
                self.shape,
                out.len()
            )));
        }
        Ok((dims, out))
    }

    fn walk<'a>(
        &self,
        value: &'a Value,
        dims: &[usize],
        out: &mut Vec<&'a Value>,
    ) -> Result<(), TensorError> {
        match (value, dims.split_first()) {
            (Value::Array(items), Some((&len, rest))) => {
                if items.len() != len {
                    return Err(self.error(format!(
                        "nested data does not match shape {:?}: a level has {} items where the shape says {len}",
                        self.shape,
                        items.len()
                    )));
                }
                for item in items {
                    self.walk(item, rest, out)?;
                }
                Ok(())
            }
            (Value::Array(_), None) => {
                Err(self.error(format!("nested data is deeper than shape {:?}", self.shape)))
            }
            (scalar, None) => {
                out.push(scalar);
                Ok(())
            }
            (_, Some(_)) => Err(self.error(format!(
                "nested data is shallower than shape {:?}",
                self.shape
            ))),
        }
    }

    /// A numeric or boolean tensor as `f64` (booleans as 0/1), with every element checked
    /// against the datatype (integers in range, no fractions for integer types).
    pub fn to_f64(&self, max_elements: usize) -> Result<Tensor<f64>, TensorError> {
        if self.datatype == Datatype::Bytes {
            return Err(self.error("BYTES data cannot be used as numbers"));
        }
        let (shape, elements) = self.elements(max_elements)?;
        let range = self.datatype.integer_range();
        let mut data = Vec::with_capacity(elements.len());
        for (index, element) in elements.into_iter().enumerate() {
            let value = match (self.datatype, element) {
                (Datatype::Bool, Value::Bool(b)) => f64::from(u8::from(*b)),
                (Datatype::Bool, other) => {
                    return Err(self.error(format!("element {index} is {other}, not a boolean")));
                }
                (_, Value::Number(n)) => {
                    if let Some((low, high)) = range {
                        let integer = n
                            .as_i64()
                            .map(i128::from)
                            .or_else(|| n.as_u64().map(i128::from));
                        match integer {
                            Some(i) if (low..=high).contains(&i) => {}
                            _ => {
                                return Err(self.error(format!(
                                    "element {index} is {n}, not a {:?} integer",
                                    self.datatype
                                )));
                            }
                        }
                    }
                    n.as_f64().filter(|v| v.is_finite()).ok_or_else(|| {
                        self.error(format!("element {index} is {n}, not a finite number"))
                    })?
                }
                (_, other) => {
                    return Err(self.error(format!("element {index} is {other}, not a number")));
                }
            };
            data.push(value);
        }
        Ok(Tensor { shape, data })
    }

    /// A BYTES tensor as strings.
    pub fn to_strings(&self, max_elements: usize) -> Result<Tensor<String>, TensorError> {
        if self.datatype != Datatype::Bytes {
            return Err(self.error(format!("{:?} data is not BYTES", self.datatype)));
        }
        let (shape, elements) = self.elements(max_elements)?;
        let data = elements
            .into_iter()
            .enumerate()
            .map(|(index, e)| {
                e.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.error(format!("element {index} is {e}, not a string")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Tensor { shape, data })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn input(shape: &[i64], datatype: &str, data: Value) -> InferInput {
        serde_json::from_value(
            json!({"name": "x", "shape": shape, "datatype": datatype, "data": data}),
        )
        .unwrap()
    }

    #[test]
    fn flat_and_nested_data_decode_row_major() {
        let flat = input(&[2, 3], "FP64", json!([1, 2, 3, 4, 5, 6.5]));
        let nested = input(&[2, 3], "FP64", json!([[1, 2, 3], [4, 5, 6.5]]));
        for tensor in [flat.to_f64(100).unwrap(), nested.to_f64(100).unwrap()] {
            assert_eq!(tensor.shape, vec![2, 3]);
            assert_eq!(tensor.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]);
        }
        let bools = input(&[2], "BOOL", json!([true, false]))
            .to_f64(10)
            .unwrap();
        assert_eq!(bools.data, vec![1.0, 0.0]);
        let text = input(&[1, 2], "BYTES", json!([["a", "b"]]))
            .to_strings(10)
            .unwrap();
        assert_eq!(text.data, vec!["a".to_string(), "b".to_string()]);
        assert!(
            input(&[0, 4], "FP32", json!([]))
                .to_f64(10)
                .unwrap()
                .data
                .is_empty()
        );
    }

    #[test]
    fn bad_tensors_say_what_is_wrong() {
        let cases = [
            (input(&[2, 3], "FP64", json!([1, 2, 3])), "needs 6 elements"),
            (
                input(&[2, 2], "FP64", json!([[1, 2], [3]])),
                "a level has 1 items",
            ),
            (input(&[2], "FP64", json!([[1], [2]])), "deeper"),
            (input(&[2, 1], "FP64", json!([[1], 2])), "shallower"),
            (input(&[-1, 2], "FP64", json!([1, 2])), "negative"),
            (
                input(&[1_000_000, 1_000_000], "FP64", json!([])),
                "more than",
            ),
            (input(&[1], "INT64", json!([1.5])), "not a Int64 integer"),
            (input(&[1], "UINT8", json!([256])), "not a Uint8 integer"),
            (input(&[1], "UINT32", json!([-1])), "not a Uint32 integer"),
            (input(&[1], "FP32", json!(["1"])), "not a number"),
            (input(&[1], "BOOL", json!([1])), "not a boolean"),
            (
                input(&[1], "BYTES", json!(["a"])),
                "cannot be used as numbers",
            ),
            (input(&[1], "FP32", json!({"a": 1})), "must be an array"),
        ];
        for (tensor, needle) in cases {
            let message = tensor.to_f64(1_000_000).unwrap_err().to_string();
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
            assert!(message.starts_with("input \"x\""));
        }
        let err = serde_json::from_value::<InferInput>(
            json!({"name": "x", "shape": [1], "datatype": "FLOAT", "data": [1]}),
        );
        assert!(err.is_err(), "unknown datatypes are refused");
    }

    #[test]
    fn responses_serialise_as_the_protocol_says() {
        let response = InferResponse {
            model_name: "iris".into(),
            model_version: Some("1".into()),
            id: None,
            parameters: None,
            outputs: vec![InferOutput {
                name: "label".into(),
                shape: vec![1],
                datatype: Datatype::Bytes,
                parameters: None,
                data: vec![json!("setosa")],
            }],
        };
        assert_eq!(
            serde_json::to_value(&response).unwrap(),
            json!({"model_name": "iris", "model_version": "1",
                   "outputs": [{"name": "label", "shape": [1], "datatype": "BYTES", "data": ["setosa"]}]})
        );
    }
}
