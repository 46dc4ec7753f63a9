"""Stage overhead: what the jigsaw graph model adds over a plain Triton ensemble of the same runners.

One tritonserver (CPU) serves, from one model repository:
  (a) a rendered jigsaw app ``ovh``: a 2-task chain a -> b (factor 1), one near-zero-compute variant
      per task (numpy_mlp depth 1, hidden 16), planned with ``make_plan`` on a synthetic CPU profile
      and rendered with ``build_configs``; its graph model runs stage a -> stage b in one Triton model, and each stage
      calls its runner by BLS;
  (b) ``plain_ab``: a hand-written plain Triton ensemble INPUT -> runner a -> runner b over the same
      two runner models;
  (c) the two runner models themselves, called directly;
  (d) ``bls_floor``: the least a graph model of this kind can cost, for reference: a plain Python-backend model
      with the graph model's config that calls runner a, then runner b, by blocking BLS and nothing else (no
      deadline, admission, routing, backlog or metrics);
  (e) with ``--baseline REV``: ``ovh_base``, the same graph model served by the graph backend of git revision
      REV (its ``triton_backend`` package, renamed, as a backend of its own), calling the same runners: the
      runtime before a change, measured side by side with the one after it.

The machine is shared, so every comparison is made within one time window: each repeat measures every path
with 1 request in flight, interleaved in rounds (shuffled order per round), then the graph models and the
plain ensemble at concurrency 8 (8 threads, one gRPC client each) in alternating timed rounds. The figures
are given per repeat and as median [min-max] over the repeats, with each repeat's load: the load average
and the CPU that processes other than this benchmark's (its client, tritonserver and its stubs) used meanwhile
(from /proc/stat), in cores.

Added latency per jigsaw stage = (jigsaw p50 - plain ensemble p50) / 2, the two task stages (the
plain ensemble's two steps are the runners, which the graph model also runs, via BLS).

Run from the repository root:
  python3 bench/overhead.py [--repeats 5] [--n 1000] [--baseline REV] [--out bench/results/overhead-cpu.json]
"""
from __future__ import annotations

import argparse
import ast
import datetime as dt
import importlib.metadata
import json
import os
import platform
import random
import re
import statistics
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

from jigsawserve.orchestrator.spec.appspec import parse_app
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.serving.inventory import Inventory
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan
from jigsawserve.orchestrator.spec.profiles import ProfilePoint, Profiles
from jigsawserve.orchestrator.serving.render import RUNNER_KEY_FILE, build_configs, runner_name, write_repository
from jigsawserve.orchestrator.serving.server import TritonServer, free_ports
from jigsawserve.orchestrator.serving.tritonenv import prepare_backend_dir, server_env

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
# the baseline graph: its backend's name, the name its triton_backend package is renamed to, its model's name
BASE_BACKEND, BASE_PACKAGE, BASE_MODEL = "jigsaw_base", "jigsaw_baseline_backend", "ovh_base"
FLOOR = "bls_floor"
GRAPHS = ("jigsaw_ensemble", "jigsaw_baseline")
PATHS = ("direct_a", "direct_a_then_b", "plain_ensemble", FLOOR, *GRAPHS)
LABELS = {"direct_a": "direct runner a (1 call)", "direct_a_then_b": "direct a then b (2 client calls)",
          "plain_ensemble": "plain ensemble a->b (2 steps)",
          FLOOR: "BLS floor: a bare Python model calling a then b by BLS",
          "jigsaw_ensemble": "jigsaw graph model (stage a + stage b, 2 BLS runner calls)",
          "jigsaw_baseline": "jigsaw graph model of the baseline revision"}
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


def other_triton_processes(own_pgid: int) -> int:
    """tritonserver or Python-backend stub processes not in our group (another server on the shared machine)."""
    others = 0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                comm = (d / "comm").read_text().strip()
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            others += comm.startswith(("tritonserver", "triton_python")) and int(fields[2]) != own_pgid
    return others


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


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores; /proc/stat: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


