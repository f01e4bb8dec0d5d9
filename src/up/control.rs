//! The supervisor's control API on loopback: list, start and stop replicas. The autoscaler's
//! local backend drives it; every `/v1` call needs the admin key.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use mlmesh_kit::extract::{Json, Path};
use mlmesh_kit::{ApiError, App, ServerConfig};
use mlmesh_protocol::ErrorBody;
use mlmesh_protocol::control::{Replica, ReplicaList, StartReplica};
use subtle::ConstantTimeEq;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::replica::{Supervisor, SupervisorError};
use crate::serve::Service;

pub const SERVICE: &str = "supervisor";

#[derive(Debug, Clone)]
struct ControlState {
    supervisor: Arc<Supervisor>,
}

impl From<SupervisorError> for ApiError {
    fn from(error: SupervisorError) -> Self {
        let message = error.to_string();
        match error {
            SupervisorError::UnknownService(..) | SupervisorError::UnknownReplica(_) => {
                ApiError::NotFound(message)
            }
            SupervisorError::NotReplicable(_)
            | SupervisorError::TooMany(_)
            | SupervisorError::BaseReplica(_) => ApiError::Conflict(message),
            SupervisorError::ShuttingDown => ApiError::Unavailable(message),
            SupervisorError::Bind(_) => ApiError::Internal(message),
        }
    }
}

#[derive(OpenApi)]
#[openapi(tags((name = "replicas", description = "Replicas of the platform's services on this machine")))]
struct ControlApi;

pub fn router(supervisor: Arc<Supervisor>, admin_key: Arc<str>) -> Router {
    let api = OpenApiRouter::with_openapi(ControlApi::openapi())
        .routes(routes!(list, start))
        .routes(routes!(stop))
        .route_layer(middleware::from_fn_with_state(admin_key, require_admin))
        .with_state(ControlState { supervisor });
    App::new(SERVICE, env!("CARGO_PKG_VERSION")).router(api, &ServerConfig::default())
}

/// Admits only `Authorization: Bearer <admin key>`, compared in constant time.
async fn require_admin(State(key): State<Arc<str>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(p) if bool::from(p.trim().as_bytes().ct_eq(key.as_bytes())) => next.run(req).await,
        Some(_) => {
            ApiError::Unauthorized("the API key is not the admin key".into()).into_response()
        }
        None => ApiError::Unauthorized(
            "send the admin key from DATA_DIR/admin.key as `Authorization: Bearer <key>`".into(),
        )
        .into_response(),
    }
}

/// Every replica the supervisor runs.
#[utoipa::path(get, path = "/v1/replicas", tag = "replicas",
    responses((status = 200, body = ReplicaList), (status = 401, body = ErrorBody)))]
async fn list(State(state): State<ControlState>) -> Json<ReplicaList> {
    Json(ReplicaList {
        replicas: state.supervisor.list(),
    })
}

/// Starts one more replica of a service; it registers by itself once up.
#[utoipa::path(post, path = "/v1/replicas", tag = "replicas", request_body = StartReplica,
    responses((status = 201, body = Replica), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn start(
    State(state): State<ControlState>,
    Json(request): Json<StartReplica>,
) -> Result<Response, ApiError> {
    // `model` alone names no family: replicas are started as model-<family>.
    let service = Service::from_name(&request.service)
        .filter(|s| *s != Service::Model)
        .ok_or_else(|| {
            let known: Vec<_> = <Service as clap::ValueEnum>::value_variants()
                .iter()
                .filter(|s| **s != Service::Model)
                .map(|s| s.name())
                .collect();
            SupervisorError::UnknownService(request.service.clone(), known.join(", "))
        })?;
    let replica = state.supervisor.start(service, false)?;
    Ok((StatusCode::CREATED, Json(replica)).into_response())
}

/// Stops an extra replica (SIGTERM, drain, deregister; SIGKILL after a grace period).
#[utoipa::path(delete, path = "/v1/replicas/{id}", tag = "replicas",
    params(("id" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn stop(
    State(state): State<ControlState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.supervisor.stop(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
