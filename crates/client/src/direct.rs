//! Ensembles over the mesh: defining one (looking members up) and answering with one (calling
//! members, combining). The gateway serves ensembles with these functions; [`Direct`] offers
//! them to programs that call model services without a gateway.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use mlmesh_ensemble::define::{build, check_spec};
use mlmesh_ensemble::fanout::{Outcome, RunError};
use mlmesh_ensemble::{Member, MemberFuture, MemberRequest};
use mlmesh_kit::discovery::{Discovery, RegistryClient};
use mlmesh_protocol::gateway::{Ensemble, EnsembleSpec, MemberInfo};
use mlmesh_protocol::v2::{Datatype, InferInput, InferRequest, InferResponse};
use mlmesh_resilience::DeadlineAt;
use serde_json::{Map, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::lookup::{self, LookupError};
use crate::mesh::Mesh;

/// Why an ensemble cannot be defined or cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum EnsembleError {
    /// The definition is wrong (400).
    #[error("{0}")]
    Invalid(String),
    /// A member or the ensemble does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// Too few members answered, or a dependency is down (503).
    #[error("{message}")]
    Unavailable {
        message: String,
        members: Option<Value>,
    },
}

impl From<LookupError> for EnsembleError {
    fn from(e: LookupError) -> Self {
        match e {
            LookupError::NotFound(m) => Self::NotFound(m),
            LookupError::Invalid(m) => Self::Invalid(m),
            LookupError::Unavailable(m) => Self::Unavailable {
                message: m,
                members: None,
            },
        }
    }
}

/// Reaches members through the mesh: mlmesh models at the service that serves them, foreign
/// ones at their URL, each through its upstream's resilience stack.
#[derive(Debug, Clone)]
pub struct MeshMembers(pub Mesh);

impl Member for MeshMembers {
    fn call(
        &self,
        member: &MemberInfo,
        request: Arc<MemberRequest>,
        deadline: Instant,
    ) -> MemberFuture {
        let mesh = self.0.clone();
        let spec = member.spec.clone();
        Box::pin(async move {
            let upstream = match &spec.url {
                Some(url) => mesh.foreign(url),
                None => {
                    let owner = lookup::owner(&mesh, &spec.model)
                        .await
                        .map_err(|e| e.to_string())?
                        .ok_or_else(|| format!("no model service serves {}", spec.model))?;
                    mesh.upstream(&owner)
                }
            };
            let path = match &spec.version {
                Some(v) => format!("/v2/models/{}/versions/{v}/infer", spec.model),
                None => format!("/v2/models/{}/infer", spec.model),
            };
            let body = request.json()?.to_vec();
            let answer = mesh
                .call_bytes(
                    &upstream,
                    Method::POST,
                    &path,
                    Some(body),
                    true,
                    Some(DeadlineAt(deadline)),
                )
                .await
                .map_err(|e| crate::gateway::error_chain(&*e))?;
            if answer.status != StatusCode::OK {
                let text = crate::gateway::error_text(&answer.body);
                return Err(format!("answered {}: {text}", answer.status.as_u16()));
            }
            serde_json::from_slice(&answer.body)
                .map_err(|e| format!("sent an unreadable answer: {e}"))
        })
    }
}

/// Checks `spec` and looks its members up. `is_ensemble` says whether a name is an ensemble
/// (members may not be: that is how cycles are ruled out).
pub async fn define(
    mesh: &Mesh,
    name: &str,
    spec: &EnsembleSpec,
    is_ensemble: impl Fn(&str) -> bool,
    created_ms: i64,
) -> Result<Ensemble, EnsembleError> {
    let (method, policy) = check_spec(spec).map_err(EnsembleError::Invalid)?;
    for m in spec.members.iter().filter(|m| m.url.is_none()) {
        if m.model == name {
            return Err(EnsembleError::Invalid(format!(
                "ensemble {name} cannot be its own member"
            )));
        }
        if is_ensemble(&m.model) {
            return Err(EnsembleError::Invalid(format!(
                "member {} is an ensemble; members are models (nesting could form cycles)",
                m.model
            )));
        }
    }
    let looked_up = futures_util::future::join_all(
        spec.members.iter().map(|m| lookup::member(mesh, m, method)),
    )
    .await;
    let mut members = Vec::with_capacity(looked_up.len());
    let mut inputs: Option<(String, Vec<String>)> = None;
    for result in looked_up {
        let (info, member_inputs) = result?;
        if let Some(columns) = member_inputs {
            match &inputs {
                None => inputs = Some((info.spec.model.clone(), columns)),
                Some((first, expected)) if *expected != columns => {
                    return Err(EnsembleError::Invalid(format!(
                        "members take different inputs: {first} takes {expected:?}, {} takes {columns:?}",
                        info.spec.model
                    )));
                }
                Some(_) => {}
            }
        }
        members.push(info);
    }
    build(name, method, policy, members, created_ms).map_err(EnsembleError::Invalid)
}

