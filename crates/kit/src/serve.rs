//! Running a router on a listener the caller bound, with graceful shutdown.

use std::future::Future;

use axum::Router;
use tokio::net::TcpListener;

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and lets
/// in-flight requests finish. The caller binds the socket, so tests use `127.0.0.1:0` and the
/// supervisor can hand over a socket it bound itself.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Small request/response exchanges must not wait on Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // Handlers may ask for the peer's address (`ConnectInfo<SocketAddr>`): the gateway counts
    // and throttles clients by address.
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// How a service takes part in the platform while it runs.
#[derive(Debug)]
pub struct Participation {
    pub service: String,
    pub version: String,
    pub metadata: std::collections::BTreeMap<String, serde_json::Value>,
    /// Metadata that changes while the service runs; each new value replaces `metadata`.
    pub metadata_updates:
        Option<tokio::sync::watch::Receiver<std::collections::BTreeMap<String, serde_json::Value>>>,
}

impl Participation {
    /// A service taking part under `service` with no metadata yet.
    pub fn new(service: &str, version: &str) -> Self {
        Self {
            service: service.to_string(),
            version: version.to_string(),
            metadata: std::collections::BTreeMap::new(),
            metadata_updates: None,
        }
    }
}

/// Serves `router` like [`serve`], and while it does keeps the instance registered with the
/// registry named in `server` (if any). On shutdown it deregisters first, so that callers stop
/// choosing this instance, then drains in-flight requests.
pub async fn run_service(
    listener: TcpListener,
    router: Router,
    server: &crate::ServerConfig,
    participation: Participation,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let url = server
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("http://{local}"));
    let registrar = server.registry_url.as_deref().map(|registry| {
        let id = server.instance_id.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                participation.service.replace(':', "-"),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            )
        });
        crate::discovery::Registrar::spawn(
            crate::discovery::RegistryClient::new(registry),
            participation.service.clone(),
            id,
            mlmesh_protocol::registry::Registration {
                url: url.clone(),
                version: participation.version.clone(),
                metadata: participation.metadata,
            },
        )
    });
    if let (Some(registrar), Some(updates)) = (&registrar, participation.metadata_updates) {
        registrar.follow_metadata(updates);
    }
    tracing::info!(service = %participation.service, %url, "serving");
    serve(listener, router, async move {
        shutdown.await;
        tracing::info!("shutting down");
        if let Some(registrar) = registrar {
            registrar.stop().await;
        }
    })
    .await
}
