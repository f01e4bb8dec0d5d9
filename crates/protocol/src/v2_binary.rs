//! The binary tensor data extension of the Open Inference Protocol (what `tritonclient` sends
//! by default): the body is a JSON header of `Inference-Header-Content-Length` bytes followed by
//! raw tensors, each input naming its size in `parameters.binary_data_size`. Elements are
//! little-endian; BYTES elements are a 4-byte length then the bytes.
//!
//! Decoding turns binary inputs into ordinary JSON `data`, so every check of the JSON path
//! applies unchanged; encoding moves the chosen outputs' data behind the header.

use serde_json::{Number, Value};

use crate::v2::{Datatype, InferRequest, InferResponse};

/// The header naming the JSON part's length.
pub const HEADER: &str = "inference-header-content-length";

fn element_size(datatype: Datatype) -> Option<usize> {
    Some(match datatype {
        Datatype::Bool | Datatype::Uint8 | Datatype::Int8 => 1,
        Datatype::Uint16 | Datatype::Int16 => 2,
        Datatype::Uint32 | Datatype::Int32 | Datatype::Fp32 => 4,
        Datatype::Uint64 | Datatype::Int64 | Datatype::Fp64 => 8,
        Datatype::Fp16 | Datatype::Bytes => return None,
    })
}

fn number(value: f64) -> Result<Value, String> {
    Number::from_f64(value)
        .map(Value::Number)
        .ok_or_else(|| format!("{value} is not a finite number"))
}

/// Decodes one input's raw bytes into JSON elements.
fn elements(datatype: Datatype, raw: &[u8]) -> Result<Vec<Value>, String> {
    if datatype == Datatype::Bytes {
        let mut out = Vec::new();
        let mut rest = raw;
        while !rest.is_empty() {
            let (length, tail) = rest
                .split_at_checked(4)
                .ok_or("a BYTES element is cut short")?;
            let length = u32::from_le_bytes(length.try_into().expect("4 bytes")) as usize;
            let (text, tail) = tail
                .split_at_checked(length)
                .ok_or("a BYTES element is cut short")?;
            out.push(Value::String(
                String::from_utf8(text.to_vec())
                    .map_err(|_| "a BYTES element is not UTF-8 text")?,
            ));
            rest = tail;
        }
        return Ok(out);
    }
    let size = element_size(datatype).ok_or(format!(
        "{datatype:?} binary data is not supported; send FP32 or FP64"
    ))?;
    if !raw.len().is_multiple_of(size) {
        return Err(format!(
            "{} bytes are not a whole number of {datatype:?} elements",
            raw.len()
        ));
    }
    raw.chunks_exact(size)
        .map(|c| {
            Ok(match datatype {
                Datatype::Bool => Value::Bool(c[0] != 0),
                Datatype::Uint8 => Value::from(c[0]),
                Datatype::Int8 => Value::from(i8::from_le_bytes([c[0]])),
                Datatype::Uint16 => Value::from(u16::from_le_bytes([c[0], c[1]])),
                Datatype::Int16 => Value::from(i16::from_le_bytes([c[0], c[1]])),
                Datatype::Uint32 => Value::from(u32::from_le_bytes(c.try_into().expect("4 bytes"))),
                Datatype::Int32 => Value::from(i32::from_le_bytes(c.try_into().expect("4 bytes"))),
                Datatype::Uint64 => Value::from(u64::from_le_bytes(c.try_into().expect("8 bytes"))),
                Datatype::Int64 => Value::from(i64::from_le_bytes(c.try_into().expect("8 bytes"))),
                Datatype::Fp32 => number(f64::from(f32::from_le_bytes(
                    c.try_into().expect("4 bytes"),
                )))?,
                _ => number(f64::from_le_bytes(c.try_into().expect("8 bytes")))?,
            })
        })
        .collect()
}

/// Parses a request body: plain JSON, or (with `header_length`) JSON followed by binary tensors.
pub fn decode_request(body: &[u8], header_length: Option<usize>) -> Result<InferRequest, String> {
    let Some(length) = header_length else {
        return serde_json::from_slice(body)
            .map_err(|e| format!("the body is not a valid inference request: {e}"));
    };
    let (header, mut rest) = body
        .split_at_checked(length)
        .ok_or_else(|| format!("{HEADER} is {length} but the body has {} bytes", body.len()))?;
    let mut request: InferRequest = serde_json::from_slice(header)
        .map_err(|e| format!("the JSON part is not a valid inference request: {e}"))?;
    for input in &mut request.inputs {
        let size = input
            .parameters
            .as_mut()
            .and_then(|p| p.remove("binary_data_size"));
        let Some(size) = size else { continue };
        let size = size.as_u64().ok_or_else(|| {
            format!(
                "input {:?}: binary_data_size must be a byte count",
                input.name
            )
        })? as usize;
        let (raw, tail) = rest.split_at_checked(size).ok_or_else(|| {
            format!(
                "input {:?}: binary_data_size {size} runs past the end of the body",
                input.name
            )
        })?;
        input.data = Value::Array(
            elements(input.datatype, raw).map_err(|e| format!("input {:?}: {e}", input.name))?,
        );
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(format!(
            "{} bytes of binary data belong to no input",
            rest.len()
        ));
    }
    Ok(request)
}

