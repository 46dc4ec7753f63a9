"""Stage overhead: what the jigsaw graph model adds over calling the same runners directly.

One tritonserver (CPU) serves, from one model repository:
  (a) a rendered jigsaw app ``ovh``: a 2-task chain a -> b (factor 1), one near-zero-compute variant
      per task (numpy_mlp depth 1, hidden 16), planned with ``make_plan`` on a synthetic CPU profile
      and rendered with ``build_configs``; its graph model runs stage a -> stage b in one Triton model, and each stage
      calls its runner by BLS;
  (b) ``plain_ab``: a hand-written plain Triton ensemble INPUT -> runner a -> runner b over the same
      two runner models;
  (c) the two runner models themselves, called directly.

A closed-loop gRPC client (1 request in flight) measures, interleaved in rounds (shuffled order per
round, so drift hits every variant alike): direct runner a; direct a then b (two client calls, a's
output fed to b); the plain ensemble; the jigsaw graph model. The jigsaw models take one request of
items, INPUT [1, items, 16]; the runners and the plain ensemble take [batch, 16]. Then a
concurrency-8 closed loop (8 threads, one gRPC client each) alternates plain vs jigsaw ensembles in
timed rounds. Each path also gets the server's CPU time per request (tritonserver and all its stub
processes, from /proc) and the client's; a contention check samples whether other Triton processes
run on the machine meanwhile (the container is shared).

Added latency per jigsaw stage = (jigsaw p50 - plain ensemble p50) / 2, the two task stages (the
plain ensemble's two steps are the runners, which the jigsaw ensemble also runs, via BLS). The same over direct calls uses the "direct a then b" p50.

Run from the repository root:  python3 bench/overhead.py [--n 2000] [--out bench/results/overhead-cpu.json]
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from orchestrator.appspec import parse_app
from orchestrator.gpus import gpu_type
from orchestrator.inventory import Inventory
from orchestrator.planner import PlanOptions, make_plan
from orchestrator.profiles import ProfilePoint, Profiles
from orchestrator.render import RUNNER_KEY_FILE, build_configs, runner_name, write_repository
from orchestrator.server import TritonServer, free_ports
from orchestrator.tritonenv import prepare_backend_dir, server_env

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 16
RUNTIME = {"kind": "numpy_mlp", "depth": 1, "hidden": 16}
APP = {
    "name": "ovh",
    "latency_slo_ms": 1000,  # generous: no request may be dropped for its deadline in this benchmark
    "accuracy_slo": 0.9,
    "tensor_width": WIDTH,
    "tasks": {"a": {"variants": {"a1": {"accuracy": 0.9, "runtime": RUNTIME}}},
              "b": {"variants": {"b1": {"accuracy": 0.9, "runtime": RUNTIME}}}},
    "edges": [{"from": "a", "to": "b", "factor": 1.0}],
}
# synthetic profile: one point per variant (cpu, mig 1, mps 1, batch 1); 1 ms p95, 1000 req/s
PROFILE_LATENCY_MS, PROFILE_RPS, DEMAND_RPS = 1.0, 1000.0, 100.0
PLAIN = "plain_ab"
JIGSAW_STAGES = 2  # task stages a and b, in one graph model
VARIANTS = ("direct_a", "direct_a_then_b", "plain_ensemble", "jigsaw_ensemble")
BREAKDOWN: tuple[str, ...] = ()
PATHS = VARIANTS + BREAKDOWN
CLK_TCK = os.sysconf("SC_CLK_TCK")


def group_pids(pgid: int) -> list[int]:
    """PIDs of the processes in process group ``pgid`` (tritonserver and its backend stubs)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                pids.append(int(d.name))
    return pids


