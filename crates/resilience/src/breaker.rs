//! A circuit breaker per replica. Written here because no maintained crate offers one as a
//! tower layer (see ARCHITECTURE.md).
//!
//! Closed: calls pass; the last `window` outcomes are kept, and once there are `min_calls` of
//! them, a failure rate or a slow-call rate at or over its threshold opens the breaker.
//! Open: calls are refused until `open_for` has passed, then the breaker is half-open.
//! Half-open: up to `probes` calls pass; if they all succeed the breaker closes, and if one
//! fails it opens again for twice as long as before (up to `max_open_for`).
//! Time is tokio's clock, so tests run it paused.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct BreakerConfig {
    pub window: usize,
    pub min_calls: usize,
    pub failure_rate: f64,
    pub slow_call_rate: f64,
    pub slow_call: Duration,
    pub open_for: Duration,
    pub max_open_for: Duration,
    pub probes: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: 20,
            min_calls: 10,
            failure_rate: 0.5,
            slow_call_rate: 0.8,
            slow_call: Duration::from_secs(2),
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(30),
            probes: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    /// The value of the `mlmesh_circuit_breaker_state` gauge.
    pub fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

/// The error of a call the breaker refused.
#[derive(Debug, Clone)]
pub struct BreakerOpen {
    pub replica: String,
}

impl std::fmt::Display for BreakerOpen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the circuit breaker of {} is open", self.replica)
    }
}

impl std::error::Error for BreakerOpen {}

#[derive(Debug)]
enum Inner {
    Closed {
        outcomes: VecDeque<(bool, bool)>,
    },
    Open {
        until: Instant,
        backoff: Duration,
    },
    HalfOpen {
        admitted: usize,
        succeeded: usize,
        backoff: Duration,
    },
}

/// One replica's breaker, shared by every call to it.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: Arc<BreakerConfig>,
    inner: Arc<Mutex<Inner>>,
    labels: Arc<(String, String)>,
}

impl Breaker {
    /// A closed breaker; `upstream` and `replica` label its gauge.
    pub fn new(config: Arc<BreakerConfig>, upstream: &str, replica: &str) -> Self {
        let breaker = Self {
            config,
            inner: Arc::new(Mutex::new(Inner::Closed {
                outcomes: VecDeque::new(),
            })),
            labels: Arc::new((upstream.to_string(), replica.to_string())),
        };
        breaker.publish(BreakerState::Closed);
        breaker
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, state: BreakerState) {
        metrics::gauge!("mlmesh_circuit_breaker_state",
            "upstream" => self.labels.0.clone(), "replica" => self.labels.1.clone())
        .set(state.gauge());
    }

    pub fn state(&self) -> BreakerState {
        let mut inner = self.lock();
        self.advance(&mut inner)
    }

    /// Moves an open breaker whose time is up to half-open.
    fn advance(&self, inner: &mut Inner) -> BreakerState {
        match inner {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
            Inner::Open { until, backoff } => {
                if Instant::now() >= *until {
                    *inner = Inner::HalfOpen {
                        admitted: 0,
                        succeeded: 0,
                        backoff: *backoff,
                    };
                    self.publish(BreakerState::HalfOpen);
                    BreakerState::HalfOpen
                } else {
                    BreakerState::Open
                }
            }
        }
    }

