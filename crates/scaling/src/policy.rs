//! Scaling policies. Reactive follows the Kubernetes HPA algorithm (the honest baseline);
//! predictive provisions for the upper forecast at the horizon a new replica needs to start;
//! hybrid is predictive but never below what reactive asks. All three share the bounds,
//! the scale-up rate limit and the scale-down stabilisation window, and every decision says
//! why.

use std::collections::VecDeque;

/// Which policy decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Reactive,
    Predictive,
    Hybrid,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Reactive, Kind::Predictive, Kind::Hybrid];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Reactive => "reactive",
            Kind::Predictive => "predictive",
            Kind::Hybrid => "hybrid",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == text)
    }

    pub fn uses_forecast(self) -> bool {
        self != Kind::Reactive
    }
}

/// Bounds and pacing shared by every policy.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Busy fraction a replica should run at (HPA's target utilisation).
    pub target_utilisation: f64,
    /// Reactive leaves the count alone while utilisation is within this fraction of target.
    pub tolerance: f64,
    /// Requests per second one replica serves at full utilisation.
    pub capacity_rps: f64,
    /// Scale-down uses the highest recommendation of this many seconds (HPA: 300).
    pub scale_down_stabilisation_s: f64,
    /// Hybrid's reactive part holds a scale-down this long; `None`: as reactive does. Down to
    /// the forecast horizon is safe for load the forecast follows (its part already holds what
    /// the horizon needs) and saves idle replicas; a burst the forecast cannot see then finds
    /// fewer replicas (BENCHMARKS.md has the trade-off on real traces).
    pub hybrid_stabilisation_s: Option<f64>,
    /// Seconds ahead the forecast looks (replica start-up + one interval). Predictive and
    /// hybrid hold a scale-down only this long: the forecast already covers the time a
    /// removed replica would need to come back, and holding longer only pays for idle ones.
    pub forecast_horizon_s: f64,
    /// Scale-up adds at most max(this, current) replicas per decision (HPA: 4 pods or 100%).
    pub max_scale_up: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            min_replicas: 1,
            max_replicas: 50,
            target_utilisation: 0.7,
            tolerance: 0.1,
            capacity_rps: 10.0,
            scale_down_stabilisation_s: 300.0,
            hybrid_stabilisation_s: None,
            forecast_horizon_s: 75.0,
            max_scale_up: 4,
        }
    }
}

impl Limits {
    /// Refuses limits that cannot work, saying which and why.
    pub fn check(&self) -> Result<(), String> {
        if self.min_replicas > self.max_replicas {
            return Err(format!(
                "min_replicas ({}) is above max_replicas ({})",
                self.min_replicas, self.max_replicas
            ));
        }
        if self.max_replicas == 0 {
            return Err("max_replicas must be at least 1".into());
        }
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{name} must be a positive number, not {v}"))
            }
        };
        positive("capacity_rps", self.capacity_rps)?;
        positive("target_utilisation", self.target_utilisation)?;
        if self.target_utilisation > 1.0 {
            return Err(format!(
                "target_utilisation is a fraction of capacity (0 < t ≤ 1), not {}",
                self.target_utilisation
            ));
        }
        if !(self.tolerance.is_finite() && (0.0..1.0).contains(&self.tolerance)) {
            return Err(format!(
                "tolerance must be in [0, 1), not {}",
                self.tolerance
            ));
        }
        if !(self.scale_down_stabilisation_s.is_finite() && self.scale_down_stabilisation_s >= 0.0)
        {
            return Err(format!(
                "scale_down_stabilisation_s must be ≥ 0, not {}",
                self.scale_down_stabilisation_s
            ));
        }
        if let Some(hold) = self.hybrid_stabilisation_s
            && !(hold.is_finite() && hold >= 0.0)
        {
            return Err(format!("hybrid_stabilisation_s must be ≥ 0, not {hold}"));
        }
        if !(self.forecast_horizon_s.is_finite() && self.forecast_horizon_s >= 0.0) {
            return Err(format!(
                "forecast_horizon_s must be ≥ 0, not {}",
                self.forecast_horizon_s
            ));
        }
        if self.max_scale_up == 0 {
            return Err("max_scale_up must be at least 1".into());
        }
        Ok(())
    }

    /// Replicas that serve `rps` at the target utilisation.
    pub fn replicas_for(&self, rps: f64) -> u32 {
        let need = rps.max(0.0) / (self.capacity_rps * self.target_utilisation);
        need.ceil().min(f64::from(u32::MAX)) as u32
    }
}