def foreign_load(own_pgid: int | None) -> dict:
    """Other busy processes right now (contention check): tritonserver/stub processes not in our group,
    and the number of runnable tasks from /proc/loadavg."""
    others = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                comm = (d / "comm").read_text().strip()
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if comm.startswith(("tritonserver", "triton_python")) and int(fields[2]) != own_pgid:
                others.append(int(d.name))
    running = Path("/proc/loadavg").read_text().split()[3]
    return {"other_triton_processes": len(others), "runnable/total tasks": running}


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of ``pids`` (seconds; clock-tick resolution, so only meaningful summed over many)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def plain_ensemble_config(runner_a: str, runner_b: str, max_batch: int) -> model_config_pb2.ModelConfig:
    text = f"""
name: "{PLAIN}"
platform: "ensemble"
max_batch_size: {max_batch}
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]
ensemble_scheduling {{
  step [
    {{ model_name: "{runner_a}" model_version: -1
       input_map {{ key: "INPUT" value: "INPUT" }} output_map {{ key: "OUTPUT" value: "a_out" }} }},
    {{ model_name: "{runner_b}" model_version: -1
       input_map {{ key: "INPUT" value: "a_out" }} output_map {{ key: "OUTPUT" value: "OUTPUT" }} }}
  ]
}}
"""
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def build_repository(repo: Path, dynamic_batching: bool = True) -> dict:
    """Plan and render the jigsaw app into ``repo`` and add the plain ensemble; the models' names.
    ``dynamic_batching=False`` (diagnostic) removes ``dynamic_batching`` from the two runner configs."""
    app = parse_app(APP, origin="bench/overhead.py")
    profiles = Profiles(tuple(ProfilePoint(v, "cpu", 1, 1, 1, PROFILE_LATENCY_MS, PROFILE_RPS)
                              for v in ("a1", "b1")))
    plan = make_plan(app, profiles, gpu_type("cpu"), DEMAND_RPS, PlanOptions())
    rendered = build_configs(plan, Inventory(gpus=(), source="bench: cpu"))
    runners = {e.task: runner_name(app.name, e) for e in plan.entries}
    if sorted(runners) != ["a", "b"] or len(plan.entries) != 2:
        raise RuntimeError(f"unexpected plan entries: {plan.entries}")
    batch = {e.task: e.batch for e in plan.entries}
    if not dynamic_batching:
        for name in runners.values():
            rendered.configs[name].ClearField("dynamic_batching")
    rendered.configs[PLAIN] = plain_ensemble_config(runners["a"], runners["b"], min(batch.values()))
    write_repository(rendered, repo)
    return {"jigsaw": app.name, "plain": PLAIN, "runner_a": runners["a"], "runner_b": runners["b"],
            # the runners answer only requests carrying the repository's runner key (the graph's BLS calls do;
            # the plain ensemble passes a request's parameters on to its steps)
            "runner_key": (repo / RUNNER_KEY_FILE).read_text().strip(),
            "plan_entries": [{"task": e.task, "variant": e.variant, "mig": e.mig, "mps": e.mps, "batch": e.batch,
                              "count": e.count, "latency_ms": e.latency_ms} for e in plan.entries],
            "models": sorted(rendered.configs),
            "configs": {n: text_format.MessageToString(c) for n, c in sorted(rendered.configs.items())}}


class Caller:
    """One gRPC client; ``call(variant, x)`` runs one request of a variant, returns the output."""

    def __init__(self, url: str, names: dict) -> None:
        self.c = grpcclient.InferenceServerClient(url)
        self.n = names

    def _infer(self, model: str, x: np.ndarray, out: str) -> np.ndarray:
        inp = grpcclient.InferInput("INPUT", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        params = {"jigsaw_caller": self.n["runner_key"]} if model != self.n["jigsaw"] else None
        return self.c.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput(out)],
                            parameters=params).as_numpy(out)

    def call(self, variant: str, x: np.ndarray) -> np.ndarray:
        # the jigsaw graph model takes a batch of 1 request: INPUT [1, items, width]
        if variant == "direct_a":
            return self._infer(self.n["runner_a"], x, "OUTPUT")
        if variant == "direct_a_then_b":
            return self._infer(self.n["runner_b"], self._infer(self.n["runner_a"], x, "OUTPUT"), "OUTPUT")
        if variant == "plain_ensemble":
            return self._infer(self.n["plain"], x, "OUTPUT")
        if variant == "jigsaw_ensemble":
            return self._infer(self.n["jigsaw"], x[None], "b_OUTPUT")[0]
        raise ValueError(variant)

    def close(self) -> None:
        self.c.close()


def summary(lat_ns: list[int], seconds: float | None = None, server_cpu_s: float | None = None,
            client_cpu_s: float | None = None) -> dict:
    ms = np.asarray(lat_ns, dtype=np.float64) / 1e6
    out = {"n": int(ms.size), "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
           "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "min_ms": float(ms.min()),
           "max_ms": float(ms.max()), "over_10ms": int((ms > 10).sum()), "stalls_over_100ms": int((ms > 100).sum())}
    # closed loop: with 1 in flight, throughput = requests / time spent in them
    out["throughput_rps"] = float(ms.size / (seconds if seconds is not None else ms.sum() / 1e3))
    if server_cpu_s is not None:
        out["server_cpu_ms_per_req"] = 1e3 * server_cpu_s / ms.size
    if client_cpu_s is not None:
        out["client_cpu_ms_per_req"] = 1e3 * client_cpu_s / ms.size
    return out