class LoadMeter:
    """The machine's load over an interval: load average at both ends, and the CPU (in cores) that the
    machine used, that this benchmark used (its client and the server's processes) and the rest, used by
    others."""

    def __init__(self, server_pids: list[int]) -> None:
        self.pids = server_pids
        self.t0, self.busy0, self.own0 = time.monotonic(), machine_busy_seconds(), self._own()
        self.loadavg_start = os.getloadavg()

    def _own(self) -> float:
        return cpu_seconds(self.pids) + time.process_time()

    def stop(self) -> dict:
        seconds = time.monotonic() - self.t0
        busy, own = machine_busy_seconds() - self.busy0, self._own() - self.own0
        return {"seconds": seconds, "loadavg_start": list(self.loadavg_start), "loadavg_end": list(os.getloadavg()),
                "machine_busy_cores": busy / seconds, "benchmark_cores": own / seconds,
                "others_cores": max(0.0, busy - own) / seconds}


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


FLOOR_MODEL_PY = '''"""bench/overhead.py's BLS floor: runner a, then runner b, by blocking BLS; nothing else."""
import json
import os

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"])["parameters"]
        self.runners = [params[k]["string_value"] for k in ("runner_a", "runner_b")]
        with open(os.path.join(args["model_repository"], "..", "{key_file}")) as f:
            self.caller = {{"jigsaw_caller": f.read().strip()}}

    def execute(self, requests):
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()[0]
            for model in self.runners:
                answer = pb_utils.InferenceRequest(model_name=model, requested_output_names=["OUTPUT"],
                                                   inputs=[pb_utils.Tensor("INPUT", rows)],
                                                   parameters=self.caller).exec()
                rows = pb_utils.get_output_tensor_by_name(answer, "OUTPUT").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("b_OUTPUT", rows[None])]))
        return responses
'''.format(key_file=RUNNER_KEY_FILE)


def build_repository(repo: Path, dynamic_batching: bool = True, baseline: bool = False) -> dict:
    """Plan and render the jigsaw app into ``repo`` and add the plain ensemble (and, with ``baseline``, the
    graph model again as ``BASE_MODEL`` on the ``BASE_BACKEND``); the models' names.
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
    floor = model_config_pb2.ModelConfig()  # the graph model's config, on the python backend
    floor.CopyFrom(rendered.configs[app.name])
    floor.name, floor.backend = FLOOR, "python"
    del floor.parameters["jigsaw"]
    floor.parameters["runner_a"].string_value, floor.parameters["runner_b"].string_value = runners["a"], runners["b"]
    rendered.configs[FLOOR] = floor
    if baseline:
        base = model_config_pb2.ModelConfig()
        base.CopyFrom(rendered.configs[app.name])
        base.name, base.backend = BASE_MODEL, BASE_BACKEND
        rendered.configs[BASE_MODEL] = base
    write_repository(rendered, repo)
    (repo / FLOOR / "1" / "model.py").write_text(FLOOR_MODEL_PY)
    if baseline:  # the routing file is the graph model's, beside its config
        (repo / BASE_MODEL / "routing.json").write_text((repo / app.name / "routing.json").read_text())
    return {"jigsaw": app.name, "plain": PLAIN, "runner_a": runners["a"], "runner_b": runners["b"],
            # the runners answer only requests carrying the repository's runner key (the graph's BLS calls do;
            # the plain ensemble passes a request's parameters on to its steps)
            "runner_key": (repo / RUNNER_KEY_FILE).read_text().strip(),
            "plan_entries": [{"task": e.task, "variant": e.variant, "mig": e.mig, "mps": e.mps, "batch": e.batch,
                              "count": e.count, "latency_ms": e.latency_ms} for e in plan.entries],
            "models": sorted(rendered.configs),
            "configs": {n: text_format.MessageToString(c) for n, c in sorted(rendered.configs.items())}}


def git(*cmd: str) -> str:
    """A read-only git command's output in the repository ("?" without git)."""
    try:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=30,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "?"


