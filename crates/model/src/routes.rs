//! HTTP handlers of a model service. Errors become statuses in [`ModelError`]'s `From` impl.

use std::collections::{BTreeMap, HashMap};
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mlmesh_kit::discovery::{Discovery, RegistryClient};
use mlmesh_kit::extract::{Json, Path, Query};
use mlmesh_kit::{ApiError, App, Readiness, ServerConfig};
use mlmesh_learn::params::{ALGORITHMS, Algorithm, Kind};
use mlmesh_learn::{Params, Task};
use mlmesh_protocol::ErrorBody;
use mlmesh_protocol::data::ColumnType;
use mlmesh_protocol::model::{
    AlgorithmInfo, AlgorithmList, Job, JobList, ModelDetail, ModelList, ModelVersion,
    OofPredictions, ParamInfo, TrainRequest, Validation,
};
use mlmesh_protocol::v2::{InferRequest, InferResponse, ModelMetadata, ServerMetadata};
use mlmesh_protocol::v2_binary;
use mlmesh_store::{Store, StoreError, now_ms};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::artifact::Artifact;
use crate::dataset::{DataClient, FetchError};
use crate::infer::{self, InferError};
use crate::jobs::{Jobs, Plan, SubmitError};
use crate::onnx::{ImportOptions, OnnxModel};
use crate::{Config, Layout, db};

/// Integer targets with at most this many distinct values are taken as classes.
const CLASS_LIMIT_INFERRED: u64 = 50;
/// Most classes a classifier may have.
const CLASS_LIMIT: u64 = 1000;

#[derive(Debug, thiserror::Error)]
enum ModelError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("the caller's deadline of {0} ms passed before the prediction finished")]
    DeadlineExceeded(u64),
    #[error("{0}")]
    Internal(String),
}

impl From<ModelError> for ApiError {
    fn from(error: ModelError) -> Self {
        let message = error.to_string();
        match error {
            ModelError::Invalid(_) => ApiError::BadRequest(message),
            ModelError::NotFound(_) => ApiError::NotFound(message),
            ModelError::TooLarge(_) => ApiError::PayloadTooLarge(message),
            ModelError::Busy(_) => ApiError::TooManyRequests {
                message,
                retry_after_s: 5,
            },
            ModelError::Unavailable(_) => ApiError::Unavailable(message),
            ModelError::DeadlineExceeded(_) => ApiError::GatewayTimeout(message),
            ModelError::Internal(_) => ApiError::Internal(message),
        }
    }
}

impl From<StoreError> for ModelError {
    fn from(error: StoreError) -> Self {
        Self::Internal(error.to_string())
    }
}

impl From<InferError> for ModelError {
    fn from(error: InferError) -> Self {
        match error {
            InferError::Invalid(m) => Self::Invalid(m),
            InferError::TooLarge(m) => Self::TooLarge(m),
        }
    }
}

impl From<SubmitError> for ModelError {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::QueueFull(_) => Self::Busy(error.to_string()),
            SubmitError::Store(e) => e.into(),
        }
    }
}

/// A loaded version, ready to predict.
enum Loaded {
    Native(Box<Artifact>),
    Onnx(Box<OnnxModel>),
}

struct Served {
    info: ModelVersion,
    model: Loaded,
    /// What its predictions cost, to run the short ones inline.
    cost: crate::cost::Cost,
}

impl Served {
    fn predict(
        &self,
        request: &InferRequest,
        max_rows: usize,
    ) -> Result<Vec<mlmesh_protocol::v2::InferOutput>, ModelError> {
        let start = std::time::Instant::now();
        let outputs = match &self.model {
            Loaded::Native(artifact) => infer::predict(artifact, request, max_rows)?,
            Loaded::Onnx(model) => model.predict(request, max_rows)?,
        };
        self.cost.record(rows_of(&outputs), start.elapsed());
        Ok(outputs)
    }
}

/// Rows of an answer (its first output's first dimension).
fn rows_of(outputs: &[mlmesh_protocol::v2::InferOutput]) -> u64 {
    outputs
        .first()
        .and_then(|o| o.shape.first())
        .copied()
        .unwrap_or(0)
}