def sequential(caller: Caller, pids: list[int], n: int, block: int, warmup: int, seed: int,
               own_pgid: int, seen: list[int]) -> dict:
    rng = random.Random(seed)
    x = np.random.default_rng(seed).standard_normal((1, WIDTH)).astype(np.float32)
    for v in PATHS:
        for _ in range(warmup):
            caller.call(v, x)
    lat: dict[str, list[int]] = {v: [] for v in PATHS}
    scpu = {v: 0.0 for v in PATHS}
    ccpu = {v: 0.0 for v in PATHS}
    rounds = (n + block - 1) // block
    for r in range(rounds):
        if r % 10 == 0:
            seen.append(foreign_load(own_pgid)["other_triton_processes"])
        order = list(PATHS)
        rng.shuffle(order)
        for v in order:
            s0, c0 = cpu_seconds(pids), time.process_time()
            for _ in range(block):
                t0 = time.perf_counter_ns()
                caller.call(v, x)
                lat[v].append(time.perf_counter_ns() - t0)
            ccpu[v] += time.process_time() - c0
            scpu[v] += cpu_seconds(pids) - s0
    return {"rounds": rounds, "block": block,
            "results": {v: summary(lat[v], None, scpu[v], ccpu[v]) for v in PATHS}}


def closed_loop(url: str, names: dict, variant: str, conc: int,
                seconds: float) -> tuple[list[int], int, float, dict[str, int]]:
    """``conc`` threads, one client each, for ``seconds``: latencies, error count, wall seconds and
    the error messages (with counts)."""
    x = np.random.default_rng(1).standard_normal((1, WIDTH)).astype(np.float32)
    callers = [Caller(url, names) for _ in range(conc)]
    lats: list[list[int]] = [[] for _ in range(conc)]
    errors = [0] * conc
    messages: dict[str, int] = {}
    start = threading.Barrier(conc + 1)
    stop_at = [0.0]

    def worker(i: int) -> None:
        start.wait()
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter_ns()
            try:
                callers[i].call(variant, x)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors[i] += 1
                msg = str(exc)[:300]
                messages[msg] = messages.get(msg, 0) + 1
                continue
            lats[i].append(time.perf_counter_ns() - t0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(conc)]
    for t in threads:
        t.start()
    t_start = time.perf_counter()
    stop_at[0] = t_start + seconds
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start
    for c in callers:
        c.close()
    return [v for per in lats for v in per], sum(errors), wall, messages


def concurrent(url: str, names: dict, pids: list[int], conc: int, rounds: int, seconds: float,
               own_pgid: int, seen: list[int]) -> dict:
    variants = ("plain_ensemble", "jigsaw_ensemble")
    for v in variants:  # warm-up at this concurrency
        closed_loop(url, names, v, conc, 1.0)
    lat: dict[str, list[int]] = {v: [] for v in variants}
    wall = {v: 0.0 for v in variants}
    errs = {v: 0 for v in variants}
    msgs: dict[str, dict[str, int]] = {v: {} for v in variants}
    scpu = {v: 0.0 for v in variants}
    ccpu = {v: 0.0 for v in variants}
    for r in range(rounds):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            seen.append(foreign_load(own_pgid)["other_triton_processes"])
            s0, c0 = cpu_seconds(pids), time.process_time()
            ls, e, w, m = closed_loop(url, names, v, conc, seconds)
            scpu[v] += cpu_seconds(pids) - s0
            ccpu[v] += time.process_time() - c0
            lat[v] += ls
            wall[v] += w
            errs[v] += e
            for k, c in m.items():
                msgs[v][k] = msgs[v].get(k, 0) + c
    return {"concurrency": conc, "rounds": rounds, "seconds_per_round": seconds,
            "results": {v: {**summary(lat[v], wall[v], scpu[v], ccpu[v]), "errors": errs[v], "error_messages": msgs[v],
                            "wall_s": wall[v]} for v in variants}}


def check_outputs(caller: Caller) -> dict:
    x = np.random.default_rng(7).standard_normal((1, WIDTH)).astype(np.float32)
    outs = {v: caller.call(v, x) for v in VARIANTS[1:]}
    ref = outs["direct_a_then_b"]
    return {v: bool(np.allclose(o, ref, atol=1e-6)) for v, o in outs.items()}


def jigsaw_metrics(url: str) -> dict:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("jigsaw_")}


