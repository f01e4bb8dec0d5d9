//! Resilience for every call one service makes to another, as tower layers. One [`Upstream`]
//! stack per upstream service, outermost first:
//!
//! load shedding (a bound on calls in flight, beyond which calls fail at once) →
//! [`deadline`] (one deadline for the call and its retries, sent downstream as
//! `x-mlmesh-deadline-ms`) → [`retry`] (idempotent calls only, paid from a budget, to another
//! replica) → [`balance`] (power of two choices by peak-EWMA latency over replicas whose breaker
//! lets calls through) → per replica [`breaker`] (closed / open / half-open) → the transport.
//!
//! The stack knows nothing of HTTP clients: the transport is any `tower::Service` over
//! `http::Request<B>`, so the gateway and the client SDK share it, and tests drive it with
//! plain functions.

pub mod balance;
pub mod breaker;
pub mod deadline;
pub mod retry;
pub mod upstream;

pub use balance::{Balance, NoReplica};
pub use breaker::{BreakerConfig, BreakerOpen, BreakerState};
pub use deadline::{DEADLINE_HEADER, DeadlineAt, DeadlineExceeded};
pub use retry::{Idempotent, Replay};
pub use upstream::{Upstream, UpstreamConfig};

pub use tower::load_shed::error::Overloaded;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
