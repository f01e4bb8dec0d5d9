//! The autoscaler service. It collects: it discovers every instance through the registry,
//! scrapes its `/metrics` every `scrape_ms`, and keeps per-service series — request rate,
//! error rate, p99 latency, requests in flight, CPU cores, instances — raw in memory and per
//! minute in its own store, each with a retention. And it scales the services named in
//! `autoscaler.scale`: forecasts (`mlmesh-forecast`), a policy (`mlmesh-scaling`), and a
//! backend ([`backend`]: the `mlmesh up` supervisor's control API, or Kubernetes Deployments).
//!
//! Layout: [`Config`], [`router`] (`/v1/series`…, `/v1/scaling`), [`serve`]; [`scrape`]
//! (Prometheus text → counters → rates and quantiles), [`series`] (in-memory points, minute
//! roll-up, the store), [`scale`] (targets, decisions), [`backend`] (local, kubernetes).

pub mod abuse;
pub mod anomalies;
pub mod backend;
pub mod journal;
pub mod scale;
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

use mlmesh_scaling::{Kind, Limits};

use crate::backend::{Backend, LocalBackend};
use crate::scale::{DecisionRecord, History, Target, TargetState};
use crate::scrape::{Reading, delta};
use crate::series::{Observed, Point, Series};

pub const SERVICE: &str = "autoscaler";

/// How many decisions, anomaly events and abuse actions are kept in memory (and read back from
/// the journal at start).
pub const HISTORY: usize = 1000;

