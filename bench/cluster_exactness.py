#!/usr/bin/env python3
"""How close ``plan_cluster``'s split comes to the best one: random CPU clusters (2-3 nodes of 3-8 CPU slices, the
CPU example app and profiles) at random demands up to their capacity, each planned for the fewest slices (MILP)
and compared with an exhaustive search over every split of the demand into integers (``tests/test_cluster_plan``:
each node size's fewest slices at every integer demand, from the MILP, nondecreasing so filled by bisection).

    python3 bench/cluster_exactness.py --n 40 --seed 1 --out bench/results/cluster-exactness.json

The planner's splits are not integral: the best integer split of demand - nodes is a lower bound on any split's
slices (each rounded down per node). Its searches (capacity, each level's reach) stop within 0.5%: "within
tolerance" means above the best integer split of the demand but at most that of 1% more demand.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.append(str(ROOT))

from test_cluster_plan import (CPU, CPU_APP, CPU_PROFILES, FEWEST, NONE, best_integer_split,  # noqa: E402
                               integer_steps)
from jigsawserve.orchestrator.spec.appspec import load_app  # noqa: E402
from jigsawserve.orchestrator.planning.cluster import NodeSpec, plan_cluster  # noqa: E402
from jigsawserve.orchestrator.serving.inventory import Inventory  # noqa: E402
from jigsawserve.orchestrator.spec.profiles import load_profiles  # noqa: E402
from record import provenance, write  # noqa: E402

SIZES = range(3, 9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    app, profiles = load_app(CPU_APP), load_profiles(CPU_PROFILES)
    began = time.perf_counter()
    steps = {g: integer_steps(app, profiles, CPU, g, 3 * 1400) for g in SIZES}
    capacity = {g: int(np.argmax(s >= NONE)) - 1 for g, s in steps.items()}
    print(f"steps in {time.perf_counter() - began:.0f} s; capacity per node size {capacity}", file=sys.stderr)
    rng = random.Random(args.seed)
    rows = []
    for _ in range(args.n):
        sizes = [rng.choice(SIZES) for _ in range(rng.choice((2, 3)))]
        demand = rng.randint(200, sum(capacity[g] for g in sizes))
        low, best, high = (best_integer_split([steps[g] for g in sizes], d)
                           for d in (demand - len(sizes), demand, int(np.ceil(demand * 1.01))))
        nodes = [NodeSpec(f"n{i}", Inventory((), "bench"), g) for i, g in enumerate(sizes)]
        t = time.perf_counter()
        cluster = plan_cluster(app, profiles, CPU, demand, nodes, FEWEST)
        chosen = next(s for s in cluster.solver["splits"] if s.get("chosen"))
        rows.append({"sizes": sizes, "demand_rps": demand, "best_low": low, "best": best, "best_high": high,
                     "slices": cluster.slices, "wall_s": time.perf_counter() - t,
                     "split": f"{chosen['split']} over {chosen['nodes']}"})
        print(rows[-1], file=sys.stderr, flush=True)
    walls = sorted(r["wall_s"] for r in rows)
    count = {"equal": sum(r["slices"] == r["best"] for r in rows),
             "below": sum(r["best_low"] <= r["slices"] < r["best"] for r in rows),
             "within": sum(r["best"] < r["slices"] <= r["best_high"] for r in rows),
             "above": sum(r["slices"] > r["best_high"] for r in rows),
             "invalid": sum(r["slices"] < r["best_low"] for r in rows)}
    record = {**provenance(), "seed": args.seed, "capacity_rps": capacity, "counts": count, "rows": rows}
    lines = ["| instances | equal to the best integer split | below it (not integral) | above, within tolerance | "
             "above that | below the lower bound | plan wall p50 s | max s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| {len(rows)} | {count['equal']} | {count['below']} | {count['within']} | {count['above']} | "
             f"{count['invalid']} | {walls[len(walls) // 2]:.1f} | {walls[-1]:.1f} |", ""]
    for r in (r for r in rows if r["slices"] != r["best"]):
        more = "no split" if r["best_high"] >= NONE else r["best_high"]
        lines.append(f"- {r['sizes']} at {r['demand_rps']} req/s: {r['slices']} slices ({r['split']}); the best "
                     f"integer split {r['best']}, of {r['demand_rps'] - len(r['sizes'])} req/s {r['best_low']}, of "
                     f"1% more demand {more}")
    write(args.out, record, lines)


if __name__ == "__main__":
    main()
