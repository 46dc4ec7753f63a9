"""How much the load generator's own process adds to the latencies it times.

Part 1 (``loop``), no server: an asyncio loop like the generator's wakes up RATE_LOOP times a
second for SECONDS and keeps a record of each, as the generator does; its wake-up lag (how late
each wake-up came) with the collector as it is or running young collections only, and with the
planner (below) in a thread of the same process, in a process of its own, or not running.

Part 2 (``serve``):
One tritonserver (CPU) serves the bundled CPU demo app (planned for 300 req/s); ``jigsawserve.orchestrator.workload.loadgen``
sends it RATE req/s (Poisson) for SECONDS and times every answer, while a thread of this process
replans the H200 traffic app in a loop (``make_plan``, what the controller does every interval and
on surges in ``orchestrator/loop/experiment.py``). Configurations, alternated in rounds on the same server:

  in-process, full collections   ``run_load`` in this process, the collector left as it is (how the
                                 experiments ran before); the planner thread on
  in-process, young collections  ``run_load`` as it is now (young collections only during a replay);
                                 the planner thread on
  own process                    ``run_load_apart``: the generator in a spawned process; the planner
                                 thread on
  own process, no planner        the same without the planner thread

Per configuration: the answers' latency as the generator timed it (p50, p99, p99.9, max), the share
over the app's SLO, and the server's own view over the same requests: its two sink stages' exits
after the deadline (``jigsaw_stage_deadline_misses_total``, tasks cls and cap: up to two per
request) and Triton's mean request duration for the graph model.

    python3 bench/client_lag.py [--parts loop serve] [--rate 100] [--seconds 20] [--rounds 2] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import platform
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jigsawserve.orchestrator.spec.appspec import load_app  # noqa: E402
from jigsawserve.orchestrator.spec.gpus import gpu_type  # noqa: E402
from jigsawserve.orchestrator.serving.inventory import Inventory  # noqa: E402
from jigsawserve.orchestrator.serving.metrics import scrape  # noqa: E402
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan  # noqa: E402
from jigsawserve.orchestrator.spec.profiles import load_profiles  # noqa: E402
from jigsawserve.orchestrator.serving.render import build_configs, write_repository  # noqa: E402
from jigsawserve.orchestrator.serving.server import TritonServer, free_ports  # noqa: E402
from jigsawserve.orchestrator.serving.tritonenv import prepare_backend_dir, server_env  # noqa: E402
from jigsawserve.orchestrator.workload import loadgen  # noqa: E402
from jigsawserve.orchestrator.workload.trace import poisson  # noqa: E402

CPU = ROOT / "examples" / "cpu"
H200 = ROOT / "examples" / "h200"
RATE_LOOP = 600.0
LOOP_CONFIGS = ("collector as is, no planner", "young collections, no planner",
                "collector as is, planner thread", "young collections, planner thread",
                "collector as is, planner process", "young collections, planner process")
CONFIGS = ("in-process, full collections", "in-process, young collections", "own process",
           "own process, no planner")


class Planner:
    """A thread that replans the traffic app for rising demands, pausing ``pause_s`` between plans."""

    def __init__(self, pause_s: float = 0.5) -> None:
        self.app, self.profiles = load_app(H200 / "traffic.yaml"), load_profiles(H200 / "profiles.csv")
        self.gpu, self.pause_s = gpu_type("h200-141gb"), pause_s
        self.stop, self.solves = threading.Event(), []
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        demand = 50.0
        while not self.stop.is_set():
            t = time.monotonic()
            make_plan(self.app, self.profiles, self.gpu, demand, PlanOptions(gpus=1))
            self.solves.append(time.monotonic() - t)
            demand = demand * 1.3 if demand < 300 else 50.0
            self.stop.wait(self.pause_s)

    def __enter__(self) -> "Planner":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _planner_process(stop: multiprocessing.Event) -> None:
    planner = Planner()
    planner.stop = stop
    planner._loop()


async def _wake_ups(seconds: float, young: bool) -> np.ndarray:
    records, lags = [], []
    origin = time.monotonic()
    collector = None
    if young:
        gc.disable()

        async def collect() -> None:
            while True:
                await asyncio.sleep(loadgen.YOUNG_GC_S)
                gc.collect(1)
        collector = asyncio.create_task(collect())
    try:
        for i in range(int(RATE_LOOP * seconds)):
            due = origin + i / RATE_LOOP
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            lags.append((time.monotonic() - due) * 1000)
            records.append(loadgen.Record(i, due, time.monotonic(), 1.0, "ok", 1))
    finally:
        if collector:
            collector.cancel()
        gc.enable()
    return np.array(lags)


def loop_lag(config: str, seconds: float) -> dict:
    """Part 1: one configuration's wake-up lags (ms)."""
    young = config.startswith("young")
    stop = multiprocessing.get_context("spawn").Event()
    if config.endswith("planner thread"):
        with Planner() as planner:
            lags = asyncio.run(_wake_ups(seconds, young))
        plans = len(planner.solves)
    elif config.endswith("planner process"):
        child = multiprocessing.get_context("spawn").Process(target=_planner_process, args=(stop,), daemon=True)
        child.start()
        time.sleep(3.0)  # its imports
        try:
            lags = asyncio.run(_wake_ups(seconds, young))
        finally:
            stop.set()
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
        plans = None
    else:
        lags = asyncio.run(_wake_ups(seconds, young))
        plans = 0
    p50, p99, p999 = np.percentile(lags, [50, 99, 99.9])
    return {"part": "loop", "config": config, "wake_ups": int(len(lags)),
            "lag_ms": {"p50": round(p50, 2), "p99": round(p99, 2), "p99.9": round(p999, 2),
                       "max": round(float(lags.max()), 2)},
            "over_5ms": round(float(np.mean(lags > 5)), 4), "plans_in_this_process": plans}


