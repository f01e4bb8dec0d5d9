//! Platform tests, in one binary to save link time:
//! - the service compliance test: every service, started in-process on 127.0.0.1:0, checked
//!   against `docs/specs/service.md`;
//! - the end-to-end test: the real `mlmesh up` in a temporary directory, a child killed with
//!   SIGKILL and seen back, the control API, then SIGTERM and no child left behind.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test here

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use mlmesh_kit::ServerConfig;
use mlmesh_testkit::{TestServer, eventually, get_json, http};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

#[path = "platform/autoscale.rs"]
mod autoscale;
#[path = "platform/deploy.rs"]
mod deploy;
#[path = "platform/gateway.rs"]
mod gateway;
#[path = "platform/models.rs"]
mod models;

// ---------------------------------------------------------------- compliance

struct Running {
    name: &'static str,
    server: TestServer,
}

/// Runs a service's `serve` on 127.0.0.1:0 with `server` settings (the registry URL `None`
/// means "register with yourself", for the registry).
async fn start<F, Fut>(name: &'static str, mut server: ServerConfig, serve: F) -> Running
where
    F: FnOnce(
        ServerConfig,
        tokio::net::TcpListener,
        std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    ) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let server = TestServer::start_with(move |listener, shutdown| {
        if server.registry_url.is_none() {
            server.registry_url = Some(format!("http://{}", listener.local_addr().unwrap()));
        }
        serve(server, listener, shutdown)
    })
    .await;
    Running { name, server }
}

async fn start_registry() -> Running {
    let server = ServerConfig {
        body_limit_bytes: 64 * 1024,
        ..ServerConfig::default()
    };
    start(
        mlmesh_registry::SERVICE,
        server,
        |server, listener, shutdown| {
            mlmesh_registry::serve(
                mlmesh_registry::Config::default(),
                server,
                listener,
                shutdown,
            )
        },
    )
    .await
}

async fn start_data(registry: &str, dir: &Path) -> Running {
    let server = ServerConfig {
        registry_url: Some(registry.to_string()),
        data_dir: Some(dir.to_path_buf()),
        ..ServerConfig::default()
    };
    start(
        mlmesh_data::SERVICE,
        server,
        |server, listener, shutdown| {
            mlmesh_data::serve(mlmesh_data::Config::default(), server, listener, shutdown)
        },
    )
    .await
}

async fn start_autoscaler(registry: &str, dir: &Path) -> Running {
    let server = ServerConfig {
        registry_url: Some(registry.to_string()),
        data_dir: Some(dir.to_path_buf()),
        ..ServerConfig::default()
    };
    start(
        mlmesh_autoscaler::SERVICE,
        server,
        |server, listener, shutdown| {
            mlmesh_autoscaler::serve(
                mlmesh_autoscaler::Config::default(),
                server,
                listener,
                shutdown,
            )
        },
    )
    .await
}

async fn start_dashboard(registry: &str) -> Running {
    let server = ServerConfig {
        registry_url: Some(registry.to_string()),
        ..ServerConfig::default()
    };
    start(
        mlmesh_dashboard::SERVICE,
        server,
        |server, listener, shutdown| {
            mlmesh_dashboard::serve(
                mlmesh_dashboard::Config::default(),
                server,
                listener,
                shutdown,
            )
        },
    )
    .await
}

async fn start_model(registry: &str, dir: &Path) -> Running {
    let server = ServerConfig {
        registry_url: Some(registry.to_string()),
        data_dir: Some(dir.to_path_buf()),
        ..ServerConfig::default()
    };
    start("model-trees", server, |server, listener, shutdown| {
        let config = mlmesh_model::Config {
            family: "trees".into(),
            ..mlmesh_model::Config::default()
        };
        mlmesh_model::serve(config, server, listener, shutdown)
    })
    .await
}

async fn start_gateway(registry: &str, dir: &Path) -> Running {
    let server = ServerConfig {
        registry_url: Some(registry.to_string()),
        data_dir: Some(dir.to_path_buf()),
        ..ServerConfig::default()
    };
    start(
        mlmesh_gateway::SERVICE,
        server,
        |server, listener, shutdown| {
            mlmesh_gateway::serve(
                mlmesh_gateway::Config::default(),
                server,
                listener,
                shutdown,
            )
        },
    )
    .await
}

