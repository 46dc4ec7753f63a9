#!/usr/bin/env python3
"""Capacity search against a reference: for each app and each of the 8 feature sets, the maximum
serviceable demand at ``--gpus`` GPUs found by the default search (``jigsaw capacity``: ``--time-limit``
seconds in all) and by a reference search (the exact MILP in every probe, ``--reference-limit`` seconds
in all, each probe up to a sixth of it), and their ratio. The goal: the default search within 0.97 of
the reference on every row.

    python3 bench/capacity_reference.py --app examples/tagging.yaml --app examples/a100/chain.yaml \\
        --profiles examples/a100/profiles.csv --gpus 120 --out bench/results/capacity-reference.json

``--features`` (e.g. ``ast,at``) and ``--slo-factor`` (e.g. ``0.5,0.75``: the app's latency SLO scaled, as
``bench/slo_curve.py`` does) narrow the rows, to check points of the SLO curve against the reference.

Writes the JSON and a markdown table next to it (.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from jigsawserve.orchestrator.spec.appspec import load_app
from jigsawserve.orchestrator.planning.capacity import max_demand
from jigsawserve.orchestrator.planning.features import ALL_FEATURE_SETS, Features
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.planning.planner import PlanOptions
from jigsawserve.orchestrator.spec.profiles import default_gpu, load_profiles
from record import provenance, write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--app", action="append", required=True)
    ap.add_argument("--profiles", required=True)
    ap.add_argument("--gpus", type=int, default=120)
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--reference-limit", type=float, default=120.0)
    ap.add_argument("--features", default=None, help="comma-separated feature sets (default: all 8)")
    ap.add_argument("--slo-factor", default="1", help="comma-separated factors of the app's latency SLO")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    load_start = os.getloadavg()
    profiles = load_profiles(args.profiles)
    gpu = gpu_type(default_gpu(profiles))
    sets = [Features.parse(f) for f in args.features.split(",")] if args.features else ALL_FEATURE_SETS
    rows = []
    for path, factor in [(p, float(f)) for p in args.app for f in args.slo_factor.split(",")]:
        base = load_app(path)
        app = dataclasses.replace(base, latency_slo_ms=base.latency_slo_ms * factor)
        for feats in sets:
            fast = max_demand(app, profiles, gpu, PlanOptions(features=feats, gpus=args.gpus, time_limit=args.time_limit))
            ref = max_demand(app, profiles, gpu, PlanOptions(features=feats, gpus=args.gpus, method="milp",
                                                             time_limit=args.reference_limit))
            best = max(ref.max_demand_rps, fast.max_demand_rps)
            row = {"app": app.name, "slo_factor": factor, "latency_slo_ms": app.latency_slo_ms, "features": feats.label,
                   "default": {"max_demand_rps": fast.max_demand_rps, "seconds": fast.seconds, "probes": fast.probes,
                               "note": fast.note},
                   "reference": {"max_demand_rps": ref.max_demand_rps, "seconds": ref.seconds, "probes": ref.probes,
                                 "note": ref.note},
                   "ratio": fast.max_demand_rps / best if best > 0 else None}
            rows.append(row)
            print(f"{app.name} x{factor:g} {feats.label}: default {fast.max_demand_rps:.1f} ({fast.seconds:.1f} s), reference "
                  f"{ref.max_demand_rps:.1f} ({ref.seconds:.1f} s)", file=sys.stderr, flush=True)
    record = {**provenance(), "load": {"start": load_start, "end": os.getloadavg()}, "gpus": args.gpus, "gpu_type": gpu.name, "rows": rows}
    lines = ["| app | x SLO | features | default (req/s) | s | reference (req/s) | s | default / best of both |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else "-"
        lines.append(f"| {r['app']} | {r['slo_factor']:g} | {r['features']} | {r['default']['max_demand_rps']:.0f} | {r['default']['seconds']:.1f} | "
                     f"{r['reference']['max_demand_rps']:.0f} | {r['reference']['seconds']:.1f} | {ratio} |")
    lines.append(f"\nLoad average (1, 5, 15 min) on this machine: {_load(load_start)} at the start, "
                 f"{_load(record['load']['end'])} at the end.")
    write(args.out, record, lines)


def _load(avg: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.1f}" for x in avg)


if __name__ == "__main__":
    main()
