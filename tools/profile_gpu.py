"""Profile an app's torch variants on the GPU, per (MIG size, MPS processes, batch), in minutes.

The paper profiles every configuration (7-12 hours). We measure a subset and interpolate:

- segments 1g, 3g, 7g with one process and 1g, 3g with two MPS processes, at batches
  ``MEASURED_BATCHES`` (1, 4, 16); segments measured in ``WAVES``, several at once on disjoint SM caps
  summing to at most 100% (like co-located MIG slices, they share memory bandwidth);
- other batch sizes: p95 and mean latency piecewise linear in the batch between measured batches
  (latency is convex in the batch, so this errs on the slow side);
- other sizes: piecewise linear in 1/SMs between measured sizes (exact when latency = a + work/SMs).

A validation set (``HELD_OUT`` configurations on a few variants) is measured as well and compared
with its interpolation; the errors go to the report next to the CSV.

On a GPU without MIG a segment of size k with m MPS processes is emulated by m processes each capped
(``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``, ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``) at its share of the
MIG shape's SMs and memory, under a private MPS daemon; every output says it was emulated. The m
processes of a segment are measured concurrently; latency_ms is the worst p95 of them and
throughput_rps their summed rate. Each process runs captured CUDA graphs (triton_backend/zoo.py).

Calibration to Triton: those in-process times miss what serving adds per batch (the request's trip
through Triton, the Python backend's IPC, the copies in and out). So the first wave's segments are
measured again through a real tritonserver for one variant per task (``tools/probe.py``: jigsaw
runner models, the serving code and bindings), ``served = a + f x in-process`` is fitted to those
points (least relative squares), and every row of the written profile is corrected by it. The
in-process grid is written beside it (``<stem>.isolated.csv``); ``--reuse`` takes such a file and
measures only the variants it lacks.
"""
from __future__ import annotations

import csv
import gc
import json
import os
import tempfile
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from jigsawserve.orchestrator.spec.appspec import AppSpec
from jigsawserve.orchestrator.serving.binding import emulation_env
from jigsawserve.orchestrator.errors import InputError
from jigsawserve.orchestrator.spec.gpus import GpuType
from jigsawserve.orchestrator.spec.profiles import Sample, screened

# segments measured at the same time (their SM caps sum to at most 100%, like co-located MIG slices)
WAVES = (((1, 1), (3, 1), (1, 2)),   # 12% + 45% + 2 x 6% of the SMs
         ((7, 1),),                  # the whole GPU
         ((3, 2),))                  # 2 x 22%, with the held-out points (2 x 12% + 24%)
MPS = (1, 2)
MEASURED_BATCHES = (1, 4, 16)
BATCHES = (1, 2, 4, 8, 16)
HELD_OUT = ((2, 1, 8), (2, 2, 2))     # (size, mps, batch), measured on VALIDATION_VARIANTS
VALIDATION_VARIANTS = 3
WIDTH = 16
CALIBRATION_WAVE = WAVES[0]           # segments measured through Triton too, at MEASURED_BATCHES


# ------------------------------------------------------------------------------------------------
# worker: one CUDA process under its caps, driven by JSON lines on stdin

def _worker() -> None:
    import torch

    from jigsawserve.triton_backend.zoo import GraphRunner
    runner: GraphRunner | None = None
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["op"] == "load":
                t0 = time.perf_counter()
                runner = GraphRunner(cmd["arch"], WIDTH, max(cmd["sizes"]), sizes=cmd["sizes"])
                torch.cuda.synchronize()
                reply: dict[str, Any] = {"load_s": time.perf_counter() - t0,
                                         "memory_mb": torch.cuda.max_memory_reserved() / 2**20,
                                         "sms": torch.cuda.get_device_properties(0).multi_processor_count}
            elif cmd["op"] == "measure":
                assert runner is not None
                b = cmd["batch"]
                for _ in range(cmd["warmup"]):
                    runner.run_batch(b)
                torch.cuda.synchronize()
                times, end = [], time.perf_counter() + cmd["seconds"]
                gc.disable()  # as in a serving runner, which has frozen its objects: no full collection
                try:           # (0.13-0.19 s over torch and a model, bench/gc_pause.py) in a sample
                    while len(times) < cmd["min_reps"] or time.perf_counter() < end:
                        t0 = time.perf_counter()
                        runner.run_batch(b)
                        torch.cuda.synchronize()
                        times.append((time.perf_counter() - t0) * 1000)
                finally:
                    gc.enable()
                reply = {"p95": float(np.percentile(times, 95)), "median": float(np.median(times)),
                         "mean": float(np.mean(times)), "n": len(times)}
            elif cmd["op"] == "unload":
                runner = None
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                reply = {}
            else:
                return
        except Exception as exc:  # out of memory under the cap, capture failure: reported, not fatal
            runner = None
            torch.cuda.empty_cache()
            reply = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