struct Inner {
    config: Config,
    store: Store,
    jobs: Arc<Jobs>,
    discovery: Option<Discovery>,
    data: DataClient,
    /// Loaded versions by (model, version): versions are immutable, so entries never go stale.
    cache: Mutex<HashMap<(String, u64), Arc<Served>>>,
    /// Latest version of every model, refreshed from the shared store.
    catalog: RwLock<BTreeMap<String, u64>>,
    published: watch::Sender<BTreeMap<String, Value>>,
    /// Predictions run inline and on the blocking pool; made at first use, once the
    /// service's metrics recorder exists.
    predictions: std::sync::OnceLock<(metrics::Counter, metrics::Counter)>,
    readiness: Readiness,
    stop: CancellationToken,
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("family", &self.0.config.family)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Opens the family's store under `data_dir`, fails jobs a previous run of this replica left
    /// unfinished, starts the workers and the catalog follower.
    pub async fn open(
        config: Config,
        server: &ServerConfig,
        data_dir: &FsPath,
    ) -> std::io::Result<Self> {
        let owner = server
            .instance_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", config.service(), std::process::id()));
        let layout = Layout::new(data_dir, &config.family, &owner);
        // Only this replica's own leftovers: its siblings may be downloading right now.
        std::fs::create_dir_all(layout.tmp())?;
        for entry in std::fs::read_dir(layout.tmp())? {
            std::fs::remove_file(entry?.path())?;
        }
        let store =
            Store::open(&layout.database(), db::MIGRATIONS).map_err(std::io::Error::other)?;
        let jobs = Jobs::start(
            store.clone(),
            layout,
            owner,
            config.queue_capacity,
            config.workers,
        )
        .await
        .map_err(std::io::Error::other)?;
        let stop = CancellationToken::new();
        let discovery = server.registry_url.as_deref().map(|url| {
            Discovery::spawn(RegistryClient::new(url), Some("data".into()), stop.clone())
        });
        let state = Self(Arc::new(Inner {
            config,
            store,
            jobs,
            discovery,
            data: DataClient::default(),
            cache: Mutex::new(HashMap::new()),
            catalog: RwLock::new(BTreeMap::new()),
            published: watch::channel(BTreeMap::new()).0,
            predictions: std::sync::OnceLock::new(),
            readiness: Readiness::ready(),
            stop,
        }));
        state
            .refresh_catalog()
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(state.clone().follow_catalog());
        Ok(state)
    }

    /// The registry metadata of this replica: its family and the models it serves.
    pub fn published_models(&self) -> watch::Receiver<BTreeMap<String, Value>> {
        self.0.published.subscribe()
    }

    pub async fn stop(&self) {
        self.0.stop.cancel();
        self.0.jobs.stop();
    }

    async fn refresh_catalog(&self) -> Result<(), StoreError> {
        let catalog: BTreeMap<String, u64> =
            self.0.store.read(db::catalog).await?.into_iter().collect();
        let changed = *self.0.catalog.read().unwrap_or_else(|e| e.into_inner()) != catalog;
        if changed || self.0.published.borrow().is_empty() {
            let mut metadata = BTreeMap::new();
            metadata.insert(
                "family".to_string(),
                Value::from(self.0.config.family.clone()),
            );
            metadata.insert(
                "models".to_string(),
                Value::from(catalog.keys().cloned().collect::<Vec<_>>()),
            );
            *self.0.catalog.write().unwrap_or_else(|e| e.into_inner()) = catalog;
            self.0.published.send_replace(metadata);
        }
        Ok(())
    }

