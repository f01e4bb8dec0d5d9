//! [`App`]: turns a service's own routes into a complete mlmesh service — health, `/metrics`,
//! `/openapi.json`, JSON fallbacks and the envelope every request goes through — as
//! `docs/specs/service.md` requires of every service.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::FutureExt;
use mlmesh_protocol::{ErrorBody, Live, Ready};
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::ApiError;
use crate::config::ServerConfig;
use crate::extract::Json;
use crate::telemetry;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Whether the service can really serve; services flip it as their dependencies come and go.
/// Starts not ready.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<RwLock<Result<(), String>>>);

impl Default for Readiness {
    fn default() -> Self {
        Self(Arc::new(RwLock::new(Err("starting".to_string()))))
    }
}

impl Readiness {
    /// A readiness that is ready from the start (services with no dependencies).
    pub fn ready() -> Self {
        let readiness = Self::default();
        readiness.set_ready();
        readiness
    }
    pub fn set_ready(&self) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Ok(());
    }
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Err(reason.into());
    }
    pub fn check(&self) -> Result<(), String> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Builds a service's complete router.
#[derive(Debug, Clone)]
pub struct App {
    service: String,
    version: String,
    readiness: Readiness,
}

#[derive(Clone)]
struct KitState {
    readiness: Readiness,
    openapi: Arc<String>,
}

#[derive(Clone)]
struct MetricsState {
    service: Arc<str>,
    in_flight: metrics::Gauge,
    /// Handles per method and route, then per status: built once, so a request costs no label
    /// strings and no registry lookup (they were a dozen allocations per request).
    routes: Arc<RwLock<Routes>>,
}

type Routes = foldhash::HashMap<Method, foldhash::HashMap<Box<str>, Arc<RouteMetrics>>>;

struct RouteMetrics {
    method: Method,
    route: Box<str>,
    duration: metrics::Histogram,
    /// Few statuses per route: a short list beats a map.
    by_status: RwLock<Vec<(u16, metrics::Counter)>>,
}

impl MetricsState {
    fn new(service: &str) -> Self {
        Self {
            service: Arc::from(service),
            in_flight: metrics::gauge!(telemetry::HTTP_REQUESTS_IN_FLIGHT, "service" => service.to_string()),
            routes: Arc::default(),
        }
    }

    fn route(&self, method: &Method, route: &str) -> Arc<RouteMetrics> {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = routes.get(method).and_then(|r| r.get(route)) {
            return Arc::clone(hit);
        }
        drop(routes);
        let made = Arc::new(RouteMetrics {
            method: method.clone(),
            route: route.into(),
            duration: metrics::histogram!(telemetry::HTTP_REQUEST_DURATION_SECONDS,
                "service" => self.service.to_string(), "method" => method.as_str().to_owned(),
                "route" => route.to_owned()),
            by_status: RwLock::default(),
        });
        Arc::clone(
            self.routes
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry(method.clone())
                .or_default()
                .entry(route.into())
                .or_insert(made),
        )
    }

    fn count(&self, route: &RouteMetrics, status: u16) {
        let hit = route
            .by_status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, c)| c.clone());
        let counter = hit.unwrap_or_else(|| {
            let counter = metrics::counter!(telemetry::HTTP_REQUESTS_TOTAL,
                "service" => self.service.to_string(), "method" => route.method.as_str().to_owned(),
                "route" => route.route.to_string(), "status" => status.to_string());
            route
                .by_status
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .push((status, counter.clone()));
            counter
        });
        counter.increment(1);
    }
}

