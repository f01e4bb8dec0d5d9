#!/usr/bin/env python3
"""Scaling policies, forecasters and the anomaly detector on the real traces, in one run.

    python3 scripts/bench_autoscale.py [--plot DIR]

Runs `target/release/mlmesh simulate --json` on the request-rate traces (NAB's AWS ELB request
count and EC2 network-in, the two Azure LLM arrival logs) with the default platform (100 ms
service time, 60 s replica start-up, p99 target 500 ms, 15 s decisions), and `mlmesh detect
--json` on every labelled NAB series. Prints Markdown tables; with --plot, writes each
simulation's SVG there; then hybrid's trade-off under other settings (SLO-violation time and
replica-hours against reactive). Standard library only.
"""

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXE = os.path.join(ROOT, "target", "release", "mlmesh")
DATA = os.path.join(ROOT, "..", "shared", "data", "traces")
LOAD = [
    "nab/realAWSCloudwatch/elb_request_count_8c0756.csv",
    "nab/realAWSCloudwatch/ec2_network_in_257a54.csv",
    "azure_llm_inference_2023/AzureLLMInferenceTrace_code.csv",
    "azure_llm_inference_2023/AzureLLMInferenceTrace_conv.csv",
]


def run(*args):
    out = subprocess.run([EXE, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    plot_dir = None
    if "--plot" in sys.argv:
        plot_dir = sys.argv[sys.argv.index("--plot") + 1]
        os.makedirs(plot_dir, exist_ok=True)

    print("| trace | points | policy | SLO violation (h) | replica-hours | dropped | forecaster | MASE | seconds |")
    print("|---|---:|---|---:|---:|---:|---|---:|---:|")
    forecasters = []
    for trace in LOAD:
        args = ["simulate", "--trace", os.path.join(DATA, trace), "--json"]
        if plot_dir:
            name = os.path.splitext(os.path.basename(trace))[0]
            args += ["--plot", os.path.join(plot_dir, f"simulate-{name}.svg")]
        started = time.time()
        r = run(*args)
        seconds = time.time() - started
        short = os.path.basename(trace)
        for policy in ("reactive", "predictive", "hybrid"):
            p = r["policies"][policy]
            mase = "" if p["mase"] is None else f"{p['mase']:.3f}"
            print(f"| {short} | {r['points']} | {policy} | {p['slo_violation_s'] / 3600:.2f} | {p['replica_hours']:.1f} "
                  f"| {p['dropped']} | {p['forecaster'] or ''} | {mase} | {seconds:.1f} |")
        re, hy = r["policies"]["reactive"], r["policies"]["hybrid"]
        cut = 1 - hy["slo_violation_s"] / re["slo_violation_s"] if re["slo_violation_s"] else float("nan")
        extra = hy["replica_hours"] / re["replica_hours"] - 1
        print(f"| {short} | | **hybrid vs reactive** | **{-cut * 100:+.0f}%** | **{extra * 100:+.1f}%** | | | | |")
        forecasters.append((short, r["horizon_steps"], r["step_s"], r["forecasters"]))

    # Hybrid's trade-off: how long its reactive part holds a scale-down (the default 300 s, or
    # the 75 s forecast horizon) and the forecast level it provisions for.
    print()
    settings = [("300 s", "0.5"), ("300 s", "0.4"), ("75 s", "0.5"), ("75 s", "0.45"), ("75 s", "0.4")]
    print("| hybrid hold | level | " + " | ".join(os.path.basename(t) for t in LOAD) + " |")
    print("|---|---|" + "---|" * len(LOAD))
    for hold, level in settings:
        cells = []
        for trace in LOAD:
            r = run("simulate", "--trace", os.path.join(DATA, trace), "--json", "--level", level,
                    "--hybrid-stabilisation", hold.replace(" ", ""))
            re, hy = r["policies"]["reactive"], r["policies"]["hybrid"]
            cut = hy["slo_violation_s"] / re["slo_violation_s"] - 1 if re["slo_violation_s"] else float("nan")
            extra = hy["replica_hours"] / re["replica_hours"] - 1
            cells.append(f"{cut * 100:+.0f}% / {extra * 100:+.1f}%")
        print(f"| {hold} | {level} | " + " | ".join(cells) + " |")

    print()
    print("| trace | horizon | " + " | ".join(f["forecaster"] for f in forecasters[0][3]) + " |")
    print("|---|---|" + "---:|" * len(forecasters[0][3]))
    for short, h, step, scores in forecasters:
        cells = " | ".join("" if s["mase"] is None else f"{s['mase']:.3f}" for s in scores)
        print(f"| {short} | {h} × {step:g} s | {cells} |")

    print()
    print("| NAB series | points | windows found | events | precision | recall | NAB-style score |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    labels = os.path.join(DATA, "nab", "combined_windows.json")
    total = []
    for key in sorted(json.load(open(labels))):
        r = run("detect", "--trace", os.path.join(DATA, "nab", key), "--labels", labels, "--json")
        e = r["evaluation"]
        total.append(e)
        print(f"| {key} | {r['points']} | {e['windows_found']}/{e['windows']} | {e['events']} | {e['precision']:.2f} "
              f"| {e['recall']:.2f} | {e['nab_score']:.1f} |")
    found = sum(e["windows_found"] for e in total)
    windows = sum(e["windows"] for e in total)
    events = sum(e["events"] for e in total)
    inside = sum(e["events_in_windows"] for e in total)
    mean = sum(e["nab_score"] for e in total) / len(total)
    print(f"| **all {len(total)}** | | **{found}/{windows}** | **{events}** | **{inside / max(events, 1):.2f}** "
          f"| **{found / windows:.2f}** | **{mean:.1f}** (mean) |")


if __name__ == "__main__":
    main()
