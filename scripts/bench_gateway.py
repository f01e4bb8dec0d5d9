#!/usr/bin/env python3
"""The gateway against its peers, in one run, with one load generator (`mlmesh bench`).

    python3 scripts/bench_gateway.py [SECONDS]

Starts `mlmesh up` (release build), trains a 100-tree random forest, a logistic regression
and gradient boosting on breast_cancer (scikit-learn's copy, no download) and a soft-vote
ensemble of the three, then measures at 20 users (and 1 user, for the latency one hop adds):
the forest straight from its model service, through the gateway, and through nginx as a plain
reverse proxy in front of the same model service; the ensemble through the gateway and in the
SDK's direct variant; the same forest (scikit-learn) served by MLServer and by Flask +
gunicorn. Needs nginx (Debian package) and, in this Python, scikit-learn, joblib, mlserver,
mlserver-sklearn, flask and gunicorn. Prints a Markdown table and the raw JSON.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request

import joblib
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXE = os.path.join(ROOT, "target", "release", "mlmesh")
SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else 10


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url, key=None, body=None, method=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=600) as response:
        text = response.read()
        return json.loads(text) if text else None


def wait_http(url, seconds=120):
    until = time.time() + seconds
    while time.time() < until:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            time.sleep(0.2)
    sys.exit(f"{url} did not come up")


def bench(data, *args):
    out = subprocess.run([EXE, "bench", "--data-dir", data, "--json", "--duration", f"{SECONDS}s", *args],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    if not shutil.which("nginx"):
        sys.exit("nginx is needed (apt-get install nginx-light)")
    tmp = tempfile.mkdtemp()
    data = os.path.join(tmp, "data")
    procs = []
    try:
        up = subprocess.Popen([EXE, "up", "--data-dir", data, "--port", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(up)
        endpoints_path = os.path.join(data, "endpoints.json")
        while not os.path.exists(endpoints_path):
            time.sleep(0.05)
        endpoints = json.load(open(endpoints_path))
        gateway = endpoints["gateway"]
        key = open(os.path.join(data, "admin.key")).read().strip()

        frame = load_breast_cancer(as_frame=True).frame
        csv = os.path.join(tmp, "breast_cancer.csv")
        frame.to_csv(csv, index=False)
        call(f"{gateway}/v1/datasets/bc?format=csv&target=target", key, open(csv, "rb").read())
        jobs = []
        for model, algorithm, params in [("bc-rf", "random_forest", {"n_estimators": 100}),
                                         ("bc-lr", "logistic_regression", {}),
                                         ("bc-gb", "gradient_boosting", {})]:
            jobs.append(call(f"{gateway}/v1/models/{model}/train", key,
                             {"dataset": "bc", "algorithm": algorithm, "params": params, "seed": 0})["job"])
        for job in jobs:
            while call(f"{gateway}/v1/jobs/{job}", key)["state"] not in ("succeeded", "failed"):
                time.sleep(0.2)
        for model in ("bc-rf", "bc-lr", "bc-gb"):
            while True:
                try:
                    call(f"{gateway}/v2/models/{model}/ready", key)
                    break
                except Exception:
                    time.sleep(0.2)
        call(f"{gateway}/v1/ensembles/bc-vote", key,
             {"method": "soft_vote", "members": [{"model": m} for m in ("bc-rf", "bc-lr", "bc-gb")]}, "PUT")
        x = frame.drop(columns=["target"]).to_numpy()
        row = [float(v) for v in x[0]]
        request = json.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP64", "data": row}]})

        # nginx: a plain reverse proxy with keep-alive to the same model service, one worker
        # (the gateway runs one runtime thread here too).
        trees = endpoints["services"]["model-trees"][0].replace("http://", "")
        nginx_port = free_port()
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(textwrap.dedent(f"""
                worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;
                events {{ worker_connections 4096; }}
                http {{ access_log off;
                  upstream model {{ server {trees}; keepalive 64; }}
                  server {{ listen 127.0.0.1:{nginx_port};
                    location / {{ proxy_pass http://model; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
            """))
        procs.append(subprocess.Popen(["nginx", "-c", conf, "-g", "daemon off;"]))

        # The same forest in scikit-learn, for MLServer and for Flask + gunicorn.
        forest = RandomForestClassifier(n_estimators=100, random_state=0).fit(x, frame["target"])
        ml_dir = os.path.join(tmp, "mlserver")
        os.makedirs(os.path.join(ml_dir, "sk-rf"))
        joblib.dump(forest, os.path.join(ml_dir, "sk-rf", "model.joblib"))
        json.dump({"name": "sk-rf", "implementation": "mlserver_sklearn.SKLearnModel",
                   "parameters": {"uri": "./model.joblib"}}, open(os.path.join(ml_dir, "sk-rf", "model-settings.json"), "w"))
        ml_port = free_port()
        json.dump({"http_port": ml_port, "grpc_port": free_port(), "metrics_port": free_port(), "host": "127.0.0.1"},
                  open(os.path.join(ml_dir, "settings.json"), "w"))
        bindir = os.path.dirname(sys.executable)
        procs.append(subprocess.Popen([os.path.join(bindir, "mlserver"), "start", ml_dir],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        flask_dir = os.path.join(tmp, "flask")
        os.makedirs(flask_dir)
        joblib.dump(forest, os.path.join(flask_dir, "model.joblib"))
        with open(os.path.join(flask_dir, "app.py"), "w") as f:
            f.write(textwrap.dedent("""
                import joblib, numpy as np
                from flask import Flask, request, jsonify
                app = Flask(__name__)
                model = joblib.load("model.joblib")
                @app.post("/v2/models/<name>/infer")
                def infer(name):
                    t = request.get_json()["inputs"][0]
                    x = np.array(t["data"], dtype=float).reshape(t["shape"])
                    labels = model.predict(x).tolist()
                    return jsonify({"model_name": name, "outputs": [
                        {"name": "label", "shape": [len(labels)], "datatype": "INT64", "data": labels}]})
            """))
        flask_port = free_port()
        procs.append(subprocess.Popen([os.path.join(bindir, "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{flask_port}",
                                       "--chdir", flask_dir, "app:app"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_http(f"http://127.0.0.1:{ml_port}/v2/models/sk-rf/ready")
        wait_http(f"http://127.0.0.1:{nginx_port}/v2/health/ready")
        time.sleep(2)

        runs = []
        for users in (1, 20):
            runs.append((f"forest, model service direct", users, bench(data, "--model", "bc-rf", "--direct", "--users", str(users), "--request", request)))
            runs.append((f"forest, through the gateway", users, bench(data, "--model", "bc-rf", "--users", str(users), "--request", request)))
            runs.append((f"forest, through nginx", users, bench(data, "--url", f"http://127.0.0.1:{nginx_port}", "--model", "bc-rf", "--users", str(users), "--request", request)))
        runs.append(("3-member soft vote, through the gateway", 20, bench(data, "--model", "bc-vote", "--users", "20", "--request", request)))
        runs.append(("3-member soft vote, SDK direct variant", 20, bench(data, "--model", "bc-vote", "--direct", "--users", "20", "--request", request)))
        runs.append(("forest, gateway, open loop 4000/s", 20, bench(data, "--model", "bc-rf", "--rate", "4000", "--users", "20", "--request", request)))
        runs.append(("scikit-learn forest, MLServer 1.7.1", 20, bench(data, "--url", f"http://127.0.0.1:{ml_port}", "--model", "sk-rf", "--users", "20", "--request", request, "--warmup", "20")))
        runs.append(("scikit-learn forest, Flask + gunicorn (2 workers)", 20, bench(data, "--url", f"http://127.0.0.1:{flask_port}", "--model", "sk-rf", "--users", "20", "--request", request, "--warmup", "20")))

        print("| target | users | req/s | avg ms | p50 | p90 | p99 | max | errors |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, users, r in runs:
            l = r["latency_ms"]
            print(f"| {name} | {users} | {r['rps']:.0f} | {l['avg']:.3f} | {l['p50']:.3f} | {l['p90']:.3f} | {l['p99']:.3f} | {l['max']:.1f} | {r['errors']} |")
        print()
        print(json.dumps([{"target": n, "users": u, **r} for n, u, r in runs]))
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except Exception:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
