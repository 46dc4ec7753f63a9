"""Goodput under overload: a fixed plan offered 1x, 2x and 4x the rate it was made for (CPU example, real
tritonserver, no controller).

The CPU example (examples/cpu/app.yaml and its profiles) is planned for ``--demand`` req/s on 4 whole-CPU slices,
rendered and served; the open-loop gRPC load generator (orchestrator/workload/loadgen.py, in a process of its own, Poisson arrivals,
each request sending its deadline) offers each multiple of that rate for ``--seconds``, the multiples interleaved over
``--rounds`` rounds so that drift on the shared machine hits each alike. Per multiple: goodput (answers within the
SLO per second), late answers as a share of the answers, drops, and the server's own count of answers that left a
sink stage after their deadline (``jigsaw_stage_deadline_misses_total``) against the client's count of late answers.
The issue's goal: goodput at 2x and 4x >= 0.9x of goodput at 1x, late < 1% of answers, the two counts agreeing.

    python3 bench/overload.py [--demand 40] [--seconds 15] [--rounds 2] [--out bench/results/overload-cpu.json]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from record import provenance, write  # noqa: E402

from jigsawserve.orchestrator.spec.appspec import load_app  # noqa: E402
from jigsawserve.orchestrator.spec.gpus import gpu_type  # noqa: E402
from jigsawserve.orchestrator.serving.inventory import Inventory  # noqa: E402
from jigsawserve.orchestrator.serving.metrics import scrape  # noqa: E402
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan  # noqa: E402
from jigsawserve.orchestrator.spec.profiles import load_profiles  # noqa: E402
from jigsawserve.orchestrator.serving.render import build_configs, write_repository  # noqa: E402
from jigsawserve.orchestrator.serving.server import TritonServer, free_ports  # noqa: E402
from jigsawserve.orchestrator.serving.tritonenv import prepare_backend_dir, server_env  # noqa: E402
from jigsawserve.orchestrator.workload.loadgen import run_load_apart  # noqa: E402
from jigsawserve.orchestrator.workload.trace import poisson  # noqa: E402

MULTIPLES = (1, 2, 4)


def misses_at_sinks(metrics_url: str, app: str, sinks: list[str]) -> float:
    now = scrape(metrics_url, time.time())
    return sum(n for (task,), n in now.by_label("jigsaw_stage_deadline_misses_total", "task", app=app).items()
               if task in sinks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demand", type=float, default=40.0)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "overload-cpu.json"))
    args = ap.parse_args()
    app = load_app(ROOT / "examples" / "cpu" / "app.yaml")
    plan = make_plan(app, load_profiles(ROOT / "examples" / "cpu" / "profiles.csv"), gpu_type("cpu"), args.demand,
                     PlanOptions(gpus=4))
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="jigsaw-overload-") as tmp:
        repo = Path(tmp) / "repo"
        write_repository(build_configs(plan, Inventory((), "bench: cpu")), repo)
        h, g, m = free_ports(3)
        with TritonServer(repo, prepare_backend_dir(Path(tmp) / "backends"), http_port=h, grpc_port=g,
                          metrics_port=m, log_path=Path(tmp) / "server.log", env=server_env()) as srv:
            srv.wait_ready(180)
            for rnd in range(args.rounds):
                for k, mult in enumerate(MULTIPLES):
                    rate = mult * args.demand
                    arrivals = poisson(rate, args.seconds, seed=100 * rnd + k)
                    before = misses_at_sinks(srv.metrics_url, app.name, app.sinks)
                    result = run_load_apart(srv.grpc_url, app.name, arrivals, 1, app.tensor_width,
                                            app.latency_slo_ms, on_start=lambda _t: None, timeout_s=30.0,
                                            seed=rnd)
                    time.sleep(1.0)  # the stages flush their counters every 0.1 s
                    server_late = misses_at_sinks(srv.metrics_url, app.name, app.sinks) - before
                    s = result.summary()
                    answered = s["ok"] + s["late"]
                    rows.append({"round": rnd, "multiple": mult, "offered_rps": rate, "requests": s["requests"],
                                 "ok": s["ok"], "late": s["late"], "dropped": s["dropped"], "error": s["error"],
                                 "goodput_rps": s["ok"] / args.seconds,
                                 "late_share": s["late"] / answered if answered else 0.0,
                                 "server_late": server_late, "latency_ms": s["latency_ms"]})
                    print(f"round {rnd} {mult}x ({rate:g} req/s): goodput {s['ok'] / args.seconds:.1f} req/s, "
                          f"late {s['late']} (server {server_late:g}), dropped {s['dropped']}, error {s['error']}",
                          flush=True)
                    time.sleep(2.0)  # the backlog of the last level drains before the next
    table = ["| offered | goodput (req/s), per round | x goodput at 1x | late / answers | late: client / server | dropped | errors |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    base = sum(r["goodput_rps"] for r in rows if r["multiple"] == 1) / args.rounds
    summary = {}
    for mult in MULTIPLES:
        sel = [r for r in rows if r["multiple"] == mult]
        good = sum(r["goodput_rps"] for r in sel) / len(sel)
        late, answered = sum(r["late"] for r in sel), sum(r["ok"] + r["late"] for r in sel)
        summary[f"{mult}x"] = {"goodput_rps": good, "ratio_to_1x": good / base if base else None,
                               "late_share": late / answered if answered else 0.0, "client_late": late,
                               "server_late": sum(r["server_late"] for r in sel),
                               "dropped": sum(r["dropped"] for r in sel), "errors": sum(r["error"] for r in sel)}
        v = summary[f"{mult}x"]
        rounds = ", ".join(f"{r['goodput_rps']:.1f}" for r in sel)
        table.append(f"| {mult}x ({mult * args.demand:g} req/s) | {rounds} | "
                     f"{v['ratio_to_1x']:.2f} | {100 * v['late_share']:.2f}% | {late} / {v['server_late']:g} | "
                     f"{v['dropped']} | {v['errors']} |")
    write(Path(args.out), {**provenance(), "demand_rps": args.demand, "seconds": args.seconds, "rounds": args.rounds,
                           "plan": plan.to_json(), "summary": summary, "rows": rows}, table)


if __name__ == "__main__":
    main()
