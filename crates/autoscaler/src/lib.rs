//! The autoscaler service. This part collects: it discovers every instance through the
//! registry, scrapes its `/metrics` every `scrape_ms`, and keeps per-service series — request
//! rate, error rate, p99 latency, requests in flight, instances — raw in memory and per minute
//! in its own store, each with a retention. Forecasting, policies and the simulator live in
//! `mlmesh-forecast` and `mlmesh-scaling`.
//!
//! Layout: [`Config`], [`router`] (`/v1/series`…), [`serve`]; [`scrape`] (Prometheus text →
//! counters → rates and quantiles), [`series`] (in-memory points, minute roll-up, the store).

pub mod scrape;
pub mod series;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use futures_util::future::join_all;
use mlmesh_kit::discovery::{Discovery, RegistryClient};
use mlmesh_kit::extract::Json;
use mlmesh_kit::serve::{Participation, run_service};
use mlmesh_kit::{ApiError, App, ConfigError, Readiness, ServerConfig};
use mlmesh_protocol::ErrorBody;
use mlmesh_store::{Store, now_ms};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::scrape::{Reading, delta};
use crate::series::{Observed, Point, Series};

pub const SERVICE: &str = "autoscaler";

/// Autoscaler settings, section `[autoscaler]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// How often every instance's `/metrics` is read (default 1000 ms).
    pub scrape_ms: u64,
    /// How long one scrape may take (default 800 ms).
    pub scrape_timeout_ms: u64,
    /// How long each scrape's point is kept in memory (default 3600 s).
    pub raw_retention_s: u64,
    /// How long per-minute points are kept in the store (default 7 days).
    pub retention_days: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            scrape_ms: 1000,
            scrape_timeout_ms: 800,
            raw_retention_s: 3600,
            retention_days: 7,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let check = |name: &str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                Err(ConfigError(format!(
                    "autoscaler.{name} is {v}; it must be between {lo} and {hi}"
                )))
            } else {
                Ok(())
            }
        };
        check("scrape_ms", self.scrape_ms, 100, 60_000)?;
        check(
            "scrape_timeout_ms",
            self.scrape_timeout_ms,
            10,
            self.scrape_ms,
        )?;
        check("raw_retention_s", self.raw_retention_s, 10, 86_400)?;
        check("retention_days", self.retention_days, 1, 366)?;
        Ok(())
    }
}

#[derive(Clone)]
pub struct AppState {
    series: Arc<Mutex<Series>>,
    store: Store,
}

impl AppState {
    fn series(&self) -> std::sync::MutexGuard<'_, Series> {
        self.series.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The newest point of every service.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Overview {
    /// Service name → its newest point (none before its second scrape).
    #[schema(value_type = Object)]
    pub services: std::collections::BTreeMap<String, Option<Point>>,
}

/// A service's series.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServiceSeries {
    pub service: String,
    /// `raw` (every scrape) or `minute`.
    pub resolution: String,
    pub points: Vec<Point>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SeriesQuery {
    /// `raw` (default) or `minute`.
    pub resolution: Option<String>,
    /// Only points at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
}

#[derive(OpenApi)]
#[openapi(tags((name = "series", description = "Per-service metrics over time")))]
struct AutoscalerApi;

pub fn router(state: AppState, server: &ServerConfig, readiness: Readiness) -> Router {
    let api = OpenApiRouter::with_openapi(AutoscalerApi::openapi())
        .routes(routes!(overview))
        .routes(routes!(service_series))
        .with_state(state);
    App::new(SERVICE, env!("CARGO_PKG_VERSION"))
        .readiness(readiness)
        .router(api, server)
}

/// The newest point of every service seen.
#[utoipa::path(get, path = "/v1/series", tag = "series",
    responses((status = 200, body = Overview)))]
async fn overview(State(state): State<AppState>) -> Json<Overview> {
    let services = state
        .series()
        .services()
        .map(|(name, p)| (name.clone(), p.cloned()))
        .collect();
    Json(Overview { services })
}

