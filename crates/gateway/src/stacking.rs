//! Stacking: the meta-model learns from the members' out-of-fold predictions over a dataset
//! the user names. For each mlmesh member the gateway has the member's own model service refit
//! the member's algorithm and hyper-parameters on that dataset with k-fold validation, keeping
//! each row's prediction by the fold model that did not see it (`keep_oof`; the refit is kept as
//! model `<ensemble>-oof-<i>`). A foreign member cannot be refitted from here: its answers on
//! the rows are used as they are (out-of-sample only if it was not trained on them). The
//! predictions and the target become dataset `<ensemble>-stacking`, and a model service trains
//! the meta-model `<ensemble>-meta` on it with k-fold validation. Requests then go to the
//! members, and their answers to the meta-model.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use mlmesh_client::direct::EnsembleError;
use mlmesh_client::mesh::Answer;
use mlmesh_client::{Payload, direct::MeshMembers, lookup};
use mlmesh_ensemble::Member;
use mlmesh_ensemble::answer::{self, Answer as Predicted};
use mlmesh_ensemble::combine::stacking_feature_names;
use mlmesh_protocol::data::{ColumnInfo, DatasetDetail, RowsPage, UploadResponse};
use mlmesh_protocol::gateway::{Ensemble, MemberInfo, StackingInfo, StackingSpec};
use mlmesh_protocol::model::{Job, JobState, ModelDetail, OofPredictions};
use mlmesh_protocol::v2::{Datatype, InferInput, InferRequest};
use serde_json::{Value, json};

use crate::state::AppState;

const PAGE: u64 = 1000;
/// Most rows the meta-model learns from.
const MAX_ROWS: u64 = 200_000;

fn unavailable(message: impl Into<String>) -> EnsembleError {
    EnsembleError::Unavailable {
        message: message.into(),
        members: None,
    }
}

fn check(answer: &Answer, what: &str) -> Result<(), EnsembleError> {
    if answer.status.is_success() {
        return Ok(());
    }
    let text = mlmesh_client::gateway::error_text(&answer.body);
    if answer.status == StatusCode::NOT_FOUND {
        return Err(EnsembleError::NotFound(format!("{what}: {text}")));
    }
    if answer.status.is_client_error() {
        return Err(EnsembleError::Invalid(format!("{what}: {text}")));
    }
    Err(unavailable(format!("{what}: {} {text}", answer.status)))
}