def baseline_backend(rev: str, backend_dir: Path, package_root: Path) -> str:
    """Install git revision ``rev``'s graph backend as the Python-based backend ``BASE_BACKEND`` in
    ``backend_dir``: its ``triton_backend`` package renamed ``BASE_PACKAGE`` under ``package_root`` (so that
    it and the current one can be loaded side by side), and its model.py importing from there. Returns the
    revision's commit."""
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}").strip()
    files = [f for f in git("ls-tree", "-r", "--name-only", commit, "triton_backend").split() if f.endswith(".py")]
    if commit == "?" or not files:
        raise SystemExit(f"--baseline {rev}: no triton_backend package at that revision")
    for name in files:
        text = re.sub(r"\btriton_backend\b", BASE_PACKAGE, git("show", f"{commit}:{name}"))
        dest = package_root / BASE_PACKAGE / Path(name).relative_to("triton_backend")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
    model = (package_root / BASE_PACKAGE / "model.py").read_text()
    # after the docstring and the __future__ import, before anything imports the package
    after = max(n.end_lineno or 0 for n in ast.parse(model).body
                if isinstance(n, ast.ImportFrom) and n.module == "__future__")
    lines = model.splitlines(keepends=True)
    prelude = f"import sys as _sys  # bench/overhead.py: the baseline's renamed package\n" \
              f"_sys.path.insert(0, {str(package_root)!r})\n"
    (backend_dir / BASE_BACKEND).mkdir(parents=True, exist_ok=True)
    (backend_dir / BASE_BACKEND / "model.py").write_text("".join(lines[:after]) + prelude + "".join(lines[after:]))
    return commit


class Caller:
    """One gRPC client; ``call(path, x)`` runs one request of a path, returns the output."""

    def __init__(self, url: str, names: dict) -> None:
        self.c = grpcclient.InferenceServerClient(url)
        self.n = names

    def _infer(self, model: str, x: np.ndarray, out: str) -> np.ndarray:
        inp = grpcclient.InferInput("INPUT", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        graphs = (self.n["jigsaw"], BASE_MODEL, FLOOR)
        params = {"jigsaw_caller": self.n["runner_key"]} if model not in graphs else None
        return self.c.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput(out)],
                            parameters=params).as_numpy(out)

    def call(self, path: str, x: np.ndarray) -> np.ndarray:
        # the jigsaw graph model takes a batch of 1 request: INPUT [1, items, width]
        if path == "direct_a":
            return self._infer(self.n["runner_a"], x, "OUTPUT")
        if path == "direct_a_then_b":
            return self._infer(self.n["runner_b"], self._infer(self.n["runner_a"], x, "OUTPUT"), "OUTPUT")
        if path == "plain_ensemble":
            return self._infer(self.n["plain"], x, "OUTPUT")
        if path == "jigsaw_ensemble":
            return self._infer(self.n["jigsaw"], x[None], "b_OUTPUT")[0]
        if path == FLOOR:
            return self._infer(FLOOR, x[None], "b_OUTPUT")[0]
        if path == "jigsaw_baseline":
            return self._infer(BASE_MODEL, x[None], "b_OUTPUT")[0]
        raise ValueError(path)

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


