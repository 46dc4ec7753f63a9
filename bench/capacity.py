#!/usr/bin/env python3
"""Analytical evaluation as the paper's Figure 3: maximum serviceable demand per feature set.

For each of the 8 feature sets (none, T, A, A+T, S, S+T, A+S, A+S+T) this bisects, with the
library's ``jigsawserve.orchestrator.planning.capacity.max_demand``, the largest request rate a cluster of ``--gpus``
GPUs can serve within both SLOs, normalises it to ``none`` and records the solver effort.

    python3 bench/capacity.py [--app examples/tagging.yaml] [--profiles examples/a100/profiles.csv]
                              [--gpus 120] [--out bench/results/capacity-120gpus.json]

Progress goes to stderr; the JSON goes to --out, a PNG bar chart next to it (same stem, .png),
and a markdown table to stdout.

Planning is the library's alone. The only addition is instrumentation: ``make_plan`` as seen by
``jigsawserve.orchestrator.planning.capacity`` is wrapped so that each bisection probe's wall time, outcome and solver
method/status are recorded (the library keeps only each probe's wall time and the final plan).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

import jigsawserve.orchestrator.planning.capacity as capacity_mod
from jigsawserve.orchestrator.spec.appspec import load_app
from jigsawserve.orchestrator.planning.capacity import max_demand
from jigsawserve.orchestrator.errors import InfeasibleError
from jigsawserve.orchestrator.planning.features import ALL_FEATURE_SETS
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.planning.planner import METHODS, PlanOptions
from jigsawserve.orchestrator.spec.profiles import default_gpu, load_profiles

# As reported in the paper (Figure 3, Gurobi); 21.6 / 1.9 of the rounded figures is 11.37.
PAPER = {"A+S+T/none": 21.6, "A+T/none": 1.9, "A+S+T/A+T": 11.3}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _ProbeRecorder:
    """Wraps make_plan (as imported by jigsawserve.orchestrator.planning.capacity) to record each probe."""

    def __init__(self) -> None:
        self.inner = capacity_mod.make_plan
        self.probes: list[dict] = []

    def __call__(self, app, profiles, gpu, demand, opts):
        start = time.perf_counter()
        try:
            plan = self.inner(app, profiles, gpu, demand, opts)
        except InfeasibleError as exc:
            self.probes.append({"demand_rps": demand, "fits": False, "binding": exc.binding,
                                "message": str(exc), "wall_s": time.perf_counter() - start})
            raise
        self.probes.append({"demand_rps": demand, "fits": True, "slices": plan.slices,
                            "solve_s": plan.solve_seconds, "wall_s": time.perf_counter() - start,
                            "method": plan.solver.get("method"), "status": plan.solver.get("status")})
        return plan

    def __enter__(self) -> "_ProbeRecorder":
        capacity_mod.make_plan = self
        return self

    def __exit__(self, *exc) -> None:
        capacity_mod.make_plan = self.inner


def _hit_limit(method: str | None, status: str | None) -> bool:
    return method in ("relax+round", "milp (time limit)") or status == "user_limit"


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(args: argparse.Namespace) -> dict:
    app = load_app(args.app)
    profiles = load_profiles(args.profiles)
    gpu = gpu_type(args.gpu_type or default_gpu(profiles))
    rows = []
    for feats in ALL_FEATURE_SETS:
        opts = PlanOptions(features=feats, gpus=args.gpus, method=args.method, time_limit=args.time_limit)
        _log(f"[{feats.label}] bisecting the demand for {app.name} on {args.gpus} {gpu.name} GPU(s)")
        with _ProbeRecorder() as rec:
            cap = max_demand(app, profiles, gpu, opts, progress=_log)
        solved = [p["solve_s"] for p in rec.probes if p["fits"]]
        walls = [p["wall_s"] for p in rec.probes]
        plan = cap.plan
        limited = [p for p in rec.probes if p["fits"] and _hit_limit(p["method"], p["status"])]
        row = {
            "features": feats.label,
            "max_demand_rps": cap.max_demand_rps,
            "probes": cap.probes,
            "probe_seconds": cap.probe_seconds,
            "max_solve_s": max(solved, default=0.0),
            "median_solve_s": statistics.median(solved) if solved else 0.0,
            "max_probe_wall_s": max(walls, default=0.0),
            "median_probe_wall_s": statistics.median(walls) if walls else 0.0,
            "total_s": cap.seconds,
            "slices": plan.slices if plan else 0,
            "gpus_used": plan.gpus if plan else 0,
            "accuracy": plan.accuracy if plan else None,
            "method": plan.solver.get("method") if plan else None,
            "status": plan.solver.get("status") if plan else None,
            "probes_hit_time_limit": len(limited),
            "probe_log": rec.probes,
            "plan": plan.to_json() if plan else None,
        }
        rows.append(row)
        _log(f"[{feats.label}] max demand {cap.max_demand_rps:.1f} req/s, {row['slices']} slices, "
             f"accuracy {row['accuracy'] if row['accuracy'] is not None else float('nan'):.4f}, "
             f"{cap.probes} solves, {cap.seconds:.1f} s, plan solver {row['method']}/{row['status']}"
             + (f", {len(limited)} probe(s) at the time limit" if limited else ""))
    base = next(r for r in rows if r["features"] == "none")["max_demand_rps"]
    for r in rows:
        r["normalised"] = r["max_demand_rps"] / base if base > 0 else None
    by = {r["features"]: r["max_demand_rps"] for r in rows}
    ratio = lambda a, b: by[a] / by[b] if by[b] > 0 else None  # noqa: E731
    return {
        "app": app.name, "app_path": args.app, "profiles": args.profiles, "gpu_type": gpu.name,
        "gpus": args.gpus, "slices_available": args.gpus * gpu.slices,
        "method": args.method, "time_limit_s": args.time_limit,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "cpu_model": _cpu_model(),
                    "python": platform.python_version(), "platform": platform.platform(),
                    "cvxpy": _version("cvxpy"), "highspy": _version("highspy")},
        "ratios": {"A+S+T/none": ratio("A+S+T", "none"), "A+T/none": ratio("A+T", "none"),
                   "A+S+T/A+T": ratio("A+S+T", "A+T")},
        "paper": PAPER,
        "results": rows,
    }


def table(doc: dict) -> str:
    lines = ["| features | max demand (req/s) | × none | solves | max solve (s) | median solve (s) "
             "| max probe wall (s) | total (s) | slices | accuracy | solver (plan at max) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in doc["results"]:
        norm = f"{r['normalised']:.2f}" if r["normalised"] is not None else "n/a"
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "n/a"
        solver = f"{r['method']} / {r['status']}" if r["method"] else "no plan"
        if r["probes_hit_time_limit"]:
            solver += f" ({r['probes_hit_time_limit']} probe(s) at time limit)"
        lines.append(f"| {r['features']} | {r['max_demand_rps']:.1f} | {norm} | {r['probes']} "
                     f"| {r['max_solve_s']:.2f} | {r['median_solve_s']:.2f} | {r['max_probe_wall_s']:.2f} "
                     f"| {r['total_s']:.1f} | {r['slices']} | {acc} | {solver} |")
    rt, pp = doc["ratios"], doc["paper"]
    fmt = lambda v: f"{v:.2f}x" if v is not None else "n/a"  # noqa: E731
    lines.append("")
    lines.append(f"A+S+T / none = {fmt(rt['A+S+T/none'])} (paper {pp['A+S+T/none']}x); "
                 f"A+T / none = {fmt(rt['A+T/none'])} (paper {pp['A+T/none']}x); "
                 f"A+S+T / A+T = {fmt(rt['A+S+T/A+T'])} (paper {pp['A+S+T/A+T']}x)")
    return "\n".join(lines)


def plot(doc: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["features"] for r in doc["results"]]
    vals = [r["normalised"] or 0.0 for r in doc["results"]]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    bars = ax.bar(labels, vals, color=["#999999" if "S" not in lab else "#3b75af" for lab in labels])
    for b, v in zip(bars, vals):
        ax.annotate(f"{v:.2f}x", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom",
                    fontsize=9, xytext=(0, 2), textcoords="offset points")
    ax.set_ylabel("max serviceable demand (normalised to none)")
    ax.set_xlabel("feature set (A: accuracy scaling, S: spatial partitions, T: task-graph budgets)")
    ax.set_title(f"{doc['app']} on {doc['gpus']} {doc['gpu_type']} GPUs (HiGHS, {doc['time_limit_s']:g} s limit)")
    ax.set_ylim(0, max(vals) * 1.12 if vals and max(vals) > 0 else 1)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--app", default="examples/tagging.yaml")
    ap.add_argument("--profiles", default="examples/a100/profiles.csv")
    ap.add_argument("--gpu-type", default=None)
    ap.add_argument("--gpus", type=int, default=120)
    ap.add_argument("--method", choices=METHODS, default="auto")
    ap.add_argument("--time-limit", type=float, default=PlanOptions().time_limit,
                    help="seconds the exact MILP may take per solve (library default)")
    ap.add_argument("--out", default=None, help="JSON output (default bench/results/capacity-<N>gpus.json)")
    ap.add_argument("--png", default=None, help="bar chart (default: --out with .png)")
    args = ap.parse_args(argv)
    out = Path(args.out or f"bench/results/capacity-{args.gpus}gpus.json")
    png = Path(args.png) if args.png else out.with_suffix(".png")

    doc = run(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    _log(f"wrote {out}")
    try:
        plot(doc, png)
        _log(f"wrote {png}")
    except ImportError:
        _log("matplotlib is not installed (pip install matplotlib): no chart written")
    print(table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
