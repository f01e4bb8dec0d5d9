//! Scaling: every `decide_ms`, for each scaled service, the request rate of the last minutes
//! (from the collected series, in `step_s` bins) feeds the forecasters of `mlmesh-forecast`;
//! the policy of `mlmesh-scaling` decides; the backend acts. Every decision is kept with its
//! reason.

use std::collections::{BTreeMap, VecDeque};

use mlmesh_forecast::{Selector, Settings};
use mlmesh_scaling::{Decision, Kind, Limits, Observation, Scaler};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::series::Point;

/// How the autoscaler scales, section `[autoscaler]` (with the collection settings).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub services: Vec<String>,
    pub kind: Kind,
    pub limits: Limits,
    /// Bin width of the series the forecasters see.
    pub step_s: u64,
    /// Seconds from starting a replica to its first answer (sets the forecast horizon).
    pub startup_s: f64,
    pub decide_s: f64,
}

/// A decision as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DecisionRecord {
    pub service: String,
    /// Milliseconds since the epoch.
    pub at_ms: i64,
    pub from: u32,
    pub to: u32,
    pub reactive: Option<u32>,
    pub predictive: Option<u32>,
    pub forecast_rps: Option<f64>,
    pub forecaster: Option<String>,
    pub reason: String,
    /// Whether the backend carried it out (and if not, why).
    pub applied: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where each scaled service stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TargetState {
    pub service: String,
    pub policy: String,
    pub replicas: u32,
    pub rps: f64,
    pub forecast_rps: Option<f64>,
    pub forecaster: Option<String>,
    /// CPU cores its instances use now.
    pub cpu_cores: f64,
    /// Requests served per CPU-second, measured (under load): what one replica with one core
    /// of its own serves at full use. Compare it with the declared `capacity_rps`.
    pub requests_per_cpu_second: Option<f64>,
}

/// One service being scaled.
pub struct Target {
    pub service: String,
    scaler: Scaler,
    selector: Selector,
    /// End (ms) of the last bin fed to the selector.
    pub fed_until_ms: i64,
    pub state: TargetState,
}

impl Target {
    pub fn new(service: &str, plan: &Plan) -> Result<Self, String> {
        let horizon = ((plan.startup_s + plan.decide_s) / plan.step_s as f64).ceil() as usize + 1;
        let (models, refit) = mlmesh_forecast::standard(1, horizon);
        Ok(Self {
            service: service.to_string(),
            scaler: Scaler::new(plan.kind, plan.limits.clone())?,
            selector: Selector::new(
                models,
                Settings {
                    horizon,
                    window: 60,
                    level: 0.5,
                    refit,
                },
            ),
            fed_until_ms: 0,
            state: TargetState {
                service: service.to_string(),
                policy: plan.kind.name().to_string(),
                replicas: 0,
                rps: 0.0,
                forecast_rps: None,
                forecaster: None,
                cpu_cores: 0.0,
                requests_per_cpu_second: None,
            },
        })
    }

    /// Feeds the complete bins of `points` not yet seen to the forecasters.
    pub fn feed(&mut self, points: &[Point], step_ms: i64, now_ms: i64) {
        let mut bins: BTreeMap<i64, (f64, u32)> = BTreeMap::new();
        for p in points {
            let bin = p.t_ms - p.t_ms.rem_euclid(step_ms);
            if bin >= self.fed_until_ms && bin + step_ms <= now_ms {
                let e = bins.entry(bin).or_default();
                e.0 += p.rps;
                e.1 += 1;
            }
        }
        for (bin, (sum, n)) in bins {
            self.selector.observe(sum / f64::from(n.max(1)));
            self.fed_until_ms = bin + step_ms;
        }
    }

    /// Decides from the newest point and the forecast.
    pub fn decide(&mut self, newest: &Point, ready: u32, starting: u32, now_s: f64) -> Decision {
        let forecast = (!self.selector.history().is_empty()).then(|| self.selector.forecast());
        let forecast_rps = forecast
            .as_ref()
            .map(|f| f.upper.iter().copied().fold(0.0, f64::max));
        let capacity = f64::from(ready.max(1)) * self.scaler.limits.capacity_rps;
        self.state.rps = newest.rps;
        self.state.cpu_cores = newest.cpu_cores;
        // Below a tenth of a core the process's own background work dominates the ratio.
        self.state.requests_per_cpu_second =
            (newest.cpu_cores >= 0.1).then(|| newest.rps / newest.cpu_cores);
        self.state.forecast_rps = forecast_rps;
        self.state.forecaster = forecast.map(|f| f.forecaster.to_string());
        self.scaler.decide(Observation {
            now: now_s,
            ready,
            starting,
            utilisation: (newest.rps / capacity).min(1.0),
            forecast_rps,
        })
    }
}

/// The most recent decisions, newest last.
#[derive(Debug, Default)]
pub struct History {
    pub decisions: VecDeque<DecisionRecord>,
}

impl History {
    pub fn push(&mut self, record: DecisionRecord) {
        self.decisions.push_back(record);
        while self.decisions.len() > crate::HISTORY {
            self.decisions.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            services: vec!["model-trees".into()],
            kind: Kind::Hybrid,
            limits: Limits {
                capacity_rps: 100.0,
                max_replicas: 4,
                ..Limits::default()
            },
            step_s: 10,
            startup_s: 5.0,
            decide_s: 5.0,
        }
    }

    fn point(t_ms: i64, rps: f64) -> Point {
        Point {
            t_ms,
            rps,
            errors_per_s: 0.0,
            p99_ms: Some(1.0),
            in_flight: 0.0,
            instances: 1,
            cpu_cores: rps / 100.0,
        }
    }

    #[test]
    fn rising_load_asks_for_more_replicas_with_a_reason() {
        let mut t = Target::new("model-trees", &plan()).unwrap();
        let points: Vec<Point> = (0..120)
            .map(|i| point(i * 1000, 40.0 + i as f64 * 2.0))
            .collect();
        t.feed(&points, 10_000, 120_000);
        assert_eq!(t.fed_until_ms, 120_000, "twelve complete bins");
        let d = t.decide(points.last().unwrap(), 1, 0, 120.0);
        // 278 req/s on one replica of 100: utilisation saturates; hybrid scales out.
        assert!(d.to > 1, "{d:?}");
        assert!(!d.reason.is_empty());
        assert!(t.state.forecast_rps.is_some());
        assert_eq!(t.state.requests_per_cpu_second, Some(100.0));
        // Bins already seen are not fed twice.
        t.feed(&points, 10_000, 120_000);
        assert_eq!(t.selector.history().len(), 12);
    }
}
