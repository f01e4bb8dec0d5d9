//! Algorithms, their families, and their hyper-parameters: every name is checked against the
//! algorithm's list and every value against its range, before any work starts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Task;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    DecisionTree,
    RandomForest,
    GradientBoosting,
    LogisticRegression,
    LinearRegression,
    Ridge,
    LinearSvm,
    GaussianNb,
    Knn,
    Mlp,
}

pub const ALGORITHMS: [Algorithm; 10] = [
    Algorithm::DecisionTree,
    Algorithm::RandomForest,
    Algorithm::GradientBoosting,
    Algorithm::LogisticRegression,
    Algorithm::LinearRegression,
    Algorithm::Ridge,
    Algorithm::LinearSvm,
    Algorithm::GaussianNb,
    Algorithm::Knn,
    Algorithm::Mlp,
];

/// The kind of value a hyper-parameter takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// An integer in `min..=max`; `nullable` admits `null` ("no limit").
    Int {
        min: i64,
        max: i64,
        nullable: bool,
    },
    Float {
        min: f64,
        max: f64,
    },
    Bool,
    Choice(&'static [&'static str]),
    /// A list of integers in `min..=max` (e.g. hidden layer sizes).
    IntList {
        min: i64,
        max: i64,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub name: &'static str,
    pub kind: Kind,
    pub default: fn(Task) -> Value,
    pub help: &'static str,
}

const fn spec(
    name: &'static str,
    kind: Kind,
    default: fn(Task) -> Value,
    help: &'static str,
) -> Spec {
    Spec {
        name,
        kind,
        default,
        help,
    }
}

const DEPTH: Kind = Kind::Int {
    min: 1,
    max: 1000,
    nullable: true,
};
const MIN_SPLIT: Kind = Kind::Int {
    min: 2,
    max: 1_000_000,
    nullable: false,
};
const MIN_LEAF: Kind = Kind::Int {
    min: 1,
    max: 1_000_000,
    nullable: false,
};
const FEATURES: Kind = Kind::Choice(&["sqrt", "log2", "all"]);
const CRITERION: Kind = Kind::Choice(&["gini", "entropy"]);

fn null(_: Task) -> Value {
    Value::Null
}

