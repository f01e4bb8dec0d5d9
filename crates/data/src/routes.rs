//! HTTP handlers of the data service: extract → call the store or the ingest engine → map
//! errors (in [`DataError`]'s `From` impl, the one place they become statuses).

use std::io::Write;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use mlmesh_kit::extract::{Json, Path, Query};
use mlmesh_kit::{ApiError, App, ServerConfig};
use mlmesh_protocol::data::{
    ColumnType, DatasetDetail, DatasetList, RowsPage, UploadResponse, VersionInfo,
};
use mlmesh_protocol::{ErrorBody, EventList};
use mlmesh_store::{Store, StoreError};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc};
use utoipa::{IntoParams, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::db::{self, NewVersion};
use crate::ingest::{self, Format, Growing, IngestError, Options};
use crate::{Config, Layout};

#[derive(Debug)]
struct Inner {
    config: Config,
    layout: Layout,
    store: Store,
    uploads: Semaphore,
}

#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    pub fn new(config: Config, layout: Layout, store: Store) -> Self {
        let uploads = Semaphore::new(config.max_concurrent_uploads);
        Self(Arc::new(Inner {
            config,
            layout,
            store,
            uploads,
        }))
    }
}

#[derive(Debug, thiserror::Error)]
enum DataError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the upload is larger than {0} bytes (data.max_upload_bytes)")]
    TooLarge(u64),
    #[error("{0} uploads are being processed; retry shortly")]
    Busy(usize),
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for DataError {
    fn from(error: StoreError) -> Self {
        Self::Internal(error.to_string())
    }
}

impl From<std::io::Error> for DataError {
    fn from(error: std::io::Error) -> Self {
        Self::Internal(error.to_string())
    }
}

impl From<IngestError> for DataError {
    fn from(error: IngestError) -> Self {
        match error {
            IngestError::Invalid(message) => Self::Invalid(message),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for DataError {
    fn from(error: tokio::task::JoinError) -> Self {
        Self::Internal(error.to_string())
    }
}

impl From<DataError> for ApiError {
    fn from(error: DataError) -> Self {
        let message = error.to_string();
        match error {
            DataError::Invalid(_) => ApiError::BadRequest(message),
            DataError::NotFound(_) => ApiError::NotFound(message),
            DataError::TooLarge(_) => ApiError::PayloadTooLarge(message),
            DataError::Busy(_) => ApiError::TooManyRequests {
                message,
                retry_after_s: 1,
            },
            DataError::Internal(_) => ApiError::Internal(message),
        }
    }
}

#[derive(OpenApi)]
#[openapi(tags((name = "datasets", description = "Upload, version and read datasets"),
               (name = "events", description = "The feed of dataset changes")))]
struct DataApi;

pub fn router(state: AppState, server: &ServerConfig) -> Router {
    let api = OpenApiRouter::with_openapi(DataApi::openapi())
        .routes(routes!(list))
        .routes(routes!(upload, describe, delete))
        .routes(routes!(version))
        .routes(routes!(rows))
        .routes(routes!(download))
        .routes(routes!(events))
        .with_state(state);
    App::new(crate::SERVICE, env!("CARGO_PKG_VERSION")).router(api, server)
}

/// Dataset names: 1–64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit (they become
/// directory names, so nothing else).
fn check_name(name: &str) -> Result<(), DataError> {
    mlmesh_kit::names::check("dataset", name).map_err(DataError::Invalid)
}

/// Upload parameters; whatever is not given is detected.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    /// `csv`, `jsonl` or `parquet`.
    format: Option<String>,
    /// The target column for supervised learning.
    target: Option<String>,
    /// CSV delimiter: one character, or `tab`.
    delimiter: Option<String>,
    /// Whether the CSV's first row is a header.
    header: Option<bool>,
    /// Type overrides: `col:float,other:string` (integer, float, boolean, string/categorical).
    types: Option<String>,
    /// Missing-value tokens, comma-separated (replaces the defaults; empty cells stay missing).
    na: Option<String>,
}

