//! Choosing a forecaster by rolling-origin backtest, online.
//!
//! Every step each forecaster forecasts the next `horizon` steps from the newest origin; when
//! the truth arrives, its errors are scored. The forecaster with the smallest mean absolute
//! error at the scaling horizon over the trailing window is the one in use, so the choice is
//! re-made as data arrives and always rests on forecasts made before their truth was seen.
//! Intervals are the empirical quantiles of the chosen forecaster's recent errors at each
//! step ahead (split-conformal), which holds for every forecaster alike.

use std::collections::VecDeque;

use rayon::prelude::*;

use crate::model::Forecaster;

/// A forecast from the newest origin.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Forecast {
    pub forecaster: &'static str,
    pub point: Vec<f64>,
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
    /// Interval coverage asked for, e.g. 0.9.
    pub level: f64,
}

/// How one forecaster has done so far at the scaling horizon.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Score {
    pub forecaster: &'static str,
    pub scored: usize,
    pub mae: f64,
    /// MAE over the MAE of seasonal naive on the same origins; below 1 beats it.
    pub mase: f64,
}

/// Settings of a [`Selector`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// Steps ahead that matter (the scaling horizon).
    pub horizon: usize,
    /// Origins over which forecasters are compared.
    pub window: usize,
    /// Interval coverage.
    pub level: f64,
    /// Steps between refits, per forecaster (same order).
    pub refit: Vec<usize>,
}

struct Entry {
    model: Box<dyn Forecaster>,
    refit: usize,
    since_fit: usize,
    /// Forecasts still waiting for their truth: (origin index, forecasts for 1..=horizon).
    pending: VecDeque<(usize, Vec<f64>)>,
    /// Recent signed errors (truth − forecast) per step ahead.
    errors: Vec<VecDeque<f64>>,
    /// Absolute errors at the horizon, per origin, for the whole run (for MASE).
    abs_at_horizon: Vec<(usize, f64)>,
}

/// Forecasters competing on one series; the first must be the seasonal-naive baseline.
pub struct Selector {
    entries: Vec<Entry>,
    settings: Settings,
    history: Vec<f64>,
    chosen: usize,
    /// Absolute errors at the horizon of whichever forecaster was in use at each origin.
    used: Vec<(usize, f64)>,
    used_pending: VecDeque<(usize, usize)>,
}

impl Selector {
    pub fn new(models: Vec<Box<dyn Forecaster>>, settings: Settings) -> Self {
        let horizon = settings.horizon.max(1);
        let entries = models
            .into_iter()
            .enumerate()
            .map(|(i, model)| Entry {
                model,
                refit: settings.refit.get(i).copied().unwrap_or(1).max(1),
                since_fit: usize::MAX,
                pending: VecDeque::new(),
                errors: vec![VecDeque::new(); horizon],
                abs_at_horizon: Vec::new(),
            })
            .collect();
        Self {
            entries,
            settings: Settings {
                horizon,
                ..settings
            },
            history: Vec::new(),
            chosen: 0,
            used: Vec::new(),
            used_pending: VecDeque::new(),
        }
    }

    pub fn history(&self) -> &[f64] {
        &self.history
    }

