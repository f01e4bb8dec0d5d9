//! The registry service: the platform's service discovery (the role Eureka plays in the
//! reference design).
//!
//! Instances register under a service name with a lease that heartbeats renew; instances that
//! miss their heartbeats are evicted. Every change bumps a change index, and clients *watch*
//! with a long poll (`after=<index>`), so they learn of changes at once without polling storms.
//!
//! State lives in memory on purpose: every entry is a lease that expires within seconds anyway,
//! and every client re-registers by itself when a restarted registry answers its heartbeat with
//! 404. A new *epoch* (a random id per run) tells watchers that the index started afresh.
//!
//! Layout: [`config`] (settings), [`domain`] (the registry's rules, no HTTP), [`routes`] (HTTP
//! handlers), [`serve`] (runs it, with the eviction sweep).

pub mod config;
pub mod domain;
pub mod routes;

use std::future::Future;
use std::sync::Arc;

use mlmesh_kit::ServerConfig;
use mlmesh_kit::serve::{Participation, run_service};
use tokio::net::TcpListener;

pub use config::Config;
pub use routes::{AppState, router};

pub const SERVICE: &str = "registry";

/// Runs the registry on `listener` until `shutdown` resolves.
pub async fn serve(
    config: Config,
    server: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = AppState::new(config);
    let closing = state.closing.clone();
    let sweeper = tokio::spawn(routes::sweep(
        Arc::clone(&state.shared),
        state.config.sweep(),
    ));
    let app = router(state, &server);
    let result = run_service(
        listener,
        app,
        &server,
        Participation::new(SERVICE, env!("CARGO_PKG_VERSION")),
        async move {
            shutdown.await;
            closing.cancel();
        },
    )
    .await;
    sweeper.abort();
    result
}
