//! Model services: training jobs, model versions and their signatures, algorithms.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::data::ColumnType;

/// The families of model services and the algorithms each trains.
pub const FAMILIES: [(&str, &[&str]); 4] = [
    (
        "trees",
        &["decision_tree", "random_forest", "gradient_boosting"],
    ),
    (
        "linear",
        &[
            "logistic_regression",
            "linear_regression",
            "ridge",
            "linear_svm",
            "gaussian_nb",
            "knn",
        ],
    ),
    ("neural", &["mlp"]),
    ("onnx", &[]),
];

/// The family that trains `algorithm`.
pub fn family_of(algorithm: &str) -> Option<&'static str> {
    FAMILIES
        .iter()
        .find(|(_, algorithms)| algorithms.contains(&algorithm))
        .map(|(family, _)| *family)
}

/// The registry service name of a family's model service.
pub fn service_name(family: &str) -> String {
    format!("model-{family}")
}

/// How a training run is validated: `{"holdout": 0.2}` or `{"kfold": 5}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Validation {
    Holdout(f64),
    Kfold(usize),
}

/// `POST /v1/models/{name}/train`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainRequest {
    pub dataset: String,
    /// `latest` (default), a version number, or a version address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_version: Option<String>,
    pub algorithm: String,
    /// Hyper-parameters (see `GET /v1/algorithms`); `task` overrides the inferred task.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub params: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Validation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Column to predict; defaults to the dataset's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Feature columns; defaults to every column but the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    /// With k-fold validation: keep every row's out-of-fold prediction, served at
    /// `GET /v1/models/{name}/versions/{v}/oof` (what a stacking meta-model learns from).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_oof: bool,
}

/// `GET /v1/models/{name}/versions/{v}/oof`: each row's prediction by the fold model that did
/// not see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OofPredictions {
    pub model: String,
    pub version: u64,
    /// Positions of the rows in the dataset version (rows without a target are left out).
    pub rows: Vec<u64>,
    /// Classifiers: the class of each column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    /// Values per row: one per class (probabilities) or one (regression).
    pub columns: usize,
    /// `[rows, columns]`, row-major.
    pub data: Vec<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|s| s.name() == text)
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// `GET /v1/jobs/{id}`; the 202 of a train request carries it too (`job` is its id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub job: String,
    pub state: JobState,
    /// 0..1.
    pub progress: f64,
    pub model: String,
    pub algorithm: String,
    pub dataset: String,
    /// The dataset version's address, resolved when the job was accepted.
    pub dataset_version: String,
    /// The model version written, once succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<BTreeMap<String, f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
}

/// One input column of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Feature {
    pub name: String,
    #[serde(rename = "type")]
    pub column_type: ColumnType,
}

/// What a model takes and gives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Signature {
    pub inputs: Vec<Feature>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Feature>,
    /// `classification` or `regression`.
    pub task: String,
    /// Class labels in probability-column order (classifiers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
}

/// One immutable model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelVersion {
    pub model: String,
    pub version: u64,
    pub family: String,
    pub algorithm: String,
    #[schema(value_type = Object)]
    pub params: BTreeMap<String, Value>,
    pub metrics: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Validation>,
    pub signature: Signature,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Rows the served model was fitted on.
    pub train_rows: u64,
    pub artifact_bytes: u64,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelSummary {
    pub name: String,
    pub family: String,
    pub latest_version: u64,
    pub versions: u64,
    pub algorithm: String,
    pub task: String,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelDetail {
    pub name: String,
    pub family: String,
    pub latest: ModelVersion,
    pub versions: Vec<ModelVersion>,
}

/// One hyper-parameter of an algorithm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ParamInfo {
    pub name: String,
    /// `integer`, `number`, `boolean`, `choice` or `integer list`, with the range or choices.
    pub kind: String,
    #[schema(value_type = Object)]
    pub default: Value,
    pub help: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlgorithmInfo {
    pub name: String,
    pub family: String,
    pub tasks: Vec<String>,
    pub params: Vec<ParamInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlgorithmList {
    pub algorithms: Vec<AlgorithmInfo>,
}