fn tree_specs(forest: bool) -> Vec<Spec> {
    let mut specs = vec![
        spec(
            "max_depth",
            DEPTH,
            null,
            "deepest a tree may grow; null = no limit",
        ),
        spec(
            "min_samples_split",
            MIN_SPLIT,
            |_| 2.into(),
            "fewest rows a node needs to be split",
        ),
        spec(
            "min_samples_leaf",
            MIN_LEAF,
            |_| 1.into(),
            "fewest rows a leaf may hold",
        ),
        spec(
            "criterion",
            CRITERION,
            |_| "gini".into(),
            "split quality for classification",
        ),
    ];
    if forest {
        specs.push(spec(
            "n_estimators",
            Kind::Int {
                min: 1,
                max: 5000,
                nullable: false,
            },
            |_| 100.into(),
            "number of trees",
        ));
        specs.push(spec(
            "max_features",
            FEATURES,
            |task| match task {
                Task::Classification => "sqrt".into(),
                Task::Regression => "all".into(),
            },
            "features tried at each split",
        ));
        specs.push(spec(
            "bootstrap",
            Kind::Bool,
            |_| true.into(),
            "sample rows with replacement per tree",
        ));
    } else {
        specs.push(spec(
            "max_features",
            FEATURES,
            |_| "all".into(),
            "features tried at each split",
        ));
    }
    specs
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Self::DecisionTree => "decision_tree",
            Self::RandomForest => "random_forest",
            Self::GradientBoosting => "gradient_boosting",
            Self::LogisticRegression => "logistic_regression",
            Self::LinearRegression => "linear_regression",
            Self::Ridge => "ridge",
            Self::LinearSvm => "linear_svm",
            Self::GaussianNb => "gaussian_nb",
            Self::Knn => "knn",
            Self::Mlp => "mlp",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        ALGORITHMS.into_iter().find(|a| a.name() == name)
    }

    /// The model service family that trains and serves this algorithm.
    pub fn family(self) -> &'static str {
        match self {
            Self::DecisionTree | Self::RandomForest | Self::GradientBoosting => "trees",
            Self::Mlp => "neural",
            _ => "linear",
        }
    }

    /// The tasks this algorithm can do.
    pub fn tasks(self) -> &'static [Task] {
        match self {
            Self::LogisticRegression | Self::GaussianNb => &[Task::Classification],
            Self::LinearRegression | Self::Ridge => &[Task::Regression],
            _ => &[Task::Classification, Task::Regression],
        }
    }

    /// Whether features are standardised before fitting (distance- and gradient-based models).
    pub fn scales_features(self) -> bool {
        !matches!(
            self,
            Self::DecisionTree | Self::RandomForest | Self::GradientBoosting | Self::GaussianNb
        )
    }

    pub fn specs(self) -> Vec<Spec> {
        let positive = Kind::Float {
            min: 1e-12,
            max: 1e12,
        };
        let iterations = Kind::Int {
            min: 1,
            max: 100_000,
            nullable: false,
        };
        match self {
            Self::DecisionTree => tree_specs(false),
            Self::RandomForest => tree_specs(true),
            Self::GradientBoosting => vec![
                spec(
                    "n_estimators",
                    iterations,
                    |_| 100.into(),
                    "boosting rounds",
                ),
                spec(
                    "learning_rate",
                    Kind::Float {
                        min: 1e-6,
                        max: 10.0,
                    },
                    |_| 0.1.into(),
                    "shrinkage of each tree",
                ),
                spec(
                    "max_leaf_nodes",
                    Kind::Int {
                        min: 2,
                        max: 65_536,
                        nullable: false,
                    },
                    |_| 31.into(),
                    "leaves per tree",
                ),
                spec(
                    "max_depth",
                    DEPTH,
                    null,
                    "deepest a tree may grow; null = no limit",
                ),
                spec(
                    "min_samples_leaf",
                    MIN_LEAF,
                    |_| 20.into(),
                    "fewest rows a leaf may hold",
                ),
                spec(
                    "l2_regularization",
                    Kind::Float {
                        min: 0.0,
                        max: 1e12,
                    },
                    |_| 0.0.into(),
                    "L2 penalty on leaf values",
                ),
                spec(
                    "max_bins",
                    Kind::Int {
                        min: 2,
                        max: 255,
                        nullable: false,
                    },
                    |_| 255.into(),
                    "histogram bins per feature",
                ),
            ],
            Self::LogisticRegression => vec![
                spec(
                    "C",
                    positive,
                    |_| 1.0.into(),
                    "inverse L2 regularisation strength",
                ),
                spec(
                    "max_iter",
                    iterations,
                    |_| 200.into(),
                    "L-BFGS iterations at most",
                ),
                spec(
                    "tol",
                    positive,
                    |_| 1e-4.into(),
                    "stop when the gradient's largest entry is below this",
                ),
            ],
            Self::LinearRegression => vec![],
            Self::Ridge => vec![spec(
                "alpha",
                Kind::Float {
                    min: 0.0,
                    max: 1e12,
                },
                |_| 1.0.into(),
                "L2 regularisation strength",
            )],
            Self::LinearSvm => vec![
                spec(
                    "C",
                    positive,
                    |_| 1.0.into(),
                    "inverse regularisation strength",
                ),
                spec(
                    "max_iter",
                    iterations,
                    |_| 1000.into(),
                    "passes over the data at most",
                ),
                spec(
                    "tol",
                    positive,
                    |_| 1e-4.into(),
                    "stopping tolerance of the solver",
                ),
                spec(
                    "epsilon",
                    Kind::Float { min: 0.0, max: 1e6 },
                    |_| 0.0.into(),
                    "regression: errors below this (in target standard deviations) cost nothing",
                ),
            ],
            Self::GaussianNb => vec![spec(
                "var_smoothing",
                Kind::Float { min: 0.0, max: 1.0 },
                |_| 1e-9.into(),
                "share of the largest feature variance added to every variance",
            )],
            Self::Knn => vec![
                spec(
                    "n_neighbors",
                    Kind::Int {
                        min: 1,
                        max: 10_000,
                        nullable: false,
                    },
                    |_| 5.into(),
                    "neighbours that vote",
                ),
                spec(
                    "weights",
                    Kind::Choice(&["uniform", "distance"]),
                    |_| "uniform".into(),
                    "equal votes, or votes weighted by 1/distance",
                ),
            ],
            Self::Mlp => vec![
                spec(
                    "hidden_layer_sizes",
                    Kind::IntList { min: 1, max: 4096 },
                    |_| serde_json::json!([100]),
                    "neurons per hidden layer",
                ),
                spec(
                    "activation",
                    Kind::Choice(&["relu", "tanh", "logistic"]),
                    |_| "relu".into(),
                    "hidden activation",
                ),
                spec(
                    "alpha",
                    Kind::Float { min: 0.0, max: 1e6 },
                    |_| 1e-4.into(),
                    "L2 penalty",
                ),
                spec(
                    "learning_rate_init",
                    Kind::Float {
                        min: 1e-8,
                        max: 10.0,
                    },
                    |_| 1e-3.into(),
                    "Adam step size",
                ),
                spec("max_iter", iterations, |_| 200.into(), "epochs at most"),
                spec(
                    "batch_size",
                    Kind::Int {
                        min: 1,
                        max: 1_000_000,
                        nullable: false,
                    },
                    |_| 200.into(),
                    "rows per minibatch",
                ),
                spec(
                    "tol",
                    Kind::Float { min: 0.0, max: 1.0 },
                    |_| 1e-4.into(),
                    "least loss improvement that counts",
                ),
                spec(
                    "n_iter_no_change",
                    iterations,
                    |_| 10.into(),
                    "epochs without improvement before stopping",
                ),
            ],
        }
    }
}

