//! `mlmesh simulate`: replays a load trace through the discrete-event model of the platform
//! under each scaling policy, and reports SLO-violation time, replica-hours, dropped requests
//! and the forecaster's error (MASE against seasonal naive), with an SVG plot of load,
//! forecast and replicas. Runs offline: no platform needed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use mlmesh_forecast::{Selector, Settings, read_trace, season};
use mlmesh_scaling::{Forecasts, Kind, Limits, Outcome, Platform, sim};
use rayon::prelude::*;
use serde_json::json;

use super::bench::parse_duration;

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// The trace: CSV `timestamp,value` (a rate per step), or a per-request arrival log (first
    /// column the timestamp, e.g. the Azure LLM traces).
    #[arg(long)]
    pub trace: PathBuf,
    /// Policies to compare (repeatable; default all three).
    #[arg(long = "policy", value_parser = ["reactive", "predictive", "hybrid"])]
    pub policies: Vec<String>,
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
    /// Write a plot of load, forecast and replicas over time (SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Values are requests per step (`count`) or per second (`rps`).
    #[arg(long, default_value = "count", value_parser = ["count", "rps"])]
    pub unit: String,
    /// Bin width for arrival logs.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub bin: Duration,
    /// Scale the trace so its peak is this many replicas' full capacity.
    #[arg(long, default_value_t = 7.0, conflicts_with = "scale")]
    pub peak_replicas: f64,
    /// Multiply the trace's rates by this instead.
    #[arg(long)]
    pub scale: Option<f64>,
    /// Mean service time of one request.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub service: Duration,
    /// Coefficient of variation of the service time (log-normal).
    #[arg(long, default_value_t = 0.5)]
    pub service_cv: f64,
    /// Requests one replica serves at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: u32,
    /// Time from starting a replica to its first answer.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub startup: Duration,
    /// Time between scaling decisions.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub interval: Duration,
    /// p99 latency target.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub slo: Duration,
    /// Window over which p99 is judged.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub window: Duration,
    /// Requests waiting longer than this are dropped.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub queue_timeout: Duration,
    /// Route: through the gateway (adds its hop) or direct to the model service.
    #[arg(long, default_value = "gateway", value_parser = ["gateway", "direct"])]
    pub via: String,
    /// The gateway's hop latency.
    #[arg(long, default_value = "200us", value_parser = parse_duration)]
    pub hop: Duration,
    #[arg(long, default_value_t = 1)]
    pub min_replicas: u32,
    #[arg(long, default_value_t = 50)]
    pub max_replicas: u32,
    /// Busy fraction a replica should run at.
    #[arg(long, default_value_t = 0.7)]
    pub target_utilisation: f64,
    /// Scale-down waits for the highest recommendation of this long.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub stabilisation: Duration,
    /// Hybrid's reactive part may scale down after this instead (e.g. 75s, the forecast
    /// horizon): fewer idle replicas where the forecast follows the load, more risk in bursts.
    #[arg(long, value_parser = parse_duration)]
    pub hybrid_stabilisation: Option<Duration>,
    /// Scale-up adds at most max(this, current) replicas per decision.
    #[arg(long, default_value_t = 4)]
    pub max_scale_up: u32,
    /// Coverage of the forecast interval; the predictive policies provision for its upper
    /// end (0.5: the upper quartile of the forecast's recent errors; 0.3: the 65th percentile).
    #[arg(long, default_value_t = 0.5)]
    pub level: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let file = std::fs::File::open(&args.trace)
        .with_context(|| format!("cannot open the trace {}", args.trace.display()))?;
    let (series, ingest) = read_trace(std::io::BufReader::new(file), args.bin.as_secs_f64())
        .with_context(|| format!("cannot read the trace {}", args.trace.display()))?;
    let step = series.step;
    let per_second = if args.unit == "rps" { 1.0 } else { 1.0 / step };
    let raw: Vec<f64> = series.values.iter().map(|v| v * per_second).collect();
    let peak = raw.iter().copied().fold(0.0, f64::max);
    if peak <= 0.0 {
        bail!("the trace has no load (every value is 0)");
    }

    let platform = Platform {
        service_s: args.service.as_secs_f64(),
        service_cv: args.service_cv,
        concurrency: args.concurrency,
        startup_s: args.startup.as_secs_f64(),
        interval_s: args.interval.as_secs_f64(),
        slo_p99_s: args.slo.as_secs_f64(),
        window_s: args.window.as_secs_f64(),
        hop_s: if args.via == "gateway" {
            args.hop.as_secs_f64()
        } else {
            0.0
        },
        queue_timeout_s: args.queue_timeout.as_secs_f64(),
        initial_replicas: args.min_replicas,
        seed: args.seed,
    };
    platform.check().map_err(anyhow::Error::msg)?;
    let limits = Limits {
        min_replicas: args.min_replicas,
        max_replicas: args.max_replicas,
        target_utilisation: args.target_utilisation,
        capacity_rps: platform.capacity_rps(),
        scale_down_stabilisation_s: args.stabilisation.as_secs_f64(),
        hybrid_stabilisation_s: args.hybrid_stabilisation.map(|d| d.as_secs_f64()),
        forecast_horizon_s: platform.startup_s + platform.interval_s,
        max_scale_up: args.max_scale_up,
        ..Limits::default()
    };
    limits.check().map_err(anyhow::Error::msg)?;
    if !(args.level > 0.0 && args.level < 1.0) {
        bail!(
            "--level is an interval coverage between 0 and 1, not {}",
            args.level
        );
    }
    let scale = match args.scale {
        Some(s) if s.is_finite() && s > 0.0 => s,
        Some(s) => bail!("--scale must be a positive number, not {s}"),
        None if args.peak_replicas.is_finite() && args.peak_replicas > 0.0 => {
            args.peak_replicas * limits.capacity_rps / peak
        }
        None => bail!("--peak-replicas must be a positive number"),
    };
    let rates: Vec<f64> = raw.iter().map(|r| r * scale).collect();
    let requests = rates.iter().sum::<f64>() * step;
    if requests > 2e9 {
        bail!(
            "the scaled trace holds about {requests:.1e} requests, too many to simulate one by one; \
             lower --peak-replicas or --scale, or raise --service"
        );
    }

    let kinds: Vec<Kind> = if args.policies.is_empty() {
        Kind::ALL.to_vec()
    } else {
        args.policies
            .iter()
            .filter_map(|p| Kind::parse(p))
            .collect()
    };

    // Forecasts are made once, step by step, from the rates observed so far.
    let period = season::period(step, rates.len());
    let horizon_steps = ((platform.startup_s + platform.interval_s) / step).ceil() as usize + 1;
    let (models, refit) = mlmesh_forecast::standard(period, horizon_steps);
    let mut selector = Selector::new(
        models,
        Settings {
            horizon: horizon_steps,
            window: period.max(48),
            level: args.level,
            refit,
        },
    );
    let started = std::time::Instant::now();
    let mut forecasts = Forecasts::default();
    let mut chosen: std::collections::BTreeMap<&'static str, usize> = Default::default();
    for (i, rate) in rates.iter().enumerate() {
        if i == 0 {
            forecasts.upper.push(Vec::new());
        }
        selector.observe(*rate);
        let f = selector.forecast();
        *chosen.entry(f.forecaster).or_default() += 1;
        forecasts.upper.push(f.upper);
    }
    let forecast_time = started.elapsed();
    let scores = selector.scores();
    let most_used = chosen
        .iter()
        .max_by_key(|(_, n)| **n)
        .map_or("seasonal_naive", |(name, _)| *name);
    let selected = scores
        .iter()
        .find(|s| s.forecaster == "selected")
        .map_or(f64::NAN, |s| s.mase);

    let started = std::time::Instant::now();
    // Policies replay independently: one per core.
    let outcomes: Vec<Outcome> = kinds
        .par_iter()
        .map(|&kind| {
            sim::run_policy(
                kind,
                limits.clone(),
                &rates,
                step,
                &platform,
                Some(&forecasts),
            )
            .map_err(anyhow::Error::msg)
        })
        .collect::<anyhow::Result<_>>()?;
    let simulate_time = started.elapsed();

    if let Some(path) = &args.plot {
        plot(path, &args.trace, &rates, step, &forecasts, &outcomes)
            .with_context(|| format!("cannot write the plot {}", path.display()))?;
    }

    let number = |v: f64| if v.is_finite() { json!(v) } else { json!(null) };
    let mut policies = serde_json::Map::new();
    for o in &outcomes {
        let forecasting = o.policy != "reactive";
        policies.insert(
            o.policy.to_string(),
            json!({
                "slo_violation_s": o.slo_violation_s,
                "replica_hours": o.replica_hours,
                "dropped": o.dropped,
                "forecaster": if forecasting { json!(most_used) } else { json!(null) },
                "mase": if forecasting { number(selected) } else { json!(null) },
                "requests": o.requests,
                "decisions": o.decisions.len(),
            }),
        );
    }
    let report = json!({
        "trace": args.trace.display().to_string(),
        "policies": policies,
        "forecasters": scores.iter().map(|s| json!({
            "forecaster": s.forecaster, "mase": number(s.mase), "mae_rps": number(s.mae), "scored": s.scored,
        })).collect::<Vec<_>>(),
        "ingest": ingest,
        "step_s": step,
        "points": rates.len(),
        "period_steps": period,
        "horizon_steps": horizon_steps,
        "scale": scale,
        "peak_rps": peak * scale,
        "capacity_rps_per_replica": limits.capacity_rps,
        "seconds": {"forecast": forecast_time.as_secs_f64(), "simulate": simulate_time.as_secs_f64()},
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{}: {} points at {} s ({} rows read: {} out of order, {} duplicates merged, {} filled); \
         peak {:.1} req/s after scaling ×{:.3}; {:.1} req/s per replica",
        args.trace.display(),
        rates.len(),
        step,
        ingest.rows,
        ingest.out_of_order,
        ingest.duplicates,
        ingest.filled,
        peak * scale,
        scale,
        limits.capacity_rps
    );
    println!(
        "\n{:<11} {:>16} {:>14} {:>10} {:>12} {:>16} {:>6}",
        "policy", "SLO violation", "replica-hours", "dropped", "requests", "forecaster", "MASE"
    );
    for o in &outcomes {
        let forecasting = o.policy != "reactive";
        println!(
            "{:<11} {:>14.0} s {:>14.1} {:>10} {:>12} {:>16} {:>6}",
            o.policy,
            o.slo_violation_s,
            o.replica_hours,
            o.dropped,
            o.requests,
            if forecasting { most_used } else { "-" },
            if forecasting {
                format!("{selected:.3}")
            } else {
                "-".into()
            }
        );
    }
    println!("\nforecasters at the {horizon_steps}-step horizon (MASE < 1 beats seasonal naive):");
    for s in &scores {
        println!(
            "  {:<16} MASE {:>6.3}  MAE {:>9.2} req/s  over {} origins",
            s.forecaster, s.mase, s.mae, s.scored
        );
    }
    println!(
        "\nforecasting took {:.2} s, simulating {:.2} s",
        forecast_time.as_secs_f64(),
        simulate_time.as_secs_f64()
    );
    if let Some(path) = &args.plot {
        println!("plot: {}", path.display());
    }
    Ok(())
}