impl UploadQuery {
    fn options(self, config: &Config) -> Result<Options, DataError> {
        let invalid = |m: String| DataError::Invalid(m);
        let format = self
            .format
            .map(|f| {
                Format::parse(&f).ok_or_else(|| {
                    invalid(format!("unknown format {f:?}; use csv, jsonl or parquet"))
                })
            })
            .transpose()?;
        let delimiter = self
            .delimiter
            .map(|d| match d.as_str() {
                "tab" | "\\t" | "\t" => Ok(b'\t'),
                d if d.len() == 1 && d != "\"" && d != "\n" && d != "\r" => Ok(d.as_bytes()[0]),
                d => Err(invalid(format!(
                    "delimiter {d:?} is invalid: give one ASCII character (or `tab`)"
                ))),
            })
            .transpose()?;
        let mut types = std::collections::BTreeMap::new();
        for item in self
            .types
            .iter()
            .flat_map(|t| t.split(','))
            .filter(|i| !i.trim().is_empty())
        {
            let (column, type_name) = item
                .rsplit_once(':')
                .ok_or_else(|| invalid(format!("type override {item:?} is not COLUMN:TYPE")))?;
            let column_type = ColumnType::parse(type_name).ok_or_else(|| {
                invalid(format!(
                    "unknown type {type_name:?} for column {column:?}; use integer, float, boolean or string"
                ))
            })?;
            types.insert(column.to_string(), column_type);
        }
        let null_tokens = match self.na {
            Some(list) => std::iter::once(String::new())
                .chain(list.split(',').map(|t| t.trim().to_string()))
                .collect(),
            None => config.null_tokens.clone(),
        };
        Ok(Options {
            format,
            delimiter,
            header: self.header,
            target: self.target.filter(|t| !t.is_empty()),
            types,
            null_tokens,
            max_columns: config.max_columns,
            ..Options::default()
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A version's content address: the uploaded bytes and everything that shapes how they are
/// read, so the same file read differently is a different version.
fn content_address(content_sha256: &str, options: &Options) -> String {
    let options = serde_json::to_string(options).unwrap_or_default();
    let digest = Sha256::digest(format!("{content_sha256}\n{options}").as_bytes());
    hex(&digest[..db::ADDRESS_LEN / 2])
}

/// Temporary files of one upload, removed when dropped (whatever happened: error, a client
/// that went away, a finished upload whose output was moved).
#[derive(Debug)]
struct TempFiles {
    input: PathBuf,
    output: PathBuf,
}

impl TempFiles {
    fn new(dir: &FsPath) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            input: dir.join(format!("{id}.upload")),
            output: dir.join(format!("{id}.parquet")),
        }
    }
}

impl Drop for TempFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.input);
        let _ = std::fs::remove_file(&self.output);
    }
}

/// Streams the body into `file`, hashing it and publishing each durable megabyte to the
/// parser; refuses more than `limit` bytes.
async fn receive(
    body: Body,
    mut file: tokio::fs::File,
    growing: &Growing,
    limit: u64,
) -> Result<(String, u64), DataError> {
    const PIECE: usize = 1 << 20;
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut pending: Vec<u8> = Vec::with_capacity(PIECE);
    let mut stream = body.into_data_stream();
    loop {
        let chunk = match stream.next().await {
            Some(chunk) => Some(
                chunk
                    .map_err(|e| DataError::Invalid(format!("the upload was interrupted: {e}")))?,
            ),
            None => None,
        };
        if let Some(chunk) = &chunk {
            total += chunk.len() as u64;
            if total > limit {
                return Err(DataError::TooLarge(limit));
            }
            hasher.update(chunk);
            pending.extend_from_slice(chunk);
        }
        if pending.len() >= PIECE || (chunk.is_none() && !pending.is_empty()) {
            file.write_all(&pending).await?;
            // tokio hands writes to a background thread: flush before telling the parser.
            file.flush().await?;
            growing.advance(pending.len() as u64);
            pending.clear();
        }
        if chunk.is_none() {
            return Ok((hex(&hasher.finalize()), total));
        }
    }
}

/// Ends a growing upload as abandoned if the request stops before it is complete (an error, or
/// a client that went away), so the parser waiting on it stops too.
struct AbortOnDrop(Arc<Growing>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort("the upload did not complete");
    }
}

