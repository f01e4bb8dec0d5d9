//! HTTP handlers of the registry: extract → call the domain → map errors. Also the eviction
//! sweep, which shares the state.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mlmesh_kit::extract::{Json, Path, Query};
use mlmesh_kit::{ApiError, App, ServerConfig};
use mlmesh_protocol::ErrorBody;
use mlmesh_protocol::registry::{Lease, Registration, ServiceList, Snapshot};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Config;
use crate::domain::{Outcome, Registry, RegistryError};

/// The registry's state and the channel that wakes watchers on every change.
#[derive(Debug)]
pub struct Shared {
    registry: Mutex<Registry>,
    changes: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters more than refusing all service, so keep going with the inner value.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, index: u64) {
        self.changes.send_replace(index);
    }
}

#[derive(Debug, Clone)]
pub struct AppState {
    pub shared: Arc<Shared>,
    pub config: Arc<Config>,
    /// Fires when the registry starts shutting down: open watches answer at once, or graceful
    /// shutdown would wait for every long poll to run out.
    pub closing: CancellationToken,
}

impl AppState {
    pub fn new(config: Config) -> Self {
        let epoch = uuid::Uuid::new_v4().simple().to_string();
        let registry = Registry::new(&config, epoch);
        Self {
            shared: Arc::new(Shared {
                registry: Mutex::new(registry),
                changes: watch::channel(0).0,
            }),
            config: Arc::new(config),
            closing: CancellationToken::new(),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::Invalid(_) => ApiError::BadRequest(error.to_string()),
            RegistryError::UnknownInstance { .. } => ApiError::NotFound(error.to_string()),
            RegistryError::Full(_) => ApiError::Conflict(error.to_string()),
        }
    }
}

#[derive(OpenApi)]
#[openapi(tags((name = "registry", description = "Service instances, leases and watches")))]
struct RegistryApi;

/// The registry's full router (its API plus everything the kit adds).
pub fn router(state: AppState, server: &ServerConfig) -> Router {
    let api = OpenApiRouter::with_openapi(RegistryApi::openapi())
        .routes(routes!(list_services))
        .routes(routes!(list_all))
        .routes(routes!(list_service))
        .routes(routes!(register, deregister))
        .routes(routes!(heartbeat))
        .with_state(state);
    App::new(crate::SERVICE, env!("CARGO_PKG_VERSION")).router(api, server)
}

/// Evicts expired leases every `period`, waking watchers when something was removed.
pub async fn sweep(shared: Arc<Shared>, period: Duration) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (evicted, index) = {
            let mut registry = shared.lock();
            (registry.evict_expired(Instant::now()), registry.index())
        };
        if !evicted.is_empty() {
            for (service, id) in &evicted {
                tracing::info!(%service, %id, "evicted: missed its heartbeats");
            }
            shared.publish(index);
        }
    }
}

/// Services with at least one live instance.
#[utoipa::path(get, path = "/v1/services", tag = "registry",
    responses((status = 200, body = ServiceList)))]
async fn list_services(State(state): State<AppState>) -> Json<ServiceList> {
    Json(state.shared.lock().services(Instant::now()))
}

/// Long-poll parameters. Without `after` the answer is immediate.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct WatchQuery {
    /// Answer only once the change index is greater than this (or `wait_ms` passed).
    after: Option<u64>,
    /// The epoch the caller's index belongs to; a different epoch answers at once.
    epoch: Option<String>,
    /// How long to hold the request (capped by `registry.max_wait_ms`; default the cap).
    wait_ms: Option<u64>,
}

/// Every live instance; a watch when `after` is given.
#[utoipa::path(get, path = "/v1/instances", tag = "registry", params(WatchQuery),
    responses((status = 200, body = Snapshot), (status = 400, body = ErrorBody)))]
async fn list_all(
    State(state): State<AppState>,
    Query(query): Query<WatchQuery>,
) -> Json<Snapshot> {
    Json(watch_snapshot(&state, None, query).await)
}

/// Live instances of one service; a watch when `after` is given.
#[utoipa::path(get, path = "/v1/services/{service}/instances", tag = "registry",
    params(("service" = String, Path), WatchQuery),
    responses((status = 200, body = Snapshot), (status = 400, body = ErrorBody)))]
