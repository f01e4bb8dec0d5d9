//! From a table of typed columns to the numeric matrix models eat: numeric columns have their
//! missing values filled with the training mean; categorical columns become one-hot indicator
//! columns over the categories seen in training (at most `MAX_CATEGORIES`, the most frequent;
//! unseen and missing categories are all zeros); optionally every output column is
//! standardised (zero variance → scale 1, as scikit-learn). Everything is fitted on the training
//! rows only and stored in the model, so serving applies exactly the training transform.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::Matrix;

/// Most one-hot columns a categorical feature expands into.
pub const MAX_CATEGORIES: usize = 100;

/// One column of a table.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnData {
    /// Numbers; `NaN` marks a missing value.
    Numeric(Vec<f64>),
    Categorical(Vec<Option<String>>),
}

impl ColumnData {
    pub fn len(&self) -> usize {
        match self {
            Self::Numeric(v) => v.len(),
            Self::Categorical(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn select(&self, rows: &[usize]) -> Self {
        match self {
            Self::Numeric(v) => Self::Numeric(rows.iter().map(|&r| v[r]).collect()),
            Self::Categorical(v) => Self::Categorical(rows.iter().map(|&r| v[r].clone()).collect()),
        }
    }
}

/// Columns by name, all of one length.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Frame {
    pub names: Vec<String>,
    pub columns: Vec<ColumnData>,
}

impl Frame {
    pub fn rows(&self) -> usize {
        self.columns.first().map_or(0, ColumnData::len)
    }

    pub fn column(&self, name: &str) -> Option<&ColumnData> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| &self.columns[i])
    }

    pub fn select(&self, rows: &[usize]) -> Self {
        Self {
            names: self.names.clone(),
            columns: self.columns.iter().map(|c| c.select(rows)).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Step {
    /// A number; missing → `fill`.
    Numeric { fill: f64 },
    /// One indicator column per category.
    OneHot { categories: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    pub column: String,
    #[serde(flatten)]
    pub step: Step,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessor {
    pub features: Vec<Feature>,
    /// Per output column `(x - center) / scale`, when the model wants standardised inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standardize: Option<(Vec<f64>, Vec<f64>)>,
}

impl Preprocessor {
    /// Fits on `frame`'s rows (the training split) for the `features` columns.
    pub fn fit(frame: &Frame, features: &[String], standardize: bool) -> Self {
        let steps = features
            .iter()
            .map(|name| {
                let step = match frame.column(name) {
                    Some(ColumnData::Numeric(v)) => {
                        let (sum, n) = v
                            .iter()
                            .filter(|x| !x.is_nan())
                            .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
                        Step::Numeric {
                            fill: if n > 0 { sum / n as f64 } else { 0.0 },
                        }
                    }
                    Some(ColumnData::Categorical(v)) => {
                        let mut counts: HashMap<&str, usize> = HashMap::new();
                        v.iter()
                            .flatten()
                            .for_each(|s| *counts.entry(s.as_str()).or_default() += 1);
                        let mut ranked: Vec<(&str, usize)> = counts.into_iter().collect();
                        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                        ranked.truncate(MAX_CATEGORIES);
                        let mut categories: Vec<String> =
                            ranked.into_iter().map(|(s, _)| s.to_string()).collect();
                        categories.sort();
                        Step::OneHot { categories }
                    }
                    None => Step::Numeric { fill: 0.0 },
                };
                Feature {
                    column: name.clone(),
                    step,
                }
            })
            .collect();
        let mut prep = Self {
            features: steps,
            standardize: None,
        };
        if standardize {
            let raw = prep.transform(frame);
            let n = raw.rows.max(1) as f64;
            let mut center = vec![0.0; raw.cols];
            let mut scale = vec![0.0; raw.cols];
            for r in 0..raw.rows {
                center
                    .iter_mut()
                    .zip(raw.row(r))
                    .for_each(|(c, v)| *c += v / n);
            }
            for r in 0..raw.rows {
                scale
                    .iter_mut()
                    .zip(raw.row(r))
                    .zip(&center)
                    .for_each(|((s, v), c)| *s += (v - c) * (v - c) / n);
            }
            scale
                .iter_mut()
                .for_each(|s| *s = if *s > 1e-24 { s.sqrt() } else { 1.0 });
            prep.standardize = Some((center, scale));
        }
        prep
    }

    /// Width of the output matrix.
    pub fn width(&self) -> usize {
        self.features
            .iter()
            .map(|f| match &f.step {
                Step::Numeric { .. } => 1,
                Step::OneHot { categories } => categories.len(),
            })
            .sum()
    }

    /// The model matrix for `frame`, which must hold every feature column (the caller checks
    /// names and types against the model's signature).
    pub fn transform(&self, frame: &Frame) -> Matrix {
        let rows = frame.rows();
        let width = self.width();
        let mut out = Matrix::zeros(rows, width);
        let mut at = 0;
        for feature in &self.features {
            let column = frame.column(&feature.column);
            match (&feature.step, column) {
                (Step::Numeric { fill }, Some(ColumnData::Numeric(v))) => {
                    for (r, x) in v.iter().enumerate() {
                        out.data[r * width + at] = if x.is_nan() { *fill } else { *x };
                    }
                    at += 1;
                }
                (Step::Numeric { fill }, _) => {
                    (0..rows).for_each(|r| out.data[r * width + at] = *fill);
                    at += 1;
                }
                (Step::OneHot { categories }, column) => {
                    if let Some(ColumnData::Categorical(v)) = column {
                        for (r, value) in v.iter().enumerate() {
                            if let Some(Ok(i)) = value.as_ref().map(|s| categories.binary_search(s))
                            {
                                out.data[r * width + at + i] = 1.0;
                            }
                        }
                    }
                    at += categories.len();
                }
            }
        }
        if let Some((center, scale)) = &self.standardize {
            for r in 0..rows {
                out.row_mut(r)
                    .iter_mut()
                    .zip(center.iter().zip(scale))
                    .for_each(|(v, (c, s))| *v = (*v - c) / s);
            }
        }
        out
    }
}
