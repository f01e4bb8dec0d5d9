//! Test helpers (dev-only): start a router on `127.0.0.1:0` as a real HTTP server, and wait for
//! a condition without fixed sleeps.

pub mod fake_kube;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A real server on a free loopback port; stops when dropped.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    cancel: CancellationToken,
}

impl TestServer {
    /// Serves `router` on a fresh `127.0.0.1:0` listener.
    pub async fn start(router: Router) -> Self {
        Self::start_with(|listener, shutdown| mlmesh_kit::serve(listener, router, shutdown)).await
    }

    /// Runs a service's own `serve` function on a fresh listener.
    pub async fn start_with<F, Fut>(run: F) -> Self
    where
        F: FnOnce(TcpListener, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
        Fut: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let fut = run(listener, Box::pin(async move { stop.cancelled().await }));
        tokio::spawn(async move {
            if let Err(error) = fut.await {
                eprintln!("test server on {addr} failed: {error}");
            }
        });
        Self {
            addr,
            url: format!("http://{addr}"),
            cancel,
        }
    }

    /// Asks the server to shut down gracefully.
    pub fn stop(&self) {
        self.cancel.cancel();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Polls `check` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain HTTP client for tests.
pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// GETs `url` and decodes JSON, with the status.
pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let response = http().get(url).send().await.expect("GET");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// GETs `url` and returns its body as text (a `/metrics` page, an HTML page).
pub async fn get_text(url: &str) -> String {
    http()
        .get(url)
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("a text body")
}

/// A file of the project's shared third-party test data (`shared/data/` beside the repository,
/// or the folder named by `MLMESH_SHARED_DATA`).
pub fn shared_data(relative: &str) -> std::path::PathBuf {
    let root = std::env::var_os("MLMESH_SHARED_DATA").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
        std::path::PathBuf::from,
    );
    let path = root.join(relative);
    assert!(
        path.exists(),
        "test data {} not found: put shared/ beside the repository or set MLMESH_SHARED_DATA",
        path.display()
    );
    path
}
