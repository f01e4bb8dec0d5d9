//! The supervisor's replicas: each is a child process `mlmesh serve SERVICE` on a socket the
//! supervisor bound and keeps, so a replica's address survives its restarts (connections that
//! arrive while it restarts wait in the socket's backlog instead of being refused).

use std::collections::BTreeMap;
use std::net::TcpListener as StdListener;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use mlmesh_protocol::control::{Replica, ReplicaState};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::serve::Service;

/// The child's end of the inherited listening socket.
const CHILD_LISTEN_FD: i32 = 3;
/// Most replicas of one service on one machine.
pub const MAX_REPLICAS_PER_SERVICE: usize = 16;
/// A child that stays up this long is healthy again: its next crash restarts it at once.
const STABLE_AFTER: Duration = Duration::from_secs(30);
const RESTART_BACKOFF_START: Duration = Duration::from_millis(100);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Time a child gets to drain and deregister after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
const READY_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("unknown service {0:?}; this build runs: {1}")]
    UnknownService(String, String),
    #[error("the {0} service runs as a single instance; it cannot have replicas")]
    NotReplicable(String),
    #[error("{0} already has {MAX_REPLICAS_PER_SERVICE} replicas, the most one machine runs")]
    TooMany(String),
    #[error("no replica {0:?}")]
    UnknownReplica(String),
    #[error("{0} is one of the platform's base replicas; stop the platform to stop it")]
    BaseReplica(String),
    #[error("the platform is shutting down")]
    ShuttingDown,
    #[error("cannot bind a port for a new replica: {0}")]
    Bind(#[from] std::io::Error),
}

/// How children are started.
#[derive(Debug, Clone)]
pub struct Launch {
    pub exe: PathBuf,
    pub data_dir: PathBuf,
    /// `--config FILE` / `--set K=V` passed through to every child.
    pub passthrough: Vec<String>,
    /// The control API, which the autoscaler's local backend drives.
    pub control_url: Option<String>,
}

