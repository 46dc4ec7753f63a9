"""What a scale-up's apply costs with and without a standby plan, on one real tritonserver (CPU example).

For each step up of the demand (``--steps``, req/s), repeated ``--repeats`` times, under a light load of
paced gRPC clients (every outcome recorded):

  cold     the server holds the lower plan only; the apply of the higher plan loads its new runners
           (``control.apply``; what every scale-up cost before standby plans);
  standby  the server holds the lower plan and, in no route, the higher plan's runners
           (``render.name_apart`` + ``render.with_standby``, loaded and waited for beforehand); the apply of
           the higher plan is then a routing swap.

Reported per mode: the time until the new plan serves (``ApplyReport.serving_s``: the call's start to its
routing in place), p50/p95/max over the steps, the runners each apply loaded, and the load's failed requests.
The two modes alternate step by step, so drift on the shared machine hits both alike.

    python3 bench/standby_apply.py [--repeats 3] [--out bench/results/standby-apply-cpu.json]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from record import provenance, write  # noqa: E402
from jigsawserve.orchestrator.spec.appspec import parse_app  # noqa: E402
from jigsawserve.orchestrator.serving.control import apply, control_headers  # noqa: E402
from jigsawserve.orchestrator.spec.gpus import gpu_type  # noqa: E402
from jigsawserve.orchestrator.serving.inventory import Inventory  # noqa: E402
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan  # noqa: E402
from jigsawserve.orchestrator.spec.profiles import load_profiles  # noqa: E402
from jigsawserve.orchestrator.serving.render import build_configs, name_apart, with_standby, write_repository  # noqa: E402
from jigsawserve.orchestrator.serving.server import TritonServer, free_ports  # noqa: E402
from jigsawserve.orchestrator.serving.tritonenv import prepare_backend_dir, server_env  # noqa: E402

CPU = Inventory(gpus=(), source="bench: cpu")
KEY = "bench-key"


def plan(demand: float):
    doc = yaml.safe_load((ROOT / "examples" / "cpu" / "app.yaml").read_text())
    app = parse_app({**doc, "latency_slo_ms": 2000}, origin="examples/cpu/app.yaml, SLO 2000 ms")
    return make_plan(app, load_profiles(ROOT / "examples" / "cpu" / "profiles.csv"), gpu_type("cpu"), demand,
                     PlanOptions(gpus=12))


class Load:
    """``threads`` gRPC clients, one request per ``period`` s each, every failure kept."""

    def __init__(self, url: str, threads: int = 2, period: float = 0.1) -> None:
        self.url, self.period, self.ok, self.errors = url, period, 0, []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        inp = grpcclient.InferInput("INPUT", [1, 1, 16], "FP32")
        inp.set_data_from_numpy(np.ones((1, 1, 16), dtype=np.float32))
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                client.infer("cpudemo", [inp])
                self.ok += 1
            except Exception as exc:  # noqa: BLE001 (every failure is the benchmark's finding: keep it)
                self.errors.append(str(exc)[:200])
            self._stop.wait(max(0.0, self.period - (time.monotonic() - began)))

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=float, nargs="+", default=[20, 40, 80, 120, 200],
                    help="demands (req/s): each step up from one to the next is applied")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "standby-apply-cpu.json"))
    args = ap.parse_args()
    plans = {d: plan(d) for d in args.steps}
    rendered = {d: build_configs(p, CPU) for d, p in plans.items()}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="jigsaw-standby-") as tmp:
        repo = Path(tmp) / "repo"
        write_repository(rendered[args.steps[0]], repo)
        h, g, m = free_ports(3)
        with TritonServer(repo, prepare_backend_dir(Path(tmp) / "backends"), http_port=h, grpc_port=g,
                          metrics_port=m, control_key=KEY, log_path=Path(tmp) / "server.log", env=server_env()) as srv:
            srv.wait_ready(180)
            client = grpcclient.InferenceServerClient(srv.grpc_url)
            headers = control_headers(KEY, True)
            for rep in range(args.repeats):
                for low, high in zip(args.steps, args.steps[1:]):
                    for mode in ("cold", "standby"):
                        base = rendered[low]
                        if mode == "standby":  # the higher plan's runners stand by, loaded, in no route
                            named = name_apart(plans[high], CPU, base.configs)
                            target = build_configs(named, CPU)
                            apply(with_standby(base, target), repo, client, headers, drain_s=0.2)
                            target = with_standby(target, base)  # taking it keeps the lower plan's runners
                        else:
                            apply(base, repo, client, headers, drain_s=0.2)  # the lower plan alone
                            target = rendered[high]
                        time.sleep(0.5)
                        with Load(srv.grpc_url) as load:
                            time.sleep(0.5)
                            report = apply(target, repo, client, headers, drain_s=0.5)
                            time.sleep(0.5)
                        runners = [n for n in report.loaded if n != target.graph]
                        rows.append({"repeat": rep, "from_rps": low, "to_rps": high, "mode": mode,
                                     "serving_s": round(report.serving_s, 4), "runners_loaded": len(runners),
                                     "requests_ok": load.ok, "requests_failed": len(load.errors),
                                     "errors": load.errors[:3]})
                        print(f"{mode:8s} {low:5g} -> {high:5g} req/s: serving in {report.serving_s:6.3f} s, "
                              f"{len(runners)} runners loaded, {len(load.errors)} of {load.ok + len(load.errors)} "
                              f"requests failed", flush=True)
    table = ["| mode | steps | serving p50 (s) | p95 (s) | max (s) | runners loaded per apply | requests failed |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    summary = {}
    for mode in ("cold", "standby"):
        sel = [r for r in rows if r["mode"] == mode]
        times = [r["serving_s"] for r in sel]
        summary[mode] = {"steps": len(sel), "serving_p50_s": percentile(times, 50),
                         "serving_p95_s": percentile(times, 95), "serving_max_s": max(times),
                         "runners_loaded_mean": float(np.mean([r["runners_loaded"] for r in sel])),
                         "requests_failed": sum(r["requests_failed"] for r in sel),
                         "requests": sum(r["requests_ok"] + r["requests_failed"] for r in sel)}
        s = summary[mode]
        table.append(f"| {mode} | {s['steps']} | {s['serving_p50_s']:.3f} | {s['serving_p95_s']:.3f} | "
                     f"{s['serving_max_s']:.3f} | {s['runners_loaded_mean']:.1f} | "
                     f"{s['requests_failed']} of {s['requests']} |")
    write(Path(args.out), {**provenance(), "device": "CPU (numpy runners; the runner loads are Python stubs)",
                           "summary": summary, "rows": rows}, table)


if __name__ == "__main__":
    main()