    /// Notices versions written by this replica at once and by others within `poll_ms`.
    async fn follow_catalog(self) {
        let mut written = self.0.jobs.versions_written.subscribe();
        loop {
            tokio::select! {
                () = self.0.stop.cancelled() => return,
                _ = written.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(self.0.config.poll_ms)) => {}
            }
            if let Err(error) = self.refresh_catalog().await {
                tracing::warn!(%error, "cannot read the model catalog");
            }
        }
    }

    fn data_url(&self) -> Result<String, ModelError> {
        if let Some(url) = &self.0.config.data_url {
            return Ok(url.trim_end_matches('/').to_string());
        }
        let instances = self
            .0
            .discovery
            .as_ref()
            .map(|d| d.instances("data"))
            .unwrap_or_default();
        // Spread dataset reads over replicas; any one serves every dataset.
        let pick = usize::try_from(now_ms()).unwrap_or(0) % instances.len().max(1);
        instances
            .get(pick)
            .map(|i| i.url.trim_end_matches('/').to_string())
            .ok_or_else(|| {
                ModelError::Unavailable(
                    "no data service is reachable (none registered and model.data_url is not set)"
                        .into(),
                )
            })
    }

    /// Loads the latest version of up to `limit` models (in name order) into the cache. A
    /// model that cannot load is left for its first call to report.
    pub async fn warm(&self, limit: usize) {
        let latest: Vec<String> = self
            .0
            .catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .take(limit)
            .cloned()
            .collect();
        if latest.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let mut loaded = 0;
        for name in latest {
            match self.served(&name, None).await {
                Ok(_) => loaded += 1,
                Err(e) => tracing::warn!(model = %name, error = %e, "cannot warm a model"),
            }
        }
        tracing::info!(
            loaded,
            ms = started.elapsed().as_millis() as u64,
            "models loaded before serving"
        );
    }

    /// A version, loaded (and cached); `which` is `latest` or a number.
    async fn served(&self, name: &str, which: Option<&str>) -> Result<Arc<Served>, ModelError> {
        check_name(name)?;
        let number = match which {
            None | Some("latest") => self
                .0
                .catalog
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .copied(),
            Some(v) => Some(v.parse::<u64>().map_err(|_| {
                ModelError::NotFound(format!(
                    "model {name} has no version {v:?}; versions are numbers"
                ))
            })?),
        };
        if let Some(number) = number
            && let Some(hit) = self
                .0
                .cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&(name.to_string(), number))
        {
            return Ok(Arc::clone(hit));
        }
        let explicit = which.is_some_and(|w| w != "latest");
        let (model, which) = (
            name.to_string(),
            number.map_or("latest".to_string(), |n| n.to_string()),
        );
        let found = self
            .0
            .store
            .read(move |c| {
                let Some(info) = db::version(c, &model, &which)? else {
                    return Ok(None);
                };
                let bytes = db::artifact(c, &model, info.version)?.unwrap_or_default();
                Ok(Some((info, bytes)))
            })
            .await?;
        let Some((info, bytes)) = found else {
            return Err(ModelError::NotFound(match number {
                Some(n) if explicit => format!("model {name} has no version {n}"),
                _ => format!(
                    "no model named {name} in the {} family",
                    self.0.config.family
                ),
            }));
        };
        let runtime = self.0.config.onnx_runtime.clone();
        let version = info.version;
        let served = tokio::task::spawn_blocking(move || -> Result<Served, ModelError> {
            let model = if info.algorithm == "onnx" {
                let environment =
                    crate::onnx::runtime(runtime.as_deref()).map_err(ModelError::Unavailable)?;
                let options = ImportOptions {
                    features: Some(
                        info.signature
                            .inputs
                            .iter()
                            .map(|f| f.name.clone())
                            .collect(),
                    ),
                    classes: info.signature.classes.clone(),
                };
                Loaded::Onnx(Box::new(
                    OnnxModel::load(environment, &bytes, &options).map_err(ModelError::Internal)?,
                ))
            } else {
                Loaded::Native(Box::new(
                    Artifact::from_bytes(&bytes).map_err(ModelError::Internal)?,
                ))
            };
            Ok(Served {
                info,
                model,
                cost: crate::cost::Cost::default(),
            })
        })
        .await
        .map_err(|e| ModelError::Internal(e.to_string()))??;
        let served = Arc::new(served);
        self.0
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((name.to_string(), version), Arc::clone(&served));
        metrics::counter!("mlmesh_model_loads_total").increment(1);
        Ok(served)
    }
}

fn check_name(name: &str) -> Result<(), ModelError> {
    mlmesh_kit::names::check("model", name).map_err(ModelError::Invalid)
}

#[derive(OpenApi)]
#[openapi(tags((name = "training", description = "Train models as jobs"),
               (name = "models", description = "Model versions, artifacts and imports"),
               (name = "inference", description = "Open Inference Protocol v2")))]
struct ModelApi;

pub fn router(state: AppState, server: &ServerConfig) -> Router {
    let import_limit = state.0.config.max_import_bytes;
    let service = state.0.config.service();
    let api = OpenApiRouter::with_openapi(ModelApi::openapi())
        .routes(routes!(algorithms))
        .routes(routes!(train))
        .routes(routes!(jobs))
        .routes(routes!(job))
        .routes(routes!(cancel))
        .routes(routes!(models))
        .routes(routes!(model))
        .routes(routes!(version))
        .routes(routes!(artifact))
        .routes(routes!(oof))
        .routes(routes!(server_metadata))
        .routes(routes!(model_metadata))
        .routes(routes!(version_metadata))
        .routes(routes!(model_ready))
        .routes(routes!(version_ready))
        .with_state(state.clone());
    let inference = OpenApiRouter::new()
        .routes(routes!(infer_latest))
        .routes(routes!(infer_version))
        .layer(DefaultBodyLimit::max(state.0.config.max_request_bytes))
        .with_state(state.clone());
    let imports = OpenApiRouter::new()
        .routes(routes!(import))
        .layer(DefaultBodyLimit::max(import_limit))
        .with_state(state.clone());
    App::new(service, env!("CARGO_PKG_VERSION"))
        .readiness(state.0.readiness.clone())
        .router(api.merge(imports).merge(inference), server)
}

