//! Forwarding: each call goes through the resilience stack of the service that owns it, body
//! streamed (uploads) or buffered (everything that may be retried), answer streamed back.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use mlmesh_client::mesh::{Answer, MODEL_SERVICE_PREFIX};
use mlmesh_client::transport::Transport;
use mlmesh_client::{Payload, gateway::error_chain, lookup};
use mlmesh_kit::ApiError;
use mlmesh_resilience::{
    BoxError, BreakerOpen, DeadlineAt, DeadlineExceeded, Idempotent, NoReplica, Upstream,
};
use serde_json::Value;
use tokio::time::Instant;

use crate::state::AppState;

/// Header model services put on inference answers: the batch's rows (for usage).
pub const ROWS_HEADER: &str = "x-mlmesh-rows";

/// Marks a response whose usage the handler already counted.
#[derive(Debug, Clone, Copy)]
pub struct Counted;

/// Turns a failed upstream call into the caller's status.
pub fn upstream_error(service: &str, error: &BoxError) -> ApiError {
    if error
        .downcast_ref::<mlmesh_resilience::Overloaded>()
        .is_some()
    {
        return ApiError::Unavailable(format!(
            "the gateway is saturated: too many calls in flight to {service}; retry shortly"
        ));
    }
    if let Some(d) = error.downcast_ref::<DeadlineExceeded>() {
        return ApiError::GatewayTimeout(format!("{service} gave no answer in time ({d})"));
    }
    if let Some(n) = error.downcast_ref::<NoReplica>() {
        return ApiError::Unavailable(n.to_string());
    }
    if let Some(b) = error.downcast_ref::<BreakerOpen>() {
        return ApiError::Unavailable(format!("{service}: {b}"));
    }
    ApiError::BadGateway(format!("{service}: {}", error_chain(&**error)))
}

/// Headers that belong to one connection, not to the request or answer. As `HeaderName`s, so
/// removing them from an answer does not parse and hash a string per name.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TRANSFER_ENCODING,
    header::TE,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
    header::HOST,
];

fn copy_request_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if HOP_BY_HOP.contains(name)
            || name == header::AUTHORIZATION
            || name.as_str() == crate::profile::HEADER
        {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

/// Options of one forwarded call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Forward {
    /// Buffer the body (up to this many bytes), so the call can be retried.
    pub buffer: Option<usize>,
    pub idempotent: bool,
    pub deadline: Option<DeadlineAt>,
    /// Read the whole answer before passing it on (small answers): the upstream connection
    /// goes back to the pool before the caller can send its next request, so it is reused
    /// instead of racing a new connection.
    pub buffer_response: bool,
}

impl Forward {
    /// Reads are buffered and retried; anything else is streamed once.
    pub fn for_method(method: &http::Method) -> Self {
        if method == http::Method::GET {
            Self {
                buffer: Some(0),
                idempotent: true,
                ..Self::default()
            }
        } else {
            Self::default()
        }
    }
}

/// Sends the caller's request, path and query unchanged (`path` overrides), to `upstream`.
pub async fn forward(
    upstream: &Upstream<Transport>,
    request: Request,
    path: Option<String>,
    options: Forward,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let payload = match options.buffer {
        Some(limit) => Payload::full(read_body(body, limit).await?),
        None => Payload::stream(body),
    };
    let target = path.unwrap_or_else(|| {
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string()
    });
    let mut outgoing = http::Request::builder()
        .method(parts.method)
        .uri(target)
        .body(payload)
        .map_err(|e| ApiError::bad_request(format!("cannot forward this request: {e}")))?;
    copy_request_headers(&parts.headers, outgoing.headers_mut());
    if options.idempotent {
        outgoing.extensions_mut().insert(Idempotent);
    }
    if let Some(d) = options.deadline {
        outgoing.extensions_mut().insert(d);
    }
    let response = upstream
        .call(outgoing)
        .await
        .map_err(|e| upstream_error(upstream.name(), &e))?;
    let (mut parts, incoming) = response.into_parts();
    for name in &HOP_BY_HOP {
        parts.headers.remove(name);
    }
    if options.buffer_response {
        let bytes = http_body_util::BodyExt::collect(incoming)
            .await
            .map_err(|e| {
                ApiError::BadGateway(format!("{}: the answer broke off: {e}", upstream.name()))
            })?
            .to_bytes();
        return Ok(Response::from_parts(parts, Body::from(bytes)));
    }
    Ok(Response::from_parts(parts, Body::new(incoming)))
}

/// Reads a body up to `limit` bytes (413 beyond).
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if error_chain(&e).contains("length limit") {
            ApiError::PayloadTooLarge(format!("the body is over the {limit}-byte limit"))
        } else {
            ApiError::bad_request(format!("cannot read the body: {e}"))
        }
    })
}

