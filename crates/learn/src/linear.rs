//! Linear models: logistic regression (L-BFGS), least squares and ridge (normal equations with
//! a Cholesky solve), and linear SVM (dual coordinate descent, as liblinear). Features arrive
//! standardised ([`crate::prep`]), which keeps every solver well conditioned.
//!
//! SVM probabilities: an SVM gives distances, not probabilities. Each one-vs-rest decision
//! function gets a Platt sigmoid fitted on its training decision values (Lin, Lin & Weng's
//! Newton method), and the per-class sigmoids are normalised to sum to one.

use serde::{Deserialize, Serialize};

use rand::seq::SliceRandom;

use crate::params::Algorithm;
use crate::{FitError, Matrix, Params, Prediction, Progress, Target, sigmoid, softmax};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// `value = w·x + b`.
    Identity,
    /// One score: `P(class 1) = sigmoid(z)`; several: softmax over the scores.
    Logistic,
    /// One-vs-rest margins turned into probabilities by `platt`.
    Svm,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearModel {
    pub link: Link,
    /// `[outputs, features]` weights.
    pub coef: Matrix,
    pub intercept: Vec<f64>,
    /// Platt's (A, B) per output: `P = 1 / (1 + exp(A·margin + B))`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platt: Option<Vec<(f64, f64)>>,
}

impl LinearModel {
    fn scores(&self, row: &[f64], out: &mut [f64]) {
        for (o, slot) in out.iter_mut().enumerate() {
            *slot = self.intercept[o] + dot(self.coef.row(o), row);
        }
    }

    pub fn predict(&self, x: &Matrix) -> Prediction {
        let outputs = self.coef.rows;
        let mut z = vec![0.0; outputs];
        match self.link {
            Link::Identity => Prediction::Values(
                (0..x.rows)
                    .map(|r| {
                        self.scores(x.row(r), &mut z);
                        z[0]
                    })
                    .collect(),
            ),
            Link::Logistic | Link::Svm => {
                let classes = if outputs == 1 { 2 } else { outputs };
                let mut p = Matrix::zeros(x.rows, classes);
                for r in 0..x.rows {
                    self.scores(x.row(r), &mut z);
                    let row = p.row_mut(r);
                    match (&self.platt, outputs) {
                        (None, 1) => {
                            let p1 = sigmoid(z[0]);
                            row.copy_from_slice(&[1.0 - p1, p1]);
                        }
                        (None, _) => {
                            row.copy_from_slice(&z);
                            softmax(row);
                        }
                        (Some(platt), 1) => {
                            let p1 = sigmoid(-(platt[0].0 * z[0] + platt[0].1));
                            row.copy_from_slice(&[1.0 - p1, p1]);
                        }
                        (Some(platt), _) => {
                            for (o, slot) in row.iter_mut().enumerate() {
                                *slot = sigmoid(-(platt[o].0 * z[o] + platt[o].1)).max(1e-15);
                            }
                            let sum: f64 = row.iter().sum();
                            row.iter_mut().for_each(|v| *v /= sum);
                        }
                    }
                }
                Prediction::Probabilities(p)
            }
        }
    }
}

pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn classes(target: &Target) -> Result<(&[usize], usize), FitError> {
    match target {
        Target::Classes { y, n_classes } => Ok((y, *n_classes)),
        Target::Values(_) => Err(FitError::Invalid(
            "this algorithm is a classifier; the target holds values".into(),
        )),
    }
}

