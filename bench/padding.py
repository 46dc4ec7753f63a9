"""What padding to the captured batch sizes costs in waits, on a real tritonserver (CPU stand-ins).

A GPU runner replays one captured CUDA graph per batch size; a batch between two captured sizes runs
padded to the larger one. EfficientNet runners capture batch 1 and their max only (their captures
cost 1.5-4.2 s a size: ``jigsawserve.triton_backend.zoo.CHEAP_CAPTURE_S``), so on the H200 traffic's car runner at
batch 16 ran 10-row batches as 16, back to back, and its requests waited 17.6-27 ms in its queue
(``bench/results/h200-eval/results.md``, 2026-11-29, the refined profile's runs). This bench serves a two-task app (a source
fanning out 3 items per request to a "car" task) whose car runner is a numpy stand-in that sleeps
like a batch of the padded size (``NumpyMlp.pad_to``: ``delay_ms + delay_per_item_ms x rows``, scaled
by ``--scale``), planned by the real planner from a profile of every size, padding to {1, max},
{1, max / 2, max} or {1, 2, 4, ..., max}; the same Poisson arrivals at each rate, the load generator in a
process of its own. Per run: outcomes, latency percentiles, and the car runner's rows per batch, padded
rows and mean queue wait (Triton's counters).

    python3 bench/padding.py --rates 40 60 80 --seconds 30 --out bench/results/padding/cpu.json
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jigsawserve.orchestrator.spec.appspec import AppSpec, parse_app  # noqa: E402
from jigsawserve.orchestrator.loop.controller import RUNNER_COUNTERS  # noqa: E402
from jigsawserve.orchestrator.spec.gpus import gpu_type  # noqa: E402
from jigsawserve.orchestrator.serving.inventory import Inventory  # noqa: E402
from jigsawserve.orchestrator.serving.metrics import increase, scrape  # noqa: E402
from jigsawserve.orchestrator.planning.plan import Plan  # noqa: E402
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan  # noqa: E402
from jigsawserve.orchestrator.spec.profiles import ProfilePoint, Profiles  # noqa: E402
from jigsawserve.orchestrator.loop.refinement import batch_times_ms  # noqa: E402
from jigsawserve.orchestrator.serving.render import build_configs, runner_name, write_repository  # noqa: E402
from jigsawserve.orchestrator.serving.server import TritonServer, free_ports  # noqa: E402
from jigsawserve.orchestrator.serving.tritonenv import prepare_backend_dir, server_env  # noqa: E402
from jigsawserve.orchestrator.workload.loadgen import run_load_apart  # noqa: E402
from jigsawserve.orchestrator.workload.trace import arrivals, Trace  # noqa: E402

FIXED_MS, PER_ROW_MS = 4.5, 0.7    # EfficientNet-B2 on 1g of the H200, roughly: 15.7 ms at 16, 10.1 at 8
SRC_MS = 1.0
MAX_BATCH = 16
FACTOR = 3.0


def app(scale: float, pad_to: list[int], slo_ms: float) -> AppSpec:
    """The source -> car app; the car runner sleeps like a batch padded to ``pad_to``."""
    car = {"kind": "numpy_mlp", "depth": 1, "delay_ms": FIXED_MS * scale, "delay_per_item_ms": PER_ROW_MS * scale,
           "pad_to": pad_to}
    src = {"kind": "numpy_mlp", "depth": 1, "delay_ms": SRC_MS * scale}
    return parse_app({"name": "pad", "latency_slo_ms": slo_ms, "accuracy_slo": 0.5, "tensor_width": 16,
                      "tasks": {"src": {"variants": {"s": {"accuracy": 1.0, "runtime": src}}},
                                "car": {"variants": {"c": {"accuracy": 1.0, "runtime": car}}}},
                      "edges": [{"from": "src", "to": "car", "factor": FACTOR}]}, origin="bench/padding.py")


def profiles(scale: float) -> Profiles:
    """Every batch size as if captured (what the profiler measures)."""
    rows = [ProfilePoint("s", "cpu", 1, 1, b, SRC_MS * scale, 1000 * b / (SRC_MS * scale)) for b in (1, 2, 4, 8)]
    rows += [ProfilePoint("c", "cpu", 1, 1, b, (FIXED_MS + PER_ROW_MS * b) * scale,
                          1000 * b / ((FIXED_MS + PER_ROW_MS * b) * scale)) for b in (1, 2, 4, 8, 16)]
    return Profiles(tuple(rows))


def car_counters(url: str, plan: Plan, spec: AppSpec) -> dict[str, float]:
    """The car runner's counters now."""
    entry = next(e for e in plan.entries if e.task == "car")
    now = scrape(url, time.time())
    return {k: now.total(m, model=runner_name(spec.name, entry)) for k, m in RUNNER_COUNTERS.items()}