#[derive(Debug)]
struct Slot {
    replica: Replica,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Inner {
    slots: BTreeMap<String, Slot>,
    next_index: BTreeMap<String, u32>,
    registry_url: Option<String>,
    shutting_down: bool,
}

#[derive(Debug)]
pub struct Supervisor {
    launch: Launch,
    inner: Mutex<Inner>,
    /// Bumped on every change of any replica, so `up` can rewrite `endpoints.json`.
    changes: watch::Sender<u64>,
    http: reqwest::Client,
}

impl Supervisor {
    pub fn new(launch: Launch) -> Arc<Self> {
        Arc::new(Self {
            launch,
            inner: Mutex::default(),
            changes: watch::channel(0).0,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .build()
                .unwrap_or_default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn list(&self) -> Vec<Replica> {
        self.lock()
            .slots
            .values()
            .map(|s| s.replica.clone())
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<Replica> {
        self.lock().slots.get(id).map(|s| s.replica.clone())
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut Replica)) {
        if let Some(slot) = self.lock().slots.get_mut(id) {
            change(&mut slot.replica);
        }
        self.notify();
    }

    /// Starts a replica of `service` (a base one belongs to the platform and cannot be stopped
    /// through the control API).
    pub fn start(
        self: &Arc<Self>,
        service: Service,
        base: bool,
    ) -> Result<Replica, SupervisorError> {
        self.start_on(service, base, 0)
    }

    /// Like [`Self::start`], on a chosen port (0: any free one).
    pub fn start_on(
        self: &Arc<Self>,
        service: Service,
        base: bool,
        port: u16,
    ) -> Result<Replica, SupervisorError> {
        let listener = StdListener::bind(("127.0.0.1", port))?;
        let url = format!("http://{}", listener.local_addr()?);
        let mut inner = self.lock();
        if inner.shutting_down {
            return Err(SupervisorError::ShuttingDown);
        }
        let name = service.name();
        let existing = inner
            .slots
            .values()
            .filter(|s| s.replica.service == name)
            .count();
        if existing > 0 && service == Service::Registry {
            return Err(SupervisorError::NotReplicable(name.into()));
        }
        if existing >= MAX_REPLICAS_PER_SERVICE {
            return Err(SupervisorError::TooMany(name.into()));
        }
        if service == Service::Registry {
            // Recorded before any child is spawned, so every child (the registry itself too)
            // is told where to register.
            inner.registry_url = Some(url.clone());
        }
        let index = inner.next_index.entry(name.to_string()).or_insert(0);
        let id = format!("{name}-{index}");
        *index += 1;
        let replica = Replica {
            id: id.clone(),
            service: name.to_string(),
            url,
            pid: None,
            state: ReplicaState::Starting,
            restarts: 0,
            base,
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(supervise(
            Arc::clone(self),
            service,
            id.clone(),
            listener,
            stop.clone(),
        ));
        inner.slots.insert(
            id,
            Slot {
                replica: replica.clone(),
                stop,
                task: Some(task),
            },
        );
        drop(inner);
        self.notify();
        Ok(replica)
    }

    /// Stops an extra replica: SIGTERM, a grace period to drain and deregister, then SIGKILL.
    pub async fn stop(&self, id: &str) -> Result<(), SupervisorError> {
        let task = {
            let mut inner = self.lock();
            let slot = inner
                .slots
                .get_mut(id)
                .ok_or_else(|| SupervisorError::UnknownReplica(id.into()))?;
            if slot.replica.base {
                return Err(SupervisorError::BaseReplica(id.into()));
            }
            slot.replica.state = ReplicaState::Stopping;
            slot.stop.cancel();
            slot.task.take()
        };
        self.notify();
        if let Some(task) = task {
            let _ = task.await;
        }
        Ok(())
    }

    /// Stops everything: every other service first, so each can deregister from the registry
    /// while it still runs, then the registry.
    pub async fn shutdown(&self) {
        let (others, registry): (Vec<_>, Vec<_>) = {
            let mut inner = self.lock();
            inner.shutting_down = true;
            inner
                .slots
                .values_mut()
                .map(|slot| {
                    slot.replica.state = ReplicaState::Stopping;
                    (
                        slot.replica.service.clone(),
                        slot.stop.clone(),
                        slot.task.take(),
                    )
                })
                .partition(|(service, _, _)| service != mlmesh_registry::SERVICE)
        };
        for group in [others, registry] {
            let tasks: Vec<_> = group
                .into_iter()
                .map(|(_, stop, task)| {
                    stop.cancel();
                    task
                })
                .collect();
            for task in tasks.into_iter().flatten() {
                let _ = task.await;
            }
        }
    }

    /// Waits until every replica in `ids` answers ready.
    pub async fn wait_ready(&self, ids: &[String]) {
        let mut changes = self.subscribe();
        loop {
            let all_ready = ids
                .iter()
                .all(|id| self.get(id).is_some_and(|r| r.state == ReplicaState::Ready));
            if all_ready || changes.changed().await.is_err() {
                return;
            }
        }
    }

    fn command(
        &self,
        service: Service,
        id: &str,
        listener: &StdListener,
    ) -> std::io::Result<Command> {
        let log_dir = self.launch.data_dir.join("logs");
        std::fs::create_dir_all(&log_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_dir.join(format!("{id}.log")))?;
        let registry_url = self.lock().registry_url.clone();
        let mut command = Command::new(&self.launch.exe);
        command
            .arg("serve")
            .arg(service.name())
            .arg("--listen-fd")
            .arg(CHILD_LISTEN_FD.to_string())
            .arg("--instance-id")
            .arg(id)
            .arg("--data-dir")
            .arg(self.launch.data_dir.join(service.name()));
        if service == Service::Gateway {
            // The gateway honours the admin key `up` keeps at the top of the data directory.
            command.arg("--set").arg(format!(
                "gateway.admin_key_file={}",
                self.launch.data_dir.join("admin.key").display()
            ));
            // The gateway only moves bytes between sockets: on one machine shared with the
            // model services, half the cores (one of two) serve it best — measured twice the
            // throughput of a runtime thread per core (BENCHMARKS.md). TOKIO_WORKER_THREADS wins.
            if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
                let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
                command.env("TOKIO_WORKER_THREADS", (cores / 2).max(1).to_string());
            }
        }
        if service == Service::Autoscaler
            && let Some(control) = &self.launch.control_url
        {
            // The local backend: start and stop replicas through this supervisor.
            command
                .arg("--set")
                .arg(format!("autoscaler.control_url={control}"));
            command.arg("--set").arg(format!(
                "autoscaler.control_key_file={}",
                self.launch.data_dir.join("admin.key").display()
            ));
            // Abuse control reads the gateways' clients and sets throttles as admin.
            command.arg("--set").arg(format!(
                "autoscaler.admin_key_file={}",
                self.launch.data_dir.join("admin.key").display()
            ));
        }
        command
            .args(&self.launch.passthrough)
            .env(super::SUPERVISOR_PID_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            // Own process group: a terminal's Ctrl-C reaches only the supervisor, which stops
            // children in order (everyone else deregisters before the registry goes).
            .process_group(0)
            .kill_on_drop(true);
        if let Some(url) = registry_url {
            command.arg("--registry").arg(url);
        }
        command
            .fd_mappings(vec![FdMapping {
                parent_fd: listener.as_fd().try_clone_to_owned()?,
                child_fd: CHILD_LISTEN_FD,
            }])
            .map_err(|_| std::io::Error::other("fd mapping collision"))?;
        Ok(command)
    }

    async fn is_ready(&self, url: &str) -> bool {
        self.http
            .get(format!("{url}/v2/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }
}

/// How one run of a child ended.
enum Ended {
    Stopped,
    Crashed(String),
}

/// Keeps one replica running until its stop token fires: start, wait for ready, restart with
/// exponential back-off after a crash.
async fn supervise(
    sup: Arc<Supervisor>,
    service: Service,
    id: String,
    listener: StdListener,
    stop: CancellationToken,
) {
    let url = sup.get(&id).map(|r| r.url).unwrap_or_default();
    let mut backoff = RESTART_BACKOFF_START;
    loop {
        let started = Instant::now();
        let ended = match sup
            .command(service, &id, &listener)
            .and_then(|mut c| c.spawn())
        {
            Ok(child) => run_child(&sup, &id, &url, child, &stop).await,
            Err(error) => Ended::Crashed(format!("cannot start: {error}")),
        };
        let Ended::Crashed(why) = ended else { break };
        if stop.is_cancelled() {
            break;
        }
        if started.elapsed() >= STABLE_AFTER {
            backoff = RESTART_BACKOFF_START;
        }
        eprintln!(
            "mlmesh: {id} {why}; restarting in {} ms",
            backoff.as_millis()
        );
        sup.update(&id, |r| {
            r.state = ReplicaState::Restarting;
            r.pid = None;
            r.restarts += 1;
        });
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
    }
    sup.lock().slots.remove(&id);
    sup.notify();
}

async fn run_child(
    sup: &Supervisor,
    id: &str,
    url: &str,
    mut child: Child,
    stop: &CancellationToken,
) -> Ended {
    let pid = child.id();
    sup.update(id, |r| {
        r.pid = pid;
        r.state = ReplicaState::Starting;
    });
    let probe = async {
        while !sup.is_ready(url).await {
            tokio::time::sleep(READY_POLL).await;
        }
    };
    tokio::select! {
        () = stop.cancelled() => return terminate(child).await,
        status = child.wait() => return Ended::Crashed(describe(status)),
        () = probe => sup.update(id, |r| r.state = ReplicaState::Ready),
    }
    tokio::select! {
        () = stop.cancelled() => terminate(child).await,
        status = child.wait() => Ended::Crashed(describe(status)),
    }
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => format!("exited ({status})"),
        Err(error) => format!("could not be waited for: {error}"),
    }
}

async fn terminate(mut child: Child) -> Ended {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            return Ended::Stopped;
        }
    }
    let _ = child.kill().await;
    Ended::Stopped
}