async fn list_service(
    State(state): State<AppState>,
    Path(service): Path<String>,
    Query(query): Query<WatchQuery>,
) -> Result<Json<Snapshot>, ApiError> {
    crate::domain::validate_service(&service)?;
    Ok(Json(watch_snapshot(&state, Some(&service), query).await))
}

async fn watch_snapshot(state: &AppState, service: Option<&str>, query: WatchQuery) -> Snapshot {
    let Some(after) = query.after else {
        return state.shared.lock().snapshot(service, Instant::now());
    };
    let wait = query
        .wait_ms
        .map_or(state.config.max_wait(), Duration::from_millis)
        .min(state.config.max_wait());
    let deadline = Instant::now() + wait;
    // Subscribe before looking, so a change between the look and the wait is not missed.
    let mut changes = state.shared.changes.subscribe();
    loop {
        {
            let registry = state.shared.lock();
            let stale_epoch = query
                .epoch
                .as_deref()
                .is_some_and(|e| e != registry.epoch());
            if stale_epoch || registry.index_for(service) > after {
                return registry.snapshot(service, Instant::now());
            }
        }
        tokio::select! {
            changed = tokio::time::timeout_at(deadline, changes.changed()) => {
                if !matches!(changed, Ok(Ok(()))) {
                    return state.shared.lock().snapshot(service, Instant::now());
                }
            }
            () = state.closing.cancelled() => {
                return state.shared.lock().snapshot(service, Instant::now());
            }
        }
    }
}

/// Registers an instance or renews/updates its registration (idempotent).
#[utoipa::path(put, path = "/v1/services/{service}/instances/{id}", tag = "registry",
    params(("service" = String, Path), ("id" = String, Path)),
    request_body = Registration,
    responses((status = 201, body = Lease, description = "registered"),
              (status = 200, body = Lease, description = "already registered; updated or renewed"),
              (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn register(
    State(state): State<AppState>,
    Path((service, id)): Path<(String, String)>,
    Json(registration): Json<Registration>,
) -> Result<Response, ApiError> {
    let (outcome, lease) =
        state
            .shared
            .lock()
            .register(&service, &id, registration, Instant::now())?;
    let status = match outcome {
        Outcome::Created => StatusCode::CREATED,
        Outcome::Updated | Outcome::Renewed => StatusCode::OK,
    };
    if outcome != Outcome::Renewed {
        tracing::info!(%service, %id, ?outcome, index = lease.index, "registration");
        state.shared.publish(lease.index);
    }
    Ok((status, Json(lease)).into_response())
}

/// Renews an instance's lease; 404 means "register again".
#[utoipa::path(put, path = "/v1/services/{service}/instances/{id}/heartbeat", tag = "registry",
    params(("service" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Lease), (status = 404, body = ErrorBody)))]
async fn heartbeat(
    State(state): State<AppState>,
    Path((service, id)): Path<(String, String)>,
) -> Result<Json<Lease>, ApiError> {
    Ok(Json(state.shared.lock().heartbeat(
        &service,
        &id,
        Instant::now(),
    )?))
}

