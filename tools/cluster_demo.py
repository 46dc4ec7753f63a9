"""``jigsaw demo --nodes N``: the CPU example served across N nodes of a real local Ray cluster.

A ``LocalCluster`` (a head node and N nodes, each its own raylet, on 127.0.0.1) with one tritonserver per node
(``ClusterServing``: a ``NodeServer`` actor per node serving that node's plan) and the front door on the head
node; the load generator replays the synthetic day through the front door with plain gRPC calls. The demand
is spread evenly, each node planned (``make_plan``) for 1/N of the day's peak plus headroom, so that every
node serves: ``cluster.plan_cluster`` packs a demand this small onto the fewest nodes (one, here). During the
replay each node's own controller (``ClusterServing.control``) replans that node for the arrivals its share
brings; the shares stay fixed: replanning the split across nodes is not done yet (the summary says so).

RUN/ holds profiles.csv, cluster-plan.json, requests.csv, summary.json and, per node, its repository, server
log and controller's events.jsonl under cluster/<node>/.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from orchestrator.appspec import AppSpec
from orchestrator.cluster import ClusterPlan
from orchestrator.controller import Policy
from orchestrator.gpus import gpu_type
from orchestrator.planner import PlanOptions, make_plan
from orchestrator.profiles import load_profiles
from orchestrator.ray_cluster import ClusterServing, LocalCluster, cluster_nodes
from tools.loadgen import run_load_apart
from tools.trace import arrivals, compress, scale_to_peak, synthetic_diurnal

HEADROOM = 0.3  # the first plan serves the peak x (1 + HEADROOM)
# the node controllers plan for 2x, as the single-node CPU demo's (cli.DEMO_HEADROOM): a day replayed in a
# minute can double its demand within one apply
CONTROL_HEADROOM = 1.0
CPUS_PER_NODE = 4  # CPU slices per node, as the single-node demo's 4
REPLANNING = ("per node: each node's controller replans it for the arrivals its fixed share brings; the split across "
              "nodes (the front door's shares) is not replanned yet")


def run(app: AppSpec, profiles_path: Path, nodes: int, out: Path, peak: float, duration: float,
        progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Serve ``app`` on ``nodes`` local Ray nodes, replay the day scaled to ``peak`` in ``duration`` s through
    the front door; the summary (also RUN/summary.json)."""
    out.mkdir(parents=True, exist_ok=True)
    profiles = load_profiles(profiles_path)
    times = arrivals(compress(scale_to_peak(synthetic_diurnal(), peak), duration))
    demand = peak * (1 + HEADROOM)
    progress(f"starting a local Ray cluster of {nodes} node(s) on 127.0.0.1")
    with LocalCluster(nodes, cpus=CPUS_PER_NODE, workdir=out / "cluster") as local, \
            ClusterServing(progress=progress) as serving:
        specs = cluster_nodes()
        plan = ClusterPlan(app.name, demand, {s.name: make_plan(app, profiles, gpu_type("cpu"), demand / len(specs),
                                                                PlanOptions(gpus=s.gpus)) for s in specs})
        plan.save(out / "cluster-plan.json")
        url = serving.start(plan)
        interval = max(2.0, duration / 20)
        progress(f"replaying {len(times)} requests over {duration:g} s through the front door {url}, "
                 f"peak {peak:g} req/s; a controller per node every {interval:g} s")
        result = run_load_apart(url, app.name, times, items=1, width=None, slo_ms=None, timeout_s=30.0,
                                on_progress=lambda p: progress(f"  load: {p.line()}"), progress_s=5.0,
                                on_start=lambda origin: serving.control(profiles, PlanOptions(), Policy(headroom=CONTROL_HEADROOM),
                                                                        interval, origin))
        result.write_csv(out / "requests.csv")
        stats, events = serving.stats(), serving.events()
        names = local.names
    load = result.summary()
    answered = load["ok"] + load["late"]
    summary = {
        "app": app.name, "nodes": nodes, "front_door": url, "duration_s": duration, "peak_rps": peak,
        "planned_rps": demand, "slices": plan.slices, "replanning": REPLANNING,
        "requests": {k: load[k] for k in ("requests", "ok", "late", "dropped", "error")},
        "slo_violation_rate": (load["requests"] - load["ok"]) / load["requests"] if load["requests"] else None,
        "answered": answered, "latency_ms": load["latency_ms"], "slo_ms": load["slo_ms"],
        "per_node": {n: {"slices": plan.nodes[n].slices if n in plan.nodes else 0,
                         "planned_rps": plan.nodes[n].demand_rps if n in plan.nodes else 0.0,
                         "share": plan.share(n), "requests": stats.get(n, {}).get("requests", 0),
                         "failed": stats.get(n, {}).get("failed", 0),
                         "plans": [[e["t"], e["demand_rps"], e["slices"]] for e in events.get(n, []) if e["kind"] == "plan"],
                         "controller_errors": [e.get("reason", "") for e in events.get(n, []) if e["kind"] != "plan"]}
                     for n in names},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A few readable lines of ``run``'s summary."""
    req, lat = summary["requests"], summary["latency_ms"]
    lines = [f"{summary['app']} on {summary['nodes']} node(s), {summary['slices']} slices for "
             f"{summary['planned_rps']:g} req/s; {req['requests']} requests through the front door: {req['ok']} ok, "
             f"{req['late']} late, {req['dropped']} dropped, {req['error']} errors; answered p50 {lat['p50']} ms, "
             f"p99 {lat['p99']} ms (SLO {summary['slo_ms']:g} ms)"]
    lines += [f"  {n}: {v['slices']} slices at first, share {v['share']:.2f}, {v['requests']} requests "
              f"({v['failed']} failed); {len(v['plans'])} replan(s)"
              + "".join(f", {d:.1f} req/s on {k} slices at {t:.0f} s" for t, d, k in v["plans"])
              for n, v in summary["per_node"].items()]
    lines.append(f"  replanning: {summary['replanning']}")
    return "\n".join(lines)
