//! In-process side of `scripts/bench_models.py`: fits every algorithm that suits the task on
//! `DIR/train.csv`, evaluates on `DIR/test.csv` (numeric features, target in the last column),
//! and prints one JSON line per algorithm with metrics, train time, single-row latency and
//! batch throughput. Preprocessing is the service's own ([`mlmesh_learn::prep`]).
//!
//! `cargo run --release -p mlmesh-learn --example compare -- DIR classification|regression [SEED [ALGORITHM]]`

use std::collections::BTreeMap;
use std::time::Instant;

use mlmesh_learn::params::ALGORITHMS;
use mlmesh_learn::prep::{ColumnData, Frame, Preprocessor};
use mlmesh_learn::{Params, Progress, Target, Task, fit, metrics};

fn read(path: &str) -> (Frame, Vec<f64>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .expect("a header row")
        .split(',')
        .map(str::to_string)
        .collect();
    let width = header.len() - 1;
    let mut columns = vec![Vec::new(); width];
    let mut target = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let cells: Vec<f64> = line
            .split(',')
            .map(|c| c.parse().expect("numeric cells"))
            .collect();
        for (j, c) in columns.iter_mut().enumerate() {
            c.push(cells[j]);
        }
        target.push(cells[width]);
    }
    let frame = Frame {
        names: header[..width].to_vec(),
        columns: columns.into_iter().map(ColumnData::Numeric).collect(),
    };
    (frame, target)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = &args[1];
    let task = if args[2] == "regression" {
        Task::Regression
    } else {
        Task::Classification
    };
    let seed: u64 = args.get(3).map_or(0, |s| s.parse().expect("a seed"));
    let only = args.get(4).cloned();
    let (train, y_train) = read(&format!("{dir}/train.csv"));
    let (test, y_test) = read(&format!("{dir}/test.csv"));
    let target = |y: &[f64]| match task {
        Task::Classification => {
            let k = y_train.iter().fold(0.0f64, |m, v| m.max(*v)) as usize + 1;
            Target::Classes {
                y: y.iter().map(|v| *v as usize).collect(),
                n_classes: k,
            }
        }
        Task::Regression => Target::Values(y.to_vec()),
    };
    let (t_train, t_test) = (target(&y_train), target(&y_test));
    let chosen = ALGORITHMS
        .into_iter()
        .filter(|a| a.tasks().contains(&task))
        .filter(|a| only.as_deref().is_none_or(|o| o == a.name()));
    for algorithm in chosen {
        let params =
            Params::resolve(algorithm, task, &BTreeMap::new()).expect("defaults are valid");
        let mut times = Vec::new();
        let mut fitted = None;
        for _ in 0..3 {
            let start = Instant::now();
            let prep = Preprocessor::fit(&train, &train.names, algorithm.scales_features());
            let x = prep.transform(&train);
            let model =
                fit(algorithm, &params, &x, &t_train, seed, &Progress::default()).expect("fit");
            times.push(start.elapsed().as_secs_f64());
            fitted = Some((prep, model));
            if times[0] > 5.0 {
                break;
            }
        }
        times.sort_by(f64::total_cmp);
        let train_s = times[times.len() / 2];
        let (prep, model) = fitted.expect("fitted once");
        let x_test = prep.transform(&test);
        let prediction = model.predict(&x_test);
        let m = metrics::evaluate(&t_test, &prediction);
        // Single rows: frame → matrix → predict, as the service does per request.
        let rows: Vec<Frame> = (0..test.rows().min(200))
            .map(|r| test.select(&[r]))
            .collect();
        for row in rows.iter().take(50) {
            std::hint::black_box(model.predict(&prep.transform(row)));
        }
        let mut lat = Vec::new();
        for i in 0..1000 {
            let row = &rows[i % rows.len()];
            let start = Instant::now();
            std::hint::black_box(model.predict(&prep.transform(row)));
            lat.push(start.elapsed().as_secs_f64() * 1e6);
        }
        lat.sort_by(f64::total_cmp);
        let mut batch = Vec::new();
        let begin = Instant::now();
        while batch.len() < 5 || (begin.elapsed().as_secs_f64() < 2.0 && batch.len() < 50) {
            let start = Instant::now();
            std::hint::black_box(model.predict(&prep.transform(&test)));
            batch.push(start.elapsed().as_secs_f64());
        }
        batch.sort_by(f64::total_cmp);
        let line = serde_json::json!({
            "algorithm": algorithm.name(),
            "metrics": m,
            "train_s": train_s,
            "predict_1row_us": lat[lat.len() / 2],
            "batch_rows_per_s": test.rows() as f64 / batch[batch.len() / 2],
        });
        println!("{line}");
    }
}
