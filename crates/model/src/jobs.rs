//! Training jobs: a bounded per-replica queue, workers that copy the dataset, train on the
//! blocking pool and write the version, and the bookkeeping that makes jobs visible to every
//! replica (progress and a heartbeat in the shared store; cancels through it too).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mlmesh_learn::params::Algorithm;
use mlmesh_learn::prep::Preprocessor;
use mlmesh_learn::{FitError, Params, Prediction, Progress, Target, Task, metrics, split};
use mlmesh_protocol::data::ColumnType;
use mlmesh_protocol::model::{Feature, Job, JobState, ModelVersion, Signature, Validation};
use mlmesh_store::{Store, now_ms};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Layout;
use crate::artifact::{Artifact, FORMAT, FORMAT_VERSION};
use crate::dataset::{self, DataClient, FetchError};
use crate::db;

/// A train request after every check: what a worker needs, stored with the job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub model: String,
    pub family: String,
    pub algorithm: Algorithm,
    pub task: Task,
    pub params: Params,
    pub dataset: String,
    pub address: String,
    pub data_url: String,
    pub target: (String, ColumnType),
    pub features: Vec<(String, ColumnType)>,
    pub validation: Validation,
    pub seed: u64,
    /// Keep each row's out-of-fold prediction (k-fold only).
    #[serde(default)]
    pub keep_oof: bool,
}

/// Silence after which another replica's unfinished job counts as abandoned.
const ABANDONED_AFTER: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct Jobs {
    store: Store,
    layout: Layout,
    owner: String,
    queue: mpsc::Sender<String>,
    waiting: AtomicUsize,
    capacity: usize,
    running: Mutex<HashMap<String, Arc<Progress>>>,
    data: DataClient,
    /// Bumped whenever this replica writes a version, so serving notices at once.
    pub versions_written: tokio::sync::watch::Sender<u64>,
    stop: CancellationToken,
}

/// Why a job was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{0} training jobs are waiting on this replica; retry later")]
    QueueFull(usize),
    #[error("{0}")]
    Store(#[from] mlmesh_store::StoreError),
}

impl Jobs {
    /// Starts `workers` workers. Unfinished jobs this owner left behind (a crash or kill) are
    /// marked failed first.
    pub async fn start(
        store: Store,
        layout: Layout,
        owner: String,
        capacity: usize,
        workers: usize,
    ) -> Result<Arc<Self>, mlmesh_store::StoreError> {
        let me = owner.clone();
        let failed = store
            .write(move |tx| {
                db::fail_orphans(tx, &me, now_ms() - ABANDONED_AFTER.as_millis() as i64)
            })
            .await?;
        if failed > 0 {
            tracing::warn!(failed, "marked interrupted training jobs as failed");
        }
        let (queue, receiver) = mpsc::channel(capacity);
        let jobs = Arc::new(Self {
            store,
            layout,
            owner,
            queue,
            waiting: AtomicUsize::new(0),
            capacity,
            running: Mutex::new(HashMap::new()),
            data: DataClient::default(),
            versions_written: tokio::sync::watch::channel(0).0,
            stop: CancellationToken::new(),
        });
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        for _ in 0..workers {
            tokio::spawn(Arc::clone(&jobs).work(Arc::clone(&receiver)));
        }
        tokio::spawn(Arc::clone(&jobs).keep_alive());
        Ok(jobs)
    }

