//! The combination methods, over answers already aligned to the ensemble's classes.

use mlmesh_protocol::gateway::Method;
use mlmesh_protocol::v2::{Datatype, InferOutput};
use serde_json::{Map, Value};

use crate::answer::{Answer, argmax};

/// The ensemble's predictions for a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Combined {
    /// Class index per row, and per-class scores `[rows, k]` (probabilities for soft vote,
    /// vote shares for hard and weighted votes).
    Classes {
        labels: Vec<usize>,
        scores: Vec<f64>,
    },
    Values(Vec<f64>),
}

/// Combines answered members' `(weight, answer)` pairs. `k` is the number of classes
/// (classifiers). All answers have the same number of rows (the caller checks).
pub fn combine(method: Method, k: usize, answers: &[(f64, &Answer)]) -> Result<Combined, String> {
    let rows = answers.first().map_or(0, |(_, a)| a.rows());
    match method {
        Method::HardVote | Method::WeightedVote => {
            let mut scores = vec![0.0; rows * k];
            let mut total = 0.0;
            for (weight, answer) in answers {
                let weight = if method == Method::HardVote {
                    1.0
                } else {
                    *weight
                };
                let Answer::Classes { labels, .. } = answer else {
                    return Err("a vote needs class labels from every member".into());
                };
                for (row, &label) in labels.iter().enumerate() {
                    scores[row * k + label] += weight;
                }
                total += weight;
            }
            normalise(&mut scores, total);
            Ok(classes(scores, k))
        }
        Method::SoftVote => {
            let mut scores = vec![0.0; rows * k];
            let mut total = 0.0;
            for (weight, answer) in answers {
                let Answer::Classes {
                    probabilities: Some(p),
                    ..
                } = answer
                else {
                    return Err("a soft vote needs probabilities from every member".into());
                };
                for (s, v) in scores.iter_mut().zip(p) {
                    *s += weight * v;
                }
                total += weight;
            }
            normalise(&mut scores, total);
            Ok(classes(scores, k))
        }
        Method::Mean | Method::WeightedMean => {
            let mut sums = vec![0.0; rows];
            let mut total = 0.0;
            for (weight, answer) in answers {
                let weight = if method == Method::Mean { 1.0 } else { *weight };
                for (s, v) in sums.iter_mut().zip(values(answer)?) {
                    *s += weight * v;
                }
                total += weight;
            }
            Ok(Combined::Values(
                sums.into_iter().map(|s| s / total).collect(),
            ))
        }
        Method::Median => {
            let mut out = Vec::with_capacity(rows);
            let columns = answers
                .iter()
                .map(|(_, a)| values(a))
                .collect::<Result<Vec<_>, _>>()?;
            for row in 0..rows {
                let mut v: Vec<f64> = columns.iter().map(|c| c[row]).collect();
                v.sort_by(f64::total_cmp);
                let n = v.len();
                out.push(if n % 2 == 1 {
                    v[n / 2]
                } else {
                    (v[n / 2 - 1] + v[n / 2]) / 2.0
                });
            }
            Ok(Combined::Values(out))
        }
        Method::Stacking => Err("stacking is combined by its meta-model".into()),
    }
}

fn normalise(scores: &mut [f64], total: f64) {
    if total > 0.0 {
        for s in scores {
            *s /= total;
        }
    }
}

fn classes(scores: Vec<f64>, k: usize) -> Combined {
    let labels = scores.chunks(k).map(argmax).collect();
    Combined::Classes { labels, scores }
}

fn values(answer: &Answer) -> Result<&[f64], String> {
    match answer {
        Answer::Values(v) => Ok(v),
        Answer::Classes { .. } => Err("averaging needs values from every member".into()),
    }
}

