//! CART decision trees (Gini/entropy for classes, squared error for values) and random forests
//! of them. Leaves keep the class frequencies of their training rows, so a tree's
//! probabilities are real frequencies (smartcore's are one-hot) and a forest's are the mean of
//! its trees' (as scikit-learn's `predict_proba`).

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{FitError, Matrix, Params, Prediction, Progress, Target};

/// One node; a leaf has `feature == LEAF` and `left` indexes its value row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub feature: u32,
    pub threshold: f64,
    pub left: u32,
    pub right: u32,
}

pub const LEAF: u32 = u32::MAX;

/// A fitted tree: rows go left when `x[feature] <= threshold`. `values` holds `outputs`
/// numbers per leaf: class probabilities, or the predicted value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub outputs: usize,
    pub nodes: Vec<Node>,
    pub values: Vec<f64>,
}

impl Tree {
    pub fn leaf_values(&self, row: &[f64]) -> &[f64] {
        let mut node = &self.nodes[0];
        while node.feature != LEAF {
            node = if row[node.feature as usize] <= node.threshold {
                &self.nodes[node.left as usize]
            } else {
                &self.nodes[node.right as usize]
            };
        }
        let at = node.left as usize * self.outputs;
        &self.values[at..at + self.outputs]
    }

    pub fn predict(&self, x: &Matrix) -> Prediction {
        let mut out = Matrix::zeros(x.rows, self.outputs);
        for r in 0..x.rows {
            out.row_mut(r).copy_from_slice(self.leaf_values(x.row(r)));
        }
        finish(out)
    }

    pub fn depth(&self) -> usize {
        fn walk(nodes: &[Node], at: usize) -> usize {
            let node = nodes[at];
            if node.feature == LEAF {
                0
            } else {
                1 + walk(nodes, node.left as usize).max(walk(nodes, node.right as usize))
            }
        }
        walk(&self.nodes, 0)
    }
}