    pub fn stop(&self) {
        self.stop.cancel();
        for progress in self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            progress.cancel();
        }
    }

    /// Records a queued job and hands it to a worker; 429 when the queue is full.
    pub async fn submit(&self, plan: Plan) -> Result<Job, SubmitError> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.capacity {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull(self.capacity));
        }
        let job = Job {
            job: uuid::Uuid::new_v4().simple().to_string(),
            state: JobState::Queued,
            progress: 0.0,
            model: plan.model.clone(),
            algorithm: plan.algorithm.name().to_string(),
            dataset: plan.dataset.clone(),
            dataset_version: plan.address.clone(),
            version: None,
            metrics: None,
            error: None,
            created_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
        };
        let request = serde_json::to_string(&plan).expect("a plan is plain data");
        let (row, owner) = (job.clone(), self.owner.clone());
        if let Err(e) = self
            .store
            .write(move |tx| db::insert_job(tx, &row, &request, &owner))
            .await
        {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(e.into());
        }
        // Capacity was reserved above, so the channel has room.
        if self.queue.try_send(job.job.clone()).is_err() {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(job)
    }

    /// The job as stored, with live progress when this replica is running it.
    pub async fn get(&self, id: &str) -> Result<Option<Job>, mlmesh_store::StoreError> {
        let key = id.to_string();
        let found = self.store.read(move |c| db::job(c, &key)).await?;
        Ok(found.map(|(mut job, _, _)| {
            if let Some(progress) = self
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(id)
            {
                job.progress = job.progress.max(progress.fraction());
            }
            job
        }))
    }

    pub async fn list(&self, limit: usize) -> Result<Vec<Job>, mlmesh_store::StoreError> {
        let mut jobs = self.store.read(move |c| db::jobs(c, limit)).await?;
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        for job in &mut jobs {
            if let Some(progress) = running.get(&job.job) {
                job.progress = job.progress.max(progress.fraction());
            }
        }
        Ok(jobs)
    }

    /// Asks a job to stop; a queued one is cancelled at once. `None` if there is no such job.
    pub async fn cancel(&self, id: &str) -> Result<Option<Job>, mlmesh_store::StoreError> {
        let key = id.to_string();
        let found = self
            .store
            .write(move |tx| {
                let Some((mut job, _, _)) = db::job(tx, &key)? else {
                    return Ok(None);
                };
                if job.state.is_final() {
                    return Ok(Some(job));
                }
                db::request_cancel(tx, &key)?;
                if job.state == JobState::Queued {
                    job.state = JobState::Cancelled;
                    job.finished_ms = Some(now_ms());
                    db::update_job(tx, &job)?;
                }
                Ok(Some(job))
            })
            .await?;
        if let Some(progress) = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            progress.cancel();
        }
        Ok(found)
    }

    async fn work(self: Arc<Self>, receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<String>>>) {
        loop {
            let next = tokio::select! {
                () = self.stop.cancelled() => return,
                next = async { receiver.lock().await.recv().await } => next,
            };
            let Some(id) = next else { return };
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            if let Err(error) = self.run(&id).await {
                tracing::error!(job = %id, %error, "could not record a job's outcome");
            }
        }
    }

    async fn run(&self, id: &str) -> Result<(), mlmesh_store::StoreError> {
        let key = id.to_string();
        let Some((mut job, cancel, request)) = self.store.read(move |c| db::job(c, &key)).await?
        else {
            return Ok(());
        };
        if job.state != JobState::Queued || cancel {
            return Ok(());
        }
        let plan: Plan = match serde_json::from_str(&request) {
            Ok(plan) => plan,
            Err(e) => {
                return self
                    .finish(job, Err(format!("the stored job is unreadable: {e}")))
                    .await;
            }
        };
        job.state = JobState::Running;
        job.started_ms = Some(now_ms());
        let row = job.clone();
        self.store.write(move |tx| db::update_job(tx, &row)).await?;
        let progress = Arc::new(Progress::default());
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), Arc::clone(&progress));
        let ticker = tokio::spawn(track(
            self.store.clone(),
            job.clone(),
            Arc::clone(&progress),
        ));
        let outcome = self.train(&plan, &progress).await;
        ticker.abort();
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        job.progress = progress.fraction();
        self.finish(job, outcome).await
    }

    async fn train(&self, plan: &Plan, progress: &Arc<Progress>) -> Result<Fitted, String> {
        let path = self.layout.dataset(&plan.dataset, &plan.address);
        self.data
            .copy(
                &plan.data_url,
                &plan.dataset,
                &plan.address,
                &path,
                &self.layout.tmp(),
            )
            .await
            .map_err(|e| match e {
                FetchError::NotFound(m) | FetchError::Unavailable(m) => m,
            })?;
        let (plan, shared) = (plan.clone(), Arc::clone(progress));
        tokio::task::spawn_blocking(move || fit(&plan, &path, &shared))
            .await
            .map_err(|e| format!("training stopped unexpectedly: {e}"))?
    }

    async fn finish(
        &self,
        mut job: Job,
        outcome: Result<Fitted, String>,
    ) -> Result<(), mlmesh_store::StoreError> {
        job.finished_ms = Some(now_ms());
        let written = match outcome {
            Ok((artifact, info, oof)) => {
                let bytes = artifact.to_bytes();
                let mut done = job.clone();
                let version = self
                    .store
                    .write(move |tx| {
                        let info = db::insert_version(tx, info, &bytes)?;
                        if let Some(oof) = &oof {
                            db::insert_oof(tx, &info.model, info.version, oof)?;
                        }
                        done.state = JobState::Succeeded;
                        done.progress = 1.0;
                        done.version = Some(info.version);
                        done.metrics = Some(info.metrics.clone());
                        db::update_job(tx, &done)?;
                        Ok(info.version)
                    })
                    .await?;
                tracing::info!(job = %job.job, model = %job.model, version, "trained");
                true
            }
            Err(error) => {
                let key = job.job.clone();
                let asked = self
                    .store
                    .read(move |c| db::job(c, &key))
                    .await?
                    .is_some_and(|(_, c, _)| c);
                job.state = if asked && error == FitError::Cancelled.to_string() {
                    JobState::Cancelled
                } else {
                    JobState::Failed
                };
                job.error = Some(error);
                let row = job.clone();
                self.store.write(move |tx| db::update_job(tx, &row)).await?;
                false
            }
        };
        if written {
            self.versions_written.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    /// Heartbeats this replica's jobs and fails other replicas' abandoned ones.
    async fn keep_alive(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(ABANDONED_AFTER / 6) => {}
            }
            let owner = self.owner.clone();
            let result = self
                .store
                .write(move |tx| {
                    db::heartbeat(tx, &owner)?;
                    // Our own jobs were just heartbeated, so only silent replicas' jobs match.
                    db::fail_orphans(tx, "", now_ms() - ABANDONED_AFTER.as_millis() as i64)
                })
                .await;
            if let Err(error) = result {
                tracing::warn!(%error, "job heartbeat failed");
            }
        }
    }
}

