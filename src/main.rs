//! `mlmesh`: the one binary. `mlmesh up` runs the whole platform on this machine;
//! `mlmesh serve SERVICE` runs one service (what `up` and Kubernetes run).
//!
//! Layout: [`serve`] (run one service), [`up`] (the supervisor and its control API), [`cli`]
//! (the user commands that talk to a running platform).

mod cli;
mod serve;
mod up;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

// Every request allocates headers, bodies and futures; glibc's malloc was ~9% of the gateway's
// CPU under load (perf), mimalloc's thread-local free lists cut that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "mlmesh",
    version,
    about = "Machine learning as microservices: train, serve, ensemble and autoscale models."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the whole platform on 127.0.0.1 and keep it running until Ctrl-C / SIGTERM.
    Up(up::UpArgs),
    /// Run one service.
    Serve(serve::ServeArgs),
    /// Datasets: upload, list, show.
    Data {
        #[command(subcommand)]
        command: cli::data::DataCommand,
        #[command(flatten)]
        platform: cli::PlatformArgs,
    },
    /// Train a model on a dataset: follows the job and prints the metrics.
    Train {
        #[command(flatten)]
        args: cli::model::TrainArgs,
        #[command(flatten)]
        platform: cli::PlatformArgs,
    },
    /// Predict with a model (Open Inference Protocol request, or a CSV file).
    Predict {
        #[command(flatten)]
        args: cli::model::PredictArgs,
        #[command(flatten)]
        platform: cli::ConnectArgs,
    },
    /// Ensembles: create, ls, show, rm.
    Ensemble {
        #[command(subcommand)]
        command: cli::ensemble::EnsembleCommand,
        #[command(flatten)]
        platform: cli::PlatformArgs,
    },
    /// Load test: N users for a duration against the gateway, a model service or any V2 server.
    Bench {
        #[command(flatten)]
        args: cli::bench::BenchArgs,
        #[command(flatten)]
        platform: cli::PlatformArgs,
    },
    /// Replay a load trace through the scaling simulator under each policy.
    Simulate(cli::simulate::SimulateArgs),
    /// Find anomalies in a recorded series (and score them against labelled windows).
    Detect(cli::detect::DetectArgs),
}

/// Options every command that reads configuration shares.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// TOML configuration file (sections `[server]`, `[registry]`, `[dashboard]` …).
    #[arg(long, env = "MLMESH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override one setting, e.g. `--set registry.ttl_ms=5000` (repeatable; wins over file and env).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_override)]
    pub overrides: Vec<(String, String)>,
}

fn parse_override(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("`{raw}` is not KEY=VALUE")),
    }
}

/// A command whose output is piped into `head` should end quietly when the reader goes away,
/// as Unix tools do, instead of failing to print. Servers keep Rust's default (SIGPIPE
/// ignored, write errors handled).
fn exit_quietly_on_closed_pipe() {
    // SAFETY: restores the default disposition before any other thread exists; no handler code
    // is installed.
    #[allow(unsafe_code)]
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Data { .. }
            | Command::Train { .. }
            | Command::Predict { .. }
            | Command::Ensemble { .. }
            | Command::Bench { .. }
            | Command::Simulate(_)
            | Command::Detect(_)
    ) {
        exit_quietly_on_closed_pipe();
    }
    // One worker asked for: a current-thread runtime does the same work without the
    // work-stealing scheduler's bookkeeping (the gateway under `up` on two cores).
    let one_worker = std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|v| v.trim() == "1");
    let mut builder = if one_worker {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("mlmesh: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => up::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Data { command, platform } => cli::data::run(command, &platform).await,
            Command::Train { args, platform } => cli::model::train(args, &platform).await,
            Command::Predict { args, platform } => {
                cli::model::predict(args, &platform.into()).await
            }
            Command::Ensemble { command, platform } => cli::ensemble::run(command, &platform).await,
            Command::Bench { args, platform } => cli::bench::run(args, &platform).await,
            Command::Simulate(args) => cli::simulate::run(args),
            Command::Detect(args) => cli::detect::run(args),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mlmesh: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