class _Worker:
    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "jigsawserve.tools.profile_gpu"], env={**env, "JIGSAW_PROFILE_WORKER": "1"},
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"profiling worker pid {self.proc.pid} exited with code {self.proc.wait()}")
        return json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(op="quit")
                self.proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


def _all(workers: list[_Worker], **cmd: Any) -> list[dict[str, Any]]:
    """Send ``cmd`` to every worker at once (so they run concurrently), then collect the replies."""
    for w in workers:
        w.send(**cmd)
    return [w.receive() for w in workers]


# ------------------------------------------------------------------------------------------------
# driver

@dataclass
class Measured:
    """p95 / mean latency (ms) and throughput per (profile, size, mps, batch); None = did not run."""

    points: dict[tuple[str, int, int, int], tuple[float, float, float] | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _archs(apps: list[AppSpec]) -> dict[str, str]:
    """Profile name -> architecture of every torch variant of the apps (each profiled once)."""
    out = {}
    for app in apps:
        for task in app.tasks:
            for v in task.variants:
                if v.runtime.get("kind") != "torch":
                    raise InputError(f"{app.name}: tasks.{task.name}.variants.{v.name}: runtime kind is "
                                     f"{v.runtime.get('kind')!r}; the GPU profiler runs kind 'torch'")
                out[v.profile] = v.runtime["arch"]
    return out


def measure_config(archs: dict[str, str], size: int, mps: int, batches: tuple[int, ...], base_env: dict[str, str],
                   gpu: GpuType, total_sms: int, into: Measured, progress: Callable[[str], None],
                   seconds: float = 0.25) -> None:
    """Measure every arch at ``batches`` in one emulated (size, mps) segment: mps concurrent workers; an
    arch's batches screened (``jigsawserve.orchestrator.spec.profiles.screened``: rows disturbed by a neighbour's work are
    measured again, and a warning names those that stay so). A configuration that fails (out of memory
    under the cap, a crashed worker) is recorded as not running; crashed workers are replaced and the
    next arch goes on."""
    env = {**base_env, **emulation_env(gpu, size, mps, total_sms)}
    workers = [_Worker(env) for _ in range(mps)]

    def sample(b: int) -> Sample:
        """The segment at batch ``b``: its processes' worst p95 and median, mean batch time, summed rate."""
        rs = _all(workers, op="measure", batch=b, warmup=3, min_reps=20, seconds=seconds)
        if any("error" in r for r in rs):
            raise RuntimeError(next(r["error"] for r in rs if "error" in r))
        return Sample(max(r["p95"] for r in rs), max(r["median"] for r in rs),
                      float(np.mean([r["mean"] for r in rs])), sum(b / r["mean"] * 1000 for r in rs))

    try:
        for name, arch in archs.items():
            try:
                loaded = _all(workers, op="load", arch=arch, sizes=list(batches))
                errors = [r["error"] for r in loaded if "error" in r]
                if errors:
                    raise RuntimeError(errors[0])
                line = []
                samples = screened(batches, sample, f"{name} {size}g x{mps}",
                                   lambda text: progress(f"  warning: {text}"))
                for b, s in samples.items():
                    into.points[(name, size, mps, b)] = (s.p95_ms, s.mean_ms, s.throughput_rps)
                    line.append(f"b{b} {s.p95_ms:.2f}ms")
                _all(workers, op="unload")
                progress(f"  {size}g x{mps} {name:32s} load {loaded[0]['load_s']:.1f}s  " + "  ".join(line))
            except RuntimeError as exc:
                into.notes.append(f"{name} {size}g mps{mps}: {exc}")
                progress(f"  {size}g x{mps} {name:32s} did not run: {exc}")
                for b in batches:
                    into.points.setdefault((name, size, mps, b), None)
                for w in workers:  # start afresh: a worker may have died or have an unread reply
                    w.stop()
                workers = [_Worker(env) for _ in range(mps)]
    finally:
        for w in workers:
            w.stop()


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    """Piecewise linear through (xs, ys), extended linearly past the ends."""
    if len(xs) == 1:
        return ys[0]
    i = int(np.clip(np.searchsorted(xs, x) - 1, 0, len(xs) - 2))
    x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def interpolate(measured: Measured, name: str, gpu: GpuType, size: int, mps: int, batch: int
                ) -> tuple[float, float, float] | None:
    """(p95, mean, throughput) of a configuration from the measured grid; None when it cannot run."""
    def along_batch(k: int) -> tuple[float, float] | None:
        pts = sorted((b, v) for (n, s, m, b), v in measured.points.items() if n == name and s == k and m == mps)
        good = [(b, v) for b, v in pts if v is not None]
        failed = [b for b, v in pts if v is None]
        if not good or (failed and batch >= min(failed)):  # it did not run at this batch or a smaller one
            return None
        bs = [float(b) for b, _ in good]
        return _interp(batch, bs, [v[0] for _, v in good]), _interp(batch, bs, [v[1] for _, v in good])

    sizes = sorted({s for (n, s, m, _) in measured.points if n == name and m == mps})
    known = [(s, along_batch(s)) for s in sizes]
    known = [(s, v) for s, v in known if v is not None]
    if not known:
        return None
    if size > max(s for s, _ in known):
        return None  # no extrapolation to bigger segments than measured
    if size in dict(known):
        p95, mean = dict(known)[size]
    else:
        inv = [1.0 / gpu.shapes[s].sms for s, _ in known]
        order = np.argsort(inv)
        xs = [inv[i] for i in order]
        p95 = _interp(1.0 / gpu.shapes[size].sms, xs, [known[i][1][0] for i in order])
        mean = _interp(1.0 / gpu.shapes[size].sms, xs, [known[i][1][1] for i in order])
    p95, mean = max(p95, 1e-3), max(mean, 1e-3)
    return p95, mean, mps * batch / mean * 1000


def isolated_path(out: str) -> str:
    """Where the in-process grid of a profile written to ``out`` goes: ``<stem>.isolated.csv``."""
    base = out[:-4] if out.endswith(".csv") else out
    return f"{base}.isolated.csv"


def load_isolated(path: str, gpu: GpuType) -> Measured:
    """The measured points of an in-process profile (``<stem>.isolated.csv``) for ``--reuse``: every
    variant with a configuration that ran counts as profiled, its measured-grid points missing from
    the file as not running; a variant none of whose configurations ran is left out (measured again)."""
    measured = Measured()
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("gpu") == gpu.name]
    if not rows:
        raise InputError(f"{path}: no rows for GPU type {gpu.name}")
    for r in rows:
        if r.get("source") != "measured":
            continue
        size, mps, b = int(r["mig"]), int(r["mps"]), int(r["batch"])
        thr = float(r["throughput_rps"])  # 0: measured as not running
        measured.points[(r["variant"], size, mps, b)] = (float(r["latency_ms"]), mps * b * 1000 / thr, thr) if thr else None
    ran = {k[0] for k, v in measured.points.items() if v}
    for name in list({k[0] for k in measured.points} - ran):  # nothing ran: measure it again
        measured.points = {k: v for k, v in measured.points.items() if k[0] != name}
    for name in ran:
        for wave in WAVES:
            for size, mps in wave:
                for b in MEASURED_BATCHES:
                    measured.points.setdefault((name, size, mps, b), None)
    return measured