    /// Whether a call would be let through now (for choosing a replica; admits nothing).
    pub fn would_admit(&self) -> bool {
        let mut inner = self.lock();
        match self.advance(&mut inner) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => {
                matches!(*inner, Inner::HalfOpen { admitted, .. } if admitted < self.config.probes)
            }
        }
    }

    /// Admits a call, or refuses it.
    pub fn admit(&self) -> Result<(), BreakerOpen> {
        let mut inner = self.lock();
        match self.advance(&mut inner) {
            BreakerState::Closed => Ok(()),
            BreakerState::Open => Err(BreakerOpen {
                replica: self.labels.1.clone(),
            }),
            BreakerState::HalfOpen => match &mut *inner {
                Inner::HalfOpen { admitted, .. } if *admitted < self.config.probes => {
                    *admitted += 1;
                    Ok(())
                }
                _ => Err(BreakerOpen {
                    replica: self.labels.1.clone(),
                }),
            },
        }
    }

    /// Records the outcome of an admitted call.
    pub fn record(&self, success: bool, elapsed: Duration) {
        let slow = elapsed >= self.config.slow_call;
        let config = &self.config;
        let mut inner = self.lock();
        match &mut *inner {
            Inner::Closed { outcomes } => {
                outcomes.push_back((success, slow));
                while outcomes.len() > config.window {
                    outcomes.pop_front();
                }
                let n = outcomes.len();
                if n >= config.min_calls {
                    let failures = outcomes.iter().filter(|(ok, _)| !ok).count() as f64;
                    let slows = outcomes.iter().filter(|(_, s)| *s).count() as f64;
                    if failures / n as f64 >= config.failure_rate
                        || slows / n as f64 >= config.slow_call_rate
                    {
                        self.open(&mut inner, config.open_for);
                    }
                }
            }
            Inner::HalfOpen {
                succeeded, backoff, ..
            } => {
                if success && !slow {
                    *succeeded += 1;
                    if *succeeded >= config.probes {
                        *inner = Inner::Closed {
                            outcomes: VecDeque::new(),
                        };
                        self.publish(BreakerState::Closed);
                        tracing::info!(upstream = %self.labels.0, replica = %self.labels.1, "circuit breaker closed");
                    }
                } else {
                    let next = (*backoff * 2).min(config.max_open_for);
                    self.open(&mut inner, next);
                }
            }
            // A call admitted before the breaker opened: its outcome is already accounted for.
            Inner::Open { .. } => {}
        }
    }

    fn open(&self, inner: &mut Inner, backoff: Duration) {
        *inner = Inner::Open {
            until: Instant::now() + backoff,
            backoff,
        };
        self.publish(BreakerState::Open);
        tracing::warn!(upstream = %self.labels.0, replica = %self.labels.1,
            open_ms = backoff.as_millis() as u64, "circuit breaker opened");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        let config = BreakerConfig {
            window: 10,
            min_calls: 4,
            failure_rate: 0.5,
            slow_call_rate: 0.75,
            slow_call: Duration::from_millis(500),
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(8),
            probes: 2,
        };
        Breaker::new(Arc::new(config), "model-trees", "http://127.0.0.1:1")
    }

    const FAST: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn opens_on_failure_rate_then_probes_and_closes() {
        let b = breaker();
        for ok in [true, false, true] {
            b.admit().unwrap();
            b.record(ok, FAST);
        }
        assert_eq!(b.state(), BreakerState::Closed, "too few calls to judge");
        b.admit().unwrap();
        b.record(false, FAST);
        assert_eq!(b.state(), BreakerState::Open, "2 failures of 4");
        assert!(b.admit().is_err());
        assert!(!b.would_admit());

        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.admit().unwrap();
        b.admit().unwrap();
        assert!(b.admit().is_err(), "only two probes at a time");
        b.record(true, FAST);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.record(true, FAST);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_doubles_the_wait() {
        let b = breaker();
        for _ in 0..4 {
            b.admit().unwrap();
            b.record(false, FAST);
        }
        for wait in [1u64, 2, 4, 8, 8] {
            assert_eq!(b.state(), BreakerState::Open);
            tokio::time::advance(Duration::from_secs(wait) - Duration::from_millis(1)).await;
            assert_eq!(b.state(), BreakerState::Open, "still open before {wait} s");
            tokio::time::advance(Duration::from_millis(1)).await;
            b.admit().unwrap();
            b.record(false, FAST);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_slow_calls() {
        let b = breaker();
        for elapsed in [600, 700, 10, 800] {
            b.admit().unwrap();
            b.record(true, Duration::from_millis(elapsed));
        }
        assert_eq!(b.state(), BreakerState::Open, "3 of 4 slow");
    }
}
