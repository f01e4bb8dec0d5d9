//! The gateway's router: authentication in front of everything (but health and `/metrics`),
//! its own endpoints (keys, usage, ensembles, inference) and the forwarded ones.

use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use mlmesh_client::direct::{self, EnsembleError};
use mlmesh_kit::extract::Json;
use mlmesh_kit::{ApiError, App, ServerConfig};
use mlmesh_protocol::ErrorBody;
use mlmesh_protocol::gateway::{
    CreatedKey, Ensemble, EnsembleList, EnsembleSpec, KeyInfo, KeyList, NewKey, Role, Usage,
};
use mlmesh_protocol::model::family_of;
use mlmesh_protocol::v2::{
    Datatype, InferRequest, InferResponse, ModelMetadata, ServerMetadata, TensorMetadata,
};
use mlmesh_protocol::v2_binary;
use mlmesh_store::now_ms;
use serde_json::{Value, json};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{self, ADMIN_KEY_ID, Caller, Refusal};
use crate::db::{self, StoredKey};
use crate::profile::{self, Profile};
use crate::proxy::{self, Counted, Forward, ROWS_HEADER};
use crate::state::AppState;
use crate::throttle::{ClientCount, ClientList, SetThrottle, Subject, ThrottleInfo, ThrottleList};
use crate::usage::NO_MODEL;

#[derive(OpenApi)]
#[openapi(
    info(title = "mlmesh gateway"),
    tags((name = "ensembles"), (name = "keys"), (name = "inference"))
)]
struct GatewayApi;

/// Largest `/v1` JSON body the gateway reads itself.
const SMALL_BODY: usize = 1 << 20;

pub fn router(state: AppState, server: &ServerConfig) -> Router {
    let api = OpenApiRouter::with_openapi(GatewayApi::openapi())
        .routes(routes!(create_key, list_keys))
        .routes(routes!(delete_key))
        .routes(routes!(usage))
        .routes(routes!(list_clients))
        .routes(routes!(list_throttles))
        .routes(routes!(set_throttle, delete_throttle))
        .routes(routes!(list_ensembles))
        .routes(routes!(put_ensemble, get_ensemble, delete_ensemble))
        .routes(routes!(server_metadata))
        .routes(routes!(infer_latest))
        .routes(routes!(infer_version))
        .route("/{profile}/v2/models/{name}/infer", post(infer_profiled))
        .route(
            "/{profile}/v2/models/{name}/versions/{version}/infer",
            post(infer_profiled_version),
        )
        .route("/v2/models/{name}", get(model_get))
        .route("/v2/models/{name}/ready", get(model_get))
        .route("/v2/models/{name}/versions/{version}", get(model_get))
        .route("/v2/models/{name}/versions/{version}/ready", get(model_get))
        .route("/v1/datasets", any(datasets))
        .route("/v1/datasets/{*rest}", any(datasets))
        .route("/v1/algorithms", get(algorithms))
        .route("/v1/models", get(models))
        .route("/v1/models/{name}/train", post(train))
        .route("/v1/models/{name}/import", post(import))
        .route("/v1/models/{name}", any(model_any))
        .route("/v1/models/{name}/{*rest}", any(model_any))
        .route("/v1/jobs", get(jobs))
        .route("/v1/jobs/{*rest}", any(job_any))
        .with_state(state.clone());
    let routed = App::new(crate::SERVICE, env!("CARGO_PKG_VERSION"))
        .readiness(state.0.readiness.clone())
        .router(api, server)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    // Inference skips the router's stack; everything else is routed (`lane`).
    Router::new().fallback_service(crate::lane::Lane {
        state,
        envelope: mlmesh_kit::Envelope::new(crate::SERVICE),
        router: routed,
    })
}

/// Admits a request by its key and role, takes its rate, and counts calls that the handlers
/// do not count themselves.
async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path.starts_with("/v2/health/") || path == "/metrics" {
        return next.run(request).await;
    }
    let caller = match admit(&state, &request) {
        Ok(caller) => caller,
        Err(refused) => return refused.into_response(),
    };
    request.extensions_mut().insert(caller.clone());
    let response = next.run(request).await;
    if response.extensions().get::<Counted>().is_none() {
        let error = response.status().is_client_error() || response.status().is_server_error();
        state.0.usage.count(&caller.id, NO_MODEL, 0, error);
    }
    response
}

