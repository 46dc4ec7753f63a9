#!/usr/bin/env python3
"""A node lost under load: requests failed, and how long until the replanned cluster serves the demand again.

A real local Ray cluster of 2 nodes (``LocalCluster``: each its own raylet and tritonserver, on 127.0.0.1, 4 CPU
slices each) serves the CPU example through the front door, spread over both nodes, with the cluster controller
(``cluster_control.ClusterController``, interval ``--interval``) replanning live (``tools/cluster_demo.run``).
A steady Poisson load of ``--rate`` req/s runs for ``--duration`` s; at ``--lose-at`` s node-1 is lost, as
``--mode`` says:

- ``raylet``: ``LocalCluster.remove_node``: its raylet and workers end, then its tritonserver (a machine lost);
- ``actor``: its ``NodeServer`` actor is killed (``ray.kill``), its raylet left running; the raylet ends the
  actor's worker and with it the tritonserver the worker started (checked: its process is gone 3 s later).

At ``--add-at`` s node-2 joins. Per mode: the requests and their outcomes, those that failed (and when they were
sent, from the loss), when the controller saw the loss (``node_lost``) and when the plan on the node left was in
place (its ``plan`` event: written once the apply finished), the capacity it reported lost, when the last
request sent after the loss (and before node-2 joined) missed its SLO (``recovered_s``: 0 when none did),
latency before and after, and when node-2's plan was in place; the outcomes before the loss, from it until node-2 joined, and after. The per-node plots of each run are copied beside the record.

Run from the repository root:  python3 bench/node_loss.py [--modes raylet actor] [--rate 30] [--duration 60]
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import ray

from jigsawserve.orchestrator.spec.appspec import load_app
from jigsawserve.orchestrator.serving.ray_cluster import ClusterServing, LocalCluster
from jigsawserve.tools import cluster_demo
from jigsawserve.orchestrator.reporting import cluster_report
from jigsawserve.tools.profile_cpu import profile_cpu
from jigsawserve.orchestrator.reporting.report import load_requests
from jigsawserve.orchestrator.workload.trace import poisson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import provenance, write  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LOST, ADDED = "node-1", "node-2"


def _lose(mode: str):
    def raylet(local: LocalCluster, serving: ClusterServing) -> None:
        local.remove_node(LOST)

    def actor(local: LocalCluster, serving: ClusterServing) -> None:
        ray.kill(serving.nodes[LOST], no_restart=True)
    return {"raylet": raylet, "actor": actor}[mode]


def _add(local: LocalCluster, serving: ClusterServing) -> None:
    local.add_node(ADDED)


def _pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values.size else None


def _errors(path: Path) -> dict[str, int]:
    """The failed requests' error messages, counted."""
    with path.open() as f:
        texts = [row["error"] for row in csv.DictReader(f) if row["outcome"] == "error"]
    return {t: texts.count(t) for t in sorted(set(texts))}


