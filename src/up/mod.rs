//! `mlmesh up`: the supervisor. It starts every service of this build as its own process
//! (`mlmesh serve SERVICE`), each with its state under `DATA_DIR/<service>/`, waits until all
//! are ready and registered, writes `DATA_DIR/endpoints.json` (and `DATA_DIR/admin.key` on first
//! start), restarts crashed children with back-off, serves the control API, and on
//! SIGINT/SIGTERM stops every child.

mod control;
mod replica;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use mlmesh_protocol::Endpoints;
use mlmesh_protocol::control::ReplicaState;
use nix::fcntl::{Flock, FlockArg};

use crate::ConfigArgs;
use crate::serve::Service;
use replica::{Launch, Supervisor};

/// Set on every child: the supervisor's pid, so a child dies with it.
pub const SUPERVISOR_PID_ENV: &str = "MLMESH_SUPERVISOR_PID";

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where every service keeps its state, plus `endpoints.json`, `admin.key` and `logs/`.
    #[arg(long, env = "MLMESH_DATA_DIR", default_value = "mlmesh-data")]
    pub data_dir: PathBuf,
    /// The gateway's port: the platform's one entry point for clients (0: any free port).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Give up if the platform is not ready within this many seconds.
    #[arg(long, default_value_t = 60)]
    pub ready_timeout_s: u64,
}

/// The services `up` starts, in order; the registry first, since everyone registers with it.
const PLATFORM: &[Service] = &[
    Service::Registry,
    Service::Data,
    Service::ModelTrees,
    Service::ModelLinear,
    Service::ModelNeural,
    Service::ModelOnnx,
    Service::Gateway,
    Service::Dashboard,
    Service::Autoscaler,
];

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let _lock = lock_data_dir(&data_dir)?;
    let (admin_key, created) = ensure_admin_key(&data_dir)?;
    // A previous run killed with SIGKILL may have left its endpoints behind: they are dead.
    let _ = std::fs::remove_file(data_dir.join("endpoints.json"));

    let mut passthrough = Vec::new();
    if let Some(file) = &args.config.config {
        passthrough.push("--config".to_string());
        passthrough.push(file.canonicalize()?.display().to_string());
    }
    for (key, value) in &args.config.overrides {
        passthrough.push("--set".to_string());
        passthrough.push(format!("{key}={value}"));
    }
    let control_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let control_url = format!("http://{}", control_listener.local_addr()?);
    let supervisor = Supervisor::new(Launch {
        exe: std::env::current_exe()?,
        data_dir: data_dir.clone(),
        passthrough,
        control_url: Some(control_url.clone()),
    });
    let control_router = control::router(Arc::clone(&supervisor), Arc::from(admin_key.as_str()));
    let stop_control = tokio_util::sync::CancellationToken::new();
    let control_task = {
        let stop = stop_control.clone();
        tokio::spawn(mlmesh_kit::serve(
            control_listener,
            control_router,
            async move {
                stop.cancelled().await;
            },
        ))
    };

    let started = start_platform(&supervisor, &args, &data_dir, &control_url);
    let outcome = tokio::select! {
        outcome = started => outcome,
        () = mlmesh_kit::shutdown_signal() => Err(anyhow::anyhow!("interrupted while starting")),
    };
    if let Ok(endpoints) = &outcome {
        print_banner(endpoints, &data_dir, created);
        let mut changes = supervisor.subscribe();
        let mut shutdown = std::pin::pin!(mlmesh_kit::shutdown_signal());
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                changed = changes.changed() => {
                    if changed.is_err() { break; }
                    let endpoints = endpoints_now(&supervisor, &control_url);
                    if let Err(error) = write_endpoints(&data_dir, &endpoints) {
                        eprintln!("mlmesh: cannot update endpoints.json: {error:#}");
                    }
                }
            }
        }
        eprintln!("mlmesh: stopping…");
    }
    supervisor.shutdown().await;
    stop_control.cancel();
    let _ = control_task.await;
    let _ = std::fs::remove_file(data_dir.join("endpoints.json"));
    outcome.map(|_| eprintln!("mlmesh: stopped"))
}

