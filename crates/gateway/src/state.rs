//! The gateway's state: its store, the caches in front of it (keys, ensembles), usage counts
//! waiting to be stored, and the mesh of upstream stacks.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mlmesh_client::Mesh;
use mlmesh_kit::discovery::{Discovery, RegistryClient};
use mlmesh_kit::{Readiness, ServerConfig};
use mlmesh_protocol::gateway::{Ensemble, KeyInfo, Role};
use mlmesh_resilience::UpstreamConfig;
use mlmesh_store::{Store, now_ms};
use tokio_util::sync::CancellationToken;

use crate::auth::{self, ADMIN_KEY_ID, Keys};
use crate::db::{self, StoredKey};
use crate::throttle::Throttles;
use crate::usage::Counter;
use crate::{Config, SERVICE};

pub struct Inner {
    pub config: Config,
    pub store: Store,
    pub mesh: Mesh,
    pub keys: Keys,
    pub ensembles: RwLock<Arc<HashMap<String, Arc<Ensemble>>>>,
    /// Bumped by every ensemble change made here, so that a reload read before it does not
    /// undo it (as for keys).
    ensembles_generation: AtomicU64,
    pub usage: Counter,
    pub throttles: Throttles,
    pub readiness: Readiness,
    stop: CancellationToken,
}

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl AppState {
    /// Opens the store under `DATA_DIR/gateway/`, honours the admin key file, and starts
    /// following the registry.
    pub async fn open(
        config: Config,
        server: &ServerConfig,
        data_dir: &Path,
    ) -> std::io::Result<Self> {
        let registry = server.registry_url.clone().ok_or_else(|| {
            io("the gateway needs the registry to find services: --registry or server.registry_url")
        })?;
        let store =
            Store::open(&data_dir.join(SERVICE).join("gateway.db"), db::MIGRATIONS).map_err(io)?;
        let admin_file = config
            .admin_key_file
            .clone()
            .unwrap_or_else(|| data_dir.join("admin.key"));
        match std::fs::read_to_string(&admin_file) {
            Ok(text) if !text.trim().is_empty() => {
                let key = StoredKey {
                    info: KeyInfo {
                        id: ADMIN_KEY_ID.into(),
                        role: Role::Admin,
                        rate_per_s: None,
                        name: Some("admin.key".into()),
                        created_ms: now_ms(),
                    },
                    hash: auth::hash(text.trim()).to_vec(),
                };
                store
                    .write(move |tx| db::put_key(tx, &key))
                    .await
                    .map_err(io)?;
            }
            Ok(_) => return Err(io(format!("{} is empty", admin_file.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(file = %admin_file.display(), "no admin key file; only keys already stored are accepted");
            }
            Err(e) => return Err(io(format!("cannot read {}: {e}", admin_file.display()))),
        }
        let upstream = UpstreamConfig {
            timeout: Duration::from_millis(config.timeout_ms),
            retries: config.retries,
            max_in_flight: config.max_in_flight,
            ..UpstreamConfig::default()
        };
        let stop = CancellationToken::new();
        let mesh = Mesh::new(upstream);
        let discovery = Discovery::spawn(RegistryClient::new(&registry), None, stop.clone());
        let readiness = Readiness::default();
        readiness.set_not_ready("waiting for the registry");
        let state = Self(Arc::new(Inner {
            config,
            store,
            mesh,
            keys: Keys::default(),
            ensembles: RwLock::new(Arc::new(HashMap::new())),
            ensembles_generation: AtomicU64::new(0),
            usage: Counter::default(),
            throttles: Throttles::default(),
            readiness,
            stop,
        }));
        state.reload().await.map_err(io)?;
        state.follow(discovery);
        tokio::spawn(state.clone().housekeeping());
        Ok(state)
    }

    fn follow(&self, mut discovery: Discovery) {
        self.0.mesh.follow(discovery.clone(), self.0.stop.clone());
        let state = self.clone();
        tokio::spawn(async move {
            while discovery.snapshot().is_none() {
                if !discovery.changed().await {
                    return;
                }
            }
            state.0.readiness.set_ready();
        });
    }

    /// Re-reads keys and ensembles (other gateway replicas may have changed them).
    /// Changes made here since the read began are kept: the read is skipped (the next reload,
    /// `flush_ms` later, sees them in the store).
    pub async fn reload(&self) -> Result<(), mlmesh_store::StoreError> {
        let keys_seen = self.0.keys.generation();
        let ensembles_seen = self.0.ensembles_generation.load(Ordering::Acquire);
        let (keys, ensembles) = self
            .0
            .store
            .read(|c| Ok((db::keys(c)?, db::ensembles(c)?)))
            .await?;
        self.0.keys.load(keys, keys_seen);
        let map = ensembles
            .into_iter()
            .map(|e| (e.name.clone(), Arc::new(e)))
            .collect();
        let mut all = self.0.ensembles.write().unwrap_or_else(|e| e.into_inner());
        if self.0.ensembles_generation.load(Ordering::Acquire) == ensembles_seen {
            *all = Arc::new(map);
        }
        Ok(())
    }

    async fn flush(&self) {
        let records = self.0.usage.take();
        if records.is_empty() {
            return;
        }
        let copy = records.clone();
        if let Err(error) = self.0.store.write(move |tx| db::add_usage(tx, &copy)).await {
            tracing::warn!(%error, "cannot store usage; keeping it for the next try");
            self.0.usage.restore(records);
        }
    }

    async fn housekeeping(self) {
        let period = Duration::from_millis(self.0.config.flush_ms);
        loop {
            tokio::select! {
                () = self.0.stop.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            self.flush().await;
            self.0.throttles.purge();
            if let Err(error) = self.reload().await {
                tracing::warn!(%error, "cannot re-read keys and ensembles");
            }
        }
    }

    pub fn ensemble(&self, name: &str) -> Option<Arc<Ensemble>> {
        self.0
            .ensembles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub fn ensembles(&self) -> Arc<HashMap<String, Arc<Ensemble>>> {
        Arc::clone(&self.0.ensembles.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn set_ensemble(&self, ensemble: Ensemble) {
        let mut all = self.0.ensembles.write().unwrap_or_else(|e| e.into_inner());
        let mut next = (**all).clone();
        next.insert(ensemble.name.clone(), Arc::new(ensemble));
        *all = Arc::new(next);
        self.0.ensembles_generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn remove_ensemble(&self, name: &str) {
        let mut all = self.0.ensembles.write().unwrap_or_else(|e| e.into_inner());
        let mut next = (**all).clone();
        next.remove(name);
        *all = Arc::new(next);
        self.0.ensembles_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Stops background work and stores the last usage counts.
    pub async fn stop(&self) {
        self.0.stop.cancel();
        self.flush().await;
    }
}
