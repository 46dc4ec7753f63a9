"""``jigsaw demo --nodes N``: the CPU example served across N nodes of a real local Ray cluster, replanned live.

A ``LocalCluster`` (a head node and N nodes, each its own raylet, on 127.0.0.1) with one tritonserver per node
(``ClusterServing``: a ``NodeServer`` actor per node serving that node's plan) and the front door on the head
node; the load generator replays the synthetic day through the front door with plain gRPC calls. The cluster
controller (``cluster_control.ClusterController``) measures the demand at the front door and replans the split
across the nodes (``plan_cluster``, spread over every node: ``spread_plan``), applying each new plan node by node.
At the CPU demo's demand ``plan_cluster`` alone would put everything on one node (its fewest slices): spread, a
node lost leaves the others serving. Actions can be timed into the replay (the
benchmark's node loss, ``bench/node_loss.py``, passes what to do and when as ``during``).

RUN/ holds profiles.csv, cluster-plan.json (the first plan), requests.csv, cluster-events.jsonl (the cluster
controller's decisions), summary.json, the per-node plots (``orchestrator/reporting/cluster_report.py``) and, per node, its
repository and server log under cluster/<node>/.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jigsawserve.orchestrator.spec.appspec import AppSpec
from jigsawserve.orchestrator.loop.cluster_control import ClusterController, spread_plan
from jigsawserve.orchestrator.loop.controller import EventLog, Policy
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.planning.planner import PlanOptions
from jigsawserve.orchestrator.spec.profiles import load_profiles
from jigsawserve.orchestrator.serving.ray_cluster import ClusterServing, LocalCluster, cluster_nodes
from jigsawserve.orchestrator.reporting import cluster_report
from jigsawserve.orchestrator.workload.loadgen import Progress, run_load_apart
from jigsawserve.orchestrator.workload.trace import arrivals, compress, scale_to_peak, synthetic_diurnal

HEADROOM = 0.3  # the first plan serves the peak x (1 + HEADROOM)
# the controller plans for 2x, as the single-node CPU demo's (cli.DEMO_HEADROOM): a day replayed in a minute can
# double its demand within one apply
CONTROL_HEADROOM = 1.0
CPUS_PER_NODE = 4  # CPU slices per node, as the single-node demo's 4
EVENTS_FILE = "cluster-events.jsonl"
PROGRESS_S = 5.0  # seconds between the load's progress lines
TICK_S = 0.5  # with actions timed into the replay: how often the driver looks whether one is due
# (seconds into the replay, what it does in words, the call): run during the replay (``run``'s ``during``)
Action = tuple[float, str, Callable[[LocalCluster, ClusterServing], None]]
REPLANNING = ("cluster: the controller measures the demand at the front door and replans the split across the nodes "
              "(plan_cluster, spread over every live node), applying it node by node; nodes lost or added are "
              "replanned around at once")


def run(app: AppSpec, profiles_path: Path, nodes: int, out: Path, peak: float, duration: float,
        progress: Callable[[str], None] = print, times: np.ndarray | None = None,
        during: list[Action] = ()) -> dict[str, Any]:
    """Serve ``app`` on ``nodes`` local Ray nodes, replay the day scaled to ``peak`` in ``duration`` s (or the
    arrival ``times`` given) through the front door while the cluster controller replans; each of ``during``
    (seconds into the replay, what it does, the call: a node removed, one added...) is run at its time. The
    summary (also RUN/summary.json)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / EVENTS_FILE).unlink(missing_ok=True)
    profiles = load_profiles(profiles_path)
    if times is None:
        times = arrivals(compress(scale_to_peak(synthetic_diurnal(), peak), duration))
    demand = peak * (1 + HEADROOM)
    policy = Policy(headroom=CONTROL_HEADROOM)
    opts = PlanOptions(latency_reserve=policy.admission_reserve)
    interval = max(2.0, duration / 20)
    stop, controlling = threading.Event(), []
    pending = sorted(during, key=lambda a: a[0])
    shown = [-PROGRESS_S]  # when the last progress line was shown (s into the replay)
    progress(f"starting a local Ray cluster of {nodes} node(s) on 127.0.0.1")
    with LocalCluster(nodes, cpus=CPUS_PER_NODE, workdir=out / "cluster") as local, \
            ClusterServing(progress=progress) as serving:
        plan = spread_plan(app, profiles, gpu_type("cpu"), demand, cluster_nodes(), nodes, opts)
        plan.save(out / "cluster-plan.json")
        url = serving.start(plan)

        def begin(origin: float) -> None:
            controller = ClusterController(app, profiles, gpu_type("cpu"), serving, EventLog(out / EVENTS_FILE, origin),
                                           opts, policy, spread=nodes, progress=progress)
            thread = threading.Thread(target=controller.run, args=(interval, stop), name="jigsaw-cluster-control",
                                      daemon=True)
            controlling.extend([controller, thread])
            thread.start()

        def tick(p: Progress) -> None:
            """In the driver's main thread (Ray starts a node's processes from there only): the actions due."""
            while pending and controlling and time.time() >= controlling[0].events.origin + pending[0][0]:
                _, what, call = pending.pop(0)
                controlling[0].events.write("action", what=what)
                progress(what)
                call(local, serving)
            if p.elapsed_s - shown[0] >= PROGRESS_S or p.in_flight == 0 and p.sent == len(times):
                shown[0] = p.elapsed_s
                progress(f"  load: {p.line()}")

        progress(f"replaying {len(times)} requests over {times[-1] if len(times) else 0:.0f} s through the front door "
                 f"{url}, peak {peak:g} req/s; the cluster controller every {interval:g} s")
        try:
            result = run_load_apart(url, app.name, times, items=1, width=None, slo_ms=None, timeout_s=30.0,
                                    on_progress=tick, progress_s=TICK_S if during else PROGRESS_S, on_start=begin)
        finally:
            stop.set()
            if controlling:
                controlling[1].join()
        result.write_csv(out / "requests.csv")
        controller, names = controlling[0], list(local.names)
        controller.events.write("final", nodes={n: {k: s[k] for k in ("requests", "failed", "up", "weight")}
                                                for n, s in serving.stats().items()})
    load = result.summary()
    events = cluster_report.load_events(out / EVENTS_FILE)
    plans = [e for e in events if e["kind"] == "plan"]
    summary = {
        "app": app.name, "nodes": nodes, "front_door": url, "duration_s": duration, "peak_rps": peak,
        "planned_rps": plan.demand_rps, "slices": plan.slices, "replanning": REPLANNING,
        "requests": {k: load[k] for k in ("requests", "ok", "late", "dropped", "error")},
        "slo_violation_rate": (load["requests"] - load["ok"]) / load["requests"] if load["requests"] else None,
        "answered": load["ok"] + load["late"], "latency_ms": load["latency_ms"], "slo_ms": load["slo_ms"],
        "plans": [{"t": e["t"], "demand_rps": e["demand_rps"], "slices": e["slices"], "reason": e["reason"],
                   "apply_s": e["apply_s"], "node_slices": {n: v["slices"] for n, v in e["nodes"].items()}}
                  for e in plans],
        "node_events": [{k: v for k, v in e.items()} for e in events if e["kind"] in ("node_lost", "node_added")],
        "capacity_lost_rps": round(sum(e["capacity_rps"] for e in controller.lost), 3),
        "planned_lost_rps": round(sum(e["planned_rps"] for e in controller.lost), 3),
        "controller_errors": [e.get("reason", "") for e in events if e["kind"] in ("error", "apply_failed", "infeasible")],
        "per_node": {n: {"slices": plan.nodes[n].slices if n in plan.nodes else 0,
                         "planned_rps": plan.nodes[n].demand_rps if n in plan.nodes else 0.0,
                         "share": plan.share(n), "slices_final": plans[-1]["nodes"].get(n, {}).get("slices", 0),
                         "share_final": plans[-1]["nodes"].get(n, {}).get("share", 0.0),
                         "requests": cluster_report.node_count(events, n, "requests"),
                         "failed": cluster_report.node_count(events, n, "failed"),
                         "slices_over_run": [[e["t"], e["nodes"].get(n, {}).get("slices", 0)] for e in plans]}
                     for n in names},
    }
    summary["plots"] = [p.name for p in cluster_report.plot(out, summary)]
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A few readable lines of ``run``'s summary."""
    req, lat = summary["requests"], summary["latency_ms"]
    lines = [f"{summary['app']} on {summary['nodes']} node(s), {summary['slices']} slices for "
             f"{summary['planned_rps']:g} req/s at first; {req['requests']} requests through the front door: "
             f"{req['ok']} ok, {req['late']} late, {req['dropped']} dropped, {req['error']} errors; answered p50 "
             f"{lat['p50']} ms, p99 {lat['p99']} ms (SLO {summary['slo_ms']:g} ms)"]
    lines += [f"  {n}: {v['requests']} requests, {v['slices']} slices at first, {v['slices_final']} at the end "
              f"(share {v['share']:.2f} -> {v['share_final']:.2f})" for n, v in summary["per_node"].items()]
    lines += [f"  plan at {max(p['t'], 0.0):.0f} s: {p['demand_rps']:.1f} req/s on {p['slices']} slices ("
              + ", ".join(f"{n} {k}" for n, k in p["node_slices"].items()) + f"): {p['reason']}"
              for p in summary["plans"]]
    lines += [f"  {e['kind'].replace('_', ' ')} at {e['t']:.1f} s: {e['node']}"
              + (f", {e['planned_rps']:g} req/s planned on {e['slices']} slices, capacity {e['capacity_rps']:g} req/s"
                 if e["kind"] == "node_lost" else "") for e in summary["node_events"]]
    lines.append(f"  replanning: {summary['replanning']}")
    return "\n".join(lines)