/// Moves a finished Parquet file to its final place durably (rename, then sync the directory
/// so the rename itself survives a crash).
fn publish(from: &FsPath, to: &FsPath) -> std::io::Result<()> {
    let dir = to
        .parent()
        .ok_or_else(|| std::io::Error::other("blob path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    std::fs::rename(from, to)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Uploads a file (CSV, JSON lines or Parquet) as a new version of a dataset.
#[utoipa::path(post, path = "/v1/datasets/{name}", tag = "datasets",
    params(("name" = String, Path), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
                 description = "the file's bytes, streamed"),
    responses((status = 201, body = UploadResponse, description = "a new version"),
              (status = 200, body = UploadResponse, description = "identical content was already stored"),
              (status = 400, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 429, body = ErrorBody)))]
async fn upload(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<UploadQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let s = &state.0;
    check_name(&name)?;
    let options = query.options(&s.config)?;
    let _permit = s
        .uploads
        .try_acquire()
        .map_err(|_| DataError::Busy(s.config.max_concurrent_uploads))?;
    let temp = TempFiles::new(&s.layout.tmp());
    let started = std::time::Instant::now();
    let file = tokio::fs::File::create(&temp.input)
        .await
        .map_err(DataError::from)?;
    // Parse while receiving. The temp files travel with the blocking work, so they are removed
    // when it ends, even if this request is abandoned.
    let growing = Growing::new();
    let guard = AbortOnDrop(Arc::clone(&growing));
    let job = {
        let (growing, options) = (Arc::clone(&growing), options.clone());
        tokio::task::spawn_blocking(move || {
            let result = ingest::ingest_growing(&temp.input, &temp.output, &options, &growing);
            (result, temp)
        })
    };
    let received = receive(body, file, &growing, s.config.max_upload_bytes).await;
    let (content_sha256, bytes) = match received {
        Ok(received) => received,
        Err(error) => {
            // Stop the parse and wait for it, so its files are gone before we answer.
            growing.abort("the upload did not complete");
            let _ = job.await;
            return Err(error.into());
        }
    };
    let received = started.elapsed();
    let version = content_address(&content_sha256, &options);

    let (n, v) = (name.clone(), version.clone());
    let existing = s.store.read(move |c| db::version(c, &n, &v)).await;
    if !matches!(existing, Ok(None)) {
        // A duplicate (or a failed look-up): stop the parse, and wait for it to clean up.
        growing.abort("identical content is already stored");
        let _ = job.await;
        return match existing.map_err(DataError::from)? {
            Some(existing) => Ok((
                StatusCode::OK,
                Json(db::upload_response(&name, &existing, false)),
            )
                .into_response()),
            None => Err(DataError::Internal("version look-up failed".into()).into()),
        };
    }
    growing.finish();
    drop(guard);
    let (ingested, temp) = job.await.map_err(DataError::from)?;
    let ingested = ingested.map_err(DataError::from)?;
    let parsed = started.elapsed();
    let blob = s.layout.blob(&name, &version);
    tokio::task::spawn_blocking(move || publish(&temp.output, &blob))
        .await
        .map_err(DataError::from)?
        .map_err(DataError::from)?;

    let new = NewVersion {
        version,
        content_sha256,
        rows: ingested.rows,
        bytes,
        format: ingested.format.name().to_string(),
        target: ingested.target,
        columns: ingested.columns,
    };
    let n = name.clone();
    let (info, created) = s
        .store
        .write(move |tx| db::insert_version(tx, &n, new))
        .await
        .map_err(DataError::from)?;
    tracing::info!(
        dataset = %name, version = %info.version, rows = info.rows, bytes, created,
        receive_ms = received.as_millis(),
        parse_ms = (parsed - received).as_millis(),
        commit_ms = (started.elapsed() - parsed).as_millis(),
        "upload"
    );
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(db::upload_response(&name, &info, created))).into_response())
}

/// Every dataset with its latest version.
#[utoipa::path(get, path = "/v1/datasets", tag = "datasets",
    responses((status = 200, body = DatasetList)))]
async fn list(State(state): State<AppState>) -> Result<Json<DatasetList>, ApiError> {
    let datasets = state
        .0
        .store
        .read(db::list)
        .await
        .map_err(DataError::from)?;
    Ok(Json(DatasetList { datasets }))
}

/// A dataset: its versions (newest first) and the latest one's schema and statistics.
#[utoipa::path(get, path = "/v1/datasets/{name}", tag = "datasets",
    params(("name" = String, Path)),
    responses((status = 200, body = DatasetDetail), (status = 404, body = ErrorBody)))]
async fn describe(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<DatasetDetail>, ApiError> {
    check_name(&name)?;
    let n = name.clone();
    state
        .0
        .store
        .read(move |c| db::detail(c, &n))
        .await
        .map_err(DataError::from)?
        .map(Json)
        .ok_or_else(|| DataError::NotFound(format!("no dataset {name:?}")).into())
}

/// Deletes a dataset and all its versions (models trained on it keep their own copies).
#[utoipa::path(delete, path = "/v1/datasets/{name}", tag = "datasets",
    params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_name(&name)?;
    let n = name.clone();
    let removed = state
        .0
        .store
        .write(move |tx| db::delete(tx, &n))
        .await
        .map_err(DataError::from)?;
    if !removed {
        return Err(DataError::NotFound(format!("no dataset {name:?}")).into());
    }
    // After the commit: a crash here leaves files the next start-up sweep removes.
    let dir = state.0.layout.dataset_dir(&name);
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
    tracing::info!(dataset = %name, "deleted");
    Ok(StatusCode::NO_CONTENT)
}

async fn find(state: &AppState, name: &str, which: &str) -> Result<VersionInfo, DataError> {
    check_name(name)?;
    let (n, w) = (name.to_string(), which.to_string());
    state
        .0
        .store
        .read(move |c| db::version(c, &n, &w))
        .await?
        .ok_or_else(|| {
            DataError::NotFound(format!(
                "no version {which:?} of dataset {name:?} (give a version id, a number, or `latest`)"
            ))
        })
}

