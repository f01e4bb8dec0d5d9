//! Histogram gradient boosting (the algorithm of LightGBM and scikit-learn's
//! `HistGradientBoosting*`): features are binned once into at most 255 quantile bins, and each
//! tree grows leaf-wise, choosing splits from per-leaf gradient/hessian histograms. Log-loss for
//! two classes, softmax cross-entropy (one tree per class and round) for more, squared error for
//! values. perpetual, the Rust booster surveyed, needs nightly Rust and trained 20–100× slower
//! than scikit-learn here, hence this implementation.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::tree::{LEAF, Node, Tree};
use crate::{FitError, Matrix, Params, Prediction, Progress, Target, sigmoid, softmax};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Booster {
    /// Raw scores per row: 1 (values, two classes) or one per class.
    pub outputs: usize,
    /// Classes, when a classifier (2 classes use one score, the log-odds of class 1).
    pub classes: Option<usize>,
    pub baseline: Vec<f64>,
    /// `rounds[r][o]`: the tree of round `r` for score `o` (leaf values already shrunk).
    pub rounds: Vec<Vec<Tree>>,
}

impl Booster {
    fn raw(&self, row: &[f64], out: &mut [f64]) {
        out.copy_from_slice(&self.baseline);
        for round in &self.rounds {
            for (o, tree) in round.iter().enumerate() {
                out[o] += tree.leaf_values(row)[0];
            }
        }
    }

    pub fn predict(&self, x: &Matrix) -> Prediction {
        let mut raw = Matrix::zeros(x.rows, self.outputs);
        // Large batches spread over the cores; a few rows stay on the caller's thread.
        raw.data
            .par_chunks_mut(self.outputs)
            .enumerate()
            .with_min_len(if x.rows > 1024 { 256 } else { usize::MAX })
            .for_each(|(r, out)| self.raw(x.row(r), out));
        match self.classes {
            None => Prediction::Values(raw.data),
            Some(2) => {
                let mut p = Matrix::zeros(x.rows, 2);
                for r in 0..x.rows {
                    let p1 = sigmoid(raw.data[r]);
                    p.row_mut(r).copy_from_slice(&[1.0 - p1, p1]);
                }
                Prediction::Probabilities(p)
            }
            Some(_) => {
                for r in 0..x.rows {
                    softmax(raw.row_mut(r));
                }
                Prediction::Probabilities(raw)
            }
        }
    }
}

struct Settings {
    rounds: usize,
    learning_rate: f64,
    max_leaves: usize,
    max_depth: usize,
    min_leaf: usize,
    l2: f64,
}

/// Bin edges of one feature: a value goes to the first bin whose edge is ≥ it.
fn edges(column: &[f64], max_bins: usize) -> Vec<f64> {
    let mut sorted = column.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    let mut distinct = sorted.clone();
    distinct.dedup();
    if distinct.len() <= max_bins {
        return distinct
            .windows(2)
            .map(|w| w[0] + (w[1] - w[0]) / 2.0)
            .collect();
    }
    let mut edges: Vec<f64> = (1..max_bins)
        .map(|i| sorted[i * sorted.len() / max_bins])
        .collect();
    edges.dedup();
    edges
}

