use std::collections::BTreeMap;

use super::*;
use crate::params::ALGORITHMS;

/// Two noisy interleaved classes that no single axis separates, plus a regression target.
fn data(n: usize, seed: u64) -> (Matrix, Vec<usize>, Vec<f64>) {
    use rand::Rng;
    let mut rng = rng(seed);
    let mut x = Vec::new();
    let mut classes = Vec::new();
    let mut values = Vec::new();
    for _ in 0..n {
        let a: f64 = rng.random_range(-2.0..2.0);
        let b: f64 = rng.random_range(-2.0..2.0);
        let noise: f64 = rng.random_range(-0.1..0.1);
        x.extend_from_slice(&[a, b, rng.random_range(-1.0..1.0)]);
        classes.push(usize::from(a + b + noise > 0.0));
        values.push(3.0 * a - 2.0 * b + noise);
    }
    (Matrix::new(n, 3, x), classes, values)
}

fn params(algorithm: Algorithm, task: Task) -> Params {
    Params::resolve(algorithm, task, &BTreeMap::new()).unwrap()
}

#[test]
fn every_algorithm_learns_its_tasks_and_classifiers_give_probabilities() {
    let (x, classes, values) = data(600, 1);
    let (test_x, test_classes, test_values) = data(300, 2);
    for algorithm in ALGORITHMS {
        for &task in algorithm.tasks() {
            let target = match task {
                Task::Classification => Target::Classes {
                    y: classes.clone(),
                    n_classes: 2,
                },
                Task::Regression => Target::Values(values.clone()),
            };
            let model = fit(
                algorithm,
                &params(algorithm, task),
                &x,
                &target,
                7,
                &Progress::default(),
            )
            .unwrap();
            let prediction = model.predict(&test_x);
            let truth = match task {
                Task::Classification => Target::Classes {
                    y: test_classes.clone(),
                    n_classes: 2,
                },
                Task::Regression => Target::Values(test_values.clone()),
            };
            let m = metrics::evaluate(&truth, &prediction);
            match prediction {
                Prediction::Probabilities(p) => {
                    for r in 0..p.rows {
                        let sum: f64 = p.row(r).iter().sum();
                        assert!(
                            (sum - 1.0).abs() < 1e-9,
                            "{algorithm:?}: row {r} sums to {sum}"
                        );
                        assert!(p.row(r).iter().all(|v| (0.0..=1.0).contains(v)));
                    }
                    assert!(
                        m["accuracy"] > 0.85,
                        "{algorithm:?} accuracy {}",
                        m["accuracy"]
                    );
                    assert!(m["roc_auc"] > 0.9, "{algorithm:?} auc {}", m["roc_auc"]);
                }
                Prediction::Values(_) => assert!(m["r2"] > 0.8, "{algorithm:?} r2 {}", m["r2"]),
            }
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_model_and_artifacts_round_trip() {
    let (x, classes, _) = data(300, 3);
    let target = Target::Classes {
        y: classes,
        n_classes: 2,
    };
    for algorithm in [
        Algorithm::RandomForest,
        Algorithm::Mlp,
        Algorithm::LinearSvm,
        Algorithm::GradientBoosting,
    ] {
        let p = params(algorithm, Task::Classification);
        let a = fit(algorithm, &p, &x, &target, 11, &Progress::default()).unwrap();
        let b = fit(algorithm, &p, &x, &target, 11, &Progress::default()).unwrap();
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(
            json,
            serde_json::to_string(&b).unwrap(),
            "{algorithm:?} is not repeatable"
        );
        let back: Estimator = serde_json::from_str(&json).unwrap();
        assert_eq!(back.predict(&x), a.predict(&x));
    }
}

#[test]
fn multiclass_models_answer_every_class() {
    let (x, _, values) = data(600, 4);
    let y: Vec<usize> = values
        .iter()
        .map(|v| {
            if *v < -2.0 {
                0
            } else if *v < 2.0 {
                1
            } else {
                2
            }
        })
        .collect();
    let target = Target::Classes { y, n_classes: 3 };
    for algorithm in ALGORITHMS
        .into_iter()
        .filter(|a| a.tasks().contains(&Task::Classification))
    {
        let model = fit(
            algorithm,
            &params(algorithm, Task::Classification),
            &x,
            &target,
            1,
            &Progress::default(),
        )
        .unwrap();
        let Prediction::Probabilities(p) = model.predict(&x) else {
            panic!("{algorithm:?} gave values")
        };
        assert_eq!(p.cols, 3);
        let m = metrics::evaluate(&target, &Prediction::Probabilities(p));
        assert!(
            m["accuracy"] > 0.8,
            "{algorithm:?} accuracy {}",
            m["accuracy"]
        );
    }
}

#[test]
fn parameters_are_checked_by_name_and_range() {
    let given = |pairs: &[(&str, serde_json::Value)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let err = Params::resolve(
        Algorithm::RandomForest,
        Task::Classification,
        &given(&[("n_trees", 5.into())]),
    )
    .unwrap_err();
    assert!(
        err.contains("unknown parameter \"n_trees\"") && err.contains("n_estimators"),
        "{err}"
    );
    let err = Params::resolve(
        Algorithm::Knn,
        Task::Classification,
        &given(&[("n_neighbors", 0.into())]),
    )
    .unwrap_err();
    assert!(err.contains("outside"), "{err}");
    let err = Params::resolve(
        Algorithm::Knn,
        Task::Classification,
        &given(&[("weights", "far".into())]),
    )
    .unwrap_err();
    assert!(err.contains("uniform, distance"), "{err}");
    let err = Params::resolve(
        Algorithm::Mlp,
        Task::Classification,
        &given(&[("hidden_layer_sizes", serde_json::json!([]))]),
    )
    .unwrap_err();
    assert!(err.contains("list"), "{err}");
    let ok = Params::resolve(
        Algorithm::RandomForest,
        Task::Regression,
        &given(&[("max_depth", serde_json::Value::Null)]),
    )
    .unwrap();
    assert_eq!(ok.text("max_features", ""), "all");
    assert_eq!(ok.usize("n_estimators", 0), 100);
}

#[test]
fn cancelling_stops_training() {
    let (x, classes, _) = data(200, 5);
    let progress = Progress::default();
    progress.cancel();
    let target = Target::Classes {
        y: classes,
        n_classes: 2,
    };
    let result = fit(
        Algorithm::RandomForest,
        &params(Algorithm::RandomForest, Task::Classification),
        &x,
        &target,
        1,
        &progress,
    );
    assert_eq!(result.unwrap_err(), FitError::Cancelled);
}

#[test]
fn one_class_is_refused() {
    let (x, _, _) = data(50, 6);
    let target = Target::Classes {
        y: vec![0; 50],
        n_classes: 2,
    };
    let err = fit(
        Algorithm::DecisionTree,
        &params(Algorithm::DecisionTree, Task::Classification),
        &x,
        &target,
        1,
        &Progress::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("one class"));
}

#[test]
fn preprocessing_imputes_one_hot_encodes_and_scales_with_training_statistics() {
    let frame = prep::Frame {
        names: vec!["n".into(), "c".into()],
        columns: vec![
            prep::ColumnData::Numeric(vec![1.0, f64::NAN, 3.0]),
            prep::ColumnData::Categorical(vec![Some("b".into()), Some("a".into()), None]),
        ],
    };
    let p = prep::Preprocessor::fit(&frame, &["n".into(), "c".into()], false);
    let m = p.transform(&frame);
    assert_eq!(m.data, vec![1.0, 0.0, 1.0, 2.0, 1.0, 0.0, 3.0, 0.0, 0.0]);
    let unseen = prep::Frame {
        names: vec!["n".into(), "c".into()],
        columns: vec![
            prep::ColumnData::Numeric(vec![2.0]),
            prep::ColumnData::Categorical(vec![Some("z".into())]),
        ],
    };
    assert_eq!(p.transform(&unseen).data, vec![2.0, 0.0, 0.0]);
    let scaled = prep::Preprocessor::fit(&frame, &["n".into(), "c".into()], true).transform(&frame);
    let column0: Vec<f64> = (0..3).map(|r| scaled.row(r)[0]).collect();
    assert!(column0.iter().sum::<f64>().abs() < 1e-12);
}

#[test]
fn metrics_match_hand_computed_values() {
    assert_eq!(
        metrics::roc_auc(&[0, 0, 1, 1], &[0.1, 0.4, 0.35, 0.8]),
        Some(0.75)
    );
    let m = metrics::regression(&[1.0, 2.0, 3.0], &[1.0, 2.0, 4.0]);
    assert!((m["r2"] - 0.5).abs() < 1e-12 && (m["mae"] - 1.0 / 3.0).abs() < 1e-12);
    let folds = split::kfold(
        &Target::Classes {
            y: vec![0, 0, 0, 1, 1, 1],
            n_classes: 2,
        },
        3,
        1,
    );
    let mut seen: Vec<usize> = folds.iter().flat_map(|(_, t)| t.clone()).collect();
    seen.sort_unstable();
    assert_eq!(seen, vec![0, 1, 2, 3, 4, 5]);
    assert!(folds.iter().all(|(_, t)| t.len() == 2));
}
