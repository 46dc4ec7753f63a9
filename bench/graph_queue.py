"""Bursts into a graph model whose instances are all busy, with and without a queue policy (CPU, real
tritonserver).

One task whose runner takes 100 ms per request (``delay_ms``), a graph model of ``--instances``
instances taking one request each, and bursts of ``--burst`` requests sent at once: the requests
beyond the instances wait in Triton's queue for the graph model. Per burst, each answer's time since
the burst was sent and its outcome. Modes: ``timeout`` (the rendered config: ``default_queue_policy``
rejecting after the SLO), ``max-size`` (a queue policy bounding the queue instead), ``none`` (no queue
policy). ``python3 bench/graph_queue.py --out bench/results/graph-queue.json``
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jigsawserve.orchestrator.serving import render  # noqa: E402
from jigsawserve.orchestrator.spec.appspec import parse_app  # noqa: E402
from jigsawserve.orchestrator.spec.gpus import gpu_type  # noqa: E402
from jigsawserve.orchestrator.serving.inventory import Inventory  # noqa: E402
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan  # noqa: E402
from jigsawserve.orchestrator.spec.profiles import Profiles, ProfilePoint  # noqa: E402
from jigsawserve.orchestrator.serving.server import TritonServer, free_ports  # noqa: E402
from jigsawserve.orchestrator.serving.tritonenv import prepare_backend_dir, server_env  # noqa: E402

SLO_MS = 350.0
SERVICE_MS = 100.0
POLICIES = {"timeout": None, "max-size": "default_queue_policy { max_queue_size: 64 }", "none": ""}


def repository(path: Path, instances: int, mode: str) -> None:
    """The app rendered with ``instances`` graph instances of one request each, its queue policy per ``mode``."""
    app = parse_app({"name": "queued", "latency_slo_ms": SLO_MS, "accuracy_slo": 0.5, "tensor_width": 16,
                     "tasks": {"work": {"variants": {"w": {"accuracy": 1.0, "runtime": {
                         "kind": "numpy_mlp", "depth": 1, "delay_ms": SERVICE_MS}}}}}}, origin="bench/graph_queue.py")
    demand = 0.9 * instances * 1000 / SERVICE_MS  # enough runner instances that the graph is the bottleneck
    plan = make_plan(app, Profiles((ProfilePoint("w", "cpu", 1, 1, 1, SERVICE_MS, 1000 / SERVICE_MS),)),
                     gpu_type("cpu"), demand, PlanOptions(gpus=instances))
    rendered = render.build_configs(plan, Inventory(gpus=(), source="bench: cpu"), graph_instances=instances,
                                    max_requests=1)
    render.write_repository(rendered, path)
    config = path / "queued" / "config.pbtxt"
    text = config.read_text()
    if POLICIES[mode] is not None:
        text = re.sub(r"default_queue_policy \{[^}]*\}", POLICIES[mode], text)
    config.write_text(text)


def burst(url: str, n: int) -> list[tuple[float, str]]:
    """``n`` requests sent at once: (ms since the burst, 'ok' or the error) of each, by time."""
    client = grpcclient.InferenceServerClient(url)
    inp = grpcclient.InferInput("INPUT", [1, 1, 16], "FP32")
    inp.set_data_from_numpy(np.ones((1, 1, 16), dtype=np.float32))
    out: list[tuple[float, str]] = []
    done = threading.Semaphore(0)
    t0 = time.monotonic()

    def callback(result, error) -> None:
        out.append((round((time.monotonic() - t0) * 1000, 1), "ok" if error is None else " ".join(str(error).split())[:60]))
        done.release()
    for _ in range(n):
        client.async_infer("queued", [inp], callback)
    for _ in range(n):
        if not done.acquire(timeout=30):
            raise RuntimeError("a request got no answer in 30 s")
    client.close()
    return sorted(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", default="1,4", help="graph instances to try, comma-separated")
    ap.add_argument("--bursts", type=int, default=5)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    results = []
    for instances in (int(x) for x in args.instances.split(",")):
        for mode in POLICIES:
            with tempfile.TemporaryDirectory() as tmp:
                repository(Path(tmp) / "repo", instances, mode)
                h, g, m = free_ports(3)
                with TritonServer(Path(tmp) / "repo", prepare_backend_dir(Path(tmp) / "backends"), http_port=h,
                                  grpc_port=g, metrics_port=m, log_path=Path(tmp) / "server.log",
                                  env=server_env()) as srv:
                    srv.wait_ready(120)
                    burst(srv.grpc_url, 1)  # warm
                    for k in range(args.bursts):
                        answers = burst(srv.grpc_url, 4 * instances)
                        gaps = np.diff([0.0] + [ms for ms, _ in answers])
                        results.append({"instances": instances, "mode": mode, "burst": k, "answers": answers,
                                        "largest_gap_ms": float(gaps.max())})
                        print(f"{instances} instance(s), {mode:>8}: largest gap {gaps.max():6.1f} ms; "
                              + ", ".join(f"{ms:g} {what[:20]}" for ms, what in answers), flush=True)
                        time.sleep(0.5)
    Path(args.out).write_text(json.dumps({"command": " ".join(["python3", "bench/graph_queue.py", *sys.argv[1:]]),
                                          "slo_ms": SLO_MS, "service_ms": SERVICE_MS, "results": results},
                                         indent=1) + "\n")


if __name__ == "__main__":
    main()
