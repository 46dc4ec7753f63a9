"""The least mean GPU slices any controller could reach on the H200 runs' day: an oracle that knows each
trace bin's rate and runs, for every bin, the plan the controller would make for that rate x (1 + headroom),
applied at no cost. With headroom 0 it is a floor for the runs' mean slices (`bench/h200_eval.py`: same
trace, same planner options), per app and per number of GPUs (the peak scaled with the GPUs).

    python3 bench/slice_floor.py --out bench/results/slice-floor.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jigsawserve.orchestrator.spec.appspec import AppSpec, load_app  # noqa: E402
from jigsawserve.orchestrator.loop.controller import Policy  # noqa: E402
from jigsawserve.orchestrator.errors import InfeasibleError  # noqa: E402
from jigsawserve.orchestrator.planning.features import Features  # noqa: E402
from jigsawserve.orchestrator.spec.gpus import gpu_type  # noqa: E402
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan  # noqa: E402
from jigsawserve.orchestrator.spec.profiles import Profiles, default_gpu, load_profiles  # noqa: E402
from jigsawserve.orchestrator.workload.trace import scale_to_peak, synthetic_diurnal  # noqa: E402

# the H200 runs of f789673 and 8a61e13 (2026-11-29): trace peak on one GPU and the controller's headroom
RUNS = {"social": (663.1, 0.4), "traffic": (369.1, 0.5), "ar": (105.7, 0.5)}


def oracle_slices(app: AppSpec, profiles: Profiles, gpus: int, headroom: float, step: float) -> dict:
    """Mean slices (and their share of the GPUs' slices) over the day's bins when every bin runs the
    controller's plan for its rate x (1 + headroom); rates rounded up to ``step`` req/s so that
    plans are reused. A bin no plan fits on the GPUs counts every slice and is listed."""
    gpu = gpu_type(default_gpu(profiles))
    peak = RUNS[app.name][0] * gpus
    rates = scale_to_peak(synthetic_diurnal(), peak).rates
    # as the controller plans: the stages' admission reserve left out of the SLO
    opts = PlanOptions(features=Features.parse("ast"), gpus=gpus, latency_reserve=Policy().admission_reserve)
    total = gpu.slices * gpus
    cache: dict[float, int | None] = {}
    slices, over = [], 0
    for rate in rates:
        demand = max(step, step * -(-rate * (1 + headroom) // step))
        if demand not in cache:
            try:
                cache[demand] = make_plan(app, profiles, gpu, demand, opts).slices
            except InfeasibleError:
                cache[demand] = None
        s = cache[demand]
        over += s is None
        slices.append(total if s is None else s)
    mean = sum(slices) / len(slices)
    return {"app": app.name, "gpus": gpus, "peak_rps": peak, "headroom": headroom, "bins": len(rates),
            "mean_slices": mean, "share": mean / total, "least": min(slices), "most": max(slices),
            "least_share": min(slices) / total, "bins_unplannable": over, "plans_solved": len(cache)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default="examples/h200/profiles.refined2.csv", help="run from the repository root")
    ap.add_argument("--gpus", default="1,2,4", help="GPU counts; the trace's peak scales with them")
    ap.add_argument("--step", type=float, default=2.0, help="rates rounded up to this many req/s")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    profiles = load_profiles(args.profiles)
    rows = []
    for app_name, (_, run_headroom) in RUNS.items():
        app = load_app(ROOT / "examples" / "h200" / f"{app_name}.yaml")
        for gpus in (int(g) for g in args.gpus.split(",")):
            for headroom in (0.0, run_headroom):
                t0 = time.time()
                r = oracle_slices(app, profiles, gpus, headroom, args.step * gpus)
                r["seconds"] = round(time.time() - t0, 1)
                rows.append(r)
                print(f"{app_name} x{gpus} GPU(s) headroom {headroom:g}: {100 * r['share']:.1f}% of the slices "
                      f"(least {100 * r['least_share']:.1f}%), {r['bins_unplannable']} bins unplannable, "
                      f"{r['plans_solved']} plans in {r['seconds']} s", flush=True)
    out = Path(args.out)
    out.write_text(json.dumps({"profiles": args.profiles, "step_rps_per_gpu": args.step, "rows": rows}, indent=1) + "\n")
    lines = ["| app | GPUs | trace peak (req/s) | headroom | mean slices | least | bins no plan fits |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['app']} | {r['gpus']} | {r['peak_rps']:.1f} | {r['headroom']:g} | "
                     f"{100 * r['share']:.1f}% | {100 * r['least_share']:.1f}% | {r['bins_unplannable']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