impl App {
    pub fn new(service: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            version: version.into(),
            readiness: Readiness::ready(),
        }
    }

    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// Wraps `api` (the service's own documented routes) into the full service router.
    pub fn router(self, api: OpenApiRouter, server: &ServerConfig) -> Router {
        let (api_router, mut openapi) = api.split_for_parts();
        let (_, kit_openapi) = OpenApiRouter::with_openapi(KitApi::openapi())
            .routes(utoipa_axum::routes!(live))
            .routes(utoipa_axum::routes!(ready))
            .routes(utoipa_axum::routes!(metrics))
            .routes(utoipa_axum::routes!(openapi_json))
            .split_for_parts();
        openapi.merge(kit_openapi);
        openapi.info.title = format!("mlmesh {}", self.service);
        openapi.info.version = self.version.clone();
        openapi.info.description = Some(format!(
            "The {} service of mlmesh. Errors are {{\"error\": \"…\"}} with a 4xx/5xx status.",
            self.service
        ));
        let openapi = openapi
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"openapi: {e}\"}}"));

        let kit = Router::new()
            .route("/v2/health/live", get(live))
            .route("/v2/health/ready", get(ready))
            .route("/metrics", get(metrics))
            .route("/openapi.json", get(openapi_json))
            .with_state(KitState {
                readiness: self.readiness,
                openapi: Arc::new(openapi),
            });

        let envelope = Envelope::new(&self.service);
        let stack = tower::ServiceBuilder::new()
            .layer(middleware::from_fn_with_state(envelope, enveloped))
            .layer(DefaultBodyLimit::max(server.body_limit_bytes));

        api_router
            .merge(kit)
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(stack)
    }
}

#[derive(OpenApi)]
#[openapi(components(schemas(ErrorBody)))]
struct KitApi;

/// What every request goes through, around its handler: an id (the caller's `x-request-id`, or a
/// fresh UUID) that is echoed on the answer, a debug-level span carrying it, panics turned into
/// a JSON 500 instead of a dropped connection, and the request metrics of its route.
///
/// One function rather than tower-http's request-id, trace and catch-panic layers plus a
/// metrics middleware: five nested futures cost ~5 % of the gateway's CPU per proxied request
/// (`perf`, BENCHMARKS.md), and a service can put its hottest route through this same envelope
/// without axum's per-route stack ([`Envelope::run`]).
#[derive(Clone)]
pub struct Envelope {
    metrics: MetricsState,
}

impl Envelope {
    /// The envelope of `service`'s requests (installs the metrics recorder if need be).
    pub fn new(service: &str) -> Self {
        telemetry::prometheus();
        Self {
            metrics: MetricsState::new(service),
        }
    }

    /// Runs `handler` on `request` inside the envelope; `route` is the route template that
    /// labels its metrics.
    pub async fn run<F, Fut>(&self, route: &str, mut request: Request, handler: F) -> Response
    where
        F: FnOnce(Request) -> Fut,
        Fut: Future<Output = Response>,
    {
        let start = Instant::now();
        let id = match request.headers().get(REQUEST_ID_HEADER) {
            Some(id) => id.clone(),
            None => {
                let fresh = new_request_id();
                request
                    .headers_mut()
                    .insert(HeaderName::from_static(REQUEST_ID_HEADER), fresh.clone());
                fresh
            }
        };
        // Debug level: at info, building this span for every request (the JSON formatter
        // renders its fields up front) was ~4 % of the gateway's CPU. `log_level = "debug"`
        // turns it on, request id included.
        let span = tracing::debug_span!("request", method = %request.method(),
            uri = %request.uri(), request_id = %id.to_str().unwrap_or(""));
        let metrics = self.metrics.route(request.method(), route);
        let in_flight = InFlight::new(&self.metrics.in_flight);
        let answer = AssertUnwindSafe(handler(request))
            .catch_unwind()
            .instrument(span)
            .await;
        drop(in_flight);
        let mut response = answer.unwrap_or_else(|_| {
            ApiError::Internal("a request handler panicked".to_string()).into_response()
        });
        self.metrics.count(&metrics, response.status().as_u16());
        metrics.duration.record(start.elapsed().as_secs_f64());
        response
            .headers_mut()
            .entry(HeaderName::from_static(REQUEST_ID_HEADER))
            .or_insert(id);
        response
    }
}

/// One request in flight; it leaves the gauge even when its future is dropped (the caller hung
/// up), so the gauge does not creep up.
struct InFlight<'a>(&'a metrics::Gauge);