/// The caller of `request` if its key, role, rate and throttles let it in; else the refusal.
pub(crate) fn admit(state: &AppState, request: &Request) -> Result<Caller, ApiError> {
    let needed = auth::needed(request.method(), request.uri().path());
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let addr = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(addr) = addr {
        state.0.throttles.count(addr);
    }
    let caller = match state.0.keys.admit(token, needed) {
        Ok(caller) => caller,
        Err(refusal) => {
            let error = match refusal {
                Refusal::Missing => ApiError::Unauthorized(
                    "send an API key as `Authorization: Bearer <key>`".into(),
                ),
                Refusal::Unknown => {
                    ApiError::Unauthorized("the API key is not valid (unknown or deleted)".into())
                }
                Refusal::Forbidden(have, need) => ApiError::Forbidden(format!(
                    "a {} key cannot {} {}; it needs a {} key",
                    role_name(have),
                    request.method(),
                    request.uri().path(),
                    role_name(need)
                )),
                Refusal::RateLimited {
                    retry_after_s,
                    rate,
                    id,
                } => {
                    state.0.usage.count(&id, NO_MODEL, 0, true);
                    ApiError::TooManyRequests {
                        message: format!(
                            "this key may make {rate} requests per second; retry after {retry_after_s} s"
                        ),
                        retry_after_s,
                    }
                }
            };
            return Err(error);
        }
    };
    if let Err(t) = state.0.throttles.admit(Some(&caller.id), addr) {
        state.0.usage.count(&caller.id, NO_MODEL, 0, true);
        return Err(ApiError::TooManyRequests {
            message: format!(
                "this client is throttled to {} requests per second{}; retry after {} s",
                t.rate_per_s,
                t.reason.map(|r| format!(" ({r})")).unwrap_or_default(),
                t.retry_after_s
            ),
            retry_after_s: t.retry_after_s,
        });
    }
    Ok(caller)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::Train => "train",
        Role::Predict => "predict",
    }
}

fn store_error(e: mlmesh_store::StoreError) -> ApiError {
    ApiError::Internal(e.to_string())
}

// ---- keys and usage ----

/// Creates an API key (admin). The key is in this answer only; the gateway keeps its hash.
#[utoipa::path(post, path = "/v1/keys", tag = "keys", request_body = NewKey,
    responses((status = 201, body = CreatedKey), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn create_key(
    State(state): State<AppState>,
    Json(new): Json<NewKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    if let Some(rate) = new.rate_per_s
        && !(1..=1_000_000).contains(&rate)
    {
        return Err(ApiError::bad_request(
            "rate_per_s must be between 1 and 1000000",
        ));
    }
    if let Some(name) = &new.name
        && (name.len() > 200 || name.chars().any(char::is_control))
    {
        return Err(ApiError::bad_request(
            "name must be at most 200 printable characters",
        ));
    }
    let secret = auth::new_secret().map_err(|e| ApiError::Internal(e.to_string()))?;
    let id = auth::new_id().map_err(|e| ApiError::Internal(e.to_string()))?;
    let stored = StoredKey {
        info: KeyInfo {
            id: id.clone(),
            role: new.role,
            rate_per_s: new.rate_per_s,
            name: new.name,
            created_ms: now_ms(),
        },
        hash: auth::hash(&secret).to_vec(),
    };
    let copy = stored.clone();
    state
        .0
        .store
        .write(move |tx| db::put_key(tx, &copy))
        .await
        .map_err(store_error)?;
    state.0.keys.insert(&stored);
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            id,
            key: secret,
            role: new.role,
        }),
    ))
}

/// Lists keys (never the keys themselves).
#[utoipa::path(get, path = "/v1/keys", tag = "keys", responses((status = 200, body = KeyList)))]
async fn list_keys(State(state): State<AppState>) -> Json<KeyList> {
    Json(KeyList {
        keys: state.0.keys.list(),
    })
}