def serve_once(spec: AppSpec, prof: Profiles, demand: float, rate: float, seconds: float, seed: int,
               tmp: Path) -> dict[str, Any]:
    """Plan for ``demand``, serve, replay Poisson arrivals at ``rate`` for ``seconds``; outcomes and counters."""
    plan = make_plan(spec, prof, gpu_type("cpu"), demand, PlanOptions(gpus=2))  # a "cpu" GPU per task
    car = next(e for e in plan.entries if e.task == "car")
    repo = tmp / "repo"
    write_repository(build_configs(plan, Inventory(gpus=(), source="bench: cpu")), repo)
    h, g, m = free_ports(3)
    with TritonServer(repo, prepare_backend_dir(tmp / "backends"), http_port=h, grpc_port=g, metrics_port=m,
                      log_path=tmp / "server.log", env=server_env()) as srv:
        srv.wait_ready(120)
        times = arrivals(Trace(seconds, np.array([rate])), seed=seed)
        before = car_counters(srv.metrics_url, plan, spec)
        result = run_load_apart(srv.grpc_url, spec.name, times, items=1, width=None, slo_ms=None,
                                on_start=lambda origin: None, timeout_s=30.0)
        time.sleep(0.3)
        after = car_counters(srv.metrics_url, plan, spec)
    d = {k: increase(before[k], after[k]) for k in before}
    batch_ms, _ = batch_times_ms(spec, prof, "cpu", car, d) or (0.0, None)  # as the controller judges runners
    s = result.summary()
    return {"rate_rps": rate, "car_entry": {"batch": car.batch, "count": car.count, "mps": car.mps},
            "requests": s["requests"], "ok": s["ok"], "late": s["late"], "dropped": s["dropped"], "error": s["error"],
            "violations_pct": round(100 * (s["late"] + s["dropped"] + s["error"]) / max(1, s["requests"]), 3),
            "latency_ms": s["latency_ms"], "lag_ms_p99": s["lag_ms"]["p99"],
            "car_batches": d["batches"], "car_rows_per_batch": round(d["rows"] / max(1, d["batches"]), 2),
            "car_padded_rows_per_batch": round(d["padding"] / max(1, d["batches"]), 2),
            "car_queue_ms": round(d["queue_us"] / max(1, d["requests"]) / 1000, 2),
            "car_batch_ms": round(batch_ms, 2),
            "car_busy": round(d["batches"] * batch_ms / 1000 / seconds / (car.count * car.mps), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[40.0, 60.0, 80.0], help="req/s (3 car items each)")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--scale", type=float, default=2.0, help="times the H200-like batch times (a 2-core host "
                    "keeps up with fewer, longer batches)")
    ap.add_argument("--slo-ms", type=float, default=200.0, help="100 ms on the H200, times --scale")
    ap.add_argument("--demand", type=float, default=None, help="req/s the plan is made for (default: the "
                    "highest rate / 0.9)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--settings", nargs="+", default=["max only", "half and max", "powers of two"],
                    help="the car runner pads to: 'max only' {1, 16}, 'half and max' {1, 8, 16}, 'powers of two'")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    demand = args.demand or max(args.rates) / 0.9
    prof = profiles(args.scale)
    settings = {"max only": [1, MAX_BATCH], "half and max": [1, MAX_BATCH // 2, MAX_BATCH],
                "powers of two": [1, 2, 4, 8, MAX_BATCH]}
    settings = {k: v for k, v in settings.items() if k in args.settings}
    runs = []
    for rnd in range(args.rounds):
        for rate in args.rates:
            for label, pad_to in settings.items():
                with tempfile.TemporaryDirectory(prefix="jigsaw-padding-") as tmp:
                    r = serve_once(app(args.scale, pad_to, args.slo_ms), prof, demand, rate, args.seconds,
                                   seed=rnd + 1, tmp=Path(tmp))
                r.update(captured=label, round=rnd + 1)
                runs.append(r)
                print(f"round {rnd + 1} {rate:g} req/s, {label:>13}: {r['violations_pct']:.2f}% violations "
                      f"(late {r['late']}, dropped {r['dropped']}), p50/p99 {r['latency_ms']['p50']}/"
                      f"{r['latency_ms']['p99']} ms; car {r['car_rows_per_batch']} rows +"
                      f"{r['car_padded_rows_per_batch']} padded, {r['car_batch_ms']} ms a batch, queue "
                      f"{r['car_queue_ms']} ms, busy {r['car_busy']}", flush=True)
    command = shlex.join(["python3", "bench/padding.py", *sys.argv[1:]])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                            check=False).stdout.strip()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command, "git_commit": commit, "host": platform.node(),
                               "scale": args.scale, "slo_ms": args.slo_ms, "demand_rps": demand,
                               "runs": runs}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