/// Answers `request` with `ensemble`. `probabilities` adds the `probabilities` output.
pub async fn infer(
    mesh: &Mesh,
    ensemble: &Ensemble,
    request: &InferRequest,
    deadline: Option<Instant>,
    probabilities: bool,
) -> Result<InferResponse, EnsembleError> {
    let members = MeshMembers(mesh.clone());
    let (outcome, reports) =
        mlmesh_ensemble::run(ensemble, &members, request, deadline, probabilities)
            .await
            .map_err(|e| match e {
                RunError::Quorum { ref reports, .. } => EnsembleError::Unavailable {
                    message: e.to_string(),
                    members: serde_json::to_value(reports).ok(),
                },
                RunError::Combine(m) => EnsembleError::Unavailable {
                    message: m,
                    members: None,
                },
            })?;
    let outputs = match outcome {
        Outcome::Combined(outputs) => outputs,
        Outcome::Stacking {
            features,
            rows,
            columns,
        } => {
            let stacking =
                ensemble
                    .stacking
                    .as_ref()
                    .ok_or_else(|| EnsembleError::Unavailable {
                        message: "the ensemble's meta-model is missing".into(),
                        members: None,
                    })?;
            let mut meta_request = InferRequest {
                id: None,
                parameters: None,
                inputs: vec![InferInput {
                    name: "input".into(),
                    shape: vec![rows as i64, columns as i64],
                    datatype: Datatype::Fp64,
                    parameters: None,
                    data: Value::from(features),
                }],
                outputs: None,
            };
            if probabilities {
                let mut p = Map::new();
                p.insert("probabilities".into(), Value::Bool(true));
                meta_request.parameters = Some(p);
            }
            let meta = MeshMembers(mesh.clone());
            let info = MemberInfo {
                spec: mlmesh_protocol::gateway::MemberSpec {
                    model: stacking.meta_model.clone(),
                    version: Some(stacking.meta_version.to_string()),
                    weight: None,
                    url: None,
                    output: None,
                    classes: None,
                },
                task: ensemble.task.clone(),
                member_classes: None,
                integer_labels: false,
            };
            let at = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(10));
            let response = meta
                .call(&info, Arc::new(MemberRequest::new(meta_request)), at)
                .await
                .map_err(|e| EnsembleError::Unavailable {
                    message: format!("meta-model {}: {e}", stacking.meta_model),
                    members: None,
                })?;
            response.outputs
        }
    };
    let mut parameters = Map::new();
    parameters.insert("method".into(), Value::from(ensemble.method.name()));
    parameters.insert(
        "members".into(),
        serde_json::to_value(&reports).unwrap_or(Value::Null),
    );
    Ok(InferResponse {
        model_name: ensemble.name.clone(),
        model_version: None,
        id: request.id.clone(),
        parameters: Some(parameters),
        outputs,
    })
}

/// The direct variant: no gateway; members are found through the registry and called from
/// this process, through the same resilience layers and combination code as the gateway's.
#[derive(Debug)]
pub struct Direct {
    mesh: Mesh,
    cancel: CancellationToken,
}

impl Drop for Direct {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Direct {
    /// Follows the registry at `registry_url`; waits (up to 5 s) for its first answer.
    pub async fn connect(registry_url: &str) -> Result<Self, EnsembleError> {
        let cancel = CancellationToken::new();
        let mut discovery =
            Discovery::spawn(RegistryClient::new(registry_url), None, cancel.clone());
        let first = tokio::time::timeout(Duration::from_secs(5), async {
            while discovery.snapshot().is_none() {
                if !discovery.changed().await {
                    break;
                }
            }
        })
        .await;
        if first.is_err() || discovery.snapshot().is_none() {
            cancel.cancel();
            return Err(EnsembleError::Unavailable {
                message: format!("the registry at {registry_url} did not answer"),
                members: None,
            });
        }
        let mesh = Mesh::new(mlmesh_resilience::UpstreamConfig::default());
        mesh.follow(discovery, cancel.clone());
        Ok(Self { mesh, cancel })
    }

    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// Looks the members up and checks that they can be combined.
    pub async fn define(&self, name: &str, spec: &EnsembleSpec) -> Result<Ensemble, EnsembleError> {
        if spec.method == "stacking" {
            return Err(EnsembleError::Invalid(
                "stacking trains a meta-model: define it through the gateway, then use it here with Direct::infer".into(),
            ));
        }
        define(&self.mesh, name, spec, |_| false, 0).await
    }

    /// Calls the members and combines their answers (with probabilities for classifiers).
    pub async fn infer(
        &self,
        ensemble: &Ensemble,
        request: &InferRequest,
    ) -> Result<InferResponse, EnsembleError> {
        infer(
            &self.mesh,
            ensemble,
            request,
            None,
            ensemble.classes.is_some(),
        )
        .await
    }
}
