//! `mlmesh detect`: the autoscaler's anomaly detector over a recorded series, offline. With
//! `--labels` (NAB's `combined_windows.json`) it scores the events against the labelled
//! windows: precision, recall and the NAB-style score.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use mlmesh_forecast::anomaly::{Detector, Settings, nab_score};
use mlmesh_forecast::series::parse_timestamp;
use mlmesh_forecast::{read_trace, season};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct DetectArgs {
    /// The series: CSV `timestamp,value`.
    #[arg(long)]
    pub trace: PathBuf,
    /// Labelled anomaly windows, NAB's `combined_windows.json` (keyed by `dir/file.csv`).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Robust z-score beyond which a point is anomalous.
    #[arg(long, default_value_t = 5.0)]
    pub threshold: f64,
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: DetectArgs) -> anyhow::Result<()> {
    if !(args.threshold.is_finite() && args.threshold > 0.0) {
        bail!(
            "--threshold must be a positive number, not {}",
            args.threshold
        );
    }
    let file = std::fs::File::open(&args.trace)
        .with_context(|| format!("cannot open the series {}", args.trace.display()))?;
    let (series, ingest) = read_trace(std::io::BufReader::new(file), 1.0)
        .with_context(|| format!("cannot read the series {}", args.trace.display()))?;
    let period = season::period(series.step, series.len());
    let settings = Settings {
        threshold: args.threshold,
        ..Settings::for_period(period)
    };
    let mut detector = Detector::new(settings.clone());
    let events: Vec<_> = series
        .values
        .iter()
        .filter_map(|v| detector.observe(*v))
        .collect();
    let time_of = |i: usize| series.start + i as f64 * series.step;
    let stamp = |t: f64| {
        chrono::DateTime::from_timestamp(t as i64, 0).map_or_else(
            || format!("{t}"),
            |d| d.format("%Y-%m-%d %H:%M:%S").to_string(),
        )
    };
    let evaluation = match &args.labels {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the labels {}", path.display()))?;
            let labels: BTreeMap<String, Vec<(String, String)>> = serde_json::from_str(&text)
                .with_context(|| {
                    format!(
                        "{} is not a map of \"dir/file.csv\" to [[start, end], …]",
                        path.display()
                    )
                })?;
            let trace = args.trace.to_string_lossy().replace('\\', "/");
            let Some((_, windows)) = labels.iter().find(|(k, _)| trace.ends_with(k.as_str()))
            else {
                bail!(
                    "{} has no windows for {}; its keys look like {:?}",
                    path.display(),
                    args.trace.display(),
                    labels.keys().next()
                );
            };
            let index = |text: &str| -> anyhow::Result<usize> {
                let t = parse_timestamp(text)
                    .with_context(|| format!("label {text:?} is not a timestamp"))?;
                let i = ((t - series.start) / series.step).round();
                Ok(i.clamp(0.0, (series.len() - 1) as f64) as usize)
            };
            let windows: Vec<(usize, usize)> = windows
                .iter()
                .map(|(a, b)| Ok((index(a)?, index(b)?)))
                .collect::<anyhow::Result<_>>()?;
            let at: Vec<usize> = events.iter().map(|e| e.index).collect();
            Some(nab_score(&at, &windows, series.len()))
        }
    };
    let report = json!({
        "trace": args.trace.display().to_string(),
        "points": series.len(),
        "step_s": series.step,
        "period_steps": period,
        "ingest": ingest,
        "settings": settings,
        "events": events.iter().map(|e| json!({
            "at": stamp(time_of(e.index)), "value": e.value, "expected": e.expected, "score": e.score,
        })).collect::<Vec<_>>(),
        "evaluation": evaluation,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{}: {} points at {} s, season {} steps; {} events (|z| > {})",
        args.trace.display(),
        series.len(),
        series.step,
        period,
        events.len(),
        args.threshold
    );
    for e in &events {
        println!(
            "  {}  value {:.3}  expected {:.3}  z {:+.1}",
            stamp(time_of(e.index)),
            e.value,
            e.expected,
            e.score
        );
    }
    if let Some(e) = evaluation {
        println!(
            "windows found {}/{}  precision {:.2}  recall {:.2}  NAB-style score {:.1}",
            e.windows_found, e.windows, e.precision, e.recall, e.nab_score
        );
    }
    Ok(())
}
