//! Data service `/v1` types: datasets, versions, column schemas and statistics, row pages and
//! the event feed.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The four column types mlmesh stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Integer,
    Float,
    Boolean,
    /// Text; categorical features are string columns.
    String,
}

impl ColumnType {
    /// Parses a type name as users write it in overrides (`categorical` means `string`).
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "integer" | "int" | "int64" => Some(Self::Integer),
            "float" | "double" | "float64" | "number" => Some(Self::Float),
            "boolean" | "bool" => Some(Self::Boolean),
            "string" | "str" | "text" | "categorical" | "category" => Some(Self::String),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Integer => "integer",
            Self::Float => "float",
            Self::Boolean => "boolean",
            Self::String => "string",
        }
    }
}

/// A column's name and type (the short schema of an upload answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub column_type: ColumnType,
}

/// Statistics of one column over one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ColumnStats {
    /// Non-null values.
    pub count: u64,
    pub nulls: u64,
    /// Numeric and boolean columns (booleans as 0/1); absent for text or when all null.
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
    /// Population standard deviation.
    pub std: Option<f64>,
    /// Distinct non-null values: exact when `distinct_exact`, else a HyperLogLog++ estimate
    /// (about 1.6% standard error).
    pub distinct: u64,
    pub distinct_exact: bool,
    /// Most frequent values of string and boolean columns, most frequent first.
    pub top: Vec<TopValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TopValue {
    pub value: String,
    pub count: u64,
}

/// A column with its statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ColumnInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    pub stats: ColumnStats,
}

/// Answer of `POST /v1/datasets/{name}` (201 new version, 200 identical content already held).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UploadResponse {
    pub name: String,
    /// Content address of the version (from the bytes and the parse options).
    pub version: String,
    /// 1, 2, 3 … in upload order within the dataset.
    pub number: u64,
    pub rows: u64,
    pub columns: Vec<Column>,
    pub target: Option<String>,
    /// False when identical content was already stored (an idempotent retry).
    pub created: bool,
}

/// One version of a dataset, fully described.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VersionInfo {
    pub version: String,
    pub number: u64,
    pub rows: u64,
    /// Bytes uploaded.
    pub bytes: u64,
    /// SHA-256 of the uploaded bytes.
    pub content_sha256: String,
    /// `csv`, `jsonl` or `parquet`.
    pub format: String,
    pub target: Option<String>,
    pub columns: Vec<ColumnInfo>,
    pub created_ms: i64,
}

/// A dataset in the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DatasetSummary {
    pub name: String,
    pub versions: u64,
    pub latest_version: String,
    pub rows: u64,
    pub columns: u64,
    pub target: Option<String>,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DatasetList {
    pub datasets: Vec<DatasetSummary>,
}

/// Answer of `GET /v1/datasets/{name}`: every version, newest first, the latest in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DatasetDetail {
    pub name: String,
    pub created_ms: i64,
    pub latest: VersionInfo,
    pub versions: Vec<VersionSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VersionSummary {
    pub version: String,
    pub number: u64,
    pub rows: u64,
    pub created_ms: i64,
}

/// A page of rows, values in column order (`null` for missing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RowsPage {
    pub name: String,
    pub version: String,
    pub columns: Vec<Column>,
    pub offset: u64,
    pub limit: u64,
    pub total: u64,
    #[schema(value_type = Vec<Vec<Object>>)]
    pub rows: Vec<Vec<serde_json::Value>>,
}
