//! Scaling through the real binary: `mlmesh up` with the autoscaler scaling a model service
//! out under load and back in after it; `mlmesh simulate` (the contract's JSON on the real ELB
//! trace, the plot, bad traces and settings refused); `mlmesh detect` on a labelled NAB series.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use mlmesh_testkit::{eventually, get_json, http};
use serde_json::Value;

use super::{Control, mlmesh, read_json};

const WAIT: Duration = Duration::from_secs(60);

/// A running `mlmesh up` with its endpoints and admin key.
struct Up {
    child: tokio::process::Child,
    endpoints: Value,
    admin: String,
    _dir: tempfile::TempDir,
}

impl Up {
    async fn start(settings: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut command = mlmesh();
        command.args(["up", "--port", "0", "--data-dir"]).arg(&data);
        for setting in settings {
            command.args(["--set", setting]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let endpoints = eventually(WAIT, "endpoints.json", || async {
            read_json(&data.join("endpoints.json"))
        })
        .await;
        let admin = std::fs::read_to_string(data.join("admin.key"))
            .unwrap()
            .trim()
            .to_string();
        Self {
            child,
            endpoints,
            admin,
            _dir: dir,
        }
    }

    fn url(&self, service: &str) -> String {
        self.endpoints["services"][service][0]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// SIGTERM, and a clean exit.
    async fn stop(mut self) {
        let pid = i32::try_from(self.child.id().unwrap()).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success());
    }
}

/// A replica "serves" 5 requests/s here, so a test's modest load needs more of them;
/// decisions every second on 1 s bins, and a 3 s scale-down hold, keep the tests short.
const FAST: &[&str] = &[
    "autoscaler.capacity_rps=5",
    "autoscaler.max_replicas=3",
    "autoscaler.decide_s=1",
    "autoscaler.step_s=1",
    "autoscaler.startup_s=1",
    "autoscaler.stabilisation_s=3",
];

/// Four callers listing a model service's algorithms (a cheap read it counts as a request),
/// about 50 calls/s each, until stopped.
struct Load {
    stop: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(service: &str) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let tasks = (0..4)
            .map(|_| {
                let stop = stop.clone();
                let url = format!("{service}/v1/algorithms");
                tokio::spawn(async move {
                    let client = http();
                    while !stop.is_cancelled() {
                        let _ = client.get(&url).send().await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        Self { stop, tasks }
    }

    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            task.await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaler_adds_replicas_under_load_and_removes_them_after() {
    let up = Up::start(&[&["autoscaler.scale=model-linear"], FAST].concat()).await;
    let control = Control {
        url: up.endpoints["control"].as_str().unwrap().to_string(),
        key: up.admin.clone(),
    };
    let linear = up.url("model-linear");
    let autoscaler = up.url("autoscaler");
    let count = || async {
        control
            .replicas()
            .await
            .values()
            .filter(|r| r["service"] == "model-linear")
            .count()
    };
    assert_eq!(count().await, 1);

    let load = Load::start(&linear);
    eventually(WAIT, "model-linear scaled out to 3", || async {
        (count().await == 3).then_some(())
    })
    .await;
    // Its CPU is collected with the rest: a process serving requests uses some.
    let (_, series) = get_json(&format!("{autoscaler}/v1/series/model-linear")).await;
    assert!(
        series["points"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["cpu_cores"].as_f64() > Some(0.0)),
        "{series}"
    );
    load.stop().await;
    eventually(WAIT, "model-linear scaled back in to 1", || async {
        (count().await == 1).then_some(())
    })
    .await;

    let (status, scaling) = get_json(&format!("{autoscaler}/v1/scaling")).await;
    assert_eq!(status, 200);
    assert_eq!(scaling["targets"][0]["service"], "model-linear");
    assert_eq!(scaling["targets"][0]["policy"], "hybrid");
    let decisions = scaling["decisions"].as_array().unwrap();
    let applied: Vec<_> = decisions.iter().filter(|d| d["applied"] == true).collect();
    assert!(
        applied
            .iter()
            .any(|d| d["to"].as_u64() > d["from"].as_u64()),
        "{scaling}"
    );
    assert!(
        applied
            .iter()
            .any(|d| d["to"].as_u64() < d["from"].as_u64()),
        "{scaling}"
    );
    assert!(
        applied
            .iter()
            .all(|d| !d["reason"].as_str().unwrap().is_empty())
    );
    up.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_backend_scales_the_deployment_through_the_api() {
    // No cluster runs here: a fake API server on 127.0.0.1 stands in and checks each request.
    // The pods it "starts" never register, so the registry keeps seeing one replica: the
    // autoscaler counts the others as starting and must not ask for them twice.
    let fake = mlmesh_testkit::fake_kube::FakeKube::new("sa-token");
    fake.add_deployment("ml", "mlmesh-model-linear", 1);
    let api = mlmesh_testkit::TestServer::start(fake.router()).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "sa-token\n").unwrap();
    let url = format!("autoscaler.kubernetes_url={}", api.url);
    let token = format!("autoscaler.kubernetes_token_file={}", token.display());
    let kube = [
        "autoscaler.scale=model-linear",
        "autoscaler.backend=kubernetes",
        url.as_str(),
        "autoscaler.kubernetes_namespace=ml",
        token.as_str(),
    ];
    let up = Up::start(&[&kube[..], FAST].concat()).await;
    let linear = up.url("model-linear");
    let load = Load::start(&linear);
    eventually(WAIT, "the Deployment scaled to 3", || async {
        (fake.replicas("ml", "mlmesh-model-linear") == Some(3)).then_some(())
    })
    .await;
    load.stop().await;
    eventually(WAIT, "the Deployment scaled back to 1", || async {
        (fake.replicas("ml", "mlmesh-model-linear") == Some(1)).then_some(())
    })
    .await;

    let log = fake.log();
    let patches: Vec<_> = log.iter().filter(|s| s.method == "PATCH").collect();
    assert!(patches.iter().all(|p| p.path
        == "/apis/apps/v1/namespaces/ml/deployments/mlmesh-model-linear/scale"
        && p.content_type.as_deref() == Some("application/merge-patch+json")));
    let sizes: Vec<_> = patches
        .iter()
        .map(|p| {
            p.body.as_ref().unwrap()["spec"]["replicas"]
                .as_i64()
                .unwrap()
        })
        .collect();
    // Out (at most the 3 allowed), then in; never a patch that repeats the current size.
    assert_eq!(sizes.last(), Some(&1), "{sizes:?}");
    assert!(sizes.windows(2).all(|w| w[0] != w[1]), "{sizes:?}");
    assert!(sizes.iter().all(|n| (1..=3).contains(n)), "{sizes:?}");

    let scaled_out = |scaling: &Value| {
        scaling["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["applied"] == true && d["to"] == 3 && d["error"].is_null())
    };
    let (_, scaling) = get_json(&format!("{}/v1/scaling", up.url("autoscaler"))).await;
    assert!(scaled_out(&scaling), "{scaling}");

    // Decisions are journalled: the autoscaler killed with SIGKILL comes back with them.
    let control = Control {
        url: up.endpoints["control"].as_str().unwrap().to_string(),
        key: up.admin.clone(),
    };
    let id = control
        .replicas()
        .await
        .into_iter()
        .find(|(_, r)| r["service"] == "autoscaler")
        .map(|(id, _)| id)
        .unwrap();
    super::kill_and_see_back(&control, &up.url("registry"), &id).await;
    let (_, scaling) = get_json(&format!("{}/v1/scaling", up.url("autoscaler"))).await;
    assert!(scaled_out(&scaling), "after a restart: {scaling}");
    up.stop().await;
}

#[tokio::test]
async fn a_kubernetes_backend_with_bad_settings_is_refused_at_start() {
    for (setting, message) in [
        ("autoscaler.backend=swarm", "local or kubernetes"),
        (
            "autoscaler.kubernetes_deployment=ML_{service}",
            "cannot name a Deployment",
        ),
        (
            "autoscaler.kubernetes_namespace=No Such",
            "cannot name a namespace",
        ),
    ] {
        let output = mlmesh()
            .args([
                "serve",
                "autoscaler",
                "--set",
                "autoscaler.scale=model-trees",
            ])
            .args(["--set", "autoscaler.backend=kubernetes", "--set", setting])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{setting}");
        assert!(stderr.contains(message), "{setting}: {stderr}");
    }
}

/// Runs `mlmesh COMMAND ARGS…`: (success, stdout, stderr).
async fn command(name: &str, args: &[&str]) -> (bool, String, String) {
    let out = mlmesh()
        .arg(name)
        .args(args)
        .output()
        .await
        .expect("mlmesh runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn simulate_replays_the_elb_trace_under_every_policy() {
    let dir = tempfile::tempdir().unwrap();
    let trace =
        mlmesh_testkit::shared_data("traces/nab/realAWSCloudwatch/elb_request_count_8c0756.csv");
    let plot = dir.path().join("elb.svg");
    let (ok, stdout, stderr) = simulate(&[
        "--trace",
        trace.to_str().unwrap(),
        "--json",
        "--plot",
        plot.to_str().unwrap(),
    ])
    .await;
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        report["trace"]
            .as_str()
            .unwrap()
            .ends_with("elb_request_count_8c0756.csv")
    );
    let policies = report["policies"].as_object().unwrap();
    assert_eq!(policies.len(), 3);
    for (name, p) in policies {
        assert!(p["slo_violation_s"].as_f64().unwrap() >= 0.0, "{name}");
        assert!(p["replica_hours"].as_f64().unwrap() > 0.0, "{name}");
        assert!(p["dropped"].as_u64().is_some(), "{name}");
        if name == "reactive" {
            assert!(p["forecaster"].is_null() && p["mase"].is_null());
        } else {
            assert!(p["forecaster"].is_string(), "{name}");
            // The chosen forecasts beat seasonal naive on this trace (seeded, deterministic).
            assert!(p["mase"].as_f64().unwrap() < 1.0, "{name}: {p}");
        }
    }
    // Forecasting ahead of demand: hybrid violates the SLO for less time than reactive.
    let violation = |n: &str| policies[n]["slo_violation_s"].as_f64().unwrap();
    assert!(violation("hybrid") < violation("reactive"), "{report}");
    // Every forecaster was scored on the same origins, seasonal naive being the yardstick.
    let baseline = &report["forecasters"][0];
    assert_eq!(baseline["forecaster"], "seasonal_naive");
    assert_eq!(baseline["mase"], 1.0);
    assert_eq!(report["ingest"]["rows"], 4032);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("replicas by policy"));
}

#[tokio::test]
async fn simulate_repairs_untidy_traces_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let run = |path: &Path, extra: &[&str]| {
        let mut args = vec!["--trace".to_string(), path.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    // Out of order, a duplicate instant and a gap: read, repaired and reported.
    let mut rows = String::from("timestamp,value\n");
    for i in (0..200).rev() {
        if i != 50 {
            rows.push_str(&format!("{},{}\n", 1_400_000_000 + i * 60, 10 + i % 7));
        }
    }
    rows.push_str("1400000060,12\n");
    let untidy = write("untidy.csv", &rows);
    let args = run(&untidy, &["--json", "--policy", "hybrid"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, stdout, stderr) = simulate(&args).await;
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ingest"]["duplicates"], 1);
    assert_eq!(report["ingest"]["filled"], 1);
    assert!(report["ingest"]["out_of_order"].as_u64().unwrap() > 0);
    assert_eq!(report["points"], 200);
    assert_eq!(report["policies"].as_object().unwrap().len(), 1);

    let cases: Vec<(std::path::PathBuf, Vec<&str>, &str)> = vec![
        (write("empty.csv", ""), vec![], "empty"),
        (write("header.csv", "timestamp,value\n"), vec![], "empty"),
        (
            write("text.csv", "timestamp,value\n0,1\n60,lots\n"),
            vec![],
            "line 3",
        ),
        (
            write("stamp.csv", "timestamp,value\nnoon,1\n60,2\n"),
            vec![],
            "line 2",
        ),
        (
            write("zero.csv", "timestamp,value\n0,0\n60,0\n"),
            vec![],
            "no load",
        ),
        (
            untidy.clone(),
            vec!["--min-replicas", "5", "--max-replicas", "2"],
            "above max_replicas",
        ),
        (
            untidy.clone(),
            vec!["--target-utilisation", "1.5"],
            "fraction",
        ),
        (untidy.clone(), vec!["--scale=-2"], "--scale"),
        (untidy.clone(), vec!["--service-cv=-3"], "variation"),
    ];
    for (path, extra, want) in cases {
        let args = run(&path, &extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, stderr) = simulate(&args).await;
        assert!(!ok, "{path:?} {extra:?} should fail");
        assert!(stderr.contains(want), "{path:?} {extra:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abusive_client_is_throttled_and_its_peers_are_not() {
    let up = Up::start(&["autoscaler.abuse_throttle_s=30"]).await;
    let gateway = up.endpoints["gateway"].as_str().unwrap().to_string();
    let autoscaler = up.url("autoscaler");
    let admin = up.admin.clone();
    let client = http();
    let mut keys = Vec::new();
    for _ in 0..3 {
        let created: Value = client
            .post(format!("{gateway}/v1/keys"))
            .bearer_auth(&admin)
            .json(&serde_json::json!({"role": "predict"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        keys.push((
            created["id"].as_str().unwrap().to_string(),
            created["key"].as_str().unwrap().to_string(),
        ));
    }
    // Throttles by hand: bad input is refused and changes nothing; only admin may.
    let throttles = |method: reqwest::Method, path: &str, key: &str, body: Option<Value>| {
        let mut r = client
            .request(method, format!("{gateway}/v1/throttles{path}"))
            .bearer_auth(key);
        if let Some(body) = body {
            r = r.json(&body);
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or_default())
        }
    };
    let ok = serde_json::json!({"rate_per_s": 5, "seconds": 10});
    for (path, body, want) in [
        ("/user/x", ok.clone(), 400),
        ("/addr/not-an-ip", ok.clone(), 400),
        ("/key/admin", ok.clone(), 400),
        (
            "/key/k",
            serde_json::json!({"rate_per_s": 0, "seconds": 10}),
            400,
        ),
        (
            "/key/k",
            serde_json::json!({"rate_per_s": 5, "seconds": 0}),
            400,
        ),
        (
            "/key/k",
            serde_json::json!({"rate_per_s": 5, "seconds": 10, "extra": 1}),
            400,
        ),
    ] {
        let (status, answer) = throttles(reqwest::Method::PUT, path, &admin, Some(body)).await;
        assert_eq!(status, want, "{path}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    let (status, _) = throttles(reqwest::Method::PUT, "/key/k", &keys[0].1, Some(ok.clone())).await;
    assert_eq!(status, 403, "a predict key cannot throttle");
    let (status, _) = throttles(reqwest::Method::DELETE, "/key/nobody", &admin, None).await;
    assert_eq!(status, 404);
    let (_, list) = throttles(reqwest::Method::GET, "", &admin, None).await;
    assert_eq!(list["throttles"], serde_json::json!([]), "nothing was set");
    let (status, set) = throttles(reqwest::Method::PUT, "/addr/10.9.8.7", &admin, Some(ok)).await;
    assert_eq!((status, set["kind"].as_str()), (200, Some("addr")), "{set}");
    let (status, _) = throttles(reqwest::Method::DELETE, "/addr/10.9.8.7", &admin, None).await;
    assert_eq!(status, 204);

    // Two clients call ten times a second; the third as fast as four connections go.
    let stop_all = tokio_util::sync::CancellationToken::new();
    let stop_abuse = tokio_util::sync::CancellationToken::new();
    let url = format!("{gateway}/v1/ensembles");
    let mut normal = Vec::new();
    for (_, key) in &keys[..2] {
        let (stop, url, key) = (stop_all.clone(), url.clone(), key.clone());
        normal.push(tokio::spawn(async move {
            let client = http();
            let mut statuses = Vec::new();
            while !stop.is_cancelled() {
                let r = client.get(&url).bearer_auth(&key).send().await.unwrap();
                statuses.push(r.status().as_u16());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            statuses
        }));
    }
    let refused = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::<String>::new()));
    let abusers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, url, key) = (stop_abuse.clone(), url.clone(), keys[2].1.clone());
            let refused = refused.clone();
            tokio::spawn(async move {
                let client = http();
                while !stop.is_cancelled() {
                    let r = client.get(&url).bearer_auth(&key).send().await.unwrap();
                    if r.status() == 429 {
                        refused
                            .lock()
                            .await
                            .push(r.text().await.unwrap_or_default());
                    }
                }
            })
        })
        .collect();
    eventually(WAIT, "the abusive key throttled", || async {
        let refused = refused.lock().await;
        refused
            .iter()
            .any(|body| body.contains("throttled"))
            .then_some(())
    })
    .await;
    let abuser = keys[2].0.clone();
    let (status, abuse) = get_json(&format!("{autoscaler}/v1/abuse")).await;
    assert_eq!(status, 200);
    assert_eq!(
        abuse["throttled"],
        serde_json::json!([format!("key/{abuser}")]),
        "{abuse}"
    );
    assert_eq!(abuse["events"][0]["action"], "throttled");
    // The others keep being served while it is throttled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_abuse.cancel();
    for task in abusers {
        task.await.unwrap();
    }
    // Calm again: the throttle is lifted well before it would expire.
    eventually(WAIT, "the throttle lifted", || async {
        let list: Value = http()
            .get(format!("{gateway}/v1/throttles"))
            .bearer_auth(&admin)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        list["throttles"].as_array()?.is_empty().then_some(())
    })
    .await;
    stop_all.cancel();
    for task in normal {
        let statuses = task.await.unwrap();
        assert!(statuses.len() > 20, "{statuses:?}");
        assert!(
            statuses.iter().all(|s| *s == 200),
            "a normal client was refused: {statuses:?}"
        );
    }
    let (_, abuse) = get_json(&format!("{autoscaler}/v1/abuse")).await;
    let actions: Vec<_> = abuse["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actions, ["throttled", "lifted"], "{abuse}");
    up.stop().await;
}

async fn simulate(args: &[&str]) -> (bool, String, String) {
    command("simulate", args).await
}

async fn detect(args: &[&str]) -> (bool, String, String) {
    command("detect", args).await
}

#[tokio::test]
async fn detect_finds_the_labelled_failures_of_a_nab_series() {
    let trace = mlmesh_testkit::shared_data(
        "traces/nab/realKnownCause/ec2_request_latency_system_failure.csv",
    );
    let labels = mlmesh_testkit::shared_data("traces/nab/combined_windows.json");
    let (ok, stdout, stderr) = detect(&[
        "--trace",
        trace.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
        "--json",
    ])
    .await;
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    // The file repeats an hour at the DST switch: merged, not fatal.
    assert!(report["ingest"]["duplicates"].as_u64().unwrap() > 0);
    let e = &report["evaluation"];
    assert_eq!(e["windows"], 3);
    assert!(e["windows_found"].as_u64().unwrap() >= 2, "{e}");
    assert!(e["nab_score"].as_f64().unwrap() > 50.0, "{e}");
    assert!(
        report["events"][0]["at"]
            .as_str()
            .unwrap()
            .starts_with("2014-03")
    );

    // Bad input: a threshold that is not positive, labels without this series, labels that
    // are not NAB's shape.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.json");
    std::fs::write(
        &other,
        r#"{"x/y.csv": [["2014-01-01 00:00:00", "2014-01-02 00:00:00"]]}"#,
    )
    .unwrap();
    let shapeless = dir.path().join("shapeless.json");
    std::fs::write(&shapeless, r#"{"x/y.csv": 3}"#).unwrap();
    let t = trace.to_str().unwrap();
    for (args, want) in [
        (vec!["--trace", t, "--threshold=-1"], "--threshold"),
        (
            vec!["--trace", t, "--labels", other.to_str().unwrap()],
            "no windows",
        ),
        (
            vec!["--trace", t, "--labels", shapeless.to_str().unwrap()],
            "is not a map",
        ),
    ] {
        let (ok, _, stderr) = detect(&args).await;
        assert!(!ok && stderr.contains(want), "{args:?}: {stderr}");
    }
}