fn kind_text(kind: Kind) -> String {
    match kind {
        Kind::Int { min, max, nullable } => format!(
            "integer {min}..={max}{}",
            if nullable { " or null" } else { "" }
        ),
        Kind::Float { min, max } => format!("number {min}..={max}"),
        Kind::Bool => "boolean".into(),
        Kind::Choice(choices) => format!("one of {}", choices.join(", ")),
        Kind::IntList { min, max } => format!("list of integers {min}..={max}"),
    }
}

/// The algorithms this family trains, with their hyper-parameters.
#[utoipa::path(get, path = "/v1/algorithms", tag = "training", responses((status = 200, body = AlgorithmList)))]
async fn algorithms(State(state): State<AppState>) -> Json<AlgorithmList> {
    let family = &state.0.config.family;
    let algorithms = ALGORITHMS
        .into_iter()
        .filter(|a| a.family() == family)
        .map(|a| AlgorithmInfo {
            name: a.name().into(),
            family: a.family().into(),
            tasks: a.tasks().iter().map(|t| t.name().to_string()).collect(),
            params: a
                .specs()
                .into_iter()
                .map(|s| ParamInfo {
                    name: s.name.into(),
                    kind: kind_text(s.kind),
                    default: (s.default)(a.tasks()[0]),
                    help: s.help.into(),
                })
                .collect(),
        })
        .collect();
    Json(AlgorithmList { algorithms })
}

/// Starts training `name` (a new version of it, if it exists).
#[utoipa::path(post, path = "/v1/models/{name}/train", tag = "training",
    params(("name" = String, Path)), request_body = TrainRequest,
    responses((status = 202, body = Job, description = "queued"), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody, description = "unknown dataset or version"),
              (status = 429, body = ErrorBody, description = "the queue is full"),
              (status = 503, body = ErrorBody, description = "the data service is unreachable")))]