async fn start_platform(
    supervisor: &Arc<Supervisor>,
    args: &UpArgs,
    data_dir: &Path,
    control_url: &str,
) -> anyhow::Result<Endpoints> {
    let deadline = Duration::from_secs(args.ready_timeout_s);
    let ready = async {
        let registry = supervisor.start(Service::Registry, true)?;
        supervisor
            .wait_ready(std::slice::from_ref(&registry.id))
            .await;
        let mut ids = vec![registry.id.clone()];
        for service in PLATFORM.iter().filter(|s| **s != Service::Registry) {
            let port = if *service == Service::Gateway {
                args.port
            } else {
                0
            };
            let started = supervisor.start_on(*service, true, port).with_context(|| {
                format!(
                    "cannot start the {} on port {port}; pick another with --port",
                    service.name()
                )
            })?;
            ids.push(started.id);
        }
        supervisor.wait_ready(&ids).await;
        wait_registered(&registry.url, &ids).await;
        anyhow::Ok(())
    };
    match tokio::time::timeout(deadline, ready).await {
        Ok(result) => result?,
        Err(_) => {
            let waiting: Vec<_> = supervisor
                .list()
                .into_iter()
                .filter(|r| r.state != ReplicaState::Ready)
                .map(|r| r.id)
                .collect();
            bail!(
                "the platform was not ready after {} s (still waiting for: {}); see {}/logs/",
                args.ready_timeout_s,
                if waiting.is_empty() {
                    "registration".to_string()
                } else {
                    waiting.join(", ")
                },
                data_dir.display()
            );
        }
    }
    let endpoints = endpoints_now(supervisor, control_url);
    write_endpoints(data_dir, &endpoints)?;
    Ok(endpoints)
}

/// Waits until the registry lists every one of `ids`.
async fn wait_registered(registry: &str, ids: &[String]) {
    let client = mlmesh_kit::discovery::RegistryClient::new(registry);
    let (mut epoch, mut after) = (String::new(), 0);
    loop {
        if let Ok(snapshot) = client
            .watch(None, &epoch, after, Duration::from_secs(5))
            .await
        {
            let registered = ids
                .iter()
                .all(|id| snapshot.instances.iter().any(|i| &i.id == id));
            if registered {
                return;
            }
            (epoch, after) = (snapshot.epoch, snapshot.index);
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn endpoints_now(supervisor: &Supervisor, control_url: &str) -> Endpoints {
    let mut endpoints = Endpoints {
        control: control_url.to_string(),
        ..Endpoints::default()
    };
    for replica in supervisor.list() {
        if replica.service == mlmesh_registry::SERVICE {
            endpoints.registry.clone_from(&replica.url);
        }
        if replica.service == mlmesh_gateway::SERVICE && endpoints.gateway.is_none() {
            endpoints.gateway = Some(replica.url.clone());
        }
        if replica.service == mlmesh_dashboard::SERVICE && endpoints.dashboard.is_none() {
            endpoints.dashboard = Some(replica.url.clone());
        }
        endpoints
            .services
            .entry(replica.service)
            .or_default()
            .push(replica.url);
    }
    endpoints
}

/// Writes `endpoints.json` atomically (temporary file, fsync, rename), so a reader never sees
/// half a file.
fn write_endpoints(data_dir: &Path, endpoints: &Endpoints) -> anyhow::Result<()> {
    let tmp = data_dir.join(".endpoints.json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    serde_json::to_writer_pretty(&mut file, endpoints)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, data_dir.join("endpoints.json"))?;
    Ok(())
}

/// One `up` per data directory: a second would fight the first over ports and state.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<Flock<std::fs::File>> {
    let path = data_dir.join("up.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        anyhow::anyhow!(
            "another `mlmesh up` is using {} ({errno}); stop it or pass another --data-dir",
            data_dir.display()
        )
    })
}

/// Reads `admin.key`, or creates it (a random 256-bit key, mode 0600) on first start.
fn ensure_admin_key(data_dir: &Path) -> anyhow::Result<(String, bool)> {
    let path = data_dir.join("admin.key");
    match std::fs::read_to_string(&path) {
        Ok(key) if !key.trim().is_empty() => return Ok((key.trim().to_string(), false)),
        Ok(_) => bail!(
            "{} is empty; delete it to get a new admin key",
            path.display()
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).context(format!("cannot read {}", path.display())),
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let key: String = std::iter::once("mlm_".to_string())
        .chain(secret.iter().map(|b| format!("{b:02x}")))
        .collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(file, "{key}")?;
    file.sync_all()?;
    Ok((key, true))
}

fn print_banner(endpoints: &Endpoints, data_dir: &Path, created_key: bool) {
    println!("mlmesh is up.");
    if let Some(gateway) = &endpoints.gateway {
        println!("  gateway    {gateway}");
    }
    if let Some(dashboard) = &endpoints.dashboard {
        println!("  dashboard  {dashboard}");
    }
    println!("  registry   {}", endpoints.registry);
    println!("  control    {}", endpoints.control);
    for (service, urls) in &endpoints.services {
        println!("  {service:<10} {}", urls.join(" "));
    }
    let key = data_dir.join("admin.key");
    if created_key {
        println!("  admin key  {} (new)", key.display());
    } else {
        println!("  admin key  {}", key.display());
    }
    println!("  endpoints  {}", data_dir.join("endpoints.json").display());
    println!("Ctrl-C stops everything.");
}
