//! The gateway: the platform's one entry point and its ensemble aggregator.
//!
//! Every call is authenticated (API key → role → rate limit) and counted (usage per key and
//! model). Then `/v1/datasets*` goes to the data service, training to the model service of the
//! algorithm's family, `/v1/models*`, `/v1/jobs*` and `/v2/models/{name}…` to the service that
//! serves the model (learnt from registry metadata, followed by watch), each through that
//! service's resilience stack ([`mlmesh_client::Mesh`]). Ensembles are the gateway's own: it
//! stores their definitions and answers them by calling members concurrently and combining
//! ([`mlmesh_ensemble`]). Responses can be shaped per client (`/mobile/…` or
//! `X-Mlmesh-Profile: mobile`).
//!
//! Layout: [`auth`] (keys, roles, rate limits), [`usage`] (accounting), [`db`] (tables),
//! [`state`] (caches and their refresh), [`routes`] (the gateway's own endpoints), [`proxy`]
//! (forwarding), [`profile`] (response shapes), [`lane`] (inference past the router).

pub mod auth;
pub mod db;
pub mod lane;
pub mod profile;
pub mod proxy;
pub mod routes;
pub mod stacking;
pub mod state;
pub mod throttle;
pub mod usage;

use std::future::Future;
use std::path::PathBuf;

use mlmesh_kit::serve::{Participation, run_service};
use mlmesh_kit::{ConfigError, ServerConfig};
use serde::Deserialize;
use tokio::net::TcpListener;

pub use routes::router;
pub use state::AppState;

pub const SERVICE: &str = "gateway";

/// `[gateway]` settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// A file holding the admin key (default `DATA_DIR/admin.key`, as `mlmesh up` writes it).
    pub admin_key_file: Option<PathBuf>,
    /// Longest wait for a model's answer, unless the caller asks for less.
    pub infer_timeout_ms: u64,
    /// Longest wait for any other upstream call (uploads, training requests).
    pub timeout_ms: u64,
    /// Largest inference body.
    pub max_request_bytes: usize,
    /// Upstream calls in flight per service beyond which calls are shed (503).
    pub max_in_flight: usize,
    /// Retries per call (idempotent calls only).
    pub retries: usize,
    /// How often usage counts are stored, and keys and ensembles re-read (other replicas').
    pub flush_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            admin_key_file: None,
            infer_timeout_ms: 10_000,
            timeout_ms: 300_000,
            max_request_bytes: 64 << 20,
            max_in_flight: 4096,
            retries: 2,
            flush_ms: 1000,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("gateway.infer_timeout_ms", self.infer_timeout_ms as usize),
            ("gateway.timeout_ms", self.timeout_ms as usize),
            ("gateway.max_request_bytes", self.max_request_bytes),
            ("gateway.max_in_flight", self.max_in_flight),
            ("gateway.flush_ms", self.flush_ms as usize),
        ] {
            if value == 0 {
                return Err(ConfigError(format!("{key} must be at least 1")));
            }
        }
        Ok(())
    }
}

/// Runs the gateway until `shutdown`; needs `server.data_dir` and `server.registry_url`.
pub async fn serve(
    config: Config,
    server: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let data_dir = server.require_data_dir(SERVICE)?;
    let state = AppState::open(config, &server, &data_dir).await?;
    let app = router(state.clone(), &server);
    let participation = Participation::new(SERVICE, env!("CARGO_PKG_VERSION"));
    let result = run_service(listener, app, &server, participation, shutdown).await;
    state.stop().await;
    result
}