def _scrape(url: str) -> dict[str, float]:
    s = scrape(url, time.time())
    return {"misses": sum(s.total("jigsaw_stage_deadline_misses_total", app="cpudemo", task=t) for t in ("cls", "cap")),
            "duration_us": s.total("nv_inference_request_duration_us_total", model="cpudemo"),
            "success": s.total("nv_inference_request_success_total", model="cpudemo")}


def one(config: str, grpc_url: str, metrics_url: str, times: np.ndarray) -> dict:
    before = _scrape(metrics_url)
    planner = Planner() if config != "own process, no planner" else None
    saved = loadgen.gc
    if config == "in-process, full collections":  # the generator as it was: the collector left alone
        loadgen.gc = types.SimpleNamespace(isenabled=gc.isenabled, disable=lambda: None, enable=gc.enable,
                                           collect=lambda generation: None)
    try:
        with planner or _Nothing():
            if config.startswith("own process"):
                result = loadgen.run_load_apart(grpc_url, "cpudemo", times, 1, None, None,
                                                on_start=lambda origin: None)  # once it is connected
            else:
                result = loadgen.run_load(grpc_url, "cpudemo", times, 1, None, None)
    finally:
        loadgen.gc = saved
    time.sleep(0.5)  # the stages' counters reach the server within 0.1 s
    after = _scrape(metrics_url)
    answered = np.array([r.latency_ms for r in result.records if r.outcome in ("ok", "late")])
    p50, p99, p999 = np.percentile(answered, [50, 99, 99.9])
    served = after["success"] - before["success"]
    return {"part": "serve", "config": config, "requests": len(result.records), "answered": int(len(answered)),
            "late": int(sum(r.outcome == "late" for r in result.records)),
            "dropped": int(sum(r.outcome == "dropped" for r in result.records)),
            "client_ms": {"p50": round(p50, 2), "p99": round(p99, 2), "p99.9": round(p999, 2),
                          "max": round(float(answered.max()), 2)},
            "server_misses": int(after["misses"] - before["misses"]),
            "server_mean_ms": round((after["duration_us"] - before["duration_us"]) / served / 1000, 2) if served else None,
            "plans": len(planner.solves) if planner else 0,
            "plan_s_mean": round(float(np.mean(planner.solves)), 3) if planner and planner.solves else None}


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", choices=("loop", "serve"), default=["loop", "serve"])
    ap.add_argument("--rate", type=float, default=100.0, help="part 2's requests per second")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = []

    def keep(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    if "loop" in args.parts:
        for r in range(args.rounds):
            for config in LOOP_CONFIGS:
                keep({"round": r + 1, **loop_lag(config, args.seconds)})
    if "serve" in args.parts:
        plan = make_plan(load_app(CPU / "app.yaml"), load_profiles(CPU / "profiles.csv"), gpu_type("cpu"), 300.0,
                         PlanOptions(gpus=8))
        with tempfile.TemporaryDirectory(prefix="client-lag-") as tmp_dir:
            tmp = Path(tmp_dir)
            write_repository(build_configs(plan, Inventory(gpus=(), source="bench: cpu")), tmp / "repo")
            h, g, m = free_ports(3)
            with TritonServer(tmp / "repo", prepare_backend_dir(tmp / "backends"), http_port=h, grpc_port=g,
                              metrics_port=m, log_path=tmp / "server.log", env=server_env()) as server:
                server.wait_ready(120)
                for r in range(args.rounds):
                    for config in CONFIGS:
                        keep({"round": r + 1, **one(config, server.grpc_url, server.metrics_url,
                                                    poisson(args.rate, args.seconds, seed=r))})
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "machine": platform.node(),
                                        "python": platform.python_version(), "rate_rps": args.rate,
                                        "seconds": args.seconds, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
