//! A dataset version, copied from the data service into this service's directory and read
//! into columns for training.

use std::path::{Path, PathBuf};

use arrow_array::{Array, BooleanArray, Float64Array, Int64Array, StringArray};
use futures_util::StreamExt;
use mlmesh_learn::prep::{ColumnData, Frame};
use mlmesh_protocol::data::{ColumnType, VersionInfo};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio::io::AsyncWriteExt;

/// One column as stored, before it becomes a feature or a target.
#[derive(Debug, Clone)]
pub enum Raw {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    Text(Vec<Option<String>>),
}

impl Raw {
    /// As a model feature: numbers (booleans as 0/1, missing as NaN) or categories.
    pub fn feature(&self) -> ColumnData {
        match self {
            Self::Int(v) => {
                ColumnData::Numeric(v.iter().map(|x| x.map_or(f64::NAN, |i| i as f64)).collect())
            }
            Self::Float(v) => {
                ColumnData::Numeric(v.iter().map(|x| x.unwrap_or(f64::NAN)).collect())
            }
            Self::Bool(v) => ColumnData::Numeric(
                v.iter()
                    .map(|x| x.map_or(f64::NAN, |b| f64::from(u8::from(b))))
                    .collect(),
            ),
            Self::Text(v) => ColumnData::Categorical(v.clone()),
        }
    }

    /// As labels (classification); missing stays missing.
    pub fn labels(&self) -> Vec<Option<String>> {
        match self {
            Self::Int(v) => v.iter().map(|x| x.map(|i| i.to_string())).collect(),
            Self::Float(v) => v.iter().map(|x| x.map(|f| f.to_string())).collect(),
            Self::Bool(v) => v.iter().map(|x| x.map(|b| b.to_string())).collect(),
            Self::Text(v) => v.clone(),
        }
    }

    /// As values (regression); `None` for a text column.
    pub fn values(&self) -> Option<Vec<Option<f64>>> {
        match self {
            Self::Int(v) => Some(v.iter().map(|x| x.map(|i| i as f64)).collect()),
            Self::Float(v) => Some(v.clone()),
            Self::Bool(v) => Some(
                v.iter()
                    .map(|x| x.map(|b| f64::from(u8::from(b))))
                    .collect(),
            ),
            Self::Text(_) => None,
        }
    }
}

/// Reads the named columns of a Parquet file written by the data service.
pub fn read(path: &Path, columns: &[(String, ColumnType)]) -> Result<Vec<Raw>, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| e.to_string())?;
    let schema = builder.schema().clone();
    let indices: Vec<usize> = columns
        .iter()
        .map(|(name, _)| {
            schema
                .index_of(name)
                .map_err(|_| format!("the dataset copy has no column \"{name}\""))
        })
        .collect::<Result<_, _>>()?;
    let mut out: Vec<Raw> = columns
        .iter()
        .map(|(_, t)| match t {
            ColumnType::Integer => Raw::Int(Vec::new()),
            ColumnType::Float => Raw::Float(Vec::new()),
            ColumnType::Boolean => Raw::Bool(Vec::new()),
            ColumnType::String => Raw::Text(Vec::new()),
        })
        .collect();
    for batch in builder
        .with_batch_size(8192)
        .build()
        .map_err(|e| e.to_string())?
    {
        let batch = batch.map_err(|e| e.to_string())?;
        for (slot, &index) in out.iter_mut().zip(&indices) {
            let array = batch.column(index).as_any();
            let mismatch =
                || "the dataset copy's column types do not match its description".to_string();
            match slot {
                Raw::Int(v) => {
                    let a = array.downcast_ref::<Int64Array>().ok_or_else(mismatch)?;
                    v.extend((0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i))));
                }
                Raw::Float(v) => {
                    let a = array.downcast_ref::<Float64Array>().ok_or_else(mismatch)?;
                    v.extend((0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i))));
                }
                Raw::Bool(v) => {
                    let a = array.downcast_ref::<BooleanArray>().ok_or_else(mismatch)?;
                    v.extend((0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i))));
                }
                Raw::Text(v) => {
                    let a = array.downcast_ref::<StringArray>().ok_or_else(mismatch)?;
                    v.extend((0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i).to_string())));
                }
            }
        }
    }
    Ok(out)
}

/// Features of a frame built from raw columns.
pub fn frame(names: &[String], raw: &[Raw]) -> Frame {
    Frame {
        names: names.to_vec(),
        columns: raw.iter().map(Raw::feature).collect(),
    }
}

/// The data service, as far as training needs it.
#[derive(Debug, Clone)]
pub struct DataClient {
    http: reqwest::Client,
}

impl Default for DataClient {
    fn default() -> Self {
        Self {
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(5))
                .build()
                .expect("an HTTP client builds"),
        }
    }
}

/// Why a dataset could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    NotFound(String),
    #[error("the data service is unreachable or failed: {0}")]
    Unavailable(String),
}

impl DataClient {
    /// The version's description (`latest`, a number, or an address).
    pub async fn describe(
        &self,
        base: &str,
        name: &str,
        version: &str,
    ) -> Result<VersionInfo, FetchError> {
        let url = format!("{base}/v1/datasets/{name}/versions/{version}");
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| FetchError::Unavailable(e.to_string()))?;
        match response.status().as_u16() {
            200 => response
                .json()
                .await
                .map_err(|e| FetchError::Unavailable(e.to_string())),
            404 | 400 => {
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                Err(FetchError::NotFound(
                    body["error"]
                        .as_str()
                        .unwrap_or("no such dataset version")
                        .to_string(),
                ))
            }
            status => Err(FetchError::Unavailable(format!("{url} answered {status}"))),
        }
    }

    /// Copies a version's Parquet file to `target` (via a temporary file in `tmp`, renamed
    /// into place once complete and synced), unless the copy exists already.
    pub async fn copy(
        &self,
        base: &str,
        name: &str,
        address: &str,
        target: &Path,
        tmp: &Path,
    ) -> Result<(), FetchError> {
        if target.exists() {
            return Ok(());
        }
        let io = |e: std::io::Error| {
            FetchError::Unavailable(format!("cannot write the dataset copy: {e}"))
        };
        tokio::fs::create_dir_all(tmp).await.map_err(io)?;
        if let Some(dir) = target.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(io)?;
        }
        let partial: PathBuf = tmp.join(format!("{}.parquet", uuid::Uuid::new_v4().simple()));
        let url = format!("{base}/v1/datasets/{name}/versions/{address}/download?format=parquet");
        let result = async {
            let response = self
                .http
                .get(&url)
                .send()
                .await
                .map_err(|e| FetchError::Unavailable(e.to_string()))?;
            if response.status().as_u16() == 404 {
                return Err(FetchError::NotFound(format!(
                    "dataset {name} version {address} is gone from the data service"
                )));
            }
            if !response.status().is_success() {
                return Err(FetchError::Unavailable(format!(
                    "{url} answered {}",
                    response.status()
                )));
            }
            let mut file = tokio::fs::File::create(&partial).await.map_err(io)?;
            let mut body = response.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| FetchError::Unavailable(e.to_string()))?;
                file.write_all(&chunk).await.map_err(io)?;
            }
            file.sync_all().await.map_err(io)?;
            tokio::fs::rename(&partial, target).await.map_err(io)?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        result
    }
}
