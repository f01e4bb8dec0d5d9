//! The learning algorithms of mlmesh, on plain row-major `f64` matrices.
//!
//! Why written here rather than taken from a crate: the Rust ML crates surveyed for this
//! project (smartcore 0.7, linfa 0.8, perpetual 2.3) lack class probabilities for forests,
//! naive Bayes and SVMs, cannot persist some fitted models (smartcore SVC), are 3–100× slower
//! to train than scikit-learn on some sets (perpetual, smartcore SVC/RF), or need nightly Rust.
//! Every classifier here gives probabilities, every fitted model is plain serde data (the
//! artifact format), and training runs on rayon where it parallelises.
//!
//! Layout: [`Matrix`], [`Target`], [`params`] (hyper-parameters per algorithm), [`prep`]
//! (imputation, one-hot, scaling), [`split`] (holdout and k-fold), [`metrics`], and one module
//! per family of algorithms. [`fit`] and [`Estimator::predict`] are the entry points.

// Numeric kernels index several arrays in step; index loops say that more plainly than zips.
#![allow(clippy::needless_range_loop)]

pub mod boost;
pub mod knn;
pub mod linear;
pub mod metrics;
pub mod mlp;
pub mod nb;
pub mod params;
pub mod prep;
pub mod split;
pub mod tree;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

pub use params::{Algorithm, Params};

/// A dense row-major matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Matrix {
    pub fn new(rows: usize, cols: usize, data: Vec<f64>) -> Self {
        assert_eq!(
            rows * cols,
            data.len(),
            "matrix shape does not match its data"
        );
        Self { rows, cols, data }
    }

    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self::new(rows, cols, vec![0.0; rows * cols])
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    pub fn row_mut(&mut self, i: usize) -> &mut [f64] {
        &mut self.data[i * self.cols..(i + 1) * self.cols]
    }

    pub fn select_rows(&self, rows: &[usize]) -> Self {
        let mut data = Vec::with_capacity(rows.len() * self.cols);
        for &r in rows {
            data.extend_from_slice(self.row(r));
        }
        Self::new(rows.len(), self.cols, data)
    }

    /// Column-major copy: one `Vec` per column (trees scan columns).
    pub fn columns(&self) -> Vec<Vec<f64>> {
        (0..self.cols)
            .map(|c| {
                (0..self.rows)
                    .map(|r| self.data[r * self.cols + c])
                    .collect()
            })
            .collect()
    }

    /// Index of the largest value in each row (the predicted class).
    pub fn argmax_rows(&self) -> Vec<usize> {
        (0..self.rows)
            .map(|r| {
                let row = self.row(r);
                let mut best = 0;
                for (j, v) in row.iter().enumerate() {
                    if *v > row[best] {
                        best = j;
                    }
                }
                best
            })
            .collect()
    }
}

/// Whether a model predicts classes or numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Classification,
    Regression,
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Self::Classification => "classification",
            Self::Regression => "regression",
        }
    }
}

/// What a model learns to predict: class indices `0..n_classes`, or values.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Classes { y: Vec<usize>, n_classes: usize },
    Values(Vec<f64>),
}