async fn train(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Json(request): Json<TrainRequest>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let plan = plan(&state, &name, request).await?;
    let job = state.0.jobs.submit(plan).await.map_err(ModelError::from)?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// Checks a train request completely, so a job only fails for reasons found while training.
async fn plan(state: &AppState, name: &str, request: TrainRequest) -> Result<Plan, ModelError> {
    check_name(name)?;
    let family = state.0.config.family.clone();
    let algorithm = Algorithm::parse(&request.algorithm).ok_or_else(|| {
        let names: Vec<&str> = ALGORITHMS.iter().map(|a| a.name()).collect();
        ModelError::Invalid(format!(
            "unknown algorithm {:?}; valid: {}",
            request.algorithm,
            names.join(", ")
        ))
    })?;
    if algorithm.family() != family {
        return Err(ModelError::Invalid(format!(
            "{} is trained by the {} family (service model-{}); this is the {family} family",
            algorithm.name(),
            algorithm.family(),
            algorithm.family()
        )));
    }
    let validation = request.validation.unwrap_or(Validation::Holdout(0.2));
    if request.keep_oof && !matches!(validation, Validation::Kfold(_)) {
        return Err(ModelError::Invalid(
            "keep_oof needs k-fold validation: add \"validation\": {\"kfold\": 5}".into(),
        ));
    }
    let keep_oof = request.keep_oof;
    match validation {
        Validation::Holdout(f) if !(f > 0.0 && f <= 0.9) => {
            return Err(ModelError::Invalid(format!(
                "validation holdout {f} must be in (0, 0.9]"
            )));
        }
        Validation::Kfold(k) if !(2..=50).contains(&k) => {
            return Err(ModelError::Invalid(format!(
                "validation kfold {k} must be 2 to 50"
            )));
        }
        _ => {}
    }
    let mut given = request.params.clone();
    let task_override = match given.remove("task") {
        None => None,
        Some(Value::String(t)) if t == "classification" => Some(Task::Classification),
        Some(Value::String(t)) if t == "regression" => Some(Task::Regression),
        Some(other) => {
            return Err(ModelError::Invalid(format!(
                "parameter \"task\" must be \"classification\" or \"regression\", got {other}"
            )));
        }
    };
    let data_url = state.data_url()?;
    let which = request
        .dataset_version
        .clone()
        .unwrap_or_else(|| "latest".into());
    let info = state
        .0
        .data
        .describe(&data_url, &request.dataset, &which)
        .await
        .map_err(|e| match e {
            FetchError::NotFound(m) => ModelError::NotFound(m),
            FetchError::Unavailable(m) => ModelError::Unavailable(m),
        })?;
    let target_name = request
        .target
        .clone()
        .or(info.target.clone())
        .ok_or_else(|| {
            ModelError::Invalid(format!(
                "dataset {} has no target column; name one with \"target\"",
                request.dataset
            ))
        })?;
    let column = |n: &str| info.columns.iter().find(|c| c.name == n);
    let target = column(&target_name).ok_or_else(|| {
        let names: Vec<&str> = info.columns.iter().map(|c| c.name.as_str()).collect();
        ModelError::Invalid(format!(
            "target {target_name:?} is not a column of {}; columns: {}",
            request.dataset,
            names.join(", ")
        ))
    })?;
    let features: Vec<(String, ColumnType)> = match &request.features {
        Some(names) => names
            .iter()
            .map(|n| match column(n) {
                Some(c) if c.name != target_name => Ok((c.name.clone(), c.column_type)),
                Some(_) => Err(ModelError::Invalid(format!(
                    "the target {n:?} cannot also be a feature"
                ))),
                None => Err(ModelError::Invalid(format!(
                    "feature {n:?} is not a column of {}",
                    request.dataset
                ))),
            })
            .collect::<Result<_, _>>()?,
        None => info
            .columns
            .iter()
            .filter(|c| c.name != target_name)
            .map(|c| (c.name.clone(), c.column_type))
            .collect(),
    };
    if features.is_empty() {
        return Err(ModelError::Invalid(
            "there are no feature columns besides the target".into(),
        ));
    }
    let distinct = target.stats.distinct;
    let task = task_override.unwrap_or(match target.column_type {
        ColumnType::String | ColumnType::Boolean => Task::Classification,
        ColumnType::Integer if distinct <= CLASS_LIMIT_INFERRED => Task::Classification,
        _ => Task::Regression,
    });
    if task == Task::Regression && target.column_type == ColumnType::String {
        return Err(ModelError::Invalid(format!(
            "target {target_name:?} holds text; regression needs a numeric target"
        )));
    }
    if task == Task::Classification && distinct > CLASS_LIMIT {
        return Err(ModelError::Invalid(format!(
            "target {target_name:?} has about {distinct} distinct values, too many classes (at most {CLASS_LIMIT}); use a regressor"
        )));
    }
    if task == Task::Classification && distinct < 2 {
        return Err(ModelError::Invalid(format!(
            "target {target_name:?} has fewer than two distinct values; there is nothing to classify"
        )));
    }
    if !algorithm.tasks().contains(&task) {
        return Err(ModelError::Invalid(format!(
            "{} does {} only; target {target_name:?} makes this a {} task{}",
            algorithm.name(),
            algorithm.tasks()[0].name(),
            task.name(),
            if task_override.is_none() {
                " (set params.task to override)"
            } else {
                ""
            }
        )));
    }
    if target.stats.count < 2 {
        return Err(ModelError::Invalid(format!(
            "target {target_name:?} has fewer than two values; training needs more rows"
        )));
    }
    let params = Params::resolve(algorithm, task, &given).map_err(ModelError::Invalid)?;
    Ok(Plan {
        model: name.to_string(),
        family,
        algorithm,
        task,
        params,
        dataset: request.dataset,
        address: info.version,
        data_url,
        target: (target_name, target.column_type),
        features,
        validation,
        seed: request.seed.unwrap_or(0),
        keep_oof,
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct JobsQuery {
    /// Most jobs to list, newest first (default 100, at most 1000).
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/jobs", tag = "training", params(JobsQuery), responses((status = 200, body = JobList)))]
async fn jobs(
    State(state): State<AppState>,
    Query(query): Query<JobsQuery>,
) -> Result<Json<JobList>, ApiError> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(JobList {
        jobs: state.0.jobs.list(limit).await.map_err(ModelError::from)?,
    }))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "training", params(("id" = String, Path)),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)))]
