//! The portable artifact of a trained version (`GET …/versions/{v}/artifact`): one JSON
//! document, versioned by `format` + `format_version`, holding everything needed to predict:
//! the signature, the fitted preprocessing and the fitted estimator. The layout is specified
//! in `docs/specs/model-artifact.md`. Imported ONNX versions export their ONNX file unchanged.

use mlmesh_learn::prep::Preprocessor;
use mlmesh_learn::{Estimator, Task};
use mlmesh_protocol::data::ColumnType;
use mlmesh_protocol::model::Signature;
use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "mlmesh.model";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Artifact {
    pub format: String,
    pub format_version: u32,
    pub algorithm: String,
    pub task: Task,
    pub signature: Signature,
    /// The target column's type: labels come back as INT64 for `integer`, else BYTES.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_type: Option<ColumnType>,
    pub preprocessor: Preprocessor,
    pub estimator: Estimator,
}

impl Artifact {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an artifact is plain data")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let artifact: Self = serde_json::from_slice(bytes)
            .map_err(|e| format!("not an mlmesh model artifact: {e}"))?;
        if artifact.format != FORMAT || artifact.format_version != FORMAT_VERSION {
            return Err(format!(
                "artifact format {} v{} is not supported (this build reads {FORMAT} v{FORMAT_VERSION})",
                artifact.format, artifact.format_version
            ));
        }
        Ok(artifact)
    }
}
