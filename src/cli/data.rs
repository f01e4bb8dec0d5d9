//! `mlmesh data upload | ls | show`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use mlmesh_protocol::data::{DatasetDetail, DatasetList, UploadResponse};

use super::{Platform, PlatformArgs, decode};

#[derive(Debug, clap::Subcommand)]
pub enum DataCommand {
    /// Upload a CSV, JSON lines or Parquet file as a new version of a dataset.
    Upload(UploadArgs),
    /// List datasets.
    Ls,
    /// Show a dataset: versions, schema and column statistics.
    Show {
        /// Dataset name.
        name: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct UploadArgs {
    /// The file to upload.
    pub file: PathBuf,
    /// Dataset name.
    #[arg(long)]
    pub name: String,
    /// Target column for supervised learning.
    #[arg(long)]
    pub target: Option<String>,
    /// csv, jsonl or parquet (detected when omitted).
    #[arg(long)]
    pub format: Option<String>,
    /// CSV delimiter: one character or `tab` (detected when omitted).
    #[arg(long)]
    pub delimiter: Option<String>,
    /// Whether the CSV has a header row (detected when omitted).
    #[arg(long)]
    pub header: Option<bool>,
    /// Type overrides, e.g. `zip:string,age:integer`.
    #[arg(long)]
    pub types: Option<String>,
    /// Missing-value tokens, comma-separated (replaces the defaults).
    #[arg(long)]
    pub na: Option<String>,
}

pub async fn run(command: DataCommand, platform: &PlatformArgs) -> anyhow::Result<()> {
    let service = Platform::locate(platform, "data")?;
    match command {
        DataCommand::Upload(args) => upload(&service, args, platform.json).await,
        DataCommand::Ls => list(&service, platform.json).await,
        DataCommand::Show { name } => show(&service, &name, platform.json).await,
    }
}

async fn upload(service: &Platform, args: UploadArgs, json: bool) -> anyhow::Result<()> {
    let file = tokio::fs::File::open(&args.file)
        .await
        .with_context(|| format!("cannot open {}", args.file.display()))?;
    let size = file.metadata().await?.len();
    let bar = ProgressBar::new(size).with_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )?
        .progress_chars("=> "),
    );
    bar.set_message("uploading");
    let counted = {
        let bar = bar.clone();
        tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                bar.inc(chunk.len() as u64);
            }
        })
    };
    let query: Vec<(&str, String)> = [
        ("target", args.target),
        ("format", args.format),
        ("delimiter", args.delimiter),
        ("header", args.header.map(|h| h.to_string())),
        ("types", args.types),
        ("na", args.na),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    let request = service
        .request(
            reqwest::Method::POST,
            &format!("/v1/datasets/{}", args.name),
        )
        .query(&query)
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(reqwest::Body::wrap_stream(counted));
    let response = request.send();
    // Once every byte is sent the service validates and stores: say so instead of a full bar.
    let waiting = {
        let bar = bar.clone();
        async move {
            loop {
                if bar.position() >= size {
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_message("validating and storing…");
                    bar.enable_steady_tick(Duration::from_millis(100));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            std::future::pending::<()>().await;
        }
    };
    let response = tokio::select! {
        response = response => response,
        () = waiting => unreachable!("pending never completes"),
    };
    bar.finish_and_clear();
    let uploaded: UploadResponse = decode(response?).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&uploaded)?);
        return Ok(());
    }
    let verb = if uploaded.created {
        "stored"
    } else {
        "already stored"
    };
    println!(
        "{verb}: {} version {} (#{}) — {} rows, {} columns{}",
        uploaded.name,
        uploaded.version,
        uploaded.number,
        uploaded.rows,
        uploaded.columns.len(),
        uploaded
            .target
            .as_ref()
            .map(|t| format!(", target {t}"))
            .unwrap_or_default()
    );
    for column in &uploaded.columns {
        println!("  {:<30} {}", column.name, column.column_type.name());
    }
    Ok(())
}

async fn list(service: &Platform, json: bool) -> anyhow::Result<()> {
    let list: DatasetList = service.get("/v1/datasets").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.datasets.is_empty() {
        println!("no datasets yet: `mlmesh data upload FILE --name NAME`");
        return Ok(());
    }
    println!(
        "{:<24} {:>8} {:<18} {:>10} {:>8}  TARGET",
        "NAME", "VERSIONS", "LATEST", "ROWS", "COLUMNS"
    );
    for d in &list.datasets {
        println!(
            "{:<24} {:>8} {:<18} {:>10} {:>8}  {}",
            d.name,
            d.versions,
            d.latest_version,
            d.rows,
            d.columns,
            d.target.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

fn number(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"))
}

async fn show(service: &Platform, name: &str, json: bool) -> anyhow::Result<()> {
    let detail: DatasetDetail = service.get(&format!("/v1/datasets/{name}")).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&detail)?);
        return Ok(());
    }
    let latest = &detail.latest;
    println!(
        "{} — latest version {} (#{}): {} rows, {} columns, {} bytes uploaded as {}{}",
        detail.name,
        latest.version,
        latest.number,
        latest.rows,
        latest.columns.len(),
        latest.bytes,
        latest.format,
        latest
            .target
            .as_ref()
            .map(|t| format!(", target {t}"))
            .unwrap_or_default()
    );
    println!(
        "\n{:<28} {:<8} {:>8} {:>6} {:>12} {:>12} {:>12} {:>12} {:>9}",
        "COLUMN", "TYPE", "COUNT", "NULLS", "MIN", "MAX", "MEAN", "STD", "DISTINCT"
    );
    for c in &latest.columns {
        let s = &c.stats;
        let distinct = if s.distinct_exact {
            s.distinct.to_string()
        } else {
            format!("~{}", s.distinct)
        };
        println!(
            "{:<28} {:<8} {:>8} {:>6} {:>12} {:>12} {:>12} {:>12} {:>9}",
            c.name,
            c.column_type.name(),
            s.count,
            s.nulls,
            number(s.min),
            number(s.max),
            number(s.mean),
            number(s.std),
            distinct
        );
        if !s.top.is_empty() && c.column_type == mlmesh_protocol::data::ColumnType::String {
            let top: Vec<String> = s
                .top
                .iter()
                .take(5)
                .map(|t| format!("{} ({})", t.value, t.count))
                .collect();
            println!("{:<28} top: {}", "", top.join(", "));
        }
    }
    println!("\nversions:");
    for v in &detail.versions {
        println!("  #{:<4} {}  {} rows", v.number, v.version, v.rows);
    }
    Ok(())
}