impl<'a> InFlight<'a> {
    fn new(gauge: &'a metrics::Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// A fresh request id: a version 4 UUID (uuid's thread-local generator, no system call).
fn new_request_id() -> HeaderValue {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The envelope of routed requests; the route is the template axum matched.
async fn enveloped(State(envelope): State<Envelope>, request: Request, next: Next) -> Response {
    // A clone of axum's `Arc<str>`: the request moves on, the label stays.
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    envelope.run(route, request, |r| next.run(r)).await
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no endpoint {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{} does not accept {method}; see /openapi.json",
        uri.path()
    ))
}

/// Whether the process is up (Open Inference Protocol).
#[utoipa::path(get, path = "/v2/health/live", tag = "health",
    responses((status = 200, body = Live)))]
async fn live() -> Json<Live> {
    Json(Live { live: true })
}

/// Whether the service can really serve requests now (Open Inference Protocol).
#[utoipa::path(get, path = "/v2/health/ready", tag = "health",
    responses((status = 200, body = Ready), (status = 503, body = Ready)))]
async fn ready(State(state): State<KitState>) -> Response {
    match state.readiness.check() {
        Ok(()) => Json(Ready {
            ready: true,
            error: None,
        })
        .into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Ready {
                ready: false,
                error: Some(reason),
            }),
        )
            .into_response(),
    }
}

/// Prometheus text exposition of this process's metrics.
#[utoipa::path(get, path = "/metrics", tag = "observability",
    responses((status = 200, content_type = "text/plain; version=0.0.4", body = String)))]
async fn metrics() -> Response {
    let mut body = telemetry::prometheus().render();
    body.push_str(&process_cpu());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The process's CPU time, as Prometheus clients export it (`process_cpu_seconds_total`).
/// Written here rather than through the `metrics` facade, whose counters are integers: the
/// autoscaler reads CPU per second, so it needs the fractions.
fn process_cpu() -> String {
    use nix::sys::resource::{UsageWho, getrusage};
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
        return String::new();
    };
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    format!(
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n\
         # TYPE process_cpu_seconds_total counter\n\
         process_cpu_seconds_total {:.6}\n",
        seconds(usage.user_time()) + seconds(usage.system_time())
    )
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "observability",
    responses((status = 200, content_type = "application/json", body = Object)))]
async fn openapi_json(State(state): State<KitState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.as_str().to_owned(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn panics() -> &'static str {
        panic!("boom")
    }

    /// A service on 127.0.0.1:0 with one route that answers and one that panics.
    async fn start() -> String {
        let api = OpenApiRouter::new()
            .route("/ok/{name}", get(|| async { "fine" }))
            .route("/panics", get(panics));
        let router = App::new("envelope-test", "0").router(api, &ServerConfig::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(crate::serve(listener, router, std::future::pending()));
        url
    }

    #[tokio::test]
    async fn every_answer_has_an_id_panics_are_json_500s_and_routes_are_counted() {
        let url = start().await;
        let http = reqwest::Client::new();

        let answer = http.get(format!("{url}/ok/a")).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        let fresh = answer.headers()[REQUEST_ID_HEADER].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(fresh).is_ok(), "{fresh}");
        let answer = http
            .get(format!("{url}/ok/b"))
            .header(REQUEST_ID_HEADER, "mine-1")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.headers()[REQUEST_ID_HEADER], "mine-1");

        let answer = http
            .get(format!("{url}/panics"))
            .header(REQUEST_ID_HEADER, "mine-2")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 500);
        assert_eq!(answer.headers()[REQUEST_ID_HEADER], "mine-2");
        let body: serde_json::Value = answer.json().await.unwrap();
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );

        let answer = http.get(format!("{url}/nowhere")).send().await.unwrap();
        assert_eq!(answer.status(), 404);
        assert!(answer.headers().contains_key(REQUEST_ID_HEADER));

        let text = http
            .get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let count = |route: &str, status: u16| {
            let series = format!(
                "{}{{service=\"envelope-test\",method=\"GET\",route=\"{route}\",status=\"{status}\"}} ",
                telemetry::HTTP_REQUESTS_TOTAL
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&series))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        assert_eq!(count("/ok/{name}", 200), Some(2.0), "{text}");
        assert_eq!(count("/panics", 500), Some(1.0), "{text}");
        assert_eq!(count("unmatched", 404), Some(1.0), "{text}");
    }
}