def measure(run_dir: Path, summary: dict, lose_at: float) -> dict:
    """The node loss's figures from a run's events and requests."""
    events = cluster_report.load_events(run_dir / cluster_demo.EVENTS_FILE)
    actions = [e for e in events if e["kind"] == "action"]
    killed = next((e["t"] for e in actions if LOST in e["what"]), lose_at)
    joined = next((e["t"] for e in actions if ADDED in e["what"]), None)
    lost = next((e for e in events if e["kind"] == "node_lost" and e["node"] == LOST), None)
    replanned = next((e for e in events if e["kind"] == "plan" and lost and e["t"] >= lost["t"]), None)
    spread = next((e for e in events if e["kind"] == "plan" and ADDED in e["nodes"]), None)
    req = load_requests(run_dir / "requests.csv", [])
    sent = np.where(np.isnan(req.sent_s), req.scheduled_s, req.sent_s)
    failed = req.outcome == "error"
    missed = req.outcome != "ok"
    after = sent >= killed
    end = joined if joined is not None else math.inf  # the node added later loads the host too: not the loss's
    late_after = sent[missed & after & (sent < end)]
    answered = np.isin(req.outcome, ("ok", "late"))
    until = replanned["t"] if replanned else killed
    periods = {"before the loss": sent < killed, "from the loss to node-2 joining": after & (sent < end),
               "after node-2 joined": sent >= end}
    windows = {"before the loss": sent < killed, "loss to replanned": after & (sent < until),
               "after the replan": sent >= until}
    return {
        "requests": int(req.outcome.size), **{o: int(np.count_nonzero(req.outcome == o)) for o in ("ok", "late", "dropped", "error")},
        "failed_sent_s_from_loss": [round(float(t - killed), 3) for t in sent[failed]],
        "errors": _errors(run_dir / "requests.csv"),
        "lost_at_s": round(killed, 3),
        "detected_s": round(lost["t"] - killed, 3) if lost else None,
        "replanned_s": round(replanned["t"] - killed, 3) if replanned else None,
        "replan_apply_s": replanned["apply_s"] if replanned else None,
        "replanned_nodes": replanned["nodes"] if replanned else None,
        "recovered_s": round(float(late_after.max() - killed), 3) if late_after.size else 0.0,
        "capacity_lost": {k: lost[k] for k in ("slices", "planned_rps", "capacity_rps", "remaining_planned_rps",
                                               "remaining_capacity_rps")} if lost else None,
        "outcomes": {w: {o: int(np.count_nonzero(m & (req.outcome == o))) for o in ("ok", "late", "dropped", "error")}
                     for w, m in periods.items()},
        "latency_ms": {w: {"p50": _pct(req.latency_ms[answered & m], 50), "p99": _pct(req.latency_ms[answered & m], 99),
                           "requests": int(np.count_nonzero(m))} for w, m in windows.items()},
        "added_at_s": round(joined, 3) if joined is not None else None,
        "added_serving_s": round(spread["t"] - joined, 3) if spread and joined is not None else None,
        "added_requests": summary["per_node"].get(ADDED, {}).get("requests"),
        "per_node_requests": {n: v["requests"] for n, v in summary["per_node"].items()},
        "controller_errors": summary["controller_errors"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", nargs="+", choices=("raylet", "actor"), default=["raylet", "actor"])
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--lose-at", type=float, default=20.0)
    ap.add_argument("--add-at", type=float, default=40.0)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "node-loss")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "node-loss.json")
    args = ap.parse_args()
    app_path = ROOT / "examples" / "cpu" / "app.yaml"
    app = load_app(app_path)
    args.work.mkdir(parents=True, exist_ok=True)
    profiles = args.work / "profiles.csv"
    profile_cpu([app], str(profiles), repeats=10, progress=lambda _: None)
    times = poisson(args.rate, args.duration)
    figures = args.out.with_suffix("")
    figures.mkdir(parents=True, exist_ok=True)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    runs = {}
    for mode in args.modes:
        run_dir = args.work / mode
        shutil.rmtree(run_dir, ignore_errors=True)
        during = [(args.lose_at, f"losing {LOST} ({mode})", _lose(mode)), (args.add_at, f"adding {ADDED}", _add)]
        summary = cluster_demo.run(app, profiles, 2, run_dir, args.rate / (1 + cluster_demo.HEADROOM), args.duration,
                                   progress=lambda line: print(line, file=sys.stderr), times=times, during=during)
        runs[mode] = measure(run_dir, summary, args.lose_at)
        for name in summary["plots"]:
            shutil.copy(run_dir / name, figures / f"{mode}-{name}")
    record = {**provenance(), "rate_rps": args.rate, "duration_s": args.duration, "lose_at_s": args.lose_at,
              "add_at_s": args.add_at, "nodes": 2, "cpus_per_node": cluster_demo.CPUS_PER_NODE,
              "cores": len(os.sched_getaffinity(0)), "loadavg_before": load_before,
              "loadavg_after": Path("/proc/loadavg").read_text().split()[:3], "runs": runs}
    table = [f"load average before / after: {' '.join(load_before)} / {' '.join(record['loadavg_after'])}", "",
             "| node lost by | requests | failed | late | dropped | failed sent at (s from the loss) | loss seen (s) | "
             "replanned (s) | last SLO miss after the loss (s) | capacity lost (planned / capacity, req/s) | "
             "p99 before / loss-replan / after (ms) | node-2 serving (s after it joined) | not ok: before / loss to "
             "node-2 / after node-2 (late+dropped+error) |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---|---|---:|---|"]
    for mode, r in runs.items():
        cap, lat = r["capacity_lost"] or {}, r["latency_ms"]
        table.append(f"| {mode} | {r['requests']} | {r['error']} | {r['late']} | {r['dropped']} | "
                     f"{r['failed_sent_s_from_loss'] or '-'} | "
                     f"{r['detected_s']} | {r['replanned_s']} | {r['recovered_s']} | "
                     f"{cap.get('planned_rps')} / {cap.get('capacity_rps')} | "
                     + " / ".join(str(v["p99"]) for v in lat.values()) + f" | {r['added_serving_s']} | "
                     + " / ".join(f"{o['late']}+{o['dropped']}+{o['error']}" for o in r["outcomes"].values()) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write(args.out, record, table)


if __name__ == "__main__":
    main()