/// Deletes a key; it stops working at once on this replica, within `flush_ms` on others.
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if id == ADMIN_KEY_ID {
        return Err(ApiError::Conflict(
            "the admin key comes from admin.key; replace that file to change it".into(),
        ));
    }
    let target = id.clone();
    let deleted = state
        .0
        .store
        .write(move |tx| db::delete_key(tx, &target))
        .await
        .map_err(store_error)?;
    if !deleted {
        return Err(ApiError::not_found(format!("no key {id}")));
    }
    state.0.keys.remove(&id);
    Ok(StatusCode::NO_CONTENT)
}

/// Calls so far per key and per client address, refused ones included (what abuse detection
/// watches).
#[utoipa::path(get, path = "/v1/clients", tag = "abuse",
    responses((status = 200, body = ClientList)))]
async fn list_clients(State(state): State<AppState>) -> Json<ClientList> {
    let keys = state
        .0
        .keys
        .attempts()
        .into_iter()
        .map(|(id, requests)| ClientCount {
            kind: "key".into(),
            id,
            requests,
        });
    let addresses = state
        .0
        .throttles
        .addresses()
        .into_iter()
        .map(|(id, requests)| ClientCount {
            kind: "addr".into(),
            id,
            requests,
        });
    Json(ClientList {
        clients: keys.chain(addresses).collect(),
    })
}

/// Throttles in force on this gateway replica.
#[utoipa::path(get, path = "/v1/throttles", tag = "abuse",
    responses((status = 200, body = ThrottleList)))]
async fn list_throttles(State(state): State<AppState>) -> Json<ThrottleList> {
    Json(ThrottleList {
        throttles: state.0.throttles.list(),
    })
}

/// Throttles a key (`key`, by id) or a client address (`addr`) for a while. The autoscaler
/// sets these on every gateway replica when it sees abuse.
#[utoipa::path(put, path = "/v1/throttles/{kind}/{id}", tag = "abuse", request_body = SetThrottle,
    params(("kind" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = ThrottleInfo), (status = 400, body = ErrorBody)))]
async fn set_throttle(
    State(state): State<AppState>,
    Path((kind, id)): Path<(String, String)>,
    Json(body): Json<SetThrottle>,
) -> Result<Json<ThrottleInfo>, ApiError> {
    let subject = Subject::parse(&kind, &id).map_err(ApiError::BadRequest)?;
    if subject == Subject::Key(ADMIN_KEY_ID.to_string()) {
        return Err(ApiError::bad_request(
            "the admin key cannot be throttled: it is how throttles are lifted",
        ));
    }
    let info = state
        .0
        .throttles
        .set(subject, &body)
        .map_err(ApiError::BadRequest)?;
    tracing::warn!(kind = %info.kind, id = %info.id, rate = info.rate_per_s, reason = ?info.reason, "throttled");
    Ok(Json(info))
}

