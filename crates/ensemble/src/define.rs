//! Checking an ensemble definition: first its shape alone ([`check_spec`]), then, once the
//! caller has looked its members up, whether their answers can be combined ([`build`]).
//! Everything that could make requests fail later is rejected here.

use std::collections::BTreeSet;

use mlmesh_protocol::gateway::{Ensemble, EnsembleSpec, MemberInfo, MemberSpec, Method, Policy};

use crate::{DEFAULT_DEADLINE_MS, MAX_DEADLINE_MS};

/// Most members an ensemble may have.
pub const MAX_MEMBERS: usize = 32;

/// What can be told from the definition alone.
pub fn check_spec(spec: &EnsembleSpec) -> Result<(Method, Policy), String> {
    let method = Method::parse(&spec.method).ok_or_else(|| {
        let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
        format!(
            "unknown method {:?}; use one of {}",
            spec.method,
            names.join(", ")
        )
    })?;
    let n = spec.members.len();
    if n == 0 {
        return Err("an ensemble needs at least one member".into());
    }
    if n > MAX_MEMBERS {
        return Err(format!(
            "an ensemble has at most {MAX_MEMBERS} members, not {n}"
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, member) in spec.members.iter().enumerate() {
        check_member(i, member, method)?;
        let key = (
            member.url.clone(),
            member.model.clone(),
            member.version.clone(),
        );
        if !seen.insert(key) {
            return Err(format!(
                "member {i} ({}) is listed twice; give one member a weight instead",
                member.model
            ));
        }
    }
    let mut policy = spec.policy.clone().unwrap_or_default();
    match policy.quorum {
        Some(0) => return Err("policy.quorum must be at least 1".into()),
        Some(q) if q > n => {
            return Err(format!(
                "policy.quorum is {q} but the ensemble has {n} members"
            ));
        }
        Some(q) if method == Method::Stacking && q != n => {
            return Err("stacking needs every member's answer; leave policy.quorum out".into());
        }
        _ => {}
    }
    policy.quorum = Some(policy.quorum.unwrap_or(n));
    match policy.deadline_ms {
        Some(0) => return Err("policy.deadline_ms must be at least 1".into()),
        Some(d) if d > MAX_DEADLINE_MS => {
            return Err(format!("policy.deadline_ms is at most {MAX_DEADLINE_MS}"));
        }
        _ => {}
    }
    policy.deadline_ms = Some(policy.deadline_ms.unwrap_or(DEFAULT_DEADLINE_MS));
    match (method, &spec.stacking) {
        (Method::Stacking, None) => {
            return Err(
                "stacking needs \"stacking\": {\"dataset\": NAME} to train its meta-model on"
                    .into(),
            );
        }
        (Method::Stacking, Some(s)) => {
            if let Some(k) = s.kfold
                && !(2..=20).contains(&k)
            {
                return Err("stacking.kfold must be between 2 and 20".into());
            }
        }
        (_, Some(_)) => {
            return Err(format!(
                "\"stacking\" is only for method stacking, not {}",
                method.name()
            ));
        }
        (_, None) => {}
    }
    Ok((method, policy))
}

fn check_member(i: usize, member: &MemberSpec, method: Method) -> Result<(), String> {
    if member.model.trim().is_empty() {
        return Err(format!("member {i} has no model name"));
    }
    match member.weight {
        Some(w) if !(w.is_finite() && w > 0.0) => {
            return Err(format!(
                "member {i} ({}) has weight {w}; weights are positive numbers",
                member.model
            ));
        }
        Some(_)
            if matches!(
                method,
                Method::HardVote | Method::Mean | Method::Median | Method::Stacking
            ) =>
        {
            let weighted = match method {
                Method::HardVote => "; use weighted_vote for weights",
                Method::Mean | Method::Median => "; use weighted_mean for weights",
                _ => "",
            };
            return Err(format!("{} takes no weights{weighted}", method.name()));
        }
        None if method.weighted() => {
            return Err(format!(
                "{} needs a weight on every member; member {i} ({}) has none",
                method.name(),
                member.model
            ));
        }
        _ => {}
    }
    match &member.url {
        Some(url) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
                return Err(format!(
                    "member {i} url {url:?} is not an http:// or https:// base URL"
                ));
            }
            if let Some(classes) = &member.classes {
                let unique: BTreeSet<&String> = classes.iter().collect();
                if classes.len() < 2 || unique.len() != classes.len() {
                    return Err(format!(
                        "member {i} classes must be two or more distinct names"
                    ));
                }
            }
        }
        None => {
            if member.output.is_some() || member.classes.is_some() {
                return Err(format!(
                    "member {i} ({}): output and classes are only for foreign members (with url); mlmesh models say them themselves",
                    member.model
                ));
            }
        }
    }
    Ok(())
}