/// Two panels: load and forecast (requests/s) above, replicas per policy below.
fn plot(
    path: &Path,
    trace: &Path,
    rates: &[f64],
    step: f64,
    forecasts: &Forecasts,
    outcomes: &[Outcome],
) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let hours = |i: usize| i as f64 * step / 3600.0;
    let end = hours(rates.len());
    let root = SVGBackend::new(path, (1400, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(420);
    let name = trace
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let upper: Vec<(f64, f64)> = forecasts
        .upper
        .iter()
        .enumerate()
        .take(rates.len())
        .filter_map(|(i, row)| row.first().map(|u| (hours(i), *u)))
        .collect();
    let top_max = rates
        .iter()
        .copied()
        .chain(upper.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.05;
    let mut chart = ChartBuilder::on(&top)
        .caption(format!("{name}: load and forecast"), ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..top_max)?;
    chart
        .configure_mesh()
        .x_desc("hours")
        .y_desc("requests/s")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            rates.iter().enumerate().map(|(i, r)| (hours(i), *r)),
            BLACK.stroke_width(1),
        ))?
        .label("load")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart
        .draw_series(LineSeries::new(upper, BLUE.mix(0.7).stroke_width(1)))?
        .label("forecast (upper, next step)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    let most = outcomes
        .iter()
        .flat_map(|o| o.timeline.iter().map(|s| s.replicas))
        .max()
        .unwrap_or(1)
        .max(1);
    let mut chart = ChartBuilder::on(&bottom)
        .caption("replicas by policy", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..f64::from(most) * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("hours")
        .y_desc("replicas")
        .draw()?;
    for (o, colour) in outcomes.iter().zip([RED, BLUE, GREEN]) {
        chart
            .draw_series(LineSeries::new(
                o.timeline
                    .iter()
                    .map(|s| (s.t / 3600.0, f64::from(s.replicas))),
                colour.stroke_width(1),
            ))?
            .label(format!(
                "{} (SLO violated {:.1} h, {:.0} replica-h)",
                o.policy,
                o.slo_violation_s / 3600.0,
                o.replica_hours
            ))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
