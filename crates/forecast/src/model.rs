//! Forecasters. Each learns now and then (`fit`) and forecasts often (`predict`) from the
//! latest history, the way an autoscaler uses them: refitting every few minutes, forecasting
//! every control tick.

use std::collections::BTreeMap;

use augurs_core::{Fit, Predict};
use augurs_ets::AutoETS;
use augurs_mstl::{FittedMSTLModel, MSTLModel};
use mlmesh_learn::params::Algorithm;
use mlmesh_learn::{Estimator, Matrix, Params, Prediction, Progress, Target, Task};

/// Why a forecaster could not learn.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{name}: {message}")]
pub struct FitError {
    pub name: &'static str,
    pub message: String,
}

/// A load forecaster.
pub trait Forecaster: Send {
    fn name(&self) -> &'static str;
    /// Learns from `history`, the whole series so far (oldest first).
    fn fit(&mut self, history: &[f64]) -> Result<(), FitError>;
    /// Point forecasts for the `horizon` steps after the end of `history`. A forecaster that
    /// has not been fitted yet (or whose fit failed) repeats the last value.
    fn predict(&self, history: &[f64], horizon: usize) -> Vec<f64>;
}

fn last_value(history: &[f64], horizon: usize) -> Vec<f64> {
    vec![history.last().copied().unwrap_or(0.0); horizon]
}

/// The value one season ago: the honest baseline every other forecaster must beat.
#[derive(Debug, Clone)]
pub struct SeasonalNaive {
    pub period: usize,
}

impl Forecaster for SeasonalNaive {
    fn name(&self) -> &'static str {
        "seasonal_naive"
    }

    fn fit(&mut self, _history: &[f64]) -> Result<(), FitError> {
        Ok(())
    }

    fn predict(&self, history: &[f64], horizon: usize) -> Vec<f64> {
        let n = history.len();
        let m = self.period.max(1);
        if n < m {
            return last_value(history, horizon);
        }
        (1..=horizon)
            .map(|h| history[n - m + (h - 1) % m])
            .collect()
    }
}

/// MSTL decomposition (one or more seasonal periods) with an AutoETS trend, from augurs.
/// Fitted on a trailing window of whole seasons, so refits stay fast on long histories.
pub struct MstlEts {
    pub periods: Vec<usize>,
    /// Seasons of the longest period kept for fitting.
    pub seasons: usize,
    fitted: Option<(FittedMSTLModel, usize)>,
}

impl MstlEts {
    pub fn new(periods: Vec<usize>) -> Self {
        Self {
            periods,
            seasons: 4,
            fitted: None,
        }
    }
}

impl Forecaster for MstlEts {
    fn name(&self) -> &'static str {
        "mstl_ets"
    }

    fn fit(&mut self, history: &[f64]) -> Result<(), FitError> {
        let longest = self.periods.iter().copied().max().unwrap_or(1);
        let window = (longest * self.seasons).max(16);
        let tail = &history[history.len().saturating_sub(window)..];
        let err = |message: String| FitError {
            name: "mstl_ets",
            message,
        };
        // MSTL needs two whole seasons of every period it models.
        let periods: Vec<usize> = self
            .periods
            .iter()
            .copied()
            .filter(|&p| p > 1 && tail.len() >= 2 * p)
            .collect();
        let trend = AutoETS::non_seasonal().into_trend_model();
        let model = MSTLModel::new(periods, trend);
        let fitted = model.fit(tail).map_err(|e| err(e.to_string()))?;
        self.fitted = Some((fitted, history.len()));
        Ok(())
    }

    fn predict(&self, history: &[f64], horizon: usize) -> Vec<f64> {
        let Some((model, fitted_len)) = &self.fitted else {
            return last_value(history, horizon);
        };
        // Forecast from where the fit ended, then skip the steps already observed since.
        let skip = history.len().saturating_sub(*fitted_len);
        match model.predict(skip + horizon, None) {
            Ok(f) if f.point.len() == skip + horizon => f.point[skip..].to_vec(),
            _ => last_value(history, horizon),
        }
    }
}

/// Autoregression with exogenous inputs, one model per horizon (the direct strategy): the
/// target `y[t+h]` is learnt from the recent values `y[t], y[t-1], …`, the value one season
/// before the target, and the target's position in the season (sine and cosine). With a
/// linear learner (ridge) this is ARX; with gradient-boosted trees it is the nonlinear NARX of
/// the source research.
pub struct Narx {
    pub lags: usize,
    pub period: usize,
    pub horizon: usize,
    pub algorithm: Algorithm,
    /// Most rows per fit (the newest), which bounds refit time on long histories.
    pub window: usize,
    models: Vec<Estimator>,
}

impl Narx {
    pub fn new(algorithm: Algorithm, lags: usize, period: usize, horizon: usize) -> Self {
        Self {
            lags: lags.max(1),
            period: period.max(1),
            horizon: horizon.max(1),
            algorithm,
            window: 4032,
            models: Vec::new(),
        }
    }

