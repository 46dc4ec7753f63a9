#!/usr/bin/env python3
"""Planning over nodes: ``plan_cluster`` over ``--nodes`` nodes of ``--gpus-per-node`` GPUs against ``make_plan``
over one pool of all their GPUs, at the same demand: wall time, slices, GPUs and accuracy of both. Both ask for the
fewest slices that meet both SLOs (alpha 0, beta 1), so the difference in slices is the cost of keeping every
request's path inside one node.

    python3 bench/cluster_plan.py --app examples/tagging.yaml --app examples/a100/chain.yaml \\
        --profiles examples/a100/profiles.csv --out bench/results/cluster-plan.json

Demands are ``--fractions`` of the pool's capacity (``max_demand`` within ``--capacity-limit`` s, searched first);
each cluster plan within ``--time-limit`` s for the whole call (its capacity search per node size included), each
pool plan within ``--pool-time-limit`` s.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from jigsawserve.orchestrator.spec.appspec import load_app
from jigsawserve.orchestrator.planning.capacity import max_demand
from jigsawserve.orchestrator.planning.cluster import plan_cluster, uniform
from jigsawserve.orchestrator.errors import InfeasibleError
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan
from jigsawserve.orchestrator.spec.profiles import default_gpu, load_profiles
from record import provenance, write


def _pool(app, profiles, gpu, demand: float, gpus: int, limit: float) -> dict:
    began = time.perf_counter()
    try:
        plan = make_plan(app, profiles, gpu, demand, PlanOptions(alpha=0.0, beta=1.0, gpus=gpus, time_limit=limit))
    except InfeasibleError as exc:
        return {"wall_s": time.perf_counter() - began, "error": str(exc), "binding": exc.binding}
    return {"wall_s": time.perf_counter() - began, "method": plan.solver.get("method"), "slices": plan.slices,
            "gpus": plan.gpus, "accuracy": plan.accuracy, "fragmentation": plan.placement.get("fragmentation"),
            "gap": plan.solver.get("gap")}


def _cluster(app, profiles, gpu, demand: float, nodes: int, per_node: int, limit: float) -> dict:
    began = time.perf_counter()
    try:
        cp = plan_cluster(app, profiles, gpu, demand, uniform(nodes, per_node),
                          PlanOptions(alpha=0.0, beta=1.0, time_limit=limit))
    except InfeasibleError as exc:
        return {"wall_s": time.perf_counter() - began, "error": str(exc), "binding": exc.binding}
    used = sum(p.placement.get("slices_used", 0) + p.placement.get("free_slices", 0) for p in cp.nodes.values())
    free = sum(p.placement.get("free_slices", 0) for p in cp.nodes.values())
    chosen = next(s for s in cp.solver["splits"] if s.get("chosen"))
    return {"wall_s": time.perf_counter() - began, "capacity_s": cp.solver["capacity_seconds"],
            "node_capacity_rps": next(iter(cp.capacity_rps.values())), "nodes_used": len(cp.nodes),
            "slices": cp.slices, "gpus": cp.gpus, "accuracy": cp.accuracy,
            "fragmentation": free / used if used else 0.0,
            "split": f"{chosen['split']} over {chosen['nodes']}",
            "splits": [{k: v for k, v in t.items() if k != "error"} for t in cp.solver["splits"]],
            "node_methods": sorted({p.solver.get("method", "") for p in cp.nodes.values()}),
            "node_demands": {n: p.demand_rps for n, p in cp.nodes.items()},
            "node_slices": {n: p.slices for n, p in cp.nodes.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--app", action="append", required=True)
    ap.add_argument("--profiles", required=True)
    ap.add_argument("--nodes", type=int, default=15)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--time-limit", type=float, default=30.0, help="seconds per cluster plan (the whole call)")
    ap.add_argument("--pool-time-limit", type=float, default=10.0, help="seconds per pool plan")
    ap.add_argument("--capacity-limit", type=float, default=30.0, help="seconds for the pool's capacity search")
    ap.add_argument("--fractions", default="0.1,0.5,0.9,0.97")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    profiles = load_profiles(args.profiles)
    gpu = gpu_type(default_gpu(profiles))
    gpus = args.nodes * args.gpus_per_node
    rows, capacities = [], {}
    load_before = os.getloadavg()
    for path in args.app:
        app = load_app(path)
        cap = max_demand(app, profiles, gpu, PlanOptions(gpus=gpus, time_limit=args.capacity_limit)).max_demand_rps
        capacities[app.name] = cap
        for frac in (float(f) for f in args.fractions.split(",")):
            demand = cap * frac
            cluster = _cluster(app, profiles, gpu, demand, args.nodes, args.gpus_per_node, args.time_limit)
            pool = _pool(app, profiles, gpu, demand, gpus, args.pool_time_limit)
            rows.append({"app": app.name, "fraction": frac, "demand_rps": demand, "cluster": cluster, "pool": pool})
            print(f"{app.name} {frac:.0%} of {cap:.0f}: cluster {cluster} | pool {pool}", file=sys.stderr, flush=True)
    record = {**provenance(), "nodes": args.nodes, "gpus_per_node": args.gpus_per_node, "gpu_type": gpu.name,
              "time_limit_s": args.time_limit, "pool_time_limit_s": args.pool_time_limit,
              "pool_capacity_rps": capacities, "load_average": {"before": load_before, "after": os.getloadavg()},
              "rows": rows}
    lines = ["| app | demand (req/s) | % of pool capacity | cluster wall s (capacity s) | split | nodes | slices | "
             "GPUs | fragm. | accuracy | pool wall s | method | slices | GPUs | accuracy | slices + |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        c, p = r["cluster"], r["pool"]
        head = f"| {r['app']} | {r['demand_rps']:.0f} | {r['fraction']:.0%} |"
        cl = (f" {c['wall_s']:.1f} ({c['capacity_s']:.1f}) | {c['split']} | {c['nodes_used']} | {c['slices']} | "
              f"{c['gpus']} | {c['fragmentation']:.1%} | {c['accuracy']:.4f} |" if "error" not in c else
              f" {c['wall_s']:.1f} | no plan: {c['binding']} | | | | | |")
        po = (f" {p['wall_s']:.1f} | {p['method']} | {p['slices']} | {p['gpus']} | {p['accuracy']:.4f} |"
              if "error" not in p else f" {p['wall_s']:.1f} | no plan: {p['binding']} | | | |")
        extra = (f" {c['slices'] - p['slices']:+d} ({(c['slices'] - p['slices']) / p['slices']:+.1%}) |"
                 if "error" not in c and "error" not in p else " |")
        lines.append(head + cl + po + extra)
    lines.append("")
    for name, cap in capacities.items():
        node = max((r["cluster"]["node_capacity_rps"] for r in rows
                    if r["app"] == name and "error" not in r["cluster"]), default=0.0)
        lines.append(f"{name}: capacity {cap:.0f} req/s in one pool of {gpus} GPUs; {args.nodes} nodes x {node:.0f} = "
                     f"{args.nodes * node:.0f} req/s ({args.nodes * node / cap - 1:+.1%}; a node's capacity as its "
                     f"plan's search found it, the largest over the rows)")
    write(args.out, record, lines)


if __name__ == "__main__":
    main()
