#!/usr/bin/env python3
"""What the cluster's front door adds: latency and throughput through it against calling the node directly.

A real local Ray cluster (``ray_cluster.LocalCluster``: a head node and one node, their own raylets, on
127.0.0.1) serves a near-zero-compute jigsaw app (one task, one numpy variant of depth 1 and width 16, planned
by ``make_plan`` on a synthetic CPU profile) with one ``NodeServer`` (tritonserver with the jigsaw backend) and
the front door as a Ray actor on the head node (``ClusterServing``). Closed loop at ``--concurrency``
(threads, one ``tritonclient.grpc`` or ``tritonclient.http`` client each, INPUT [1, 1, 16]), in rounds of
``--seconds`` that alternate the paths in a shuffled order per round (drift hits all alike), after a warm-up
round of each; per protocol of ``--protocols``: ``direct`` (the node: its tritonserver's gRPC port, or its HTTP
front, which checks and forwards to tritonserver's private HTTP port) and ``front door`` (the same node
through the front door's gRPC or HTTP side). Per path:
latency p50/p99 over all rounds' requests, throughput (requests answered per second of the rounds), errors,
and the front door's CPU time per request it forwarded (its actor process, from /proc). Each concurrency
given runs this whole comparison in turn (by default 8, then 1: one request in flight shows the hop alone,
without the clients, the server and the front door contending for the cores).

Run from the repository root:
  python3 bench/front_door.py [--rounds 6] [--seconds 5] [--concurrency 8 1] [--protocols grpc http]
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from pathlib import Path

import numpy as np
import ray
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from jigsawserve.orchestrator.spec.appspec import parse_app
from jigsawserve.orchestrator.planning.cluster import ClusterPlan
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan
from jigsawserve.orchestrator.spec.profiles import ProfilePoint, Profiles
from jigsawserve.orchestrator.serving.ray_cluster import ClusterServing, LocalCluster

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import provenance, write  # noqa: E402

WIDTH = 16
APP = {"name": "fd", "latency_slo_ms": 1000, "accuracy_slo": 0.9, "tensor_width": WIDTH,
       "tasks": {"a": {"variants": {"a1": {"accuracy": 0.9, "runtime": {"kind": "numpy_mlp", "depth": 1,
                                                                         "hidden": 16}}}}}}
# synthetic profile: one point (cpu, 1 slice, batch 8): 1 ms p95, 4000 req/s; the plan is one runner
PROFILE = Profiles((ProfilePoint("a1", "cpu", 1, 1, 8, 1.0, 4000.0),))
GRAPH_INSTANCES = 8  # x 2 requests each: more than the clients keep in flight
PATHS = ("direct", "front door")
CLIENTS = {"grpc": grpcclient, "http": httpclient}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _round(protocol: str, url: str, concurrency: int, seconds: float) -> tuple[list[float], int, float]:
    """Closed loop for ``seconds`` with ``protocol``'s client: every answer's latency (ms), errors, and the
    round's wall time."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    stop = threading.Event()

    def client(i: int) -> None:
        module = CLIENTS[protocol]
        c = module.InferenceServerClient(url)
        inp = module.InferInput("INPUT", [1, 1, WIDTH], "FP32")
        inp.set_data_from_numpy(np.ones((1, 1, WIDTH), dtype=np.float32))
        try:
            while not stop.is_set():
                began = time.perf_counter()
                try:
                    c.infer(APP["name"], [inp])
                    latencies[i].append((time.perf_counter() - began) * 1000)
                except Exception:  # noqa: BLE001 -- counted: a benchmark reports its errors
                    errors[i] += 1
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return [x for xs in latencies for x in xs], sum(errors), time.perf_counter() - began