pub fn fit(
    params: &Params,
    x: &Matrix,
    target: &Target,
    progress: &Progress,
) -> Result<Booster, FitError> {
    let settings = Settings {
        rounds: params.usize("n_estimators", 100),
        learning_rate: params.float("learning_rate", 0.1),
        max_leaves: params.usize("max_leaf_nodes", 31),
        max_depth: params.int("max_depth").unwrap_or(usize::MAX),
        min_leaf: params.usize("min_samples_leaf", 20),
        l2: params.float("l2_regularization", 0.0),
    };
    let max_bins = params.usize("max_bins", 255).min(255);
    let n = x.rows;
    let columns = x.columns();
    let all_edges: Vec<Vec<f64>> = columns.par_iter().map(|c| edges(c, max_bins)).collect();
    let binned: Vec<Vec<u8>> = columns
        .par_iter()
        .zip(&all_edges)
        .map(|(c, e)| {
            c.iter()
                .map(|v| e.partition_point(|edge| edge < v) as u8)
                .collect()
        })
        .collect();

    let (outputs, classes, baseline) = match target {
        Target::Values(v) => (1, None, vec![v.iter().sum::<f64>() / n as f64]),
        Target::Classes { y, n_classes } => {
            let mut counts = vec![0.0; *n_classes];
            y.iter().for_each(|&c| counts[c] += 1.0);
            // Priors clipped away from 0 so an absent class does not give -inf.
            let prior = |c: f64| (c / n as f64).clamp(1e-12, 1.0 - 1e-12);
            if *n_classes == 2 {
                let p = prior(counts[1]);
                (1, Some(2), vec![(p / (1.0 - p)).ln()])
            } else {
                let base = counts.iter().map(|c| prior(*c).ln()).collect();
                (*n_classes, Some(*n_classes), base)
            }
        }
    };
    let mut raw: Vec<f64> = (0..n).flat_map(|_| baseline.iter().copied()).collect();
    let mut gradients = vec![0.0; n * outputs];
    let mut hessians = vec![0.0; n * outputs];
    let mut rounds = Vec::with_capacity(settings.rounds);
    for round in 0..settings.rounds {
        progress.check()?;
        match target {
            Target::Values(v) => {
                for i in 0..n {
                    gradients[i] = raw[i] - v[i];
                    hessians[i] = 1.0;
                }
            }
            Target::Classes { y, .. } if outputs == 1 => {
                for i in 0..n {
                    let p = sigmoid(raw[i]);
                    gradients[i] = p - if y[i] == 1 { 1.0 } else { 0.0 };
                    hessians[i] = (p * (1.0 - p)).max(1e-16);
                }
            }
            Target::Classes { y, .. } => {
                let mut p = vec![0.0; outputs];
                for i in 0..n {
                    p.copy_from_slice(&raw[i * outputs..(i + 1) * outputs]);
                    softmax(&mut p);
                    for k in 0..outputs {
                        let at = i * outputs + k;
                        gradients[at] = p[k] - if y[i] == k { 1.0 } else { 0.0 };
                        hessians[at] = (p[k] * (1.0 - p[k])).max(1e-16);
                    }
                }
            }
        }
        let trees: Vec<(Tree, Leaves)> = (0..outputs)
            .into_par_iter()
            .map(|o| {
                let g: Vec<f64> = (0..n).map(|i| gradients[i * outputs + o]).collect();
                let h: Vec<f64> = (0..n).map(|i| hessians[i * outputs + o]).collect();
                grow(&binned, &all_edges, &g, &h, &settings)
            })
            .collect();
        let mut round_trees = Vec::with_capacity(outputs);
        for (o, (tree, leaves)) in trees.into_iter().enumerate() {
            for (rows, value) in leaves {
                for r in rows {
                    raw[r as usize * outputs + o] += value;
                }
            }
            round_trees.push(tree);
        }
        rounds.push(round_trees);
        progress.set((round + 1) as f64 / settings.rounds as f64 * 0.99);
    }
    Ok(Booster {
        outputs,
        classes,
        baseline,
        rounds,
    })
}

/// Each leaf's training rows and value.
type Leaves = Vec<(Vec<u32>, f64)>;

#[derive(Clone, Copy)]
struct Candidate {
    gain: f64,
    feature: usize,
    bin: u8,
}

/// Gradient, hessian and row count of one histogram bin.
#[derive(Clone, Copy, Default)]
struct Bin {
    g: f64,
    h: f64,
    n: u32,
}

/// Where each feature's bins start in a leaf's histogram: a feature has as many bins as it has
/// distinct binned values (edges + 1), so low-cardinality features cost little.
struct Layout {
    offsets: Vec<usize>,
}

impl Layout {
    fn new(edges: &[Vec<f64>]) -> Self {
        let mut offsets = vec![0];
        for e in edges {
            offsets.push(offsets.last().copied().unwrap_or(0) + e.len() + 1);
        }
        Self { offsets }
    }

    fn total(&self) -> usize {
        self.offsets.last().copied().unwrap_or(0)
    }

    /// The histogram split into one slice per feature.
    fn split<'a, T>(&self, mut all: &'a mut [T]) -> Vec<&'a mut [T]> {
        let mut out = Vec::with_capacity(self.offsets.len() - 1);
        for pair in self.offsets.windows(2) {
            let (head, tail) = all.split_at_mut(pair[1] - pair[0]);
            out.push(head);
            all = tail;
        }
        out
    }
}

struct Leaf {
    node: usize,
    rows: Vec<u32>,
    g: f64,
    h: f64,
    depth: usize,
    /// This leaf's histograms (kept while it may still split: its children's come from it).
    hist: Vec<Bin>,
    split: Option<Candidate>,
}