pub(crate) fn finish(out: Matrix) -> Prediction {
    // One output column is a regression value (classifiers always have ≥ 2 classes).
    if out.cols == 1 {
        Prediction::Values(out.data)
    } else {
        Prediction::Probabilities(out)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forest {
    pub outputs: usize,
    pub trees: Vec<Tree>,
}

impl Forest {
    pub fn predict(&self, x: &Matrix) -> Prediction {
        let k = self.outputs;
        let scale = 1.0 / self.trees.len() as f64;
        let mut out = Matrix::zeros(x.rows, k);
        let rows_per_chunk = 256;
        out.data
            .par_chunks_mut(k * rows_per_chunk)
            .enumerate()
            .with_min_len(if x.rows > 2048 { 1 } else { usize::MAX })
            .for_each(|(chunk, acc)| {
                for (i, slot) in acc.chunks_mut(k).enumerate() {
                    let row = x.row(chunk * rows_per_chunk + i);
                    for tree in &self.trees {
                        for (a, v) in slot.iter_mut().zip(tree.leaf_values(row)) {
                            *a += v;
                        }
                    }
                    slot.iter_mut().for_each(|a| *a *= scale);
                }
            });
        finish(out)
    }
}

/// Settings shared by trees and forests.
#[derive(Debug, Clone, Copy)]
struct Settings {
    max_depth: usize,
    min_split: usize,
    min_leaf: usize,
    max_features: usize,
    entropy: bool,
}

fn settings(params: &Params, features: usize, forest: bool) -> Settings {
    let max_features = match params.text("max_features", if forest { "sqrt" } else { "all" }) {
        "sqrt" => (features as f64).sqrt() as usize,
        "log2" => (features as f64).log2() as usize,
        _ => features,
    }
    .clamp(1, features.max(1));
    Settings {
        max_depth: params.int("max_depth").unwrap_or(usize::MAX),
        min_split: params.usize("min_samples_split", 2),
        min_leaf: params.usize("min_samples_leaf", 1),
        max_features,
        entropy: params.text("criterion", "gini") == "entropy",
    }
}

pub fn fit_tree(params: &Params, x: &Matrix, target: &Target, seed: u64) -> Result<Tree, FitError> {
    let columns = x.columns();
    let rows: Vec<usize> = (0..x.rows).collect();
    let mut rng = crate::rng(seed);
    Ok(grow(
        &columns,
        target,
        rows,
        settings(params, x.cols, false),
        &mut rng,
    ))
}

pub fn fit_forest(
    params: &Params,
    x: &Matrix,
    target: &Target,
    seed: u64,
    progress: &Progress,
) -> Result<Forest, FitError> {
    let n_trees = params.usize("n_estimators", 100);
    let bootstrap = params.bool("bootstrap", true);
    let settings = settings(params, x.cols, true);
    let columns = x.columns();
    let done = AtomicUsize::new(0);
    let trees = (0..n_trees)
        .into_par_iter()
        .map(|t| {
            progress.check()?;
            // Each tree has its own stream, so the forest is the same whatever the thread count.
            let mut rng = crate::rng(
                seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(t as u64),
            );
            let rows: Vec<usize> = if bootstrap {
                (0..x.rows).map(|_| rng.random_range(0..x.rows)).collect()
            } else {
                (0..x.rows).collect()
            };
            let tree = grow(&columns, target, rows, settings, &mut rng);
            let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
            progress.set(finished as f64 / n_trees as f64 * 0.99);
            Ok(tree)
        })
        .collect::<Result<Vec<_>, FitError>>()?;
    Ok(Forest {
        outputs: outputs(target),
        trees,
    })
}

fn outputs(target: &Target) -> usize {
    match target {
        Target::Classes { n_classes, .. } => *n_classes,
        Target::Values(_) => 1,
    }
}

/// Node statistics: class counts, or (count, sum, sum of squares) for values.
struct Stats {
    counts: Vec<f64>,
    n: f64,
    sum: f64,
}

fn stats(target: &Target, rows: &[usize], k: usize) -> Stats {
    let mut s = Stats {
        counts: vec![0.0; k],
        n: rows.len() as f64,
        sum: 0.0,
    };
    match target {
        Target::Classes { y, .. } => rows.iter().for_each(|&r| s.counts[y[r]] += 1.0),
        Target::Values(v) => s.sum = rows.iter().map(|&r| v[r]).sum(),
    }
    s
}

fn grow(
    columns: &[Vec<f64>],
    target: &Target,
    mut rows: Vec<usize>,
    settings: Settings,
    rng: &mut impl Rng,
) -> Tree {
    let k = outputs(target);
    let mut tree = Tree {
        outputs: k,
        nodes: vec![],
        values: vec![],
    };
    let mut features: Vec<usize> = (0..columns.len()).collect();
    let mut buffer: Vec<(f64, usize)> = Vec::with_capacity(rows.len());
    // (node index, start, end, depth): an explicit stack, as degenerate data can grow deep trees.
    tree.nodes.push(leaf_placeholder());
    let mut stack = vec![(0usize, 0usize, rows.len(), 0usize)];
    while let Some((node, start, end, depth)) = stack.pop() {
        let part = &mut rows[start..end];
        let node_stats = stats(target, part, k);
        let pure = match target {
            Target::Classes { .. } => node_stats.counts.iter().filter(|c| **c > 0.0).count() <= 1,
            Target::Values(v) => part.iter().all(|&r| v[r] == v[part[0]]),
        };
        let split = if pure || part.len() < settings.min_split || depth >= settings.max_depth {
            None
        } else {
            best_split(
                columns,
                target,
                part,
                &node_stats,
                settings,
                &mut features,
                &mut buffer,
                rng,
            )
        };
        match split {
            Some((feature, threshold)) => {
                let column = &columns[feature];
                let mut left = 0;
                for i in 0..part.len() {
                    if column[part[i]] <= threshold {
                        part.swap(i, left);
                        left += 1;
                    }
                }
                let l = tree.nodes.len();
                tree.nodes.push(leaf_placeholder());
                tree.nodes.push(leaf_placeholder());
                tree.nodes[node] = Node {
                    feature: feature as u32,
                    threshold,
                    left: l as u32,
                    right: l as u32 + 1,
                };
                stack.push((l + 1, start + left, end, depth + 1));
                stack.push((l, start, start + left, depth + 1));
            }
            None => {
                let leaf = (tree.values.len() / k) as u32;
                match target {
                    Target::Classes { .. } => tree
                        .values
                        .extend(node_stats.counts.iter().map(|c| c / node_stats.n)),
                    Target::Values(_) => tree.values.push(node_stats.sum / node_stats.n),
                }
                tree.nodes[node] = Node {
                    feature: LEAF,
                    threshold: 0.0,
                    left: leaf,
                    right: leaf,
                };
            }
        }
    }
    tree
}

fn leaf_placeholder() -> Node {
    Node {
        feature: LEAF,
        threshold: 0.0,
        left: 0,
        right: 0,
    }
}

fn x_log_x(x: f64) -> f64 {
    if x > 0.0 { x * x.ln() } else { 0.0 }
}

/// The best (feature, threshold) for these rows, or none if no split improves the node.
#[allow(clippy::too_many_arguments)]
fn best_split(
    columns: &[Vec<f64>],
    target: &Target,
    rows: &[usize],
    node: &Stats,
    settings: Settings,
    features: &mut [usize],
    buffer: &mut Vec<(f64, usize)>,
    rng: &mut impl Rng,
) -> Option<(usize, f64)> {
    let n = rows.len();
    let min_leaf = settings.min_leaf;
    // Higher is better for every criterion; `parent` is the node's own score.
    let parent = match target {
        Target::Classes { .. } if settings.entropy => {
            node.counts.iter().map(|c| x_log_x(*c)).sum::<f64>() - x_log_x(node.n)
        }
        Target::Classes { .. } => node.counts.iter().map(|c| c * c).sum::<f64>() / node.n,
        Target::Values(_) => node.sum * node.sum / node.n,
    };
    let mut best: Option<(f64, usize, f64)> = None;
    features.shuffle(rng);
    let mut tried = 0;
    let mut left_counts = vec![0.0; node.counts.len()];
    for &feature in features.iter() {
        // Like scikit-learn, keep looking past max_features while only constant features were seen.
        if tried >= settings.max_features && best.is_some() {
            break;
        }
        let column = &columns[feature];
        buffer.clear();
        buffer.extend(rows.iter().map(|&r| (column[r], r)));
        buffer.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        if buffer[0].0 == buffer[n - 1].0 {
            continue;
        }
        tried += 1;
        let consider = |i: usize, score: f64, best: &mut Option<(f64, usize, f64)>| {
            let (lo, hi) = (buffer[i].0, buffer[i + 1].0);
            if lo < hi && score > best.map_or(parent + 1e-12 * parent.abs().max(1.0), |b| b.0) {
                let mid = lo + (hi - lo) / 2.0;
                let threshold = if mid < hi { mid } else { lo };
                *best = Some((score, feature, threshold));
            }
        };
        match target {
            Target::Classes { y, .. } if settings.entropy => {
                left_counts.iter_mut().for_each(|c| *c = 0.0);
                let mut left_term = 0.0;
                let mut right_term: f64 = node.counts.iter().map(|c| x_log_x(*c)).sum();
                for i in 0..n - 1 {
                    let c = y[buffer[i].1];
                    let l = left_counts[c];
                    let r = node.counts[c] - l;
                    left_term += x_log_x(l + 1.0) - x_log_x(l);
                    right_term += x_log_x(r - 1.0) - x_log_x(r);
                    left_counts[c] = l + 1.0;
                    let nl = (i + 1) as f64;
                    let nr = node.n - nl;
                    if i + 1 >= min_leaf && n - i > min_leaf {
                        let score = left_term - x_log_x(nl) + right_term - x_log_x(nr);
                        consider(i, score, &mut best);
                    }
                }
            }
            Target::Classes { y, .. } => {
                left_counts.iter_mut().for_each(|c| *c = 0.0);
                let mut left_sq = 0.0;
                let mut right_sq: f64 = node.counts.iter().map(|c| c * c).sum();
                for i in 0..n - 1 {
                    let c = y[buffer[i].1];
                    let l = left_counts[c];
                    let r = node.counts[c] - l;
                    left_sq += 2.0 * l + 1.0;
                    right_sq -= 2.0 * r - 1.0;
                    left_counts[c] = l + 1.0;
                    let nl = (i + 1) as f64;
                    if i + 1 >= min_leaf && n - i > min_leaf {
                        consider(i, left_sq / nl + right_sq / (node.n - nl), &mut best);
                    }
                }
            }
            Target::Values(v) => {
                let mut left_sum = 0.0;
                for i in 0..n - 1 {
                    left_sum += v[buffer[i].1];
                    let nl = (i + 1) as f64;
                    if i + 1 >= min_leaf && n - i > min_leaf {
                        let right_sum = node.sum - left_sum;
                        let score =
                            left_sum * left_sum / nl + right_sum * right_sum / (node.n - nl);
                        consider(i, score, &mut best);
                    }
                }
            }
        }
    }
    best.map(|(_, feature, threshold)| (feature, threshold))
}