/// What the policy sees at a decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Seconds since the start.
    pub now: f64,
    /// Replicas serving.
    pub ready: u32,
    /// Replicas started but not yet serving.
    pub starting: u32,
    /// Busy fraction of the ready replicas over the last interval.
    pub utilisation: f64,
    /// Upper forecast of the request rate over the horizon (predictive and hybrid).
    pub forecast_rps: Option<f64>,
}

/// One recorded decision.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Decision {
    pub at: f64,
    pub from: u32,
    pub to: u32,
    pub reactive: Option<u32>,
    pub predictive: Option<u32>,
    pub reason: String,
}

/// A policy with its memory (recent recommendations for stabilisation).
#[derive(Debug, Clone)]
pub struct Scaler {
    pub kind: Kind,
    pub limits: Limits,
    recent: VecDeque<(f64, u32)>,
    recent_forecast: VecDeque<(f64, u32)>,
}

/// HPA's scale-down stabilisation: a recommendation below the current count gives way to the
/// highest recommendation of the last `hold` seconds (never above the current count). Returns
/// the count and whether the hold changed it.
fn stabilise(
    recent: &mut VecDeque<(f64, u32)>,
    now: f64,
    hold: f64,
    wanted: u32,
    current: u32,
) -> (u32, bool) {
    recent.push_back((now, wanted));
    while recent.front().is_some_and(|(t, _)| now - t > hold) {
        recent.pop_front();
    }
    if wanted >= current {
        return (wanted, false);
    }
    let highest = recent.iter().map(|(_, r)| *r).max().unwrap_or(wanted);
    let to = highest.min(current).max(wanted);
    (to, to != wanted)
}

impl Scaler {
    pub fn new(kind: Kind, limits: Limits) -> Result<Self, String> {
        limits.check()?;
        Ok(Self {
            kind,
            limits,
            recent: VecDeque::new(),
            recent_forecast: VecDeque::new(),
        })
    }

