//! k-nearest neighbours by exact brute-force search over the (standardised) training rows,
//! parallel over query rows. Probabilities are the neighbours' (optionally distance-weighted)
//! vote shares, as scikit-learn's.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{FitError, Matrix, Params, Prediction, Target};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Knn {
    pub k: usize,
    pub distance_weighted: bool,
    /// Classes, or `None` for regression.
    pub classes: Option<usize>,
    pub x: Matrix,
    pub y: Vec<f64>,
}

pub fn fit(params: &Params, x: &Matrix, target: &Target) -> Result<Knn, FitError> {
    let (classes, y) = match target {
        Target::Classes { y, n_classes } => {
            (Some(*n_classes), y.iter().map(|&c| c as f64).collect())
        }
        Target::Values(v) => (None, v.clone()),
    };
    Ok(Knn {
        k: params.usize("n_neighbors", 5).min(x.rows),
        distance_weighted: params.text("weights", "uniform") == "distance",
        classes,
        x: x.clone(),
        y,
    })
}

impl Knn {
    /// Votes (or the mean) of the `k` nearest of `distances` (squared, per training row).
    fn answer(&self, distances: &mut [(f64, u32)], out: &mut [f64]) {
        let k = self.k.clamp(1, distances.len());
        if k < distances.len() {
            distances.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        }
        let neighbours = &distances[..k];
        let exact = neighbours.iter().any(|(d, _)| *d <= 0.0);
        let weight = |d: f64| -> f64 {
            if !self.distance_weighted {
                1.0
            } else if exact {
                // A query equal to training rows takes their answer, as scikit-learn does.
                if d <= 0.0 { 1.0 } else { 0.0 }
            } else {
                1.0 / d.sqrt()
            }
        };
        out.iter_mut().for_each(|v| *v = 0.0);
        let mut total = 0.0;
        for &(d, i) in neighbours {
            let w = weight(d);
            total += w;
            match self.classes {
                Some(_) => out[self.y[i as usize] as usize] += w,
                None => out[0] += w * self.y[i as usize],
            }
        }
        out.iter_mut().for_each(|v| *v /= total);
    }

    /// Squared distances by ‖q‖² + ‖x‖² − 2·q·x, the cross term as one matrix product per
    /// block of queries (matrixmultiply's kernels, via ndarray), as scikit-learn does.
    pub fn predict(&self, x: &Matrix) -> Prediction {
        use ndarray::ArrayView2;
        let width = self.classes.unwrap_or(1);
        let train =
            ArrayView2::from_shape((self.x.rows, self.x.cols), &self.x.data).expect("shape");
        let train_norms: Vec<f64> = (0..self.x.rows)
            .map(|i| self.x.row(i).iter().map(|v| v * v).sum())
            .collect();
        let mut out = Matrix::zeros(x.rows, width);
        const BLOCK: usize = 64;
        out.data
            .par_chunks_mut(width * BLOCK)
            .enumerate()
            .for_each(|(b, slots)| {
                let first = b * BLOCK;
                let rows = slots.len() / width;
                let queries = ArrayView2::from_shape(
                    (rows, x.cols),
                    &x.data[first * x.cols..(first + rows) * x.cols],
                )
                .expect("shape");
                // One query is faster as plain dot products than as a matrix product.
                let cross = if rows < 4 {
                    ndarray::Array2::from_shape_fn((rows, self.x.rows), |(r, i)| {
                        crate::linear::dot(
                            queries.row(r).as_slice().unwrap_or_default(),
                            self.x.row(i),
                        )
                    })
                } else {
                    queries.dot(&train.t())
                };
                let mut distances = Vec::with_capacity(self.x.rows);
                for (r, slot) in slots.chunks_mut(width).enumerate() {
                    let q_norm: f64 = x.row(first + r).iter().map(|v| v * v).sum();
                    distances.clear();
                    distances.extend(
                        cross
                            .row(r)
                            .iter()
                            .zip(&train_norms)
                            .enumerate()
                            .map(|(i, (c, t))| ((q_norm + t - 2.0 * c).max(0.0), i as u32)),
                    );
                    self.answer(&mut distances, slot);
                }
            });
        crate::tree::finish(out)
    }
}
