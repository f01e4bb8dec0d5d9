#!/usr/bin/env python3
"""mlmesh's algorithms against their scikit-learn counterparts, in one run.

Each dataset is split once (test_size=0.25, stratified for classes, random_state=0) and written
as CSV; both sides read the same rows. The Rust side is `crates/learn/examples/compare.rs`
(in-process: the service's preprocessing + model). Scaled algorithms run in a scikit-learn
Pipeline with StandardScaler, as mlmesh standardises for them. Prints a Markdown table.

  python3 -m venv .bench-venv && .bench-venv/bin/pip install scikit-learn==1.9.1 pandas
  .bench-venv/bin/python scripts/bench_models.py [--only NAME]
"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import datasets
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.metrics import accuracy_score, f1_score, r2_score, mean_squared_error
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor
from sklearn.ensemble import (RandomForestClassifier, RandomForestRegressor,
                              HistGradientBoostingClassifier, HistGradientBoostingRegressor)
from sklearn.linear_model import LogisticRegression, LinearRegression, Ridge
from sklearn.svm import LinearSVC, LinearSVR
from sklearn.compose import TransformedTargetRegressor
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.neural_network import MLPClassifier, MLPRegressor

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MLMESH_SHARED_DATA", ROOT.parent / "shared" / "data"))
SEED = 0

def load():
    out = {}
    for name in ["iris", "wine", "breast_cancer", "digits"]:
        d = getattr(datasets, f"load_{name}")()
        out[name] = (d.data, d.target, "classification")
    d = datasets.load_diabetes()
    out["diabetes"] = (d.data, d.target, "regression")
    spam = np.loadtxt(SHARED / "tabular/spambase/spambase.data", delimiter=",")
    out["spambase"] = (spam[:, :-1], spam[:, -1].astype(int), "classification")
    red = pd.read_csv(SHARED / "tabular/wine_quality/winequality-red.csv", sep=";")
    out["winequality_red"] = (red.drop(columns="quality").values, red["quality"].values.astype(float), "regression")
    return out

def sk_models(task):
    if task == "classification":
        return {
            "decision_tree": lambda: DecisionTreeClassifier(random_state=SEED),
            "random_forest": lambda: RandomForestClassifier(n_estimators=100, random_state=SEED, n_jobs=-1),
            "gradient_boosting": lambda: HistGradientBoostingClassifier(early_stopping=False, random_state=SEED),
            "logistic_regression": lambda: make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=200)),
            "linear_svm": lambda: make_pipeline(StandardScaler(), LinearSVC(C=1.0, random_state=SEED)),
            "gaussian_nb": lambda: GaussianNB(),
            "knn": lambda: make_pipeline(StandardScaler(), KNeighborsClassifier(5)),
            "mlp": lambda: make_pipeline(StandardScaler(), MLPClassifier(random_state=SEED, max_iter=200)),
        }
    return {
        "decision_tree": lambda: DecisionTreeRegressor(random_state=SEED),
        "random_forest": lambda: RandomForestRegressor(n_estimators=100, random_state=SEED, n_jobs=-1),
        "gradient_boosting": lambda: HistGradientBoostingRegressor(early_stopping=False, random_state=SEED),
        "linear_regression": lambda: make_pipeline(StandardScaler(), LinearRegression()),
        "linear_svm": lambda: make_pipeline(StandardScaler(), TransformedTargetRegressor(
            LinearSVR(loss="squared_epsilon_insensitive", C=1.0, random_state=SEED, max_iter=1000), transformer=StandardScaler())),
        "ridge": lambda: make_pipeline(StandardScaler(), Ridge(alpha=1.0)),
        "knn": lambda: make_pipeline(StandardScaler(), KNeighborsRegressor(5)),
        "mlp": lambda: make_pipeline(StandardScaler(), MLPRegressor(random_state=SEED, max_iter=200)),
    }

def sk_run(make, task, xtr, ytr, xte, yte):
    import warnings
    warnings.filterwarnings("ignore")
    times = []
    for _ in range(3):
        m = make(); t = time.perf_counter(); m.fit(xtr, ytr); times.append(time.perf_counter() - t)
        if times[0] > 5: break
    times.sort(); train_s = times[len(times) // 2]
    pred = m.predict(xte)
    if task == "classification":
        metric = {"accuracy": accuracy_score(yte, pred), "f1_macro": f1_score(yte, pred, average="macro")}
    else:
        metric = {"r2": r2_score(yte, pred), "rmse": mean_squared_error(yte, pred) ** 0.5}
    for i in range(50): m.predict(xte[i % len(xte): i % len(xte) + 1])
    lat = []
    for i in range(300):
        row = xte[i % len(xte): i % len(xte) + 1]
        t = time.perf_counter(); m.predict(row); lat.append((time.perf_counter() - t) * 1e6)
    lat.sort()
    batch = []; begin = time.perf_counter()
    while len(batch) < 5 or (time.perf_counter() - begin < 2 and len(batch) < 50):
        t = time.perf_counter(); m.predict(xte); batch.append(time.perf_counter() - t)
    batch.sort()
    return {"metrics": metric, "train_s": train_s, "predict_1row_us": lat[len(lat) // 2],
            "batch_rows_per_s": len(xte) / batch[len(batch) // 2]}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "mlmesh-learn", "--example", "compare"], cwd=ROOT, check=True)
    exe = ROOT / "target/release/examples/compare"
    print(f"_{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores; scikit-learn {__import__('sklearn').__version__}; mlmesh in-process (release build)_\n")
    print("| dataset | algorithm | metric | mlmesh | scikit-learn | Δ | train s mlmesh | train s sklearn | 1-row µs mlmesh | 1-row µs sklearn | batch rows/s mlmesh | batch rows/s sklearn |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, (x, y, task) in load().items():
        if args.only and args.only != name: continue
        strat = y if task == "classification" else None
        xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, stratify=strat, random_state=SEED)
        with tempfile.TemporaryDirectory() as d:
            for fname, xs, ys in [("train.csv", xtr, ytr), ("test.csv", xte, yte)]:
                df = pd.DataFrame(xs, columns=[f"f{i}" for i in range(xs.shape[1])])
                df["target"] = ys
                df.to_csv(Path(d) / fname, index=False, float_format="%.17g")
            out = subprocess.run([str(exe), d, task, str(SEED)], capture_output=True, text=True, check=True).stdout
            ours = {r["algorithm"]: r for r in map(json.loads, out.splitlines())}
            # A single decision tree swings with the seed (tie-breaks between equal splits) on
            # both sides: its metric is the mean over seeds 0-4, on both sides.
            key = "accuracy" if task == "classification" else "r2"
            dt = [json.loads(subprocess.run([str(exe), d, task, str(s), "decision_tree"], capture_output=True, text=True, check=True).stdout)["metrics"][key] for s in range(5)]
            ours["decision_tree"]["metrics"][key] = sum(dt) / len(dt)
        for algo, make in sk_models(task).items():
            s = sk_run(make, task, xtr, ytr, xte, yte)
            if algo == "decision_tree":
                cls = DecisionTreeClassifier if task == "classification" else DecisionTreeRegressor
                scores = [sk_run(lambda seed=seed: cls(random_state=seed), task, xtr, ytr, xte, yte)["metrics"]["accuracy" if task == "classification" else "r2"] for seed in range(5)]
                s["metrics"]["accuracy" if task == "classification" else "r2"] = sum(scores) / len(scores)
            o = ours[algo]
            key = "accuracy" if task == "classification" else "r2"
            a, b = o["metrics"][key], s["metrics"][key]
            print(f"| {name} | {algo} | {key} | {a:.3f} | {b:.3f} | {a - b:+.3f} | {o['train_s']:.4f} | {s['train_s']:.4f} | "
                  f"{o['predict_1row_us']:.1f} | {s['predict_1row_us']:.0f} | {o['batch_rows_per_s']:,.0f} | {s['batch_rows_per_s']:,.0f} |", flush=True)

if __name__ == "__main__":
    main()
