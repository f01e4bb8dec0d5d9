//! Looking members up before an ensemble is defined: which service serves a model, its task,
//! classes and inputs; for a foreign member, that its server knows the model and is ready.

use http::{Method, StatusCode};
use mlmesh_protocol::data::ColumnType;
use mlmesh_protocol::gateway::{MemberInfo, MemberSpec, Method as Combine};
use mlmesh_protocol::model::ModelDetail;

use crate::gateway::error_text;
use crate::mesh::{MODEL_SERVICE_PREFIX, Mesh};

/// Why a member cannot be used; `NotFound` and `Invalid` are the definer's mistakes.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
}

/// The model service serving `model`: from registry metadata, else by asking each one.
pub async fn owner(mesh: &Mesh, model: &str) -> Result<Option<String>, LookupError> {
    if let Some(owner) = mesh.owner(model) {
        return Ok(Some(owner));
    }
    for service in mesh.services(MODEL_SERVICE_PREFIX) {
        let upstream = mesh.upstream(&service);
        let path = format!("/v2/models/{model}/ready");
        if let Ok(answer) = mesh
            .call_json(&upstream, Method::GET, &path, None, false, None)
            .await
            && answer.status == StatusCode::OK
        {
            mesh.learn_owner(model, &service);
            return Ok(Some(service));
        }
    }
    Ok(None)
}

/// A member's facts, plus (for mlmesh models) the names of its input columns.
pub async fn member(
    mesh: &Mesh,
    spec: &MemberSpec,
    method: Combine,
) -> Result<(MemberInfo, Option<Vec<String>>), LookupError> {
    match &spec.url {
        None => native(mesh, spec).await,
        Some(url) => foreign(mesh, spec, url, method).await.map(|m| (m, None)),
    }
}

async fn native(
    mesh: &Mesh,
    spec: &MemberSpec,
) -> Result<(MemberInfo, Option<Vec<String>>), LookupError> {
    let Some(service) = owner(mesh, &spec.model).await? else {
        return Err(LookupError::NotFound(format!(
            "no model service serves a model {:?}",
            spec.model
        )));
    };
    let upstream = mesh.upstream(&service);
    let answer = mesh
        .call_json(
            &upstream,
            Method::GET,
            &format!("/v1/models/{}", spec.model),
            None,
            false,
            None,
        )
        .await
        .map_err(|e| LookupError::Unavailable(format!("{service}: {e}")))?;
    if answer.status == StatusCode::NOT_FOUND {
        return Err(LookupError::NotFound(format!(
            "model {:?}: {}",
            spec.model,
            error_text(&answer.body)
        )));
    }
    if !answer.status.is_success() {
        return Err(LookupError::Unavailable(format!(
            "{service} answered {}: {}",
            answer.status,
            error_text(&answer.body)
        )));
    }
    let detail: ModelDetail = serde_json::from_slice(&answer.body).map_err(|e| {
        LookupError::Unavailable(format!("{service} sent an unreadable model: {e}"))
    })?;
    let version = match &spec.version {
        None => &detail.latest,
        Some(v) => detail
            .versions
            .iter()
            .find(|m| m.version.to_string() == *v)
            .ok_or_else(|| {
                LookupError::NotFound(format!("model {:?} has no version {v}", spec.model))
            })?,
    };
    let signature = &version.signature;
    let integer_labels = match &signature.target {
        Some(target) => target.column_type == ColumnType::Integer,
        None => signature
            .classes
            .as_ref()
            .is_some_and(|c| c.iter().all(|c| c.parse::<i64>().is_ok())),
    };
    let info = MemberInfo {
        spec: spec.clone(),
        task: signature.task.clone(),
        member_classes: signature.classes.clone(),
        integer_labels,
    };
    Ok((
        info,
        Some(signature.inputs.iter().map(|f| f.name.clone()).collect()),
    ))
}

async fn foreign(
    mesh: &Mesh,
    spec: &MemberSpec,
    url: &str,
    method: Combine,
) -> Result<MemberInfo, LookupError> {
    let upstream = mesh.foreign(url);
    let mut path = format!("/v2/models/{}", spec.model);
    if let Some(v) = &spec.version {
        path.push_str(&format!("/versions/{v}"));
    }
    for (suffix, what) in [("", "metadata"), ("/ready", "readiness")] {
        let answer = mesh
            .call_json(
                &upstream,
                Method::GET,
                &format!("{path}{suffix}"),
                None,
                false,
                None,
            )
            .await
            .map_err(|e| {
                LookupError::Invalid(format!("foreign member {} at {url}: {e}", spec.model))
            })?;
        if !answer.status.is_success() {
            return Err(LookupError::Invalid(format!(
                "foreign member {} at {url}: its {what} answered {}: {}",
                spec.model,
                answer.status,
                error_text(&answer.body)
            )));
        }
    }
    let classifies = spec.classes.is_some() || method.classifies() == Some(true);
    Ok(MemberInfo {
        spec: spec.clone(),
        task: if classifies {
            "classification"
        } else {
            "regression"
        }
        .into(),
        member_classes: spec.classes.clone(),
        integer_labels: spec
            .classes
            .as_ref()
            .is_some_and(|c| c.iter().all(|c| c.parse::<i64>().is_ok())),
    })
}
