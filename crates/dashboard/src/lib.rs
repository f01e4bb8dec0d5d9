//! The dashboard service: one web page over the running platform — services, instances, their
//! readiness and lease age — fed by the registry watch (no polling of the registry).
//!
//! Layout: [`Config`], [`router`] (the page and its JSON feed `/v1/overview`), [`serve`].
//! The page is plain HTML and JavaScript embedded in the binary: nothing to build, nothing
//! fetched from outside.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::Html;
use futures_util::future::join_all;
use mlmesh_kit::discovery::{Discovery, RegistryClient};
use mlmesh_kit::extract::Json;
use mlmesh_kit::serve::{Participation, run_service};
use mlmesh_kit::{App, ConfigError, Readiness, ServerConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub const SERVICE: &str = "dashboard";

/// Dashboard settings, section `[dashboard]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// How long a readiness probe of one instance may take before it counts as not ready
    /// (default 500 ms: the page refreshes every 2 s).
    pub probe_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            probe_timeout_ms: 500,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.probe_timeout_ms == 0 || self.probe_timeout_ms > 10_000 {
            return Err(ConfigError(format!(
                "dashboard.probe_timeout_ms is {}; it must be between 1 and 10000",
                self.probe_timeout_ms
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct AppState {
    discovery: Option<Discovery>,
    registry: Option<RegistryClient>,
    registry_url: Option<String>,
    http: reqwest::Client,
}

/// What the page shows.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Overview {
    pub registry: Option<String>,
    /// Whether the dashboard has heard from the registry yet.
    pub synced: bool,
    pub services: BTreeMap<String, Vec<InstanceView>>,
    /// What the autoscaler sees and does, when one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerView>,
}

/// The autoscaler's own answers, passed through as it gave them (the dashboard does not
/// depend on its crate) but for its lists, cut to the newest 20: `GET /v1/series`,
/// `/v1/scaling`, `/v1/anomalies`, `/v1/abuse`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AutoscalerView {
    pub url: String,
    /// Each service's newest point: requests/s, errors/s, p99, in flight, CPU, instances.
    #[schema(value_type = Object)]
    pub load: serde_json::Value,
    #[schema(value_type = Object)]
    pub scaling: serde_json::Value,
    #[schema(value_type = Object)]
    pub anomalies: serde_json::Value,
    #[schema(value_type = Object)]
    pub abuse: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceView {
    pub id: String,
    pub url: String,
    pub version: String,
    pub last_seen_ms: u64,
    /// Answer of the instance's `/v2/health/ready` just now.
    pub ready: bool,
    /// Models the instance serves (model services publish them in their registry metadata).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
}

#[derive(OpenApi)]
#[openapi(tags((name = "dashboard", description = "The platform at a glance")))]
struct DashboardApi;

pub fn router(
    config: &Config,
    server: &ServerConfig,
    discovery: Option<Discovery>,
    readiness: Readiness,
) -> Router {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(config.probe_timeout_ms))
        .build()
        .unwrap_or_default();
    let state = AppState {
        discovery,
        registry: server.registry_url.as_deref().map(RegistryClient::new),
        registry_url: server.registry_url.clone(),
        http,
    };
    let api = OpenApiRouter::with_openapi(DashboardApi::openapi())
        .routes(routes!(page))
        .routes(routes!(overview))
        .with_state(state);
    App::new(SERVICE, env!("CARGO_PKG_VERSION"))
        .readiness(readiness)
        .router(api, server)
}

/// Runs the dashboard until `shutdown` resolves. Ready once it has heard from the registry.
pub async fn serve(
    config: Config,
    server: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let cancel = CancellationToken::new();
    let readiness = Readiness::default();
    let discovery = match &server.registry_url {
        Some(url) => {
            let discovery = Discovery::spawn(RegistryClient::new(url), None, cancel.clone());
            tokio::spawn(track_readiness(discovery.clone(), readiness.clone()));
            Some(discovery)
        }
        None => {
            readiness.set_not_ready("no registry configured (server.registry_url)");
            None
        }
    };
    let app = router(&config, &server, discovery, readiness);
    let result = run_service(
        listener,
        app,
        &server,
        Participation::new(SERVICE, env!("CARGO_PKG_VERSION")),
        shutdown,
    )
    .await;
    cancel.cancel();
    result
}

async fn track_readiness(mut discovery: Discovery, readiness: Readiness) {
    loop {
        if discovery.snapshot().is_some() {
            readiness.set_ready();
            return;
        }
        readiness.set_not_ready("waiting for the registry");
        if !discovery.changed().await {
            return;
        }
    }
}

/// The dashboard page.
#[utoipa::path(get, path = "/", tag = "dashboard",
    responses((status = 200, content_type = "text/html", body = String)))]
async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

/// Services and instances with their readiness, for the page and for scripts.
#[utoipa::path(get, path = "/v1/overview", tag = "dashboard",
    responses((status = 200, body = Overview)))]
