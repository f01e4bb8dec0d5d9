//! Model services end to end, through the real binary: every algorithm trained on real data
//! and served over the Open Inference Protocol, the CLI, bad input, ONNX import checked
//! against scikit-learn, and a training job interrupted by `kill -9`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mlmesh_testkit::{eventually, get_json, get_text, http};
use serde_json::{Value, json};

use super::{WAIT, kill9, mlmesh, read_json};

async fn post(url: &str, body: &Value) -> (u16, Value) {
    let response = http().post(url).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn upload(data: &str, name: &str, query: &str, bytes: Vec<u8>) {
    let response = http()
        .post(format!("{data}/v1/datasets/{name}?{query}"))
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "upload {name}: {}",
        response.text().await.unwrap()
    );
}

/// Trains and waits; returns the finished job.
async fn train(service: &str, model: &str, body: Value) -> Value {
    let (status, job) = post(&format!("{service}/v1/models/{model}/train"), &body).await;
    assert_eq!(status, 202, "train {model}: {job}");
    let id = job["job"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(240), "training finished", || async {
        let (_, job) = get_json(&format!("{service}/v1/jobs/{id}")).await;
        matches!(
            job["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        )
        .then_some(job)
    })
    .await
}

/// Waits until a job is in `state` (and, when running, has made progress).
async fn wait_for_state(service: &str, id: &str, state: &str) -> Value {
    eventually(WAIT, state, || async {
        let (_, job) = get_json(&format!("{service}/v1/jobs/{id}")).await;
        let progressed = state != "running" || job["progress"].as_f64().unwrap_or(0.0) > 0.0;
        (job["state"] == state && progressed).then_some(job)
    })
    .await
}

fn assert_4xx(status: u16, body: &Value, want: u16, what: &str) {
    assert_eq!(status, want, "{what}: {body}");
    assert!(
        body["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
}

/// Spambase rows as (features, label).
fn spambase() -> Vec<(Vec<f64>, i64)> {
    std::fs::read_to_string(mlmesh_testkit::shared_data(
        "tabular/spambase/spambase.data",
    ))
    .unwrap()
    .lines()
    .filter(|l| !l.is_empty())
    .map(|l| {
        let cells: Vec<f64> = l.split(',').map(|c| c.parse().unwrap()).collect();
        (cells[..57].to_vec(), cells[57] as i64)
    })
    .collect()
}

/// A small table with a text column, a boolean, missing values and a text target.
fn mixed_csv() -> Vec<u8> {
    let mut out = String::from("size,colour,fresh,kind\n");
    for i in 0..300 {
        let size = (i % 17) as f64 + if i % 3 == 0 { 0.5 } else { 0.0 };
        let colour = ["red", "green", "blue"][i % 3];
        let size_cell = if i % 29 == 0 {
            String::new()
        } else {
            size.to_string()
        };
        let kind = if colour == "blue" || size > 12.0 {
            "big"
        } else {
            "small"
        };
        out.push_str(&format!("{size_cell},{colour},{},{kind}\n", i % 2 == 0));
    }
    out.into_bytes()
}

pub(super) fn python() -> String {
    std::env::var("MLMESH_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_train_evaluate_and_serve_every_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut up = mlmesh()
        .args(["up", "--port", "0", "--data-dir"])
        .arg(&data_dir)
        .env("MLMESH_MODEL__MAX_BATCH_ROWS", "500")
        .env("MLMESH_MODEL__MAX_REQUEST_BYTES", "1000000")
        // Generous for a debug build, so that small predictions surely run inline.
        .env("MLMESH_MODEL__INLINE_PREDICT_US", "5000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let endpoints = eventually(Duration::from_secs(60), "endpoints.json", || async {
        read_json(&data_dir.join("endpoints.json"))
    })
    .await;
    let url = |service: &str| {
        endpoints["services"][service][0]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (data, trees, linear, neural, onnx) = (
        url("data"),
        url("model-trees"),
        url("model-linear"),
        url("model-neural"),
        url("model-onnx"),
    );

    let spam = std::fs::read(mlmesh_testkit::shared_data(
        "tabular/spambase/spambase.data",
    ))
    .unwrap();
    upload(&data, "spam", "target=column_58", spam).await;
    let wine = std::fs::read(mlmesh_testkit::shared_data(
        "tabular/wine_quality/winequality-red.csv",
    ))
    .unwrap();
    upload(&data, "wine", "target=quality", wine).await;
    upload(&data, "mixed", "target=kind", mixed_csv()).await;

    // Every classifier on spambase, every regressor on wine quality (as regression).
    let classifiers = [
        (&trees, "decision_tree", 0.88),
        (&trees, "random_forest", 0.93),
        (&trees, "gradient_boosting", 0.93),
        (&linear, "logistic_regression", 0.9),
        (&linear, "linear_svm", 0.9),
        (&linear, "gaussian_nb", 0.78),
        (&linear, "knn", 0.87),
        (&neural, "mlp", 0.9),
    ];
    for (service, algorithm, floor) in classifiers {
        let job = train(
            service,
            &format!("spam-{algorithm}"),
            json!({"dataset": "spam", "algorithm": algorithm, "seed": 3}),
        )
        .await;
        assert_eq!(job["state"], "succeeded", "{algorithm}: {job}");
        let accuracy = job["metrics"]["accuracy"].as_f64().unwrap();
        assert!(accuracy > floor, "{algorithm} accuracy {accuracy}");
        assert!(
            job["metrics"]["roc_auc"].as_f64().unwrap() > 0.8,
            "{algorithm}: {job}"
        );
        assert!(
            job["metrics"]["log_loss"].as_f64().is_some()
                && job["metrics"]["f1_macro"].as_f64().is_some()
        );
    }
    let regressors = [
        (&trees, "decision_tree", -1.0),
        (&trees, "random_forest", 0.3),
        (&trees, "gradient_boosting", 0.25),
        (&linear, "linear_regression", 0.25),
        (&linear, "ridge", 0.25),
        (&linear, "linear_svm", 0.25),
        (&linear, "knn", 0.1),
        (&neural, "mlp", 0.1),
    ];
    for (service, algorithm, floor) in regressors {
        let body = json!({"dataset": "wine", "algorithm": algorithm, "params": {"task": "regression"}, "validation": {"kfold": 3}});
        let job = train(service, &format!("wine-{algorithm}"), body).await;
        assert_eq!(job["state"], "succeeded", "{algorithm}: {job}");
        let r2 = job["metrics"]["r2"].as_f64().unwrap();
        assert!(r2 > floor, "{algorithm} r2 {r2}");
        assert!(
            job["metrics"]["rmse"].as_f64().unwrap() > 0.0
                && job["metrics"]["mae"].as_f64().is_some()
        );
    }

    // Serving: a [batch, n_features] tensor, agreeing with the row's label on most rows.
    let rows = spambase();
    let batch: Vec<&(Vec<f64>, i64)> = rows.iter().step_by(40).collect();
    let request = json!({"id": "r1", "inputs": [{"name": "input", "shape": [batch.len(), 57], "datatype": "FP64",
        "data": batch.iter().flat_map(|(x, _)| x.clone()).collect::<Vec<_>>()}], "parameters": {"probabilities": true}});
    let (status, answer) = post(
        &format!("{trees}/v2/models/spam-random_forest/infer"),
        &request,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["id"].as_str(), answer["model_version"].as_str()),
        (Some("r1"), Some("1"))
    );
    let label = answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "label")
        .unwrap();
    assert_eq!(label["datatype"], "INT64");
    let right = label["data"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&batch)
        .filter(|(p, (_, y))| p.as_i64() == Some(*y))
        .count();
    assert!(
        right * 10 >= batch.len() * 9,
        "{right} of {} right",
        batch.len()
    );
    let probabilities = answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "probabilities")
        .unwrap();
    assert_eq!(probabilities["parameters"]["classes"], json!(["0", "1"]));
    assert_eq!(probabilities["shape"], json!([batch.len(), 2]));
    for pair in probabilities["data"].as_array().unwrap().chunks(2) {
        assert!((pair[0].as_f64().unwrap() + pair[1].as_f64().unwrap() - 1.0).abs() < 1e-9);
    }

    // NVIDIA's tritonclient, with JSON tensors and with its default binary tensor extension.
    let rows_json = serde_json::to_string(
        &batch
            .iter()
            .take(5)
            .map(|(x, _)| x.clone())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let out = tokio::process::Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tritonclient_check.py"))
        .args([
            trees.trim_start_matches("http://"),
            "spam-random_forest",
            &rows_json,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "tritonclient: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let triton: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours: Vec<Value> = label["data"].as_array().unwrap()[..5].to_vec();
    assert_eq!(triton["json"]["label"], json!(ours), "{triton}");
    assert_eq!(triton["binary"]["label"], json!(ours), "{triton}");
    assert_eq!(triton["inputs"].as_array().unwrap().len(), 57);

    // Per-column inputs on a model with a text feature, a boolean, and missing values.
    let job = train(&trees, "mixed", json!({"dataset": "mixed", "algorithm": "gradient_boosting", "params": {"min_samples_leaf": 2}})).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let (_, metadata) = get_json(&format!("{trees}/v2/models/mixed")).await;
    assert_eq!(
        metadata["inputs"].as_array().unwrap().len(),
        3,
        "{metadata}"
    );
    let columns = json!({"inputs": [
        {"name": "colour", "shape": [2], "datatype": "BYTES", "data": ["blue", "red"]},
        {"name": "size", "shape": [2], "datatype": "FP64", "data": [1.0, 2.0]},
        {"name": "fresh", "shape": [2], "datatype": "BOOL", "data": [true, false]}]});
    let (status, answer) = post(&format!("{trees}/v2/models/mixed/infer"), &columns).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outputs"][0]["data"], json!(["big", "small"]));
    // The first call measured the model's cost on the blocking pool; calls that cheap now
    // run inline, with the same answers.
    for _ in 0..3 {
        let (status, again) = post(&format!("{trees}/v2/models/mixed/infer"), &columns).await;
        assert_eq!((status, &again["outputs"]), (200, &answer["outputs"]));
    }
    let text = get_text(&format!("{trees}/metrics")).await;
    let predictions = |on: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("mlmesh_model_predictions_total")
                    && l.contains(&format!("on=\"{on}\""))
            })
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert!(predictions("pool") >= 1.0, "{text}");
    assert!(predictions("inline") >= 3.0, "{text}");
    // A second version; version 1 stays servable.
    let job = train(
        &trees,
        "mixed",
        json!({"dataset": "mixed", "algorithm": "decision_tree"}),
    )
    .await;
    assert_eq!(job["version"], 2, "{job}");
    let (status, answer) = post(
        &format!("{trees}/v2/models/mixed/versions/1/infer"),
        &columns,
    )
    .await;
    assert_eq!(
        (status, answer["model_version"].as_str()),
        (200, Some("1")),
        "{answer}"
    );
    let (_, detail) = get_json(&format!("{trees}/v1/models/mixed")).await;
    assert_eq!(detail["versions"].as_array().unwrap().len(), 2);
    assert_eq!(detail["latest"]["algorithm"], "decision_tree");

    // The artifact: the documented format, self-contained.
    let (status, artifact) =
        get_json(&format!("{trees}/v1/models/mixed/versions/1/artifact")).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            artifact["format"].as_str(),
            artifact["format_version"].as_u64()
        ),
        (Some("mlmesh.model"), Some(1))
    );
    assert_eq!(artifact["estimator"]["kind"], "boosting");

    // The same seed makes the same model.
    for _ in 0..2 {
        let body = json!({"dataset": "mixed", "algorithm": "random_forest", "seed": 7, "params": {"n_estimators": 20}});
        assert_eq!(train(&trees, "repeat", body).await["state"], "succeeded");
    }
    let (_, first) = get_json(&format!("{trees}/v1/models/repeat/versions/1/artifact")).await;
    let (_, second) = get_json(&format!("{trees}/v1/models/repeat/versions/2/artifact")).await;
    assert_eq!(first["estimator"], second["estimator"]);

    // Replicas publish what they serve.
    let registry = endpoints["registry"].as_str().unwrap();
    let (_, instances) = get_json(&format!("{registry}/v1/services/model-trees/instances")).await;
    let models = instances["instances"][0]["metadata"]["models"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        models.contains(&json!("mixed")) && models.contains(&json!("spam-random_forest")),
        "{instances}"
    );

    // A second replica shares the store: it serves what the first trained, and what is
    // trained through it reaches the first by itself.
    let control = super::Control {
        url: endpoints["control"].as_str().unwrap().to_string(),
        key: std::fs::read_to_string(data_dir.join("admin.key"))
            .unwrap()
            .trim()
            .to_string(),
    };
    let (status, replica) = control
        .call(
            reqwest::Method::POST,
            "/v1/replicas",
            Some(json!({"service": "model-trees"})),
        )
        .await;
    assert_eq!(status, 201, "{replica}");
    let second = replica["url"].as_str().unwrap().to_string();
    // It loaded the models before it began to answer: its first callers wait for none.
    let text = eventually(WAIT, "second replica answers", || async {
        let response = http().get(format!("{second}/metrics")).send().await.ok()?;
        response.text().await.ok()
    })
    .await;
    let loads = text
        .lines()
        .find_map(|l| l.strip_prefix("mlmesh_model_loads_total"))
        .and_then(|rest| rest.split_whitespace().last()?.parse::<f64>().ok());
    assert!(
        loads >= Some(models.len() as f64),
        "{loads:?} of {models:?}"
    );
    let answer = eventually(WAIT, "second replica serves", || async {
        let (status, answer) = post(&format!("{second}/v2/models/mixed/infer"), &columns).await;
        (status == 200).then_some(answer)
    })
    .await;
    assert_eq!(answer["model_version"], "2", "{answer}");
    let job = train(
        &second,
        "shared",
        json!({"dataset": "mixed", "algorithm": "decision_tree"}),
    )
    .await;
    assert_eq!(job["state"], "succeeded", "{job}");
    eventually(WAIT, "first replica loads the new model", || async {
        let (status, _) = post(&format!("{trees}/v2/models/shared/infer"), &columns).await;
        (status == 200).then_some(())
    })
    .await;
    let (_, job_seen_by_first) =
        get_json(&format!("{trees}/v1/jobs/{}", job["job"].as_str().unwrap())).await;
    assert_eq!(job_seen_by_first["state"], "succeeded");

    // The dashboard shows them too.
    let dashboard = endpoints["dashboard"].as_str().unwrap();
    let overview = eventually(WAIT, "dashboard lists models", || async {
        let (_, overview) = get_json(&format!("{dashboard}/v1/overview")).await;
        overview["services"]["model-trees"][0]["models"]
            .as_array()
            .is_some_and(|m| m.contains(&json!("mixed")))
            .then_some(overview)
    })
    .await;
    assert!(
        overview["services"]["data"][0].get("models").is_none(),
        "{overview}"
    );
    // And what the autoscaler measures and decides, beside the instances.
    let overview = eventually(WAIT, "dashboard shows the autoscaler's view", || async {
        let (_, overview) = get_json(&format!("{dashboard}/v1/overview")).await;
        overview["autoscaler"]["load"]["services"]["model-trees"]["cpu_cores"]
            .is_number()
            .then_some(overview)
    })
    .await;
    let view = &overview["autoscaler"];
    assert!(view["scaling"]["targets"].is_array(), "{view}");
    assert!(view["anomalies"]["events"].is_array(), "{view}");
    assert!(view["abuse"]["throttled"].is_array(), "{view}");
    let page = get_text(dashboard).await;
    assert!(page.contains("function autoscaler("));

    bad_input_is_refused(&trees, &linear).await;
    cli_trains_and_predicts(&data_dir).await;
    onnx_imports_match_scikit_learn(&onnx, dir.path()).await;

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(up.id().unwrap()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    tokio::time::timeout(WAIT, up.wait())
        .await
        .unwrap()
        .unwrap();
}

async fn bad_input_is_refused(trees: &str, linear: &str) {
    let train_url = format!("{trees}/v1/models/x/train");
    let cases = [
        (
            json!({"dataset": "spam", "algorithm": "deep_forest"}),
            400,
            "unknown algorithm",
        ),
        (
            json!({"dataset": "spam", "algorithm": "ridge"}),
            400,
            "family mismatch",
        ),
        (
            json!({"dataset": "spam", "algorithm": "random_forest", "params": {"trees": 3}}),
            400,
            "unknown parameter",
        ),
        (
            json!({"dataset": "spam", "algorithm": "random_forest", "params": {"n_estimators": 0}}),
            400,
            "out of range",
        ),
        (
            json!({"dataset": "spam", "algorithm": "random_forest", "params": {"task": "sorting"}}),
            400,
            "bad task",
        ),
        (
            json!({"dataset": "nope", "algorithm": "random_forest"}),
            404,
            "unknown dataset",
        ),
        (
            json!({"dataset": "spam", "dataset_version": "99", "algorithm": "random_forest"}),
            404,
            "unknown version",
        ),
        (
            json!({"dataset": "spam", "algorithm": "random_forest", "target": "nope"}),
            400,
            "unknown target",
        ),
        (
            json!({"dataset": "spam", "algorithm": "random_forest", "validation": {"kfold": 1}}),
            400,
            "bad kfold",
        ),
        (
            json!({"dataset": "spam", "algorithm": "random_forest", "validation": {"holdout": 1.5}}),
            400,
            "bad holdout",
        ),
        (
            json!({"dataset": "spam", "algorithm": "random_forest", "surprise": 1}),
            400,
            "unknown field",
        ),
    ];
    for (body, want, what) in cases {
        let (status, answer) = post(&train_url, &body).await;
        assert_4xx(status, &answer, want, what);
    }
    // A target unusable for the task: text target for a regressor, numeric for a classifier-only.
    let (status, answer) = post(
        &format!("{linear}/v1/models/x/train"),
        &json!({"dataset": "mixed", "algorithm": "ridge"}),
    )
    .await;
    assert_4xx(status, &answer, 400, "text target for ridge");
    let (status, answer) = post(
        &format!("{linear}/v1/models/x/train"),
        &json!({"dataset": "mixed", "algorithm": "ridge", "params": {"task": "regression"}}),
    )
    .await;
    assert_4xx(status, &answer, 400, "regression on text");
    let (status, answer) = post(
        &format!("{linear}/v1/models/x/train"),
        &json!({"dataset": "wine", "algorithm": "gaussian_nb", "target": "alcohol"}),
    )
    .await;
    assert_4xx(status, &answer, 400, "classifier on a float target");
    // Nothing was created by any of them.
    let (_, models) = get_json(&format!("{trees}/v1/models")).await;
    assert!(
        models["models"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["name"] != "x"),
        "{models}"
    );

    let infer = format!("{trees}/v2/models/spam-random_forest/infer");
    let tensor = |shape: Value, datatype: &str, data: Value| json!({"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}]});
    let row: Vec<f64> = vec![0.0; 57];
    let cases = [
        (
            tensor(json!([1, 56]), "FP64", json!(vec![0.0; 56])),
            400,
            "wrong column count",
        ),
        (
            tensor(json!([1, 57]), "FP64", json!(vec![0.0; 56])),
            400,
            "shape and data disagree",
        ),
        (
            tensor(json!([1, 57]), "BYTES", json!(vec!["a"; 57])),
            400,
            "wrong datatype",
        ),
        (
            tensor(json!([1, 57]), "INT32", json!(vec![0.5; 57])),
            400,
            "fractions in an integer tensor",
        ),
        (
            json!({"inputs": [{"name": "no_such_column", "shape": [1], "datatype": "FP64", "data": [1.0]}]}),
            400,
            "unknown column name",
        ),
        (json!({"inputs": []}), 400, "no inputs"),
        (
            json!({"inputs": [{"name": "input", "shape": [1, 57], "datatype": "FP64", "data": row}], "outputs": [{"name": "logits"}]}),
            400,
            "unknown output",
        ),
        (
            tensor(json!([501, 57]), "FP64", json!(vec![0.0; 501 * 57])),
            413,
            "batch over the limit",
        ),
    ];
    for (body, want, what) in cases {
        let (status, answer) = post(&infer, &body).await;
        assert_4xx(status, &answer, want, what);
    }
    // A body over model.max_request_bytes, and a binary part that does not add up.
    let huge = format!("{{\"inputs\": [], \"pad\": \"{}\"}}", "x".repeat(1_100_000));
    let response = http().post(&infer).body(huge).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let response = http()
        .post(&infer)
        .header("inference-header-content-length", "999")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    // NaN and infinity cannot be written in JSON; a text stand-in is refused like any non-number.
    let response = http().post(&infer).header("content-type", "application/json")
        .body(format!("{{\"inputs\":[{{\"name\":\"input\",\"shape\":[1,57],\"datatype\":\"FP64\",\"data\":[NaN{}]}}]}}", ",0".repeat(56)))
        .send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let (status, answer) = post(
        &format!("{trees}/v2/models/missing/infer"),
        &tensor(json!([1, 57]), "FP64", json!(row)),
    )
    .await;
    assert_4xx(status, &answer, 404, "unknown model");
    let (status, answer) = post(
        &format!("{trees}/v2/models/spam-random_forest/versions/9/infer"),
        &tensor(json!([1, 57]), "FP64", json!(row)),
    )
    .await;
    assert_4xx(status, &answer, 404, "unknown version");
    let (status, answer) = get_json(&format!("{trees}/v1/jobs/nope")).await;
    assert_4xx(status, &answer, 404, "unknown job");
}

async fn cli_trains_and_predicts(data_dir: &Path) {
    let run = |args: &[&str]| {
        let mut command = mlmesh();
        command
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("MLMESH_GATEWAY");
        async move { command.output().await.unwrap() }
    };
    let out = run(&[
        "train",
        "--dataset",
        "mixed",
        "--algorithm",
        "logistic_regression",
        "--model",
        "cli-lr",
        "--param",
        "C=0.5",
        "--kfold",
        "3",
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("cli-lr version 1") && text.contains("accuracy"),
        "{text}"
    );
    let csv = data_dir.join("rows.csv");
    std::fs::write(
        &csv,
        "kind,colour,size,fresh\n?,blue,3,true\n?,red,1,false\n",
    )
    .unwrap();
    let out = run(&[
        "predict",
        "--model",
        "cli-lr",
        "--csv",
        csv.to_str().unwrap(),
        "--probabilities",
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let labels: Vec<&str> = text
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(labels, vec!["big", "small"], "{text}");

    // An ensemble from the CLI, predicted from CSV and load-tested with `bench --json`.
    let out = run(&[
        "ensemble",
        "create",
        "cli-vote",
        "--method",
        "hard_vote",
        "--member",
        "cli-lr@1",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "predict",
        "--model",
        "cli-vote",
        "--csv",
        csv.to_str().unwrap(),
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let voted: Vec<&str> = text
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(voted, labels, "a one-member vote agrees with its member");
    let request = r#"{"inputs": [{"name": "colour", "shape": [1], "datatype": "BYTES", "data": ["red"]},
        {"name": "size", "shape": [1], "datatype": "FP64", "data": [1]},
        {"name": "fresh", "shape": [1], "datatype": "BOOL", "data": [false]}]}"#;
    for target in [
        &["--model", "cli-vote"][..],
        &["--model", "cli-lr", "--direct"][..],
    ] {
        let mut args = vec![
            "bench",
            "--duration",
            "300ms",
            "--users",
            "2",
            "--warmup",
            "5",
            "--json",
            "--request",
            request,
        ];
        args.extend_from_slice(target);
        let out = run(&args).await;
        assert!(
            out.status.success(),
            "bench {target:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        for key in [
            "target",
            "model",
            "users",
            "duration_s",
            "requests",
            "errors",
            "rps",
        ] {
            assert!(!report[key].is_null(), "bench --json lacks {key}: {report}");
        }
        assert!(
            report["requests"].as_u64().unwrap() > 0 && report["errors"] == 0,
            "{report}"
        );
        for key in ["avg", "p50", "p90", "p99", "max"] {
            assert!(
                report["latency_ms"][key].as_f64().unwrap() > 0.0,
                "{report}"
            );
        }
    }
    let out = run(&[
        "ensemble", "create", "cli-bad", "--method", "mean", "--member", "cli-lr",
    ])
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("soft_vote"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run(&[
        "train",
        "--dataset",
        "mixed",
        "--algorithm",
        "mlp",
        "--model",
        "cli-bad",
        "--param",
        "alpha=-1",
    ])
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("alpha"));
}

/// Models made by skl2onnx in the test's set-up, imported, and answering what scikit-learn does.
async fn onnx_imports_match_scikit_learn(onnx: &str, dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make_onnx_models.py");
    let out_dir: PathBuf = dir.join("onnx");
    let made = tokio::process::Command::new(python())
        .arg(&script)
        .arg(&out_dir)
        .output()
        .await
        .unwrap();
    assert!(
        made.status.success(),
        "the ONNX test models need Python with scikit-learn and skl2onnx (scripts/test installs them; MLMESH_PYTHON names the interpreter): {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let expected: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("expected.json")).unwrap()).unwrap();
    for (name, case) in expected.as_object().unwrap() {
        let bytes = std::fs::read(out_dir.join(format!("{name}.onnx"))).unwrap();
        let response = http()
            .post(format!("{onnx}/v1/models/{name}/import?format=onnx"))
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status().as_u16(),
            201,
            "{name}: {}",
            response.text().await.unwrap()
        );
        let x = case["x"].as_array().unwrap();
        let width = x[0].as_array().unwrap().len();
        let request = json!({"inputs": [{"name": "input", "shape": [x.len(), width], "datatype": "FP32", "data": x}],
            "parameters": {"probabilities": true}});
        let (status, answer) = post(&format!("{onnx}/v2/models/{name}/infer"), &request).await;
        assert_eq!(status, 200, "{name}: {answer}");
        let output = |n: &str| {
            answer["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["name"] == n)
                .cloned()
        };
        if let Some(want) = case.get("proba") {
            let got = output("probabilities").unwrap();
            let want: Vec<f64> = want
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
                .collect();
            let got: Vec<f64> = got["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(got.len(), want.len(), "{name}");
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() < 1e-4,
                    "{name}: probabilities {got:?} vs scikit-learn {want:?}"
                );
            }
            let labels: Vec<i64> = output("label").unwrap()["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            let want_labels: Vec<i64> = case["label"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            assert_eq!(labels, want_labels, "{name}");
        } else {
            let got: Vec<f64> = output("value").unwrap()["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            for (g, w) in got.iter().zip(case["value"].as_array().unwrap()) {
                let w = w.as_f64().unwrap();
                assert!(
                    (g - w).abs() < 1e-3 * w.abs().max(1.0),
                    "{name}: {got:?} vs scikit-learn {w}"
                );
            }
        }
    }
    let response = http()
        .post(format!("{onnx}/v1/models/corrupt/import?format=onnx"))
        .body(b"\x08\x07not really onnx".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let response = http()
        .post(format!("{onnx}/v1/models/corrupt/import?format=pickle"))
        .body(b"x".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let (status, _) = get_json(&format!("{onnx}/v1/models/corrupt")).await;
    assert_eq!(status, 404, "a refused import leaves nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_training_fails_the_job_and_keeps_acknowledged_versions() {
    let dir = tempfile::tempdir().unwrap();
    let (_data_child, data) = super::serve_data(&dir.path().join("data")).await;
    upload(
        &data,
        "spam",
        "target=column_58",
        std::fs::read(mlmesh_testkit::shared_data(
            "tabular/spambase/spambase.data",
        ))
        .unwrap(),
    )
    .await;
    let models = dir.path().join("models");
    let data_url = format!("model.data_url={data}");
    let args = [
        "serve",
        "model",
        "--family",
        "trees",
        "--instance-id",
        "trees-1",
        "--set",
        data_url.as_str(),
        "--set",
        "model.queue_capacity=1",
    ];
    let (child, trees) = super::serve_service(&args, &models).await;
    let done = train(
        &trees,
        "quick",
        json!({"dataset": "spam", "algorithm": "decision_tree"}),
    )
    .await;
    assert_eq!(done["state"], "succeeded");
    let (status, job) = post(
        &format!("{trees}/v1/models/slow/train"),
        &json!({"dataset": "spam", "algorithm": "random_forest", "params": {"n_estimators": 5000}}),
    )
    .await;
    assert_eq!(status, 202);
    let id = job["job"].as_str().unwrap().to_string();
    wait_for_state(&trees, &id, "running").await;
    // One job may wait behind the running one; the next is told to come back later.
    let slow =
        json!({"dataset": "spam", "algorithm": "random_forest", "params": {"n_estimators": 5000}});
    let (status, queued) = post(&format!("{trees}/v1/models/queued/train"), &slow).await;
    assert_eq!(
        (status, queued["state"].as_str()),
        (202, Some("queued")),
        "{queued}"
    );
    let response = http()
        .post(format!("{trees}/v1/models/refused/train"))
        .json(&slow)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert!(response.headers().contains_key("retry-after"));
    kill9(&child);
    let (_child, trees) = super::serve_service(&args, &models).await;
    // A cancel stops a running job; it leaves no version either.
    let (_, running) = post(
        &format!("{trees}/v1/models/cancelled/train"),
        &json!({"dataset": "spam", "algorithm": "random_forest", "params": {"n_estimators": 5000}}),
    )
    .await;
    let cancelled_id = running["job"].as_str().unwrap().to_string();
    wait_for_state(&trees, &cancelled_id, "running").await;
    let (status, _) = post(
        &format!("{trees}/v1/jobs/{cancelled_id}/cancel"),
        &json!({}),
    )
    .await;
    assert_eq!(status, 200);
    let job = wait_for_state(&trees, &cancelled_id, "cancelled").await;
    assert!(job["version"].is_null(), "{job}");
    let (status, _) = get_json(&format!("{trees}/v1/models/cancelled")).await;
    assert_eq!(status, 404);
    let (_, job) = get_json(&format!("{trees}/v1/jobs/{id}")).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap().contains("interrupted"),
        "{job}"
    );
    let (status, _) = get_json(&format!("{trees}/v1/models/slow")).await;
    assert_eq!(status, 404, "no half-written version");
    let (_, queued) = get_json(&format!(
        "{trees}/v1/jobs/{}",
        queued["job"].as_str().unwrap()
    ))
    .await;
    assert_eq!(
        queued["state"], "failed",
        "a job queued at the kill is failed too: {queued}"
    );
    let (_, detail) = get_json(&format!("{trees}/v1/models/quick")).await;
    assert_eq!(detail["latest"]["version"], 1, "{detail}");
    let row = json!({"inputs": [{"name": "input", "shape": [1, 57], "datatype": "FP64", "data": vec![0.0; 57]}]});
    let (status, answer) = post(&format!("{trees}/v2/models/quick/infer"), &row).await;
    assert_eq!(status, 200, "{answer}");
}