fn csv_field(value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// Per member: row position → its prediction features.
type Features = HashMap<u64, Vec<f64>>;

/// Builds the meta-model's dataset and trains it; returns what the ensemble records.
pub async fn train(
    state: &AppState,
    ensemble: &Ensemble,
    spec: &StackingSpec,
) -> Result<StackingInfo, EnsembleError> {
    let mesh = &state.0.mesh;
    let data = mesh.upstream("data");
    let err = |e: mlmesh_resilience::BoxError| {
        unavailable(format!(
            "data service: {}",
            mlmesh_client::gateway::error_chain(&*e)
        ))
    };
    let answer = mesh
        .call_json(
            &data,
            Method::GET,
            &format!("/v1/datasets/{}", spec.dataset),
            None,
            false,
            None,
        )
        .await
        .map_err(err)?;
    check(&answer, &format!("dataset {}", spec.dataset))?;
    let detail: DatasetDetail =
        serde_json::from_slice(&answer.body).map_err(|e| unavailable(e.to_string()))?;
    let target = detail.latest.target.clone().ok_or_else(|| {
        EnsembleError::Invalid(format!(
            "dataset {} has no target column; upload it with ?target=COL",
            spec.dataset
        ))
    })?;
    let columns = detail.latest.columns.clone();
    let target_index = columns
        .iter()
        .position(|c| c.name == target)
        .ok_or_else(|| unavailable("the target column is missing"))?;
    let total = detail.latest.rows;
    if total > MAX_ROWS {
        return Err(EnsembleError::Invalid(format!(
            "dataset {} has {total} rows; stacking takes at most {MAX_ROWS}",
            spec.dataset
        )));
    }
    let mut rows: Vec<Vec<Value>> = Vec::with_capacity(total as usize);
    while (rows.len() as u64) < total {
        let path = format!(
            "/v1/datasets/{}/versions/{}/rows?offset={}&limit={PAGE}",
            spec.dataset,
            detail.latest.version,
            rows.len()
        );
        let answer = mesh
            .call_json(&data, Method::GET, &path, None, false, None)
            .await
            .map_err(err)?;
        check(&answer, "dataset rows")?;
        let page: RowsPage =
            serde_json::from_slice(&answer.body).map_err(|e| unavailable(e.to_string()))?;
        if page.rows.is_empty() {
            break;
        }
        rows.extend(page.rows);
    }
    let kfold = spec.kfold.unwrap_or(5);
    let classes = ensemble.classes.as_deref();
    let mut per_member: Vec<Features> = Vec::with_capacity(ensemble.members.len());
    for (i, member) in ensemble.members.iter().enumerate() {
        per_member.push(match &member.spec.url {
            None => {
                out_of_fold(
                    state,
                    ensemble,
                    i,
                    member,
                    spec,
                    &detail.latest.version,
                    &target,
                    kfold,
                )
                .await?
            }
            Some(_) => foreign(state, member, &rows, &columns, target_index, classes).await?,
        });
    }

    let names: Vec<String> = ensemble
        .members
        .iter()
        .map(|m| m.spec.model.clone())
        .collect();
    let feature_names = stacking_feature_names(&names, classes);
    let mut csv = String::new();
    let _ = writeln!(
        csv,
        "{},{}",
        feature_names.join(","),
        csv_field(&Value::from(target.clone()))
    );
    let mut used = 0u64;
    for (position, row) in rows.iter().enumerate() {
        let label = &row[target_index];
        if label.is_null() {
            continue;
        }
        let Some(features) = per_member
            .iter()
            .map(|m| m.get(&(position as u64)))
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        let line: Vec<String> = features
            .iter()
            .flat_map(|f| f.iter().map(f64::to_string))
            .collect();
        let _ = writeln!(csv, "{},{}", line.join(","), csv_field(label));
        used += 1;
    }
    if used < 10 {
        return Err(EnsembleError::Invalid(format!(
            "dataset {} has {used} rows every member could predict; the meta-model needs at least 10",
            spec.dataset
        )));
    }

    let stack_name = format!("{}-stacking", ensemble.name);
    let upload = http::Request::builder()
        .method(Method::POST)
        .uri(format!(
            "/v1/datasets/{stack_name}?format=csv&target={}",
            urlencode(&target)
        ))
        .header(http::header::CONTENT_TYPE, "text/csv")
        .body(Payload::full(csv.into_bytes()))
        .map_err(|e| unavailable(e.to_string()))?;
    let response = data.call(upload).await.map_err(err)?;
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .to_bytes();
    check(
        &Answer {
            status,
            headers: http::HeaderMap::new(),
            body: body.clone(),
        },
        "uploading the stacking dataset",
    )?;
    let uploaded: UploadResponse =
        serde_json::from_slice(&body).map_err(|e| unavailable(e.to_string()))?;

    let algorithm = spec.algorithm.clone().unwrap_or_else(|| {
        if ensemble.classes.is_some() {
            "logistic_regression"
        } else {
            "ridge"
        }
        .to_string()
    });
    let family = mlmesh_protocol::model::family_of(&algorithm).ok_or_else(|| {
        EnsembleError::Invalid(format!(
            "stacking.algorithm {algorithm:?} is not an algorithm; see GET /v1/algorithms"
        ))
    })?;
    let service = mlmesh_protocol::model::service_name(family);
    let meta_model = format!("{}-meta", ensemble.name);
    let request = json!({
        "dataset": stack_name,
        "dataset_version": uploaded.version,
        "algorithm": algorithm,
        "validation": {"kfold": kfold},
        "seed": 0,
    });
    let job = train_and_wait(state, &service, &meta_model, &request).await?;
    Ok(StackingInfo {
        dataset: spec.dataset.clone(),
        meta_model,
        meta_version: job.version.unwrap_or(1),
        algorithm,
        rows: used,
        metrics: job.metrics.unwrap_or_default(),
    })
}

/// Trains `model` on `service` and waits for the job to succeed.
async fn train_and_wait(
    state: &AppState,
    service: &str,
    model: &str,
    request: &Value,
) -> Result<Job, EnsembleError> {
    let mesh = &state.0.mesh;
    let upstream = mesh.upstream(service);
    let gone = |e: mlmesh_resilience::BoxError| {
        unavailable(format!(
            "{service}: {}",
            mlmesh_client::gateway::error_chain(&*e)
        ))
    };
    let answer = mesh
        .call_json(
            &upstream,
            Method::POST,
            &format!("/v1/models/{model}/train"),
            Some(request),
            false,
            None,
        )
        .await
        .map_err(gone)?;
    check(&answer, &format!("training {model}"))?;
    let job: Value =
        serde_json::from_slice(&answer.body).map_err(|e| unavailable(e.to_string()))?;
    let id = job
        .get("job")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let until = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let answer = mesh
            .call_json(
                &upstream,
                Method::GET,
                &format!("/v1/jobs/{id}"),
                None,
                false,
                None,
            )
            .await
            .map_err(gone)?;
        check(&answer, &format!("the job training {model}"))?;
        let job: Job =
            serde_json::from_slice(&answer.body).map_err(|e| unavailable(e.to_string()))?;
        match job.state {
            JobState::Succeeded => {
                mesh.learn_owner(model, service);
                return Ok(job);
            }
            JobState::Failed => {
                return Err(EnsembleError::Invalid(format!(
                    "{model} could not be trained: {}",
                    job.error.unwrap_or_default()
                )));
            }
            _ if tokio::time::Instant::now() >= until => {
                return Err(unavailable(format!(
                    "{model} took over 10 minutes to train"
                )));
            }
            _ => {}
        }
    }
}