/// Autoscaler settings, section `[autoscaler]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Services to scale, comma-separated (e.g. `model-trees,model-linear`); empty: only
    /// collect.
    pub scale: String,
    /// `reactive`, `predictive` or `hybrid` (default).
    pub policy: String,
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Requests per second one replica serves at full utilisation (measure it with
    /// `mlmesh bench --direct`).
    pub capacity_rps: f64,
    pub target_utilisation: f64,
    /// Seconds between decisions (default 15).
    pub decide_s: u64,
    /// Bin width of the series the forecasters see (default 10 s).
    pub step_s: u64,
    /// Seconds from starting a replica to its first answer (sets the forecast horizon).
    pub startup_s: f64,
    /// Scale-down uses the highest recommendation of this many seconds (default 300).
    pub stabilisation_s: f64,
    /// Hybrid's reactive part holds a scale-down this long instead (unset: `stabilisation_s`);
    /// down to `startup_s + decide_s` saves idle replicas where the forecast follows the load.
    pub hybrid_stabilisation_s: Option<f64>,
    /// Where decisions are carried out: `local` (default; `mlmesh up`'s control API) or
    /// `kubernetes` (the scale of each service's Deployment).
    pub backend: String,
    /// The `mlmesh up` control API (the local backend); `up` sets it.
    pub control_url: Option<String>,
    /// File holding the control API's key; `up` sets it.
    pub control_key_file: Option<PathBuf>,
    /// Watch the gateways for abusive clients and throttle them (needs `admin_key_file`).
    pub abuse: bool,
    /// A client is abusive from this many calls per second…
    pub abuse_min_rps: f64,
    /// …and this many times its peers' median.
    pub abuse_factor: f64,
    /// How long a throttle lasts unless lifted earlier (seconds).
    pub abuse_throttle_s: u64,
    /// How often the gateways' client counts are read (ms).
    pub abuse_check_ms: u64,
    /// The Kubernetes API server (kubernetes backend); unset: the pod's service account, or
    /// else the local kubeconfig.
    pub kubernetes_url: Option<String>,
    /// Namespace of the Deployments; unset: the pod's own (or the kubeconfig's).
    pub kubernetes_namespace: Option<String>,
    /// A bearer token file for `kubernetes_url`.
    pub kubernetes_token_file: Option<PathBuf>,
    /// The Deployment of a service; `{service}` is replaced (default `mlmesh-{service}`, as in
    /// `deploy/kubernetes/`).
    pub kubernetes_deployment: String,
    /// The gateway's admin key file (to read clients and set throttles); `up` sets it.
    pub admin_key_file: Option<PathBuf>,
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
            scale: String::new(),
            policy: "hybrid".into(),
            min_replicas: 1,
            max_replicas: 4,
            capacity_rps: 1000.0,
            target_utilisation: 0.7,
            decide_s: 15,
            step_s: 10,
            startup_s: 5.0,
            stabilisation_s: 300.0,
            hybrid_stabilisation_s: None,
            backend: "local".into(),
            control_url: None,
            control_key_file: None,
            kubernetes_url: None,
            kubernetes_namespace: None,
            kubernetes_token_file: None,
            kubernetes_deployment: "mlmesh-{service}".into(),
            abuse: true,
            abuse_min_rps: 50.0,
            abuse_factor: 10.0,
            abuse_throttle_s: 60,
            abuse_check_ms: 1000,
            admin_key_file: None,
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
        check("decide_s", self.decide_s, 1, 3600)?;
        check("step_s", self.step_s, 1, 3600)?;
        check("abuse_throttle_s", self.abuse_throttle_s, 1, 86_400)?;
        check("abuse_check_ms", self.abuse_check_ms, 100, 60_000)?;
        let min_ok = self.abuse_min_rps.is_finite() && self.abuse_min_rps > 0.0;
        let factor_ok = self.abuse_factor.is_finite() && self.abuse_factor > 1.0;
        if !(min_ok && factor_ok) {
            return Err(ConfigError(format!(
                "autoscaler.abuse_min_rps ({}) must be positive and abuse_factor ({}) above 1",
                self.abuse_min_rps, self.abuse_factor
            )));
        }
        let plan = self.plan()?;
        match self.backend.as_str() {
            "local" => {}
            "kubernetes" => {
                for service in &plan.services {
                    let name = self.kube_settings().deployment_for(service);
                    if !backend::valid_object_name(&name) {
                        return Err(ConfigError(format!(
                            "autoscaler.kubernetes_deployment gives {name:?} for {service}, \
                             which cannot name a Deployment (lower-case letters, digits, '-', '.')"
                        )));
                    }
                }
                if let Some(ns) = &self.kubernetes_namespace
                    && (!backend::valid_object_name(ns) || ns.contains('.') || ns.len() > 63)
                {
                    return Err(ConfigError(format!(
                        "autoscaler.kubernetes_namespace {ns:?} cannot name a namespace"
                    )));
                }
            }
            other => {
                return Err(ConfigError(format!(
                    "autoscaler.backend is {other:?}; it must be local or kubernetes"
                )));
            }
        }
        Ok(())
    }

    /// The Kubernetes backend's settings.
    pub fn kube_settings(&self) -> backend::KubeSettings {
        backend::KubeSettings {
            url: self.kubernetes_url.clone(),
            namespace: self.kubernetes_namespace.clone(),
            token_file: self
                .kubernetes_token_file
                .as_ref()
                .map(|p| p.display().to_string()),
            deployment: self.kubernetes_deployment.clone(),
        }
    }

    /// The backend these settings name; `None` when it cannot be had (the reason is logged).
    async fn backend(&self) -> std::io::Result<Option<Backend>> {
        if self.backend == "kubernetes" {
            let backend = backend::KubeBackend::connect(self.kube_settings())
                .await
                .map_err(std::io::Error::other)?;
            return Ok(Some(Backend::Kubernetes(Box::new(backend))));
        }
        match (&self.control_url, &self.control_key_file) {
            (Some(url), Some(file)) => {
                let key = std::fs::read_to_string(file)?.trim().to_string();
                Ok(Some(Backend::Local(LocalBackend::new(url.clone(), key))))
            }
            _ => {
                tracing::warn!(
                    "autoscaler.scale names services but the local backend has no control API \
                     (autoscaler.control_url and control_key_file; `mlmesh up` sets them)"
                );
                Ok(None)
            }
        }
    }

    /// The scaling plan these settings describe.
    pub fn plan(&self) -> Result<scale::Plan, ConfigError> {
        let kind = Kind::parse(&self.policy).ok_or_else(|| {
            ConfigError(format!(
                "autoscaler.policy is {:?}; it must be reactive, predictive or hybrid",
                self.policy
            ))
        })?;
        let limits = Limits {
            min_replicas: self.min_replicas,
            max_replicas: self.max_replicas,
            capacity_rps: self.capacity_rps,
            target_utilisation: self.target_utilisation,
            scale_down_stabilisation_s: self.stabilisation_s,
            hybrid_stabilisation_s: self.hybrid_stabilisation_s,
            forecast_horizon_s: self.startup_s + self.decide_s as f64,
            ..Limits::default()
        };
        limits
            .check()
            .map_err(|e| ConfigError(format!("autoscaler: {e}")))?;
        if !(self.startup_s.is_finite() && self.startup_s >= 0.0) {
            return Err(ConfigError(format!(
                "autoscaler.startup_s is {}; it must be ≥ 0",
                self.startup_s
            )));
        }
        Ok(scale::Plan {
            services: self
                .scale
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            kind,
            limits,
            step_s: self.step_s,
            startup_s: self.startup_s,
            decide_s: self.decide_s as f64,
        })
    }
}

