#!/usr/bin/env python3
"""Serves a scikit-learn random forest with MLServer, as a foreign ensemble member.

  python3 scripts/mlserver_member.py DIR HTTP_PORT GRPC_PORT METRICS_PORT CSV TARGET [MODEL]

Trains on CSV (delimiter detected), writes the model and MLServer's settings into DIR, writes
DIR/classes.json (the predict_proba column order), then runs `mlserver start DIR`.
"""
import csv, json, os, sys

import joblib
import numpy as np
from sklearn.ensemble import RandomForestClassifier

folder, http_port, grpc_port, metrics_port, path, target = sys.argv[1:7]
name = sys.argv[7] if len(sys.argv) > 7 else "sk-rf"
with open(path, newline="") as f:
    sample = f.read(4096)
    f.seek(0)
    rows = list(csv.reader(f, csv.Sniffer().sniff(sample, delimiters=",;\t|")))
header, body = rows[0], rows[1:]
t = header.index(target)
x = np.array([[float(v) for i, v in enumerate(r) if i != t] for r in body])
y = np.array([int(float(r[t])) for r in body])
model = RandomForestClassifier(n_estimators=50, random_state=0).fit(x, y)

model_dir = os.path.join(folder, name)
os.makedirs(model_dir, exist_ok=True)
joblib.dump(model, os.path.join(model_dir, "model.joblib"))
with open(os.path.join(model_dir, "model-settings.json"), "w") as f:
    json.dump({"name": name, "implementation": "mlserver_sklearn.SKLearnModel",
               "parameters": {"uri": "./model.joblib"}}, f)
with open(os.path.join(folder, "settings.json"), "w") as f:
    json.dump({"http_port": int(http_port), "grpc_port": int(grpc_port),
               "metrics_port": int(metrics_port), "parallel_workers": 0,
               "host": "127.0.0.1"}, f)
with open(os.path.join(folder, "classes.json"), "w") as f:
    json.dump([str(c) for c in model.classes_], f)
mlserver = os.path.join(os.path.dirname(sys.executable), "mlserver")
os.execv(mlserver, [mlserver, "start", folder])
