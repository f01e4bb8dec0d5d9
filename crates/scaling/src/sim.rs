//! A discrete-event model of one model service behind the gateway, driven by a load trace.
//!
//! Requests arrive as a Poisson process whose rate follows the trace (piecewise constant per
//! step). Each replica runs `concurrency` servers; a request takes the earliest free server
//! (one FIFO queue, i.e. M/G/c), with a log-normal service time. A request that would wait
//! longer than the queue timeout is dropped (the platform sheds it). Every `interval_s` the
//! policy decides; a new replica serves only after `startup_s`; a removed replica finishes the
//! work it holds. Latency is wait + service + the hop (gateway or direct). The SLO is violated
//! in each window whose p99 exceeds the target.
//!
//! The event loop is hand-written: the model is a priority queue of server free times, which
//! no simulation crate would make shorter, and it must replay weeks of traffic in seconds.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::policy::{Decision, Kind, Observation, Scaler};

/// The platform being simulated.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Platform {
    /// Mean service time of one request, seconds.
    pub service_s: f64,
    /// Coefficient of variation of the service time (log-normal).
    pub service_cv: f64,
    /// Requests one replica serves at once.
    pub concurrency: u32,
    /// Seconds from starting a replica to its first answer.
    pub startup_s: f64,
    /// Seconds between scaling decisions.
    pub interval_s: f64,
    /// p99 latency target, seconds.
    pub slo_p99_s: f64,
    /// Window over which p99 is judged, seconds.
    pub window_s: f64,
    /// Latency each request pays for the route (gateway hop, or none when direct).
    pub hop_s: f64,
    /// A request waiting longer than this is dropped.
    pub queue_timeout_s: f64,
    /// Replicas at the start.
    pub initial_replicas: u32,
    pub seed: u64,
}

impl Default for Platform {
    fn default() -> Self {
        Self {
            service_s: 0.1,
            service_cv: 0.5,
            concurrency: 1,
            startup_s: 60.0,
            interval_s: 15.0,
            slo_p99_s: 0.5,
            window_s: 60.0,
            hop_s: 0.0002,
            queue_timeout_s: 2.0,
            initial_replicas: 1,
            seed: 1,
        }
    }
}

impl Platform {
    pub fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("service time", self.service_s),
            ("start-up delay", self.startup_s + 1.0),
            ("decision interval", self.interval_s),
            ("SLO target", self.slo_p99_s),
            ("SLO window", self.window_s),
            ("queue timeout", self.queue_timeout_s),
            ("hop latency", self.hop_s + 1.0),
            ("service-time variation", self.service_cv + 1.0),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("the {name} must be a positive number of seconds"));
            }
        }
        if self.concurrency == 0 {
            return Err("a replica must serve at least one request at a time".into());
        }
        Ok(())
    }

    /// Requests per second one replica serves at full utilisation.
    pub fn capacity_rps(&self) -> f64 {
        f64::from(self.concurrency) / self.service_s
    }
}

/// Forecasts for the predictive policies: at every trace step `i` (its start), the upper
/// forecast of the rate, requests/s, for each step ahead (index 0 = step i itself).
#[derive(Debug, Clone, Default)]
pub struct Forecasts {
    pub upper: Vec<Vec<f64>>,
}

/// One row of the timeline, per trace step.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Sample {
    pub t: f64,
    pub rate_rps: f64,
    pub forecast_rps: Option<f64>,
    pub replicas: u32,
    pub p99_s: f64,
}

/// What one policy did over the trace.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Outcome {
    pub policy: &'static str,
    pub requests: u64,
    pub dropped: u64,
    pub slo_violation_s: f64,
    pub replica_hours: f64,
    pub timeline: Vec<Sample>,
    pub decisions: Vec<Decision>,
}

/// Server pool: the free time of every server slot, and which replica it belongs to.
struct Pool {
    free: BinaryHeap<Reverse<(Time, u32)>>,
    /// Replicas by id: (ready at, removed).
    replicas: Vec<(f64, bool)>,
    concurrency: u32,
}

/// A total order on f64 seconds for the heap (times are always finite here).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
struct Time(f64);
impl Eq for Time {}
#[allow(clippy::derive_ord_xor_partial_ord)]
impl Ord for Time {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl Pool {
    fn active(&self) -> u32 {
        self.replicas.iter().filter(|r| !r.1).count() as u32
    }

    fn ready(&self, now: f64) -> u32 {
        self.replicas.iter().filter(|r| !r.1 && r.0 <= now).count() as u32
    }

    fn add(&mut self, ready_at: f64) {
        let id = self.replicas.len() as u32;
        self.replicas.push((ready_at, false));
        for _ in 0..self.concurrency {
            self.free.push(Reverse((Time(ready_at), id)));
        }
    }

    /// Removes the replica that is slowest to become free (not yet started ones first).
    fn remove(&mut self) {
        let victim = self
            .replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.1)
            .max_by(|a, b| a.1.0.total_cmp(&b.1.0))
            .map(|(i, _)| i);
        if let Some(i) = victim {
            self.replicas[i].1 = true;
            // Its slots leave the heap lazily: they are skipped when popped.
        }
    }