async fn job(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Job>, ApiError> {
    let job = state.0.jobs.get(&id).await.map_err(ModelError::from)?;
    Ok(Json(job.ok_or_else(|| {
        ModelError::NotFound(format!("no job {id}"))
    })?))
}

/// Cancels a queued or running job (a finished one is answered as it is).
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "training", params(("id" = String, Path)),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)))]
async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let job = state.0.jobs.cancel(&id).await.map_err(ModelError::from)?;
    Ok(Json(job.ok_or_else(|| {
        ModelError::NotFound(format!("no job {id}"))
    })?))
}

#[utoipa::path(get, path = "/v1/models", tag = "models", responses((status = 200, body = ModelList)))]
async fn models(State(state): State<AppState>) -> Result<Json<ModelList>, ApiError> {
    let family = state.0.config.family.clone();
    let models = state
        .0
        .store
        .read(move |c| db::models(c, &family))
        .await
        .map_err(ModelError::from)?;
    Ok(Json(ModelList { models }))
}

#[utoipa::path(get, path = "/v1/models/{name}", tag = "models", params(("name" = String, Path)),
    responses((status = 200, body = ModelDetail), (status = 404, body = ErrorBody)))]
async fn model(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ModelDetail>, ApiError> {
    check_name(&name)?;
    let n = name.clone();
    let versions = state
        .0
        .store
        .read(move |c| db::versions(c, &n))
        .await
        .map_err(ModelError::from)?;
    let latest = versions
        .last()
        .cloned()
        .ok_or_else(|| ModelError::NotFound(format!("no model named {name}")))?;
    Ok(Json(ModelDetail {
        name,
        family: state.0.config.family.clone(),
        latest,
        versions,
    }))
}

#[utoipa::path(get, path = "/v1/models/{name}/versions/{version}", tag = "models",
    params(("name" = String, Path), ("version" = String, Path, description = "a number or `latest`")),
    responses((status = 200, body = ModelVersion), (status = 404, body = ErrorBody)))]
async fn version(
    State(state): State<AppState>,
    Path((name, which)): Path<(String, String)>,
) -> Result<Json<ModelVersion>, ApiError> {
    Ok(Json(find_version(&state, &name, &which).await?))
}

async fn find_version(
    state: &AppState,
    name: &str,
    which: &str,
) -> Result<ModelVersion, ModelError> {
    check_name(name)?;
    let (n, w) = (name.to_string(), which.to_string());
    state
        .0
        .store
        .read(move |c| db::version(c, &n, &w))
        .await?
        .ok_or_else(|| ModelError::NotFound(format!("model {name} has no version {which}")))
}

/// Each row's out-of-fold prediction, for versions trained with `keep_oof` (stacking).
#[utoipa::path(get, path = "/v1/models/{name}/versions/{version}/oof", tag = "models",
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = OofPredictions), (status = 404, body = ErrorBody)))]
async fn oof(
    State(state): State<AppState>,
    Path((name, which)): Path<(String, String)>,
) -> Result<Json<OofPredictions>, ApiError> {
    let info = find_version(&state, &name, &which).await?;
    let (n, v) = (name.clone(), info.version);
    let oof = state
        .0
        .store
        .read(move |c| db::oof(c, &n, v))
        .await
        .map_err(ModelError::from)?
        .ok_or_else(|| {
            ModelError::NotFound(format!(
                "version {v} of {name} kept no out-of-fold predictions; train with k-fold validation and \"keep_oof\": true"
            ))
        })?;
    Ok(Json(OofPredictions {
        model: name,
        version: v,
        rows: oof.rows,
        classes: info.signature.classes,
        columns: oof.columns,
        data: oof.data,
    }))
}

/// The version's artifact: `mlmesh.model` v1 JSON (see docs/specs/model-artifact.md), or the
/// ONNX file of an imported version.
#[utoipa::path(get, path = "/v1/models/{name}/versions/{version}/artifact", tag = "models",
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 200, content_type = "application/json", description = "the artifact"), (status = 404, body = ErrorBody)))]
async fn artifact(
    State(state): State<AppState>,
    Path((name, which)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let info = find_version(&state, &name, &which).await?;
    let (n, v) = (name.clone(), info.version);
    let bytes = state
        .0
        .store
        .read(move |c| db::artifact(c, &n, v))
        .await
        .map_err(ModelError::from)?
        .unwrap_or_default();
    let (content_type, extension) = if info.algorithm == "onnx" {
        ("application/octet-stream", "onnx")
    } else {
        ("application/json", "json")
    };
    let disposition = format!(
        "attachment; filename=\"{name}-v{}.{extension}\"",
        info.version
    );
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    /// `onnx`.
    format: String,
    /// Feature names in input-column order, comma-separated (default x0, x1, …).
    features: Option<String>,
    /// Class labels in probability-column order, comma-separated (needed only for text labels
    /// without ZipMap).
    classes: Option<String>,
}

/// Imports an ONNX model (as skl2onnx writes them) as a new version; onnx family only.
#[utoipa::path(post, path = "/v1/models/{name}/import", tag = "models",
    params(("name" = String, Path), ImportQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the ONNX file"),
    responses((status = 201, body = ModelVersion), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 503, body = ErrorBody, description = "ONNX Runtime is not available")))]