/// Grows one tree leaf-wise; returns it with each leaf's rows and (shrunk) value.
fn grow(
    binned: &[Vec<u8>],
    edges: &[Vec<f64>],
    g: &[f64],
    h: &[f64],
    s: &Settings,
) -> (Tree, Leaves) {
    let rows: Vec<u32> = (0..g.len() as u32).collect();
    let mut nodes = vec![Node {
        feature: LEAF,
        threshold: 0.0,
        left: 0,
        right: 0,
    }];
    let (gs, hs) = sums(&rows, g, h);
    let layout = Layout::new(edges);
    let hist = histograms(binned, &layout, g, h, &rows);
    let mut root = Leaf {
        node: 0,
        rows,
        g: gs,
        h: hs,
        depth: 0,
        hist,
        split: None,
    };
    root.split = find_split(&root, &layout, s);
    let mut open = vec![root];
    let mut done = Vec::new();
    while open.len() + done.len() < s.max_leaves {
        let Some((at, _)) = open
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.split.map(|c| (i, c.gain)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
        else {
            break;
        };
        let leaf = open.swap_remove(at);
        let Some(split) = leaf.split else { break };
        let column = &binned[split.feature];
        let (left_rows, right_rows): (Vec<u32>, Vec<u32>) = leaf
            .rows
            .iter()
            .partition(|&&r| column[r as usize] <= split.bin);
        let l = nodes.len();
        nodes[leaf.node] = Node {
            feature: split.feature as u32,
            threshold: edges[split.feature][split.bin as usize],
            left: l as u32,
            right: l as u32 + 1,
        };
        // The histogram trick: build the smaller child's histograms from its rows, and get the
        // larger one's by subtracting them from the parent's.
        let left_smaller = left_rows.len() <= right_rows.len();
        let small = histograms(
            binned,
            &layout,
            g,
            h,
            if left_smaller {
                &left_rows
            } else {
                &right_rows
            },
        );
        let mut large = leaf.hist;
        for (l, s) in large.iter_mut().zip(&small) {
            l.g -= s.g;
            l.h -= s.h;
            l.n -= s.n;
        }
        let (left_hist, right_hist) = if left_smaller {
            (small, large)
        } else {
            (large, small)
        };
        for (offset, (child_rows, hist)) in [(left_rows, left_hist), (right_rows, right_hist)]
            .into_iter()
            .enumerate()
        {
            nodes.push(Node {
                feature: LEAF,
                threshold: 0.0,
                left: 0,
                right: 0,
            });
            let (cg, ch) = sums(&child_rows, g, h);
            let mut child = Leaf {
                node: l + offset,
                rows: child_rows,
                g: cg,
                h: ch,
                depth: leaf.depth + 1,
                hist,
                split: None,
            };
            child.split = find_split(&child, &layout, s);
            if child.split.is_none() {
                child.hist = Vec::new();
            }
            open.push(child);
        }
        // Leaves that cannot split are set aside so the loop only scans live candidates.
        let (live, dead): (Vec<Leaf>, Vec<Leaf>) =
            open.into_iter().partition(|l| l.split.is_some());
        open = live;
        done.extend(dead);
    }
    let mut values = Vec::new();
    let mut leaves = Vec::new();
    for leaf in open.into_iter().chain(done) {
        let value = -leaf.g / (leaf.h + s.l2) * s.learning_rate;
        nodes[leaf.node].left = values.len() as u32;
        nodes[leaf.node].right = values.len() as u32;
        values.push(value);
        leaves.push((leaf.rows, value));
    }
    (
        Tree {
            outputs: 1,
            nodes,
            values,
        },
        leaves,
    )
}

fn sums(rows: &[u32], g: &[f64], h: &[f64]) -> (f64, f64) {
    rows.iter().fold((0.0, 0.0), |(a, b), &r| {
        (a + g[r as usize], b + h[r as usize])
    })
}

/// Histograms of `rows` for every feature (in parallel over features when large).
fn histograms(binned: &[Vec<u8>], layout: &Layout, g: &[f64], h: &[f64], rows: &[u32]) -> Vec<Bin> {
    let mut hist = vec![Bin::default(); layout.total()];
    let fill = |(column, bins): (&Vec<u8>, &mut &mut [Bin])| {
        for &r in rows {
            let b = &mut bins[column[r as usize] as usize];
            b.g += g[r as usize];
            b.h += h[r as usize];
            b.n += 1;
        }
    };
    let mut slices = layout.split(&mut hist);
    if rows.len() * binned.len() > 50_000 {
        binned.par_iter().zip(slices.par_iter_mut()).for_each(fill);
    } else {
        binned.iter().zip(slices.iter_mut()).for_each(fill);
    }
    hist
}

/// The best split of a leaf from its histograms, if any improves it.
fn find_split(leaf: &Leaf, layout: &Layout, s: &Settings) -> Option<Candidate> {
    if leaf.depth >= s.max_depth || leaf.rows.len() < 2 * s.min_leaf {
        return None;
    }
    let parent = leaf.g * leaf.g / (leaf.h + s.l2);
    let n = leaf.rows.len();
    let mut best: Option<Candidate> = None;
    for (feature, pair) in layout.offsets.windows(2).enumerate() {
        let bins = &leaf.hist[pair[0]..pair[1]];
        let (mut gl, mut hl, mut nl) = (0.0, 0.0, 0usize);
        for (bin, b) in bins.iter().enumerate().take(bins.len().saturating_sub(1)) {
            gl += b.g;
            hl += b.h;
            nl += b.n as usize;
            if nl < s.min_leaf {
                continue;
            }
            if n - nl < s.min_leaf {
                break;
            }
            let (gr, hr) = (leaf.g - gl, leaf.h - hl);
            if hl < 1e-3 || hr < 1e-3 {
                continue;
            }
            let gain = gl * gl / (hl + s.l2) + gr * gr / (hr + s.l2) - parent;
            if gain > 1e-12 && best.is_none_or(|b| gain > b.gain) {
                best = Some(Candidate {
                    gain,
                    feature,
                    bin: bin as u8,
                });
            }
        }
    }
    best
}
