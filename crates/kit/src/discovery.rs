//! The registry client every service uses.
//!
//! - [`RegistryClient`]: typed calls to the registry's `/v1` API.
//! - [`Registrar`]: registers at start, heartbeats at a third of the lease, re-registers by itself
//!   when the registry forgot it (a registry restart answers a heartbeat with 404), and
//!   deregisters on shutdown.
//! - [`Discovery`]: a local cache of instances fed by the registry's long-poll watch, so callers
//!   learn of changes at once and never poll.

use std::sync::Arc;
use std::time::Duration;

use mlmesh_protocol::ErrorBody;
use mlmesh_protocol::registry::{Instance, Lease, Registration, Snapshot};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Requests to the registry that are not long polls give up after this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// A watch asks the registry to hold the request this long; changes end it early.
pub const WATCH_WAIT: Duration = Duration::from_secs(30);
const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("registry unreachable: {0}")]
    Unreachable(#[from] reqwest::Error),
    #[error("the registry does not know this instance")]
    NotRegistered,
    #[error("registry rejected the call ({status}): {message}")]
    Rejected { status: u16, message: String },
}

/// Typed client of the registry's `/v1` API.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    base: Arc<str>,
}

impl RegistryClient {
    pub fn new(base_url: &str) -> Self {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .unwrap_or_default();
        Self {
            http,
            base: Arc::from(base_url.trim_end_matches('/')),
        }
    }

    fn instance_url(&self, service: &str, id: &str) -> String {
        format!("{}/v1/services/{service}/instances/{id}", self.base)
    }

    pub async fn register(
        &self,
        service: &str,
        id: &str,
        registration: &Registration,
    ) -> Result<Lease, DiscoveryError> {
        let response = self
            .http
            .put(self.instance_url(service, id))
            .json(registration)
            .timeout(CALL_TIMEOUT)
            .send()
            .await?;
        decode(response).await
    }

    pub async fn heartbeat(&self, service: &str, id: &str) -> Result<Lease, DiscoveryError> {
        let response = self
            .http
            .put(format!("{}/heartbeat", self.instance_url(service, id)))
            .timeout(CALL_TIMEOUT)
            .send()
            .await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(DiscoveryError::NotRegistered);
        }
        decode(response).await
    }

    pub async fn deregister(&self, service: &str, id: &str) -> Result<(), DiscoveryError> {
        let response = self
            .http
            .delete(self.instance_url(service, id))
            .timeout(CALL_TIMEOUT)
            .send()
            .await?;
        match response.status().as_u16() {
            204 | 404 => Ok(()),
            _ => decode::<serde_json::Value>(response).await.map(|_| ()),
        }
    }

    /// Live instances now, of one service or of all.
    pub async fn instances(&self, service: Option<&str>) -> Result<Snapshot, DiscoveryError> {
        let response = self
            .http
            .get(self.list_url(service))
            .timeout(CALL_TIMEOUT)
            .send()
            .await?;
        decode(response).await
    }

    /// Blocks until the registry's index passes `after` (or its epoch is not `epoch`), or
    /// `wait` elapses; answers the snapshot at that moment.
    pub async fn watch(
        &self,
        service: Option<&str>,
        epoch: &str,
        after: u64,
        wait: Duration,
    ) -> Result<Snapshot, DiscoveryError> {
        let wait_ms = wait.as_millis().to_string();
        let after = after.to_string();
        let response = self
            .http
            .get(self.list_url(service))
            .query(&[("epoch", epoch), ("after", &after), ("wait_ms", &wait_ms)])
            .timeout(wait + CALL_TIMEOUT)
            .send()
            .await?;
        decode(response).await
    }

    fn list_url(&self, service: Option<&str>) -> String {
        match service {
            Some(service) => format!("{}/v1/services/{service}/instances", self.base),
            None => format!("{}/v1/instances", self.base),
        }
    }
}

async fn decode<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, DiscoveryError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response.json().await?);
    }
    let message = match response.json::<ErrorBody>().await {
        Ok(body) => body.error,
        Err(_) => status.to_string(),
    };
    Err(DiscoveryError::Rejected {
        status: status.as_u16(),
        message,
    })
}

