//! [`Client`]: typed calls to the gateway's `/v1` and `/v2` API (or to one service's own part).

use std::time::Duration;

use mlmesh_protocol::ErrorBody;
use mlmesh_protocol::data::{DatasetDetail, DatasetList, UploadResponse};
use mlmesh_protocol::gateway::{
    CreatedKey, Ensemble, EnsembleList, EnsembleSpec, KeyList, NewKey, Usage,
};
use mlmesh_protocol::model::{Job, JobState, ModelDetail, ModelList, TrainRequest};
use mlmesh_protocol::v2::{InferRequest, InferResponse};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status and this message.
    #[error("{status}: {message}")]
    Status { status: u16, message: String },
    #[error("cannot reach the server: {0}")]
    Transport(String),
    #[error("unreadable answer: {0}")]
    Decode(String),
}

/// What an error answer says: its `{"error"}` message, or the start of its body.
pub fn error_text(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).chars().take(200).collect())
}

/// An error with its sources, on one line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// A client of the gateway. Cheap to clone (one connection pool).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Client {
    /// `base` is the gateway's URL; `key` the API key (`Authorization: Bearer`).
    pub fn new(base: &str, key: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            key,
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = builder
            .send()
            .await
            .map_err(|e| ClientError::Transport(error_chain(&e)))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Transport(error_chain(&e)))?;
        if !status.is_success() {
            return Err(ClientError::Status {
                status: status.as_u16(),
                message: error_text(&bytes),
            });
        }
        if bytes.is_empty() {
            return serde_json::from_slice(b"null").map_err(|e| ClientError::Decode(e.to_string()));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.request(reqwest::Method::POST, path).json(body))
            .await
    }

    async fn delete(&self, path: &str) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .send(self.request(reqwest::Method::DELETE, path))
            .await?;
        Ok(())
    }

    /// Uploads a dataset version (`format`: csv, jsonl or parquet).
    pub async fn upload_dataset(
        &self,
        name: &str,
        bytes: Vec<u8>,
        format: &str,
        target: Option<&str>,
    ) -> Result<UploadResponse, ClientError> {
        let mut builder = self
            .request(reqwest::Method::POST, &format!("/v1/datasets/{name}"))
            .query(&[("format", format)])
            .body(bytes);
        if let Some(target) = target {
            builder = builder.query(&[("target", target)]);
        }
        self.send(builder).await
    }

    pub async fn datasets(&self) -> Result<DatasetList, ClientError> {
        self.get("/v1/datasets").await
    }

    pub async fn dataset(&self, name: &str) -> Result<DatasetDetail, ClientError> {
        self.get(&format!("/v1/datasets/{name}")).await
    }

    /// Starts training; returns the job id.
    pub async fn train(&self, model: &str, request: &TrainRequest) -> Result<String, ClientError> {
        #[derive(serde::Deserialize)]
        struct Started {
            job: String,
        }
        let started: Started = self
            .post(&format!("/v1/models/{model}/train"), request)
            .await?;
        Ok(started.job)
    }

    pub async fn job(&self, id: &str) -> Result<Job, ClientError> {
        self.get(&format!("/v1/jobs/{id}")).await
    }

    /// Polls a job until it has finished (or `timeout` passes).
    pub async fn wait_job(&self, id: &str, timeout: Duration) -> Result<Job, ClientError> {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let job = self.job(id).await?;
            if matches!(job.state, JobState::Succeeded | JobState::Failed)
                || tokio::time::Instant::now() >= until
            {
                return Ok(job);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn models(&self) -> Result<ModelList, ClientError> {
        self.get("/v1/models").await
    }

    pub async fn model(&self, name: &str) -> Result<ModelDetail, ClientError> {
        self.get(&format!("/v1/models/{name}")).await
    }

    /// Open Inference Protocol inference, for a model or an ensemble alike.
    pub async fn infer(
        &self,
        model: &str,
        request: &InferRequest,
    ) -> Result<InferResponse, ClientError> {
        self.post(&format!("/v2/models/{model}/infer"), request)
            .await
    }

    pub async fn put_ensemble(
        &self,
        name: &str,
        spec: &EnsembleSpec,
    ) -> Result<Ensemble, ClientError> {
        self.send(
            self.request(reqwest::Method::PUT, &format!("/v1/ensembles/{name}"))
                .json(spec),
        )
        .await
    }

    pub async fn ensembles(&self) -> Result<EnsembleList, ClientError> {
        self.get("/v1/ensembles").await
    }

    pub async fn delete_ensemble(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/ensembles/{name}")).await
    }

    pub async fn create_key(&self, key: &NewKey) -> Result<CreatedKey, ClientError> {
        self.post("/v1/keys", key).await
    }

    pub async fn keys(&self) -> Result<KeyList, ClientError> {
        self.get("/v1/keys").await
    }

    pub async fn delete_key(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/keys/{id}")).await
    }

    pub async fn usage(&self) -> Result<Usage, ClientError> {
        self.get("/v1/usage").await
    }
}