/// Checks that the members' answers can be combined and builds the stored definition.
/// `members` follow the spec's order, each with the task and classes the caller looked up.
pub fn build(
    name: &str,
    method: Method,
    policy: Policy,
    members: Vec<MemberInfo>,
    created_ms: i64,
) -> Result<Ensemble, String> {
    let first_task = members.first().map(|m| m.task.clone()).unwrap_or_default();
    for m in &members {
        if m.task != first_task {
            return Err(format!(
                "members mix tasks: {} is {} but {} is {}",
                members[0].spec.model, first_task, m.spec.model, m.task
            ));
        }
    }
    let classifies = first_task == "classification";
    if let Some(wants) = method.classifies()
        && wants != classifies
    {
        return Err(if wants {
            format!(
                "{} combines classifiers, but the members are regressors; use mean, median or weighted_mean",
                method.name()
            )
        } else {
            format!(
                "{} combines regressors, but the members are classifiers; use hard_vote, weighted_vote or soft_vote",
                method.name()
            )
        });
    }
    let classes = if classifies {
        let mut classes: Option<Vec<String>> = None;
        for m in &members {
            let Some(mc) = &m.member_classes else {
                continue;
            };
            match &classes {
                None => classes = Some(mc.clone()),
                Some(c) => {
                    let a: BTreeSet<&String> = c.iter().collect();
                    let b: BTreeSet<&String> = mc.iter().collect();
                    if a != b {
                        return Err(format!(
                            "member {} has classes {mc:?}, which do not match {c:?}; members must predict the same classes",
                            m.spec.model
                        ));
                    }
                }
            }
        }
        let classes = classes
            .ok_or("no member says which classes it predicts; give a foreign member \"classes\"")?;
        if matches!(method, Method::SoftVote)
            && let Some(m) = members.iter().find(|m| {
                m.member_classes.is_none() || (m.spec.url.is_some() && m.spec.output.is_none())
            })
        {
            return Err(format!(
                "soft_vote needs probabilities from every member; give foreign member {} \"output\" (its probabilities) and \"classes\"",
                m.spec.model
            ));
        }
        Some(classes)
    } else {
        None
    };
    // Labels are integers when every member's are (so INT64 in, INT64 out).
    let integer = members.iter().all(|m| m.integer_labels);
    let members = members
        .into_iter()
        .map(|m| MemberInfo {
            integer_labels: integer,
            ..m
        })
        .collect();
    Ok(Ensemble {
        name: name.to_string(),
        method,
        policy,
        task: first_task,
        classes,
        members,
        stacking: None,
        created_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: serde_json::Value) -> EnsembleSpec {
        serde_json::from_value(value).unwrap()
    }

    fn info(model: &str, task: &str, classes: Option<&[&str]>) -> MemberInfo {
        MemberInfo {
            spec: MemberSpec {
                model: model.into(),
                version: None,
                weight: None,
                url: None,
                output: None,
                classes: None,
            },
            task: task.into(),
            member_classes: classes.map(|c| c.iter().map(|s| s.to_string()).collect()),
            integer_labels: true,
        }
    }

    #[test]
    fn shapes_that_cannot_work_are_rejected() {
        let cases = [
            (
                json!({"method": "best_of", "members": [{"model": "a"}]}),
                "unknown method",
            ),
            (
                json!({"method": "hard_vote", "members": []}),
                "at least one",
            ),
            (
                json!({"method": "weighted_vote", "members": [{"model": "a", "weight": 1}, {"model": "b"}]}),
                "needs a weight",
            ),
            (
                json!({"method": "hard_vote", "members": [{"model": "a", "weight": 2}]}),
                "weighted_vote",
            ),
            (
                json!({"method": "weighted_mean", "members": [{"model": "a", "weight": -1}]}),
                "positive",
            ),
            (
                json!({"method": "mean", "members": [{"model": "a"}, {"model": "a"}]}),
                "twice",
            ),
            (
                json!({"method": "mean", "members": [{"model": "a"}], "policy": {"quorum": 2}}),
                "quorum",
            ),
            (
                json!({"method": "mean", "members": [{"model": "a"}], "policy": {"deadline_ms": 0}}),
                "deadline",
            ),
            (
                json!({"method": "stacking", "members": [{"model": "a"}]}),
                "stacking",
            ),
            (
                json!({"method": "mean", "members": [{"model": "a", "url": "ftp://x"}]}),
                "http",
            ),
            (
                json!({"method": "mean", "members": [{"model": "a", "classes": ["x", "y"]}]}),
                "foreign",
            ),
        ];
        for (body, needle) in cases {
            let err = check_spec(&spec(body.clone())).unwrap_err();
            assert!(err.contains(needle), "{body}: {err}");
        }
        let (method, policy) = check_spec(&spec(
            json!({"method": "soft_vote", "members": [{"model": "a"}, {"model": "b"}]}),
        ))
        .unwrap();
        assert_eq!(method, Method::SoftVote);
        assert_eq!(
            policy,
            Policy {
                quorum: Some(2),
                deadline_ms: Some(DEFAULT_DEADLINE_MS)
            }
        );
    }

    #[test]
    fn members_that_cannot_be_combined_are_rejected() {
        let policy = Policy::default();
        let err = build(
            "e",
            Method::HardVote,
            policy.clone(),
            vec![
                info("a", "classification", Some(&["0", "1"])),
                info("b", "regression", None),
            ],
            0,
        )
        .unwrap_err();
        assert!(err.contains("mix tasks"), "{err}");
        let err = build(
            "e",
            Method::HardVote,
            policy.clone(),
            vec![
                info("a", "classification", Some(&["0", "1"])),
                info("b", "classification", Some(&["0", "2"])),
            ],
            0,
        )
        .unwrap_err();
        assert!(err.contains("same classes"), "{err}");
        let err = build(
            "e",
            Method::Mean,
            policy.clone(),
            vec![info("a", "classification", Some(&["0", "1"]))],
            0,
        )
        .unwrap_err();
        assert!(err.contains("soft_vote"), "{err}");
        let ok = build(
            "e",
            Method::HardVote,
            policy,
            vec![
                info("a", "classification", Some(&["0", "1"])),
                info("b", "classification", Some(&["1", "0"])),
            ],
            0,
        )
        .unwrap();
        assert_eq!(ok.classes, Some(vec!["0".to_string(), "1".to_string()]));
    }
}