/// Keeps one instance registered for as long as it runs.
#[derive(Debug)]
pub struct Registrar {
    registration: Arc<watch::Sender<Registration>>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Registrar {
    pub fn spawn(
        client: RegistryClient,
        service: String,
        id: String,
        registration: Registration,
    ) -> Self {
        let (tx, rx) = watch::channel(registration);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(keep_registered(client, service, id, rx, cancel.clone()));
        Self {
            registration: Arc::new(tx),
            cancel,
            task,
        }
    }

    /// Publishes new metadata (e.g. the models this replica now serves) at once.
    pub fn update(&self, registration: Registration) {
        self.registration.send_replace(registration);
    }

    /// Publishes every new value of `metadata` (e.g. the models a replica serves) until stopped.
    pub fn follow_metadata(
        &self,
        mut metadata: watch::Receiver<std::collections::BTreeMap<String, serde_json::Value>>,
    ) {
        let registration = Arc::clone(&self.registration);
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            loop {
                let current = metadata.borrow_and_update().clone();
                registration.send_modify(|r| r.metadata = current);
                tokio::select! {
                    () = cancel.cancelled() => return,
                    changed = metadata.changed() => if changed.is_err() { return },
                }
            }
        });
    }

    /// Deregisters and stops heartbeating.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

async fn keep_registered(
    client: RegistryClient,
    service: String,
    id: String,
    mut registration: watch::Receiver<Registration>,
    cancel: CancellationToken,
) {
    let mut backoff = BACKOFF_START;
    'register: loop {
        let current = registration.borrow_and_update().clone();
        let lease = tokio::select! {
            () = cancel.cancelled() => break 'register,
            lease = client.register(&service, &id, &current) => lease,
        };
        let mut ttl = match lease {
            Ok(lease) => {
                tracing::info!(%service, %id, ttl_ms = lease.ttl_ms, index = lease.index, "registered");
                backoff = BACKOFF_START;
                Duration::from_millis(lease.ttl_ms)
            }
            Err(error) => {
                tracing::warn!(%service, %id, %error, "registration failed; retrying");
                tokio::select! {
                    () = cancel.cancelled() => break 'register,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue 'register;
            }
        };
        loop {
            // A third of the lease leaves room for two lost heartbeats before eviction.
            tokio::select! {
                () = cancel.cancelled() => break 'register,
                changed = registration.changed() => {
                    if changed.is_ok() { continue 'register; }
                }
                () = tokio::time::sleep(ttl / 3) => {}
            }
            match client.heartbeat(&service, &id).await {
                Ok(lease) => ttl = Duration::from_millis(lease.ttl_ms),
                Err(DiscoveryError::NotRegistered) => {
                    tracing::info!(%service, %id, "registry forgot this instance; registering again");
                    continue 'register;
                }
                Err(error) => {
                    tracing::warn!(%service, %id, %error, "heartbeat failed");
                    // Try sooner than a full period, so a restarted registry learns of us fast.
                    ttl = (ttl / 2).max(BACKOFF_START * 3);
                }
            }
        }
    }
    if let Err(error) = client.deregister(&service, &id).await {
        tracing::warn!(%service, %id, %error, "deregistration failed; the lease will expire");
    } else {
        tracing::info!(%service, %id, "deregistered");
    }
}

/// A local, watch-fed cache of the registry's instances.
#[derive(Debug, Clone)]
pub struct Discovery {
    snapshot: watch::Receiver<Option<Arc<Snapshot>>>,
}

impl Discovery {
    /// Follows the registry until `cancel` fires. `service` narrows the watch to one service.
    pub fn spawn(
        client: RegistryClient,
        service: Option<String>,
        cancel: CancellationToken,
    ) -> Self {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(follow(client, service, tx, cancel));
        Self { snapshot: rx }
    }

    /// The latest snapshot, or none before the first answer from the registry.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.borrow().clone()
    }

    /// Live instances of `service` in the cache.
    pub fn instances(&self, service: &str) -> Vec<Instance> {
        self.snapshot()
            .map(|s| {
                s.instances
                    .iter()
                    .filter(|i| i.service == service)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits for the next change of the cache; `false` once the follower stopped.
    pub async fn changed(&mut self) -> bool {
        self.snapshot.changed().await.is_ok()
    }
}

async fn follow(
    client: RegistryClient,
    service: Option<String>,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    cancel: CancellationToken,
) {
    let mut epoch = String::new();
    let mut after = 0;
    let mut backoff = BACKOFF_START;
    loop {
        let answer = tokio::select! {
            () = cancel.cancelled() => return,
            answer = client.watch(service.as_deref(), &epoch, after, WATCH_WAIT) => answer,
        };
        match answer {
            Ok(snapshot) => {
                backoff = BACKOFF_START;
                let changed = snapshot.epoch != epoch || snapshot.index != after;
                epoch.clone_from(&snapshot.epoch);
                after = snapshot.index;
                if changed || tx.borrow().is_none() {
                    tx.send_replace(Some(Arc::new(snapshot)));
                }
            }
            Err(error) => {
                // Keep serving the last known view: a registry outage must not empty the cache.
                tracing::debug!(%error, "registry watch failed; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}
