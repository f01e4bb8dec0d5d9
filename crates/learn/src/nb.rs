//! Gaussian naive Bayes with scikit-learn's variance smoothing (a share of the largest feature
//! variance added to every variance), so constant-within-class features do not give NaN
//! likelihoods as smartcore's does; probabilities by log-sum-exp.

use serde::{Deserialize, Serialize};

use crate::{FitError, Matrix, Params, Prediction, Target, softmax};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GaussianNb {
    /// `[classes, features]` means and (smoothed) variances.
    pub mean: Matrix,
    pub var: Matrix,
    pub log_prior: Vec<f64>,
}

pub fn fit(params: &Params, x: &Matrix, target: &Target) -> Result<GaussianNb, FitError> {
    let Target::Classes { y, n_classes: k } = target else {
        return Err(FitError::Invalid(
            "gaussian_nb is a classifier; the target holds values".into(),
        ));
    };
    let (n, p) = (x.rows, x.cols);
    let mut count = vec![0.0f64; *k];
    let mut mean = Matrix::zeros(*k, p);
    for i in 0..n {
        count[y[i]] += 1.0;
        mean.row_mut(y[i])
            .iter_mut()
            .zip(x.row(i))
            .for_each(|(m, v)| *m += v);
    }
    for c in 0..*k {
        let nc = count[c].max(1.0);
        mean.row_mut(c).iter_mut().for_each(|m| *m /= nc);
    }
    let mut var = Matrix::zeros(*k, p);
    for i in 0..n {
        let m = mean.row(y[i]).to_vec();
        var.row_mut(y[i])
            .iter_mut()
            .zip(x.row(i))
            .zip(m)
            .for_each(|((s, v), mu)| *s += (v - mu) * (v - mu));
    }
    let overall: f64 = (0..p)
        .map(|j| {
            let mu = (0..n).map(|i| x.row(i)[j]).sum::<f64>() / n as f64;
            (0..n).map(|i| (x.row(i)[j] - mu).powi(2)).sum::<f64>() / n as f64
        })
        .fold(0.0, f64::max);
    // A floor keeps all-constant data (largest variance 0) finite as well.
    let epsilon = (params.float("var_smoothing", 1e-9) * overall).max(1e-12);
    for c in 0..*k {
        let nc = count[c].max(1.0);
        var.row_mut(c)
            .iter_mut()
            .for_each(|s| *s = *s / nc + epsilon);
    }
    let log_prior = count
        .iter()
        .map(|c| (c / n as f64).max(1e-300).ln())
        .collect();
    Ok(GaussianNb {
        mean,
        var,
        log_prior,
    })
}

impl GaussianNb {
    pub fn predict(&self, x: &Matrix) -> Prediction {
        let k = self.log_prior.len();
        let mut out = Matrix::zeros(x.rows, k);
        // log prior − ½·Σ ln(2π·var), per class: the part of the log-likelihood that no row changes.
        let constants: Vec<f64> = (0..k)
            .map(|c| {
                self.log_prior[c]
                    - 0.5
                        * self
                            .var
                            .row(c)
                            .iter()
                            .map(|v| (2.0 * std::f64::consts::PI * v).ln())
                            .sum::<f64>()
            })
            .collect();
        for r in 0..x.rows {
            let row = x.row(r);
            let scores = out.row_mut(r);
            for (c, score) in scores.iter_mut().enumerate() {
                let mut s = constants[c];
                for ((v, mu), var) in row.iter().zip(self.mean.row(c)).zip(self.var.row(c)) {
                    s -= 0.5 * (v - mu) * (v - mu) / var;
                }
                *score = s;
            }
            softmax(scores);
        }
        Prediction::Probabilities(out)
    }
}
