//! The service kit: everything every mlmesh service shares, so that a service crate holds only
//! its own domain.
//!
//! Layout:
//! - [`config`]: layered config (defaults → TOML file → `MLMESH_*` env → flags), injectable.
//! - [`error`]: [`ApiError`], the one place where errors become statuses and `{"error": …}`.
//! - [`extract`]: `Json`, `Query` and `Path` extractors that reject in that same shape.
//! - [`app`]: wraps a service's routes with health, `/metrics`, `/openapi.json`, fallbacks and
//!   the envelope every request goes through (request id, span, panic guard, metrics) and the
//!   body limit.
//! - [`serve`](mod@serve): `serve(listener, router, shutdown)` and the shutdown signal.
//! - [`telemetry`]: structured logs and the Prometheus recorder.
//! - [`discovery`]: the registry client (register, heartbeat, deregister, watch-fed cache).
//! - [`names`]: the rule for names users give things (datasets, models).

pub mod app;
pub mod config;
pub mod discovery;
pub mod error;
pub mod extract;
pub mod names;
pub mod serve;
pub mod telemetry;

pub use app::{App, Envelope, Readiness};
pub use config::{ConfigError, ServerConfig, Sources};
pub use error::ApiError;
pub use serve::{serve, shutdown_signal};
