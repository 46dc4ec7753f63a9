#!/usr/bin/env python3
"""Capacity over the latency SLO (the paper's Figure 3 regime): the maximum serviceable demand at
``--gpus`` GPUs for A+S+T and A+T (and optionally more feature sets) with the app's SLO scaled by each
factor, and the A+S+T / A+T ratio, which should rise as the SLO tightens (spatial partitions let the
fast small segments meet a tight budget that whole GPUs waste).

    python3 bench/slo_curve.py --app examples/tagging.yaml --app examples/a100/chain.yaml \\
        --app examples/a100/qa.yaml --profiles examples/a100/profiles.csv --gpus 120 \\
        --out bench/results/slo-curve.json

Each capacity search is the library's ``max_demand`` within ``--time-limit`` seconds. Writes the JSON,
a markdown table (same stem, .md) and a plot (.png).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from jigsawserve.orchestrator.spec.appspec import load_app
from jigsawserve.orchestrator.planning.capacity import max_demand
from jigsawserve.orchestrator.planning.features import Features
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.planning.planner import PlanOptions
from jigsawserve.orchestrator.spec.profiles import default_gpu, load_profiles
from record import provenance, write

FACTORS = (0.5, 0.625, 0.75, 1.0, 1.5, 2.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--app", action="append", required=True)
    ap.add_argument("--profiles", required=True)
    ap.add_argument("--gpus", type=int, default=120)
    ap.add_argument("--features", default="ast,at")
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    load_start = os.getloadavg()
    profiles = load_profiles(args.profiles)
    gpu = gpu_type(default_gpu(profiles))
    feats = [Features.parse(f) for f in args.features.split(",")]
    rows = []
    for path in args.app:
        base = load_app(path)
        for factor in FACTORS:
            app = dataclasses.replace(base, latency_slo_ms=base.latency_slo_ms * factor)
            row = {"app": base.name, "slo_factor": factor, "latency_slo_ms": app.latency_slo_ms}
            for f in feats:
                cap = max_demand(app, profiles, gpu, PlanOptions(features=f, gpus=args.gpus, time_limit=args.time_limit))
                row[f.label] = {"max_demand_rps": cap.max_demand_rps, "upper_rps": cap.upper_rps,
                                "seconds": cap.seconds, "probes": cap.probes, "note": cap.note}
                print(f"{base.name} x{factor:g} {f.label}: {cap.max_demand_rps:.1f} req/s in {cap.seconds:.1f} s",
                      file=sys.stderr, flush=True)
            a, b = row[feats[0].label]["max_demand_rps"], row[feats[-1].label]["max_demand_rps"]
            row["ratio"] = a / b if b > 0 else None
            rows.append(row)
    record = {**provenance(), "load": {"start": load_start, "end": os.getloadavg()}, "gpus": args.gpus, "gpu_type": gpu.name, "rows": rows}
    a_label, b_label = feats[0].label, feats[-1].label
    lines = [f"| app | SLO (ms) | x SLO | {a_label} (req/s) | {b_label} (req/s) | {a_label} / {b_label} | search s (max) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] else ("inf" if r[a_label]["max_demand_rps"] > 0 else "-")
        secs = max(r[f.label]["seconds"] for f in feats)
        lines.append(f"| {r['app']} | {r['latency_slo_ms']:g} | {r['slo_factor']:g} | {r[a_label]['max_demand_rps']:.0f} | "
                     f"{r[b_label]['max_demand_rps']:.0f} | {ratio} | {secs:.1f} |")
    lines.append(f"\nLoad average (1, 5, 15 min) on this machine: {_load(load_start)} at the start, "
                 f"{_load(record['load']['end'])} at the end.")
    write(args.out, record, lines)
    _plot(rows, a_label, b_label, args.out.with_suffix(".png"), args.gpus, gpu.name)


def _plot(rows: list[dict], a: str, b: str, out: Path, gpus: int, gpu: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for app in dict.fromkeys(r["app"] for r in rows):
        pts = [(r["slo_factor"], r["ratio"]) for r in rows if r["app"] == app and r["ratio"]]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=app)
    ax.set_xlabel("latency SLO, x the app's own")
    ax.set_ylabel(f"max demand {a} / {b}")
    ax.set_title(f"Capacity gain of spatial partitions over the SLO ({gpus} x {gpu}, planned)", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(title="app (apps with no A+T plan at an SLO have no point there)", fontsize=9, title_fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def _load(avg: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.1f}" for x in avg)


if __name__ == "__main__":
    main()
