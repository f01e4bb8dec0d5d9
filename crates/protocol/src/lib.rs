//! Wire types shared by every mlmesh service and client.
//!
//! Pure data: serde and OpenAPI schemas, no I/O. Layout: [`ErrorBody`] (the one error shape),
//! [`registry`] (instances, leases, watch snapshots), [`control`] (the `mlmesh up` supervisor's
//! replica API) and [`Endpoints`] (the `endpoints.json` file `mlmesh up` writes).

pub mod control;
pub mod data;
pub mod gateway;
pub mod model;
pub mod registry;
pub mod v2;
pub mod v2_binary;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of every 4xx/5xx answer: one sentence saying what went wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// `DATA_DIR/endpoints.json`: where a running platform can be reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Endpoints {
    /// The single entry point, once the gateway service exists in this build.
    pub gateway: Option<String>,
    pub registry: String,
    pub dashboard: Option<String>,
    /// The supervisor's control API (loopback, admin key required).
    pub control: String,
    /// Every running replica's base URL, by service name.
    pub services: BTreeMap<String, Vec<String>>,
}

/// Answer of `GET /v2/health/live` (Open Inference Protocol).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Live {
    pub live: bool,
}

/// Answer of `GET /v2/health/ready`: 200 when ready, 503 with `error` saying why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One entry of a service's event log (the outbox), e.g. `dataset.version_added`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Strictly increasing; pass the last one seen as `after`.
    pub id: i64,
    pub kind: String,
    /// What the event is about (e.g. a dataset name).
    pub subject: String,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// Answer of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    pub events: Vec<Event>,
    /// The id to pass as `after` next time (the last event's, or `after` if none came).
    pub last: i64,
}
