//! Stacking: the meta-model learns from the members' predictions over a dataset the user
//! names. The gateway pages through the dataset (data service), asks the members for their
//! predictions on every row (so these are out-of-sample when the dataset is one the members did
//! not train on), uploads the predictions with the target as a new dataset version
//! (`<ensemble>-stacking`), and has a model service train the meta-model (`<ensemble>-meta`)
//! on it with k-fold validation. Requests then go to the members, and their answers to the
//! meta-model.

use std::fmt::Write as _;
use std::time::Duration;

use http::{Method, StatusCode};
use mlmesh_client::direct::EnsembleError;
use mlmesh_client::mesh::Answer;
use mlmesh_client::{Payload, direct::MeshMembers};
use mlmesh_ensemble::combine::stacking_feature_names;
use mlmesh_ensemble::fanout::{Outcome, RunError};
use mlmesh_protocol::data::{ColumnType, DatasetDetail, RowsPage, UploadResponse};
use mlmesh_protocol::gateway::{Ensemble, Policy, StackingInfo, StackingSpec};
use mlmesh_protocol::model::{Job, JobState};
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
    let text = serde_json::from_slice::<mlmesh_protocol::ErrorBody>(&answer.body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&answer.body).into_owned());
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

    // The members answer like they will at request time, and all of them must answer.
    let mut probe = ensemble.clone();
    probe.policy = Policy {
        quorum: Some(probe.members.len()),
        deadline_ms: Some(30_000),
    };
    let names: Vec<String> = probe.members.iter().map(|m| m.spec.model.clone()).collect();
    let feature_names = stacking_feature_names(&names, probe.classes.as_deref());
    let mut csv = String::new();
    let _ = writeln!(
        csv,
        "{},{}",
        feature_names.join(","),
        csv_field(&Value::from(target.clone()))
    );
    let (mut offset, mut used, mut skipped) = (0u64, 0u64, 0u64);
    let total = detail.latest.rows.min(MAX_ROWS);
    while offset < total {
        let path = format!(
            "/v1/datasets/{}/versions/{}/rows?offset={offset}&limit={PAGE}",
            spec.dataset, detail.latest.version
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
        offset += page.rows.len() as u64;
        // Rows with a missing value or target cannot be sent as tensors; they are left out.
        let rows: Vec<&Vec<Value>> = page
            .rows
            .iter()
            .filter(|r| !r.iter().any(Value::is_null))
            .collect();
        skipped += page.rows.len() as u64 - rows.len() as u64;
        if rows.is_empty() {
            continue;
        }
        let inputs = columns
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != target_index)
            .map(|(i, c)| {
                let text = c.column_type == ColumnType::String;
                InferInput {
                    name: c.name.clone(),
                    shape: vec![rows.len() as i64],
                    datatype: if text {
                        Datatype::Bytes
                    } else {
                        Datatype::Fp64
                    },
                    parameters: None,
                    data: Value::from(
                        rows.iter()
                            .map(|r| match (&r[i], text) {
                                (Value::Bool(b), false) => json!(u8::from(*b)),
                                (v, true) if !v.is_string() => Value::from(v.to_string()),
                                (v, _) => v.clone(),
                            })
                            .collect::<Vec<_>>(),
                    ),
                }
            })
            .collect();
        let request = InferRequest {
            id: None,
            parameters: None,
            inputs,
            outputs: None,
        };
        let (outcome, _) =
            mlmesh_ensemble::run(&probe, &MeshMembers(mesh.clone()), &request, None, false)
                .await
                .map_err(|e| match e {
                    RunError::Quorum { .. } => EnsembleError::Invalid(format!(
                        "the members cannot predict dataset {}: {e}",
                        spec.dataset
                    )),
                    RunError::Combine(m) => unavailable(m),
                })?;
        let Outcome::Stacking {
            features,
            columns: width,
            ..
        } = outcome
        else {
            return Err(unavailable("the members' answers were not stacked"));
        };
        for (row, values) in rows.iter().zip(features.chunks(width.max(1))) {
            let line: Vec<String> = values.iter().map(|v| v.to_string()).collect();
            let _ = writeln!(csv, "{},{}", line.join(","), csv_field(&row[target_index]));
            used += 1;
        }
    }
    if used < 10 {
        return Err(EnsembleError::Invalid(format!(
            "dataset {} has {used} complete rows ({skipped} with missing values); the meta-model needs at least 10",
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
    let service = mesh.upstream(&mlmesh_protocol::model::service_name(family));
    let meta_model = format!("{}-meta", ensemble.name);
    let train = json!({
        "dataset": stack_name,
        "dataset_version": uploaded.version,
        "algorithm": algorithm,
        "validation": {"kfold": spec.kfold.unwrap_or(5)},
        "seed": 0,
    });
    let answer = mesh
        .call_json(
            &service,
            Method::POST,
            &format!("/v1/models/{meta_model}/train"),
            Some(&train),
            false,
            None,
        )
        .await
        .map_err(|e| {
            unavailable(format!(
                "{}: {}",
                service.name(),
                mlmesh_client::gateway::error_chain(&*e)
            ))
        })?;
    check(&answer, "training the meta-model")?;
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
                &service,
                Method::GET,
                &format!("/v1/jobs/{id}"),
                None,
                false,
                None,
            )
            .await
            .map_err(|e| unavailable(mlmesh_client::gateway::error_chain(&*e)))?;
        check(&answer, "the meta-model's job")?;
        let job: Job =
            serde_json::from_slice(&answer.body).map_err(|e| unavailable(e.to_string()))?;
        match job.state {
            JobState::Succeeded => {
                mesh.learn_owner(&meta_model, service.name());
                return Ok(StackingInfo {
                    dataset: spec.dataset.clone(),
                    meta_model,
                    meta_version: job.version.unwrap_or(1),
                    algorithm,
                    rows: used,
                    metrics: job.metrics.unwrap_or_default(),
                });
            }
            JobState::Failed => {
                return Err(EnsembleError::Invalid(format!(
                    "the meta-model could not be trained: {}",
                    job.error.unwrap_or_default()
                )));
            }
            _ if tokio::time::Instant::now() >= until => {
                return Err(unavailable("the meta-model took over 10 minutes to train"));
            }
            _ => {}
        }
    }
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