pub fn fit_logistic(
    params: &Params,
    x: &Matrix,
    target: &Target,
    progress: &Progress,
) -> Result<LinearModel, FitError> {
    let (y, k) = classes(target)?;
    let outputs = if k == 2 { 1 } else { k };
    let p = x.cols;
    let n = x.rows;
    let inverse_c = 1.0 / params.float("C", 1.0);
    let width = p + 1;
    let objective = |w: &[f64], grad: &mut [f64]| -> f64 {
        grad.iter_mut().for_each(|g| *g = 0.0);
        let mut loss = 0.0;
        let mut z = vec![0.0; outputs];
        for i in 0..n {
            let row = x.row(i);
            for (o, zo) in z.iter_mut().enumerate() {
                let wo = &w[o * width..(o + 1) * width];
                *zo = wo[p] + dot(&wo[..p], row);
            }
            if outputs == 1 {
                let yi = if y[i] == 1 { 1.0 } else { 0.0 };
                // log(1 + e^z) - y·z, computed without overflow.
                loss += z[0].max(0.0) + (-z[0].abs()).exp().ln_1p() - yi * z[0];
                z[0] = sigmoid(z[0]) - yi;
            } else {
                let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                loss += lse - z[y[i]];
                z.iter_mut().for_each(|v| *v = (*v - lse).exp());
                z[y[i]] -= 1.0;
            }
            for (o, r) in z.iter().enumerate() {
                let go = &mut grad[o * width..(o + 1) * width];
                for (g, xv) in go[..p].iter_mut().zip(row) {
                    *g += r * xv;
                }
                go[p] += r;
            }
        }
        for o in 0..outputs {
            for j in 0..p {
                let wj = w[o * width + j];
                loss += 0.5 * inverse_c * wj * wj;
                grad[o * width + j] += inverse_c * wj;
            }
        }
        loss
    };
    let w = lbfgs(
        vec![0.0; outputs * width],
        objective,
        params.usize("max_iter", 200),
        params.float("tol", 1e-4) * n as f64,
        progress,
    )?;
    let mut coef = Matrix::zeros(outputs, p);
    let mut intercept = vec![0.0; outputs];
    for o in 0..outputs {
        coef.row_mut(o)
            .copy_from_slice(&w[o * width..o * width + p]);
        intercept[o] = w[o * width + p];
    }
    Ok(LinearModel {
        link: Link::Logistic,
        coef,
        intercept,
        platt: None,
    })
}

/// Limited-memory BFGS with a backtracking (Armijo) line search; stops when the gradient's
/// largest entry is below `tol`, after `max_iter` iterations, or when the loss stops moving.
fn lbfgs(
    mut w: Vec<f64>,
    mut f: impl FnMut(&[f64], &mut [f64]) -> f64,
    max_iter: usize,
    tol: f64,
    progress: &Progress,
) -> Result<Vec<f64>, FitError> {
    const MEMORY: usize = 10;
    let d = w.len();
    let mut g = vec![0.0; d];
    let mut loss = f(&w, &mut g);
    let mut history: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = Default::default();
    let mut trial = vec![0.0; d];
    let mut trial_g = vec![0.0; d];
    for iteration in 0..max_iter {
        progress.check()?;
        progress.set(iteration as f64 / max_iter as f64 * 0.99);
        if g.iter().fold(0.0f64, |m, v| m.max(v.abs())) <= tol {
            break;
        }
        // Two-loop recursion: direction = -H·g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, y, rho) in history.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(y).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push(a);
        }
        let gamma = history
            .back()
            .map_or(1.0 / dot(&g, &g).sqrt().max(1e-12), |(s, y, _)| {
                dot(s, y) / dot(y, y)
            });
        q.iter_mut().for_each(|v| *v *= gamma);
        for ((s, y, rho), a) in history.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(y, &q);
            q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - b) * si);
        }
        let mut direction: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &direction);
        if slope >= 0.0 {
            // Not a descent direction (numerical trouble): restart from steepest descent.
            history.clear();
            direction = g.iter().map(|v| -v).collect();
            slope = dot(&g, &direction);
        }
        let mut step = 1.0;
        let mut accepted = false;
        for _ in 0..40 {
            trial
                .iter_mut()
                .zip(&w)
                .zip(&direction)
                .for_each(|((t, wi), di)| *t = wi + step * di);
            let trial_loss = f(&trial, &mut trial_g);
            if trial_loss.is_finite() && trial_loss <= loss + 1e-4 * step * slope {
                let s: Vec<f64> = trial.iter().zip(&w).map(|(a, b)| a - b).collect();
                let y: Vec<f64> = trial_g.iter().zip(&g).map(|(a, b)| a - b).collect();
                let sy = dot(&s, &y);
                if sy > 1e-12 {
                    if history.len() == MEMORY {
                        history.pop_front();
                    }
                    history.push_back((s, y, 1.0 / sy));
                }
                let improvement = loss - trial_loss;
                std::mem::swap(&mut w, &mut trial);
                std::mem::swap(&mut g, &mut trial_g);
                loss = trial_loss;
                accepted = improvement > 1e-12 * loss.abs().max(1.0);
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            break;
        }
    }
    Ok(w)
}