    /// The forecaster in use.
    pub fn chosen(&self) -> &'static str {
        self.entries[self.chosen].model.name()
    }

    /// Adds the next observed value: scores forecasts that targeted it, refits what is due,
    /// re-chooses, and forecasts from the new origin.
    pub fn observe(&mut self, value: f64) {
        self.history.push(value);
        let index = self.history.len() - 1;
        let horizon = self.settings.horizon;
        let window = self.settings.window.max(1);
        for entry in &mut self.entries {
            for (origin, forecasts) in &entry.pending {
                let h = index - origin;
                if (1..=horizon).contains(&h) {
                    let e = value - forecasts[h - 1];
                    let errors = &mut entry.errors[h - 1];
                    errors.push_back(e);
                    if errors.len() > window {
                        errors.pop_front();
                    }
                    if h == horizon {
                        entry.abs_at_horizon.push((*origin, e.abs()));
                    }
                }
            }
            while entry
                .pending
                .front()
                .is_some_and(|(o, _)| index - o >= horizon)
            {
                entry.pending.pop_front();
            }
        }
        while let Some(&(origin, which)) = self.used_pending.front() {
            if index - origin < horizon {
                break;
            }
            self.used_pending.pop_front();
            if index - origin == horizon
                && let Some(&(_, e)) = self.entries[which]
                    .abs_at_horizon
                    .iter()
                    .rev()
                    .find(|(o, _)| *o == origin)
            {
                self.used.push((origin, e));
            }
        }
        // Forecasters learn and forecast independently: one per core.
        let history = &self.history;
        self.entries.par_iter_mut().for_each(|entry| {
            entry.since_fit = entry.since_fit.saturating_add(1);
            if entry.since_fit >= entry.refit {
                // A failed fit keeps the previous one (or the last-value fallback).
                if entry.model.fit(history).is_ok() {
                    entry.since_fit = 0;
                } else {
                    entry.since_fit = entry.refit / 2;
                }
            }
            let forecasts = entry.model.predict(history, horizon);
            entry.pending.push_back((index, forecasts));
        });
        self.choose();
        self.used_pending.push_back((index, self.chosen));
    }

    fn recent_mae(entry: &Entry, horizon: usize) -> Option<f64> {
        let errors = &entry.errors[horizon - 1];
        (!errors.is_empty())
            .then(|| errors.iter().map(|e| e.abs()).sum::<f64>() / errors.len() as f64)
    }

    fn choose(&mut self) {
        let horizon = self.settings.horizon;
        let needed = (self.settings.window / 2).max(1);
        let mut best = (0, f64::INFINITY);
        for (i, entry) in self.entries.iter().enumerate() {
            if entry.errors[horizon - 1].len() < needed {
                continue;
            }
            if let Some(mae) = Self::recent_mae(entry, horizon)
                && mae < best.1
            {
                best = (i, mae);
            }
        }
        self.chosen = best.0;
    }

    /// The chosen forecaster's forecast from the newest origin, with intervals.
    pub fn forecast(&self) -> Forecast {
        let entry = &self.entries[self.chosen];
        let level = self.settings.level.clamp(0.0, 0.999);
        let point = entry
            .pending
            .back()
            .map(|(_, f)| f.clone())
            .unwrap_or_else(|| vec![0.0; self.settings.horizon]);
        let mut lower = Vec::with_capacity(point.len());
        let mut upper = Vec::with_capacity(point.len());
        for (h, p) in point.iter().enumerate() {
            let errors = &entry.errors[h];
            if errors.len() < 8 {
                // Too few errors to know the spread: no interval yet.
                lower.push(*p);
                upper.push(*p);
                continue;
            }
            let mut sorted: Vec<f64> = errors.iter().copied().collect();
            sorted.sort_by(f64::total_cmp);
            let q = |f: f64| sorted[((sorted.len() - 1) as f64 * f).round() as usize];
            lower.push((p + q((1.0 - level) / 2.0)).max(0.0));
            upper.push((p + q((1.0 + level) / 2.0)).max(*p));
        }
        Forecast {
            forecaster: entry.model.name(),
            point,
            lower,
            upper,
            level,
        }
    }

    /// Each forecaster's error at the horizon over every scored origin, and MASE against the
    /// seasonal-naive baseline (the first forecaster) on the same origins.
    pub fn scores(&self) -> Vec<Score> {
        let baseline = &self.entries[0].abs_at_horizon;
        let mut scores: Vec<Score> = self
            .entries
            .iter()
            .map(|e| score(e.model.name(), &e.abs_at_horizon, baseline))
            .collect();
        scores.push(score("selected", &self.used, baseline));
        scores
    }
}

fn score(name: &'static str, errors: &[(usize, f64)], baseline: &[(usize, f64)]) -> Score {
    let base: std::collections::HashMap<usize, f64> = baseline.iter().copied().collect();
    let (mut own, mut reference, mut n) = (0.0, 0.0, 0);
    for (origin, e) in errors {
        if let Some(b) = base.get(origin) {
            own += e;
            reference += b;
            n += 1;
        }
    }
    Score {
        forecaster: name,
        scored: n,
        mae: if n > 0 { own / n as f64 } else { f64::NAN },
        mase: if reference > 0.0 {
            own / reference
        } else {
            f64::NAN
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Forecaster, SeasonalNaive};

    /// Always forecasts a constant.
    struct Constant(f64);
    impl Forecaster for Constant {
        fn name(&self) -> &'static str {
            "constant"
        }
        fn fit(&mut self, _: &[f64]) -> Result<(), crate::model::FitError> {
            Ok(())
        }
        fn predict(&self, _: &[f64], horizon: usize) -> Vec<f64> {
            vec![self.0; horizon]
        }
    }

    fn settings() -> Settings {
        Settings {
            horizon: 2,
            window: 20,
            level: 0.8,
            refit: vec![1, 1],
        }
    }

    #[test]
    fn the_better_forecaster_is_chosen_and_scored_against_the_baseline() {
        // A flat series with noise: the constant at its level beats last-season values.
        let mut s = Selector::new(
            vec![
                Box::new(SeasonalNaive { period: 1 }),
                Box::new(Constant(10.0)),
            ],
            settings(),
        );
        for i in 0..200_u64 {
            // Deterministic noise in [-1, 1] around 10.
            s.observe(10.0 + ((i * 7919 % 13) as f64 - 6.0) / 6.0);
        }
        assert_eq!(s.chosen(), "constant");
        let scores = s.scores();
        assert_eq!(scores[0].forecaster, "seasonal_naive");
        assert!((scores[0].mase - 1.0).abs() < 1e-12);
        assert!(scores[1].mase < 0.6, "{scores:?}");
        assert!(scores[2].mase < 0.7, "selected: {scores:?}");
        let f = s.forecast();
        assert_eq!(f.forecaster, "constant");
        assert!(f.lower[1] < 9.5 && f.upper[1] > 10.5, "{f:?}");
    }

    #[test]
    fn before_any_truth_the_baseline_is_used_without_interval() {
        let mut s = Selector::new(
            vec![
                Box::new(SeasonalNaive { period: 1 }),
                Box::new(Constant(3.0)),
            ],
            settings(),
        );
        s.observe(5.0);
        let f = s.forecast();
        assert_eq!(f.forecaster, "seasonal_naive");
        assert_eq!(f.point, vec![5.0, 5.0]);
        assert_eq!(f.lower, f.point);
    }
}
