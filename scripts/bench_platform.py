#!/usr/bin/env python3
"""Start-up time and idle memory of `mlmesh up` (release build).

    python3 scripts/bench_platform.py [RUNS]

Each run starts `mlmesh up` in a fresh data directory, times it until endpoints.json exists
(written only once every service is ready and registered), lets the platform idle for 3 s,
reads each process's resident memory from /proc, and stops it with SIGTERM.
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXE = os.path.join(ROOT, "target", "release", "mlmesh")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def one_run():
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        endpoints = os.path.join(data, "endpoints.json")
        start = time.monotonic()
        up = subprocess.Popen([EXE, "up", "--data-dir", data], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        while not os.path.exists(endpoints):
            if up.poll() is not None:
                sys.exit("mlmesh up exited early")
            time.sleep(0.002)
        ready_s = time.monotonic() - start
        time.sleep(3)
        with open(endpoints) as f:
            control = json.load(f)["control"]
        with open(os.path.join(data, "admin.key")) as f:
            key = f.read().strip()
        request = urllib.request.Request(control + "/v1/replicas",
                                         headers={"Authorization": "Bearer " + key})
        replicas = json.load(urllib.request.urlopen(request))["replicas"]
        memory = {r["service"]: rss_kib(r["pid"]) for r in replicas}
        memory["supervisor (up)"] = rss_kib(up.pid)
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=30)
        return ready_s, memory


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    times, memories = [], []
    for _ in range(runs):
        ready_s, memory = one_run()
        times.append(ready_s)
        memories.append(memory)
    print(f"mlmesh up → every service ready and registered, {runs} runs: "
          f"median {statistics.median(times) * 1000:.0f} ms, "
          f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms")
    print("| process | idle RSS (MiB), median |")
    print("|---|---|")
    for name in memories[0]:
        values = [m[name] for m in memories]
        print(f"| {name} | {statistics.median(values) / 1024:.1f} |")


if __name__ == "__main__":
    main()
