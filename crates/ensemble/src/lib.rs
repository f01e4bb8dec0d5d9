//! Ensembles: how a set of members' answers becomes one answer. The same code runs in the
//! gateway (server-side ensembles) and in the client SDK (the direct variant).
//!
//! Layout:
//! - [`define`]: checks an ensemble definition against what is known of its members.
//! - [`answer`]: reads a member's Open Inference Protocol answer into class indices,
//!   probabilities or values aligned to the ensemble's classes.
//! - [`combine`]: votes, averages and medians; the inputs of a stacking meta-model.
//! - [`fanout`]: calls members concurrently under one deadline and applies the quorum.

pub mod answer;
pub mod combine;
pub mod define;
pub mod fanout;

pub use answer::Answer;
pub use fanout::{Member, MemberFuture, MemberRequest, Outcome, run};

/// Default deadline for all members together.
pub const DEFAULT_DEADLINE_MS: u64 = 1000;
/// Longest deadline a policy may ask for.
pub const MAX_DEADLINE_MS: u64 = 60_000;