/// Lifts a throttle.
#[utoipa::path(delete, path = "/v1/throttles/{kind}/{id}", tag = "abuse",
    params(("kind" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_throttle(
    State(state): State<AppState>,
    Path((kind, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let subject = Subject::parse(&kind, &id).map_err(ApiError::BadRequest)?;
    if state.0.throttles.remove(&subject) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no throttle on {kind} {id}")))
    }
}

/// Requests, rows and errors per key and model; admin keys see everyone's, others their own.
#[utoipa::path(get, path = "/v1/usage", tag = "keys", responses((status = 200, body = Usage)))]
async fn usage(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Usage>, ApiError> {
    let stored = state.0.store.read(db::usage).await.map_err(store_error)?;
    let mut all = state.0.usage.merged(stored);
    if caller.role != Role::Admin {
        all.retain(|r| *r.key == *caller.id);
    }
    Ok(Json(Usage { usage: all }))
}

// ---- ensembles ----

fn ensemble_error(e: EnsembleError) -> Response {
    match e {
        EnsembleError::Invalid(m) => ApiError::BadRequest(m).into_response(),
        EnsembleError::NotFound(m) => ApiError::NotFound(m).into_response(),
        EnsembleError::Unavailable { message, members } => {
            // Every member refused the input itself: that is the caller's mistake, not ours.
            let all_refused = members
                .as_ref()
                .and_then(Value::as_array)
                .is_some_and(|reports| {
                    let failed: Vec<&str> = reports
                        .iter()
                        .filter_map(|r| r.get("error").and_then(Value::as_str))
                        .collect();
                    !failed.is_empty() && failed.iter().all(|e| e.starts_with("answered 4"))
                });
            let status = if all_refused {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let mut body = json!({"error": message});
            if let Some(m) = members {
                body["members"] = m;
            }
            (status, axum::Json(body)).into_response()
        }
    }
}

/// Defines (or replaces) an ensemble, after checking that its members exist and that their
/// answers can be combined.
#[utoipa::path(put, path = "/v1/ensembles/{name}", tag = "ensembles", params(("name" = String, Path)),
    request_body = EnsembleSpec,
    responses((status = 201, body = Ensemble), (status = 200, body = Ensemble), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn put_ensemble(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Json(spec): Json<EnsembleSpec>,
) -> Response {
    if let Err(m) = mlmesh_kit::names::check("ensemble", &name) {
        return ApiError::BadRequest(m).into_response();
    }
    if state.0.mesh.owner(&name).is_some() {
        return ApiError::Conflict(format!(
            "a model is named {name}; an ensemble needs a name of its own"
        ))
        .into_response();
    }
    let ensembles = state.ensembles();
    let created_ms = ensembles.get(&name).map_or_else(now_ms, |e| e.created_ms);
    let mut ensemble = match direct::define(
        &state.0.mesh,
        &name,
        &spec,
        |m| ensembles.contains_key(m),
        created_ms,
    )
    .await
    {
        Ok(e) => e,
        Err(e) => return ensemble_error(e),
    };
    if let Some(stacking) = &spec.stacking {
        match crate::stacking::train(&state, &ensemble, stacking).await {
            Ok(info) => ensemble.stacking = Some(info),
            Err(e) => return ensemble_error(e),
        }
    }
    let copy = ensemble.clone();
    let replaced = match state
        .0
        .store
        .write(move |tx| db::put_ensemble(tx, &copy))
        .await
    {
        Ok(r) => r,
        Err(e) => return store_error(e).into_response(),
    };
    state.set_ensemble(ensemble.clone());
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    (status, axum::Json(ensemble)).into_response()
}

#[utoipa::path(get, path = "/v1/ensembles", tag = "ensembles", responses((status = 200, body = EnsembleList)))]
async fn list_ensembles(State(state): State<AppState>) -> Json<EnsembleList> {
    let mut ensembles: Vec<Ensemble> = state.ensembles().values().map(|e| (**e).clone()).collect();
    ensembles.sort_by(|a, b| a.name.cmp(&b.name));
    Json(EnsembleList { ensembles })
}

#[utoipa::path(get, path = "/v1/ensembles/{name}", tag = "ensembles", params(("name" = String, Path)),
    responses((status = 200, body = Ensemble), (status = 404, body = ErrorBody)))]
async fn get_ensemble(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Ensemble>, ApiError> {
    state
        .ensemble(&name)
        .map(|e| Json((*e).clone()))
        .ok_or_else(|| ApiError::not_found(format!("no ensemble {name}")))
}

#[utoipa::path(delete, path = "/v1/ensembles/{name}", tag = "ensembles", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_ensemble(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let target = name.clone();
    let deleted = state
        .0
        .store
        .write(move |tx| db::delete_ensemble(tx, &target))
        .await
        .map_err(store_error)?;
    if !deleted {
        return Err(ApiError::not_found(format!("no ensemble {name}")));
    }
    state.remove_ensemble(&name);
    Ok(StatusCode::NO_CONTENT)
}

// ---- inference ----

#[utoipa::path(get, path = "/v2", tag = "inference", responses((status = 200, body = ServerMetadata)))]
async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "mlmesh gateway".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: vec!["binary_tensor_data".into()],
    })
}

/// Predicts with a model's latest version or with an ensemble (Open Inference Protocol).
#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "inference", params(("name" = String, Path)),
    request_body = InferRequest,
    responses((status = 200, body = InferResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn infer_latest(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    infer(state, caller, name, None, None, request).await
}

/// Predicts with one version of a model.
#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", tag = "inference",
    params(("name" = String, Path), ("version" = String, Path)), request_body = InferRequest,
    responses((status = 200, body = InferResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn infer_version(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, version)): Path<(String, String)>,
    request: Request,
) -> Response {
    infer(state, caller, name, Some(version), None, request).await
}

async fn infer_profiled(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((profile, name)): Path<(String, String)>,
    request: Request,
) -> Response {
    infer(state, caller, name, None, Some(profile), request).await
}

async fn infer_profiled_version(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((profile, name, version)): Path<(String, String, String)>,
    request: Request,
) -> Response {
    infer(state, caller, name, Some(version), Some(profile), request).await
}

pub(crate) async fn infer(
    state: AppState,
    caller: Caller,
    name: String,
    version: Option<String>,
    prefix: Option<String>,
    request: Request,
) -> Response {
    let (response, rows) = match infer_inner(&state, &name, version, prefix, request).await {
        Ok(r) => r,
        Err(e) => (e.into_response(), 0),
    };
    let error = !response.status().is_success();
    state.0.usage.count(&caller.id, &name, rows, error);
    let mut response = response;
    response.extensions_mut().insert(Counted);
    response
}

fn decode(headers: &HeaderMap, body: &[u8]) -> Result<InferRequest, ApiError> {
    let header_length = match headers.get(v2_binary::HEADER) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|t| t.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(format!("{} must be a byte count", v2_binary::HEADER))
                })?,
        ),
    };
    let request = v2_binary::decode_request(body, header_length).map_err(ApiError::BadRequest)?;
    if request.inputs.is_empty() {
        return Err(ApiError::bad_request("the request has no inputs"));
    }
    Ok(request)
}