def compare(urls: dict[tuple[str, str], str], front_pid: int, concurrency: int, rounds: int, seconds: float) -> dict:
    """Warm-up, then ``rounds`` of each (protocol, path) of ``urls`` in a shuffled order; per path its figures
    (keyed "<protocol> <path>") and per protocol what the front door added."""
    keys = list(urls)
    results = {k: {"latencies": [], "errors": 0, "seconds": 0.0, "front_cpu_s": 0.0} for k in keys}
    for protocol, path in keys:
        _round(protocol, urls[protocol, path], concurrency, min(2.0, seconds))
    rng = random.Random(concurrency)
    for r in range(rounds):
        for protocol, path in rng.sample(keys, len(keys)):
            cpu = cpu_seconds(front_pid)
            lat, errors, wall = _round(protocol, urls[protocol, path], concurrency, seconds)
            res = results[protocol, path]
            res["front_cpu_s"] += cpu_seconds(front_pid) - cpu
            res["latencies"] += lat
            res["errors"] += errors
            res["seconds"] += wall
            print(f"concurrency {concurrency}, round {r + 1}, {protocol} {path}: {len(lat) / wall:.0f} req/s, "
                  f"p50 {np.percentile(lat, 50):.2f} ms", file=sys.stderr)
    rows = {}
    for (protocol, path), res in results.items():
        lat = np.asarray(res["latencies"])
        rows[f"{protocol} {path}"] = {"requests": int(lat.size), "errors": res["errors"], "throughput_rps": lat.size / res["seconds"],
                      "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                      "mean_ms": float(lat.mean()), "front_door_cpu_ms_per_request": res["front_cpu_s"] * 1000 / lat.size}
    added = {}
    for protocol in dict.fromkeys(p for p, _ in keys):
        d, f = rows[f"{protocol} direct"], rows[f"{protocol} front door"]
        added[protocol] = {"p50_ms": f["p50_ms"] - d["p50_ms"], "p99_ms": f["p99_ms"] - d["p99_ms"],
                           "throughput_ratio": f["throughput_rps"] / d["throughput_rps"]}
    return {"paths": rows, "added": added}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 1])
    ap.add_argument("--protocols", nargs="+", choices=sorted(CLIENTS), default=["grpc", "http"])
    ap.add_argument("--out", type=Path, default=Path("bench/results/front-door.json"))
    args = ap.parse_args()
    plan = make_plan(parse_app(APP, origin="bench/front_door.py"), PROFILE, gpu_type("cpu"), 100.0, PlanOptions(gpus=1))
    with LocalCluster(1, cpus=1) as local, ClusterServing(graph_instances=GRAPH_INSTANCES) as serving:
        front = serving.start(ClusterPlan(plan.app, plan.demand_rps, {local.names[0]: plan}))
        node = serving.urls[local.names[0]]
        doors = {"grpc": front, "http": serving.http_url}
        urls = {(p, path): node[p] if path == "direct" else doors[p] for p in args.protocols for path in PATHS}
        front_pid = ray.get(serving.front.__ray_call__.remote(lambda actor: os.getpid()))
        load_before = Path("/proc/loadavg").read_text().split()[:3]
        by_concurrency = {c: compare(urls, front_pid, c, args.rounds, args.seconds) for c in args.concurrency}
        load_after = Path("/proc/loadavg").read_text().split()[:3]
    record = {**provenance(), "rounds": args.rounds, "seconds": args.seconds, "protocols": args.protocols,
              "graph_instances": GRAPH_INSTANCES,
              "app": APP, "cores": len(os.sched_getaffinity(0)), "loadavg_before": load_before,
              "loadavg_after": load_after, "by_concurrency": by_concurrency}
    table = [f"Load average (1, 5, 15 min, `/proc/loadavg`) before: {', '.join(load_before)}; after: "
             f"{', '.join(load_after)}; {record['cores']} cores.", "",
             "| concurrency | path | requests | errors | throughput (req/s) | p50 (ms) | p99 (ms) | front door CPU (ms/req) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for c, res in by_concurrency.items():
        table += [f"| {c} | {p} | {r['requests']} | {r['errors']} | {r['throughput_rps']:.0f} | {r['p50_ms']:.2f} | "
                  f"{r['p99_ms']:.2f} | {r['front_door_cpu_ms_per_request']:.2f} |" for p, r in res["paths"].items()]
        table += [f"| {c} | {p} added by the front door | | | x{a['throughput_ratio']:.2f} | {a['p50_ms']:+.2f} | "
                  f"{a['p99_ms']:+.2f} | |" for p, a in res["added"].items()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write(args.out, record, table)


if __name__ == "__main__":
    main()
