//! The data service: upload, validate, version and serve datasets, with an event feed.
//!
//! - An upload is streamed to a temporary file (hashing as it goes), parsed and validated in
//!   two passes on the blocking pool ([`ingest`]), written as normalised Parquet under
//!   `blobs/<dataset>/<version>.parquet`, and recorded with its event in one SQLite transaction
//!   ([`db`], `mlmesh-store`). The 201 goes out only after the file and the row are on disk.
//! - Versions are immutable and content-addressed (uploaded bytes + parse options): the same
//!   upload again answers the existing version.
//! - Reads use their own connections and never wait for an upload.
//! - At start-up, temporary files and blobs no version refers to (left by a crash between
//!   writing a file and committing its row, or after a delete) are removed.
//!
//! Layout: [`Config`], [`serve`], [`routes`] (HTTP), [`db`] (tables), [`ingest`] (formats).

pub mod db;
pub mod ingest;
pub mod routes;

use std::future::Future;
use std::path::{Path, PathBuf};

use mlmesh_kit::serve::{Participation, run_service};
use mlmesh_kit::{ConfigError, ServerConfig};
use mlmesh_store::Store;
use serde::Deserialize;
use tokio::net::TcpListener;

pub use routes::{AppState, router};

pub const SERVICE: &str = "data";

/// Data service settings, section `[data]` (env `MLMESH_DATA__*`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Largest upload accepted, in bytes (default 10 GiB; uploads stream to disk, so this
    /// bounds disk use, not memory).
    pub max_upload_bytes: u64,
    /// Most columns a dataset may have (default 2000).
    pub max_columns: usize,
    /// Cells that mean "missing" unless an upload names its own with `na=` (default: empty,
    /// NA, N/A, na, n/a, ?, null, NULL, None, NaN, nan).
    pub null_tokens: Vec<String>,
    /// Most rows one page of `…/rows` returns (default 10 000).
    pub max_page_rows: usize,
    /// Uploads processed at once by one replica; more get 429 (default 2: parsing is CPU-bound).
    pub max_concurrent_uploads: usize,
    /// Longest an event-feed long poll is held (default 60 s).
    pub max_wait_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_upload_bytes: 10 << 30,
            max_columns: 2_000,
            null_tokens: ingest::default_null_tokens(),
            max_page_rows: 10_000,
            max_concurrent_uploads: 2,
            max_wait_ms: 60_000,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("data.max_upload_bytes", self.max_upload_bytes),
            ("data.max_columns", self.max_columns as u64),
            ("data.max_page_rows", self.max_page_rows as u64),
            (
                "data.max_concurrent_uploads",
                self.max_concurrent_uploads as u64,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError(format!("{key} must be at least 1")));
            }
        }
        Ok(())
    }
}

/// Where the service keeps what.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn database(&self) -> PathBuf {
        self.root.join("data.db")
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub fn dataset_dir(&self, name: &str) -> PathBuf {
        self.root.join("blobs").join(name)
    }
    pub fn blob(&self, name: &str, version: &str) -> PathBuf {
        self.dataset_dir(name).join(format!("{version}.parquet"))
    }
}

/// Opens the store under `data_dir`, removes leftovers of interrupted work, and returns the
/// state the routes serve from.
pub async fn open(config: Config, data_dir: &Path) -> std::io::Result<AppState> {
    let layout = Layout {
        root: data_dir.to_path_buf(),
    };
    std::fs::create_dir_all(layout.tmp())?;
    let store = Store::open(&layout.database(), db::MIGRATIONS).map_err(std::io::Error::other)?;
    sweep_leftovers(&store, &layout).await?;
    Ok(AppState::new(config, layout, store))
}

async fn sweep_leftovers(store: &Store, layout: &Layout) -> std::io::Result<()> {
    for entry in std::fs::read_dir(layout.tmp())? {
        std::fs::remove_file(entry?.path())?;
    }
    let known: std::collections::HashSet<(String, String)> = store
        .read(db::all_versions)
        .await
        .map_err(std::io::Error::other)?
        .into_iter()
        .collect();
    let blobs = layout.root.join("blobs");
    let Ok(datasets) = std::fs::read_dir(&blobs) else {
        return Ok(());
    };
    for dataset in datasets {
        let dataset = dataset?.path();
        let name = dataset
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        for blob in std::fs::read_dir(&dataset)? {
            let blob = blob?.path();
            let version = blob
                .file_stem()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if !known.contains(&(name.clone(), version)) {
                tracing::info!(path = %blob.display(), "removing a file no version refers to");
                std::fs::remove_file(&blob)?;
            }
        }
        // Removes the directory only when it is empty.
        let _ = std::fs::remove_dir(&dataset);
    }
    Ok(())
}

/// Runs the data service until `shutdown` resolves. Needs `server.data_dir`.
pub async fn serve(
    config: Config,
    server: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let data_dir = server.require_data_dir("data")?;
    let state = open(config, &data_dir).await?;
    let app = router(state, &server);
    run_service(
        listener,
        app,
        &server,
        Participation::new(SERVICE, env!("CARGO_PKG_VERSION")),
        shutdown,
    )
    .await
}