async fn import(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<ImportQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<ModelVersion>), ApiError> {
    check_name(&name)?;
    if query.format != "onnx" {
        return Err(ModelError::Invalid(format!(
            "import format {:?} is not supported; use format=onnx",
            query.format
        ))
        .into());
    }
    if state.0.config.family != "onnx" {
        return Err(ModelError::Invalid(format!("ONNX models are imported into the onnx family (service model-onnx); this is the {} family", state.0.config.family)).into());
    }
    if body.is_empty() {
        return Err(
            ModelError::Invalid("the body is empty; send the ONNX file's bytes".into()).into(),
        );
    }
    let split = |s: Option<String>| {
        s.map(|s| {
            s.split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
        })
    };
    let options = ImportOptions {
        features: split(query.features),
        classes: split(query.classes),
    };
    let runtime = state.0.config.onnx_runtime.clone();
    let bytes = body.clone();
    let model = tokio::task::spawn_blocking(move || -> Result<OnnxModel, ModelError> {
        let environment =
            crate::onnx::runtime(runtime.as_deref()).map_err(ModelError::Unavailable)?;
        OnnxModel::load(environment, &bytes, &options)
            .map_err(|e| ModelError::Invalid(format!("cannot import this ONNX file: {e}")))
    })
    .await
    .map_err(|e| ModelError::Internal(e.to_string()))??;
    let info = ModelVersion {
        model: name.clone(),
        version: 0,
        family: "onnx".into(),
        algorithm: "onnx".into(),
        params: BTreeMap::new(),
        metrics: BTreeMap::new(),
        validation: None,
        signature: model.signature.clone(),
        dataset: None,
        dataset_version: None,
        seed: None,
        train_rows: 0,
        artifact_bytes: 0,
        created_ms: now_ms(),
    };
    let info = state
        .0
        .store
        .write(move |tx| db::insert_version(tx, info, &body))
        .await
        .map_err(ModelError::from)?;
    state.refresh_catalog().await.map_err(ModelError::from)?;
    Ok((StatusCode::CREATED, Json(info)))
}

#[utoipa::path(get, path = "/v2", tag = "inference", responses((status = 200, body = ServerMetadata)))]
async fn server_metadata(State(state): State<AppState>) -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: format!("mlmesh {}", state.0.config.service()),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: vec![],
    })
}

async fn metadata_of(
    state: &AppState,
    name: &str,
    which: Option<&str>,
) -> Result<ModelMetadata, ModelError> {
    let served = state.served(name, which).await?;
    let (label_type, signature) = match &served.model {
        Loaded::Native(a) => (a.label_type, &a.signature),
        Loaded::Onnx(m) => (
            Some(if m.integer_labels {
                ColumnType::Integer
            } else {
                ColumnType::String
            }),
            &m.signature,
        ),
    };
    let (inputs, outputs) = infer::metadata(signature, label_type);
    let n = name.to_string();
    let versions = state.0.store.read(move |c| db::versions(c, &n)).await?;
    Ok(ModelMetadata {
        name: name.to_string(),
        versions: versions.iter().map(|v| v.version.to_string()).collect(),
        platform: format!("mlmesh_{}", served.info.algorithm),
        inputs,
        outputs,
    })
}

#[utoipa::path(get, path = "/v2/models/{name}", tag = "inference", params(("name" = String, Path)),
    responses((status = 200, body = ModelMetadata), (status = 404, body = ErrorBody)))]
async fn model_metadata(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ModelMetadata>, ApiError> {
    Ok(Json(metadata_of(&state, &name, None).await?))
}

#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", tag = "inference",
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = ModelMetadata), (status = 404, body = ErrorBody)))]
async fn version_metadata(
    State(state): State<AppState>,
    Path((name, which)): Path<(String, String)>,
) -> Result<Json<ModelMetadata>, ApiError> {
    Ok(Json(metadata_of(&state, &name, Some(&which)).await?))
}