/// An mlmesh member refitted per fold by its own service; its out-of-fold predictions,
/// aligned to the ensemble's classes.
#[allow(clippy::too_many_arguments)]
async fn out_of_fold(
    state: &AppState,
    ensemble: &Ensemble,
    index: usize,
    member: &MemberInfo,
    spec: &StackingSpec,
    dataset_version: &str,
    target: &str,
    kfold: u32,
) -> Result<Features, EnsembleError> {
    let mesh = &state.0.mesh;
    let service = lookup::owner(mesh, &member.spec.model)
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .ok_or_else(|| {
            EnsembleError::NotFound(format!("no model service serves {}", member.spec.model))
        })?;
    let upstream = mesh.upstream(&service);
    let answer = mesh
        .call_json(
            &upstream,
            Method::GET,
            &format!("/v1/models/{}", member.spec.model),
            None,
            false,
            None,
        )
        .await
        .map_err(|e| unavailable(mlmesh_client::gateway::error_chain(&*e)))?;
    check(&answer, &format!("member {}", member.spec.model))?;
    let detail: ModelDetail =
        serde_json::from_slice(&answer.body).map_err(|e| unavailable(e.to_string()))?;
    let version = match &member.spec.version {
        Some(v) => detail
            .versions
            .iter()
            .find(|m| m.version.to_string() == *v)
            .unwrap_or(&detail.latest),
        None => &detail.latest,
    };
    if detail.family == "onnx" {
        return Err(EnsembleError::Invalid(format!(
            "member {} is an imported ONNX model, which cannot be refitted per fold for stacking",
            member.spec.model
        )));
    }
    let refit = format!("{}-oof-{index}", ensemble.name);
    let request = json!({
        "dataset": spec.dataset,
        "dataset_version": dataset_version,
        "algorithm": version.algorithm,
        "params": version.params,
        "validation": {"kfold": kfold},
        "seed": version.seed.unwrap_or(0),
        "target": target,
        "features": version.signature.inputs.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
        "keep_oof": true,
    });
    let job = train_and_wait(state, &service, &refit, &request).await?;
    let v = job.version.unwrap_or(1);
    let answer = mesh
        .call_json(
            &upstream,
            Method::GET,
            &format!("/v1/models/{refit}/versions/{v}/oof"),
            None,
            false,
            None,
        )
        .await
        .map_err(|e| unavailable(mlmesh_client::gateway::error_chain(&*e)))?;
    check(&answer, &format!("out-of-fold predictions of {refit}"))?;
    let oof: OofPredictions =
        serde_json::from_slice(&answer.body).map_err(|e| unavailable(e.to_string()))?;
    let width = oof.columns.max(1);
    let mut features = Features::with_capacity(oof.rows.len());
    for (row, values) in oof.rows.iter().zip(oof.data.chunks(width)) {
        let aligned = match (ensemble.classes.as_deref(), &oof.classes) {
            (Some(classes), Some(own)) => {
                let mut out = vec![0.0; classes.len()];
                for (class, p) in own.iter().zip(values) {
                    if let Some(at) = classes.iter().position(|c| c == class) {
                        out[at] = *p;
                    }
                }
                out
            }
            _ => values.to_vec(),
        };
        features.insert(*row, aligned);
    }
    Ok(features)
}