/// Saves a running job's progress now and then, and passes on cancels asked through any replica.
async fn track(store: Store, mut job: Job, progress: Arc<Progress>) {
    loop {
        tokio::time::sleep(TICK).await;
        job.progress = progress.fraction();
        let row = job.clone();
        let cancel = store.write(move |tx| db::save_progress(tx, &row)).await;
        if matches!(cancel, Ok(true)) {
            progress.cancel();
        }
    }
}

/// Out-of-fold predictions: `rows` are dataset row positions, `data` is `[rows, columns]`.
#[derive(Debug, Clone)]
pub struct Oof {
    pub rows: Vec<u64>,
    pub columns: usize,
    pub data: Vec<f64>,
}

/// What a finished training yields.
pub type Fitted = (Artifact, ModelVersion, Option<Oof>);

/// Reads the dataset copy, evaluates, fits the served model and describes the version.
pub fn fit(plan: &Plan, path: &std::path::Path, progress: &Progress) -> Result<Fitted, String> {
    let mut columns: Vec<(String, ColumnType)> = plan.features.clone();
    columns.push(plan.target.clone());
    let raw = dataset::read(path, &columns)?;
    let (target_raw, feature_raw) = raw.split_last().expect("the target column is read");
    let names: Vec<String> = plan.features.iter().map(|(n, _)| n.clone()).collect();
    let (keep, target, classes) = match plan.task {
        Task::Classification => {
            let labels = target_raw.labels();
            let keep: Vec<usize> = (0..labels.len()).filter(|&i| labels[i].is_some()).collect();
            let mut classes: Vec<String> = keep.iter().filter_map(|&i| labels[i].clone()).collect();
            if plan.target.1 == ColumnType::Integer {
                classes.sort_by_key(|c| c.parse::<i64>().unwrap_or(0));
            } else {
                classes.sort();
            }
            classes.dedup();
            let index: HashMap<&str, usize> = classes
                .iter()
                .enumerate()
                .map(|(i, c)| (c.as_str(), i))
                .collect();
            let y = keep
                .iter()
                .map(|&i| index[labels[i].as_deref().unwrap_or_default()])
                .collect();
            let n_classes = classes.len();
            (keep, Target::Classes { y, n_classes }, Some(classes))
        }
        Task::Regression => {
            let values = target_raw
                .values()
                .ok_or("the target holds text; regression needs numbers")?;
            let keep: Vec<usize> = (0..values.len())
                .filter(|&i| values[i].is_some_and(f64::is_finite))
                .collect();
            let y = keep
                .iter()
                .map(|&i| values[i].unwrap_or_default())
                .collect();
            (keep, Target::Values(y), None)
        }
    };
    if keep.is_empty() {
        return Err(format!(
            "no row has a value in the target column \"{}\"",
            plan.target.0
        ));
    }
    let frame = dataset::frame(&names, feature_raw).select(&keep);
    let splits = match plan.validation {
        Validation::Holdout(fraction) => split::holdout(&target, fraction, plan.seed),
        Validation::Kfold(k) => {
            if k > keep.len() {
                return Err(format!(
                    "kfold {k} needs at least {k} rows with a target; there are {}",
                    keep.len()
                ));
            }
            split::kfold(&target, k, plan.seed)
        }
    };
    let scale = plan.algorithm.scales_features();
    // Each fold is one unit of work; k-fold adds a final fit on every row.
    let units = splits.len() + usize::from(matches!(plan.validation, Validation::Kfold(_)));
    let mut fold_metrics = Vec::new();
    let mut served = None;
    let keep_oof = plan.keep_oof && matches!(plan.validation, Validation::Kfold(_));
    let mut oof: Vec<Option<Vec<f64>>> = if keep_oof {
        vec![None; keep.len()]
    } else {
        Vec::new()
    };
    for (i, (train, test)) in splits.iter().enumerate() {
        let unit = Progress::default();
        let (model, prep) = fit_rows(
            plan, &frame, &target, train, scale, &unit, progress, i, units,
        )?;
        if !test.is_empty() {
            let prediction = model.predict(&prep.transform(&frame.select(test)));
            if keep_oof {
                for (j, &row) in test.iter().enumerate() {
                    oof[row] = Some(match &prediction {
                        Prediction::Probabilities(m) => {
                            m.data[j * m.cols..(j + 1) * m.cols].to_vec()
                        }
                        Prediction::Values(v) => vec![v[j]],
                    });
                }
            }
            fold_metrics.push(metrics::evaluate(&target.select(test), &prediction));
        }
        served = Some((model, prep, train.len()));
    }
    let oof = keep_oof.then(|| {
        let columns = oof.iter().flatten().map(Vec::len).next().unwrap_or(0);
        let mut out = Oof {
            rows: Vec::new(),
            columns,
            data: Vec::new(),
        };
        for (i, p) in oof.into_iter().enumerate() {
            if let Some(p) = p {
                out.rows.push(keep[i] as u64);
                out.data.extend(p);
            }
        }
        out
    });
    if matches!(plan.validation, Validation::Kfold(_)) {
        let all: Vec<usize> = (0..keep.len()).collect();
        let unit = Progress::default();
        let (model, prep) = fit_rows(
            plan,
            &frame,
            &target,
            &all,
            scale,
            &unit,
            progress,
            units - 1,
            units,
        )?;
        served = Some((model, prep, all.len()));
    }
    let (estimator, preprocessor, train_rows) = served.ok_or("there was nothing to train on")?;
    let mut metrics: BTreeMap<String, f64> = metrics::average(&fold_metrics)
        .into_iter()
        .filter(|(_, v)| v.is_finite())
        .collect();
    metrics.insert(
        "validation_rows".into(),
        splits.iter().map(|(_, t)| t.len()).sum::<usize>() as f64,
    );
    let signature = Signature {
        inputs: plan
            .features
            .iter()
            .map(|(name, t)| Feature {
                name: name.clone(),
                column_type: *t,
            })
            .collect(),
        target: Some(Feature {
            name: plan.target.0.clone(),
            column_type: plan.target.1,
        }),
        task: plan.task.name().to_string(),
        classes: classes.clone(),
    };
    let artifact = Artifact {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        algorithm: plan.algorithm.name().into(),
        task: plan.task,
        signature: signature.clone(),
        label_type: (plan.task == Task::Classification).then_some(plan.target.1),
        preprocessor,
        estimator,
    };
    let mut params = plan.params.0.clone();
    params.insert("task".into(), plan.task.name().into());
    let info = ModelVersion {
        model: plan.model.clone(),
        version: 0,
        family: plan.family.clone(),
        algorithm: plan.algorithm.name().into(),
        params,
        metrics,
        validation: Some(plan.validation),
        signature,
        dataset: Some(plan.dataset.clone()),
        dataset_version: Some(plan.address.clone()),
        seed: Some(plan.seed),
        train_rows: train_rows as u64,
        artifact_bytes: 0,
        created_ms: now_ms(),
    };
    Ok((artifact, info, oof))
}