#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "inference", params(("name" = String, Path)),
    responses((status = 200, description = "loaded and ready"), (status = 404, body = ErrorBody)))]
async fn model_ready(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.served(&name, None).await?;
    Ok(StatusCode::OK)
}

#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", tag = "inference",
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 200, description = "loaded and ready"), (status = 404, body = ErrorBody)))]
async fn version_ready(
    State(state): State<AppState>,
    Path((name, which)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.served(&name, Some(&which)).await?;
    Ok(StatusCode::OK)
}

/// Reads an infer body: JSON (with or without a content type, as clients differ), or JSON
/// followed by binary tensors when `Inference-Header-Content-Length` is present.
fn infer_request(headers: &HeaderMap, body: &[u8]) -> Result<InferRequest, ModelError> {
    let header_length = headers
        .get(v2_binary::HEADER)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|t| t.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    ModelError::Invalid(format!("{} must be a byte count", v2_binary::HEADER))
                })
        })
        .transpose()?;
    v2_binary::decode_request(body, header_length).map_err(ModelError::Invalid)
}

async fn run_infer(
    state: &AppState,
    name: &str,
    which: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ModelError> {
    let request = infer_request(headers, body)?;
    let served = state.served(name, which).await?;
    let max_rows = state.0.config.max_batch_rows;
    let id = request.id.clone();
    let binary: Vec<String> = ["label", "probabilities", "value"]
        .into_iter()
        .filter(|o| v2_binary::wants_binary(&request, o))
        .map(str::to_string)
        .collect();
    // Rows asked for, as the first input's first dimension says (checked when predicting).
    let asked = request
        .inputs
        .first()
        .and_then(|i| i.shape.first())
        .map_or(1, |&r| r.max(0) as u64);
    let (inline, pool) = state.0.predictions.get_or_init(|| {
        let counter =
            |on: &'static str| metrics::counter!("mlmesh_model_predictions_total", "on" => on);
        (counter("inline"), counter("pool"))
    });
    let budget = Duration::from_micros(state.0.config.inline_predict_us);
    let outputs = if served.cost.inline(asked, budget) {
        inline.increment(1);
        served.predict(&request, max_rows)?
    } else {
        pool.increment(1);
        // Longer predictions are CPU work for the blocking pool, never the async workers.
        let work = Arc::clone(&served);
        let task = tokio::task::spawn_blocking(move || work.predict(&request, max_rows));
        // A caller's deadline (`x-mlmesh-deadline-ms`, milliseconds left) bounds the wait.
        let deadline = headers
            .get("x-mlmesh-deadline-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let joined = match deadline {
            Some(ms) => tokio::time::timeout(std::time::Duration::from_millis(ms), task)
                .await
                .map_err(|_| ModelError::DeadlineExceeded(ms))?,
            None => task.await,
        };
        joined.map_err(|e| ModelError::Internal(e.to_string()))??
    };
    let rows = rows_of(&outputs);
    let response = InferResponse {
        model_name: name.to_string(),
        model_version: Some(served.info.version.to_string()),
        id,
        parameters: None,
        outputs,
    };
    let (body, header_length) =
        v2_binary::encode_response(response, |o| binary.iter().any(|b| b == o));
    let rows_header = (HeaderName::from_static("x-mlmesh-rows"), rows.to_string());
    Ok(match header_length {
        None => (
            [
                (header::CONTENT_TYPE, "application/json".to_string()),
                rows_header,
            ],
            body,
        )
            .into_response(),
        Some(length) => (
            [
                rows_header,
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (
                    HeaderName::from_static(v2_binary::HEADER),
                    length.to_string(),
                ),
            ],
            body,
        )
            .into_response(),
    })
}

/// Predicts with the latest version. JSON, or the binary tensor extension (`tritonclient`'s default).
#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "inference", params(("name" = String, Path)),
    request_body = InferRequest,
    responses((status = 200, body = InferResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 413, body = ErrorBody, description = "a batch over model.max_batch_rows")))]
async fn infer_latest(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    Ok(run_infer(&state, &name, None, &headers, &body).await?)
}

#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", tag = "inference",
    params(("name" = String, Path), ("version" = String, Path)), request_body = InferRequest,
    responses((status = 200, body = InferResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 413, body = ErrorBody)))]
async fn infer_version(
    State(state): State<AppState>,
    Path((name, which)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    Ok(run_infer(&state, &name, Some(&which), &headers, &body).await?)
}
