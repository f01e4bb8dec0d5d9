//! Scaling the platform: policies that decide replica counts ([`policy`]) and a
//! discrete-event simulator that replays a load trace under each of them ([`sim`]). The
//! autoscaler service and `mlmesh simulate` both build on these.

pub mod policy;
pub mod sim;

pub use policy::{Decision, Kind, Limits, Observation, Scaler};
pub use sim::{Forecasts, Outcome, Platform, Sample};
