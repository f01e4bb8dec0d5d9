//! Registry `/v1` types: an instance is one running replica of a service, held by a lease that
//! heartbeats renew.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `PUT /v1/services/{service}/instances/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Base URL the instance serves on, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// The instance's software version.
    #[serde(default)]
    pub version: String,
    /// Free-form facts about the instance (model services list the models they serve here).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// One registered, live instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    pub service: String,
    pub id: String,
    pub url: String,
    pub version: String,
    #[schema(value_type = Object)]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Milliseconds since the last heartbeat (or registration) the registry received.
    pub last_seen_ms: u64,
}

/// Answer to a registration or a heartbeat: the lease and where the change log stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Lease {
    /// Heartbeat at least this often or be evicted.
    pub ttl_ms: u64,
    /// Change index after this write.
    pub index: u64,
    /// Identifies one run of the registry; a new epoch means its state started afresh.
    pub epoch: String,
}

/// A consistent view of the registry at one change index (answer of list and watch calls).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    pub epoch: String,
    pub index: u64,
    pub instances: Vec<Instance>,
}

/// One service and how many live instances it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceSummary {
    pub name: String,
    pub instances: usize,
}

/// Answer of `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceList {
    pub epoch: String,
    pub index: u64,
    pub services: Vec<ServiceSummary>,
}
