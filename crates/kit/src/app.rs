//! [`App`]: turns a service's own routes into a complete mlmesh service — health, `/metrics`,
//! `/openapi.json`, JSON fallbacks and the protective middleware stack — as
//! `docs/specs/service.md` requires of every service.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mlmesh_protocol::{ErrorBody, Live, Ready};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
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

        let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
        telemetry::prometheus();
        let metrics_state = MetricsState::new(&self.service);

        // Outermost first: every request gets an id before it is traced, the trace span sees
        // the id, the id is echoed on the answer, panics become a JSON 500 instead of a closed
        // connection, then metrics time the handler, and the body limit guards extractors.
        let stack = ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http().make_span_with(|req: &Request| {
                    let id = req
                        .headers()
                        .get(REQUEST_ID_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    // Debug level: at info, building this span for every request (the JSON
                    // formatter renders its fields up front) was ~4% of the gateway's CPU.
                    // `log_level = "debug"` turns it on, request id included.
                    tracing::debug_span!("request", method = %req.method(), uri = %req.uri(), request_id = %id)
                }),
            )
            .layer(PropagateRequestIdLayer::new(request_id))
            .layer(CatchPanicLayer::custom(panic_response))
            .layer(middleware::from_fn_with_state(metrics_state, track_metrics))
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

async fn track_metrics(State(state): State<MetricsState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str());
    let metrics = state.route(req.method(), route);
    state.in_flight.increment(1.0);
    let response = next.run(req).await;
    state.in_flight.decrement(1.0);
    state.count(&metrics, response.status().as_u16());
    metrics.duration.record(start.elapsed().as_secs_f64());
    response
}

fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal("a request handler panicked".to_string()).into_response()
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