/// The deadline of an inference call: the caller's (`x-mlmesh-deadline-ms`) or the gateway's.
pub fn infer_deadline(state: &AppState, headers: &HeaderMap) -> DeadlineAt {
    let own = Instant::now() + Duration::from_millis(state.0.config.infer_timeout_ms);
    match DeadlineAt::from_headers(headers) {
        Some(DeadlineAt(caller)) => DeadlineAt(caller.min(own)),
        None => DeadlineAt(own),
    }
}

/// The model service serving `model` (404 when none does).
pub async fn owner(state: &AppState, model: &str) -> Result<Upstream<Transport>, ApiError> {
    match lookup::owner(&state.0.mesh, model)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
    {
        Some(service) => Ok(state.0.mesh.upstream(&service)),
        None => Err(ApiError::not_found(format!(
            "no model or ensemble named {model:?}; see GET /v1/models and GET /v1/ensembles"
        ))),
    }
}

/// A buffered answer as a response.
pub fn answer_response(answer: Answer) -> Response {
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() = answer.status;
    if let Some(ct) = answer.headers.get(header::CONTENT_TYPE) {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, ct.clone());
    }
    response
}

/// Asks every model service the same GET and merges the arrays under `key`.
pub async fn merge(
    state: &AppState,
    path: &str,
    key: &str,
    sort: impl Fn(&Value) -> String,
) -> Result<Response, ApiError> {
    let mesh = &state.0.mesh;
    let services = mesh.services(MODEL_SERVICE_PREFIX);
    let calls = services.iter().map(|s| {
        let upstream = mesh.upstream(s);
        async move {
            (
                s.clone(),
                mesh.call_json(&upstream, http::Method::GET, path, None, false, None)
                    .await,
            )
        }
    });
    let mut items: Vec<Value> = Vec::new();
    let mut failures = Vec::new();
    for (service, result) in futures_util::future::join_all(calls).await {
        match result {
            Ok(a) if a.status == StatusCode::OK => {
                let v: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
                if let Some(list) = v.get(key).and_then(Value::as_array) {
                    items.extend(list.iter().cloned());
                }
            }
            Ok(a) if a.status.is_client_error() => return Ok(answer_response(a)),
            Ok(a) => failures.push(format!("{service} answered {}", a.status)),
            Err(e) => failures.push(upstream_error(&service, &e).to_string()),
        }
    }
    if !failures.is_empty() && items.is_empty() && failures.len() == services.len() {
        return Err(ApiError::Unavailable(format!(
            "no model service answered: {}",
            failures.join("; ")
        )));
    }
    items.sort_by_key(|v| sort(v));
    let mut body = serde_json::Map::new();
    body.insert(key.to_string(), Value::Array(items));
    let mut response = axum::Json(Value::Object(body)).into_response();
    if !failures.is_empty() {
        // Say what is missing rather than fail the whole list.
        if let Ok(v) = HeaderValue::from_str(
            &failures
                .join("; ")
                .chars()
                .filter(|c| c.is_ascii() && !c.is_control())
                .collect::<String>(),
        ) {
            response
                .headers_mut()
                .insert(HeaderName::from_static("x-mlmesh-partial"), v);
        }
    }
    Ok(response)
}

/// A job lives in one model service: ask all, take the answer that is not 404.
pub async fn job(state: &AppState, request: Request) -> Result<Response, ApiError> {
    let mesh = &state.0.mesh;
    let method = request.method().clone();
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let body = read_body(request.into_body(), 1 << 20).await?;
    let services = mesh.services(MODEL_SERVICE_PREFIX);
    let calls = services.iter().map(|s| {
        let upstream = mesh.upstream(s);
        let (method, path) = (method.clone(), path.clone());
        let body: Option<Value> = serde_json::from_slice(&body).ok();
        async move {
            (
                s.clone(),
                mesh.call_json(&upstream, method, &path, body.as_ref(), false, None)
                    .await,
            )
        }
    });
    let mut not_found = None;
    let mut failure = None;
    for (service, result) in futures_util::future::join_all(calls).await {
        match result {
            Ok(a) if a.status == StatusCode::NOT_FOUND => not_found = Some(a),
            Ok(a) if a.status.is_server_error() => {
                failure = Some(ApiError::BadGateway(format!(
                    "{service} answered {}",
                    a.status
                )))
            }
            Ok(a) => return Ok(answer_response(a)),
            Err(e) => failure = Some(upstream_error(&service, &e)),
        }
    }
    if let Some(f) = failure {
        return Err(f);
    }
    not_found
        .map(answer_response)
        .ok_or_else(|| ApiError::Unavailable("no model service is registered".into()))
}
