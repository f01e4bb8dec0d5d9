#!/usr/bin/env python3
"""CPU time per request of one proxy hop, for A/B comparisons of builds.

    BC=breast_cancer.csv python3 scripts/hop_cost.py EXE SECONDS MODE…

Starts `EXE up`, trains a 100-tree forest on breast_cancer (the CSV in $BC, e.g. written by
scikit-learn's `load_breast_cancer(as_frame=True).frame.to_csv`) and puts nginx (one worker,
keep-alive upstream) in front of its model service. Then, per MODE — `gateway`, `direct`,
`nginx`, `open` (the gateway at a fixed 4000 requests/s) or `ensemble` (a soft vote of the
forest, a logistic regression and gradient boosting, through the gateway) — it runs `EXE bench` at 20 users ($USERS)
while `perf stat -e task-clock` watches the proxy and the model service, and prints
requests/s, p50/p99 and the CPU µs, system calls and context switches per request of each
process. CPU per request is steadier
across runs than requests/s on a shared 2-core machine, so builds are compared with it.
`record` (`record-ensemble`) writes `perf record -g` of the gateway serving the forest (the
ensemble) to /tmp/record.data, `record-direct` that of the model service called directly. Needs perf and nginx.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import shutil

EXE, SECONDS, MODES = sys.argv[1], int(sys.argv[2]), sys.argv[3:] or ["gateway", "direct", "nginx"]
ROW = [17.99, 10.38, 122.8, 1001, 0.1184, 0.2776, 0.3001, 0.1471, 0.2419, 0.07871, 1.095, 0.9053, 8.589, 153.4,
       0.006399, 0.04904, 0.05373, 0.01587, 0.03003, 0.006193, 25.38, 17.33, 184.6, 2019, 0.1622, 0.6656, 0.7119,
       0.2654, 0.4601, 0.1189]
REQUEST = json.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP64", "data": ROW}]})


def call(url, key, body=None, method=None):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as r:
        text = r.read()
        return json.loads(text) if text else None


def pid_of(pattern):
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()[0]


def bench(data, extra, model="bc-rf"):
    out = subprocess.run([EXE, "bench", "--data-dir", data, "--json", "--duration", f"{SECONDS}s", "--model", model,
                          "--users", os.environ.get("USERS", "20"), "--request", REQUEST, *extra], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


EVENTS = ["task-clock", "raw_syscalls:sys_enter", "context-switches"]


def counts(perf):
    """task-clock (ms), system calls and context switches seen by a `perf stat`."""
    perf.send_signal(signal.SIGINT)
    seen = {}
    for line in perf.communicate()[1].splitlines():
        fields = line.split(",")
        for event in EVENTS:
            if event in fields and fields[0][:1].isdigit():
                seen[event] = float(fields[0])
    return seen


def main():
    tmp = tempfile.mkdtemp()
    data = os.path.join(tmp, "data")
    up = subprocess.Popen([EXE, "up", "--data-dir", data, "--port", "0"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    nginx = None
    try:
        endpoints = os.path.join(data, "endpoints.json")
        while not os.path.exists(endpoints):
            time.sleep(0.05)
        time.sleep(0.5)
        e = json.load(open(endpoints))
        gateway, key = e["gateway"], open(os.path.join(data, "admin.key")).read().strip()
        call(f"{gateway}/v1/datasets/bc?format=csv&target=target", key, open(os.environ["BC"], "rb").read())
        models = [("bc-rf", "random_forest", {"n_estimators": 100})]
        if any("ensemble" in m for m in MODES):
            models += [("bc-lr", "logistic_regression", {}), ("bc-gb", "gradient_boosting", {})]
        for model, algorithm, params in models:
            job = call(f"{gateway}/v1/models/{model}/train", key,
                       {"dataset": "bc", "algorithm": algorithm, "params": params, "seed": 0})["job"]
            while call(f"{gateway}/v1/jobs/{job}", key)["state"] not in ("succeeded", "failed"):
                time.sleep(0.2)
        if len(models) > 1:
            time.sleep(1)  # the gateway learns the new models' owners from the registry
            call(f"{gateway}/v1/ensembles/bc-vote", key,
                 {"method": "soft_vote", "members": [{"model": m} for m, _, _ in models]}, "PUT")
        trees = e["services"]["model-trees"][0].replace("http://", "")
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;
events {{ worker_connections 4096; }}
http {{ access_log off; upstream model {{ server {trees}; keepalive 64; }}
  server {{ listen 127.0.0.1:18999; location / {{ proxy_pass http://model; proxy_http_version 1.1;
    proxy_set_header Connection ""; }} }} }}""")
        nginx = subprocess.Popen(["nginx", "-c", conf, "-g", "daemon off;"])
        time.sleep(1)
        pids = {"gateway": pid_of("serve gateway"), "model": pid_of("serve model-trees"),
                "nginx": pid_of("nginx: worker")}
        for mode in MODES:
            proxy = "nginx" if mode == "nginx" else "gateway"
            extra = {"direct": ["--direct"], "nginx": ["--url", "http://127.0.0.1:18999"],
                     "open": ["--rate", "4000"]}.get(mode, [])
            model = "bc-vote" if "ensemble" in mode else "bc-rf"
            if mode.startswith("record"):
                target = "model" if mode == "record-direct" else "gateway"
                rec = subprocess.Popen(["perf", "record", "-F", "4999", "-g", "-o", "/tmp/record.data",
                                        "-p", pids[target]], stderr=subprocess.DEVNULL)
                bench(data, ["--direct"] if mode == "record-direct" else [], model)
                rec.send_signal(signal.SIGINT)
                rec.wait()
                continue
            watch = {name: subprocess.Popen(["perf", "stat", "-x,", "-e", ",".join(EVENTS), "-p", pids[name]],
                                            stderr=subprocess.PIPE, text=True) for name in (proxy, "model")}
            r = bench(data, extra, model)
            n = r["requests"]
            seen = {name: counts(p) for name, p in watch.items()}
            cost = "  ".join(f"{name} {c.get('task-clock', 0) * 1000 / n:6.1f} µs "
                             f"({c.get('raw_syscalls:sys_enter', 0) / n:.1f} syscalls, "
                             f"{c.get('context-switches', 0) / n:.2f} switches)"
                             for name, c in seen.items() if not (mode == "direct" and name == proxy))
            print(f"{mode:8} {r['rps']:8.0f} req/s  p50 {r['latency_ms']['p50']:.3f}  p99 {r['latency_ms']['p99']:.3f} ms"
                  f"  CPU per request: {cost}", flush=True)
    finally:
        if nginx:
            nginx.send_signal(signal.SIGTERM)
            nginx.wait()
        up.send_signal(signal.SIGTERM)
        up.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
