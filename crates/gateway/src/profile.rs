//! Backends for frontends: one answer shape per kind of client. `web` (the default) gets the
//! full Open Inference Protocol answer; `mobile` gets, per row, the top label and its
//! probability (or the value) only — a few bytes instead of every class's probability.
//! Chosen by the path prefix `/mobile/…` or `/web/…`, or the header `X-Mlmesh-Profile`.

use http::HeaderMap;
use mlmesh_protocol::v2::InferResponse;
use serde_json::{Value, json};

pub const HEADER: &str = "x-mlmesh-profile";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Web,
    Mobile,
}

impl Profile {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "web" => Some(Self::Web),
            "mobile" => Some(Self::Mobile),
            _ => None,
        }
    }

    /// From the path prefix if any, else the header, else web.
    pub fn choose(prefix: Option<&str>, headers: &HeaderMap) -> Result<Self, String> {
        let text = match prefix {
            Some(p) => p.to_string(),
            None => match headers.get(HEADER) {
                Some(v) => v
                    .to_str()
                    .map_err(|_| format!("{HEADER} is not text"))?
                    .to_string(),
                None => return Ok(Self::Web),
            },
        };
        Self::parse(&text)
            .ok_or_else(|| format!("unknown client profile {text:?}; use web or mobile"))
    }
}

/// The mobile shape of an answer: `{"model", "predictions": [{"label", "probability"} | {"value"}]}`.
pub fn mobile(response: &InferResponse) -> Value {
    let find = |name: &str| response.outputs.iter().find(|o| o.name == name);
    let predictions: Vec<Value> = if let Some(label) = find("label") {
        let probabilities = find("probabilities");
        let k = probabilities
            .and_then(|p| p.shape.get(1))
            .copied()
            .unwrap_or(0) as usize;
        label
            .data
            .iter()
            .enumerate()
            .map(|(row, l)| {
                let top = probabilities.and_then(|p| {
                    p.data[row * k..(row + 1) * k]
                        .iter()
                        .filter_map(Value::as_f64)
                        .reduce(f64::max)
                });
                match top {
                    Some(p) => json!({"label": l, "probability": p}),
                    None => json!({"label": l}),
                }
            })
            .collect()
    } else if let Some(value) = find("value") {
        value.data.iter().map(|v| json!({"value": v})).collect()
    } else {
        Vec::new()
    };
    json!({"model": response.model_name, "predictions": predictions})
}
