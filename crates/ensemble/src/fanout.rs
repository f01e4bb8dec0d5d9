//! Calling every member concurrently under one deadline, then applying the quorum.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::{BoxFuture, join_all};
use mlmesh_protocol::gateway::{Ensemble, MemberInfo, MemberReport, Method};
use mlmesh_protocol::v2::{InferOutput, InferRequest, InferResponse, RequestedOutput};
use tokio::time::Instant;

use crate::answer::{self, Answer};
use crate::combine;

pub type MemberFuture = BoxFuture<'static, Result<InferResponse, String>>;

/// How members are reached: the gateway calls them through its upstream stacks, the SDK's
/// direct variant calls model services itself. Either way it must give up by `deadline`.
pub trait Member: Send + Sync {
    fn call(
        &self,
        member: &MemberInfo,
        request: Arc<MemberRequest>,
        deadline: Instant,
    ) -> MemberFuture;
}

/// The request a member gets. Every mlmesh member gets the same one, so its JSON is written
/// once for all of them rather than once per call.
#[derive(Debug)]
pub struct MemberRequest {
    pub request: InferRequest,
    json: OnceLock<Result<Vec<u8>, String>>,
}

impl MemberRequest {
    pub fn new(request: InferRequest) -> Self {
        Self {
            request,
            json: OnceLock::new(),
        }
    }

    /// The request as JSON, written at the first call.
    pub fn json(&self) -> Result<&[u8], String> {
        self.json
            .get_or_init(|| serde_json::to_vec(&self.request).map_err(|e| e.to_string()))
            .as_deref()
            .map_err(Clone::clone)
    }
}

/// What the members' answers became.
#[derive(Debug)]
pub enum Outcome {
    /// The ensemble's outputs.
    Combined(Vec<InferOutput>),
    /// Stacking: the meta-model's input, `[rows, columns]` row-major.
    Stacking {
        features: Vec<f64>,
        rows: usize,
        columns: usize,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Too few members answered; the reports say why each failed.
    #[error("{answered} of {total} members answered, the policy needs {quorum}: {reasons}")]
    Quorum {
        answered: usize,
        total: usize,
        quorum: usize,
        reasons: String,
        reports: Vec<MemberReport>,
    },
    #[error("{0}")]
    Combine(String),
}

/// The request each member gets: the caller's inputs, asking mlmesh classifiers for their
/// probabilities and foreign members for the output they were defined with.
/// `foreign` is the member when it is on a foreign server; all mlmesh members share one request.
fn member_request(
    request: &InferRequest,
    foreign: Option<&MemberInfo>,
    classifies: bool,
) -> InferRequest {
    let outputs = match foreign.map(|m| &m.spec.output) {
        Some(Some(output)) => Some(vec![RequestedOutput {
            name: output.clone(),
            parameters: None,
        }]),
        Some(None) => None,
        None if classifies => Some(
            ["label", "probabilities"]
                .into_iter()
                .map(|name| RequestedOutput {
                    name: name.into(),
                    parameters: None,
                })
                .collect(),
        ),
        None => None,
    };
    InferRequest {
        id: request.id.clone(),
        parameters: None,
        inputs: request.inputs.clone(),
        outputs,
    }
}

/// Calls the members of `ensemble` with `request` and combines what comes back by `deadline`
/// (the earlier of the policy's and the caller's). Returns the outcome and a report per member.
pub async fn run(
    ensemble: &Ensemble,
    members: &dyn Member,
    request: &InferRequest,
    caller_deadline: Option<Instant>,
    with_probabilities: bool,
) -> Result<(Outcome, Vec<MemberReport>), RunError> {
    let classifies = ensemble.classes.is_some();
    let policy_ms = ensemble
        .policy
        .deadline_ms
        .unwrap_or(crate::DEFAULT_DEADLINE_MS);
    let start = Instant::now();
    let mut deadline = start + Duration::from_millis(policy_ms);
    if let Some(caller) = caller_deadline {
        deadline = deadline.min(caller);
    }
    let native = Arc::new(MemberRequest::new(member_request(
        request, None, classifies,
    )));
    let calls = ensemble.members.iter().map(|m| {
        let req = if m.spec.url.is_none() {
            Arc::clone(&native)
        } else {
            Arc::new(MemberRequest::new(member_request(
                request,
                Some(m),
                classifies,
            )))
        };
        let call = members.call(m, req, deadline);
        async move {
            let result = match tokio::time::timeout_at(deadline, call).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within the {policy_ms} ms deadline")),
            };
            (result, start.elapsed())
        }
    });
    let results = join_all(calls).await;

