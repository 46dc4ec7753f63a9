#!/usr/bin/env python3
"""Planning time at datacenter scale: each plan at ``--gpus`` GPUs within ``--time-limit`` seconds (the
default objective, alpha 1 and beta scaled to the cluster) against a reference plan of the same demand
solved for up to ``--reference-limit`` seconds: wall time, method, slices, accuracy and the objective
(exact definitions) of both, and the gap the plan states (``solver.gap``: its objective's distance from the
solver's bound, in slices' worth over its slices).

    python3 bench/plan_time.py --app examples/tagging.yaml --app examples/a100/chain.yaml \\
        --profiles examples/a100/profiles.csv --gpus 120 --out bench/results/plan-time.json

Demands are ``--fractions`` of each app's capacity (``jigsaw capacity`` within 30 s, searched first).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from jigsawserve.orchestrator.spec.appspec import load_app
from jigsawserve.orchestrator.planning.capacity import max_demand
from jigsawserve.orchestrator.errors import InfeasibleError
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan
from jigsawserve.orchestrator.spec.profiles import default_gpu, load_profiles
from record import provenance, write


def _run(app, profiles, gpu, demand: float, opts: PlanOptions) -> dict:
    began = time.perf_counter()
    try:
        plan = make_plan(app, profiles, gpu, demand, opts)
    except InfeasibleError as exc:
        return {"wall_s": time.perf_counter() - began, "error": str(exc), "binding": exc.binding}
    w = opts.weights(gpu)
    return {"wall_s": time.perf_counter() - began, "method": plan.solver.get("method"),
            "slices": plan.slices, "accuracy": plan.accuracy, "objective": w.alpha * plan.accuracy - w.beta * plan.slices,
            "gap": plan.solver.get("gap")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--app", action="append", required=True)
    ap.add_argument("--profiles", required=True)
    ap.add_argument("--gpus", type=int, default=120)
    ap.add_argument("--time-limit", type=float, default=1.0)
    ap.add_argument("--reference-limit", type=float, default=60.0)
    ap.add_argument("--fractions", default="0.1,0.5,0.9")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    load_start = os.getloadavg()
    profiles = load_profiles(args.profiles)
    gpu = gpu_type(default_gpu(profiles))
    rows = []
    for path in args.app:
        app = load_app(path)
        cap = max_demand(app, profiles, gpu, PlanOptions(gpus=args.gpus, time_limit=30.0)).max_demand_rps
        for frac in (float(f) for f in args.fractions.split(",")):
            demand = cap * frac
            fast = _run(app, profiles, gpu, demand, PlanOptions(gpus=args.gpus, time_limit=args.time_limit))
            ref = _run(app, profiles, gpu, demand, PlanOptions(gpus=args.gpus, time_limit=args.reference_limit))
            rows.append({"app": app.name, "fraction": frac, "demand_rps": demand, "plan": fast, "reference": ref})
            print(f"{app.name} {frac:.0%} of {cap:.0f}: {fast} | reference {ref}", file=sys.stderr, flush=True)
    record = {**provenance(), "load": {"start": load_start, "end": os.getloadavg()}, "gpus": args.gpus, "gpu_type": gpu.name, "rows": rows}
    lines = ["| app | demand (req/s) | plan wall s | method | slices | accuracy | stated gap | reference wall s | slices | "
             "accuracy | objective gap |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        p, q = r["plan"], r["reference"]
        if "error" in p or "error" in q:
            lines.append(f"| {r['app']} | {r['demand_rps']:.0f} | {p['wall_s']:.2f} | {p.get('binding', p.get('method'))} | | | | "
                         f"{q['wall_s']:.2f} | {q.get('binding', '')} | | |")
            continue
        gap = q["objective"] - p["objective"]
        stated = f"{p['gap']:.1%}" if p.get("gap") is not None else "-"
        lines.append(f"| {r['app']} | {r['demand_rps']:.0f} | {p['wall_s']:.2f} | {p['method']} | {p['slices']} | "
                     f"{p['accuracy']:.4f} | {stated} | {q['wall_s']:.2f} | {q['slices']} | {q['accuracy']:.4f} | {gap:+.5f} |")
    lines.append(f"\nLoad average (1, 5, 15 min) on this machine: {_load(load_start)} at the start, "
                 f"{_load(record['load']['end'])} at the end.")
    write(args.out, record, lines)


def _load(avg: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.1f}" for x in avg)


if __name__ == "__main__":
    main()