/// Whether the client asked for `output` as binary: per output, else `binary_data_output`.
pub fn wants_binary(request: &InferRequest, output: &str) -> bool {
    let flag = |p: &Option<serde_json::Map<String, Value>>, key: &str| {
        p.as_ref().and_then(|p| p.get(key)).and_then(Value::as_bool)
    };
    request
        .outputs
        .iter()
        .flatten()
        .find(|o| o.name == output)
        .and_then(|o| flag(&o.parameters, "binary_data"))
        .or_else(|| flag(&request.parameters, "binary_data_output"))
        .unwrap_or(false)
}

fn encode(datatype: Datatype, data: &[Value], out: &mut Vec<u8>) {
    for value in data {
        match datatype {
            Datatype::Bytes => {
                let text = value
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| value.to_string());
                out.extend_from_slice(&(text.len() as u32).to_le_bytes());
                out.extend_from_slice(text.as_bytes());
            }
            Datatype::Bool => out.push(u8::from(value.as_bool().unwrap_or(false))),
            Datatype::Int64 => out.extend_from_slice(&value.as_i64().unwrap_or(0).to_le_bytes()),
            Datatype::Fp32 => {
                out.extend_from_slice(&(value.as_f64().unwrap_or(0.0) as f32).to_le_bytes())
            }
            _ => out.extend_from_slice(&value.as_f64().unwrap_or(0.0).to_le_bytes()),
        }
    }
}

/// The response body, with the chosen outputs moved behind the JSON header; returns the body
/// and, when any output is binary, the header's length for [`HEADER`].
pub fn encode_response(
    mut response: InferResponse,
    binary: impl Fn(&str) -> bool,
) -> (Vec<u8>, Option<usize>) {
    let mut tail = Vec::new();
    for output in &mut response.outputs {
        if binary(&output.name) {
            let start = tail.len();
            encode(output.datatype, &output.data, &mut tail);
            output.data.clear();
            output
                .parameters
                .get_or_insert_with(Default::default)
                .insert("binary_data_size".into(), Value::from(tail.len() - start));
        }
    }
    let mut body = serde_json::to_vec(&response).expect("a response is plain data");
    if tail.is_empty() {
        return (body, None);
    }
    let length = body.len();
    body.extend_from_slice(&tail);
    (body, Some(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_inputs_decode_into_json_elements() {
        let header = br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}},{"name":"s","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":7}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&1.5f32.to_le_bytes());
        body.extend_from_slice(&(-2.0f32).to_le_bytes());
        body.extend_from_slice(&3u32.to_le_bytes());
        body.extend_from_slice(b"red");
        let request = decode_request(&body, Some(header.len())).unwrap();
        assert_eq!(request.inputs[0].data, serde_json::json!([1.5, -2.0]));
        assert_eq!(request.inputs[1].data, serde_json::json!(["red"]));
        assert!(request.inputs[0].parameters.as_ref().unwrap().is_empty());
        // Sizes that do not add up are refused.
        assert!(decode_request(&body[..body.len() - 1], Some(header.len())).is_err());
        assert!(decode_request(&body, Some(body.len() + 1)).is_err());
        let nan = [
            header.as_slice(),
            &f32::NAN.to_le_bytes(),
            &0f32.to_le_bytes(),
            &3u32.to_le_bytes(),
            b"red",
        ]
        .concat();
        assert!(
            decode_request(&nan, Some(header.len()))
                .unwrap_err()
                .contains("finite")
        );
    }

    #[test]
    fn chosen_outputs_move_behind_the_header() {
        let response: InferResponse =
            serde_json::from_value(serde_json::json!({"model_name": "m", "outputs": [
            {"name": "label", "shape": [2], "datatype": "INT64", "data": [1, 0]},
            {"name": "value", "shape": [1], "datatype": "FP64", "data": [0.5]}]}))
            .unwrap();
        let (body, length) = encode_response(response, |name| name == "label");
        let length = length.unwrap();
        let head: Value = serde_json::from_slice(&body[..length]).unwrap();
        assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 16);
        assert_eq!(head["outputs"][1]["data"], serde_json::json!([0.5]));
        assert_eq!(&body[length..length + 8], &1i64.to_le_bytes());
    }
}