/// One version: schema, statistics, sizes. `{version}` is the id, the number, or `latest`.
#[utoipa::path(get, path = "/v1/datasets/{name}/versions/{version}", tag = "datasets",
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = VersionInfo), (status = 404, body = ErrorBody)))]
async fn version(
    State(state): State<AppState>,
    Path((name, which)): Path<(String, String)>,
) -> Result<Json<VersionInfo>, ApiError> {
    Ok(Json(find(&state, &name, &which).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct RowsQuery {
    /// First row (0-based; default 0).
    offset: Option<u64>,
    /// Rows to return (default 100, at most `data.max_page_rows`).
    limit: Option<u64>,
}

/// A page of rows as JSON.
#[utoipa::path(get, path = "/v1/datasets/{name}/versions/{version}/rows", tag = "datasets",
    params(("name" = String, Path), ("version" = String, Path), RowsQuery),
    responses((status = 200, body = RowsPage), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn rows(
    State(state): State<AppState>,
    Path((name, which)): Path<(String, String)>,
    Query(query): Query<RowsQuery>,
) -> Result<Json<RowsPage>, ApiError> {
    let info = find(&state, &name, &which).await?;
    let max = state.0.config.max_page_rows as u64;
    let limit = query.limit.unwrap_or(100);
    if limit > max {
        return Err(DataError::Invalid(format!(
            "limit {limit} is over the page size limit of {max}"
        ))
        .into());
    }
    let offset = query.offset.unwrap_or(0);
    let path = state.0.layout.blob(&name, &info.version);
    let (columns, total, rows) = tokio::task::spawn_blocking(move || {
        ingest::read_rows(
            &path,
            usize::try_from(offset).unwrap_or(usize::MAX),
            usize::try_from(limit).unwrap_or(usize::MAX),
        )
    })
    .await
    .map_err(DataError::from)?
    .map_err(DataError::from)?;
    Ok(Json(RowsPage {
        name,
        version: info.version,
        columns,
        offset,
        limit,
        total,
        rows,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct DownloadQuery {
    /// `parquet` (default) or `csv`.
    format: Option<String>,
}

/// Bytes written on the blocking pool, sent as a streamed body in 64 KiB pieces.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buffer: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::take(&mut self.buffer));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::other("the client went away"))
    }
}

/// Downloads a version as Parquet or CSV (streamed).
#[utoipa::path(get, path = "/v1/datasets/{name}/versions/{version}/download", tag = "datasets",
    params(("name" = String, Path), ("version" = String, Path), DownloadQuery),
    responses((status = 200, content_type = "application/vnd.apache.parquet", body = Vec<u8>),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn download(
    State(state): State<AppState>,
    Path((name, which)): Path<(String, String)>,
    Query(query): Query<DownloadQuery>,
) -> Result<Response, ApiError> {
    let info = find(&state, &name, &which).await?;
    let path = state.0.layout.blob(&name, &info.version);
    let format = query.format.as_deref().unwrap_or("parquet");
    let (content_type, body) = match format {
        "parquet" => {
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(DataError::from)?;
            (
                "application/vnd.apache.parquet",
                Body::from_stream(tokio_util::io::ReaderStream::new(file)),
            )
        }
        "csv" => {
            let (tx, rx) = mpsc::channel(8);
            tokio::task::spawn_blocking(move || {
                let mut writer = ChannelWriter {
                    tx: tx.clone(),
                    buffer: Vec::new(),
                };
                if let Err(error) = ingest::write_csv(&path, &mut writer) {
                    let _ = tx.blocking_send(Err(std::io::Error::other(error.to_string())));
                }
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            ("text/csv; charset=utf-8", Body::from_stream(stream))
        }
        other => {
            return Err(DataError::Invalid(format!(
                "unknown format {other:?}; use parquet or csv"
            ))
            .into());
        }
    };
    let filename = format!("{name}-{}.{format}", info.version);
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        body,
    )
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Only events with a greater id (default 0: from the start).
    after: Option<i64>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
    /// Hold the request up to this long when there is nothing new (long poll; default 0).
    wait_ms: Option<u64>,
}

/// The feed of dataset changes (`dataset.created`, `dataset.version_added`, `dataset.deleted`),
/// written in the same transaction as the change.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery),
    responses((status = 200, body = EventList), (status = 400, body = ErrorBody)))]
async fn events(
    State(state): State<AppState>,
    Query(query): Query<EventsQuery>,
) -> Result<Json<EventList>, ApiError> {
    let after = query.after.unwrap_or(0);
    if after < 0 {
        return Err(DataError::Invalid("after must be 0 or more".into()).into());
    }
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0).min(state.0.config.max_wait_ms));
    let events = state
        .0
        .store
        .events_after(after, limit, wait)
        .await
        .map_err(DataError::from)?;
    let last = events.last().map_or(after, |e| e.id);
    Ok(Json(EventList { events, last }))
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
