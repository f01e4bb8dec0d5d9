//! `mlmesh train` and `mlmesh predict`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use mlmesh_protocol::model::{
    Job, JobState, ModelVersion, TrainRequest, Validation, family_of, service_name,
};
use mlmesh_protocol::v2::{Datatype, InferInput, InferRequest, InferResponse};
use serde_json::Value;

use super::{Platform, PlatformArgs, decode};

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Dataset to train on.
    #[arg(long)]
    pub dataset: String,
    /// Dataset version: `latest`, a number or an address.
    #[arg(long)]
    pub dataset_version: Option<String>,
    /// Algorithm, e.g. random_forest, logistic_regression, mlp.
    #[arg(long)]
    pub algorithm: String,
    /// Model name (a new version is added if it exists).
    #[arg(long)]
    pub model: String,
    /// Hyper-parameter `k=v` (repeatable); values are JSON when they parse (`[64,32]`, `null`).
    #[arg(long = "param", value_name = "K=V", value_parser = crate::parse_override)]
    pub params: Vec<(String, String)>,
    /// Validate with k folds instead of a holdout.
    #[arg(long, conflicts_with = "holdout")]
    pub kfold: Option<usize>,
    /// Share of rows held out for validation (default 0.2).
    #[arg(long)]
    pub holdout: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Column to predict (default: the dataset's target).
    #[arg(long)]
    pub target: Option<String>,
    /// Return once the job is queued instead of following it.
    #[arg(long)]
    pub no_wait: bool,
}

pub async fn train(args: TrainArgs, platform: &PlatformArgs) -> anyhow::Result<()> {
    let family = family_of(&args.algorithm).with_context(|| {
        let all: Vec<&str> = mlmesh_protocol::model::FAMILIES
            .iter()
            .flat_map(|(_, a)| a.iter().copied())
            .collect();
        format!(
            "unknown algorithm {:?}; valid: {}",
            args.algorithm,
            all.join(", ")
        )
    })?;
    let service = Platform::locate(platform, &service_name(family))?;
    let params: BTreeMap<String, Value> = args
        .params
        .iter()
        .map(|(k, v)| (k.clone(), mlmesh_learn::params::parse_cli_value(v)))
        .collect();
    let validation = match (args.kfold, args.holdout) {
        (Some(k), _) => Some(Validation::Kfold(k)),
        (None, Some(f)) => Some(Validation::Holdout(f)),
        _ => None,
    };
    let request = TrainRequest {
        dataset: args.dataset,
        dataset_version: args.dataset_version,
        algorithm: args.algorithm,
        params,
        validation,
        seed: args.seed,
        target: args.target,
        features: None,
        keep_oof: false,
    };
    let response = service
        .request(
            reqwest::Method::POST,
            &format!("/v1/models/{}/train", args.model),
        )
        .json(&request)
        .send()
        .await?;
    let mut job: Job = decode(response).await?;
    if args.no_wait {
        return print_job(&job, platform.json);
    }
    let bar = (!platform.json).then(|| {
        let bar = ProgressBar::new(1000);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg:>9} [{bar:40}] {percent:>3}% {elapsed}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar
    });
    while !job.state.is_final() {
        if let Some(bar) = &bar {
            bar.set_message(job.state.name());
            bar.set_position((job.progress * 1000.0) as u64);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        job = service.get(&format!("/v1/jobs/{}", job.job)).await?;
    }
    if let Some(bar) = bar {
        bar.set_position((job.progress * 1000.0) as u64);
        bar.finish_and_clear();
    }
    print_job(&job, platform.json)?;
    if job.state != JobState::Succeeded {
        bail!(
            "training {}: {}",
            job.state.name(),
            job.error.unwrap_or_default()
        );
    }
    Ok(())
}

fn print_job(job: &Job, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(job)?);
        return Ok(());
    }
    match job.version {
        Some(v) => println!(
            "{} version {v} ({}, job {}): {}",
            job.model,
            job.algorithm,
            job.job,
            job.state.name()
        ),
        None => println!(
            "job {} for {} ({}): {}",
            job.job,
            job.model,
            job.algorithm,
            job.state.name()
        ),
    }
    for (name, value) in job.metrics.iter().flatten() {
        println!("  {name:<16} {value:.4}");
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// Model name.
    #[arg(long)]
    pub model: String,
    /// Version (default: the latest).
    #[arg(long)]
    pub version: Option<String>,
    /// An Open Inference Protocol request, as JSON text or @FILE.
    #[arg(long, conflicts_with = "csv", required_unless_present = "csv")]
    pub json: Option<String>,
    /// A CSV file with a header row naming the model's columns; one prediction per row.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Also answer class probabilities.
    #[arg(long)]
    pub probabilities: bool,
}

/// Where predictions go: the gateway (from `--gateway` or `endpoints.json`), which serves
/// models and ensembles alike.
async fn locate_model(platform: &PlatformArgs, _model: &str) -> anyhow::Result<Platform> {
    Platform::locate(platform, "gateway")
}

