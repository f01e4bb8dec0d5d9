//! Model services: one per algorithm family (`trees`, `linear`, `neural`, `onnx`).
//!
//! - A train request is checked at once (algorithm, family, parameters, dataset version,
//!   target) and answered 202 with a job; a bounded per-replica queue feeds training workers,
//!   which run on the blocking pool ([`jobs`]).
//! - A job copies its dataset version from the data service into this service's own directory
//!   (`datasets/`, by content address), fits preprocessing and model on the training split,
//!   evaluates, and writes an immutable model version (metadata + artifact, one SQLite
//!   transaction, [`db`]).
//! - Predictions follow the Open Inference Protocol v2 ([`infer`]) and run on the blocking
//!   pool. Replicas share the family's store; each notices new versions by itself and
//!   publishes the models it serves in its registry metadata (`models`).
//! - ONNX files (as skl2onnx writes them) are imported into the `onnx` family and run by ONNX
//!   Runtime, loaded from the library named by `model.onnx_runtime` / `ORT_DYLIB_PATH` ([`onnx`]).
//!
//! Layout: [`Config`], [`serve`], [`routes`] (HTTP), [`db`], [`jobs`], [`dataset`],
//! [`artifact`], [`infer`], [`onnx`].

pub mod artifact;
pub mod cost;
pub mod dataset;
pub mod db;
pub mod infer;
pub mod jobs;
pub mod onnx;
pub mod routes;

use std::future::Future;
use std::path::{Path, PathBuf};

use mlmesh_kit::serve::{Participation, run_service};
use mlmesh_kit::{ConfigError, ServerConfig};
use serde::Deserialize;
use tokio::net::TcpListener;

pub use routes::{AppState, router};

/// Model service settings, section `[model]` (env `MLMESH_MODEL__*`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The algorithm family this service trains and serves: trees, linear, neural or onnx.
    pub family: String,
    /// Data service base URL; when empty, found through the registry.
    pub data_url: Option<String>,
    /// Jobs waiting per replica; more get 429 (default 16).
    pub queue_capacity: usize,
    /// Jobs trained at once per replica (default 1: training uses every core already).
    pub workers: usize,
    /// Most rows one infer request may carry (default 10 000).
    pub max_batch_rows: usize,
    /// Largest infer request body, in bytes (default 64 MiB; a JSON batch of 10 000 rows of 50
    /// numbers is about 10 MiB).
    pub max_request_bytes: usize,
    /// Largest ONNX file accepted by import, in bytes (default 256 MiB).
    pub max_import_bytes: usize,
    /// ONNX Runtime shared library (`libonnxruntime.so`); default: `ORT_DYLIB_PATH`.
    pub onnx_runtime: Option<PathBuf>,
    /// How often replicas look for versions written by others, in ms (default 500).
    pub poll_ms: u64,
    /// Latest versions loaded before the replica registers, so that its first callers (say,
    /// after the autoscaler added it) do not wait for a model to load (default 64; 0: none).
    pub warm_models: usize,
    /// Predictions that the model's measured cost puts under this many µs run on the async
    /// worker instead of the blocking pool, whose hand-over costs more than they do (default
    /// 50; 0: always the pool).
    pub inline_predict_us: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            family: String::new(),
            data_url: None,
            queue_capacity: 16,
            workers: 1,
            max_batch_rows: 10_000,
            max_request_bytes: 64 << 20,
            max_import_bytes: 256 << 20,
            onnx_runtime: None,
            poll_ms: 500,
            warm_models: 64,
            inline_predict_us: 50,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !mlmesh_protocol::model::FAMILIES
            .iter()
            .any(|(f, _)| *f == self.family)
        {
            let names: Vec<&str> = mlmesh_protocol::model::FAMILIES
                .iter()
                .map(|(f, _)| *f)
                .collect();
            return Err(ConfigError(format!(
                "model.family must be one of {} (got \"{}\"); use --family",
                names.join(", "),
                self.family
            )));
        }
        for (key, value) in [
            ("model.queue_capacity", self.queue_capacity),
            ("model.workers", self.workers),
            ("model.max_batch_rows", self.max_batch_rows),
            ("model.max_request_bytes", self.max_request_bytes),
            ("model.max_import_bytes", self.max_import_bytes),
            ("model.poll_ms", self.poll_ms as usize),
        ] {
            if value == 0 {
                return Err(ConfigError(format!("{key} must be at least 1")));
            }
        }
        Ok(())
    }

    /// The registry service name, e.g. `model-trees`.
    pub fn service(&self) -> String {
        mlmesh_protocol::model::service_name(&self.family)
    }
}

/// Where a family's service keeps what: `DATA_DIR/model-<family>/`, shared by its replicas
/// (each with its own temporary directory).
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
    pub replica: String,
}

impl Layout {
    pub fn new(data_dir: &Path, family: &str, replica: &str) -> Self {
        Self {
            root: data_dir.join(mlmesh_protocol::model::service_name(family)),
            replica: replica.to_string(),
        }
    }
    pub fn database(&self) -> PathBuf {
        self.root.join("models.db")
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp").join(&self.replica)
    }
    /// This service's copy of a dataset version (named by its content address).
    pub fn dataset(&self, name: &str, address: &str) -> PathBuf {
        self.root
            .join("datasets")
            .join(name)
            .join(format!("{address}.parquet"))
    }
}

/// Runs a model service until `shutdown` resolves. Needs `server.data_dir`.
pub async fn serve(
    config: Config,
    server: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let data_dir = server.require_data_dir("model")?;
    let service = config.service();
    let warm = config.warm_models;
    let state = AppState::open(config, &server, &data_dir).await?;
    // After the router: it installs the metrics recorder the loads are counted in.
    let app = router(state.clone(), &server);
    state.warm(warm).await;
    let mut participation = Participation::new(&service, env!("CARGO_PKG_VERSION"));
    participation.metadata_updates = Some(state.published_models());
    let result = run_service(listener, app, &server, participation, shutdown).await;
    state.stop().await;
    result
}
