#!/usr/bin/env python3
"""The autoscaler live on this machine: a ramp of load through the gateway, replicas added
before p99 breaks the target and removed after. Writes the timeline (load, p99, replicas) as
CSV and a plot.

    .bench-venv/bin/python scripts/live_autoscale.py [OUT_DIR]     (default docs/plots)

Starts `target/release/mlmesh up` with the autoscaler scaling model-trees (hybrid policy,
decisions every 2 s on 2 s bins, 30 s scale-down hold, at most 4 replicas, and a declared
capacity of 400 requests/s per replica), trains a 100-tree forest on breast_cancer, then runs
`mlmesh bench --rate R` (open loop, through the gateway) for 15 s at each step of a ramp up
and down, while sampling the autoscaler's series and decisions every second. On 2 cores
another replica adds no real CPU; the declared capacity stands for a service whose replicas
each bring their own. Needs scikit-learn and matplotlib in this Python.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from sklearn.datasets import load_breast_cancer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXE = os.path.join(ROOT, "target", "release", "mlmesh")
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "docs", "plots")
RAMP = [100, 300, 600, 900, 1200, 1500, 1200, 900, 600, 300, 100, 0, 0, 0]
STEP_S = 15
SLO_MS = 10.0


def call(url, key=None, body=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=600) as r:
        text = r.read()
        return json.loads(text) if text else None


def main():
    os.makedirs(OUT, exist_ok=True)
    tmp = tempfile.mkdtemp()
    data = os.path.join(tmp, "data")
    settings = {"scale": "model-trees", "capacity_rps": 400, "max_replicas": 4, "decide_s": 2, "step_s": 2,
                "startup_s": 2, "stabilisation_s": 30}
    args = [EXE, "up", "--data-dir", data, "--port", "0"]
    for k, v in settings.items():
        args += ["--set", f"autoscaler.{k}={v}"]
    up = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        path = os.path.join(data, "endpoints.json")
        while not os.path.exists(path):
            time.sleep(0.1)
        e = json.load(open(path))
        gateway, autoscaler = e["gateway"], e["services"]["autoscaler"][0]
        key = open(os.path.join(data, "admin.key")).read().strip()
        frame = load_breast_cancer(as_frame=True).frame
        csv_path = os.path.join(tmp, "bc.csv")
        frame.to_csv(csv_path, index=False)
        call(f"{gateway}/v1/datasets/bc?format=csv&target=target", key, open(csv_path, "rb").read())
        job = call(f"{gateway}/v1/models/bc-rf/train", key,
                   {"dataset": "bc", "algorithm": "random_forest", "params": {"n_estimators": 100}, "seed": 0})["job"]
        while call(f"{gateway}/v1/jobs/{job}", key)["state"] not in ("succeeded", "failed"):
            time.sleep(0.2)
        row = [float(v) for v in frame.drop(columns=["target"]).to_numpy()[0]]
        request = json.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP64", "data": row}]})

        samples, stop = [], threading.Event()
        start = time.time()

        def sample():
            while not stop.is_set():
                try:
                    points = call(f"{autoscaler}/v1/series/model-trees?since_ms={int((time.time() - 3) * 1000)}")["points"]
                    scaling = call(f"{autoscaler}/v1/scaling")
                    p = points[-1] if points else {}
                    t = scaling["targets"][0] if scaling["targets"] else {}
                    samples.append({"t": round(time.time() - start, 1), "rps": p.get("rps", 0),
                                    "p99_ms": p.get("p99_ms"), "instances": p.get("instances", 0),
                                    "replicas": t.get("replicas", 0), "forecast_rps": t.get("forecast_rps")})
                except Exception:
                    pass
                time.sleep(1)

        sampler = threading.Thread(target=sample)
        sampler.start()
        bench_p99 = []
        for rate in RAMP:
            if rate == 0:
                time.sleep(STEP_S)
                continue
            out = subprocess.run([EXE, "bench", "--data-dir", data, "--json", "--model", "bc-rf", "--rate", str(rate),
                                  "--users", "64", "--duration", f"{STEP_S}s", "--warmup", "0", "--request", request],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out)
            bench_p99.append((rate, r["latency_ms"]["p99"], r["errors"]))
        time.sleep(40)
        stop.set()
        sampler.join()
        decisions = call(f"{autoscaler}/v1/scaling")["decisions"]
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)

    with open(os.path.join(OUT, "live-autoscale.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(samples[0].keys()))
        w.writeheader()
        w.writerows(samples)
    t = [s["t"] for s in samples]
    fig, (a, b, c) = plt.subplots(3, 1, figsize=(12, 8), sharex=True)
    a.plot(t, [s["rps"] for s in samples], label="load (req/s, scraped)")
    a.plot(t, [s["forecast_rps"] or 0 for s in samples], label="forecast (upper)", alpha=0.7)
    a.set_ylabel("requests/s")
    a.legend(loc="upper right")
    b.plot(t, [s["p99_ms"] or 0 for s in samples], color="tab:red", label="p99 (ms, per scrape)")
    b.axhline(SLO_MS, color="grey", linestyle="--", label=f"target {SLO_MS:g} ms")
    b.set_ylabel("p99 ms")
    b.legend(loc="upper right")
    c.step(t, [s["replicas"] for s in samples], where="post", label="replicas decided")
    c.step(t, [s["instances"] for s in samples], where="post", label="instances serving", alpha=0.7)
    c.set_ylabel("replicas")
    c.set_xlabel("seconds")
    c.legend(loc="upper right")
    fig.suptitle("mlmesh autoscaler live: model-trees under a ramp through the gateway (hybrid policy)")
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "live-autoscale.svg"))
    print("| rate (req/s) | bench p99 ms | errors |")
    print("|---:|---:|---:|")
    for rate, p99, errors in bench_p99:
        print(f"| {rate} | {p99:.2f} | {errors} |")
    print()
    for d in decisions:
        print(f"- +{(d['at_ms'] / 1000 - start):.0f} s: {d['from']} → {d['to']} ({'applied' if d['applied'] else d.get('error')}): {d['reason']}")


if __name__ == "__main__":
    main()
