//! The gateway end to end, every service a real `mlmesh serve` process: keys and roles, rate
//! limits and usage, routing, ensembles (and every way to define one wrongly), retries onto
//! another replica, a quorum answer with a member's service killed, tritonclient through the
//! gateway, and MLServer as a foreign member.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use mlmesh_testkit::{eventually, get_json, get_text, http};
use serde_json::{Value, json};

use super::{WAIT, kill9, serve_service};

struct Gateway {
    url: String,
}

impl Gateway {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut request = http().request(method, format!("{}{path}", self.url));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (
            status,
            response.json().await.unwrap_or(Value::Null),
            headers,
        )
    }
    async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        let (s, v, _) = self.call(reqwest::Method::GET, path, Some(key), None).await;
        (s, v)
    }
    async fn post(&self, path: &str, key: &str, body: &Value) -> (u16, Value) {
        let (s, v, _) = self
            .call(reqwest::Method::POST, path, Some(key), Some(body))
            .await;
        (s, v)
    }
    async fn put(&self, path: &str, key: &str, body: &Value) -> (u16, Value) {
        let (s, v, _) = self
            .call(reqwest::Method::PUT, path, Some(key), Some(body))
            .await;
        (s, v)
    }
}

fn assert_error(status: u16, body: &Value, want: u16, what: &str) {
    assert_eq!(status, want, "{what}: {body}");
    assert!(
        body["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
}

/// Red wine: 11 features, quality (3..8) as classes.
fn wine() -> (Vec<u8>, Vec<Vec<f64>>) {
    let path = mlmesh_testkit::shared_data("tabular/wine_quality/winequality-red.csv");
    let bytes = std::fs::read(&path).unwrap();
    let rows = String::from_utf8_lossy(&bytes)
        .lines()
        .skip(1)
        .take(40)
        .map(|l| l.split(';').take(11).map(|v| v.parse().unwrap()).collect())
        .collect();
    (bytes, rows)
}

fn request(rows: &[Vec<f64>], probabilities: bool) -> Value {
    let mut body = json!({"inputs": [{"name": "input", "shape": [rows.len(), 11], "datatype": "FP64", "data": rows}]});
    if probabilities {
        body["outputs"] = json!([{"name": "label"}, {"name": "probabilities"}]);
    }
    body
}

async fn train(gw: &Gateway, key: &str, model: &str, algorithm: &str, params: Value) {
    let (status, job) = gw
        .post(
            &format!("/v1/models/{model}/train"),
            key,
            &json!({"dataset": "wine", "algorithm": algorithm, "params": params, "seed": 1}),
        )
        .await;
    assert_eq!(status, 202, "train {model}: {job}");
    let id = job["job"].as_str().unwrap().to_string();
    let done = eventually(Duration::from_secs(240), "training", || async {
        let (_, job) = gw.get(&format!("/v1/jobs/{id}"), key).await;
        matches!(job["state"].as_str(), Some("succeeded" | "failed")).then_some(job)
    })
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    eventually(WAIT, "model routable", || async {
        (gw.get(&format!("/v2/models/{model}/ready"), key).await.0 == 200).then_some(())
    })
    .await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_guards_routes_and_combines_members() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_registry, registry) =
        serve_service(&["serve", "registry", "--set", "registry.ttl_ms=3000"], d).await;
    let with = |service: &'static str| vec!["serve", service, "--registry"];
    let mut args = with("data");
    args.push(&registry);
    let (_data, _) = serve_service(&args, d).await;
    let mut args = with("model-trees");
    args.push(&registry);
    let (trees_a, _) = serve_service(&args, d).await;
    let (_trees_b, _) = serve_service(&args, d).await;
    let mut args = with("model-linear");
    args.push(&registry);
    let (linear, _) = serve_service(&args, d).await;
    let admin = "mlm_test_admin_key_0123456789";
    std::fs::write(d.join("admin.key"), format!("{admin}\n")).unwrap();
    let admin_file = format!("gateway.admin_key_file={}", d.join("admin.key").display());
    let mut args = with("gateway");
    args.extend([
        registry.as_str(),
        "--set",
        &admin_file,
        "--set",
        "gateway.flush_ms=100",
        "--set",
        "gateway.max_request_bytes=200000",
    ]);
    let (_gateway, url) = serve_service(&args, d).await;
    let gw = Gateway { url };
    eventually(WAIT, "gateway sees the model services", || async {
        let (_, list) = gw.get("/v1/algorithms", admin).await;
        (list["algorithms"].as_array().map_or(0, Vec::len) >= 6).then_some(())
    })
    .await;

    // Keys: nothing but health and metrics without one.
    assert_eq!(
        get_json(&format!("{}/v2/health/ready", gw.url)).await.0,
        200
    );
    assert_eq!(
        http()
            .get(format!("{}/metrics", gw.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for path in [
        "/v1/models",
        "/v2/models/x/infer",
        "/openapi.json",
        "/v1/keys",
        "/v2",
    ] {
        let (status, body, _) = gw.call(reqwest::Method::GET, path, None, None).await;
        assert_error(status, &body, 401, &format!("no key on {path}"));
        let (status, body, _) = gw
            .call(reqwest::Method::GET, path, Some("mlm_wrong"), None)
            .await;
        assert_error(status, &body, 401, &format!("wrong key on {path}"));
    }
    let (status, trainer) = gw.post("/v1/keys", admin, &json!({"role": "train"})).await;
    assert_eq!(status, 201, "{trainer}");
    let trainer = trainer["key"].as_str().unwrap().to_string();
    let (_, predictor) = gw
        .post(
            "/v1/keys",
            admin,
            &json!({"role": "predict", "rate_per_s": 4, "name": "app"}),
        )
        .await;
    let predictor_id = predictor["id"].as_str().unwrap().to_string();
    let predictor = predictor["key"].as_str().unwrap().to_string();
    for (body, what) in [
        (json!({"role": "root"}), "unknown role"),
        (json!({"role": "predict", "rate_per_s": 0}), "zero rate"),
        (json!({"role": "predict", "extra": 1}), "unknown field"),
    ] {
        let (status, body) = gw.post("/v1/keys", admin, &body).await;
        assert_error(status, &body, 400, what);
    }
    let (_, keys) = gw.get("/v1/keys", admin).await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 3, "{keys}");
    assert!(
        !keys.to_string().contains(&trainer),
        "keys are never listed"
    );
    let (status, body) = gw.get("/v1/keys", &trainer).await;
    assert_error(status, &body, 403, "train key lists keys");

    // Data and training through the gateway, with the train key.
    let (wine_csv, rows) = wine();
    let response = http()
        .post(format!(
            "{}/v1/datasets/wine?format=csv&target=quality",
            gw.url
        ))
        .bearer_auth(&predictor)
        .body(wine_csv.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403, "a predict key cannot upload");
    let response = http()
        .post(format!(
            "{}/v1/datasets/wine?format=csv&target=quality",
            gw.url
        ))
        .bearer_auth(&trainer)
        .body(wine_csv)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    train(
        &gw,
        &trainer,
        "wine-rf",
        "random_forest",
        json!({"n_estimators": 30}),
    )
    .await;
    train(
        &gw,
        &trainer,
        "wine-gb",
        "gradient_boosting",
        json!({"n_estimators": 30}),
    )
    .await;
    train(&gw, &trainer, "wine-lr", "logistic_regression", json!({})).await;
    let (status, body) = gw
        .post(
            "/v1/models/x/train",
            &trainer,
            &json!({"dataset": "wine", "algorithm": "magic"}),
        )
        .await;
    assert_error(status, &body, 400, "unknown algorithm");
    let (status, body) = gw
        .post(
            "/v1/models/x/train",
            &trainer,
            &json!({"dataset": "wine", "algorithm": "ridge", "keep_oof": true}),
        )
        .await;
    assert_error(status, &body, 400, "out-of-fold predictions without k-fold");
    let (_, models) = gw.get("/v1/models", &predictor).await;
    assert_eq!(models["models"].as_array().unwrap().len(), 3, "{models}");

    // Inference, web and mobile.
    let (status, answer) = gw
        .post(
            "/v2/models/wine-rf/infer",
            &predictor,
            &request(&rows[..3], true),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outputs"][1]["shape"], json!([3, 6]));
    let (status, mobile) = gw
        .post(
            "/mobile/v2/models/wine-rf/infer",
            &trainer,
            &request(&rows[..3], false),
        )
        .await;
    assert_eq!(status, 200, "{mobile}");
    let predictions = mobile["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 3);
    assert_eq!(predictions[0]["label"], answer["outputs"][0]["data"][0]);
    let top = answer["outputs"][1]["data"].as_array().unwrap()[..6]
        .iter()
        .map(|v| v.as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(predictions[0]["probability"].as_f64().unwrap(), top);

    // Ensembles: the soft vote is the mean of the members' probabilities.
    let members = ["wine-rf", "wine-gb", "wine-lr"];
    let (status, defined) = gw
        .put("/v1/ensembles/wine-soft", &trainer, &json!({"method": "soft_vote", "members": members.iter().map(|m| json!({"model": m})).collect::<Vec<_>>()}))
        .await;
    assert_eq!(status, 201, "{defined}");
    assert_eq!(defined["classes"], json!(["3", "4", "5", "6", "7", "8"]));
    let mut mean = vec![0.0; rows.len() * 6];
    let mut votes = vec![[0usize; 6]; rows.len()];
    for m in members {
        let (_, a) = gw
            .post(
                &format!("/v2/models/{m}/infer"),
                &trainer,
                &request(&rows, true),
            )
            .await;
        let classes: Vec<String> = a["outputs"][1]["parameters"]["classes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        assert_eq!(classes, ["3", "4", "5", "6", "7", "8"]);
        for (i, p) in a["outputs"][1]["data"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            mean[i] += p.as_f64().unwrap() / 3.0;
        }
        for (row, label) in a["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            votes[row][label.as_i64().unwrap() as usize - 3] += 1;
        }
    }
    let (status, soft) = gw
        .post(
            "/v2/models/wine-soft/infer",
            &predictor,
            &request(&rows, true),
        )
        .await;
    assert_eq!(status, 200, "{soft}");
    for (got, want) in soft["outputs"][1]["data"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&mean)
    {
        assert!(
            (got.as_f64().unwrap() - want).abs() < 1e-12,
            "{got} vs {want}"
        );
    }
    let reports = soft["parameters"]["members"].as_array().unwrap();
    assert!(reports.iter().all(|r| r["answered"] == true), "{soft}");
    let (status, _) = gw.put("/v1/ensembles/wine-hard", &trainer, &json!({"method": "hard_vote", "members": [{"model": "wine-rf"}, {"model": "wine-gb"}, {"model": "wine-lr"}]})).await;
    assert_eq!(status, 201);
    tokio::time::sleep(Duration::from_millis(300)).await; // the predict key's rate
    let (status, hard) = gw
        .post(
            "/v2/models/wine-hard/infer",
            &trainer,
            &request(&rows, false),
        )
        .await;
    assert_eq!(status, 200, "{hard}");
    for (row, label) in hard["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let best = (0..6).fold(0, |b, i| if votes[row][i] > votes[row][b] { i } else { b });
        assert_eq!(
            label.as_i64().unwrap() as usize - 3,
            best,
            "row {row}: {:?}",
            votes[row]
        );
    }
    let (status, _) = gw.put("/v1/ensembles/wine-weighted", &trainer, &json!({"method": "weighted_vote", "members": [{"model": "wine-rf", "weight": 3}, {"model": "wine-lr", "weight": 1}]})).await;
    assert_eq!(status, 201);
    let (_, weighted) = gw
        .post(
            "/v2/models/wine-weighted/infer",
            &trainer,
            &request(&rows[..5], false),
        )
        .await;
    let (_, rf) = gw
        .post(
            "/v2/models/wine-rf/infer",
            &trainer,
            &request(&rows[..5], false),
        )
        .await;
    assert_eq!(
        weighted["outputs"][0]["data"], rf["outputs"][0]["data"],
        "the heavy member decides"
    );

    // Stacking: each member refitted per fold by its own service; the meta-model learns from
    // every row's out-of-fold prediction.
    let (status, stacked) = gw
        .put("/v1/ensembles/wine-stack", &trainer, &json!({"method": "stacking", "members": [{"model": "wine-rf"}, {"model": "wine-lr"}], "stacking": {"dataset": "wine", "kfold": 3}}))
        .await;
    assert_eq!(status, 201, "{stacked}");
    assert_eq!(stacked["stacking"]["rows"], 1599, "{stacked}");
    assert!(
        stacked["stacking"]["metrics"]["accuracy"].as_f64().unwrap() > 0.5,
        "{stacked}"
    );
    let (_, oof) = gw
        .get("/v1/models/wine-stack-oof-0/versions/1/oof", &trainer)
        .await;
    assert_eq!(
        oof["rows"].as_array().map(Vec::len),
        Some(1599),
        "one out-of-fold prediction per row"
    );
    assert_eq!(oof["columns"], 6);
    let (status, answer) = gw
        .post(
            "/v2/models/wine-stack/infer",
            &trainer,
            &request(&rows[..5], true),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outputs"][0]["shape"], json!([5]));
    assert_eq!(answer["parameters"]["method"], "stacking");
    let (status, body) = gw.put("/v1/ensembles/bad", &trainer, &json!({"method": "stacking", "members": [{"model": "wine-rf"}], "stacking": {"dataset": "nope"}})).await;
    assert_error(status, &body, 404, "stacking over an unknown dataset");

    // Ensembles defined wrongly change nothing.
    let bad = [
        (
            json!({"method": "soft_vote", "members": []}),
            400,
            "no members",
        ),
        (
            json!({"method": "best", "members": [{"model": "wine-rf"}]}),
            400,
            "unknown method",
        ),
        (
            json!({"method": "weighted_vote", "members": [{"model": "wine-rf", "weight": 1}, {"model": "wine-lr"}]}),
            400,
            "weights that do not match members",
        ),
        (
            json!({"method": "mean", "members": [{"model": "wine-rf"}]}),
            400,
            "classifiers averaged as values",
        ),
        (
            json!({"method": "hard_vote", "members": [{"model": "bad"}]}),
            400,
            "a cycle",
        ),
        (
            json!({"method": "hard_vote", "members": [{"model": "wine-soft"}]}),
            400,
            "an ensemble as a member",
        ),
        (
            json!({"method": "hard_vote", "members": [{"model": "nope"}]}),
            404,
            "unknown member",
        ),
        (
            json!({"method": "hard_vote", "members": [{"model": "x", "url": "http://127.0.0.1:1"}]}),
            400,
            "a foreign member that is not there",
        ),
        (
            json!({"method": "hard_vote", "members": [{"model": "wine-rf"}], "extra": true}),
            400,
            "an unknown field",
        ),
        (
            json!({"method": "hard_vote", "members": [{"model": "wine-rf"}], "policy": {"quorum": 2}}),
            400,
            "quorum over members",
        ),
    ];
    for (body, want, what) in bad {
        let (status, answer) = gw.put("/v1/ensembles/bad", &trainer, &body).await;
        assert_error(status, &answer, want, what);
    }
    let (status, body) = gw
        .put(
            "/v1/ensembles/wine-rf",
            &trainer,
            &json!({"method": "hard_vote", "members": [{"model": "wine-gb"}]}),
        )
        .await;
    assert_error(status, &body, 409, "an ensemble named like a model");
    let (status, body) = gw.get("/v1/ensembles/bad", &trainer).await;
    assert_error(status, &body, 404, "nothing was stored");
    let (status, body, _) = gw
        .call(
            reqwest::Method::DELETE,
            "/v1/ensembles/bad",
            Some(&trainer),
            None,
        )
        .await;
    assert_error(status, &body, 404, "deleting an unknown ensemble");
    let (status, body) = gw.get("/v1/models/wine-rf/versions/1/oof", &trainer).await;
    assert_error(
        status,
        &body,
        404,
        "out-of-fold predictions a version did not keep",
    );
    for (id, want) in [("admin", 409), ("key_nope", 404)] {
        let (status, body, _) = gw
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/keys/{id}"),
                Some(admin),
                None,
            )
            .await;
        assert_error(status, &body, want, &format!("deleting key {id}"));
    }
    let (status, body) = gw
        .put(
            "/v1/ensembles/x",
            &predictor,
            &json!({"method": "hard_vote", "members": [{"model": "wine-rf"}]}),
        )
        .await;
    assert_error(status, &body, 403, "a predict key defines an ensemble");

    // Bad inference requests.
    let (status, body) = gw
        .post(
            "/v2/models/nope/infer",
            &trainer,
            &request(&rows[..1], false),
        )
        .await;
    assert_error(status, &body, 404, "unknown model");
    for target in ["wine-rf", "wine-soft", "nope"] {
        let response = http()
            .post(format!("{}/v2/models/{target}/infer", gw.url))
            .bearer_auth(&trainer)
            .body("{broken")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "malformed body to {target}");
    }
    let (status, body) = gw.post("/v2/models/wine-soft/infer", &trainer, &json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]})).await;
    assert_error(status, &body, 400, "a tensor every member refuses");
    let huge = request(&vec![rows[0].clone(); 8000], false);
    for target in ["wine-rf", "wine-soft"] {
        let (status, body) = gw
            .post(&format!("/v2/models/{target}/infer"), &trainer, &huge)
            .await;
        assert_error(status, &body, 413, &format!("oversized body to {target}"));
    }

    // The predict key's rate limit, and usage.
    let mut limited = None;
    for _ in 0..12 {
        let (status, body, headers) = gw
            .call(
                reqwest::Method::POST,
                "/v2/models/wine-rf/infer",
                Some(&predictor),
                Some(&request(&rows[..2], false)),
            )
            .await;
        if status == 429 {
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .contains("4 requests per second"),
                "{body}"
            );
            limited = Some(headers["retry-after"].to_str().unwrap().to_string());
            break;
        }
    }
    assert_eq!(limited.as_deref(), Some("1"), "the 4/s key was limited");
    let usage = eventually(WAIT, "usage stored", || async {
        let (_, usage) = gw.get("/v1/usage", admin).await;
        usage["usage"]
            .as_array()?
            .iter()
            .find(|r| {
                r["key"] == predictor_id.as_str()
                    && r["model"] == "wine-rf"
                    && r["rows"].as_u64().unwrap_or(0) >= 5
            })
            .cloned()
    })
    .await;
    assert!(usage["requests"].as_u64().unwrap() >= 3, "{usage}");
    tokio::time::sleep(Duration::from_millis(1100)).await; // the predict key's rate again
    let (_, own) = gw.get("/v1/usage", &predictor).await;
    assert!(
        own["usage"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["key"] == predictor_id.as_str()),
        "{own}"
    );

    // tritonclient through the gateway, for a model and an ensemble, JSON and binary tensors.
    for target in ["wine-rf", "wine-soft"] {
        let output = tokio::process::Command::new(super::models::python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tritonclient_check.py"))
            .arg(gw.url.trim_start_matches("http://"))
            .arg(target)
            .arg(serde_json::to_string(&rows[..4]).unwrap())
            .arg(&trainer)
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "tritonclient {target}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let seen: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(seen["json"]["label"], seen["binary"]["label"], "{seen}");
        assert_eq!(
            seen["json"]["probabilities"].as_array().unwrap().len(),
            4,
            "{seen}"
        );
    }

    // A trees replica dies: calls that reached it are retried on the other one.
    kill9(&trees_a);
    // Concurrent calls, so that calls in flight spread the choice over both replicas.
    let calls = (0..20).map(|_| {
        let (url, key, body) = (gw.url.clone(), trainer.clone(), request(&rows[..1], false));
        tokio::spawn(async move {
            for _ in 0..5 {
                let response = http()
                    .post(format!("{url}/v2/models/wine-rf/infer"))
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
            }
        })
    });
    for call in futures_util::future::join_all(calls).await {
        call.unwrap();
    }
    let metrics = get_text(&format!("{}/metrics", gw.url)).await;
    let retried: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("mlmesh_upstream_retries_total{upstream=\"model-trees\"}"))
        .collect();
    assert_eq!(
        retried.len(),
        1,
        "retries counted: {}",
        metrics
            .lines()
            .filter(|l| l.starts_with("mlmesh_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        metrics.contains("mlmesh_circuit_breaker_state{"),
        "breaker states exported"
    );
    // Inference skips the router's stack but is counted under its route like any request,
    // carries a request id, and is refused without a key in the same words.
    assert!(
        metrics.contains(r#"http_requests_total{service="gateway",method="POST",route="/v2/models/{name}/infer",status="200"}"#),
        "inference counted under its route"
    );
    let infer = format!("{}/v2/models/wine-rf/infer", gw.url);
    let body = request(&rows[..1], false);
    let response = http()
        .post(&infer)
        .bearer_auth(&trainer)
        .header("x-request-id", "lane-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "lane-1");
    let response = http().post(&infer).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["x-request-id"].len(), 36, "a fresh UUID");
    let refusal: Value = response.json().await.unwrap();
    assert!(
        refusal["error"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{refusal}"
    );

    // The linear service dies: a 2-of-3 ensemble answers and says who did not.
    let (status, _) = gw
        .put("/v1/ensembles/wine-quorum", &trainer, &json!({"method": "soft_vote", "members": [{"model": "wine-rf"}, {"model": "wine-gb"}, {"model": "wine-lr"}], "policy": {"quorum": 2, "deadline_ms": 2000}}))
        .await;
    assert_eq!(status, 201);
    kill9(&linear);
    let (status, answer) = gw
        .post(
            "/v2/models/wine-quorum/infer",
            &trainer,
            &request(&rows[..2], false),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let reports = answer["parameters"]["members"].as_array().unwrap();
    let lr = reports.iter().find(|r| r["model"] == "wine-lr").unwrap();
    assert_eq!(lr["answered"], false, "{answer}");
    assert!(!lr["error"].as_str().unwrap().is_empty());
    let (status, body) = gw
        .post(
            "/v2/models/wine-soft/infer",
            &trainer,
            &request(&rows[..2], false),
        )
        .await;
    assert_error(status, &body, 503, "all three required");
    assert!(body["members"].as_array().is_some(), "{body}");

    // Deleting a key stops it at once.
    let (status, _, _) = gw
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/keys/{predictor_id}"),
            Some(admin),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _, _) = gw
        .call(reqwest::Method::GET, "/v1/models", Some(&predictor), None)
        .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlserver_is_a_foreign_ensemble_member() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_registry, registry) = serve_service(&["serve", "registry"], d).await;
    let (_data, _) = serve_service(&["serve", "data", "--registry", &registry], d).await;
    let (_trees, _) = serve_service(&["serve", "model-trees", "--registry", &registry], d).await;
    let admin = "mlm_test_admin_key_foreign";
    std::fs::write(d.join("admin.key"), admin).unwrap();
    let admin_file = format!("gateway.admin_key_file={}", d.join("admin.key").display());
    let (_gateway, url) = serve_service(
        &[
            "serve",
            "gateway",
            "--registry",
            &registry,
            "--set",
            &admin_file,
        ],
        d,
    )
    .await;
    let gw = Gateway { url };

    // MLServer with a scikit-learn forest trained on the same data.
    let csv = mlmesh_testkit::shared_data("tabular/wine_quality/winequality-red.csv");
    let folder = d.join("mlserver");
    std::fs::create_dir_all(&folder).unwrap();
    let port = free_port();
    let mut mlserver = tokio::process::Command::new(super::models::python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mlserver_member.py"))
        .arg(&folder)
        .args([
            port.to_string(),
            free_port().to_string(),
            free_port().to_string(),
        ])
        .arg(&csv)
        .arg("quality")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let foreign = format!("http://127.0.0.1:{port}");
    eventually(Duration::from_secs(120), "MLServer ready", || async {
        let answer = http()
            .get(format!("{foreign}/v2/models/sk-rf/ready"))
            .send()
            .await;
        answer.ok().filter(|r| r.status() == 200).map(|_| ())
    })
    .await;
    let classes: Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("classes.json")).unwrap())
            .unwrap();

    let response = http()
        .post(format!(
            "{}/v1/datasets/wine?format=csv&target=quality",
            gw.url
        ))
        .bearer_auth(admin)
        .body(std::fs::read(&csv).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    train(
        &gw,
        admin,
        "wine-rf",
        "random_forest",
        json!({"n_estimators": 30}),
    )
    .await;
    let (_, rows) = wine();

    // Labels from MLServer's `predict`, probabilities from its `predict_proba`.
    let (status, hard) = gw
        .put("/v1/ensembles/mixed-hard", admin, &json!({"method": "hard_vote", "members": [{"model": "wine-rf"}, {"model": "sk-rf", "url": foreign}]}))
        .await;
    assert_eq!(status, 201, "{hard}");
    let (status, soft) = gw
        .put(
            "/v1/ensembles/mixed-soft",
            admin,
            &json!({"method": "soft_vote", "members": [
                {"model": "wine-rf"},
                {"model": "sk-rf", "url": foreign, "output": "predict_proba", "classes": classes}
            ]}),
        )
        .await;
    assert_eq!(status, 201, "{soft}");
    let (status, body) = gw
        .put("/v1/ensembles/mixed-bad", admin, &json!({"method": "soft_vote", "members": [{"model": "wine-rf"}, {"model": "sk-rf", "url": foreign}]}))
        .await;
    assert_error(
        status,
        &body,
        400,
        "soft vote with a foreign member whose probabilities are unknown",
    );
    for name in ["mixed-hard", "mixed-soft"] {
        let (status, answer) = gw
            .post(
                &format!("/v2/models/{name}/infer"),
                admin,
                &request(&rows[..8], true),
            )
            .await;
        assert_eq!(status, 200, "{name}: {answer}");
        let reports = answer["parameters"]["members"].as_array().unwrap();
        assert!(
            reports.iter().all(|r| r["answered"] == true),
            "{name}: {answer}"
        );
        assert_eq!(answer["outputs"][0]["shape"], json!([8]));
        let p: Vec<f64> = answer["outputs"][1]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for row in p.chunks(6) {
            assert!(
                (row.iter().sum::<f64>() - 1.0).abs() < 1e-9,
                "{name}: {row:?}"
            );
        }
    }
    // MLServer stops: the 1-of-2 policy still answers, the all-members one does not.
    let (status, _) = gw
        .put("/v1/ensembles/mixed-any", admin, &json!({"method": "hard_vote", "members": [{"model": "wine-rf"}, {"model": "sk-rf", "url": foreign}], "policy": {"quorum": 1}}))
        .await;
    assert_eq!(status, 201);
    mlserver.kill().await.unwrap();
    let (status, answer) = gw
        .post(
            "/v2/models/mixed-any/infer",
            admin,
            &request(&rows[..2], false),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = gw
        .post(
            "/v2/models/mixed-hard/infer",
            admin,
            &request(&rows[..2], false),
        )
        .await;
    assert_eq!(status, 503);
}
