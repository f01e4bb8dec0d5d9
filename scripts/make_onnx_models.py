#!/usr/bin/env python3
"""Makes the ONNX models the import test loads: scikit-learn estimators converted by skl2onnx,
with scikit-learn's own predictions on a few rows (expected.json).

  python3 scripts/make_onnx_models.py OUT_DIR
"""
import json, sys
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC, LinearSVR

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
expected = {}

def classifier(name, model, x, y, zipmap):
    x = x.astype(np.float32); model.fit(x, y)
    options = {id(model): {"zipmap": False}} if not zipmap else None
    (out / f"{name}.onnx").write_bytes(to_onnx(model, x[:1], options=options).SerializeToString())
    rows = x[::max(1, len(x) // 12)][:12]
    expected[name] = {"x": rows.tolist(), "proba": model.predict_proba(rows).tolist(), "label": model.predict(rows).tolist()}

def regressor(name, model, x, y):
    x = x.astype(np.float32); model.fit(x, y)
    (out / f"{name}.onnx").write_bytes(to_onnx(model, x[:1]).SerializeToString())
    rows = x[::max(1, len(x) // 12)][:12]
    expected[name] = {"x": rows.tolist(), "value": model.predict(rows).tolist()}

iris_x, iris_y = load_iris(return_X_y=True)
cancer_x, cancer_y = load_breast_cancer(return_X_y=True)
diabetes_x, diabetes_y = load_diabetes(return_X_y=True)
classifier("rf_classifier", RandomForestClassifier(n_estimators=20, random_state=0), iris_x, iris_y, zipmap=True)
classifier("rf_classifier_tensor", RandomForestClassifier(n_estimators=20, random_state=0), cancer_x, cancer_y, zipmap=False)
classifier("logistic", LogisticRegression(max_iter=2000), iris_x, iris_y, zipmap=True)
classifier("svm", SVC(kernel="linear", probability=True, random_state=0), iris_x, iris_y, zipmap=False)
regressor("rf_regressor", RandomForestRegressor(n_estimators=20, random_state=0), diabetes_x, diabetes_y)
regressor("linear_svr", LinearSVR(random_state=0, max_iter=10000), diabetes_x, diabetes_y)
(out / "expected.json").write_text(json.dumps(expected))