    /// Decides the replica count (ready + starting) after this observation.
    pub fn decide(&mut self, o: Observation) -> Decision {
        let l = &self.limits;
        let current = o.ready + o.starting;
        let reactive = (self.kind != Kind::Predictive).then(|| {
            if o.ready == 0 {
                return current.max(l.min_replicas);
            }
            let ratio = o.utilisation / l.target_utilisation;
            if (ratio - 1.0).abs() <= l.tolerance {
                current
            } else {
                (f64::from(o.ready) * ratio).ceil() as u32
            }
        });
        let predictive = if self.kind.uses_forecast() {
            o.forecast_rps.map(|rps| l.replicas_for(rps))
        } else {
            None
        };
        // Each part keeps its own scale-down stabilisation: reactive the HPA window, predictive
        // only the forecast horizon. Hybrid then never goes below what reactive would do.
        let reactive_hold = match (self.kind, l.hybrid_stabilisation_s) {
            (Kind::Hybrid, Some(hold)) => hold,
            _ => l.scale_down_stabilisation_s,
        };
        let predictive_hold = l.scale_down_stabilisation_s.min(l.forecast_horizon_s);
        let (min, max) = (l.min_replicas, l.max_replicas);
        let r = reactive.map(|r| {
            stabilise(
                &mut self.recent,
                o.now,
                reactive_hold,
                r.clamp(min, max),
                current,
            )
        });
        let p = predictive.map(|p| {
            stabilise(
                &mut self.recent_forecast,
                o.now,
                predictive_hold,
                p.clamp(min, max),
                current,
            )
        });
        let note = |part: Option<(u32, bool)>, hold: f64| match part {
            Some((to, true)) => {
                format!(" (scale-down held at {to} by the {hold:.0} s stabilisation window)")
            }
            _ => String::new(),
        };
        let (mut to, mut reason) = match (self.kind, r, p) {
            (Kind::Reactive, Some((r, _)), _) => (
                r,
                format!(
                    "utilisation {:.2} against target {:.2} asks for {}{}",
                    o.utilisation,
                    l.target_utilisation,
                    reactive.unwrap_or(r),
                    note(
                        Some((r, r != reactive.unwrap_or(r).clamp(min, max))),
                        reactive_hold
                    )
                ),
            ),
            (Kind::Predictive, _, Some((p, _))) => (
                p,
                format!(
                    "forecast {:.1} req/s (upper) at the horizon needs {}{}",
                    o.forecast_rps.unwrap_or(0.0),
                    predictive.unwrap_or(p),
                    note(
                        Some((p, p != predictive.unwrap_or(p).clamp(min, max))),
                        predictive_hold
                    )
                ),
            ),
            (Kind::Hybrid, Some((r, _)), Some((p, _))) => (
                r.max(p),
                format!(
                    "forecast {:.1} req/s (upper) needs {}, {p} after stabilisation; utilisation {:.2} asks for {}, {r} after stabilisation; the larger wins",
                    o.forecast_rps.unwrap_or(0.0),
                    predictive.unwrap_or(p),
                    o.utilisation,
                    reactive.unwrap_or(r),
                ),
            ),
            (_, Some((r, _)), None) => (r, format!("no forecast yet; utilisation asks for {r}")),
            _ => (current, "no forecast yet; holding".to_string()),
        };
        let wanted = reactive
            .into_iter()
            .chain(predictive)
            .max()
            .unwrap_or(current);
        if wanted > max || (wanted < min && to == min) {
            reason.push_str(&format!("; bounded to [{min}, {max}]"));
        }
        let most = current.saturating_add(l.max_scale_up.max(current));
        if to > most {
            to = most;
            reason.push_str(&format!("; scale-up limited to {most} this step"));
        }
        Decision {
            at: o.now,
            from: current,
            to,
            reactive,
            predictive,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(now: f64, ready: u32, utilisation: f64, forecast: Option<f64>) -> Observation {
        Observation {
            now,
            ready,
            starting: 0,
            utilisation,
            forecast_rps: forecast,
        }
    }

    #[test]
    fn reactive_follows_the_hpa_formula_with_tolerance() {
        let mut s = Scaler::new(Kind::Reactive, Limits::default()).unwrap();
        // 4 replicas at 0.91 against 0.7: ceil(4 · 1.3) = 6.
        assert_eq!(s.decide(obs(0.0, 4, 0.91, None)).to, 6);
        // Within 10% of target: unchanged.
        assert_eq!(s.decide(obs(15.0, 4, 0.75, None)).to, 4);
    }

    #[test]
    fn predictive_provisions_for_the_forecast_and_hybrid_takes_the_larger() {
        let limits = Limits::default(); // 10 req/s per replica at 0.7 → 7 req/s each
        let mut p = Scaler::new(Kind::Predictive, limits.clone()).unwrap();
        let d = p.decide(obs(0.0, 2, 0.1, Some(70.0)));
        assert_eq!(d.to, 6, "2 + max(4, 2) at most this step: {d:?}");
        assert_eq!(d.predictive, Some(10));
        let mut h = Scaler::new(Kind::Hybrid, limits).unwrap();
        let d = h.decide(obs(0.0, 4, 1.0, Some(7.0)));
        assert_eq!((d.reactive, d.predictive, d.to), (Some(6), Some(1), 6));
        assert!(d.reason.contains("the larger wins"));
    }

    #[test]
    fn scale_down_waits_out_the_stabilisation_window() {
        let mut s = Scaler::new(Kind::Reactive, Limits::default()).unwrap();
        assert_eq!(s.decide(obs(0.0, 10, 0.7, None)).to, 10);
        let d = s.decide(obs(60.0, 10, 0.06, None));
        assert_eq!(d.to, 10, "{d:?}");
        assert!(d.reason.contains("300 s stabilisation"));
        assert_eq!(s.decide(obs(400.0, 10, 0.06, None)).to, 1);
        // The forecast covers its horizon, so predictive holds only that long.
        let mut p = Scaler::new(Kind::Predictive, Limits::default()).unwrap();
        assert_eq!(p.decide(obs(0.0, 10, 0.5, Some(70.0))).to, 10);
        assert_eq!(p.decide(obs(60.0, 10, 0.1, Some(7.0))).to, 10);
        assert_eq!(p.decide(obs(150.0, 10, 0.1, Some(7.0))).to, 1);
    }

    #[test]
    fn hybrid_never_goes_below_what_reactive_would_hold() {
        let mut h = Scaler::new(Kind::Hybrid, Limits::default()).unwrap();
        assert_eq!(h.decide(obs(0.0, 10, 0.7, Some(70.0))).to, 10);
        // The forecast drops at once; reactive's 300 s window still holds 10.
        let d = h.decide(obs(150.0, 10, 0.06, Some(7.0)));
        assert_eq!(
            (d.to, d.reactive, d.predictive),
            (10, Some(1), Some(1)),
            "{d:?}"
        );
        assert_eq!(h.decide(obs(400.0, 10, 0.06, Some(7.0))).to, 1);

        // With a shorter hybrid window the reactive part lets go after it: the forecast part
        // still holds its own horizon (75 s here).
        let mut short = Scaler::new(
            Kind::Hybrid,
            Limits {
                hybrid_stabilisation_s: Some(75.0),
                ..Limits::default()
            },
        )
        .unwrap();
        assert_eq!(short.decide(obs(0.0, 10, 0.7, Some(70.0))).to, 10);
        assert_eq!(short.decide(obs(60.0, 10, 0.06, Some(7.0))).to, 10);
        assert_eq!(short.decide(obs(150.0, 10, 0.06, Some(7.0))).to, 1);
    }

    #[test]
    fn bounds_hold_and_bad_limits_are_refused() {
        let limits = Limits {
            min_replicas: 2,
            max_replicas: 3,
            ..Limits::default()
        };
        let mut s = Scaler::new(Kind::Predictive, limits).unwrap();
        assert_eq!(s.decide(obs(0.0, 3, 0.5, Some(1000.0))).to, 3);
        assert_eq!(s.decide(obs(1000.0, 3, 0.5, Some(0.0))).to, 2);
        let bad = |l: Limits| Scaler::new(Kind::Hybrid, l).unwrap_err();
        assert!(
            bad(Limits {
                min_replicas: 5,
                max_replicas: 2,
                ..Limits::default()
            })
            .contains("above")
        );
        assert!(
            bad(Limits {
                capacity_rps: -1.0,
                ..Limits::default()
            })
            .contains("capacity")
        );
        assert!(
            bad(Limits {
                target_utilisation: 1.5,
                ..Limits::default()
            })
            .contains("fraction")
        );
        assert!(
            bad(Limits {
                scale_down_stabilisation_s: f64::NAN,
                ..Limits::default()
            })
            .contains("stabilisation")
        );
        assert!(
            bad(Limits {
                hybrid_stabilisation_s: Some(-1.0),
                ..Limits::default()
            })
            .contains("hybrid_stabilisation_s")
        );
    }
}
