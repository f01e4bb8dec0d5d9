//! `mlmesh serve SERVICE`: load the layered config, take the listening socket (bound here, or
//! handed over by the supervisor), and run the service until SIGINT/SIGTERM.

use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::ValueEnum;
use mlmesh_kit::{ServerConfig, Sources, shutdown_signal, telemetry};
use tokio::net::TcpListener;

use crate::ConfigArgs;

/// The services this build can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Service {
    Registry,
    Data,
    Dashboard,
    Gateway,
    Autoscaler,
    /// A model service; the family comes from `--family`.
    Model,
    #[value(name = "model-trees")]
    ModelTrees,
    #[value(name = "model-linear")]
    ModelLinear,
    #[value(name = "model-neural")]
    ModelNeural,
    #[value(name = "model-onnx")]
    ModelOnnx,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Self::Registry => mlmesh_registry::SERVICE,
            Self::Data => mlmesh_data::SERVICE,
            Self::Dashboard => mlmesh_dashboard::SERVICE,
            Self::Gateway => mlmesh_gateway::SERVICE,
            Self::Autoscaler => mlmesh_autoscaler::SERVICE,
            Self::Model => "model",
            Self::ModelTrees => "model-trees",
            Self::ModelLinear => "model-linear",
            Self::ModelNeural => "model-neural",
            Self::ModelOnnx => "model-onnx",
        }
    }

    /// The algorithm family of a model service.
    pub fn family(self) -> Option<&'static str> {
        match self {
            Self::ModelTrees => Some("trees"),
            Self::ModelLinear => Some("linear"),
            Self::ModelNeural => Some("neural"),
            Self::ModelOnnx => Some("onnx"),
            _ => None,
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::value_variants()
            .iter()
            .copied()
            .find(|s| s.name() == name)
    }
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Which service to run.
    pub service: Service,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Address to bind (ignored with --listen-fd).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind; 0 picks a free one (ignored with --listen-fd).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Serve on an already-listening socket inherited as this file descriptor (the supervisor
    /// binds ports itself so they survive a child's restart).
    #[arg(long)]
    pub listen_fd: Option<RawFd>,
    /// Registry to register with (sets `server.registry_url`).
    #[arg(long, env = "MLMESH_REGISTRY")]
    pub registry: Option<String>,
    /// Where the service keeps its state (sets `server.data_dir`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Instance id in the registry (sets `server.instance_id`).
    #[arg(long)]
    pub instance_id: Option<String>,
    /// Algorithm family of `serve model`: trees, linear, neural or onnx (sets `model.family`).
    #[arg(long)]
    pub family: Option<String>,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    if let Ok(parent) = std::env::var(crate::up::SUPERVISOR_PID_ENV) {
        die_with_supervisor(&parent)?;
    }
    let mut sources = Sources::from_process(args.config.config.clone());
    for (key, value) in &args.config.overrides {
        sources = sources.set(key, value);
    }
    let flags = [
        ("server.registry_url", args.registry.clone()),
        ("server.instance_id", args.instance_id.clone()),
        (
            "server.data_dir",
            args.data_dir.as_ref().map(|d| d.display().to_string()),
        ),
        (
            "model.family",
            args.family
                .clone()
                .or_else(|| args.service.family().map(str::to_string)),
        ),
    ];
    for (key, value) in flags {
        if let Some(value) = value {
            sources = sources.set(key, value);
        }
    }
    let server: ServerConfig = sources.load("server")?;
    telemetry::init_logs(&server);
    if let Some(dir) = &server.data_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    }
    let listener = listener(&args).await?;
    match args.service {
        Service::Registry => {
            let config: mlmesh_registry::Config = sources.load("registry")?;
            config.validate()?;
            mlmesh_registry::serve(config, server, listener, shutdown_signal()).await?;
        }
        Service::Data => {
            let config: mlmesh_data::Config = sources.load("data")?;
            config.validate()?;
            mlmesh_data::serve(config, server, listener, shutdown_signal()).await?;
        }
        Service::Dashboard => {
            let config: mlmesh_dashboard::Config = sources.load("dashboard")?;
            config.validate()?;
            mlmesh_dashboard::serve(config, server, listener, shutdown_signal()).await?;
        }
        Service::Gateway => {
            let config: mlmesh_gateway::Config = sources.load("gateway")?;
            config.validate()?;
            mlmesh_gateway::serve(config, server, listener, shutdown_signal()).await?;
        }
        Service::Autoscaler => {
            let config: mlmesh_autoscaler::Config = sources.load("autoscaler")?;
            config.validate()?;
            mlmesh_autoscaler::serve(config, server, listener, shutdown_signal()).await?;
        }
        Service::Model
        | Service::ModelTrees
        | Service::ModelLinear
        | Service::ModelNeural
        | Service::ModelOnnx => {
            let config: mlmesh_model::Config = sources.load("model")?;
            config.validate()?;
            mlmesh_model::serve(config, server, listener, shutdown_signal()).await?;
        }
    }
    Ok(())
}

async fn listener(args: &ServeArgs) -> anyhow::Result<TcpListener> {
    let Some(fd) = args.listen_fd else {
        let addr = format!("{}:{}", args.host, args.port);
        return TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"));
    };
    if fd < 3 {
        bail!("--listen-fd {fd} is a standard stream, not a socket");
    }
    // SAFETY: the fd is named on our command line by the supervisor that set it up for us, and
    // nothing else in this process owns it; `local_addr` below proves it is a TCP socket.
    #[allow(unsafe_code)]
    let std_listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    std_listener
        .local_addr()
        .with_context(|| format!("--listen-fd {fd} is not a listening TCP socket"))?;
    std_listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(std_listener)?)
}

/// A supervised child must not outlive its supervisor, even one killed with SIGKILL: the kernel
/// sends us SIGTERM when the parent dies (and we exit now if it already has).
fn die_with_supervisor(parent: &str) -> anyhow::Result<()> {
    let parent: i32 = parent
        .parse()
        .with_context(|| format!("{} is not a pid", crate::up::SUPERVISOR_PID_ENV))?;
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
    if nix::unistd::getppid().as_raw() != parent {
        bail!("the supervisor (pid {parent}) is gone");
    }
    Ok(())
}