/// Least squares (`alpha` = 0) or ridge, on centred data so the intercept is not penalised.
pub fn fit_least_squares(
    algorithm: Algorithm,
    params: &Params,
    x: &Matrix,
    target: &Target,
) -> Result<LinearModel, FitError> {
    let Target::Values(y) = target else {
        return Err(FitError::Invalid(format!(
            "{} is a regressor; the target holds classes",
            algorithm.name()
        )));
    };
    let (n, p) = (x.rows, x.cols);
    let alpha = if algorithm == Algorithm::Ridge {
        params.float("alpha", 1.0)
    } else {
        0.0
    };
    let mean_x: Vec<f64> = (0..p)
        .map(|j| (0..n).map(|i| x.row(i)[j]).sum::<f64>() / n as f64)
        .collect();
    let mean_y = y.iter().sum::<f64>() / n as f64;
    let mut gram = vec![0.0; p * p];
    let mut xty = vec![0.0; p];
    let mut centred = vec![0.0; p];
    for i in 0..n {
        for (j, c) in centred.iter_mut().enumerate() {
            *c = x.row(i)[j] - mean_x[j];
        }
        let yi = y[i] - mean_y;
        for a in 0..p {
            xty[a] += centred[a] * yi;
            let ca = centred[a];
            for b in a..p {
                gram[a * p + b] += ca * centred[b];
            }
        }
    }
    for a in 0..p {
        for b in 0..a {
            gram[a * p + b] = gram[b * p + a];
        }
    }
    // Plain least squares on collinear features (one-hot groups, constant columns) has no
    // unique solution; a vanishing ridge picks the smallest-norm one instead of failing.
    let trace: f64 = (0..p).map(|j| gram[j * p + j]).sum::<f64>().max(1e-300);
    let mut jitter = if alpha > 0.0 {
        alpha
    } else {
        1e-10 * trace / p.max(1) as f64
    };
    let w = loop {
        let mut m = gram.clone();
        (0..p).for_each(|j| m[j * p + j] += jitter);
        if let Some(w) = cholesky_solve(&mut m, &xty, p) {
            break w;
        }
        if jitter > trace {
            return Err(FitError::Invalid(
                "the features are degenerate; least squares has no solution".into(),
            ));
        }
        jitter *= 100.0;
    };
    let intercept = mean_y - dot(&w, &mean_x);
    Ok(LinearModel {
        link: Link::Identity,
        coef: Matrix::new(1, p, w),
        intercept: vec![intercept],
        platt: None,
    })
}

/// Solves `m·w = b` for symmetric positive definite `m` (p×p, overwritten by its factor).
/// A small dense Cholesky: the systems here are features×features, and no pure-Rust linear
/// algebra crate is in the dependency set for so little.
fn cholesky_solve(m: &mut [f64], b: &[f64], p: usize) -> Option<Vec<f64>> {
    for j in 0..p {
        let mut d = m[j * p + j];
        for k in 0..j {
            d -= m[j * p + k] * m[j * p + k];
        }
        if d <= 0.0 || !d.is_finite() {
            return None;
        }
        let d = d.sqrt();
        m[j * p + j] = d;
        for i in j + 1..p {
            let mut s = m[i * p + j];
            for k in 0..j {
                s -= m[i * p + k] * m[j * p + k];
            }
            m[i * p + j] = s / d;
        }
    }
    let mut z = b.to_vec();
    for i in 0..p {
        for k in 0..i {
            z[i] -= m[i * p + k] * z[k];
        }
        z[i] /= m[i * p + i];
    }
    for i in (0..p).rev() {
        for k in i + 1..p {
            z[i] -= m[k * p + i] * z[k];
        }
        z[i] /= m[i * p + i];
    }
    Some(z)
}