async fn overview(State(state): State<AppState>) -> Json<Overview> {
    // Ask the registry itself: heartbeats do not change the watched snapshot, so only a fresh
    // look shows each instance's lease age. The watched cache stands in when it is unreachable.
    let live = match &state.registry {
        Some(registry) => registry.instances(None).await.ok().map(std::sync::Arc::new),
        None => None,
    };
    let snapshot = live.or_else(|| state.discovery.as_ref().and_then(Discovery::snapshot));
    let instances = snapshot.as_ref().map_or(&[][..], |s| &s.instances[..]);
    // Probe all instances concurrently: the page's latency is the slowest probe, not the sum.
    let probes = instances.iter().map(|i| {
        let http = state.http.clone();
        let url = format!("{}/v2/health/ready", i.url);
        async move {
            http.get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    });
    let ready = join_all(probes).await;
    let mut services: BTreeMap<String, Vec<InstanceView>> = BTreeMap::new();
    for (instance, ready) in instances.iter().zip(ready) {
        services
            .entry(instance.service.clone())
            .or_default()
            .push(InstanceView {
                id: instance.id.clone(),
                url: instance.url.clone(),
                version: instance.version.clone(),
                last_seen_ms: instance.last_seen_ms,
                ready,
                models: instance
                    .metadata
                    .get("models")
                    .and_then(|m| m.as_array())
                    .map(|m| {
                        m.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            });
    }
    let autoscaler = match services
        .get("autoscaler")
        .and_then(|a| a.iter().find(|i| i.ready))
    {
        Some(instance) => autoscaler_view(&state.http, &instance.url).await,
        None => None,
    };
    Json(Overview {
        registry: state.registry_url.clone(),
        synced: snapshot.is_some(),
        services,
        autoscaler,
    })
}

/// The autoscaler's four answers, read concurrently; none if any of them fails.
async fn autoscaler_view(http: &reqwest::Client, url: &str) -> Option<AutoscalerView> {
    let get = |path: &'static str| {
        let request = http.get(format!("{url}{path}"));
        async move {
            let response = request.send().await.ok()?.error_for_status().ok()?;
            response.json::<serde_json::Value>().await.ok()
        }
    };
    let (load, scaling, anomalies, abuse) = tokio::join!(
        get("/v1/series"),
        get("/v1/scaling"),
        get("/v1/anomalies"),
        get("/v1/abuse")
    );
    let (mut scaling, mut anomalies, mut abuse) = (scaling?, anomalies?, abuse?);
    // The autoscaler keeps up to a thousand of each; the page shows the newest few.
    keep_newest(&mut scaling["decisions"]);
    keep_newest(&mut anomalies["events"]);
    keep_newest(&mut abuse["events"]);
    Some(AutoscalerView {
        url: url.to_string(),
        load: load?,
        scaling,
        anomalies,
        abuse,
    })
}

/// How many decisions and events the overview passes on (newest last).
const NEWEST: usize = 20;

fn keep_newest(list: &mut serde_json::Value) {
    if let Some(items) = list.as_array_mut() {
        let extra = items.len().saturating_sub(NEWEST);
        items.drain(..extra);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_keep_their_newest_entries() {
        let mut long = serde_json::Value::from((0..25).collect::<Vec<i32>>());
        keep_newest(&mut long);
        let kept: Vec<i64> = long
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(kept, (5..25).collect::<Vec<i64>>());
        let mut short = serde_json::json!([1, 2]);
        keep_newest(&mut short);
        assert_eq!(short, serde_json::json!([1, 2]));
        let mut missing = serde_json::Value::Null;
        keep_newest(&mut missing);
        assert!(missing.is_null());
    }
}