def sequential(caller: Caller, paths: tuple[str, ...], pids: list[int], n: int, block: int, rng: random.Random,
               lat: dict[str, list[int]]) -> dict:
    """``n`` requests per path, 1 in flight, in rounds of ``block`` per path (a shuffled order each round);
    the latencies are also added to ``lat`` (all repeats)."""
    x = np.random.default_rng(rng.randrange(2**32)).standard_normal((1, WIDTH)).astype(np.float32)
    mine: dict[str, list[int]] = {p: [] for p in paths}
    scpu = {p: 0.0 for p in paths}
    ccpu = {p: 0.0 for p in paths}
    for _ in range((n + block - 1) // block):
        order = list(paths)
        rng.shuffle(order)
        for p in order:
            s0, c0 = cpu_seconds(pids), time.process_time()
            for _ in range(block):
                t0 = time.perf_counter_ns()
                caller.call(p, x)
                mine[p].append(time.perf_counter_ns() - t0)
            ccpu[p] += time.process_time() - c0
            scpu[p] += cpu_seconds(pids) - s0
    for p in paths:
        lat[p] += mine[p]
    return {p: summary(mine[p], None, scpu[p], ccpu[p]) for p in paths}


def closed_loop(url: str, names: dict, path: str, conc: int,
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
                callers[i].call(path, x)
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


def concurrent(url: str, names: dict, systems: tuple[str, ...], pids: list[int], conc: int, rounds: int,
               seconds: float, acc: dict[str, dict]) -> dict:
    """``rounds`` timed rounds of each system at concurrency ``conc``, the order rotated each round; also
    added to ``acc`` (all repeats)."""
    mine = {s: {"lat": [], "wall": 0.0, "errors": 0, "messages": {}, "scpu": 0.0, "ccpu": 0.0} for s in systems}
    for r in range(rounds):
        for s in systems[r % len(systems):] + systems[:r % len(systems)]:
            s0, c0 = cpu_seconds(pids), time.process_time()
            ls, e, w, m = closed_loop(url, names, s, conc, seconds)
            for d in (mine[s], acc[s]):
                d["scpu"] += cpu_seconds(pids) - s0
                d["ccpu"] += time.process_time() - c0
                d["lat"] += ls
                d["wall"] += w
                d["errors"] += e
                for k, c in m.items():
                    d["messages"][k] = d["messages"].get(k, 0) + c
    return {s: conc_summary(mine[s]) for s in systems}


def conc_summary(d: dict) -> dict:
    return {**summary(d["lat"], d["wall"], d["scpu"], d["ccpu"]), "errors": d["errors"],
            "error_messages": d["messages"], "wall_s": d["wall"]}


def check_outputs(caller: Caller, paths: tuple[str, ...]) -> dict:
    x = np.random.default_rng(7).standard_normal((1, WIDTH)).astype(np.float32)
    outs = {p: caller.call(p, x) for p in paths if p != "direct_a"}
    ref = outs["direct_a_then_b"]
    return {p: bool(np.allclose(o, ref, atol=1e-6)) for p, o in outs.items()}


def jigsaw_metrics(url: str) -> dict:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("jigsaw_")}


def git_state() -> dict:
    return {"commit": git("rev-parse", "HEAD").strip(),
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
            **{pkg: _version(pkg) for pkg in ("tritonclient", "grpcio", "nvidia-pytriton")}}


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def added(seq: dict, con: dict, graph: str) -> dict:
    """What ``graph`` adds over the plain ensemble in one repeat: p50/p99 per stage (1 in flight) and the
    concurrency throughput ratio."""
    j, p, d = seq[graph], seq["plain_ensemble"], seq["direct_a_then_b"]
    return {"per_stage_p50_ms": (j["p50_ms"] - p["p50_ms"]) / JIGSAW_STAGES,
            "per_stage_p99_ms": (j["p99_ms"] - p["p99_ms"]) / JIGSAW_STAGES,
            "per_stage_vs_direct_p50_ms": (j["p50_ms"] - d["p50_ms"]) / JIGSAW_STAGES,
            "concurrency_throughput_ratio": con[graph]["throughput_rps"] / con["plain_ensemble"]["throughput_rps"]}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def fmt_spread(s: dict, digits: int = 3) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def fmt_table(res: dict) -> str:
    paths, graphs = res["paths"], res["compared"]
    reps = res["repeats"]
    seq_all, con_all = res["pooled"]["sequential"], res["pooled"]["concurrency"]
    p = res["params"]
    base = f" Baseline: the graph backend of {res['baseline']['rev']} ({res['baseline']['commit'][:10]})." \
        if res.get("baseline") else ""
    m = res["machine"]
    lines = [f"{res['date']}, {m['nproc']} cores ({m['cpu_model']}), tritonserver {m.get('tritonserver', '?')}, "
             f"shared with other work (its load below):", "", f"    {res['command']}", "",
             f"{len(reps)} repeats; each: {p['n']} requests per path with 1 in flight, interleaved in shuffled "
             f"rounds of {p['block']}, then concurrency {p['concurrency']} in {p['conc_rounds']} rounds of "
             f"{p['conc_seconds']:g} s per system, the order rotated.{base} Figures: median [min-max] over the "
             "repeats; pooled = all repeats' requests together. Server CPU = tritonserver + all its backend stubs "
             "(utime+stime), client CPU = the benchmark process.", "",
             "| repeat | load avg (1 min) at start, end | others' CPU (cores of "
             f"{res['machine']['nproc']}) | " + " | ".join(f"{g}: per stage p50 (ms) | {g}: conc. ratio"
                                                          for g in graphs) + " |",
             "|---|---|---:|" + "---:|---:|" * len(graphs)]
    for i, r in enumerate(reps):
        ld = r["load"]
        lines.append(f"| {i + 1} | {ld['loadavg_start'][0]:.2f}, {ld['loadavg_end'][0]:.2f} | "
                     f"{ld['others_cores']:.2f} | " + " | ".join(
                         f"{r['added'][g]['per_stage_p50_ms']:.3f} | {r['added'][g]['concurrency_throughput_ratio']:.2f}"
                         for g in graphs) + " |")
    lines += ["", "| added per task stage vs the plain ensemble | p50 (ms) | p99 (ms) | vs direct a then b, p50 (ms) "
              f"| concurrency {p['concurrency']} throughput / plain ensemble |", "|---|---:|---:|---:|---:|"]
    for g in graphs:
        s = res["spread"][g]
        lines.append(f"| {LABELS[g]} | {fmt_spread(s['per_stage_p50_ms'])} | {fmt_spread(s['per_stage_p99_ms'])} | "
                     f"{fmt_spread(s['per_stage_vs_direct_p50_ms'])} | "
                     f"{fmt_spread(s['concurrency_throughput_ratio'], 2)} |")
    lines += ["", "| path (1 request in flight) | p50 (ms), per repeat | p50 (ms), pooled | p99 (ms), pooled | "
              "server CPU (ms/req) | client CPU (ms/req) | > 100 ms (max ms) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for path in paths:
        r = seq_all[path]
        per = spread([rep["sequential"][path]["p50_ms"] for rep in reps])
        lines.append(f"| {LABELS[path]} | {fmt_spread(per)} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{r['server_cpu_ms_per_req']:.2f} | {r['client_cpu_ms_per_req']:.2f} | "
                     f"{r['stalls_over_100ms']} / {r['n']} ({r['max_ms']:.0f}) |")
    lines += ["", f"| concurrency {p['concurrency']} (closed loop) | req/s, per repeat | req/s, pooled | p50 (ms), pooled | "
              "p99 (ms), pooled | server CPU (ms/req) | errors |", "|---|---:|---:|---:|---:|---:|---:|"]
    for s in res["systems"]:
        r = con_all[s]
        per = spread([rep["concurrency"][s]["throughput_rps"] for rep in reps])
        lines.append(f"| {LABELS[s]} | {fmt_spread(per, 0)} | {r['throughput_rps']:.0f} | {r['p50_ms']:.3f} | "
                     f"{r['p99_ms']:.3f} | {r['server_cpu_ms_per_req']:.2f} | {r['errors']} |")
    s = res["spread"]["jigsaw_ensemble"]["per_stage_p50_ms"]
    samples = res["other_triton_processes_samples"]
    lines += ["", f"Goal <= {res['goal_ms']} ms p50 added per task stage (median over repeats): "
              f"{'met' if res['goal_met'] else 'NOT met'} ({s['median']:.3f} ms; {s['min']:.3f}-{s['max']:.3f} over "
              f"{len(reps)} repeats). Other Triton processes on the machine in {sum(1 for k in samples if k)} of "
              f"{len(samples)} samples."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="repeats of the whole comparison (default 5)")
    ap.add_argument("--n", type=int, default=1000, help="requests per path per repeat, 1 in flight (default 1000)")
    ap.add_argument("--block", type=int, default=10, help="requests per path per round (default 10)")
    ap.add_argument("--warmup", type=int, default=50, help="warm-up requests per path (default 50)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--conc-rounds", type=int, default=2, help="timed rounds per system per repeat (default 2)")
    ap.add_argument("--conc-seconds", type=float, default=3.0, help="seconds per concurrency round")
    ap.add_argument("--baseline", metavar="REV", default=None,
                    help="also serve the graph backend of this git revision (e.g. HEAD, a commit) side by side")
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
    graphs = GRAPHS if args.baseline else GRAPHS[:1]
    paths = tuple(p for p in PATHS if p not in GRAPHS or p in graphs)
    systems = ("plain_ensemble", FLOOR, *graphs)
    compared = (FLOOR, *graphs)  # what each adds over the plain ensemble

    t_begin = time.perf_counter()
    result: dict = {"benchmark": "bench/overhead.py", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "command": "python3 " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
                    "machine": machine(), "git": git_state(), "app_spec": APP,
                    "profile": {"gpu": "cpu", "mig": 1, "mps": 1, "batch": 1, "latency_ms": PROFILE_LATENCY_MS,
                                "throughput_rps": PROFILE_RPS, "demand_rps": DEMAND_RPS},
                    "stage_count": {"jigsaw_stages": JIGSAW_STAGES,
                                    "how": "stage a (stamps the deadline) + stage b; the plain ensemble's 2 steps are the "
                                           "runners, which the jigsaw stages also call (BLS)"},
                    "params": vars(args), "paths": list(paths), "systems": list(systems), "compared": list(compared)}
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="jigsaw-overhead-") as tmp:
        tmp_path = Path(tmp)
        names = build_repository(tmp_path / "repo", dynamic_batching=not args.no_dynamic_batching,
                                 baseline=bool(args.baseline))
        result["runner_dynamic_batching"] = not args.no_dynamic_batching
        result["models"] = names.pop("models")
        result["configs"] = names.pop("configs")
        result["plan_entries"] = names.pop("plan_entries")
        backend = prepare_backend_dir(tmp_path / "backends")
        if args.baseline:
            commit = baseline_backend(args.baseline, backend, tmp_path / "baseline")
            result["baseline"] = {"rev": args.baseline, "commit": commit}
        http, grpc_port, metrics = free_ports(3)
        log = tmp_path / "tritonserver.log"
        try:
            with TritonServer(tmp_path / "repo", backend, http_port=http, grpc_port=grpc_port,
                              metrics_port=metrics, log_path=log, env=server_env()) as server:
                caller = Caller(server.grpc_url, names)
                pids = group_pids(server.pid)
                result["server_processes"] = len(pids)
                seen: list[int] = []
                seq_lat: dict[str, list[int]] = {p: [] for p in paths}
                conc_acc = {s: {"lat": [], "wall": 0.0, "errors": 0, "messages": {}, "scpu": 0.0, "ccpu": 0.0}
                            for s in systems}
                reps = []
                try:
                    result["machine"]["tritonserver"] = caller.c.get_server_metadata().version
                    result["outputs_match_direct_chain"] = check_outputs(caller, paths)
                    print(f"server up ({result['machine']['tritonserver']}); outputs match: "
                          f"{result['outputs_match_direct_chain']}", file=sys.stderr)
                    x = np.zeros((1, WIDTH), dtype=np.float32)
                    for p in paths:
                        for _ in range(args.warmup):
                            caller.call(p, x)
                    for s in systems:  # warm-up at this concurrency
                        closed_loop(server.grpc_url, names, s, args.concurrency, 1.0)
                    for i in range(args.repeats):
                        meter = LoadMeter(pids)
                        seen.append(other_triton_processes(server.pid))
                        seq = sequential(caller, paths, pids, args.n, args.block, rng, seq_lat)
                        con = concurrent(server.grpc_url, names, systems, pids, args.concurrency, args.conc_rounds,
                                         args.conc_seconds, conc_acc)
                        seen.append(other_triton_processes(server.pid))
                        rep = {"load": meter.stop(), "sequential": seq, "concurrency": con,
                               "added": {g: added(seq, con, g) for g in compared}}
                        reps.append(rep)
                        print(f"repeat {i + 1}: load {rep['load']['loadavg_end'][0]:.2f}, others "
                              f"{rep['load']['others_cores']:.2f} cores; " + "; ".join(
                                  f"{g}: {rep['added'][g]['per_stage_p50_ms']:.3f} ms/stage, "
                                  f"ratio {rep['added'][g]['concurrency_throughput_ratio']:.2f}" for g in compared),
                              file=sys.stderr)
                finally:
                    caller.close()
                result["jigsaw_metrics"] = jigsaw_metrics(server.metrics_url)
                result["other_triton_processes_samples"] = seen
        except BaseException:
            print(f"--- tritonserver log tail ({log}):\n" + (log.read_text(errors="replace")[-4000:]
                                                             if log.is_file() else "(none)"), file=sys.stderr)
            raise
    result["repeats"] = reps
    scpu = {p: sum(r["sequential"][p]["server_cpu_ms_per_req"] * r["sequential"][p]["n"] for r in reps) / 1e3
            for p in paths}
    ccpu = {p: sum(r["sequential"][p]["client_cpu_ms_per_req"] * r["sequential"][p]["n"] for r in reps) / 1e3
            for p in paths}
    result["pooled"] = {"sequential": {p: summary(seq_lat[p], None, scpu[p], ccpu[p]) for p in paths},
                        "concurrency": {s: conc_summary(conc_acc[s]) for s in systems}}
    result["spread"] = {g: {k: spread([r["added"][g][k] for r in reps]) for k in reps[0]["added"][g]}
                        for g in compared}
    result["goal_ms"] = 0.5
    result["goal"] = f"<= {result['goal_ms']} ms p50 added per jigsaw task stage vs the plain ensemble (median of repeats)"
    result["goal_met"] = result["spread"]["jigsaw_ensemble"]["per_stage_p50_ms"]["median"] <= result["goal_ms"]
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