/// Linear SVM, squared hinge loss and L2 penalty (scikit-learn's `LinearSVC` defaults), by
/// dual coordinate descent (Hsieh et al. 2008); the bias is a constant feature, as in liblinear.
pub fn fit_svm(
    params: &Params,
    x: &Matrix,
    target: &Target,
    seed: u64,
    progress: &Progress,
) -> Result<LinearModel, FitError> {
    let (y, k) = classes(target)?;
    let outputs = if k == 2 { 1 } else { k };
    let c = params.float("C", 1.0);
    let max_iter = params.usize("max_iter", 1000);
    let tol = params.float("tol", 1e-4);
    let (n, p) = (x.rows, x.cols);
    let diag = 1.0 / (2.0 * c);
    let norms: Vec<f64> = (0..n)
        .map(|i| dot(x.row(i), x.row(i)) + 1.0 + diag)
        .collect();
    let mut coef = Matrix::zeros(outputs, p);
    let mut intercept = vec![0.0; outputs];
    let mut platt = Vec::with_capacity(outputs);
    let mut rng = crate::rng(seed);
    for o in 0..outputs {
        progress.check()?;
        let positive = if outputs == 1 { 1 } else { o };
        let sign: Vec<f64> = y
            .iter()
            .map(|&c| if c == positive { 1.0 } else { -1.0 })
            .collect();
        // Like scikit-learn's `dual="auto"`: the primal (smooth, so L-BFGS) when rows outnumber
        // features, the dual coordinate descent otherwise.
        let w = if n > p {
            svm_primal(x, &sign, c, max_iter, tol, progress)?
        } else {
            svm_dual(x, &sign, diag, &norms, max_iter, tol, &mut rng)
        };
        coef.row_mut(o).copy_from_slice(&w[..p]);
        intercept[o] = w[p];
        let margins: Vec<f64> = (0..n).map(|i| dot(&w[..p], x.row(i)) + w[p]).collect();
        let labels: Vec<bool> = sign.iter().map(|s| *s > 0.0).collect();
        platt.push(fit_platt(&margins, &labels));
        progress.set((o + 1) as f64 / outputs as f64 * 0.99);
    }
    Ok(LinearModel {
        link: Link::Svm,
        coef,
        intercept,
        platt: Some(platt),
    })
}

/// Dual coordinate descent for the squared hinge loss (Hsieh et al. 2008); returns `[w, b]`.
fn svm_dual(
    x: &Matrix,
    sign: &[f64],
    diag: f64,
    norms: &[f64],
    max_iter: usize,
    tol: f64,
    rng: &mut impl rand::Rng,
) -> Vec<f64> {
    let (n, p) = (x.rows, x.cols);
    let mut alpha = vec![0.0; n];
    let mut w = vec![0.0; p + 1];
    let mut order: Vec<usize> = (0..n).collect();
    // liblinear's shrinking: rows whose alpha sits at 0 with a gradient beyond last pass's
    // largest projected gradient leave the active set until the final check.
    let mut active = n;
    let mut pg_max_old = f64::INFINITY;
    for _ in 0..max_iter {
        order[..active].shuffle(rng);
        let (mut pg_max, mut pg_min) = (f64::NEG_INFINITY, f64::INFINITY);
        let mut s = 0;
        while s < active {
            let i = order[s];
            let row = x.row(i);
            let margin = dot(&w[..p], row) + w[p];
            let grad = sign[i] * margin - 1.0 + diag * alpha[i];
            let mut projected = grad;
            if alpha[i] == 0.0 {
                if grad > pg_max_old {
                    active -= 1;
                    order.swap(s, active);
                    continue;
                }
                projected = grad.min(0.0);
            }
            pg_max = pg_max.max(projected);
            pg_min = pg_min.min(projected);
            if projected.abs() > 1e-12 {
                let old = alpha[i];
                alpha[i] = (alpha[i] - grad / norms[i]).max(0.0);
                let delta = (alpha[i] - old) * sign[i];
                w[..p]
                    .iter_mut()
                    .zip(row)
                    .for_each(|(wj, xj)| *wj += delta * xj);
                w[p] += delta;
            }
            s += 1;
        }
        if pg_max - pg_min <= tol {
            if active == n {
                break;
            }
            // Converged on the active rows: check every row once more before stopping.
            active = n;
            pg_max_old = f64::INFINITY;
            continue;
        }
        pg_max_old = if pg_max <= 0.0 { f64::INFINITY } else { pg_max };
    }
    w
}