/// Fits preprocessing and model on `rows`, forwarding progress and cancels to the job's.
#[allow(clippy::too_many_arguments)]
fn fit_rows(
    plan: &Plan,
    frame: &mlmesh_learn::prep::Frame,
    target: &Target,
    rows: &[usize],
    scale: bool,
    unit: &Progress,
    overall: &Progress,
    index: usize,
    units: usize,
) -> Result<(mlmesh_learn::Estimator, Preprocessor), String> {
    overall.check().map_err(|e| e.to_string())?;
    let train = frame.select(rows);
    let prep = Preprocessor::fit(&train, &frame.names, scale);
    let x = prep.transform(&train);
    let y = target.select(rows);
    let result = std::thread::scope(|scope| {
        let fitting = scope
            .spawn(|| mlmesh_learn::fit(plan.algorithm, &plan.params, &x, &y, plan.seed, unit));
        while !fitting.is_finished() {
            std::thread::sleep(Duration::from_millis(50));
            if overall.is_cancelled() {
                unit.cancel();
            }
            overall.set((index as f64 + unit.fraction()) / units as f64 * 0.99);
        }
        fitting.join().unwrap_or_else(|_| {
            Err(FitError::Invalid(
                "the algorithm failed unexpectedly".into(),
            ))
        })
    });
    let model = result.map_err(|e| e.to_string())?;
    overall.set((index + 1) as f64 / units as f64 * 0.99);
    // A classifier must answer probabilities with one column per class it knows.
    if let (Prediction::Probabilities(p), Target::Classes { n_classes, .. }) =
        (model.predict(&prep.transform(&train.select(&[0]))), &y)
        && p.cols != *n_classes
    {
        return Err("the fitted model's classes do not match the target's".into());
    }
    Ok((model, prep))
}
