//! Imported ONNX models, run by ONNX Runtime through `ort` with the runtime library loaded at
//! run time (`model.onnx_runtime`, else `ORT_DYLIB_PATH`): tract, the pure-Rust engine, lacks
//! the TreeEnsembleRegressor, SVM and ZipMap operators that skl2onnx emits.
//!
//! Accepted: one float or double input of shape `[batch, n_features]`; a classifier has a label
//! output and a probability output (a `[batch, n_classes]` tensor, or a sequence of maps as
//! skl2onnx's ZipMap writes, whose keys name the classes); a regressor has one tensor output.

use std::sync::{Mutex, OnceLock};

use mlmesh_learn::{Matrix, Prediction};
use mlmesh_protocol::data::ColumnType;
use mlmesh_protocol::model::{Feature, Signature};
use mlmesh_protocol::v2::{InferOutput, InferRequest};
use ort::environment::Environment;
use ort::session::Session;
use ort::value::{DynMapValueType, Tensor, TensorElementType, ValueType};

use crate::infer::{self, InferError};

static RUNTIME: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime once per process; later calls answer the first outcome.
pub fn runtime(library: Option<&std::path::Path>) -> Result<&'static Environment, String> {
    RUNTIME
        .get_or_init(|| {
            let path = library
                .map(std::path::Path::to_path_buf)
                .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(Into::into))
                .ok_or("ONNX Runtime is not configured: set model.onnx_runtime or ORT_DYLIB_PATH to libonnxruntime.so (pip's onnxruntime package ships one in onnxruntime/capi/)")?;
            if !path.is_file() {
                return Err(format!("ONNX Runtime library {} does not exist", path.display()));
            }
            ort::init_from(&path)
                .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?
                .with_name("mlmesh")
                .build()
                .map_err(|e| format!("cannot start ONNX Runtime: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Row-major outputs, the ZipMap keys (if any), and the number of outputs per row.
type Executed = (Vec<f64>, Option<Vec<String>>, usize);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probabilities {
    Tensor,
    ZipMap,
}

/// A loaded ONNX model and what it was found to take and give.
pub struct OnnxModel {
    session: Mutex<Session>,
    input: String,
    double: bool,
    width: usize,
    /// Name of the probability (classifier) or value (regressor) output.
    output: String,
    probabilities: Option<Probabilities>,
    pub signature: Signature,
    pub integer_labels: bool,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("input", &self.input)
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

/// Options of an import: feature names and, for tensor-probability classifiers with text
/// labels, the class order.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub features: Option<Vec<String>>,
    pub classes: Option<Vec<String>>,
}

impl OnnxModel {
    /// Loads and inspects a model; the error explains what is wrong with the file.
    pub fn load(
        environment: &Environment,
        bytes: &[u8],
        options: &ImportOptions,
    ) -> Result<Self, String> {
        let session = Session::builder(environment)
            .and_then(|mut b| b.commit_from_memory(bytes))
            .map_err(|e| format!("not a model ONNX Runtime can load: {e}"))?;
        let [input] = session.inputs() else {
            return Err(format!(
                "the model has {} inputs; mlmesh imports models with one [batch, n_features] input",
                session.inputs().len()
            ));
        };
        let (double, width) = match input.dtype() {
            ValueType::Tensor { ty, shape, .. }
                if shape.len() == 2
                    && shape[1] > 0
                    && matches!(ty, TensorElementType::Float32 | TensorElementType::Float64) =>
            {
                (*ty == TensorElementType::Float64, shape[1] as usize)
            }
            other => {
                return Err(format!(
                    "input {:?} is {other:?}; mlmesh needs a float tensor [batch, n_features] with a fixed n_features",
                    input.name()
                ));
            }
        };
        let input_name = input.name().to_string();
        let outputs: Vec<(String, ValueType)> = session
            .outputs()
            .iter()
            .map(|o| (o.name().to_string(), o.dtype().clone()))
            .collect();
        let features = match &options.features {
            Some(names) if names.len() != width => {
                return Err(format!(
                    "features names {} columns; the model takes {width}",
                    names.len()
                ));
            }
            Some(names) => names.clone(),
            None => (0..width).map(|i| format!("x{i}")).collect(),
        };
        let inputs = features
            .into_iter()
            .map(|name| Feature {
                name,
                column_type: ColumnType::Float,
            })
            .collect();
        let probability_output = outputs.iter().find(|(_, t)| match t {
            ValueType::Sequence(inner) => matches!(**inner, ValueType::Map { .. }),
            ValueType::Tensor { shape, .. } => {
                shape.len() == 2 && outputs.len() == 2 && shape[1] != 1
            }
            _ => false,
        });
        let label_output = outputs
            .iter()
            .find(|(_, t)| matches!(t, ValueType::Tensor { shape, .. } if shape.len() == 1));
        let mut model = Self {
            session: Mutex::new(session),
            input: input_name,
            double,
            width,
            output: String::new(),
            probabilities: None,
            signature: Signature {
                inputs,
                target: None,
                task: "regression".into(),
                classes: None,
            },
            integer_labels: false,
        };
        match (probability_output, label_output) {
            (Some((name, kind)), Some((_, label_type))) => {
                model.output = name.clone();
                model.integer_labels = matches!(
                    label_type,
                    ValueType::Tensor {
                        ty: TensorElementType::Int64,
                        ..
                    }
                );
                let zipmap = matches!(kind, ValueType::Sequence(_));
                model.probabilities = Some(if zipmap {
                    Probabilities::ZipMap
                } else {
                    Probabilities::Tensor
                });
                model.signature.task = "classification".into();
                // One probe row tells the class count (and, through ZipMap's keys, the labels).
                let probe = {
                    let mut session = model.session.lock().unwrap_or_else(|e| e.into_inner());
                    let (_, keys, width) = model.execute(&Matrix::zeros(1, width), &mut session)?;
                    (keys, width)
                };
                let classes = match (&options.classes, probe) {
                    (Some(classes), (_, k)) if classes.len() != k => {
                        return Err(format!("classes names {} labels; the model answers {k} probabilities", classes.len()));
                    }
                    (Some(classes), _) => classes.clone(),
                    (None, (Some(keys), _)) => keys,
                    (None, (None, k)) if model.integer_labels => (0..k).map(|i| i.to_string()).collect(),
                    (None, _) => return Err("the model's labels are text and its probabilities a plain tensor: name the classes in order with ?classes=a,b,…".into()),
                };
                model.signature.classes = Some(classes);
            }
            _ => {
                let Some((name, _)) = outputs
                    .iter()
                    .find(|(_, t)| matches!(t, ValueType::Tensor { .. }))
                else {
                    return Err("the model has no tensor output to serve".into());
                };
                model.output = name.clone();
            }
        }
        Ok(model)
    }

    /// Runs `x`; returns the row-major outputs, the ZipMap keys, and the width.
    fn execute(&self, x: &Matrix, session: &mut Session) -> Result<Executed, String> {
        let shape = [x.rows, self.width];
        let input = if self.double {
            Tensor::from_array((shape, x.data.clone())).map(|t| t.upcast())
        } else {
            Tensor::from_array((
                shape,
                x.data.iter().map(|v| *v as f32).collect::<Vec<f32>>(),
            ))
            .map(|t| t.upcast())
        }
        .map_err(|e| e.to_string())?;
        let outputs = session
            .run(ort::inputs![self.input.as_str() => input])
            .map_err(|e| format!("ONNX Runtime failed: {e}"))?;
        let value = outputs
            .get(&self.output)
            .ok_or("the model did not produce its output")?;
        if self.probabilities == Some(Probabilities::ZipMap) {
            let maps = value
                .try_extract_sequence::<DynMapValueType>()
                .map_err(|e| e.to_string())?;
            let mut data = Vec::new();
            let mut keys: Option<Vec<String>> = None;
            for map in maps {
                let mut entries: Vec<(String, f64)> = match map.try_extract_map::<i64, f32>() {
                    Ok(m) => {
                        let mut e: Vec<(i64, f32)> = m.into_iter().collect();
                        e.sort_by_key(|(k, _)| *k);
                        e.into_iter()
                            .map(|(k, v)| (k.to_string(), f64::from(v)))
                            .collect()
                    }
                    Err(_) => {
                        let m = map
                            .try_extract_map::<String, f32>()
                            .map_err(|e| e.to_string())?;
                        let mut e: Vec<(String, f64)> =
                            m.into_iter().map(|(k, v)| (k, f64::from(v))).collect();
                        e.sort_by(|a, b| a.0.cmp(&b.0));
                        e
                    }
                };
                keys.get_or_insert_with(|| entries.iter().map(|(k, _)| k.clone()).collect());
                data.extend(entries.drain(..).map(|(_, v)| v));
            }
            let width = keys.as_ref().map_or(0, Vec::len);
            return Ok((data, keys, width));
        }
        let (shape, data): (Vec<i64>, Vec<f64>) = match value.try_extract_tensor::<f32>() {
            Ok((shape, data)) => (shape.to_vec(), data.iter().map(|v| f64::from(*v)).collect()),
            Err(_) => {
                let (shape, data) = value
                    .try_extract_tensor::<f64>()
                    .map_err(|e| format!("the output is not a float tensor: {e}"))?;
                (shape.to_vec(), data.to_vec())
            }
        };
        let width = if shape.len() == 2 {
            usize::try_from(shape[1]).unwrap_or(1)
        } else {
            1
        };
        Ok((data, None, width))
    }

    pub fn predict(
        &self,
        request: &InferRequest,
        max_rows: usize,
    ) -> Result<Vec<InferOutput>, InferError> {
        let classifier = self.signature.classes.is_some();
        let wanted = infer::wanted(request, classifier)?;
        let frame = infer::frame(&self.signature, request, max_rows)?;
        let rows = frame.rows();
        let mut x = Matrix::zeros(rows, self.width);
        for (j, column) in frame.columns.iter().enumerate() {
            if let mlmesh_learn::prep::ColumnData::Numeric(v) = column {
                for (r, value) in v.iter().enumerate() {
                    x.data[r * self.width + j] = *value;
                }
            }
        }
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let (data, _, width) = self
            .execute(&x, &mut session)
            .map_err(InferError::Invalid)?;
        drop(session);
        let prediction = if classifier {
            let k = self.signature.classes.as_ref().map_or(0, Vec::len);
            if width != k || data.len() != rows * k {
                return Err(InferError::Invalid(format!(
                    "the model answered {width} probabilities per row; it was imported with {k} classes"
                )));
            }
            Prediction::Probabilities(Matrix::new(rows, k, data))
        } else {
            Prediction::Values(data.into_iter().step_by(width.max(1)).collect())
        };
        Ok(infer::outputs(
            &prediction,
            self.signature.classes.as_deref(),
            self.integer_labels,
            &wanted,
        ))
    }
}