#[derive(Clone)]
pub struct AppState {
    series: Arc<Mutex<Series>>,
    store: Store,
    history: Arc<Mutex<History>>,
    targets: Arc<Mutex<Vec<TargetState>>>,
    anomalies: Arc<Mutex<anomalies::Anomalies>>,
    abuse: Arc<Mutex<abuse::Abuse>>,
    journal: journal::Journal,
}

impl AppState {
    fn series(&self) -> std::sync::MutexGuard<'_, Series> {
        self.series.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The scaled services and the latest decisions.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Scaling {
    pub targets: Vec<TargetState>,
    /// Newest last; at most the last 100.
    pub decisions: Vec<DecisionRecord>,
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
        .routes(routes!(scaling))
        .routes(routes!(anomaly_events))
        .routes(routes!(abuse_state))
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

/// The services being scaled, their forecasts, and the latest decisions with their reasons.
#[utoipa::path(get, path = "/v1/scaling", tag = "series",
    responses((status = 200, body = Scaling)))]
async fn scaling(State(state): State<AppState>) -> Json<Scaling> {
    let targets = state
        .targets
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let history = state.history();
    let skip = history.decisions.len().saturating_sub(100);
    Json(Scaling {
        targets,
        decisions: history.decisions.iter().skip(skip).cloned().collect(),
    })
}

/// Anomaly events on services' latency and error series, newest last (at most the last 1000).
#[utoipa::path(get, path = "/v1/anomalies", tag = "series",
    responses((status = 200, body = AnomalyList)))]
async fn anomaly_events(State(state): State<AppState>) -> Json<AnomalyList> {
    let events = state
        .anomalies
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .events
        .iter()
        .cloned()
        .collect();
    Json(AnomalyList { events })
}

/// Clients throttled now, and abuse decisions (newest last, at most the last 1000).
#[utoipa::path(get, path = "/v1/abuse", tag = "series",
    responses((status = 200, body = AbuseState)))]
async fn abuse_state(State(state): State<AppState>) -> Json<AbuseState> {
    let abuse = state.abuse.lock().unwrap_or_else(|e| e.into_inner());
    Json(AbuseState {
        throttled: abuse
            .throttled
            .keys()
            .map(|(kind, id)| format!("{kind}/{id}"))
            .collect(),
        events: abuse.events.iter().cloned().collect(),
    })
}

/// Answer of `GET /v1/abuse`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AbuseState {
    /// `kind/id` of each throttled client.
    pub throttled: Vec<String>,
    pub events: Vec<abuse::AbuseEvent>,
}