def git_state() -> dict:
    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return "?"
    return {"commit": git("rev-parse", "HEAD"),
            "uncommitted_library_changes": git("status", "--porcelain", "--", "orchestrator", "triton_backend",
                                               "model_repository_templates").splitlines()}


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True)
                   .stdout.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        pass
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__,
            **{pkg: _version(pkg) for pkg in ("tritonclient", "grpcio", "nvidia-pytriton")},
            "loadavg_start": os.getloadavg()}


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def fmt_table(res: dict) -> str:
    seq, con = res["sequential"]["results"], res["concurrency"]["results"]
    a = res["added"]
    db = "on (as rendered)" if res["runner_dynamic_batching"] else "OFF (diagnostic: stripped from the rendered runners)"
    lines = [f"Runner dynamic_batching: {db}. {seq['direct_a']['n']} requests per path, 1 in flight, "
             f"interleaved in shuffled rounds of {res['sequential']['block']}; server CPU = tritonserver + all its "
             "backend stubs (utime+stime), client CPU = the benchmark process.", "",
             "| path (1 request in flight) | p50 (ms) | p99 (ms) | throughput (req/s) | server CPU (ms/req) | "
             "client CPU (ms/req) | > 100 ms (max ms) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    labels = {"direct_a": "direct runner a (1 call)", "direct_a_then_b": "direct a then b (2 client calls)",
              "plain_ensemble": "plain ensemble a->b (2 steps)",
              "jigsaw_ensemble": "jigsaw graph model (stage a + stage b, 2 BLS runner calls)"}

    def row(v: str, r: dict, extra: str = "") -> str:
        return (f"| {labels[v]} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['throughput_rps']:.0f} | "
                f"{r['server_cpu_ms_per_req']:.2f} | {r['client_cpu_ms_per_req']:.2f} | "
                f"{r['stalls_over_100ms']} / {r['n']} ({r['max_ms']:.0f}) |{extra}")

    samples = res["other_triton_processes_samples"]
    lines[0] += (f" Contention check: other Triton processes on the machine in {sum(1 for k in samples if k)} of "
                 f"{len(samples)} samples (max {max(samples)}).")
    lines += [row(v, seq[v]) for v in PATHS]
    lines += ["", f"| concurrency {res['concurrency']['concurrency']} (closed loop, "
              f"{res['concurrency']['rounds']} x {res['concurrency']['seconds_per_round']:g} s each) | p50 (ms) | "
              "p99 (ms) | throughput (req/s) | server CPU (ms/req) | client CPU (ms/req) | > 100 ms (max ms) | errors |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [row(v, con[v], f" {con[v]['errors']} |") for v in ("plain_ensemble", "jigsaw_ensemble")]
    lines += ["", "| added by jigsaw (1 in flight) | p50 (ms) | p99 (ms) |", "|---|---:|---:|"]
    for key, label in (("vs_plain_total", "total: jigsaw - plain ensemble"),
                       ("vs_plain_per_stage", f"**per stage** vs plain ensemble (/{JIGSAW_STAGES}: stage a, stage b)"),
                       ("vs_direct_total", "total: jigsaw - direct a then b"),
                       ("vs_direct_per_stage", f"per stage vs direct a then b (/{JIGSAW_STAGES})"),
                       ("plain_vs_direct_total", "context: plain ensemble - direct a then b")):
        lines.append(f"| {label} | {a[key]['p50_ms']:.3f} | {a[key]['p99_ms']:.3f} |")
    c = a["concurrency_throughput_ratio"]
    lines += ["", f"Concurrency {res['concurrency']['concurrency']} throughput jigsaw / plain ensemble: {c:.2f}. "
              f"Goal < 1 ms p50 added per stage: {'met' if res['goal_met'] else 'NOT met'} "
              f"({a['vs_plain_per_stage']['p50_ms']:.3f} ms per task stage vs the plain ensemble, counting "
              f"{JIGSAW_STAGES} stages)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="requests per path, 1 in flight (default 2000)")
    ap.add_argument("--block", type=int, default=10, help="requests per path per round (default 10)")
    ap.add_argument("--warmup", type=int, default=50, help="warm-up requests per path (default 50)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--conc-rounds", type=int, default=4, help="timed rounds per ensemble at concurrency")
    ap.add_argument("--conc-seconds", type=float, default=3.0, help="seconds per concurrency round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-dynamic-batching", action="store_true",
                    help="diagnostic: strip dynamic_batching from the rendered runner configs (both the plain "
                         "and the jigsaw ensembles and the direct calls use these runners)")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/overhead-cpu.json, "
                                                "overhead-cpu-nodb.json with --no-dynamic-batching)")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = str(ROOT / "bench" / "results" /
                       ("overhead-cpu-nodb.json" if args.no_dynamic_batching else "overhead-cpu.json"))

    t_begin = time.perf_counter()
    result: dict = {"benchmark": "bench/overhead.py", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "command": "python3 " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
                    "machine": machine(), "git": git_state(), "app_spec": APP,
                    "profile": {"gpu": "cpu", "mig": 1, "mps": 1, "batch": 1, "latency_ms": PROFILE_LATENCY_MS,
                                "throughput_rps": PROFILE_RPS, "demand_rps": DEMAND_RPS},
                    "stage_count": {"jigsaw_stages": JIGSAW_STAGES,
                                    "how": "stage a (stamps the deadline) + stage b; the plain ensemble's 2 steps are the "
                                           "runners, which the jigsaw stages also call (BLS)"},
                    "params": vars(args)}
    with tempfile.TemporaryDirectory(prefix="jigsaw-overhead-") as tmp:
        tmp_path = Path(tmp)
        names = build_repository(tmp_path / "repo", dynamic_batching=not args.no_dynamic_batching)
        result["runner_dynamic_batching"] = not args.no_dynamic_batching
        result["models"] = names.pop("models")
        result["configs"] = names.pop("configs")
        result["plan_entries"] = names.pop("plan_entries")
        backend = prepare_backend_dir(tmp_path / "backends")
        http, grpc_port, metrics = free_ports(3)
        log = tmp_path / "tritonserver.log"
        try:
            with TritonServer(tmp_path / "repo", backend, http_port=http, grpc_port=grpc_port,
                              metrics_port=metrics, log_path=log, env=server_env()) as server:
                caller = Caller(server.grpc_url, names)
                try:
                    meta = caller.c.get_server_metadata()
                    result["machine"]["tritonserver"] = meta.version
                    result["outputs_match_direct_chain"] = check_outputs(caller)
                    print(f"server up ({meta.version}); outputs match: {result['outputs_match_direct_chain']}",
                          file=sys.stderr)
                    result["contention_start"] = foreign_load(server.pid)
                    pids = group_pids(server.pid)
                    result["server_processes"] = len(pids)
                    seen: list[int] = []
                    result["sequential"] = sequential(caller, pids, args.n, args.block, args.warmup, args.seed,
                                                      server.pid, seen)
                    print("sequential done", file=sys.stderr)
                finally:
                    caller.close()
                result["concurrency"] = concurrent(server.grpc_url, names, pids, args.concurrency, args.conc_rounds,
                                                   args.conc_seconds, server.pid, seen)
                result["jigsaw_metrics"] = jigsaw_metrics(server.metrics_url)
                result["contention_end"] = foreign_load(server.pid)
                seen.append(result["contention_end"]["other_triton_processes"])
                result["other_triton_processes_samples"] = seen
        except BaseException:
            print(f"--- tritonserver log tail ({log}):\n" + (log.read_text(errors="replace")[-4000:]
                                                             if log.is_file() else "(none)"), file=sys.stderr)
            raise
    seq = result["sequential"]["results"]
    J, P, D = seq["jigsaw_ensemble"], seq["plain_ensemble"], seq["direct_a_then_b"]

    def diff(x: dict, y: dict, k: int) -> dict:
        return {"p50_ms": (x["p50_ms"] - y["p50_ms"]) / k, "p99_ms": (x["p99_ms"] - y["p99_ms"]) / k}

    con = result["concurrency"]["results"]
    result["added"] = {"vs_plain_total": diff(J, P, 1), "vs_plain_per_stage": diff(J, P, JIGSAW_STAGES),
                       "vs_direct_total": diff(J, D, 1), "vs_direct_per_stage": diff(J, D, JIGSAW_STAGES),
                       "plain_vs_direct_total": diff(P, D, 1),
                       "concurrency_throughput_ratio": con["jigsaw_ensemble"]["throughput_rps"]
                       / con["plain_ensemble"]["throughput_rps"]}
    result["goal"] = "< 1 ms p50 added per jigsaw stage (vs plain ensemble)"
    result["goal_met"] = result["added"]["vs_plain_per_stage"]["p50_ms"] < 1.0
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["total_seconds"] = time.perf_counter() - t_begin
    table = fmt_table(result)
    result["table_md"] = table
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"\nwrote {out} and {out.with_suffix('.md')} in {result['total_seconds']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