/// Hyper-parameters with every default filled in; what a model version records.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Params(pub BTreeMap<String, Value>);

impl Params {
    /// Checks `given` against `algorithm`'s list and fills in the defaults for `task`. Errors
    /// name the offending parameter and list the valid ones.
    pub fn resolve(
        algorithm: Algorithm,
        task: Task,
        given: &BTreeMap<String, Value>,
    ) -> Result<Self, String> {
        let specs = algorithm.specs();
        let names: Vec<&str> = specs.iter().map(|s| s.name).collect();
        let mut out = BTreeMap::new();
        for (name, value) in given {
            let Some(spec) = specs.iter().find(|s| s.name == name) else {
                let valid = if names.is_empty() {
                    "it takes none".to_string()
                } else {
                    format!("valid: {}", names.join(", "))
                };
                return Err(format!(
                    "unknown parameter \"{name}\" for {}; {valid}",
                    algorithm.name()
                ));
            };
            check(spec, value)
                .map_err(|why| format!("parameter \"{name}\" of {}: {why}", algorithm.name()))?;
            out.insert(name.clone(), value.clone());
        }
        for spec in &specs {
            out.entry(spec.name.to_string())
                .or_insert_with(|| (spec.default)(task));
        }
        Ok(Self(out))
    }

    pub fn int(&self, name: &str) -> Option<usize> {
        self.0
            .get(name)
            .and_then(Value::as_i64)
            .map(|v| usize::try_from(v).unwrap_or(0))
    }

    pub fn usize(&self, name: &str, fallback: usize) -> usize {
        self.int(name).unwrap_or(fallback)
    }

    pub fn float(&self, name: &str, fallback: f64) -> f64 {
        self.0.get(name).and_then(Value::as_f64).unwrap_or(fallback)
    }

    pub fn bool(&self, name: &str, fallback: bool) -> bool {
        self.0
            .get(name)
            .and_then(Value::as_bool)
            .unwrap_or(fallback)
    }

    pub fn text<'a>(&'a self, name: &str, fallback: &'a str) -> &'a str {
        self.0.get(name).and_then(Value::as_str).unwrap_or(fallback)
    }

    pub fn ints(&self, name: &str) -> Vec<usize> {
        self.0
            .get(name)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_i64)
                    .map(|v| usize::try_from(v).unwrap_or(0))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn check(spec: &Spec, value: &Value) -> Result<(), String> {
    let int_in = |v: &Value, min: i64, max: i64| -> Result<(), String> {
        match v.as_i64() {
            Some(i) if (min..=max).contains(&i) => Ok(()),
            Some(i) => Err(format!("{i} is outside {min}..={max}")),
            None => Err(format!("expected an integer in {min}..={max}, got {v}")),
        }
    };
    match spec.kind {
        Kind::Int { nullable: true, .. } if value.is_null() => Ok(()),
        Kind::Int { min, max, .. } => int_in(value, min, max),
        Kind::Float { min, max } => match value.as_f64() {
            Some(f) if f.is_finite() && f >= min && f <= max => Ok(()),
            Some(f) => Err(format!("{f} is outside {min}..={max}")),
            None => Err(format!("expected a number, got {value}")),
        },
        Kind::Bool => match value {
            Value::Bool(_) => Ok(()),
            _ => Err(format!("expected true or false, got {value}")),
        },
        Kind::Choice(choices) => match value.as_str() {
            Some(s) if choices.contains(&s) => Ok(()),
            _ => Err(format!(
                "expected one of {}, got {value}",
                choices.join(", ")
            )),
        },
        Kind::IntList { min, max } => match value.as_array() {
            Some(items) if !items.is_empty() && items.len() <= 16 => {
                items.iter().try_for_each(|v| int_in(v, min, max))
            }
            _ => Err(format!(
                "expected a list of 1 to 16 integers in {min}..={max}, got {value}"
            )),
        },
    }
}

/// Parses a command-line `k=v` value: JSON when it parses (numbers, booleans, lists, null),
/// otherwise the text itself.
pub fn parse_cli_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}