pub async fn predict(args: PredictArgs, platform: &PlatformArgs) -> anyhow::Result<()> {
    let service = locate_model(platform, &args.model).await?;
    let requests: Vec<InferRequest> =
        match (&args.json, &args.csv) {
            (Some(text), _) => {
                let text = match text.strip_prefix('@') {
                    Some(path) => std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {path}"))?,
                    None => text.clone(),
                };
                vec![serde_json::from_str(&text).context("--json is not an inference request")?]
            }
            (None, Some(path)) => {
                // The columns come from the model, or for an ensemble from its first mlmesh member.
                let ensemble: Option<mlmesh_protocol::gateway::Ensemble> = service
                    .get(&format!("/v1/ensembles/{}", args.model))
                    .await
                    .ok();
                let (model, version) = match &ensemble {
                    Some(e) => {
                        let first =
                            e.members.iter().find(|m| m.spec.url.is_none()).context(
                                "no member of this ensemble is an mlmesh model; use --json",
                            )?;
                        (first.spec.model.clone(), first.spec.version.clone())
                    }
                    None => (args.model.clone(), args.version.clone()),
                };
                let info: ModelVersion = service
                    .get(&format!(
                        "/v1/models/{model}/versions/{}",
                        version.as_deref().unwrap_or("latest")
                    ))
                    .await?;
                csv_requests(path, &info)?
            }
            (None, None) => bail!("give --json or --csv"),
        };
    let path = match &args.version {
        Some(v) => format!("/v2/models/{}/versions/{v}/infer", args.model),
        None => format!("/v2/models/{}/infer", args.model),
    };
    for mut request in requests {
        if args.probabilities {
            request
                .parameters
                .get_or_insert_with(Default::default)
                .insert("probabilities".into(), Value::Bool(true));
        }
        answer(
            &service,
            &path,
            &request,
            args.csv.is_none() || platform.json,
        )
        .await?;
    }
    Ok(())
}

/// Sends one request and prints the answer: as JSON, or one tab-separated line per row (the
/// label or value first, then probabilities).
async fn answer(
    service: &Platform,
    path: &str,
    request: &InferRequest,
    json: bool,
) -> anyhow::Result<()> {
    let response: InferResponse = decode(
        service
            .request(reqwest::Method::POST, path)
            .json(request)
            .send()
            .await?,
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&response)?);
        return Ok(());
    }
    let first = response
        .outputs
        .first()
        .context("the model answered no outputs")?;
    let rows = first.shape.first().copied().unwrap_or(0) as usize;
    for r in 0..rows {
        let mut cells: Vec<String> = Vec::new();
        for output in &response.outputs {
            let width = output.data.len() / rows.max(1);
            let values: Vec<String> = output.data[r * width..(r + 1) * width]
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) if output.name != "label" => {
                        format!("{:.4}", n.as_f64().unwrap_or_default())
                    }
                    other => other.to_string(),
                })
                .collect();
            cells.push(values.join(" "));
        }
        println!("{}", cells.join("\t"));
    }
    Ok(())
}

/// Rows per request from a CSV file: well under the services' batch limit.
const CSV_BATCH: usize = 1000;

/// One input per model column, read from a CSV with a header, in requests of [`CSV_BATCH`] rows.
fn csv_requests(path: &PathBuf, info: &ModelVersion) -> anyhow::Result<Vec<InferRequest>> {
    // The delimiter is detected as the data service does (`,`, `;`, tab, `|`).
    let sample: Vec<u8> = {
        use std::io::Read;
        let mut head = Vec::with_capacity(64 * 1024);
        std::fs::File::open(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .take(64 * 1024)
            .read_to_end(&mut head)?;
        head
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(mlmesh_data::ingest::detect_delimiter(&sample))
        .from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let headers = reader.headers()?.clone();
    let mut positions = Vec::new();
    for feature in &info.signature.inputs {
        let at = headers
            .iter()
            .position(|h| h == feature.name)
            .with_context(|| format!("{} has no column {:?}", path.display(), feature.name))?;
        positions.push(at);
    }
    let mut columns: Vec<Vec<Value>> = vec![Vec::new(); positions.len()];
    for (line, record) in reader.records().enumerate() {
        let record = record?;
        for ((column, &at), feature) in columns
            .iter_mut()
            .zip(&positions)
            .zip(&info.signature.inputs)
        {
            let cell = record.get(at).unwrap_or_default().trim();
            let value = match feature.column_type {
                mlmesh_protocol::data::ColumnType::String => Value::from(cell),
                mlmesh_protocol::data::ColumnType::Boolean => {
                    Value::from(matches!(cell, "true" | "1" | "True" | "TRUE"))
                }
                _ => Value::from(cell.parse::<f64>().with_context(|| {
                    format!(
                        "line {}: {:?} in column {:?} is not a number",
                        line + 2,
                        cell,
                        feature.name
                    )
                })?),
            };
            column.push(value);
        }
    }
    let rows = columns.first().map_or(0, Vec::len);
    let mut requests = Vec::new();
    for start in (0..rows).step_by(CSV_BATCH) {
        let end = (start + CSV_BATCH).min(rows);
        let inputs = info
            .signature
            .inputs
            .iter()
            .zip(&columns)
            .map(|(feature, data)| InferInput {
                name: feature.name.clone(),
                shape: vec![(end - start) as i64],
                datatype: match feature.column_type {
                    mlmesh_protocol::data::ColumnType::String => Datatype::Bytes,
                    mlmesh_protocol::data::ColumnType::Boolean => Datatype::Bool,
                    _ => Datatype::Fp64,
                },
                parameters: None,
                data: Value::Array(data[start..end].to_vec()),
            })
            .collect();
        requests.push(InferRequest {
            id: None,
            parameters: None,
            inputs,
            outputs: None,
        });
    }
    Ok(requests)
}
