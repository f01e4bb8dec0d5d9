//! The user-facing commands (`mlmesh data …`), and how they find the platform: `--gateway` or
//! `MLMESH_GATEWAY`, else `DATA_DIR/endpoints.json` (its gateway once there is one, else the
//! service's own URL); the key from `--api-key` or `MLMESH_API_KEY`, else `DATA_DIR/admin.key`.

pub mod bench;
pub mod data;
pub mod detect;
pub mod ensemble;
pub mod model;
pub mod simulate;

use std::path::PathBuf;

use anyhow::{Context, bail};
use mlmesh_protocol::{Endpoints, ErrorBody};

#[derive(Debug, Clone, clap::Args)]
pub struct PlatformArgs {
    /// The platform's entry point.
    #[arg(long, env = "MLMESH_GATEWAY", global = true)]
    pub gateway: Option<String>,
    /// API key (sent as `Authorization: Bearer`).
    #[arg(long, env = "MLMESH_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
    /// Where `mlmesh up` keeps `endpoints.json` and `admin.key`.
    #[arg(
        long,
        env = "MLMESH_DATA_DIR",
        default_value = "mlmesh-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// [`PlatformArgs`] without `--json`, for `predict`, whose `--json` is the request.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// The platform's entry point.
    #[arg(long, env = "MLMESH_GATEWAY")]
    pub gateway: Option<String>,
    /// API key (sent as `Authorization: Bearer`).
    #[arg(long, env = "MLMESH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Where `mlmesh up` keeps `endpoints.json` and `admin.key`.
    #[arg(long, env = "MLMESH_DATA_DIR", default_value = "mlmesh-data")]
    pub data_dir: PathBuf,
}

impl From<ConnectArgs> for PlatformArgs {
    fn from(args: ConnectArgs) -> Self {
        Self {
            gateway: args.gateway,
            api_key: args.api_key,
            data_dir: args.data_dir,
            json: false,
        }
    }
}

/// A connection to one service of a running platform.
#[derive(Debug, Clone)]
pub struct Platform {
    pub base: String,
    key: Option<String>,
    pub http: reqwest::Client,
}

impl Platform {
    /// Finds where `service` answers.
    pub fn locate(args: &PlatformArgs, service: &str) -> anyhow::Result<Self> {
        let key = args.api_key.clone().or_else(|| {
            std::fs::read_to_string(args.data_dir.join("admin.key"))
                .ok()
                .map(|k| k.trim().to_string())
        });
        let base = match &args.gateway {
            Some(gateway) => gateway.clone(),
            None => {
                let path = args.data_dir.join("endpoints.json");
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "no running platform found ({} is missing): start one with `mlmesh up`, or pass --gateway URL",
                        path.display()
                    )
                })?;
                let endpoints: Endpoints = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not valid", path.display()))?;
                match (endpoints.gateway, endpoints.services.get(service)) {
                    (Some(gateway), _) => gateway,
                    (None, Some(urls)) if !urls.is_empty() => urls[0].clone(),
                    _ => bail!("the running platform has no {service} service"),
                }
            }
        };
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            key,
            http: reqwest::Client::new(),
        })
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        decode(self.request(reqwest::Method::GET, path).send().await?).await
    }
}

/// The answer's JSON, or the service's `{"error"}` message as the error.
pub async fn decode<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> anyhow::Result<T> {
    let status = response.status();
    if status.is_success() {
        return Ok(response.json().await?);
    }
    match response.json::<ErrorBody>().await {
        Ok(body) => bail!("{} ({status})", body.error),
        Err(_) => bail!("the service answered {status}"),
    }
}
