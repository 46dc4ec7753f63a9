"""One closed-loop run: plan, render, serve, replay a demand trace with live replanning, report.

    app spec + profiles -> initial plan -> rendered repository -> tritonserver (+ MPS daemon) ->
    load generator (trace) || controller (metrics -> forecast -> replan -> apply) -> RUN/ -> report

A typed app is sent real requests: those of ``dataset``, or ``DATASET_REQUESTS`` that its
``evaluation.make`` writes into RUN/dataset, in turn.

RUN/ holds requests.csv, events.jsonl, run.json, host.csv (host CPU and GPU utilization, per second),
repo/ (the served repository), server.log, and the report (summary.json, PNGs) that orchestrator/reporting/report.py
makes from them.
"""
from __future__ import annotations

import json
import os
import secrets
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..spec.appspec import AppSpec
from ..errors import InputError
from .controller import Controller, EventLog, Policy
from .forecast import HoltQuantile, MovingAverage
from ..spec.gpus import GpuType
from ..serving.inventory import Inventory
from ..planning.planner import PlanOptions
from ..spec.profiles import Profiles

FORECASTERS = {"holt": HoltQuantile, "moving-average": MovingAverage}
DATASET_REQUESTS = 32  # a typed app's requests made by its evaluation.make when no dataset is given


@dataclass
class Experiment:
    app: AppSpec
    profiles: Profiles
    gpu: GpuType
    opts: PlanOptions
    inventory: Inventory
    trace: Any                      # jigsawserve.orchestrator.workload.trace.Trace, already scaled and compressed
    interval_s: float               # the controller's interval in seconds
    out: Path
    system: str = ""                # label for the report, e.g. "A+S+T"
    forecaster: str = "holt"
    policy: Policy = Policy()
    seed: int = 0
    ready_timeout_s: float = 120.0
    notes: str = ""
    send_deadline: bool = True      # requests carry the client's deadline (jigsawserve.orchestrator.workload.loadgen, deadline_ns)
    dataset: Path | None = None     # a typed app's requests (labels.jsonl); None: made by its evaluation.make


def typed_payloads(exp: Experiment) -> tuple[list[dict[str, Any]] | None, Path | None]:
    """A typed app's requests' tensors and the dataset they come from; (None, None) for an untyped app."""
    from jigsawserve.tools.evaluate import load_dataset, make_dataset

    app = exp.app
    if app.typed is None:
        return None, None
    dataset = exp.dataset
    if dataset is None:
        if not app.typed.evaluation:
            raise InputError(f"app {app.name} is typed and has no evaluation.make: give a dataset of its requests "
                             "(--dataset DIR with labels.jsonl)")
        dataset = make_dataset(app, exp.out / "dataset", DATASET_REQUESTS)
    tensors = [s.tensors for s in load_dataset(app, dataset)]
    if not tensors:
        raise InputError(f"dataset {dataset}: no requests in it")
    return tensors, Path(dataset)


def _device(inventory: Inventory) -> str:
    """What served the run, in a report's words: the GPUs by name, or the CPU (and why no GPU was used)."""
    if inventory.gpus:
        return f"{inventory.source} " + ", ".join(d.name for d in inventory.gpus)
    why = inventory.source.removeprefix("nvml unavailable: ")
    return f"CPU ({os.cpu_count()} cores; no NVIDIA GPU: {why})" if why != inventory.source else f"CPU ({why})"


