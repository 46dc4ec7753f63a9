"""The controller on a noisy steady load, simulated: plan changes per hour and over-provisioning.

``bench/ramp.py``'s closed loop (the real Controller and planner, a fake server counting Poisson arrivals)
on the CPU example as ``jigsaw experiment`` runs it (4 whole-CPU slices, headroom 0.3, interval 5 s,
applies of 2.2 s as measured there), against a steady rate with multiplicative noise per second (as
``examples/traces/noisy-60rps-cv0.2-120s.csv``), one trace and arrival draw per seed. A: the plain band
and gates (``noise_z`` 0, ``up_intervals`` 1: up as soon as the forecast or projection passes the plan,
down for the forecast as it is); B: the defaults (margins for the measured noise). Over-provisioning:
the demand planned for, averaged over time, against the trace's mean rate. Plan changes include the
shedding step-ups of the fake server, which sheds every request over the plan's demand at once (a real
server queues short bursts).

    python3 bench/ramp_noise.py --out bench/results/steady-cpu-2026-12-08/noise-sim.json
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ramp import Setup, simulate  # noqa: E402

from jigsawserve.orchestrator.spec.appspec import load_app  # noqa: E402
from jigsawserve.orchestrator.loop.controller import Policy  # noqa: E402
from jigsawserve.orchestrator.spec.gpus import gpu_type  # noqa: E402
from jigsawserve.orchestrator.serving.inventory import Inventory  # noqa: E402
from jigsawserve.orchestrator.planning.planner import PlanOptions  # noqa: E402
from jigsawserve.orchestrator.spec.profiles import load_profiles  # noqa: E402
from jigsawserve.orchestrator.workload.trace import Trace  # noqa: E402

CPU = ROOT / "examples" / "cpu"


def noisy(mean: float, cv: float, seconds: int, seed: int) -> Trace:
    """``mean`` req/s times (1 + ``cv`` N(0, 1)) per 1-s bin, at least 0."""
    rng = np.random.default_rng(seed)
    return Trace(1.0, np.maximum(0.0, mean * (1 + cv * rng.normal(size=seconds))))


def over_provisioning(run: dict[str, Any], trace: Trace) -> float:
    """The demand planned for, averaged over the trace's time, over its mean rate."""
    steps = [(0.0, run["initial_rps"])] + [(c["effective_s"], c["demand_rps"]) for c in run["changes"]]
    end = trace.duration_s
    area = sum(d * (min(t1, end) - min(t0, end)) for (t0, d), (t1, _) in zip(steps, steps[1:] + [(end, 0.0)]))
    return area / end / float(trace.rates.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON; the table goes next to it as .md")
    ap.add_argument("--mean", type=float, default=45.0, help="req/s (the noisy record's mean after --peak 60)")
    ap.add_argument("--cv", type=float, default=0.2, help="noise per 1-s bin, relative")
    ap.add_argument("--seconds", type=int, default=1200, help="per seed")
    ap.add_argument("--seeds", type=int, default=6)
    args = ap.parse_args()
    base = Policy(headroom=0.3)
    policies = {"A": replace(base, noise_z=0.0, up_intervals=1), "B": base}
    setup = Setup(load_app(CPU / "app.yaml"), load_profiles(CPU / "profiles.csv"), gpu_type("cpu"),
                  PlanOptions(gpus=4, time_limit=30.0), Inventory(gpus=(), source="none"), base)
    started, runs = time.time(), {key: [] for key in policies}
    for seed in range(args.seeds):
        trace = noisy(args.mean, args.cv, args.seconds, seed)
        for key, policy in policies.items():
            r = simulate(replace(setup, policy=policy, arrivals_seed=seed), trace, 5.0, 2.2)
            reasons = [c["reason"].split(":")[0] if c["reason"][:4] in ("surg", "shed") else
                       ("up" if " up " in c["reason"] else "down") for c in r["changes"]]
            runs[key].append({"seed": seed, "plan_changes": r["plan_changes"], "excess_pct": r["excess_pct"],
                              "over_provisioning": round(over_provisioning(r, trace), 3),
                              "by_reason": {k: reasons.count(k) for k in sorted(set(reasons))},
                              "changes": r["changes"]})
            print(f"seed {seed} {key}: {r['plan_changes']} changes {runs[key][-1]['by_reason']}", flush=True)
    hours = args.seeds * args.seconds / 3600
    rows = {}
    for key, rs in runs.items():
        by: dict[str, int] = {}
        for r in rs:
            for k, n in r["by_reason"].items():
                by[k] = by.get(k, 0) + n
        rows[key] = {"changes_per_hour": round(sum(r["plan_changes"] for r in rs) / hours, 1),
                     "by_reason_per_hour": {k: round(n / hours, 1) for k, n in sorted(by.items())},
                     "over_provisioning": round(float(np.mean([r["over_provisioning"] for r in rs])), 3),
                     "excess_pct": round(float(np.mean([r["excess_pct"] for r in rs])), 2)}
    command = shlex.join(["python3", "bench/ramp_noise.py", *sys.argv[1:]])
    md = [f"# The controller on a noisy steady load, simulated ({args.mean:g} req/s, {100 * args.cv:g}% per second)",
          "", f"Command: `{command}`; {args.seeds} seeds x {args.seconds} s.", "",
          f"A: {policies['A']!r}", "", f"B: {policies['B']!r}", "",
          "| policy | plan changes per hour | by reason, per hour | planned / mean rate | requests over capacity |",
          "|---|---:|---|---:|---:|"]
    for key, row in rows.items():
        reasons = ", ".join(f"{k} {n:g}" for k, n in row["by_reason_per_hour"].items()) or "-"
        md.append(f"| {key} | {row['changes_per_hour']:g} | {reasons} | {row['over_provisioning']:.2f} | "
                  f"{row['excess_pct']:.2f}% |")
    out = Path(args.out)
    out.write_text(json.dumps({"command": command, "policies": {k: repr(p) for k, p in policies.items()},
                               "mean_rps": args.mean, "cv": args.cv, "seconds": args.seconds, "seeds": args.seeds,
                               "summary": rows, "runs": runs, "python": platform.python_version(),
                               "wall_s": round(time.time() - started, 1)}, indent=1) + "\n")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