/// The meta-model's input for stacking: per row, each member's class probabilities (or a
/// one-hot of its label) or its value, members in definition order. Returns the row-major
/// matrix and its number of columns.
pub fn stacking_features(k: Option<usize>, answers: &[&Answer]) -> (Vec<f64>, usize) {
    let rows = answers.first().map_or(0, |a| a.rows());
    let width = k.unwrap_or(1);
    let columns = width * answers.len();
    let mut out = vec![0.0; rows * columns];
    for (m, answer) in answers.iter().enumerate() {
        for row in 0..rows {
            let at = row * columns + m * width;
            match answer {
                Answer::Values(v) => out[at] = v[row],
                Answer::Classes {
                    probabilities: Some(p),
                    ..
                } => out[at..at + width].copy_from_slice(&p[row * width..(row + 1) * width]),
                Answer::Classes { labels, .. } => out[at + labels[row]] = 1.0,
            }
        }
    }
    (out, columns)
}

/// Names of the stacking features, matching [`stacking_features`].
pub fn stacking_feature_names(members: &[String], classes: Option<&[String]>) -> Vec<String> {
    let mut names = Vec::new();
    for (i, member) in members.iter().enumerate() {
        let member: String = member
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        match classes {
            Some(classes) => {
                for class in classes {
                    let class: String = class
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                        .collect();
                    names.push(format!("m{i}_{member}_p_{class}"));
                }
            }
            None => names.push(format!("m{i}_{member}_value")),
        }
    }
    names
}