impl Target {
    pub fn len(&self) -> usize {
        match self {
            Self::Classes { y, .. } => y.len(),
            Self::Values(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn task(&self) -> Task {
        match self {
            Self::Classes { .. } => Task::Classification,
            Self::Values(_) => Task::Regression,
        }
    }

    pub fn select(&self, rows: &[usize]) -> Self {
        match self {
            Self::Classes { y, n_classes } => Self::Classes {
                y: rows.iter().map(|&r| y[r]).collect(),
                n_classes: *n_classes,
            },
            Self::Values(v) => Self::Values(rows.iter().map(|&r| v[r]).collect()),
        }
    }
}

/// What a model answers for a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Prediction {
    /// `[batch, n_classes]` class probabilities; each row sums to 1.
    Probabilities(Matrix),
    Values(Vec<f64>),
}

/// Progress and cancellation shared between a training job and whoever watches it.
#[derive(Debug, Default)]
pub struct Progress {
    permille: AtomicU32,
    cancelled: AtomicBool,
}

impl Progress {
    pub fn set(&self, fraction: f64) {
        let permille = (fraction.clamp(0.0, 1.0) * 1000.0) as u32;
        self.permille.fetch_max(permille, Ordering::Relaxed);
    }

    pub fn fraction(&self) -> f64 {
        f64::from(self.permille.load(Ordering::Relaxed)) / 1000.0
    }

    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// `Err(Cancelled)` once cancelled: algorithms call this between units of work.
    pub fn check(&self) -> Result<(), FitError> {
        if self.is_cancelled() {
            Err(FitError::Cancelled)
        } else {
            Ok(())
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    /// The caller's data or parameters cannot be used; the message says how to fix it.
    #[error("{0}")]
    Invalid(String),
    #[error("training was cancelled")]
    Cancelled,
}

/// A fitted model of any algorithm: plain data, serialised as the artifact's `estimator`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Estimator {
    Tree(tree::Tree),
    Forest(tree::Forest),
    Boosting(boost::Booster),
    Linear(linear::LinearModel),
    GaussianNb(nb::GaussianNb),
    Knn(knn::Knn),
    Mlp(mlp::Mlp),
}

impl Estimator {
    /// Predicts a batch; `x` must have the columns the model was fitted on.
    pub fn predict(&self, x: &Matrix) -> Prediction {
        match self {
            Self::Tree(m) => m.predict(x),
            Self::Forest(m) => m.predict(x),
            Self::Boosting(m) => m.predict(x),
            Self::Linear(m) => m.predict(x),
            Self::GaussianNb(m) => m.predict(x),
            Self::Knn(m) => m.predict(x),
            Self::Mlp(m) => m.predict(x),
        }
    }
}

/// Fits `algorithm` with validated `params` on `x`/`target`. Deterministic for a given `seed`.
pub fn fit(
    algorithm: Algorithm,
    params: &Params,
    x: &Matrix,
    target: &Target,
    seed: u64,
    progress: &Progress,
) -> Result<Estimator, FitError> {
    if x.rows == 0 || x.rows != target.len() {
        return Err(FitError::Invalid(
            "there are no training rows (after dropping rows with a missing target)".into(),
        ));
    }
    if let Target::Classes { y, n_classes } = target {
        let mut seen = vec![false; *n_classes];
        for &c in y {
            seen[c] = true;
        }
        if seen.iter().filter(|s| **s).count() < 2 {
            return Err(FitError::Invalid(
                "the training rows hold only one class; a classifier needs at least two".into(),
            ));
        }
    }
    let estimator = match algorithm {
        Algorithm::DecisionTree => Estimator::Tree(tree::fit_tree(params, x, target, seed)?),
        Algorithm::RandomForest => {
            Estimator::Forest(tree::fit_forest(params, x, target, seed, progress)?)
        }
        Algorithm::GradientBoosting => {
            Estimator::Boosting(boost::fit(params, x, target, progress)?)
        }
        Algorithm::LogisticRegression => {
            Estimator::Linear(linear::fit_logistic(params, x, target, progress)?)
        }
        Algorithm::LinearRegression | Algorithm::Ridge => {
            Estimator::Linear(linear::fit_least_squares(algorithm, params, x, target)?)
        }
        Algorithm::LinearSvm => Estimator::Linear(match target {
            Target::Classes { .. } => linear::fit_svm(params, x, target, seed, progress)?,
            Target::Values(_) => linear::fit_svr(params, x, target, progress)?,
        }),
        Algorithm::GaussianNb => Estimator::GaussianNb(nb::fit(params, x, target)?),
        Algorithm::Knn => Estimator::Knn(knn::fit(params, x, target)?),
        Algorithm::Mlp => Estimator::Mlp(mlp::fit(params, x, target, seed, progress)?),
    };
    progress.set(1.0);
    Ok(estimator)
}

/// Softmax of one row in place, stable for large scores.
pub(crate) fn softmax(row: &mut [f64]) {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

pub(crate) fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

pub(crate) fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
    use rand::SeedableRng;
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

#[cfg(test)]
mod tests;