/// Removes an instance at once (clean shutdown).
#[utoipa::path(delete, path = "/v1/services/{service}/instances/{id}", tag = "registry",
    params(("service" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn deregister(
    State(state): State<AppState>,
    Path((service, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let index = {
        let mut registry = state.shared.lock();
        registry.deregister(&service, &id)?;
        registry.index()
    };
    tracing::info!(%service, %id, index, "deregistered");
    state.shared.publish(index);
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use mlmesh_kit::discovery::{Discovery, Registrar, RegistryClient};
    use mlmesh_testkit::{TestServer, eventually, get_json, http};

    use super::*;

    fn state(ttl_ms: u64) -> AppState {
        AppState::new(Config {
            ttl_ms,
            sweep_ms: 50,
            ..Config::default()
        })
    }

    fn registration(url: &str) -> Registration {
        Registration {
            url: url.into(),
            version: "1".into(),
            metadata: BTreeMap::new(),
        }
    }

    fn live(state: &AppState) -> Vec<String> {
        state
            .shared
            .lock()
            .snapshot(None, Instant::now())
            .instances
            .into_iter()
            .map(|i| i.id)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_keep_a_lease_and_silence_evicts_it() {
        let state = state(1000);
        tokio::spawn(sweep(Arc::clone(&state.shared), Duration::from_millis(50)));
        let mut changes = state.shared.changes.subscribe();
        {
            let mut r = state.shared.lock();
            r.register("data", "quiet", registration("http://h:1"), Instant::now())
                .unwrap();
            r.register(
                "data",
                "beating",
                registration("http://h:2"),
                Instant::now(),
            )
            .unwrap();
        }
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            state
                .shared
                .lock()
                .heartbeat("data", "beating", Instant::now())
                .unwrap();
        }
        // 3 s of paused time: the silent one is gone, the beating one is alive.
        assert_eq!(live(&state), vec!["beating".to_string()]);
        // The eviction woke watchers.
        assert!(changes.has_changed().unwrap());
        assert_eq!(*changes.borrow_and_update(), 3);
        // Eviction happens within one sweep of expiry, not long after.
        let t = Instant::now();
        tokio::time::sleep(Duration::from_millis(1000 + 60)).await;
        assert!(live(&state).is_empty(), "evicted by {:?}", t.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn watch_answers_on_change_or_after_its_wait() {
        let state = state(10_000);
        let epoch = state.shared.lock().epoch().to_string();
        let query = |after, epoch: &str, wait_ms| WatchQuery {
            after: Some(after),
            epoch: Some(epoch.to_string()),
            wait_ms: Some(wait_ms),
        };

        // No change: answers after the wait, with the same index.
        let start = Instant::now();
        let snap = watch_snapshot(&state, None, query(0, &epoch, 5_000)).await;
        assert_eq!(snap.index, 0);
        assert_eq!(start.elapsed(), Duration::from_millis(5_000));

        // A change wakes the watcher at once.
        let watcher = {
            let state = state.clone();
            let q = query(0, &epoch, 60_000);
            tokio::spawn(async move { watch_snapshot(&state, Some("data"), q).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let start = Instant::now();
        let index = {
            let mut r = state.shared.lock();
            r.register("data", "d1", registration("http://h:1"), Instant::now())
                .unwrap();
            r.index()
        };
        state.shared.publish(index);
        let snap = watcher.await.unwrap();
        assert_eq!(snap.index, 1);
        assert_eq!(snap.instances.len(), 1);
        assert!(start.elapsed() < Duration::from_millis(1));

        // A change to another service does not wake a watcher of `data`.
        let watcher = {
            let state = state.clone();
            let q = query(1, &epoch, 2_000);
            tokio::spawn(async move { watch_snapshot(&state, Some("data"), q).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let index = {
            let mut r = state.shared.lock();
            r.register("other", "o1", registration("http://h:2"), Instant::now())
                .unwrap();
            r.index()
        };
        state.shared.publish(index);
        let start = Instant::now();
        let snap = watcher.await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(1_900));
        assert_eq!(snap.instances.len(), 1);

        // A stale epoch answers at once, whatever the index.
        let start = Instant::now();
        let snap = watch_snapshot(&state, None, query(99, "old", 60_000)).await;
        assert_eq!((snap.index, start.elapsed()), (2, Duration::ZERO));
    }

    async fn put(url: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let response = http().put(url).json(&body).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    #[tokio::test]
    async fn http_rejects_bad_input_with_json_errors_and_changes_nothing() {
        let server = ServerConfig {
            body_limit_bytes: 100_000,
            ..ServerConfig::default()
        };
        let state = state(10_000);
        let srv = TestServer::start(router(state.clone(), &server)).await;
        let base = format!("{}/v1/services", srv.url);
        let ok = serde_json::json!({"url": "http://127.0.0.1:9", "version": "1"});

        let cases = vec![
            (format!("{base}/Bad/instances/i1"), ok.clone(), 400),
            (format!("{base}/data/instances/a%20b"), ok.clone(), 400),
            (
                format!("{base}/data/instances/i1"),
                serde_json::json!({"url": "nope"}),
                400,
            ),
            (
                format!("{base}/data/instances/i1"),
                serde_json::json!({"version": "1"}),
                400,
            ),
            (
                format!("{base}/data/instances/i1"),
                serde_json::json!({"url": "http://h:1", "extra": 1}),
                400,
            ),
            (
                format!("{base}/data/instances/i1"),
                serde_json::json!({"url": "http://h:1", "metadata": {"k": "v".repeat(70_000)}}),
                400,
            ),
            (
                format!("{base}/data/instances/i1"),
                serde_json::json!({"url": "http://h:1", "metadata": {"k": "v".repeat(200_000)}}),
                413,
            ),
        ];
        for (url, body, want) in cases {
            let (status, body) = put(&url, body).await;
            assert_eq!(status, want, "{url}: {body}");
            assert!(
                body["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{body}"
            );
        }
        // Malformed JSON, wrong content type.
        let response = http()
            .put(format!("{base}/data/instances/i1"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let response = http()
            .put(format!("{base}/data/instances/i1"))
            .body(ok.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 415);
        assert!(live(&state).is_empty());
        assert_eq!(state.shared.lock().index(), 0);

        // Unknown heartbeat and deregister: 404 in the error shape.
        let response = http()
            .put(format!("{base}/data/instances/ghost/heartbeat"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        let response = http()
            .delete(format!("{base}/data/instances/ghost"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        // Bad query.
        let (status, body) = get_json(&format!("{}/v1/instances?after=soon", srv.url)).await;
        assert_eq!(status, 400, "{body}");

        // And the happy path: created, then renewed.
        let (status, lease) = put(&format!("{base}/data/instances/i1"), ok.clone()).await;
        assert_eq!((status, lease["index"].as_u64()), (201, Some(1)));
        let (status, lease) = put(&format!("{base}/data/instances/i1"), ok).await;
        assert_eq!((status, lease["index"].as_u64()), (200, Some(1)));
        let (status, list) = get_json(&format!("{}/v1/services", srv.url)).await;
        assert_eq!(status, 200);
        assert_eq!(list["services"][0]["name"], "data");
    }

    #[tokio::test]
    async fn registrar_and_discovery_follow_the_registry_across_a_restart() {
        let server = ServerConfig::default();
        let first_state = state(600);
        let first = TestServer::start(router(first_state.clone(), &server)).await;
        let addr = first.addr;
        let client = RegistryClient::new(&first.url);
        let cancel = CancellationToken::new();
        let discovery = Discovery::spawn(client.clone(), None, cancel.clone());

        let registrar = Registrar::spawn(
            client.clone(),
            "data".into(),
            "data-1".into(),
            registration("http://127.0.0.1:1"),
        );
        let found = |d: Discovery| async move {
            let n = d.instances("data").len();
            (n == 1).then_some(())
        };
        eventually(Duration::from_secs(5), "discovery sees data-1", || {
            found(discovery.clone())
        })
        .await;

        // Metadata updates reach watchers.
        let mut updated = registration("http://127.0.0.1:1");
        updated
            .metadata
            .insert("models".into(), serde_json::json!(["iris"]));
        registrar.update(updated);
        eventually(
            Duration::from_secs(5),
            "discovery sees new metadata",
            || {
                let d = discovery.clone();
                async move {
                    d.instances("data")
                        .first()
                        .filter(|i| i.metadata.contains_key("models"))
                        .map(|_| ())
                }
            },
        )
        .await;

        // Restart the registry on the same address: it starts empty with a new epoch, and the
        // instance comes back by itself through its next heartbeat.
        let old_epoch = discovery.snapshot().unwrap().epoch.clone();
        first_state.closing.cancel();
        first.stop();
        drop(first);
        let second = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    let app = router(state(600), &server);
                    break TestServer::start_with(move |_unused, shutdown| {
                        mlmesh_kit::serve(listener, app, shutdown)
                    })
                    .await;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        eventually(
            Duration::from_secs(5),
            "re-registered with the new registry",
            || {
                let c = client.clone();
                async move {
                    let snap = c.instances(Some("data")).await.ok()?;
                    (snap.instances.len() == 1).then_some(())
                }
            },
        )
        .await;
        eventually(
            Duration::from_secs(5),
            "discovery follows the new epoch",
            || {
                let d = discovery.clone();
                let old = old_epoch.clone();
                async move {
                    let snap = d.snapshot()?;
                    (snap.epoch != old && snap.instances.len() == 1).then_some(())
                }
            },
        )
        .await;

        // Clean shutdown deregisters at once (no waiting for the lease).
        registrar.stop().await;
        let snap = client.instances(Some("data")).await.unwrap();
        assert!(snap.instances.is_empty());
        cancel.cancel();
        drop(second);
    }
}