fn assert_error_shape(status: u16, body: &Value, want: u16, what: &str) {
    assert_eq!(status, want, "{what}: {body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{what}: no error message in {body}");
}

async fn check(service: &Running, registry: &str, key: Option<&str>) {
    let name = service.name;
    let url = &service.server.url;
    // The gateway wants a key on everything but health and metrics.
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = key {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {key}").parse().unwrap(),
        );
    }
    // No pooling: a server may close a connection after refusing an oversized body unread.
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let http = || client.clone();
    let get_json = |url: String| {
        let client = client.clone();
        async move {
            let response = client.get(url).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or_default())
        }
    };

    // 1, 2: health.
    let (status, body) = get_json(format!("{url}/v2/health/live")).await;
    assert_eq!(
        (status, &body),
        (200, &json!({"live": true})),
        "{name} live"
    );
    eventually(WAIT, &format!("{name} ready"), || async {
        let (status, body) = get_json(format!("{url}/v2/health/ready")).await;
        (status == 200 && body["ready"] == true).then_some(())
    })
    .await;

    // 8: request ids, fresh and echoed.
    let response = http()
        .get(format!("{url}/v2/health/live"))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("x-request-id"), "{name}");
    let response = http()
        .get(format!("{url}/v2/health/live"))
        .header("x-request-id", "compliance-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "compliance-1", "{name}");

    // 4: OpenAPI.
    let (status, doc) = get_json(format!("{url}/openapi.json")).await;
    assert_eq!(status, 200, "{name} openapi");
    assert!(
        doc["openapi"].as_str().unwrap_or("").starts_with("3.1"),
        "{name}: {doc}"
    );
    assert_eq!(doc["info"]["title"], format!("mlmesh {name}"));
    let paths = doc["paths"].as_object().expect("paths");
    for required in [
        "/v2/health/live",
        "/v2/health/ready",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(
            paths.contains_key(required),
            "{name} openapi lacks {required}"
        );
    }
    assert!(
        paths.keys().any(|p| p.starts_with("/v1/")),
        "{name} documents no /v1 route"
    );

    // 5: error shape for unknown paths and methods.
    let (status, body) = get_json(format!("{url}/no/such/path")).await;
    assert_error_shape(status, &body, 404, &format!("{name} unknown path"));
    let response = http()
        .delete(format!("{url}/v2/health/live"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or_default();
    assert_error_shape(status, &body, 405, &format!("{name} wrong method"));

    // 5, 6: every documented JSON body endpoint rejects malformed, untyped and oversized bodies.
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            // JSON bodies only: uploads take raw bytes and have their own tests.
            if op["requestBody"]["content"]
                .get("application/json")
                .is_none()
            {
                continue;
            }
            let concrete = path.replace('{', "x").replace('}', "");
            let target = format!("{url}{concrete}");
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let send = |body: String, json: bool| {
                let mut request = http().request(method.clone(), &target).body(body);
                if json {
                    request = request.header("content-type", "application/json");
                }
                async move {
                    let response = request.send().await.unwrap();
                    let status = response.status().as_u16();
                    (status, response.json::<Value>().await.unwrap_or_default())
                }
            };
            let (status, body) = send("{broken".into(), true).await;
            assert_error_shape(
                status,
                &body,
                400,
                &format!("{name} {method} {path} malformed"),
            );
            // Inference routes take untyped bodies and larger ones (spec 5, the exception).
            if path.ends_with("/infer") {
                continue;
            }
            let (status, body) = send("{}".into(), false).await;
            assert_error_shape(
                status,
                &body,
                415,
                &format!("{name} {method} {path} untyped"),
            );
            // A server that refuses a body early closes the connection with the rest unread,
            // and the kernel may then reset it before the client reads the 413 (the same race
            // that makes nginx linger on close). Under load that happens now and then: try
            // again, a few times.
            let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(2 << 20));
            let mut refused = None;
            for _ in 0..5 {
                let request = http()
                    .request(method.clone(), &target)
                    .header("content-type", "application/json")
                    .body(huge.clone());
                if let Ok(response) = request.send().await {
                    let status = response.status().as_u16();
                    if let Ok(body) = response.json::<Value>().await {
                        refused = Some((status, body));
                        break;
                    }
                }
            }
            let (status, body) = refused.expect("an answer to an oversized body");
            assert_error_shape(
                status,
                &body,
                413,
                &format!("{name} {method} {path} oversized"),
            );
        }
    }

    // 3: metrics, after the traffic above.
    let response = http().get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain"),
        "{name}: {content_type}"
    );
    let text = response.text().await.unwrap();
    let service_label = format!("service=\"{name}\"");
    for metric in [
        "http_requests_total{",
        "http_request_duration_seconds_bucket{",
        "http_requests_in_flight{",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(metric) && l.contains(&service_label)),
            "{name}: /metrics lacks {metric}…{service_label}"
        );
    }
    assert!(
        text.contains("route=\"/v2/health/live\""),
        "{name}: routes are labelled by template"
    );
    let cpu = text
        .lines()
        .find_map(|l| l.strip_prefix("process_cpu_seconds_total "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(cpu.is_some_and(|c| c > 0.0), "{name}: process CPU {cpu:?}");
    assert!(
        text.contains("route=\"unmatched\""),
        "{name}: unmatched requests are labelled"
    );

    // 11: registered under its service name with its URL.
    eventually(WAIT, &format!("{name} registered"), || async {
        let (_, snapshot) = get_json(format!("{registry}/v1/services/{name}/instances")).await;
        snapshot["instances"]
            .as_array()?
            .iter()
            .any(|i| i["url"] == url.as_str())
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_complies_with_the_service_spec() {
    let registry = start_registry().await;
    let registry_url = registry.server.url.clone();
    let dashboard = start_dashboard(&registry_url).await;
    let data_dir = tempfile::tempdir().unwrap();
    let data = start_data(&registry_url, data_dir.path()).await;
    let model = start_model(&registry_url, data_dir.path()).await;
    let autoscaler = start_autoscaler(&registry_url, data_dir.path()).await;
    for service in [&registry, &dashboard, &data, &model, &autoscaler] {
        check(service, &registry_url, None).await;
    }
    let key = "mlm_compliance_admin_key";
    std::fs::write(data_dir.path().join("admin.key"), key).unwrap();
    let gateway = start_gateway(&registry_url, data_dir.path()).await;
    check(&gateway, &registry_url, Some(key)).await;
    // 12: a stopped service deregisters.
    dashboard.server.stop();
    eventually(WAIT, "dashboard deregistered", || async {
        let (_, snapshot) =
            get_json(&format!("{registry_url}/v1/services/dashboard/instances")).await;
        snapshot["instances"].as_array()?.is_empty().then_some(())
    })
    .await;
}

// ---------------------------------------------------------------- end to end

fn mlmesh() -> tokio::process::Command {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_mlmesh"))
}

fn alive(pid: i64) -> bool {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(pid, None).is_ok()
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

struct Control {
    url: String,
    key: String,
}

impl Control {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = http()
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    async fn replicas(&self) -> BTreeMap<String, Value> {
        let (_, list) = self.call(reqwest::Method::GET, "/v1/replicas", None).await;
        list["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["id"].as_str().unwrap().to_string(), r.clone()))
            .collect()
    }
}

/// Ids registered for `service`, with their URLs.
async fn registered(registry: &str, service: &str) -> Vec<(String, String)> {
    let (_, snapshot) = get_json(&format!("{registry}/v1/services/{service}/instances")).await;
    snapshot["instances"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|i| {
                    (
                        i["id"].as_str().unwrap().into(),
                        i["url"].as_str().unwrap().into(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn kill_and_see_back(control: &Control, registry: &str, id: &str) {
    let before = control.replicas().await[id].clone();
    let pid = before["pid"].as_i64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let service = before["service"].as_str().unwrap().to_string();
    let url = before["url"].as_str().unwrap().to_string();
    eventually(WAIT, &format!("{id} restarted"), || async {
        let now = control.replicas().await.get(id)?.clone();
        let restarted = now["pid"].as_i64().is_some_and(|p| p != pid)
            && now["state"] == "ready"
            && now["restarts"].as_u64() > before["restarts"].as_u64();
        restarted.then_some(())
    })
    .await;
    assert!(!alive(pid), "the killed process is gone");
    // Same address (the supervisor kept the socket), ready, and registered again.
    let (status, _) = get_json(&format!("{url}/v2/health/ready")).await;
    assert_eq!(status, 200);
    eventually(WAIT, &format!("{id} re-registered"), || async {
        registered(registry, &service)
            .await
            .iter()
            .any(|(rid, rurl)| rid == id && *rurl == url)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_supervises_and_stops_the_platform() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A short lease, so re-registration after a registry restart is quick to see.
    let mut up = mlmesh()
        .args([
            "up",
            "--port",
            "0",
            "--set",
            "registry.ttl_ms=1500",
            "--data-dir",
        ])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let endpoints = eventually(Duration::from_secs(60), "endpoints.json", || async {
        read_json(&data.join("endpoints.json"))
    })
    .await;
    let registry = endpoints["registry"].as_str().unwrap().to_string();
    let key_path = data.join("admin.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_path).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "admin.key is private");
    let control = Control {
        url: endpoints["control"].as_str().unwrap().to_string(),
        key: std::fs::read_to_string(&key_path)
            .unwrap()
            .trim()
            .to_string(),
    };

    // Every service in endpoints.json is registered and ready.
    let services = endpoints["services"].as_object().unwrap();
    for expected in ["registry", "data", "dashboard", "gateway", "autoscaler"] {
        assert!(services.contains_key(expected), "{expected} in {endpoints}");
    }
    for (service, urls) in services {
        let ids = registered(&registry, service).await;
        for url in urls.as_array().unwrap() {
            let url = url.as_str().unwrap();
            assert!(
                ids.iter().any(|(_, u)| u == url),
                "{service} at {url} registered"
            );
            let (status, _) = get_json(&format!("{url}/v2/health/ready")).await;
            assert_eq!(status, 200, "{service} ready");
        }
    }
    let (status, overview) = get_json(&format!(
        "{}/v1/overview",
        endpoints["dashboard"].as_str().unwrap()
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        overview["services"]["registry"][0]["ready"], true,
        "{overview}"
    );

    // The autoscaler scrapes every instance: each service gets a series, and the gateway's
    // requests (these tests' own calls) show up as its load.
    let autoscaler = services["autoscaler"][0].as_str().unwrap().to_string();
    // Services register one after another, so the first scrapes may not see them all yet.
    let scraped = ["data", "gateway", "model-trees", "dashboard", "autoscaler"];
    let series = eventually(WAIT, "every service scraped", || async {
        let (status, body) = get_json(&format!("{autoscaler}/v1/series")).await;
        let all = scraped.iter().all(|s| body["services"].get(s).is_some());
        (status == 200 && body["services"]["registry"]["instances"] == 1 && all).then_some(body)
    })
    .await;
    for service in scraped {
        assert!(
            series["services"].get(service).is_some(),
            "{service}: {series}"
        );
    }
    let (status, points) = get_json(&format!("{autoscaler}/v1/series/registry")).await;
    assert_eq!(status, 200);
    assert_eq!(points["resolution"], "raw");
    assert!(!points["points"].as_array().unwrap().is_empty(), "{points}");
    let (status, body) = get_json(&format!(
        "{autoscaler}/v1/series/registry?resolution=hourly"
    ))
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = get_json(&format!("{autoscaler}/v1/series/no-such-service")).await;
    assert_eq!(status, 404);
    let (status, anomalies) = get_json(&format!("{autoscaler}/v1/anomalies")).await;
    assert_eq!(status, 200);
    assert!(anomalies["events"].is_array(), "{anomalies}");

    // A crashed child comes back on its address and registers again; the registry too, and
    // everyone re-registers with the restarted registry by themselves.
    kill_and_see_back(&control, &registry, "dashboard-0").await;
    kill_and_see_back(&control, &registry, "registry-0").await;
    eventually(
        WAIT,
        "dashboard re-registered with the new registry",
        || async { (!registered(&registry, "dashboard").await.is_empty()).then_some(()) },
    )
    .await;

    // Control API: bad input is refused and changes nothing.
    let before = control.replicas().await;
    let anonymous = http()
        .get(format!("{}/v1/replicas", control.url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = Control {
        url: control.url.clone(),
        key: "mlm_wrong".into(),
    };
    let (status, body) = wrong
        .call(
            reqwest::Method::POST,
            "/v1/replicas",
            Some(json!({"service": "dashboard"})),
        )
        .await;
    assert_error_shape(status, &body, 401, "wrong key");
    for (request, want) in [
        (json!({"service": "nope"}), 404),
        (json!({"service": ""}), 404),
        (json!({"service": "registry"}), 409),
        (json!({"servce": "dashboard"}), 400),
    ] {
        let (status, body) = control
            .call(reqwest::Method::POST, "/v1/replicas", Some(request.clone()))
            .await;
        assert_error_shape(status, &body, want, &request.to_string());
    }
    let (status, body) = control
        .call(reqwest::Method::DELETE, "/v1/replicas/dashboard-0", None)
        .await;
    assert_error_shape(status, &body, 409, "stopping a base replica");
    let (status, body) = control
        .call(reqwest::Method::DELETE, "/v1/replicas/ghost-9", None)
        .await;
    assert_error_shape(status, &body, 404, "stopping an unknown replica");
    assert_eq!(
        control.replicas().await.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );

    // Control API: an extra replica starts, registers, appears in endpoints.json, and stops.
    let (status, replica) = control
        .call(
            reqwest::Method::POST,
            "/v1/replicas",
            Some(json!({"service": "dashboard"})),
        )
        .await;
    assert_eq!(status, 201, "{replica}");
    let extra = replica["id"].as_str().unwrap().to_string();
    let extra_url = replica["url"].as_str().unwrap().to_string();
    eventually(WAIT, "extra replica registered", || async {
        registered(&registry, "dashboard")
            .await
            .iter()
            .any(|(id, _)| *id == extra)
            .then_some(())
    })
    .await;
    eventually(WAIT, "extra replica in endpoints.json", || async {
        let endpoints = read_json(&data.join("endpoints.json"))?;
        endpoints["services"]["dashboard"]
            .as_array()?
            .iter()
            .any(|u| *u == extra_url.as_str())
            .then_some(())
    })
    .await;
    let extra_pid = control.replicas().await[&extra]["pid"].as_i64().unwrap();
    let (status, _) = control
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/replicas/{extra}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert!(!alive(extra_pid));
    assert!(
        registered(&registry, "dashboard")
            .await
            .iter()
            .all(|(id, _)| *id != extra),
        "deregistered on stop"
    );

    // SIGTERM: everything stops, nothing is left behind.
    let pids: Vec<i64> = control
        .replicas()
        .await
        .values()
        .filter_map(|r| r["pid"].as_i64())
        .collect();
    // registry, data, dashboard, gateway, autoscaler and the four model services.
    assert_eq!(pids.len(), 9);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(up.id().unwrap()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(WAIT, up.wait())
        .await
        .expect("up stops")
        .unwrap();
    assert!(status.success(), "up exits 0 after SIGTERM: {status}");
    for pid in pids {
        assert!(!alive(pid), "child {pid} left behind");
    }
    assert!(
        !data.join("endpoints.json").exists(),
        "stale endpoints removed"
    );
}

#[tokio::test]
async fn config_errors_name_the_key_and_exit_non_zero() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["serve", "registry", "--set", "registry.ttl_ms=soon"],
            "registry.ttl_ms",
        ),
        (
            &["serve", "registry", "--set", "registry.tll_ms=5"],
            "registry.tll_ms",
        ),
        (
            &["serve", "registry", "--set", "registry.ttl_ms=5"],
            "registry.ttl_ms",
        ),
        (
            &["serve", "dashboard", "--set", "server.body_limit_bytes=-1"],
            "server.body_limit_bytes",
        ),
    ];
    for (args, key) in cases {
        let output = mlmesh().args(args).output().await.unwrap();
        assert!(!output.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(key), "{args:?}: {stderr}");
    }
    let output = mlmesh()
        .args(["serve", "registry"])
        .env("MLMESH_REGISTRY__SWEEP_MS", "0")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("registry.sweep_ms"));
}

// ---------------------------------------------------------------- data durability

/// Runs `mlmesh serve data` on a free port; the URL comes from its `serving` log line.
async fn serve_data(dir: &Path) -> (tokio::process::Child, String) {
    serve_service(&["serve", "data"], dir).await
}

/// Runs `mlmesh ARGS --port 0 --data-dir DIR`; the URL comes from its `serving` log line.
async fn serve_service(args: &[&str], dir: &Path) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = mlmesh()
        .args(args)
        .args(["--port", "0", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let url = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Ok(entry) = serde_json::from_str::<Value>(&line)
                && entry["message"] == "serving"
            {
                return entry["url"].as_str().unwrap().to_string();
            }
        }
        panic!("mlmesh {args:?} exited before serving");
    })
    .await
    .expect("service started");
    // Keep draining the log so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

fn kill9(child: &tokio::process::Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_kill_9_and_interrupted_uploads_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let wine = std::fs::read(mlmesh_testkit::shared_data(
        "tabular/wine_quality/winequality-white.csv",
    ))
    .unwrap();

    // An acknowledged version survives kill -9.
    let (mut child, url) = serve_data(dir.path()).await;
    let response = http()
        .post(format!("{url}/v1/datasets/white?target=quality"))
        .body(wine)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    kill9(&child);
    child.wait().await.unwrap();

    let (mut child, url) = serve_data(dir.path()).await;
    let (status, info) = get_json(&format!("{url}/v1/datasets/white/versions/latest")).await;
    assert_eq!(status, 200);
    assert_eq!(
        (&info["version"], info["rows"].as_u64()),
        (&created["version"], Some(4898))
    );
    let (status, page) = get_json(&format!(
        "{url}/v1/datasets/white/versions/1/rows?offset=4897&limit=1"
    ))
    .await;
    assert_eq!(
        (status, page["rows"].as_array().map(Vec::len)),
        (200, Some(1))
    );

    // An upload cut off by kill -9 leaves nothing visible and no files behind.
    let addr = url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/datasets/half HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 5000000\r\n\r\na,b\n1,2\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes())
        .await
        .unwrap();
    let tmp = dir.path().join("tmp");
    eventually(WAIT, "upload in progress", || async {
        (std::fs::read_dir(&tmp).map_or(0, Iterator::count) == 1).then_some(())
    })
    .await;
    kill9(&child);
    child.wait().await.unwrap();
    drop(stream);

    let (_child, url) = serve_data(dir.path()).await;
    let (status, _) = get_json(&format!("{url}/v1/datasets/half")).await;
    assert_eq!(status, 404);
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "temporary files swept"
    );
    assert!(!dir.path().join("blobs/half").exists());
    let (_, feed) = get_json(&format!("{url}/v1/events")).await;
    assert_eq!(
        feed["last"], 2,
        "only the acknowledged upload's events: {feed}"
    );
}

// ---------------------------------------------------------------- CLI

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_uploads_lists_and_shows_datasets() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut up = mlmesh()
        .args(["up", "--port", "0", "--data-dir"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(60), "endpoints.json", || async {
        read_json(&data.join("endpoints.json"))
    })
    .await;
    let cli = |args: &[&str]| {
        let mut command = mlmesh();
        command
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .env_remove("MLMESH_GATEWAY");
        async move { command.output().await.unwrap() }
    };
    let spambase = mlmesh_testkit::shared_data("tabular/spambase/spambase.data");
    let spambase = spambase.to_str().unwrap();

    let out = cli(&[
        "data",
        "upload",
        spambase,
        "--name",
        "spam",
        "--target",
        "column_58",
        "--json",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uploaded: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (uploaded["rows"].as_u64(), uploaded["created"].as_bool()),
        (Some(4601), Some(true))
    );

    let out = cli(&[
        "data",
        "upload",
        spambase,
        "--name",
        "spam",
        "--target",
        "column_58",
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("already stored: spam"),
        "{text}"
    );

    let out = cli(&["data", "ls", "--json"]).await;
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["datasets"][0]["name"], "spam");
    let out = cli(&["data", "show", "spam"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("4601 rows, 58 columns") && text.contains("column_58"),
        "{text}"
    );

    // Failures: a clear message and a non-zero exit.
    let out = cli(&[
        "data", "upload", spambase, "--name", "spam2", "--target", "nope",
    ])
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown target column \"nope\""));
    let out = cli(&["data", "show", "missing"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no dataset \"missing\""));
    let out = cli(&["data", "upload", "/nonexistent.csv", "--name", "x"]).await;
    assert!(!out.status.success());

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(up.id().unwrap()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(up.wait().await.unwrap().success());
    let out = cli(&["data", "ls"]).await;
    assert!(!out.status.success(), "no platform: a clear error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("mlmesh up"));
}
