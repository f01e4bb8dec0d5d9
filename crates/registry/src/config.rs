//! Registry settings, section `[registry]` (env `MLMESH_REGISTRY__*`).

use std::time::Duration;

use mlmesh_kit::ConfigError;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Lease length: an instance that sends no heartbeat for this long is evicted (default 10 s,
    /// so a dead replica stops receiving traffic within seconds while a busy one that misses
    /// two heartbeats survives).
    pub ttl_ms: u64,
    /// How often expired leases are looked for (default 250 ms: eviction lags expiry by at most
    /// this much).
    pub sweep_ms: u64,
    /// Longest a watch may be held open (default 60 s).
    pub max_wait_ms: u64,
    /// Largest metadata map, as JSON (default 64 KiB: enough for thousands of model names).
    pub max_metadata_bytes: usize,
    /// Most instances held at once (default 10 000).
    pub max_instances: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ttl_ms: 10_000,
            sweep_ms: 250,
            max_wait_ms: 60_000,
            max_metadata_bytes: 64 * 1024,
            max_instances: 10_000,
        }
    }
}

impl Config {
    /// Rejects settings the registry cannot work with, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ttl_ms < 100 {
            return Err(ConfigError(format!(
                "registry.ttl_ms is {}; it must be at least 100",
                self.ttl_ms
            )));
        }
        if self.sweep_ms == 0 || self.sweep_ms > self.ttl_ms {
            return Err(ConfigError(format!(
                "registry.sweep_ms is {}; it must be between 1 and registry.ttl_ms ({})",
                self.sweep_ms, self.ttl_ms
            )));
        }
        if self.max_instances == 0 {
            return Err(ConfigError(
                "registry.max_instances must be at least 1".into(),
            ));
        }
        Ok(())
    }

    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }
    pub fn sweep(&self) -> Duration {
        Duration::from_millis(self.sweep_ms)
    }
    pub fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms)
    }
}