fn wants_probabilities(request: &InferRequest) -> bool {
    request
        .outputs
        .as_ref()
        .is_some_and(|o| o.iter().any(|o| o.name == "probabilities"))
        || request
            .parameters
            .as_ref()
            .and_then(|p| p.get("probabilities"))
            .and_then(Value::as_bool)
            == Some(true)
}

fn encode(response: InferResponse, request: &InferRequest) -> Response {
    let binary: Vec<String> = response
        .outputs
        .iter()
        .map(|o| o.name.clone())
        .filter(|o| v2_binary::wants_binary(request, o))
        .collect();
    let (body, header_length) =
        v2_binary::encode_response(response, |o| binary.iter().any(|b| b == o));
    let mut out = Response::new(Body::from(body));
    match header_length {
        None => {
            out.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        Some(length) => {
            out.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            if let Ok(v) = HeaderValue::from_str(&length.to_string()) {
                out.headers_mut()
                    .insert(HeaderName::from_static(v2_binary::HEADER), v);
            }
        }
    }
    out
}

fn rows_of(response: &InferResponse) -> u64 {
    response
        .outputs
        .first()
        .and_then(|o| o.shape.first())
        .copied()
        .unwrap_or(0)
}

async fn infer_inner(
    state: &AppState,
    name: &str,
    version: Option<String>,
    prefix: Option<String>,
    request: Request,
) -> Result<(Response, u64), ApiError> {
    let profile =
        Profile::choose(prefix.as_deref(), request.headers()).map_err(ApiError::BadRequest)?;
    let deadline = proxy::infer_deadline(state, request.headers());
    let limit = state.0.config.max_request_bytes;
    if let Some(ensemble) = state.ensemble(name) {
        if version.is_some() {
            return Err(ApiError::not_found(format!(
                "ensemble {name} has no versions; call /v2/models/{name}/infer"
            )));
        }
        let (parts, body) = request.into_parts();
        let body = proxy::read_body(body, limit).await?;
        let mut v2 = decode(&parts.headers, &body)?;
        let probabilities = wants_probabilities(&v2) || profile == Profile::Mobile;
        let answer = direct::infer(
            &state.0.mesh,
            &ensemble,
            &v2,
            Some(deadline.0),
            probabilities,
        )
        .await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => return Ok((ensemble_error(e), 0)),
        };
        let rows = rows_of(&answer);
        if profile == Profile::Mobile {
            return Ok((axum::Json(profile::mobile(&answer)).into_response(), rows));
        }
        v2.id = answer.id.clone();
        return Ok((encode(answer, &v2), rows));
    }
    let upstream = match proxy::owner(state, name).await {
        Ok(u) => u,
        Err(not_found) => {
            // A malformed body is the first thing wrong with such a request.
            let (parts, body) = request.into_parts();
            let body = proxy::read_body(body, limit).await?;
            decode(&parts.headers, &body)?;
            return Err(not_found);
        }
    };
    let path = match &version {
        Some(v) => format!("/v2/models/{name}/versions/{v}/infer"),
        None => format!("/v2/models/{name}/infer"),
    };
    if profile == Profile::Web {
        let response = proxy::forward(
            &upstream,
            request,
            Some(path),
            Forward {
                buffer: Some(limit),
                idempotent: true,
                deadline: Some(deadline),
                buffer_response: true,
            },
        )
        .await?;
        let rows = response
            .headers()
            .get(ROWS_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        return Ok((response, rows));
    }
    // Mobile: ask for probabilities, answer with the top class only.
    let (parts, body) = request.into_parts();
    let body = proxy::read_body(body, limit).await?;
    let mut v2 = decode(&parts.headers, &body)?;
    v2.outputs = None;
    v2.parameters
        .get_or_insert_with(Default::default)
        .insert("probabilities".into(), Value::Bool(true));
    let value = serde_json::to_value(&v2).map_err(|e| ApiError::Internal(e.to_string()))?;
    let answer = state
        .0
        .mesh
        .call_json(
            &upstream,
            http::Method::POST,
            &path,
            Some(&value),
            true,
            Some(deadline),
        )
        .await
        .map_err(|e| proxy::upstream_error(upstream.name(), &e))?;
    if answer.status != StatusCode::OK {
        return Ok((proxy::answer_response(answer), 0));
    }
    let response: InferResponse = serde_json::from_slice(&answer.body).map_err(|e| {
        ApiError::BadGateway(format!("{}: unreadable answer: {e}", upstream.name()))
    })?;
    Ok((
        axum::Json(profile::mobile(&response)).into_response(),
        rows_of(&response),
    ))
}

/// Model metadata and readiness: an ensemble's own, or forwarded to the model's service.
async fn model_get(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let path = request.uri().path().to_string();
    let name = path
        .trim_start_matches("/v2/models/")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    if let Some(ensemble) = state.ensemble(&name) {
        return Ok(ensemble_metadata(&state, &ensemble, path.ends_with("/ready")).await);
    }
    let upstream = proxy::owner(&state, &name).await?;
    proxy::forward(
        &upstream,
        request,
        None,
        Forward {
            buffer: Some(0),
            idempotent: true,
            deadline: None,
            buffer_response: true,
        },
    )
    .await
}

async fn ensemble_metadata(state: &AppState, ensemble: &Arc<Ensemble>, ready: bool) -> Response {
    let mesh = &state.0.mesh;
    if ready {
        let checks = ensemble.members.iter().map(|m| async move {
            let upstream = match &m.spec.url {
                Some(url) => mesh.foreign(url),
                None => match mlmesh_client::lookup::owner(mesh, &m.spec.model).await {
                    Ok(Some(s)) => mesh.upstream(&s),
                    _ => return false,
                },
            };
            let path = format!("/v2/models/{}/ready", m.spec.model);
            matches!(mesh.call_json(&upstream, http::Method::GET, &path, None, false, None).await, Ok(a) if a.status == StatusCode::OK)
        });
        let ready = futures_util::future::join_all(checks)
            .await
            .into_iter()
            .filter(|r| *r)
            .count();
        let quorum = ensemble.policy.quorum.unwrap_or(ensemble.members.len());
        return if ready >= quorum {
            StatusCode::OK.into_response()
        } else {
            ApiError::Unavailable(format!(
                "{ready} of {} members are ready; the policy needs {quorum}",
                ensemble.members.len()
            ))
            .into_response()
        };
    }
    // Inputs are the members' (they share them); outputs are the ensemble's.
    let mut inputs = Vec::new();
    if let Some(first) = ensemble.members.iter().find(|m| m.spec.url.is_none())
        && let Ok(Some(service)) = mlmesh_client::lookup::owner(mesh, &first.spec.model).await
    {
        let upstream = mesh.upstream(&service);
        let path = format!("/v2/models/{}", first.spec.model);
        if let Ok(a) = mesh
            .call_json(&upstream, http::Method::GET, &path, None, false, None)
            .await
            && let Ok(meta) = serde_json::from_slice::<ModelMetadata>(&a.body)
        {
            inputs = meta.inputs;
        }
    }
    let outputs = match &ensemble.classes {
        Some(classes) => vec![
            TensorMetadata {
                name: "label".into(),
                datatype: if ensemble.members.first().is_some_and(|m| m.integer_labels) {
                    Datatype::Int64
                } else {
                    Datatype::Bytes
                },
                shape: vec![-1],
            },
            TensorMetadata {
                name: "probabilities".into(),
                datatype: Datatype::Fp64,
                shape: vec![-1, classes.len() as i64],
            },
        ],
        None => vec![TensorMetadata {
            name: "value".into(),
            datatype: Datatype::Fp64,
            shape: vec![-1],
        }],
    };
    axum::Json(ModelMetadata {
        name: ensemble.name.clone(),
        versions: vec![],
        platform: format!("mlmesh_ensemble_{}", ensemble.method.name()),
        inputs,
        outputs,
    })
    .into_response()
}

// ---- forwarded /v1 ----

async fn datasets(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let upstream = state.0.mesh.upstream("data");
    let options = Forward::for_method(request.method());
    proxy::forward(&upstream, request, None, options).await
}

async fn train(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let bytes = proxy::read_body(body, SMALL_BODY).await?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let algorithm = value
        .get("algorithm")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::bad_request("the body needs \"algorithm\"; see GET /v1/algorithms")
        })?;
    let family = family_of(algorithm).ok_or_else(|| {
        let names: Vec<&str> = mlmesh_protocol::model::FAMILIES
            .iter()
            .flat_map(|(_, a)| a.iter().copied())
            .collect();
        ApiError::bad_request(format!(
            "unknown algorithm {algorithm:?}; use one of {}",
            names.join(", ")
        ))
    })?;
    let upstream = state
        .0
        .mesh
        .upstream(&mlmesh_protocol::model::service_name(family));
    let request = Request::from_parts(parts, Body::from(bytes));
    proxy::forward(
        &upstream,
        request,
        None,
        Forward {
            buffer: Some(SMALL_BODY),
            buffer_response: true,
            ..Forward::default()
        },
    )
    .await
}

async fn import(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let upstream = state
        .0
        .mesh
        .upstream(&mlmesh_protocol::model::service_name("onnx"));
    proxy::forward(&upstream, request, None, Forward::default()).await
}

async fn algorithms(State(state): State<AppState>) -> Result<Response, ApiError> {
    proxy::merge(&state, "/v1/algorithms", "algorithms", |v| {
        v.get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    })
    .await
}

async fn models(State(state): State<AppState>) -> Result<Response, ApiError> {
    proxy::merge(&state, "/v1/models", "models", |v| {
        v.get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    })
    .await
}

async fn model_any(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let path = request.uri().path().to_string();
    let name = path
        .trim_start_matches("/v1/models/")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let upstream = proxy::owner(&state, &name).await?;
    let options = Forward::for_method(request.method());
    proxy::forward(&upstream, request, None, options).await
}

async fn jobs(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/v1/jobs", |p| p.as_str())
        .to_string();
    // Newest first, as each service lists them.
    proxy::merge(&state, &path, "jobs", |v| {
        format!(
            "{:020}",
            i64::MAX - v.get("created_ms").and_then(Value::as_i64).unwrap_or(0)
        )
    })
    .await
}

async fn job_any(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    proxy::job(&state, request).await
}
