#!/usr/bin/env python3
"""Abuse control live: how fast an abusive key is throttled, and what its peers' latency does.

    python3 scripts/bench_abuse.py

Starts `target/release/mlmesh up` (abuse control on, defaults: 10× peers' median and at
least 50 calls/s), creates three predict keys, and has two of them call the gateway
(`GET /v1/ensembles`) ten times a second each throughout. After 10 s the third key floods
with 8 connections for 20 s, then stops. Prints, per phase, the normal clients' p50/p99
latency and refusals, the abuser's calls per second served and refused, and the time from
the flood's start to its first throttled answer and from its end to the throttle's lifting.
Standard library only.
"""

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXE = os.path.join(ROOT, "target", "release", "mlmesh")


def request(url, key, body=None, method=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main():
    tmp = tempfile.mkdtemp()
    data = os.path.join(tmp, "data")
    up = subprocess.Popen([EXE, "up", "--data-dir", data, "--port", "0"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        path = os.path.join(data, "endpoints.json")
        while not os.path.exists(path):
            time.sleep(0.1)
        e = json.load(open(path))
        gateway, autoscaler = e["gateway"], e["services"]["autoscaler"][0]
        admin = open(os.path.join(data, "admin.key")).read().strip()
        keys = [json.loads(request(f"{gateway}/v1/keys", admin, {"role": "predict"})[1]) for _ in range(3)]
        url = f"{gateway}/v1/ensembles"
        log = []  # (time, who, status, seconds)
        stop_all, stop_flood = threading.Event(), threading.Event()
        start = time.time()

        def normal(key):
            while not stop_all.is_set():
                t = time.time()
                status, _ = request(url, key)
                log.append((t - start, "normal", status, time.time() - t))
                time.sleep(0.1)

        def flood(key):
            while not stop_flood.is_set():
                t = time.time()
                status, body = request(url, key)
                log.append((t - start, "abuser", status, time.time() - t))

        threads = [threading.Thread(target=normal, args=(k["key"],)) for k in keys[:2]]
        for t in threads:
            t.start()
        time.sleep(10)
        flood_start = time.time() - start
        floods = [threading.Thread(target=flood, args=(keys[2]["key"],)) for _ in range(8)]
        for t in floods:
            t.start()
        time.sleep(20)
        stop_flood.set()
        for t in floods:
            t.join()
        flood_end = time.time() - start
        lifted = None
        while time.time() - start < flood_end + 60:
            _, body = request(f"{gateway}/v1/throttles", admin)
            if not json.loads(body)["throttles"]:
                lifted = time.time() - start
                break
            time.sleep(0.2)
        time.sleep(5)
        stop_all.set()
        for t in threads:
            t.join()
        abuse = json.loads(request(f"{autoscaler}/v1/abuse", admin)[1])
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)

    first_throttled = min((t for t, who, s, _ in log if who == "abuser" and s == 429), default=None)
    phases = [("before the flood", 0, flood_start), ("during the flood", flood_start, flood_end),
              ("after it", flood_end, 1e9)]
    print("| phase | normal p50 ms | normal p99 ms | normal refused | abuser served/s | abuser refused/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, a, b in phases:
        normal_lat = [d * 1000 for t, who, s, d in log if who == "normal" and a <= t < b and s == 200]
        refused = sum(1 for t, who, s, _ in log if who == "normal" and a <= t < b and s != 200)
        span = max(min(b, flood_end if b > 1e8 else b) - a, 1e-9) if name != "after it" else None
        served = sum(1 for t, who, s, _ in log if who == "abuser" and a <= t < b and s == 200)
        refused_a = sum(1 for t, who, s, _ in log if who == "abuser" and a <= t < b and s == 429)
        per = (lambda n: f"{n / span:.0f}") if span else (lambda n: "–")
        print(f"| {name} | {quantile(normal_lat, 0.5):.2f} | {quantile(normal_lat, 0.99):.2f} | {refused} "
              f"| {per(served)} | {per(refused_a)} |")
    print()
    print(f"flood from {flood_start:.1f} s to {flood_end:.1f} s; first throttled answer "
          f"{(first_throttled - flood_start) if first_throttled else float('nan'):.1f} s after it began; "
          f"throttle lifted {(lifted - flood_end) if lifted else float('nan'):.1f} s after it ended")
    print(json.dumps(abuse["events"], indent=1))


if __name__ == "__main__":
    main()