    let classes = ensemble.classes.as_deref();
    let mut answers: Vec<Option<Answer>> = Vec::with_capacity(results.len());
    let mut reports = Vec::with_capacity(results.len());
    let mut rows: Option<usize> = None;
    for (member, (result, elapsed)) in ensemble.members.iter().zip(results) {
        let parsed = result.and_then(|response| answer::read(&response, member, classes));
        let parsed = parsed.and_then(|a| match rows {
            Some(r) if r != a.rows() => Err(format!("answered {} rows, others {r}", a.rows())),
            _ => {
                rows = Some(a.rows());
                Ok(a)
            }
        });
        reports.push(MemberReport {
            model: member.spec.model.clone(),
            url: member.spec.url.clone(),
            answered: parsed.is_ok(),
            error: parsed.as_ref().err().cloned(),
            ms: elapsed.as_secs_f64() * 1000.0,
        });
        answers.push(parsed.ok());
    }
    let answered = answers.iter().filter(|a| a.is_some()).count();
    let quorum = ensemble.policy.quorum.unwrap_or(ensemble.members.len());
    if answered < quorum {
        let reasons = reports
            .iter()
            .filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.model)))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(RunError::Quorum {
            answered,
            total: ensemble.members.len(),
            quorum,
            reasons,
            reports,
        });
    }
    if ensemble.method == Method::Stacking {
        let present: Vec<&Answer> = answers.iter().flatten().collect();
        let (features, columns) =
            combine::stacking_features(classes.map(<[String]>::len), &present);
        let rows = rows.unwrap_or(0);
        return Ok((
            Outcome::Stacking {
                features,
                rows,
                columns,
            },
            reports,
        ));
    }
    let weighted: Vec<(f64, &Answer)> = ensemble
        .members
        .iter()
        .zip(&answers)
        .filter_map(|(m, a)| a.as_ref().map(|a| (m.spec.weight.unwrap_or(1.0), a)))
        .collect();
    let combined = combine::combine(
        ensemble.method,
        classes.map_or(0, <[String]>::len),
        &weighted,
    )
    .map_err(RunError::Combine)?;
    let integer = ensemble.members.first().is_some_and(|m| m.integer_labels);
    Ok((
        Outcome::Combined(combine::outputs(
            &combined,
            classes,
            integer,
            with_probabilities,
        )),
        reports,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlmesh_protocol::gateway::{MemberSpec, Policy};
    use serde_json::json;

    /// Members answering after a delay with fixed labels, or failing.
    struct Scripted;

    impl Member for Scripted {
        fn call(
            &self,
            member: &MemberInfo,
            _request: Arc<MemberRequest>,
            _deadline: Instant,
        ) -> MemberFuture {
            let name = member.spec.model.clone();
            Box::pin(async move {
                let (delay, label) = match name.as_str() {
                    n if n.starts_with("fast1") => (10, 1),
                    "fast0" => (20, 0),
                    "slow" => (5_000, 0),
                    _ => return Err("connection refused".to_string()),
                };
                tokio::time::sleep(Duration::from_millis(delay)).await;
                Ok(serde_json::from_value(json!({"model_name": name, "outputs": [
                    {"name": "label", "shape": [1], "datatype": "INT64", "data": [label]},
                    {"name": "probabilities", "shape": [1, 2], "datatype": "FP64",
                     "parameters": {"classes": ["0", "1"]}, "data": [1.0 - label as f64, label as f64]}
                ]})).unwrap())
            })
        }
    }

    fn ensemble(models: &[&str], quorum: usize) -> Ensemble {
        Ensemble {
            name: "e".into(),
            method: Method::HardVote,
            members: models
                .iter()
                .map(|m| MemberInfo {
                    spec: MemberSpec {
                        model: m.to_string(),
                        version: None,
                        weight: None,
                        url: None,
                        output: None,
                        classes: None,
                    },
                    task: "classification".into(),
                    member_classes: Some(vec!["0".into(), "1".into()]),
                    integer_labels: true,
                })
                .collect(),
            policy: Policy {
                quorum: Some(quorum),
                deadline_ms: Some(100),
            },
            task: "classification".into(),
            classes: Some(vec!["0".into(), "1".into()]),
            stacking: None,
            created_ms: 0,
        }
    }

    fn request() -> InferRequest {
        serde_json::from_value(json!({"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP64", "data": [0.0]}]})).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_quorum_answers_without_the_slow_and_the_dead() {
        let e = ensemble(&["fast1", "dead", "slow", "fast1b"], 2);
        let (outcome, reports) = run(&e, &Scripted, &request(), None, false).await.unwrap();
        let Outcome::Combined(outputs) = outcome else {
            panic!()
        };
        assert_eq!(outputs[0].data, vec![json!(1)]);
        assert!(reports[0].answered);
        assert_eq!(reports[1].error.as_deref(), Some("connection refused"));
        assert!(reports[2].error.as_deref().unwrap().contains("deadline"));
        // The deadline, not the slow member, bounded the wait.
        assert!(
            reports[2].ms >= 100.0 && reports[2].ms < 200.0,
            "{}",
            reports[2].ms
        );
    }

    #[tokio::test(start_paused = true)]
    async fn too_few_answers_fail_with_every_reason() {
        let e = ensemble(&["fast1", "dead", "slow"], 2);
        let err = run(&e, &Scripted, &request(), None, false)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("1 of 3 members answered, the policy needs 2"),
            "{text}"
        );
        assert!(
            text.contains("dead: connection refused") && text.contains("slow: no answer"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_callers_deadline_wins_when_earlier() {
        let e = ensemble(&["fast1", "fast0"], 2);
        let deadline = Instant::now() + Duration::from_millis(15);
        let err = run(&e, &Scripted, &request(), Some(deadline), false)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("fast0: no answer"), "{err}");
    }
}
