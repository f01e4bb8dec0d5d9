//! Evaluation metrics, with scikit-learn's definitions: accuracy, macro-F1, log-loss and
//! ROC-AUC (two classes) for classifiers; RMSE, MAE and R² for regressors.

use std::collections::BTreeMap;

use crate::{Matrix, Prediction, Target};

pub type Metrics = BTreeMap<String, f64>;

pub fn evaluate(target: &Target, prediction: &Prediction) -> Metrics {
    match (target, prediction) {
        (Target::Classes { y, n_classes }, Prediction::Probabilities(p)) => {
            classification(y, *n_classes, p)
        }
        (Target::Values(y), Prediction::Values(v)) => regression(y, v),
        _ => Metrics::new(),
    }
}

pub fn classification(y: &[usize], k: usize, p: &Matrix) -> Metrics {
    let predicted = p.argmax_rows();
    let n = y.len() as f64;
    let correct = y.iter().zip(&predicted).filter(|(a, b)| a == b).count() as f64;
    let mut f1 = 0.0;
    let mut present = 0.0;
    for c in 0..k {
        let tp = y
            .iter()
            .zip(&predicted)
            .filter(|(a, b)| **a == c && **b == c)
            .count() as f64;
        let actual = y.iter().filter(|a| **a == c).count() as f64;
        let said = predicted.iter().filter(|b| **b == c).count() as f64;
        if actual == 0.0 && said == 0.0 {
            continue;
        }
        present += 1.0;
        if tp > 0.0 {
            f1 += 2.0 * tp / (actual + said);
        }
    }
    let eps = 1e-15;
    let log_loss = y
        .iter()
        .enumerate()
        .map(|(i, &c)| -p.row(i)[c].clamp(eps, 1.0 - eps).ln())
        .sum::<f64>()
        / n;
    let mut m = Metrics::new();
    m.insert("accuracy".into(), correct / n);
    m.insert(
        "f1_macro".into(),
        if present > 0.0 { f1 / present } else { 0.0 },
    );
    m.insert("log_loss".into(), log_loss);
    if k == 2 {
        let scores: Vec<f64> = (0..y.len()).map(|i| p.row(i)[1]).collect();
        if let Some(auc) = roc_auc(y, &scores) {
            m.insert("roc_auc".into(), auc);
        }
    }
    m
}

/// Area under the ROC curve by the rank statistic (ties get their average rank).
pub fn roc_auc(y: &[usize], scores: &[f64]) -> Option<f64> {
    let mut order: Vec<usize> = (0..y.len()).collect();
    order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    let mut ranks = vec![0.0; y.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &o in &order[i..=j] {
            ranks[o] = rank;
        }
        i = j + 1;
    }
    let positives = y.iter().filter(|c| **c == 1).count() as f64;
    let negatives = y.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    let rank_sum: f64 = y
        .iter()
        .zip(&ranks)
        .filter(|(c, _)| **c == 1)
        .map(|(_, r)| r)
        .sum();
    Some((rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives))
}

pub fn regression(y: &[f64], v: &[f64]) -> Metrics {
    let n = y.len() as f64;
    let mean = y.iter().sum::<f64>() / n;
    let sse: f64 = y.iter().zip(v).map(|(a, b)| (a - b) * (a - b)).sum();
    let sst: f64 = y.iter().map(|a| (a - mean) * (a - mean)).sum();
    let mae = y.iter().zip(v).map(|(a, b)| (a - b).abs()).sum::<f64>() / n;
    let mut m = Metrics::new();
    m.insert("rmse".into(), (sse / n).sqrt());
    m.insert("mae".into(), mae);
    m.insert("r2".into(), if sst > 0.0 { 1.0 - sse / sst } else { 0.0 });
    m
}

/// Mean of each metric over folds.
pub fn average(folds: &[Metrics]) -> Metrics {
    let mut out = Metrics::new();
    for fold in folds {
        for (k, v) in fold {
            *out.entry(k.clone()).or_insert(0.0) += v / folds.len() as f64;
        }
    }
    out
}