    fn features(&self, history: &[f64], origin: usize, h: usize, out: &mut Vec<f64>) {
        // `origin` is the index of the last observed value; the target is origin + h.
        for l in 0..self.lags {
            out.push(history[origin - l]);
        }
        let target = origin + h;
        let m = self.period;
        out.push(if m > 1 && target >= m && target - m <= origin {
            history[target - m]
        } else {
            history[origin]
        });
        let phase = std::f64::consts::TAU * (target % m) as f64 / m as f64;
        out.push(phase.sin());
        out.push(phase.cos());
    }

    fn width(&self) -> usize {
        self.lags + 3
    }
}

impl Forecaster for Narx {
    fn name(&self) -> &'static str {
        match self.algorithm {
            Algorithm::GradientBoosting => "narx_boosting",
            _ => "arx_ridge",
        }
    }

    fn fit(&mut self, history: &[f64]) -> Result<(), FitError> {
        let name = self.name();
        let first = self.lags - 1;
        let mut models = Vec::with_capacity(self.horizon);
        for h in 1..=self.horizon {
            let last = history.len().saturating_sub(h + 1);
            if last < first + 8 {
                return Err(FitError {
                    name,
                    message: format!(
                        "{} points are too few; it needs {}",
                        history.len(),
                        first + h + 9
                    ),
                });
            }
            let start = first.max(last.saturating_sub(self.window));
            let mut data = Vec::with_capacity((last - start + 1) * self.width());
            let mut y = Vec::with_capacity(last - start + 1);
            for origin in start..=last {
                self.features(history, origin, h, &mut data);
                y.push(history[origin + h]);
            }
            let x = Matrix::new(y.len(), self.width(), data);
            let task = Task::Regression;
            let mut given = BTreeMap::new();
            if self.algorithm == Algorithm::GradientBoosting {
                given.insert("n_estimators".to_string(), serde_json::json!(60));
                given.insert("min_samples_leaf".to_string(), serde_json::json!(10));
            }
            let params = Params::resolve(self.algorithm, task, &given)
                .map_err(|message| FitError { name, message })?;
            let model = mlmesh_learn::fit(
                self.algorithm,
                &params,
                &x,
                &Target::Values(y),
                0,
                &Progress::default(),
            )
            .map_err(|e| FitError {
                name,
                message: e.to_string(),
            })?;
            models.push(model);
        }
        self.models = models;
        Ok(())
    }

    fn predict(&self, history: &[f64], horizon: usize) -> Vec<f64> {
        if self.models.is_empty() || history.len() < self.lags {
            return last_value(history, horizon);
        }
        let origin = history.len() - 1;
        let mut row = Vec::with_capacity(self.width());
        (1..=horizon)
            .map(|h| {
                let model = &self.models[(h - 1).min(self.models.len() - 1)];
                row.clear();
                self.features(history, origin, h, &mut row);
                match model.predict(&Matrix::new(1, self.width(), row.clone())) {
                    Prediction::Values(v) => v[0].max(0.0),
                    _ => history[origin],
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seasonal(n: usize, m: usize) -> Vec<f64> {
        (0..n)
            .map(|i| {
                100.0
                    + 50.0 * (std::f64::consts::TAU * (i % m) as f64 / m as f64).sin()
                    + 0.05 * i as f64
            })
            .collect()
    }

    #[test]
    fn seasonal_naive_repeats_the_last_season() {
        let f = SeasonalNaive { period: 3 };
        assert_eq!(
            f.predict(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 4),
            vec![4.0, 5.0, 6.0, 4.0]
        );
        assert_eq!(f.predict(&[7.0], 2), vec![7.0, 7.0]);
    }

    #[test]
    fn every_forecaster_follows_a_clean_seasonal_series() {
        let y = seasonal(24 * 10, 24);
        let (train, test) = y.split_at(24 * 9);
        let mut models: Vec<Box<dyn Forecaster>> = vec![
            Box::new(MstlEts::new(vec![24])),
            Box::new(Narx::new(Algorithm::Ridge, 4, 24, 3)),
            Box::new(Narx::new(Algorithm::GradientBoosting, 4, 24, 3)),
        ];
        for m in &mut models {
            m.fit(train).unwrap();
            let p = m.predict(train, 3);
            for (h, (p, t)) in p.iter().zip(test).enumerate() {
                assert!(
                    (p - t).abs() < 6.0,
                    "{} at h={}: {p} vs {t}",
                    m.name(),
                    h + 1
                );
            }
        }
    }

    #[test]
    fn too_short_a_history_is_an_error_not_a_panic() {
        let mut m = Narx::new(Algorithm::Ridge, 4, 24, 3);
        assert!(m.fit(&[1.0, 2.0, 3.0]).is_err());
        assert_eq!(m.predict(&[1.0, 2.0], 2), vec![2.0, 2.0]);
        let mut e = MstlEts::new(vec![24]);
        let _ = e.fit(&[1.0, 2.0, 3.0]);
        assert_eq!(e.predict(&[], 1), vec![0.0]);
    }
}