/// The ensemble's outputs: `label` (and `probabilities` when asked) or `value`.
pub fn outputs(
    combined: &Combined,
    classes: Option<&[String]>,
    integer_labels: bool,
    with_probabilities: bool,
) -> Vec<InferOutput> {
    match (combined, classes) {
        (Combined::Classes { labels, scores }, Some(classes)) => {
            let rows = labels.len() as u64;
            let label_data: Vec<Value> = labels
                .iter()
                .map(|&i| {
                    let name = &classes[i];
                    match name.parse::<i64>() {
                        Ok(n) if integer_labels => Value::from(n),
                        _ => Value::from(name.clone()),
                    }
                })
                .collect();
            let mut out = vec![InferOutput {
                name: "label".into(),
                shape: vec![rows],
                datatype: if integer_labels {
                    Datatype::Int64
                } else {
                    Datatype::Bytes
                },
                parameters: None,
                data: label_data,
            }];
            if with_probabilities {
                let mut parameters = Map::new();
                parameters.insert(
                    "classes".into(),
                    Value::from(classes.iter().cloned().map(Value::from).collect::<Vec<_>>()),
                );
                out.push(InferOutput {
                    name: "probabilities".into(),
                    shape: vec![rows, classes.len() as u64],
                    datatype: Datatype::Fp64,
                    parameters: Some(parameters),
                    data: scores.iter().map(|&v| Value::from(v)).collect(),
                });
            }
            out
        }
        (Combined::Values(values), _) | (Combined::Classes { scores: values, .. }, None) => {
            vec![InferOutput {
                name: "value".into(),
                shape: vec![values.len() as u64],
                datatype: Datatype::Fp64,
                parameters: None,
                data: values.iter().map(|&v| Value::from(v)).collect(),
            }]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(l: &[usize]) -> Answer {
        Answer::Classes {
            labels: l.to_vec(),
            probabilities: None,
        }
    }

    #[test]
    fn hard_vote_is_a_majority_and_ties_go_to_the_first_class() {
        let (a, b, c) = (labels(&[0, 1, 2]), labels(&[0, 1, 1]), labels(&[1, 0, 2]));
        let combined = combine(Method::HardVote, 3, &[(1.0, &a), (1.0, &b), (1.0, &c)]).unwrap();
        let Combined::Classes { labels, scores } = combined else {
            panic!()
        };
        assert_eq!(labels, vec![0, 1, 2]);
        assert!((scores[0] - 2.0 / 3.0).abs() < 1e-12);
        let tie = combine(
            Method::HardVote,
            2,
            &[(5.0, &labels_of(&[1])), (1.0, &labels_of(&[0]))],
        )
        .unwrap();
        assert_eq!(
            tie,
            Combined::Classes {
                labels: vec![0],
                scores: vec![0.5, 0.5]
            }
        );
    }

    fn labels_of(l: &[usize]) -> Answer {
        labels(l)
    }

    #[test]
    fn weighted_vote_lets_a_heavy_member_win() {
        let (a, b, c) = (labels(&[1]), labels(&[0]), labels(&[0]));
        let combined =
            combine(Method::WeightedVote, 2, &[(3.0, &a), (1.0, &b), (1.0, &c)]).unwrap();
        assert_eq!(
            combined,
            Combined::Classes {
                labels: vec![1],
                scores: vec![0.4, 0.6]
            }
        );
    }

    #[test]
    fn soft_vote_averages_probabilities_with_weights() {
        let a = Answer::Classes {
            labels: vec![0],
            probabilities: Some(vec![0.9, 0.1]),
        };
        let b = Answer::Classes {
            labels: vec![1],
            probabilities: Some(vec![0.3, 0.7]),
        };
        let Combined::Classes { labels, scores } =
            combine(Method::SoftVote, 2, &[(1.0, &a), (1.0, &b)]).unwrap()
        else {
            panic!()
        };
        assert_eq!(labels, vec![0]);
        assert!((scores[0] - 0.6).abs() < 1e-12);
        let Combined::Classes { labels, .. } =
            combine(Method::SoftVote, 2, &[(1.0, &a), (4.0, &b)]).unwrap()
        else {
            panic!()
        };
        assert_eq!(labels, vec![1]);
        assert!(combine(Method::SoftVote, 2, &[(1.0, &labels_of(&[0]))]).is_err());
    }

    #[test]
    fn means_and_medians() {
        let (a, b, c) = (
            Answer::Values(vec![1.0, 10.0]),
            Answer::Values(vec![2.0, 20.0]),
            Answer::Values(vec![6.0, 0.0]),
        );
        let all = [(1.0, &a), (1.0, &b), (2.0, &c)];
        assert_eq!(
            combine(Method::Mean, 0, &all).unwrap(),
            Combined::Values(vec![3.0, 10.0])
        );
        assert_eq!(
            combine(Method::WeightedMean, 0, &all).unwrap(),
            Combined::Values(vec![3.75, 7.5])
        );
        assert_eq!(
            combine(Method::Median, 0, &all).unwrap(),
            Combined::Values(vec![2.0, 10.0])
        );
        assert_eq!(
            combine(Method::Median, 0, &all[..2]).unwrap(),
            Combined::Values(vec![1.5, 15.0])
        );
        assert!(combine(Method::Mean, 0, &[(1.0, &labels_of(&[0]))]).is_err());
    }

    #[test]
    fn stacking_features_put_members_side_by_side() {
        let a = Answer::Classes {
            labels: vec![0, 1],
            probabilities: Some(vec![0.8, 0.2, 0.4, 0.6]),
        };
        let b = labels(&[1, 0]);
        let (m, columns) = stacking_features(Some(2), &[&a, &b]);
        assert_eq!(columns, 4);
        assert_eq!(m, vec![0.8, 0.2, 0.0, 1.0, 0.4, 0.6, 1.0, 0.0]);
        let names = stacking_feature_names(
            &["rf".into(), "my-svm".into()],
            Some(&["0".into(), "1".into()]),
        );
        assert_eq!(
            names,
            vec!["m0_rf_p_0", "m0_rf_p_1", "m1_my_svm_p_0", "m1_my_svm_p_1"]
        );
    }

    #[test]
    fn outputs_keep_the_label_type() {
        let combined = Combined::Classes {
            labels: vec![1, 0],
            scores: vec![0.0, 1.0, 1.0, 0.0],
        };
        let classes = ["3".to_string(), "7".to_string()];
        let out = outputs(&combined, Some(&classes), true, true);
        assert_eq!(out[0].datatype, Datatype::Int64);
        assert_eq!(out[0].data, vec![Value::from(7), Value::from(3)]);
        assert_eq!(out[1].shape, vec![2, 2]);
        let out = outputs(&combined, Some(&classes), false, false);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data, vec![Value::from("7"), Value::from("3")]);
    }
}
