//! The gateway's own `/v1` types: ensembles, API keys and usage.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How an ensemble combines its members' answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Majority of the members' labels (ties go to the class listed first).
    HardVote,
    /// Labels weighted by each member's `weight`.
    WeightedVote,
    /// Average of the members' class probabilities (weighted when members have weights).
    SoftVote,
    /// Average of the members' values (regression).
    Mean,
    /// Median of the members' values (regression).
    Median,
    /// Weighted average of the members' values (regression).
    WeightedMean,
    /// A meta-model over the members' predictions, trained on a dataset you name.
    Stacking,
}

impl Method {
    pub const ALL: [Method; 7] = [
        Self::HardVote,
        Self::WeightedVote,
        Self::SoftVote,
        Self::Mean,
        Self::Median,
        Self::WeightedMean,
        Self::Stacking,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::HardVote => "hard_vote",
            Self::WeightedVote => "weighted_vote",
            Self::SoftVote => "soft_vote",
            Self::Mean => "mean",
            Self::Median => "median",
            Self::WeightedMean => "weighted_mean",
            Self::Stacking => "stacking",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == text)
    }

    /// Whether the method combines classifiers (else regressors; stacking takes either).
    pub fn classifies(self) -> Option<bool> {
        match self {
            Self::HardVote | Self::WeightedVote | Self::SoftVote => Some(true),
            Self::Mean | Self::Median | Self::WeightedMean => Some(false),
            Self::Stacking => None,
        }
    }

    /// Whether members must carry a `weight`.
    pub fn weighted(self) -> bool {
        matches!(self, Self::WeightedVote | Self::WeightedMean)
    }
}

/// One member: an mlmesh model (optionally pinned to a version), or a model on a foreign Open
/// Inference Protocol v2 server (`url` = its base URL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Base URL of a foreign V2 server (e.g. `http://127.0.0.1:8080` for MLServer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Foreign members only: the output to read (default: the first one the server returns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Foreign members only: the class of each probability column, when `output` holds
    /// probabilities (foreign servers do not say which class a column is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
}

/// Partial-failure policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// How many members must answer (default: all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<usize>,
    /// One deadline for all members, in milliseconds (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

/// Stacking only: where the meta-model learns from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StackingSpec {
    /// A dataset with the members' input columns and the target; best one the members were
    /// not trained on.
    pub dataset: String,
    /// The meta-model's algorithm (default `logistic_regression` for classes, `ridge` for values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// Folds for the meta-model's validation (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kfold: Option<u32>,
}

/// `PUT /v1/ensembles/{name}` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnsembleSpec {
    pub method: String,
    pub members: Vec<MemberSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacking: Option<StackingSpec>,
}

/// What the gateway learnt about a member when the ensemble was defined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MemberInfo {
    #[serde(flatten)]
    pub spec: MemberSpec,
    /// `classification` or `regression`.
    pub task: String,
    /// Classes in the member's own order (classifiers whose classes are known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_classes: Option<Vec<String>>,
    /// Whether the labels are integers (`INT64`) rather than strings.
    #[serde(default)]
    pub integer_labels: bool,
}

/// A defined ensemble, as stored and as `GET /v1/ensembles/{name}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Ensemble {
    pub name: String,
    pub method: Method,
    pub members: Vec<MemberInfo>,
    pub policy: Policy,
    /// `classification` or `regression`.
    pub task: String,
    /// The ensemble's classes (the union of the members', in first-seen order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    /// Stacking: the dataset it learnt from and the meta-model trained on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacking: Option<StackingInfo>,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StackingInfo {
    pub dataset: String,
    pub meta_model: String,
    pub meta_version: u64,
    pub algorithm: String,
    pub rows: u64,
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EnsembleList {
    pub ensembles: Vec<Ensemble>,
}

/// `parameters.members` of an ensemble's answer: one entry per member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MemberReport {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub answered: bool,
    /// Why it did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub ms: f64,
}

/// A key's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Data, training, models (and inference).
    Train,
    /// Inference and reading models.
    Predict,
}

/// `POST /v1/keys` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub role: Role,
    /// Requests per second allowed (default: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_s: Option<u32>,
    /// A label for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `POST /v1/keys` answer: the only time the key itself is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    pub id: String,
    pub key: String,
    pub role: Role,
}

/// A key as listed (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyInfo {
    pub id: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_s: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
}

/// One line of `GET /v1/usage`: a key's use of one model (or `-` for calls about no model).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageRecord {
    pub key: String,
    pub model: String,
    pub requests: u64,
    pub rows: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub usage: Vec<UsageRecord>,
}
