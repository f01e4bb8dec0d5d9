//! The `mlmesh up` supervisor's control API: start, stop and list replicas of a service.
//! The autoscaler's local backend drives it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `POST /v1/replicas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartReplica {
    /// Service name as the registry knows it, e.g. `dashboard`.
    pub service: String,
}

/// What the supervisor knows of one child process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Replica {
    /// Stable id of the replica, e.g. `dashboard-0`; kept across restarts.
    pub id: String,
    pub service: String,
    pub url: String,
    /// Current process id, absent while the replica is between restarts.
    pub pid: Option<u32>,
    pub state: ReplicaState,
    /// How many times the supervisor restarted it after a crash.
    pub restarts: u32,
    /// Whether it belongs to the base set `mlmesh up` keeps (extra replicas can be stopped).
    pub base: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    Starting,
    Ready,
    Restarting,
    Stopping,
}

/// Answer of `GET /v1/replicas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaList {
    pub replicas: Vec<Replica>,
}
