"""``jigsaw demo --app APP.yaml``: a typed app with ground truth end to end on this machine: plan from its
profiles, render, serve with a real tritonserver, send a fresh dataset's requests through ordinary gRPC
clients, and score what the server returned (quality) and what the edges fanned out (measured against
planned). Bad input is sent too, and the server must stay healthy after it.
"""
from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.serving.inventory import Inventory
from jigsawserve.orchestrator.planning.plan import Plan
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan
from jigsawserve.orchestrator.spec.profiles import load_profiles
from jigsawserve.orchestrator.serving.render import build_configs, write_repository
from jigsawserve.orchestrator.serving.server import TritonServer, free_ports
from jigsawserve.orchestrator.serving.tritonenv import prepare_backend_dir, server_env
from jigsawserve.orchestrator.spec.typed import VARIANT_SUFFIX
from jigsawserve.tools import evaluate
from jigsawserve.orchestrator.workload.typed_client import infer

GRAPH_INSTANCES = 4  # enough for the demo's few clients; each is a stub process to start and stop


def planned_fanout(app: Any, plan: Plan) -> dict[str, float]:
    """Per edge, the spec's fan-out weighted by the plan's shares of the parent's variants."""
    out = {}
    for e in app.edges:
        entries = [x for x in plan.entries if x.task == e.src and x.share > 0]
        total = sum(x.share for x in entries)
        out[f"{e.src}->{e.dst}"] = sum(x.share * e.factor_for(x.variant) for x in entries) / total
    return out


def edge_counts(metrics_url: str) -> dict[str, tuple[float, float]]:
    """Per edge ``parent->child``, (parent items adapted, child items made) so far, over all variants."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    counts: dict[str, list[float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            name = s.name.removesuffix("_total")
            if name in ("jigsaw_edge_parent_items", "jigsaw_edge_child_items"):
                pair = counts.setdefault(f"{s.labels['parent']}->{s.labels['child']}", [0.0, 0.0])
                pair[name == "jigsaw_edge_child_items"] += s.value
    return {k: (v[0], v[1]) for k, v in counts.items()}


def run(app: Any, profiles_path: Path, out: Path, requests: int = 40, demand: float = 2.0, gpus: int = 4,
        clients: int = 4, progress: Callable[[str], None] = print) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    metric, score = evaluate.scorer(app)
    progress(f"rendering {requests} ground-truth requests into {out / 'dataset'}")
    samples = evaluate.load_dataset(app, evaluate.make_dataset(app, out / "dataset", requests, seed=1))
    plan = make_plan(app, load_profiles(profiles_path), gpu_type("cpu"), demand, PlanOptions(gpus=gpus))
    plan.save(out / "plan.json")
    progress(plan.summary())
    write_repository(build_configs(plan, Inventory(gpus=(), source="demo: cpu"), graph_instances=GRAPH_INSTANCES),
                     out / "repo")
    http_port, grpc_port, metrics_port = free_ports(3)
    with TritonServer(out / "repo", prepare_backend_dir(out / "backends"), http_port=http_port, grpc_port=grpc_port,
                      metrics_port=metrics_port, log_path=out / "tritonserver.log", env=server_env()) as server:
        progress(f"tritonserver pid {server.pid} ready at {server.grpc_url}; sending {requests} requests "
                 f"from {clients} clients")
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            def one(sample: evaluate.Sample) -> tuple[dict | str, float]:
                started = time.monotonic()
                try:
                    answer: dict | str = infer(client, app.name, sample.tensors, timeout_s=60)
                except InferenceServerException as exc:
                    answer = str(exc)
                return answer, (time.monotonic() - started) * 1000

            with ThreadPoolExecutor(clients) as pool:
                results = list(pool.map(one, samples))
            time.sleep(0.3)  # the stages send their counters at most every 0.1 s
            counts = edge_counts(server.metrics_url)
            bad = one(evaluate.Sample({s.name: np.array([[b"these bytes are not an image"]], np.object_)
                                       for s in app.typed.inputs}, None))[0]
            healthy = client.is_server_live() and client.is_model_ready(app.name)
        finally:
            client.close()
    answered = [(s, a) for s, (a, _) in zip(samples, results) if isinstance(a, dict)]
    errors = [a for a, _ in results if isinstance(a, str)]
    latencies = [ms for a, ms in results if isinstance(a, dict)]
    variants: dict[str, dict[str, int]] = {}
    for _, a in answered:
        for name, values in a.items():
            if name.endswith(VARIANT_SUFFIX):
                sink = variants.setdefault(name[:-len(VARIANT_SUFFIX)], {})
                for v in values:
                    sink[v.decode()] = sink.get(v.decode(), 0) + 1
    planned = planned_fanout(app, plan)
    summary = {
        "app": app.name, "requests": len(samples), "answered": len(answered), "errors": len(errors),
        "error_examples": errors[:3],
        "latency_ms": {"p50": float(np.percentile(latencies, 50)), "p95": float(np.percentile(latencies, 95))}
        if latencies else {},
        "quality": {"metric": metric, "measured": float(np.mean([score(s.label, a) for s, a in answered]
                                                                + [0.0] * len(errors))),
                    "items": len(samples)},
        "fanout": {edge: {"planned": round(p, 4), "measured": round(counts[edge][1] / counts[edge][0], 4)
                          if counts.get(edge, (0, 0))[0] else None} for edge, p in planned.items()},
        "plan": {"accuracy": plan.accuracy, "slices": plan.slices, "demand_rps": plan.demand_rps,
                 "tasks": {t: [{"variant": e.variant, "batch": e.batch, "count": e.count, "share": e.share}
                               for e in es] for t, es in plan.tasks().items()},
                 "variant_accuracies": {t.name: {v.name: v.raw_accuracy for v in t.variants} for t in app.tasks}},
        "answered_by": variants,
        "bad_input": {"error": bad if isinstance(bad, str) else None, "healthy_after": healthy},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