    /// The earliest free slot of a live replica.
    fn pop(&mut self) -> Option<(f64, u32)> {
        while let Some(Reverse((Time(t), id))) = self.free.pop() {
            if !self.replicas[id as usize].1 {
                return Some((t, id));
            }
        }
        None
    }

    fn push(&mut self, t: f64, id: u32) {
        self.free.push(Reverse((Time(t), id)));
    }
}

fn lognormal(rng: &mut ChaCha8Rng, mean: f64, cv: f64) -> f64 {
    let sigma2 = (1.0 + cv * cv).ln();
    let mu = mean.ln() - sigma2 / 2.0;
    // Box–Muller: one standard normal from two uniforms.
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    (mu + sigma2.sqrt() * z).exp()
}

/// Runs one policy over `rates` (requests/s per step of `step` seconds).
pub fn run(
    rates: &[f64],
    step: f64,
    platform: &Platform,
    mut scaler: Scaler,
    forecasts: Option<&Forecasts>,
) -> Outcome {
    let kind = scaler.kind;
    let horizon = platform.startup_s + platform.interval_s;
    let end = step * rates.len() as f64;
    let mut arrivals = ChaCha8Rng::seed_from_u64(platform.seed);
    let mut service = ChaCha8Rng::seed_from_u64(platform.seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut pool = Pool {
        free: BinaryHeap::new(),
        replicas: Vec::new(),
        concurrency: platform.concurrency,
    };
    let initial = platform
        .initial_replicas
        .clamp(scaler.limits.min_replicas, scaler.limits.max_replicas);
    for _ in 0..initial {
        pool.add(0.0);
    }
    let max_latency_us =
        ((platform.queue_timeout_s + platform.service_s * 100.0 + 1.0) * 1e6) as u64;
    let mut window = Histogram::<u64>::new_with_bounds(1, max_latency_us.max(2), 2)
        .expect("histogram bounds are valid");
    let mut step_hist = window.clone();
    let mut out = Outcome {
        policy: kind.name(),
        requests: 0,
        dropped: 0,
        slo_violation_s: 0.0,
        replica_hours: 0.0,
        timeline: Vec::with_capacity(rates.len()),
        decisions: Vec::new(),
    };
    let mut t = 0.0;
    let mut next_tick = platform.interval_s;
    let mut next_window = platform.window_s;
    let mut next_step = step;
    let mut busy = 0.0; // service seconds started since the last tick
    let mut last_change = 0.0;
    let mut replicas_now = pool.active();
    let slo_us = platform.slo_p99_s * 1e6;
    let record = |h: &mut Histogram<u64>, s: f64| {
        let us = (s * 1e6).clamp(1.0, max_latency_us as f64) as u64;
        let _ = h.record(us);
    };
    loop {
        let i = ((t / step) as usize).min(rates.len().saturating_sub(1));
        let rate = rates.get(i).copied().unwrap_or(0.0);
        let gap = if rate > 0.0 {
            -(1.0 - arrivals.random::<f64>()).ln() / rate
        } else {
            f64::INFINITY
        };
        let arrival = t + gap;
        // Whatever comes first: a tick, a window's end, a step's end, or the arrival.
        let boundary = next_tick.min(next_window).min(next_step).min(end);
        if arrival >= boundary {
            // Rates are memoryless: restart the arrival clock at the boundary.
            t = boundary;
            if t == next_window {
                if !window.is_empty() && window.value_at_quantile(0.99) as f64 > slo_us {
                    out.slo_violation_s += platform.window_s;
                }
                window.reset();
                next_window += platform.window_s;
            }
            if t == next_step {
                let p99 = if step_hist.is_empty() {
                    0.0
                } else {
                    step_hist.value_at_quantile(0.99) as f64 / 1e6
                };
                out.timeline.push(Sample {
                    t: t - step,
                    rate_rps: rate,
                    forecast_rps: forecasts.and_then(|f| upper_at(f, i, 0.0, step, 0.0)),
                    replicas: replicas_now,
                    p99_s: p99,
                });
                step_hist.reset();
                next_step += step;
            }
            if t >= end {
                break;
            }
            if t == next_tick {
                let ready = pool.ready(t);
                let capacity = f64::from(ready * platform.concurrency) * platform.interval_s;
                let utilisation = if capacity > 0.0 {
                    (busy / capacity).min(1.0)
                } else {
                    1.0
                };
                busy = 0.0;
                let forecast_rps =
                    forecasts.and_then(|f| upper_at(f, i, t - i as f64 * step, step, horizon));
                let active = pool.active();
                let decision = scaler.decide(Observation {
                    now: t,
                    ready,
                    starting: active - ready,
                    utilisation,
                    forecast_rps,
                });
                if decision.to != active {
                    out.replica_hours += f64::from(replicas_now) * (t - last_change) / 3600.0;
                    last_change = t;
                    for _ in active..decision.to {
                        pool.add(t + platform.startup_s);
                    }
                    for _ in decision.to..active {
                        pool.remove();
                    }
                    replicas_now = pool.active();
                    out.decisions.push(decision);
                }
                next_tick += platform.interval_s;
            }
            continue;
        }
        t = arrival;
        out.requests += 1;
        let Some((free, id)) = pool.pop() else {
            out.dropped += 1;
            record(&mut window, platform.queue_timeout_s);
            record(&mut step_hist, platform.queue_timeout_s);
            continue;
        };
        let start = free.max(t);
        if start - t > platform.queue_timeout_s {
            pool.push(free, id);
            out.dropped += 1;
            record(&mut window, platform.queue_timeout_s);
            record(&mut step_hist, platform.queue_timeout_s);
            continue;
        }
        let s = lognormal(&mut service, platform.service_s, platform.service_cv);
        pool.push(start + s, id);
        busy += s;
        let latency = start - t + s + platform.hop_s;
        record(&mut window, latency);
        record(&mut step_hist, latency);
    }
    out.replica_hours += f64::from(replicas_now) * (end - last_change) / 3600.0;
    out
}

/// The highest upper forecast over `(offset, offset + horizon]` seconds into step `i`; none
/// before the first forecast exists.
fn upper_at(f: &Forecasts, i: usize, offset: f64, step: f64, horizon: f64) -> Option<f64> {
    let row = f.upper.get(i).filter(|r| !r.is_empty())?;
    let last = (((offset + horizon) / step).floor() as usize).min(row.len() - 1);
    Some(row[..=last].iter().copied().fold(0.0, f64::max))
}

/// Runs one policy kind with the limits and platform given.
pub fn run_policy(
    kind: Kind,
    limits: crate::policy::Limits,
    rates: &[f64],
    step: f64,
    platform: &Platform,
    forecasts: Option<&Forecasts>,
) -> Result<Outcome, String> {
    let scaler = Scaler::new(kind, limits)?;
    Ok(run(
        rates,
        step,
        platform,
        scaler,
        forecasts.filter(|_| kind.uses_forecast()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Limits;

    fn limits(p: &Platform) -> Limits {
        Limits {
            capacity_rps: p.capacity_rps(),
            ..Limits::default()
        }
    }

    #[test]
    fn a_steady_load_within_capacity_meets_the_slo() {
        let p = Platform {
            initial_replicas: 4,
            ..Platform::default()
        };
        // 20 req/s against 4 replicas of 10 req/s.
        let o = run_policy(Kind::Reactive, limits(&p), &[20.0; 12], 300.0, &p, None).unwrap();
        let expected = 20.0 * 3600.0;
        assert!(
            (o.requests as f64 - expected).abs() < 0.03 * expected,
            "{}",
            o.requests
        );
        assert_eq!(o.dropped, 0);
        // At 0.5–0.7 utilisation an M/G/c queue's p99 may brush a 5×-service-time target.
        assert!(o.slo_violation_s <= 180.0, "{}", o.slo_violation_s);
        assert!(
            o.replica_hours > 0.9 && o.replica_hours < 8.0,
            "{}",
            o.replica_hours
        );
        assert_eq!(o.timeline.len(), 12);
    }

    #[test]
    fn a_step_up_hurts_reactive_more_than_a_policy_that_saw_it_coming() {
        let p = Platform::default();
        // An hour at 2 req/s, then an hour at 60 req/s.
        let mut rates = vec![2.0; 12];
        rates.extend(vec![60.0; 12]);
        // A perfect forecast: each step knows the rates ahead.
        let upper: Vec<Vec<f64>> = (0..rates.len())
            .map(|i| (i..(i + 3).min(rates.len())).map(|j| rates[j]).collect())
            .collect();
        let f = Forecasts { upper };
        let reactive = run_policy(Kind::Reactive, limits(&p), &rates, 300.0, &p, None).unwrap();
        let hybrid = run_policy(Kind::Hybrid, limits(&p), &rates, 300.0, &p, Some(&f)).unwrap();
        assert!(reactive.slo_violation_s > 0.0, "{reactive:?}");
        assert!(
            hybrid.slo_violation_s < reactive.slo_violation_s / 2.0,
            "hybrid {} vs reactive {}",
            hybrid.slo_violation_s,
            reactive.slo_violation_s
        );
        assert!(hybrid.decisions.iter().all(|d| !d.reason.is_empty()));
        // 60 req/s at 7 req/s per replica needs 9.
        assert!(hybrid.timeline.last().unwrap().replicas >= 9);
    }

    #[test]
    fn with_no_capacity_requests_are_dropped_not_lost() {
        let p = Platform {
            startup_s: 1e6,
            ..Platform::default()
        };
        let l = Limits {
            max_replicas: 1,
            ..limits(&p)
        };
        let o = run_policy(Kind::Reactive, l, &[100.0; 2], 60.0, &p, None).unwrap();
        assert!(
            o.dropped > o.requests / 2,
            "{} of {}",
            o.dropped,
            o.requests
        );
        assert!(o.slo_violation_s > 0.0);
    }
}