/// A foreign member's answers on the dataset's complete rows.
async fn foreign(
    state: &AppState,
    member: &MemberInfo,
    rows: &[Vec<Value>],
    columns: &[ColumnInfo],
    target_index: usize,
    classes: Option<&[String]>,
) -> Result<Features, EnsembleError> {
    let complete: Vec<usize> = (0..rows.len())
        .filter(|&i| !rows[i].iter().any(Value::is_null))
        .collect();
    let mut features = Features::with_capacity(complete.len());
    let width = classes.map_or(1, <[String]>::len);
    for chunk in complete.chunks(PAGE as usize) {
        let n_features = columns.len() - 1;
        let mut flat = Vec::with_capacity(chunk.len() * n_features);
        for &i in chunk {
            for (c, v) in rows[i].iter().enumerate() {
                if c != target_index {
                    flat.push(v.as_f64().ok_or_else(|| {
                        EnsembleError::Invalid(format!(
                            "foreign member {} needs numeric columns for stacking",
                            member.spec.model
                        ))
                    })?);
                }
            }
        }
        let request = InferRequest {
            id: None,
            parameters: None,
            inputs: vec![InferInput {
                name: "input".into(),
                shape: vec![chunk.len() as i64, n_features as i64],
                datatype: Datatype::Fp64,
                parameters: None,
                data: Value::from(flat),
            }],
            outputs: member.spec.output.clone().map(|name| {
                vec![mlmesh_protocol::v2::RequestedOutput {
                    name,
                    parameters: None,
                }]
            }),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let response = MeshMembers(state.0.mesh.clone())
            .call(
                member,
                Arc::new(mlmesh_ensemble::MemberRequest::new(request)),
                deadline,
            )
            .await
            .map_err(|e| {
                EnsembleError::Invalid(format!("foreign member {}: {e}", member.spec.model))
            })?;
        let predicted = answer::read(&response, member, classes).map_err(|e| {
            EnsembleError::Invalid(format!("foreign member {}: {e}", member.spec.model))
        })?;
        for (j, &i) in chunk.iter().enumerate() {
            let f = match &predicted {
                Predicted::Values(v) => vec![v[j]],
                Predicted::Classes {
                    probabilities: Some(p),
                    ..
                } => p[j * width..(j + 1) * width].to_vec(),
                Predicted::Classes { labels, .. } => {
                    let mut one_hot = vec![0.0; width];
                    one_hot[labels[j]] = 1.0;
                    one_hot
                }
            };
            features.insert(i as u64, f);
        }
    }
    Ok(features)
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
