//! Multi-layer perceptron trained with Adam on minibatches, as scikit-learn's `MLPClassifier` /
//! `MLPRegressor` (Glorot initialisation, L2 penalty, stop after `n_iter_no_change` epochs
//! without a `tol` improvement). Softmax output for classes; for values the target is
//! standardised during training and restored on output. Matrix products go through ndarray
//! (matrixmultiply's blocked kernels).

use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::{FitError, Matrix, Params, Prediction, Progress, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Relu,
    Tanh,
    Logistic,
}

impl Activation {
    fn apply(self, a: &mut Array2<f64>) {
        match self {
            Self::Relu => a.mapv_inplace(|v| v.max(0.0)),
            Self::Tanh => a.mapv_inplace(f64::tanh),
            Self::Logistic => a.mapv_inplace(crate::sigmoid),
        }
    }

    /// Multiplies `delta` by the derivative, given the activated values `a`.
    fn backward(self, delta: &mut Array2<f64>, a: &Array2<f64>) {
        match self {
            Self::Relu => delta.zip_mut_with(a, |d, v| {
                if *v <= 0.0 {
                    *d = 0.0;
                }
            }),
            Self::Tanh => delta.zip_mut_with(a, |d, v| *d *= 1.0 - v * v),
            Self::Logistic => delta.zip_mut_with(a, |d, v| *d *= v * (1.0 - v)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    /// `[inputs, outputs]`.
    pub weights: Matrix,
    pub bias: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mlp {
    pub activation: Activation,
    pub layers: Vec<Layer>,
    pub classes: Option<usize>,
    /// Regression output scale: `value = output · y_std + y_mean`.
    pub y_mean: f64,
    pub y_std: f64,
}

fn view(m: &Matrix) -> ArrayView2<'_, f64> {
    ArrayView2::from_shape((m.rows, m.cols), &m.data).expect("matrix shape matches its data")
}

struct Net {
    weights: Vec<Array2<f64>>,
    biases: Vec<Array1<f64>>,
}

impl Net {
    /// Activations of every layer; the last is the output before softmax.
    fn forward(&self, x: ArrayView2<f64>, activation: Activation) -> Vec<Array2<f64>> {
        let mut outs: Vec<Array2<f64>> = Vec::with_capacity(self.weights.len());
        for (l, (w, b)) in self.weights.iter().zip(&self.biases).enumerate() {
            let mut a = match outs.last() {
                Some(prev) => prev.dot(w),
                None => x.dot(w),
            };
            a += b;
            if l + 1 < self.weights.len() {
                activation.apply(&mut a);
            }
            outs.push(a);
        }
        outs
    }
}

fn softmax_rows(a: &mut Array2<f64>) {
    for mut row in a.rows_mut() {
        crate::softmax(
            row.as_slice_mut()
                .expect("rows of a standard-layout array are contiguous"),
        );
    }
}

pub fn fit(
    params: &Params,
    x: &Matrix,
    target: &Target,
    seed: u64,
    progress: &Progress,
) -> Result<Mlp, FitError> {
    let activation = match params.text("activation", "relu") {
        "tanh" => Activation::Tanh,
        "logistic" => Activation::Logistic,
        _ => Activation::Relu,
    };
    let hidden = params.ints("hidden_layer_sizes");
    let alpha = params.float("alpha", 1e-4);
    let lr = params.float("learning_rate_init", 1e-3);
    let epochs = params.usize("max_iter", 200);
    let batch = params.usize("batch_size", 200).clamp(1, x.rows);
    let tol = params.float("tol", 1e-4);
    let patience = params.usize("n_iter_no_change", 10);
    let n = x.rows;
    let (classes, outputs, y_mean, y_std, targets) = match target {
        Target::Classes { y, n_classes } => {
            let mut t = Array2::zeros((n, *n_classes));
            y.iter().enumerate().for_each(|(i, c)| t[[i, *c]] = 1.0);
            (Some(*n_classes), *n_classes, 0.0, 1.0, t)
        }
        Target::Values(v) => {
            let mean = v.iter().sum::<f64>() / n as f64;
            let std = (v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
            let std = if std > 0.0 { std } else { 1.0 };
            let t = Array2::from_shape_fn((n, 1), |(i, _)| (v[i] - mean) / std);
            (None, 1, mean, std, t)
        }
    };
    let mut sizes = vec![x.cols];
    sizes.extend(hidden.iter().copied());
    sizes.push(outputs);
    let mut rng = crate::rng(seed);
    let factor: f64 = if activation == Activation::Logistic {
        2.0
    } else {
        6.0
    };
    let mut net = Net {
        weights: Vec::new(),
        biases: Vec::new(),
    };
    for pair in sizes.windows(2) {
        let bound = (factor / (pair[0] + pair[1]) as f64).sqrt();
        net.weights
            .push(Array2::from_shape_fn((pair[0], pair[1]), |_| {
                rng.random_range(-bound..bound)
            }));
        net.biases.push(Array1::from_shape_fn(pair[1], |_| {
            rng.random_range(-bound..bound)
        }));
    }
    let mut m_w: Vec<Array2<f64>> = net
        .weights
        .iter()
        .map(|w| Array2::zeros(w.raw_dim()))
        .collect();
    let mut v_w = m_w.clone();
    let mut m_b: Vec<Array1<f64>> = net
        .biases
        .iter()
        .map(|b| Array1::zeros(b.raw_dim()))
        .collect();
    let mut v_b = m_b.clone();
    let (beta1, beta2, eps) = (0.9, 0.999, 1e-8);
    let mut step = 0i32;
    let all = view(x);
    let mut order: Vec<usize> = (0..n).collect();
    let mut best = f64::INFINITY;
    let mut stale = 0;
    for epoch in 0..epochs {
        progress.check()?;
        order.shuffle(&mut rng);
        let mut epoch_loss = 0.0;
        for chunk in order.chunks(batch) {
            let xb = all.select(Axis(0), chunk);
            let tb = targets.select(Axis(0), chunk);
            let size = chunk.len() as f64;
            let mut acts = net.forward(xb.view(), activation);
            let last = acts.len() - 1;
            let mut delta = if classes.is_some() {
                softmax_rows(&mut acts[last]);
                epoch_loss -= acts[last]
                    .iter()
                    .zip(tb.iter())
                    .map(|(p, t)| if *t > 0.0 { p.max(1e-15).ln() } else { 0.0 })
                    .sum::<f64>();
                &acts[last] - &tb
            } else {
                let d = &acts[last] - &tb;
                epoch_loss += 0.5 * d.iter().map(|v| v * v).sum::<f64>();
                d
            };
            epoch_loss += 0.5
                * alpha
                * net
                    .weights
                    .iter()
                    .map(|w| w.iter().map(|v| v * v).sum::<f64>())
                    .sum::<f64>()
                * size
                / n as f64;
            step += 1;
            let correction1 = 1.0 - f64::powi(beta1, step);
            let correction2 = 1.0 - f64::powi(beta2, step);
            let rate = lr * correction2.sqrt() / correction1;
            for l in (0..net.weights.len()).rev() {
                let input = if l == 0 {
                    xb.view()
                } else {
                    acts[l - 1].view()
                };
                let mut grad_w = input.t().dot(&delta);
                grad_w.scaled_add(alpha, &net.weights[l]);
                grad_w /= size;
                let grad_b = delta.sum_axis(Axis(0)) / size;
                if l > 0 {
                    let mut next = delta.dot(&net.weights[l].t());
                    activation.backward(&mut next, &acts[l - 1]);
                    delta = next;
                }
                adam(
                    &mut net.weights[l],
                    &grad_w,
                    &mut m_w[l],
                    &mut v_w[l],
                    rate,
                    beta1,
                    beta2,
                    eps,
                );
                adam(
                    &mut net.biases[l],
                    &grad_b,
                    &mut m_b[l],
                    &mut v_b[l],
                    rate,
                    beta1,
                    beta2,
                    eps,
                );
            }
        }
        let loss = epoch_loss / n as f64;
        if !loss.is_finite() {
            return Err(FitError::Invalid(
                "training diverged (the loss is not finite); lower learning_rate_init".into(),
            ));
        }
        if loss > best - tol {
            stale += 1;
        } else {
            stale = 0;
        }
        best = best.min(loss);
        progress.set((epoch + 1) as f64 / epochs as f64 * 0.99);
        if stale >= patience {
            break;
        }
    }
    let layers = net
        .weights
        .into_iter()
        .zip(net.biases)
        .map(|(w, b)| {
            let (rows, cols) = w.dim();
            Layer {
                weights: Matrix::new(rows, cols, w.into_iter().collect()),
                bias: b.to_vec(),
            }
        })
        .collect();
    Ok(Mlp {
        activation,
        layers,
        classes,
        y_mean,
        y_std,
    })
}

#[allow(clippy::too_many_arguments)]
fn adam<D: ndarray::Dimension>(
    param: &mut ndarray::Array<f64, D>,
    grad: &ndarray::Array<f64, D>,
    m: &mut ndarray::Array<f64, D>,
    v: &mut ndarray::Array<f64, D>,
    rate: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
) {
    ndarray::Zip::from(param)
        .and(grad)
        .and(m)
        .and(v)
        .for_each(|p, g, m, v| {
            *m = beta1 * *m + (1.0 - beta1) * g;
            *v = beta2 * *v + (1.0 - beta2) * g * g;
            *p -= rate * *m / (v.sqrt() + eps);
        });
}

impl Mlp {
    pub fn predict(&self, x: &Matrix) -> Prediction {
        let mut current = view(x).to_owned();
        for (l, layer) in self.layers.iter().enumerate() {
            let mut next = current.dot(&view(&layer.weights));
            next += &ndarray::ArrayView1::from(&layer.bias);
            if l + 1 < self.layers.len() {
                self.activation.apply(&mut next);
            }
            current = next;
        }
        let mut out = current;
        match self.classes {
            Some(_) => {
                softmax_rows(&mut out);
                let (rows, cols) = out.dim();
                Prediction::Probabilities(Matrix::new(rows, cols, out.into_iter().collect()))
            }
            None => Prediction::Values(out.iter().map(|v| v * self.y_std + self.y_mean).collect()),
        }
    }
}