/// Linear support vector regression, squared ε-insensitive loss (scikit-learn's `LinearSVR`
/// with `loss="squared_epsilon_insensitive"`), by L-BFGS on the primal. The target is
/// standardised while fitting (ε is in those units) and the weights scaled back.
pub fn fit_svr(
    params: &Params,
    x: &Matrix,
    target: &Target,
    progress: &Progress,
) -> Result<LinearModel, FitError> {
    let Target::Values(y) = target else {
        return Err(FitError::Invalid("expected a numeric target".into()));
    };
    let (n, p) = (x.rows, x.cols);
    let c = params.float("C", 1.0);
    let epsilon = params.float("epsilon", 0.0);
    let mean = y.iter().sum::<f64>() / n as f64;
    let std = (y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
    let std = if std > 0.0 { std } else { 1.0 };
    let scaled: Vec<f64> = y.iter().map(|v| (v - mean) / std).collect();
    let objective = |w: &[f64], grad: &mut [f64]| -> f64 {
        grad.copy_from_slice(w);
        let mut loss = 0.5 * dot(w, w);
        for i in 0..n {
            let row = x.row(i);
            let residual = scaled[i] - (dot(&w[..p], row) + w[p]);
            let excess = residual.abs() - epsilon;
            if excess > 0.0 {
                loss += c * excess * excess;
                let factor = -2.0 * c * excess * residual.signum();
                grad[..p]
                    .iter_mut()
                    .zip(row)
                    .for_each(|(g, xv)| *g += factor * xv);
                grad[p] += factor;
            }
        }
        loss
    };
    let w = lbfgs(
        vec![0.0; p + 1],
        objective,
        params.usize("max_iter", 1000),
        params.float("tol", 1e-4) * n as f64,
        progress,
    )?;
    Ok(LinearModel {
        link: Link::Identity,
        coef: Matrix::new(1, p, w[..p].iter().map(|v| v * std).collect()),
        intercept: vec![w[p] * std + mean],
        platt: None,
    })
}

/// The primal: ½‖[w, b]‖² + C·Σ max(0, 1 − y·(w·x + b))², by L-BFGS.
fn svm_primal(
    x: &Matrix,
    sign: &[f64],
    c: f64,
    max_iter: usize,
    tol: f64,
    progress: &Progress,
) -> Result<Vec<f64>, FitError> {
    let (n, p) = (x.rows, x.cols);
    let objective = |w: &[f64], grad: &mut [f64]| -> f64 {
        grad.copy_from_slice(w);
        let mut loss = 0.5 * dot(w, w);
        for i in 0..n {
            let row = x.row(i);
            let margin = sign[i] * (dot(&w[..p], row) + w[p]);
            if margin < 1.0 {
                let d = 1.0 - margin;
                loss += c * d * d;
                let factor = -2.0 * c * d * sign[i];
                grad[..p]
                    .iter_mut()
                    .zip(row)
                    .for_each(|(g, xv)| *g += factor * xv);
                grad[p] += factor;
            }
        }
        loss
    };
    lbfgs(
        vec![0.0; p + 1],
        objective,
        max_iter,
        tol * n as f64,
        progress,
    )
}

/// Platt scaling by Newton's method with backtracking (Lin, Lin & Weng, 2007), with the
/// smoothed targets that keep it from overfitting separable data.
fn fit_platt(margins: &[f64], labels: &[bool]) -> (f64, f64) {
    let positives = labels.iter().filter(|l| **l).count() as f64;
    let negatives = labels.len() as f64 - positives;
    let hi = (positives + 1.0) / (positives + 2.0);
    let lo = 1.0 / (negatives + 2.0);
    let t: Vec<f64> = labels.iter().map(|l| if *l { hi } else { lo }).collect();
    let value = |a: f64, b: f64| -> f64 {
        margins
            .iter()
            .zip(&t)
            .map(|(m, ti)| {
                let z = m * a + b;
                if z >= 0.0 {
                    ti * z + (-z).exp().ln_1p()
                } else {
                    (ti - 1.0) * z + z.exp().ln_1p()
                }
            })
            .sum()
    };
    let (mut a, mut b) = (0.0, ((negatives + 1.0) / (positives + 1.0)).ln());
    let mut f = value(a, b);
    for _ in 0..100 {
        let (mut h11, mut h22, mut h21, mut g1, mut g2) = (1e-12, 1e-12, 0.0, 0.0, 0.0);
        for (m, ti) in margins.iter().zip(&t) {
            let z = m * a + b;
            let (p, q) = if z >= 0.0 {
                let e = (-z).exp();
                (e / (1.0 + e), 1.0 / (1.0 + e))
            } else {
                let e = z.exp();
                (1.0 / (1.0 + e), e / (1.0 + e))
            };
            let d2 = p * q;
            h11 += m * m * d2;
            h22 += d2;
            h21 += m * d2;
            let d1 = ti - p;
            g1 += m * d1;
            g2 += d1;
        }
        if g1.abs() < 1e-5 && g2.abs() < 1e-5 {
            break;
        }
        let det = h11 * h22 - h21 * h21;
        let da = -(h22 * g1 - h21 * g2) / det;
        let db = -(-h21 * g1 + h11 * g2) / det;
        let gd = g1 * da + g2 * db;
        let mut step = 1.0;
        while step >= 1e-10 {
            let (na, nb) = (a + step * da, b + step * db);
            let nf = value(na, nb);
            if nf < f + 1e-4 * step * gd {
                (a, b, f) = (na, nb, nf);
                break;
            }
            step /= 2.0;
        }
        if step < 1e-10 {
            break;
        }
    }
    (a, b)
}
