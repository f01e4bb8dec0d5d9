//! `mlmesh bench`: the load test of the reference design — N virtual users for a duration —
//! against the gateway, directly against a model service (`--direct`), or against any Open
//! Inference Protocol server (`--url`, to measure peers with the same load generator).
//! Closed loop by default (each user sends its next request when the last one is answered);
//! `--rate R` makes it open loop: requests start on a fixed schedule whatever the answers do,
//! and latency counts from the scheduled start, so a stall is not hidden (no coordinated
//! omission). For an ensemble, `--direct` runs the direct variant: this process calls the
//! members through the SDK and combines.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mlmesh_client::Direct;
use mlmesh_protocol::Endpoints;
use mlmesh_protocol::data::ColumnType;
use mlmesh_protocol::gateway::Ensemble;
use mlmesh_protocol::model::{ModelDetail, ModelList};
use mlmesh_protocol::v2::InferRequest;
use serde_json::json;
use tokio::time::Instant;

use super::{Platform, PlatformArgs};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Virtual users (closed loop), or the most requests in flight (open loop).
    #[arg(long, default_value_t = 20)]
    pub users: usize,
    /// How long to send load, e.g. `60s`, `500ms`, `2m`.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// The model or ensemble (default: the first model listed).
    #[arg(long)]
    pub model: Option<String>,
    /// Straight to the model's service, bypassing the gateway (an ensemble: the SDK's direct variant).
    #[arg(long)]
    pub direct: bool,
    /// Open loop: start this many requests per second on a fixed schedule.
    #[arg(long)]
    pub rate: Option<f64>,
    /// The inference request (JSON, or @FILE); default: one row of zeros in the model's shape.
    #[arg(long)]
    pub request: Option<String>,
    /// Any Open Inference Protocol server's base URL instead of the platform (needs --model and --request).
    #[arg(long)]
    pub url: Option<String>,
    /// Requests sent before measuring, to warm connections and caches.
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((text, "s"), |i| text.split_at(i));
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 60s, 500ms or 2m"))?;
    let seconds = match unit {
        "us" => n / 1e6,
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{text:?}: use us, ms, s, m or h")),
    };
    if !(seconds > 0.0 && seconds <= 86_400.0) {
        return Err(format!("{text:?} must be more than 0 and at most a day"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// What one request goes to.
#[derive(Clone)]
enum Target {
    Http {
        client: Box<Client<HttpConnector, Full<Bytes>>>,
        uri: http::Uri,
        key: Option<String>,
        body: Bytes,
    },
    Direct {
        direct: Arc<Direct>,
        ensemble: Arc<Ensemble>,
        request: Arc<InferRequest>,
    },
}

impl Target {
    async fn send(&self) -> bool {
        self.try_send().await.is_ok()
    }

    /// One request; the error says what came back.
    async fn try_send(&self) -> Result<(), String> {
        match self {
            Self::Http {
                client,
                uri,
                key,
                body,
            } => {
                let mut request = http::Request::post(uri.clone())
                    .header(http::header::CONTENT_TYPE, "application/json");
                if let Some(key) = key {
                    request = request.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
                }
                let request = request
                    .body(Full::new(body.clone()))
                    .map_err(|e| e.to_string())?;
                let response = client.request(request).await.map_err(|e| e.to_string())?;
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                if status == http::StatusCode::OK {
                    Ok(())
                } else {
                    Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
                }
            }
            Self::Direct {
                direct,
                ensemble,
                request,
            } => direct
                .infer(ensemble, request)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }
}

fn endpoints(platform: &PlatformArgs) -> anyhow::Result<Endpoints> {
    let path = platform.data_dir.join("endpoints.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("--direct needs the running platform's {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// One row of zeros in the model's input shape.
fn zeros(detail: &ModelDetail) -> anyhow::Result<InferRequest> {
    let inputs = &detail.latest.signature.inputs;
    if inputs.iter().any(|f| f.column_type == ColumnType::String) {
        bail!(
            "model {} takes text columns; give the request with --request",
            detail.name
        );
    }
    Ok(serde_json::from_value(json!({"inputs": [{
        "name": "input", "shape": [1, inputs.len()], "datatype": "FP64", "data": vec![0.0; inputs.len()]
    }]}))?)
}

pub async fn run(args: BenchArgs, platform: &PlatformArgs) -> anyhow::Result<()> {
    if args.users == 0 {
        bail!("--users must be at least 1");
    }
    let given: Option<InferRequest> = match &args.request {
        Some(text) => {
            let text = match text.strip_prefix('@') {
                Some(path) => {
                    std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?
                }
                None => text.clone(),
            };
            Some(serde_json::from_str(&text).context("--request is not an inference request")?)
        }
        None => None,
    };
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.users.max(16))
        .build(connector);

    let (target, base, model) = if let Some(url) = &args.url {
        let model = args.model.clone().context("--url needs --model")?;
        let request = given.context("--url needs --request")?;
        let base = url.trim_end_matches('/').to_string();
        let uri = format!("{base}/v2/models/{model}/infer").parse()?;
        let target = Target::Http {
            client: Box::new(client.clone()),
            uri,
            key: platform.api_key.clone(),
            body: Bytes::from(serde_json::to_vec(&request)?),
        };
        (target, base, model)
    } else {
        let gateway = Platform::locate(platform, "gateway")?;
        let model = match &args.model {
            Some(m) => m.clone(),
            None => {
                let list: ModelList = gateway.get("/v1/models").await?;
                list.models
                    .first()
                    .map(|m| m.name.clone())
                    .context("no models yet: train one with `mlmesh train`")?
            }
        };
        let ensemble: Option<Ensemble> = gateway.get(&format!("/v1/ensembles/{model}")).await.ok();
        let request = match (given, &ensemble) {
            (Some(r), _) => r,
            (None, Some(e)) => {
                let first = e
                    .members
                    .iter()
                    .find(|m| m.spec.url.is_none())
                    .context("give --request: no member is an mlmesh model")?;
                zeros(
                    &gateway
                        .get(&format!("/v1/models/{}", first.spec.model))
                        .await?,
                )?
            }
            (None, None) => zeros(&gateway.get(&format!("/v1/models/{model}")).await?)?,
        };
        let body = Bytes::from(serde_json::to_vec(&request)?);
        match (args.direct, ensemble) {
            (false, _) => {
                let uri = format!("{}/v2/models/{model}/infer", gateway.base).parse()?;
                (
                    Target::Http {
                        client: Box::new(client.clone()),
                        uri,
                        key: gateway_key(platform),
                        body,
                    },
                    gateway.base.clone(),
                    model,
                )
            }
            (true, Some(ensemble)) => {
                let direct = Direct::connect(&endpoints(platform)?.registry).await?;
                let base = "direct (SDK)".to_string();
                (
                    Target::Direct {
                        direct: Arc::new(direct),
                        ensemble: Arc::new(ensemble),
                        request: Arc::new(request),
                    },
                    base,
                    model,
                )
            }
            (true, None) => {
                let endpoints = endpoints(platform)?;
                let mut found = None;
                'search: for (service, urls) in &endpoints.services {
                    if !service.starts_with("model-") {
                        continue;
                    }
                    for url in urls {
                        let r = reqwest::get(format!("{url}/v2/models/{model}/ready")).await;
                        if r.is_ok_and(|r| r.status().is_success()) {
                            found = Some(url.clone());
                            break 'search;
                        }
                    }
                }
                let base = found.with_context(|| format!("no model service serves {model}"))?;
                let uri = format!("{base}/v2/models/{model}/infer").parse()?;
                (
                    Target::Http {
                        client: Box::new(client.clone()),
                        uri,
                        key: None,
                        body,
                    },
                    base,
                    model,
                )
            }
        }
    };

    for _ in 0..args.warmup {
        target.send().await;
    }
    if let Err(error) = target.try_send().await {
        bail!("a request to {model} at {base} failed: {error}");
    }
    let (histogram, requests, errors, elapsed) = match args.rate {
        None => closed_loop(&target, args.users, args.duration).await,
        Some(rate) if rate > 0.0 && rate <= 1e6 => {
            open_loop(&target, rate, args.users, args.duration).await
        }
        Some(_) => bail!("--rate must be between 0 and 1000000 requests per second"),
    };
    let ms = |v: u64| v as f64 / 1000.0;
    let report = json!({
        "target": base,
        "model": model,
        "users": args.users,
        "duration_s": args.duration.as_secs_f64(),
        "mode": if args.rate.is_some() { "open" } else { "closed" },
        "rate": args.rate,
        "requests": requests,
        "errors": errors,
        "rps": requests as f64 / elapsed.as_secs_f64(),
        "latency_ms": {
            "avg": histogram.mean() / 1000.0,
            "p50": ms(histogram.value_at_quantile(0.50)),
            "p90": ms(histogram.value_at_quantile(0.90)),
            "p99": ms(histogram.value_at_quantile(0.99)),
            "max": ms(histogram.max()),
        }
    });
    if platform.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let l = &report["latency_ms"];
    println!(
        "target {base}  model {model}  users {}  {} loop  {:.0} s",
        args.users,
        report["mode"].as_str().unwrap_or(""),
        args.duration.as_secs_f64()
    );
    println!(
        "{:>10} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "requests", "errors", "req/s", "avg ms", "p50", "p90", "p99", "max"
    );
    println!(
        "{:>10} {:>8} {:>10.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
        requests,
        errors,
        report["rps"].as_f64().unwrap_or(0.0),
        l["avg"].as_f64().unwrap_or(0.0),
        l["p50"].as_f64().unwrap_or(0.0),
        l["p90"].as_f64().unwrap_or(0.0),
        l["p99"].as_f64().unwrap_or(0.0),
        l["max"].as_f64().unwrap_or(0.0)
    );
    Ok(())
}

fn gateway_key(platform: &PlatformArgs) -> Option<String> {
    platform.api_key.clone().or_else(|| {
        std::fs::read_to_string(platform.data_dir.join("admin.key"))
            .ok()
            .map(|k| k.trim().to_string())
    })
}

fn histogram() -> Histogram<u64> {
    // Microseconds, up to 60 s, 3 significant digits: constant, valid bounds.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

async fn closed_loop(
    target: &Target,
    users: usize,
    duration: Duration,
) -> (Histogram<u64>, u64, u64, Duration) {
    let start = Instant::now();
    let until = start + duration;
    let tasks: Vec<_> = (0..users)
        .map(|_| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut h = histogram();
                let (mut n, mut errors) = (0u64, 0u64);
                while Instant::now() < until {
                    let t = Instant::now();
                    let ok = target.send().await;
                    let _ = h.record(t.elapsed().as_micros() as u64);
                    n += 1;
                    errors += u64::from(!ok);
                }
                (h, n, errors)
            })
        })
        .collect();
    let mut all = histogram();
    let (mut n, mut errors) = (0, 0);
    for t in tasks {
        if let Ok((h, tn, te)) = t.await {
            let _ = all.add(&h);
            n += tn;
            errors += te;
        }
    }
    (all, n, errors, start.elapsed())
}

async fn open_loop(
    target: &Target,
    rate: f64,
    max_in_flight: usize,
    duration: Duration,
) -> (Histogram<u64>, u64, u64, Duration) {
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let total = (duration.as_secs_f64() * rate) as u64;
    let limit = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1) * 50));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, bool)>();
    for i in 0..total {
        let intended = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(intended).await;
        let target = target.clone();
        let tx = tx.clone();
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
            break;
        };
        tokio::spawn(async move {
            let ok = target.send().await;
            // From the scheduled start, not the actual one: waiting to send is latency too.
            let _ = tx.send((intended.elapsed().as_micros() as u64, ok));
            drop(permit);
        });
    }
    drop(tx);
    let mut h = histogram();
    let (mut n, mut errors) = (0, 0);
    while let Some((us, ok)) = rx.recv().await {
        let _ = h.record(us);
        n += 1;
        errors += u64::from(!ok);
    }
    (h, n, errors, start.elapsed())
}
