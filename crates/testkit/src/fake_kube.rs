//! A fake Kubernetes API server for the autoscaler's Kubernetes backend (no cluster runs here).
//!
//! It serves what that backend uses, the `scale` subresource of apps/v1 Deployments, as the real
//! API server does (Scale objects, `Status` errors), and checks each request: the bearer token,
//! the merge-patch content type and the patch's shape. Every request is logged for assertions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

/// One request the fake received.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    pub body: Option<Value>,
}

#[derive(Debug, Default)]
struct Inner {
    /// (namespace, name) → replicas.
    deployments: BTreeMap<(String, String), i64>,
    log: Vec<Seen>,
}

/// The fake's state; clone it into the test to add Deployments and read the log.
#[derive(Debug, Clone)]
pub struct FakeKube {
    token: Arc<str>,
    inner: Arc<Mutex<Inner>>,
}

impl FakeKube {
    /// A fake that accepts only `Authorization: Bearer <token>`.
    pub fn new(token: &str) -> Self {
        Self {
            token: token.into(),
            inner: Arc::default(),
        }
    }

    /// Creates (or resets) a Deployment with `replicas`.
    pub fn add_deployment(&self, namespace: &str, name: &str, replicas: i64) {
        self.lock()
            .deployments
            .insert((namespace.into(), name.into()), replicas);
    }

    /// The replicas a Deployment is scaled to now.
    pub fn replicas(&self, namespace: &str, name: &str) -> Option<i64> {
        self.lock()
            .deployments
            .get(&(namespace.into(), name.into()))
            .copied()
    }

    /// Every request so far, oldest first.
    pub fn log(&self) -> Vec<Seen> {
        self.lock().log.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale",
                get(scale).patch(scale),
            )
            .fallback(|| async {
                status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "the server could not find the requested resource",
                )
            })
            .with_state(self.clone())
    }
}

/// A `Status` object, the body of every API server error.
fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        })),
    )
        .into_response()
}

fn scale_object(namespace: &str, name: &str, replicas: i64) -> Response {
    axum::Json(json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": { "name": name, "namespace": namespace },
        "spec": { "replicas": replicas },
        "status": { "replicas": replicas, "selector": format!("app.kubernetes.io/name={name}") },
    }))
    .into_response()
}

async fn scale(
    State(fake): State<FakeKube>,
    Path((namespace, name)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    fake.lock().log.push(Seen {
        method: method.to_string(),
        path: format!("/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"),
        content_type: content_type.clone(),
        body: parsed.clone(),
    });
    let authorised = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", fake.token));
    if !authorised {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    let key = (namespace.clone(), name.clone());
    let Some(current) = fake.lock().deployments.get(&key).copied() else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("deployments.apps \"{name}\" not found"),
        );
    };
    if method == Method::GET {
        return scale_object(&namespace, &name, current);
    }
    if content_type.as_deref() != Some("application/merge-patch+json") {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format",
        );
    }
    // The only change the autoscaler may make: `{"spec": {"replicas": n}}`, n ≥ 0.
    let replicas = parsed.as_ref().and_then(|p| {
        let object = p.as_object()?;
        let spec = object.get("spec")?.as_object()?;
        (object.len() == 1 && spec.len() == 1)
            .then(|| spec.get("replicas")?.as_i64())
            .flatten()
            .filter(|n| *n >= 0)
    });
    let Some(replicas) = replicas else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "a scale patch sets spec.replicas (an integer ≥ 0) and nothing else",
        );
    };
    fake.lock().deployments.insert(key, replicas);
    scale_object(&namespace, &name, replicas)
}
