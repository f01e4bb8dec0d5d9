//! [`Mesh`]: one resilience stack per discovered service, kept in step with the registry, and
//! the map of which service serves which model (from the `models` each model replica publishes
//! in its registry metadata).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use mlmesh_kit::discovery::Discovery;
use mlmesh_protocol::registry::Snapshot;
use mlmesh_resilience::{BoxError, DeadlineAt, Idempotent, Upstream, UpstreamConfig};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::transport::{Payload, Transport, transport};

/// Prefix of model services' names (`model-trees`, …).
pub const MODEL_SERVICE_PREFIX: &str = "model-";

struct Inner {
    config: UpstreamConfig,
    transport: Transport,
    upstreams: RwLock<HashMap<String, Upstream<Transport>>>,
    owners: RwLock<Arc<HashMap<String, String>>>,
    services: RwLock<Arc<BTreeSet<String>>>,
}

/// Shared by clones.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh").finish_non_exhaustive()
    }
}

/// A buffered answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Mesh {
    pub fn new(config: UpstreamConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                transport: transport(),
                upstreams: RwLock::new(HashMap::new()),
                owners: RwLock::new(Arc::new(HashMap::new())),
                services: RwLock::new(Arc::new(BTreeSet::new())),
            }),
        }
    }

    /// The stack of `service` (created, with no replicas, on first use).
    pub fn upstream(&self, service: &str) -> Upstream<Transport> {
        if let Some(u) = self
            .inner
            .upstreams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
        {
            return u.clone();
        }
        let mut all = self
            .inner
            .upstreams
            .write()
            .unwrap_or_else(|e| e.into_inner());
        all.entry(service.to_string())
            .or_insert_with(|| {
                let transport = self.inner.transport.clone();
                Upstream::new(service, &self.inner.config, move |_| transport.clone())
            })
            .clone()
    }

    /// The stack of a foreign server, one replica at `base_url`.
    pub fn foreign(&self, base_url: &str) -> Upstream<Transport> {
        let key = format!("foreign {base_url}");
        let upstream = self.upstream(&key);
        if upstream.replicas().is_empty() {
            upstream.set_replicas(&[base_url.trim_end_matches('/').to_string()]);
        }
        upstream
    }

    /// Takes a registry snapshot: replica sets of every service, and model owners.
    pub fn apply(&self, snapshot: &Snapshot) {
        let mut by_service: HashMap<&str, Vec<String>> = HashMap::new();
        let mut owners = HashMap::new();
        for instance in &snapshot.instances {
            by_service
                .entry(&instance.service)
                .or_default()
                .push(instance.url.clone());
            if let Some(models) = instance.metadata.get("models").and_then(Value::as_array) {
                for model in models.iter().filter_map(Value::as_str) {
                    owners.insert(model.to_string(), instance.service.clone());
                }
            }
        }
        let services: BTreeSet<String> = by_service.keys().map(|s| (*s).to_string()).collect();
        for (service, urls) in &by_service {
            self.upstream(service).set_replicas(urls);
        }
        // Services that vanished keep their stack (and breakers) with no replicas.
        let known: Vec<Upstream<Transport>> = self
            .inner
            .upstreams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for upstream in known {
            if !upstream.name().starts_with("foreign ") && !by_service.contains_key(upstream.name())
            {
                upstream.set_replicas(&[]);
            }
        }
        *self.inner.owners.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(owners);
        *self
            .inner
            .services
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(services);
    }

    /// Keeps the mesh in step with `discovery` until `cancel` fires.
    pub fn follow(&self, mut discovery: Discovery, cancel: CancellationToken) {
        let mesh = self.clone();
        if let Some(snapshot) = discovery.snapshot() {
            mesh.apply(&snapshot);
        }
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    alive = discovery.changed() => {
                        if !alive { return; }
                        if let Some(snapshot) = discovery.snapshot() {
                            mesh.apply(&snapshot);
                        }
                    }
                }
            }
        });
    }

    /// The service that serves `model`, as last published.
    pub fn owner(&self, model: &str) -> Option<String> {
        self.inner
            .owners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(model)
            .cloned()
    }

    /// Records that `service` serves `model` (learnt by asking, before the registry says so).
    pub fn learn_owner(&self, model: &str, service: &str) {
        let mut owners = self.inner.owners.write().unwrap_or_else(|e| e.into_inner());
        let mut next = (**owners).clone();
        next.insert(model.to_string(), service.to_string());
        *owners = Arc::new(next);
    }

    /// Registered services whose name starts with `prefix`.
    pub fn services(&self, prefix: &str) -> Vec<String> {
        self.inner
            .services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|s| s.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// A buffered call: `body` JSON (or none); inference-like POSTs are marked idempotent with
    /// `idempotent`.
    pub async fn call_json(
        &self,
        upstream: &Upstream<Transport>,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotent: bool,
        deadline: Option<DeadlineAt>,
    ) -> Result<Answer, BoxError> {
        let body = body.map(serde_json::to_vec).transpose()?;
        self.call_bytes(upstream, method, path, body, idempotent, deadline)
            .await
    }

    /// [`Mesh::call_json`] with the JSON body already written (a value serialised straight to
    /// bytes skips building a `Value` tree).
    pub async fn call_bytes(
        &self,
        upstream: &Upstream<Transport>,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        idempotent: bool,
        deadline: Option<DeadlineAt>,
    ) -> Result<Answer, BoxError> {
        let json = body.is_some();
        let payload = match body {
            Some(bytes) => Payload::full(bytes),
            None => Payload::empty(),
        };
        let mut request = Request::builder().method(method).uri(path);
        if json {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let mut request = request.body(payload)?;
        if idempotent {
            request.extensions_mut().insert(Idempotent);
        }
        if let Some(d) = deadline {
            request.extensions_mut().insert(d);
        }
        let response = upstream.call(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}