/// One service's points, raw (every scrape, recent) or per minute (stored).
#[utoipa::path(get, path = "/v1/series/{service}", tag = "series", params(SeriesQuery),
    responses((status = 200, body = ServiceSeries), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn service_series(
    State(state): State<AppState>,
    Path(service): Path<String>,
    Query(query): Query<SeriesQuery>,
) -> Result<Json<ServiceSeries>, ApiError> {
    let since = query.since_ms.unwrap_or(0);
    let resolution = query.resolution.unwrap_or_else(|| "raw".into());
    let raw = state.series().raw(&service, since);
    let points = match resolution.as_str() {
        "raw" => raw,
        "minute" => {
            let stored = series::minutes(&state.store, service.clone(), since)
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            (raw.is_some() || !stored.is_empty()).then_some(stored)
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "resolution {other:?} is not raw or minute"
            )));
        }
    };
    let points = points.ok_or_else(|| {
        ApiError::not_found(format!(
            "no series for service {service:?}; see GET /v1/series"
        ))
    })?;
    Ok(Json(ServiceSeries {
        service,
        resolution,
        points,
    }))
}

/// Scrapes every instance every `scrape_ms` until cancelled.
async fn collect(
    config: Config,
    discovery: Discovery,
    state: AppState,
    readiness: Readiness,
    cancel: CancellationToken,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(config.scrape_timeout_ms))
        .build()
        .unwrap_or_default();
    let mut previous: HashMap<String, (Instant, Reading)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(config.scrape_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let raw_retention_ms = i64::try_from(config.raw_retention_s * 1000).unwrap_or(i64::MAX);
    let retention_ms = i64::try_from(config.retention_days * 86_400_000).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(snapshot) = discovery.snapshot() else {
            continue;
        };
        let reads = snapshot.instances.iter().map(|instance| {
            let http = http.clone();
            let url = format!("{}/metrics", instance.url);
            async move {
                let text = http.get(url).send().await.ok()?.text().await.ok()?;
                Some(Reading::parse(&text))
            }
        });
        let readings = join_all(reads).await;
        let now = Instant::now();
        let t_ms = now_ms();
        let mut seen: HashMap<&str, Observed> = HashMap::new();
        let mut alive = HashMap::new();
        for (instance, reading) in snapshot.instances.iter().zip(readings) {
            let Some(reading) = reading else { continue };
            let entry = seen
                .entry(instance.service.as_str())
                .or_insert_with(|| Observed {
                    t_ms,
                    seconds: config.scrape_ms as f64 / 1000.0,
                    ..Observed::default()
                });
            entry.instances += 1;
            entry.in_flight += reading.in_flight;
            if let Some((then, before)) = previous.get(&instance.id) {
                let (d, buckets) = delta(before, &reading);
                let seconds = now.duration_since(*then).as_secs_f64().max(1e-3);
                // Rates per instance over its own interval, summed over instances.
                let scale = entry.seconds / seconds;
                entry.requests += d.requests * scale;
                entry.errors += d.errors * scale;
                for (bound, count) in buckets {
                    *entry.buckets.entry(bound).or_default() += count;
                }
            }
            alive.insert(instance.id.clone(), (now, reading));
        }
        previous = alive;
        let mut finished = Vec::new();
        {
            let mut series = state.series();
            for (service, observed) in seen {
                if let Some(minute) = series.add(service, observed, raw_retention_ms) {
                    finished.push((service.to_string(), minute));
                }
            }
        }
        for (service, minute) in finished {
            if let Err(e) = series::store_minute(&state.store, service, minute, retention_ms).await
            {
                tracing::warn!(error = %e, "cannot store a minute of metrics");
            }
        }
        readiness.set_ready();
    }
}

/// Runs the autoscaler until `shutdown` resolves. Ready after its first scrape.
pub async fn serve(
    config: Config,
    server: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let dir = server
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("."));
    let store = Store::open(&dir.join("autoscaler.db"), series::MIGRATIONS)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let state = AppState {
        series: Arc::default(),
        store,
    };
    let readiness = Readiness::default();
    readiness.set_not_ready("no scrape yet");
    let cancel = CancellationToken::new();
    match &server.registry_url {
        Some(url) => {
            let discovery = Discovery::spawn(RegistryClient::new(url), None, cancel.clone());
            tokio::spawn(collect(
                config,
                discovery,
                state.clone(),
                readiness.clone(),
                cancel.clone(),
            ));
        }
        None => readiness.set_not_ready("no registry configured (server.registry_url)"),
    }
    let app = router(state, &server, readiness);
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
