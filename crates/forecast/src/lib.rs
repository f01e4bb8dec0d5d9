//! Forecasting the load of the platform's own services.
//!
//! - [`series`]: reading traces (rate CSVs and arrival logs) into a regular series, repairing
//!   gaps, duplicates and disorder, and saying what was repaired.
//! - [`model`]: the forecasters: seasonal naive (the baseline), MSTL + AutoETS (augurs), and
//!   autoregression with exogenous inputs (linear ARX, and NARX with boosted trees).
//! - [`select`]: online rolling-origin backtest: the forecaster with the least error at the
//!   scaling horizon is used, re-chosen as data arrives; intervals from its recent errors.
//! - [`anomaly`]: online anomaly events (seasonal median baseline, robust z-score) and
//!   NAB-style scoring against labelled windows.
//! - [`season`]: the seasonal period to model for a series' step and span.

pub mod anomaly;
pub mod model;
pub mod season;
pub mod select;
pub mod series;

pub use model::{Forecaster, MstlEts, Narx, SeasonalNaive};
pub use select::{Forecast, Score, Selector, Settings};
pub use series::{Ingest, Series, TraceError, read_trace};

/// The standard set of forecasters for a series with `period` steps per season, forecasting
/// `horizon` steps ahead, with refit intervals suited to their cost.
pub fn standard(period: usize, horizon: usize) -> (Vec<Box<dyn Forecaster>>, Vec<usize>) {
    let m = period.max(1);
    let lags = 6;
    let models: Vec<Box<dyn Forecaster>> = vec![
        Box::new(SeasonalNaive { period: m }),
        Box::new(MstlEts::new(if m > 1 { vec![m] } else { vec![] })),
        Box::new(Narx::new(
            mlmesh_learn::params::Algorithm::Ridge,
            lags,
            m,
            horizon,
        )),
        Box::new(Narx::new(
            mlmesh_learn::params::Algorithm::GradientBoosting,
            lags,
            m,
            horizon,
        )),
    ];
    let refit = vec![1, (m / 12).max(1), (m / 4).max(12), m.max(48)];
    (models, refit)
}