def calibration_archs(apps: list[AppSpec]) -> dict[str, str]:
    """One variant per task of the apps (the middle one of its list), each profile once."""
    out = {}
    for app in apps:
        for task in app.tasks:
            v = task.variants[len(task.variants) // 2]
            out[v.profile] = v.runtime["arch"]
    return out


def probe_config(probe: Any, archs: dict[str, str], size: int, mps: int, env: dict[str, str],
                 into: Measured, progress: Callable[[str], None]) -> None:
    """Measure ``archs`` at MEASURED_BATCHES in one emulated segment served by Triton (``jigsawserve.tools.probe``)."""
    from tritonclient.utils import InferenceServerException
    for name, arch in archs.items():
        model = f"probe__{name}__{size}g{mps}p".replace("-", "_")
        try:
            load_s = probe.load(model, {"kind": "torch", "arch": arch}, list(MEASURED_BATCHES), [env] * mps)
        except InferenceServerException as exc:
            into.notes.append(f"{name} {size}g mps{mps} through Triton: {exc}")
            progress(f"  triton {size}g x{mps} {name:28s} did not load: {str(exc)[:200]}")
            continue
        line = []
        try:
            for b in MEASURED_BATCHES:
                t = probe.measure(model, b, concurrency=mps)
                into.points[(name, size, mps, b)] = (t.p95_ms, t.mean_ms, t.throughput_rps)
                line.append(f"b{b} {t.p95_ms:.2f}ms")
        except InferenceServerException as exc:
            into.notes.append(f"{name} {size}g mps{mps} through Triton: {exc}")
            line.append(f"failed: {str(exc)[:200]}")
        finally:
            probe.unload(model)
        progress(f"  triton {size}g x{mps} {name:28s} load {load_s:.1f}s  " + "  ".join(line))


def fit_calibration(isolated: Measured, served: Measured) -> dict[str, Any]:
    """``served = a + f x isolated`` (p95, ms) fitted in least relative squares over the points both
    measured; with each point's residual."""
    pairs = [(k, isolated.points[k][0], v[0]) for k, v in sorted(served.points.items())
             if v and isolated.points.get(k)]
    if len(pairs) < 2:
        raise RuntimeError(f"calibration through Triton measured {len(pairs)} comparable points; at least 2 needed")
    x = np.array([p[1] for p in pairs])
    y = np.array([p[2] for p in pairs])
    (a, f), *_ = np.linalg.lstsq(np.stack([1 / y, x / y], axis=1), np.ones_like(y), rcond=None)
    fitted = a + f * x
    err = 100 * (fitted - y) / y
    return {"offset_ms": round(float(a), 4), "factor": round(float(f), 4),
            "fit_mean_abs_error_pct": round(float(np.mean(np.abs(err))), 1),
            "fit_max_abs_error_pct": round(float(np.max(np.abs(err))), 1),
            "points": [{"variant": k[0], "mig": k[1], "mps": k[2], "batch": k[3], "isolated_p95_ms": round(xi, 3),
                        "served_p95_ms": round(yi, 3), "fitted_p95_ms": round(float(fi), 3), "error_pct": round(float(e), 1)}
                       for (k, xi, yi), fi, e in zip(pairs, fitted, err)]}


def calibrated(rows: list[dict[str, Any]], offset_ms: float, factor: float) -> list[dict[str, Any]]:
    """``rows`` with p95 latency and mean batch time (hence throughput) mapped by ``a + f x t``; rows of
    configurations that did not run (throughput 0) stay as they are."""
    out = []
    for r in rows:
        if not r["throughput_rps"]:
            out.append(dict(r))
            continue
        served_mean = offset_ms + factor * r["mps"] * r["batch"] * 1000 / r["throughput_rps"]
        out.append({**r, "latency_ms": round(offset_ms + factor * r["latency_ms"], 3),
                    "throughput_rps": round(r["mps"] * r["batch"] * 1000 / served_mean, 1)})
    return out


@dataclass
class ProfileRun:
    rows: list[dict[str, Any]]          # calibrated to Triton (what the planner reads)
    isolated: list[dict[str, Any]]      # in-process, as measured and interpolated
    report: dict[str, Any]


def profile(apps: list[AppSpec], gpu: GpuType, base_env: dict[str, str], total_sms: int, device: str,
            progress: Callable[[str], None] = print, reuse: Measured | None = None,
            probe: Any = None) -> ProfileRun:
    """Measure the subset in ``WAVES`` (the variants ``reuse`` lacks), interpolate the full grid,
    validate the interpolation on the held-out points measured alongside, and calibrate it to Triton
    through ``probe`` (a ``jigsawserve.tools.probe.Probe`` on a server started with ``base_env``)."""
    t0 = time.perf_counter()
    every = _archs(apps)
    measured, held = Measured(), Measured()
    if reuse is not None:
        measured.points.update({k: v for k, v in reuse.points.items() if k[0] in every})
    profiled = {k[0] for k in measured.points}
    archs = {n: a for n, a in every.items() if n not in profiled}
    check = dict(list(archs.items())[:VALIDATION_VARIANTS])
    if profiled:
        progress(f"reusing the in-process profile of {len(profiled)} variants: {', '.join(sorted(profiled))}")
    for i, wave in enumerate(WAVES if archs else (), 1):
        configs = [(archs, size, mps, MEASURED_BATCHES, measured) for size, mps in wave]
        if i == len(WAVES):
            configs += [(check, size, mps, (b,), held) for size, mps, b in HELD_OUT]
        progress(f"wave {i}/{len(WAVES)}: segments " + ", ".join(f"{c[1]}g x{c[2]}" for c in configs)
                 + f" at once, emulated on {device}")
        threads = [threading.Thread(target=measure_config, args=(a, size, mps, bs, base_env, gpu, total_sms, into,
                                                                 progress)) for a, size, mps, bs, into in configs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    rows = []
    for name in every:
        for size in sorted(gpu.shapes):
            for mps in MPS:
                for b in BATCHES:
                    got = measured.points.get((name, size, mps, b), "missing")
                    src = "measured" if got != "missing" else "interpolated"
                    v = got if got != "missing" else interpolate(measured, name, gpu, size, mps, b)
                    if v is None and got == "missing":
                        continue  # outside the measured range (e.g. 7g with 2 MPS processes)
                    p95, _, thr = v if v else (0.0, 0.0, 0.0)
                    rows.append({"variant": name, "gpu": gpu.name, "mig": size, "mps": mps, "batch": b,
                                 "latency_ms": round(p95, 3), "throughput_rps": round(thr, 1), "source": src})
    served = Measured()
    if probe is not None:
        targets = calibration_archs(apps)
        progress(f"calibration: segments {', '.join(f'{k}g x{m}' for k, m in CALIBRATION_WAVE)} at once, served by "
                 f"tritonserver, variants {', '.join(targets)}")
        threads = [threading.Thread(target=probe_config, args=(probe, targets, size, mps,
                                                               emulation_env(gpu, size, mps, total_sms), served, progress))
                   for size, mps in CALIBRATION_WAVE]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    report: dict[str, Any] = {"device": device, "gpu_type": gpu.name, "emulated_mig": True,
                              "waves": [[f"{size}g x{mps}" for size, mps in w] for w in WAVES],
                              "held_out": [f"{size}g x{mps} b{b}" for size, mps, b in HELD_OUT],
                              "measured_batches": list(MEASURED_BATCHES), "batches": list(BATCHES),
                              "notes": measured.notes + held.notes + served.notes, "validation": [],
                              "reused_variants": sorted(profiled)}
    for (name, size, mps, b), v in sorted(held.points.items()):
        guess = interpolate(measured, name, gpu, size, mps, b)
        if v and guess:
            report["validation"].append({"variant": name, "mig": size, "mps": mps, "batch": b,
                                         "measured_p95_ms": round(v[0], 3), "interpolated_p95_ms": round(guess[0], 3),
                                         "error_pct": round(100 * (guess[0] - v[0]) / v[0], 1)})
    errs = [abs(r["error_pct"]) for r in report["validation"]]
    if errs:
        report["validation_mean_abs_error_pct"] = round(float(np.mean(errs)), 1)
        report["validation_max_abs_error_pct"] = round(float(np.max(errs)), 1)
    served_rows = rows
    if probe is not None:
        fit = fit_calibration(measured, served)
        report["calibration"] = {"segments": [f"{k}g x{m}" for k, m in CALIBRATION_WAVE],
                                 "batches": list(MEASURED_BATCHES), **fit}
        served_rows = calibrated(rows, fit["offset_ms"], fit["factor"])
        progress(f"calibration: served = {fit['offset_ms']:.3f} ms + {fit['factor']:.3f} x in-process "
                 f"(fit error mean {fit['fit_mean_abs_error_pct']}%, max {fit['fit_max_abs_error_pct']}%)")
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["rows_measured"] = sum(r["source"] == "measured" for r in rows)
    report["rows_total"] = len(rows)
    return ProfileRun(served_rows, rows, report)


def run(apps: list[AppSpec], gpu: GpuType, out: str, progress: Callable[[str], None] = print,
        reuse: str | None = None) -> ProfileRun:
    """Profile the variants of ``apps`` on GPU 0 of this machine (NVML inventory) under a private MPS
    daemon, calibrated through a tritonserver; write the calibrated CSV to ``out`` (plus a ``source``
    column), the in-process grid to ``<stem>.isolated.csv`` and the report to ``<out>.report.json``.
    ``reuse``: an earlier ``.isolated.csv`` whose variants are not measured again."""
    from contextlib import ExitStack
    from pathlib import Path

    from jigsawserve.orchestrator.serving.inventory import detect
    from jigsawserve.orchestrator.serving.server import MpsDaemon, TritonServer, free_ports
    from jigsawserve.orchestrator.serving.tritonenv import prepare_backend_dir, server_env
    from jigsawserve.tools.probe import Probe

    inventory = detect(None)
    if inventory.is_cpu_only:
        raise RuntimeError("no NVIDIA GPU found through NVML: the GPU profiler needs one")
    device = inventory.gpus[0]
    if device.mig_enabled:
        raise RuntimeError(f"GPU {device.index} ({device.name}) has MIG enabled: profile on its MIG devices is not "
                           "implemented; this profiler emulates MIG with MPS on a GPU without MIG")
    total_sms = device.sms or gpu.whole.sms
    earlier = load_isolated(reuse, gpu) if reuse else None
    with ExitStack() as stack:
        mps = stack.enter_context(MpsDaemon())
        visible = {"CUDA_VISIBLE_DEVICES": device.uuid}
        base = {**os.environ, **mps.env(), **visible}
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jigsaw-profile-")))
        (tmp / "repo").mkdir()
        http, grpc, metrics = free_ports(3)
        server = stack.enter_context(TritonServer(tmp / "repo", prepare_backend_dir(tmp / "backends"), load=(),
                                                  http_port=http, grpc_port=grpc, metrics_port=metrics,
                                                  env={**server_env(), **mps.env(), **visible},
                                                  log_path=tmp / "server.log"))
        probe = Probe(server.grpc_url, tmp / "repo", WIDTH)
        stack.callback(probe.close)
        result = profile(apps, gpu, base, total_sms, f"{device.name} (MIG emulated with MPS SM caps)", progress,
                         reuse=earlier, probe=probe)
    for path, rows in ((out, result.rows), (isolated_path(out), result.isolated)):
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    with open(f"{out}.report.json", "w") as fh:
        json.dump(result.report, fh, indent=2)
    return result


if __name__ == "__main__" and os.environ.get("JIGSAW_PROFILE_WORKER") == "1":
    _worker()