/// Answer of `GET /v1/anomalies`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AnomalyList {
    pub events: Vec<anomalies::AnomalyEvent>,
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
                entry.cpu_seconds += d.cpu_seconds * scale;
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
            let mut anomalies = state.anomalies.lock().unwrap_or_else(|e| e.into_inner());
            for (service, observed) in seen {
                // A service's first scrape has nothing to compare with: no rates yet.
                let first = series.newest(service).is_none();
                if let Some(minute) = series.add(service, observed, raw_retention_ms) {
                    finished.push((service.to_string(), minute));
                }
                if let Some(point) = series.newest(service)
                    && !first
                {
                    for event in anomalies.observe(service, point) {
                        state
                            .journal
                            .record(journal::Kind::Anomaly, &event.service, &event);
                    }
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

/// Decides for every target every `decide_s` and acts through the backend.
async fn scale_loop(
    plan: scale::Plan,
    backend: Backend,
    state: AppState,
    cancel: CancellationToken,
) {
    let mut targets: Vec<Target> = plan
        .services
        .iter()
        .filter_map(|s| Target::new(s, &plan).ok())
        .collect();
    let started = Instant::now();
    let step_ms = i64::try_from(plan.step_s * 1000).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(plan.decide_s));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        for target in &mut targets {
            let Some(points) = state.series().raw(&target.service, target.fed_until_ms) else {
                continue;
            };
            let Some(newest) = points.last().cloned() else {
                continue;
            };
            target.feed(&points, step_ms, now);
            let (replicas, error) = match backend.replicas(&target.service).await {
                Ok(n) => (n, None),
                Err(e) => (newest.instances, Some(e)),
            };
            let ready = newest.instances;
            let starting = replicas.saturating_sub(ready);
            let decision = target.decide(&newest, ready, starting, started.elapsed().as_secs_f64());
            target.state.replicas = decision.to;
            let mut record = DecisionRecord {
                service: target.service.clone(),
                at_ms: now,
                from: decision.from,
                to: decision.to,
                reactive: decision.reactive,
                predictive: decision.predictive,
                forecast_rps: target.state.forecast_rps,
                forecaster: target.state.forecaster.clone(),
                reason: decision.reason,
                applied: false,
                error,
            };
            if record.error.is_none() && decision.to != decision.from {
                match backend.scale(&target.service, decision.to).await {
                    Ok(()) => record.applied = true,
                    Err(e) => record.error = Some(e),
                }
            }
            if decision.to != decision.from || record.error.is_some() {
                tracing::info!(service = %record.service, from = record.from, to = record.to,
                    reason = %record.reason, applied = record.applied, "scaling decision");
                state
                    .journal
                    .record(journal::Kind::Decision, &record.service, &record);
                state.history().push(record);
            }
        }
        *state.targets.lock().unwrap_or_else(|e| e.into_inner()) =
            targets.iter().map(|t| t.state.clone()).collect();
    }
}

/// Runs the autoscaler until `shutdown`; needs `server.data_dir` (its store) and
/// `server.registry_url`. Ready after its first scrape.
pub async fn serve(
    config: Config,
    server: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let dir = server.require_data_dir(SERVICE)?;
    let store = Store::open(&dir.join("autoscaler.db"), series::MIGRATIONS)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let plan = config
        .plan()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let cancel = CancellationToken::new();
    let retention_ms = i64::try_from(config.retention_days * 86_400_000).unwrap_or(i64::MAX);
    // What was journalled before a restart is shown again.
    let restore = |e: mlmesh_store::StoreError| std::io::Error::other(e.to_string());
    let decisions = journal::newest(&store, journal::Kind::Decision, HISTORY)
        .await
        .map_err(restore)?;
    let anomaly_events = journal::newest(&store, journal::Kind::Anomaly, HISTORY)
        .await
        .map_err(restore)?;
    let abuse_events = journal::newest(&store, journal::Kind::Abuse, HISTORY)
        .await
        .map_err(restore)?;
    let state = AppState {
        series: Arc::default(),
        history: Arc::new(Mutex::new(History {
            decisions: decisions.into(),
        })),
        targets: Arc::default(),
        anomalies: Arc::new(Mutex::new(anomalies::Anomalies::with_events(
            anomaly_events,
        ))),
        abuse: Arc::new(Mutex::new(abuse::Abuse {
            events: abuse_events.into(),
            ..abuse::Abuse::default()
        })),
        journal: journal::Journal::spawn(store.clone(), retention_ms, cancel.clone()),
        store,
    };
    let readiness = Readiness::default();
    readiness.set_not_ready("no scrape yet");
    match &server.registry_url {
        Some(url) => {
            let discovery = Discovery::spawn(RegistryClient::new(url), None, cancel.clone());
            if !plan.services.is_empty()
                && let Some(backend) = config.backend().await?
            {
                tokio::spawn(scale_loop(plan, backend, state.clone(), cancel.clone()));
            }
            if config.abuse {
                match &config.admin_key_file {
                    Some(file) => {
                        let key = std::fs::read_to_string(file)?.trim().to_string();
                        let settings = abuse::AbuseSettings {
                            min_rps: config.abuse_min_rps,
                            factor: config.abuse_factor,
                            throttle_s: config.abuse_throttle_s,
                            check_ms: config.abuse_check_ms,
                        };
                        tokio::spawn(abuse::watch(
                            settings,
                            key,
                            discovery.clone(),
                            state.abuse.clone(),
                            state.journal.clone(),
                            cancel.clone(),
                        ));
                    }
                    None => tracing::info!(
                        "abuse control is off: no autoscaler.admin_key_file (`mlmesh up` sets it)"
                    ),
                }
            }
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
