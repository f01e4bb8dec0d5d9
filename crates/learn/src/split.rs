//! Train/validation splits: a shuffled holdout or k folds, stratified by class for classifiers
//! (each class is shuffled and dealt out in proportion), all driven by the run's seed.

use rand::seq::SliceRandom;

use crate::Target;

/// `(train rows, validation rows)` pairs.
pub type Splits = Vec<(Vec<usize>, Vec<usize>)>;

fn groups(target: &Target, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = crate::rng(seed);
    let mut groups = match target {
        Target::Classes { y, n_classes } => {
            let mut g = vec![Vec::new(); *n_classes];
            for (i, c) in y.iter().enumerate() {
                g[*c].push(i);
            }
            g
        }
        Target::Values(v) => vec![(0..v.len()).collect()],
    };
    for g in &mut groups {
        g.shuffle(&mut rng);
    }
    groups
}

/// One split holding out `fraction` of the rows (at least one, and never all).
pub fn holdout(target: &Target, fraction: f64, seed: u64) -> Splits {
    let mut train = Vec::new();
    let mut test = Vec::new();
    for group in groups(target, seed) {
        let take = ((group.len() as f64) * fraction).round() as usize;
        test.extend_from_slice(&group[..take.min(group.len())]);
        train.extend_from_slice(&group[take.min(group.len())..]);
    }
    if test.is_empty() && train.len() > 1 {
        test.push(train.pop().unwrap_or_default());
    }
    train.sort_unstable();
    test.sort_unstable();
    vec![(train, test)]
}

/// `k` folds; every row is validated exactly once.
pub fn kfold(target: &Target, k: usize, seed: u64) -> Splits {
    let mut folds = vec![Vec::new(); k];
    let mut next = 0;
    for group in groups(target, seed) {
        for row in group {
            folds[next % k].push(row);
            next += 1;
        }
    }
    (0..k)
        .map(|f| {
            let mut test = folds[f].clone();
            let mut train: Vec<usize> = folds
                .iter()
                .enumerate()
                .filter(|(g, _)| *g != f)
                .flat_map(|(_, rows)| rows.iter().copied())
                .collect();
            test.sort_unstable();
            train.sort_unstable();
            (train, test)
        })
        .collect()
}
