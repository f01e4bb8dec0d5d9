#!/usr/bin/env python3
"""Data ingest: mlmesh's data service against pandas, on the same generated CSV, in one run.

    python3 scripts/bench_data.py [SIZE_MB] [RUNS]      (defaults: 100 MB, 3 runs)

mlmesh: a fresh `mlmesh serve data` (release build) per run; the file is streamed over HTTP on
127.0.0.1 and timed until the 201 (parsed twice, typed, statistics computed, written as
Parquet, fsynced, committed). Peak memory is the service process's VmHWM.
pandas: `pd.read_csv(path)` then `df.to_parquet(out)` (pyarrow, snappy) in a fresh Python
process per run; peak memory is its ru_maxrss. pandas and pyarrow are installed into
.bench-venv/ on first use.
"""

import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXE = os.path.join(ROOT, "target", "release", "mlmesh")
VENV = os.path.join(ROOT, ".bench-venv")
PY = os.path.join(VENV, "bin", "python")


def generate(path, size_mb):
    rng = random.Random(7)
    cats = ["red", "green", "blue", "cyan", "magenta"]
    with open(path, "w") as f:
        f.write("id,f1,f2,f3,f4,f5,f6,f7,f8,count,colour,flag,label\n")
        i = 0
        while f.tell() < size_mb * 1_000_000:
            lines = []
            for _ in range(10_000):
                floats = ",".join(f"{rng.gauss(0, 1):.6f}" for _ in range(8))
                count = "" if i % 97 == 0 else str(rng.randint(0, 10_000))
                lines.append(f"{i},{floats},{count},{rng.choice(cats)},{rng.random() < 0.5},{rng.randint(0, 1)}\n")
                i += 1
            f.write("".join(lines))
    return os.path.getsize(path)


def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def mlmesh_run(csv_path, size):
    with tempfile.TemporaryDirectory() as data_dir:
        proc = subprocess.Popen([EXE, "serve", "data", "--port", "0", "--data-dir", data_dir],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = None
        for line in proc.stderr:
            entry = json.loads(line)
            if entry.get("message") == "serving":
                url = entry["url"]
                break
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=600, blocksize=1 << 20)
        start = time.monotonic()
        with open(csv_path, "rb") as body:
            conn.request("POST", "/v1/datasets/bench?target=label", body=body,
                         headers={"Content-Length": str(size)})
            response = conn.getresponse()
            answer = json.loads(response.read())
        seconds = time.monotonic() - start
        assert response.status == 201, answer
        peak = vm_hwm_kib(proc.pid)
        proc.terminate()
        proc.wait(timeout=30)
        return seconds, peak, answer["rows"]


PANDAS = r"""
import resource, sys, time
import pandas as pd
start = time.monotonic()
df = pd.read_csv(sys.argv[1])
df.to_parquet(sys.argv[2], engine="pyarrow", compression="snappy")
print(time.monotonic() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, len(df))
"""


def pandas_run(csv_path, out_path):
    out = subprocess.run([PY, "-c", PANDAS, csv_path, out_path], check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), int(out[1]), int(out[2])


def main():
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    if not os.path.exists(PY):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([PY, "-m", "pip", "install", "-q", "pandas", "pyarrow"], check=True)
    versions = subprocess.run([PY, "-c", "import pandas, pyarrow; print(pandas.__version__, pyarrow.__version__)"],
                              check=True, capture_output=True, text=True).stdout.split()
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = os.path.join(tmp, "bench.csv")
        size = generate(csv_path, size_mb)
        results = {"mlmesh": [], "pandas": []}
        for _ in range(runs):
            results["mlmesh"].append(mlmesh_run(csv_path, size))
            results["pandas"].append(pandas_run(csv_path, os.path.join(tmp, "out.parquet")))
        rows = results["mlmesh"][0][2]
        assert all(r[2] == rows for side in results.values() for r in side)
        print(f"CSV: {size / 1e6:.1f} MB, {rows} rows, 13 columns; {runs} runs each, medians; "
              f"pandas {versions[0]}, pyarrow {versions[1]}")
        print("| tool | seconds | MB/s | peak RSS (MiB) |")
        print("|---|---|---|---|")
        for name, label in [("mlmesh", "mlmesh data service (HTTP upload → Parquet + stats, durable)"),
                            ("pandas", "pandas read_csv + to_parquet")]:
            secs = statistics.median(r[0] for r in results[name])
            peak = statistics.median(r[1] for r in results[name]) / 1024
            print(f"| {label} | {secs:.2f} | {size / 1e6 / secs:.0f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