def run(exp: Experiment, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the experiment into ``exp.out``; the report's summary."""
    import tritonclient.grpc as grpcclient

    from jigsawserve.orchestrator.reporting import report
    from jigsawserve.orchestrator.reporting.hostload import FILE as HOST_FILE
    from jigsawserve.orchestrator.reporting.hostload import HostSampler
    from jigsawserve.orchestrator.workload.loadgen import run_load_apart
    from jigsawserve.orchestrator.workload.trace import arrivals

    from ..serving.control import Applier, control_headers, reload_runner
    from ..serving.server import MpsDaemon, TritonServer, free_ports
    from ..serving.tritonenv import prepare_backend_dir, server_env

    out = exp.out
    out.mkdir(parents=True, exist_ok=True)
    for name in ("events.jsonl", "requests.csv", "summary.json"):
        (out / name).unlink(missing_ok=True)
    trace = exp.trace
    times = arrivals(trace, seed=exp.seed)
    payloads, dataset = typed_payloads(exp)
    events = EventLog(out / "events.jsonl", time.time())  # re-based on the start of the load below
    repo = out / "repo"
    controller = Controller(exp.app, exp.profiles, exp.gpu, exp.opts, exp.inventory, repo, "",
                            FORECASTERS[exp.forecaster](), events, exp.policy, progress=progress)
    first_bins = trace.rates[:max(1, round(exp.interval_s / trace.interval_s))]
    first = max(float(first_bins.mean()), 1.0) * (1 + exp.policy.headroom)
    key = secrets.token_hex(16)
    emulated = any(not d.mig_enabled for d in exp.inventory.gpus) and exp.gpu.mig
    (out / "run.json").write_text(json.dumps({
        "app": exp.app.name, "slo_ms": exp.app.latency_slo_ms, "system": exp.system or exp.opts.features.label,
        "device": _device(exp.inventory),
        "emulated_mig": bool(emulated), "gpu_type": exp.gpu.name, "interval_s": exp.interval_s,
        "duration_s": trace.duration_s, "peak_rps": trace.peak_rps, "forecaster": exp.forecaster, "requests_scheduled": int(len(times)),
        "dataset": str(dataset) if dataset else None, "notes": exp.notes}, indent=2) + "\n")
    with ExitStack() as stack:
        controller.initial(first)
        env = server_env()
        manifest = json.loads((repo / "jigsaw.json").read_text())
        if manifest.get("uses_mps"):
            if not MpsDaemon.available():
                raise RuntimeError("the plan needs MPS, which is not available here")
            env.update(stack.enter_context(MpsDaemon()).env())
        backends = prepare_backend_dir(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jigsaw-be-"))))
        http, grpc, metrics = free_ports(3)
        progress(f"starting tritonserver ({len(manifest['models'])} models)")
        server = stack.enter_context(TritonServer(repo, backends, http_port=http, grpc_port=grpc, metrics_port=metrics,
                                                  control_key=key, env=env, log_path=out / "server.log",
                                                  ready_timeout_s=exp.ready_timeout_s))
        client = grpcclient.InferenceServerClient(server.grpc_url)
        stack.callback(client.close)
        headers = control_headers(key, grpc=True)
        controller.metrics_url = server.metrics_url
        applier = Applier(repo, client, headers, progress=lambda line: progress(f"  {line}"))
        stack.callback(applier.wait)
        controller.apply_plan = applier
        controller.reload_runner = lambda name: reload_runner(client, headers, repo, name)
        stop = threading.Event()
        controlling: list[threading.Thread] = []  # the controller's thread, once the load's origin is set

        def start(start_at: float) -> None:
            """The load's origin, once its generator is connected: the controller's clock starts with it."""
            events.origin = start_at
            stack.enter_context(HostSampler(out / HOST_FILE, start_at, gpus=[d.index for d in exp.inventory.gpus]))

            def control() -> None:
                time.sleep(max(0.0, start_at - time.time()))
                controller.run(exp.interval_s, stop)

            thread = threading.Thread(target=control, daemon=True)
            controlling.append(thread)
            stack.callback(thread.join)
            stack.callback(stop.set)
            thread.start()

        progress(f"replaying {len(times)} requests over {trace.duration_s:.0f} s (controller every "
                 f"{exp.interval_s:g} s), peak {trace.peak_rps:.1f} req/s")
        # the load in a process of its own: the controller's Python work (planning) would otherwise
        # hold the GIL against the generator's event loop and make answers look late
        result = run_load_apart(server.grpc_url, exp.app.name, times, items=1, width=None, slo_ms=None,
                                on_progress=lambda p: progress(f"  load: {p.line()}"), on_start=start,
                                progress_s=max(5.0, exp.interval_s), timeout_s=30.0, seed=exp.seed,
                                send_deadline=exp.send_deadline, payloads=payloads)
        result.write_csv(out / "requests.csv")
        stop.set()
        for thread in controlling:
            thread.join()
        time.sleep(0.3)  # the stages' counters reach the server within 0.1 s
        try:
            controller.record_metrics()
        except OSError as exc:  # the server is gone: report what the run recorded
            progress(f"final metrics scrape failed: {exc}")
    summary = report.summarize(out)
    report.plot(out)
    return summary
