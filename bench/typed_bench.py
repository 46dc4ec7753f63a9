"""Shared by the typed-pipeline benchmarks (ocr_parity.py, ocr_overhead.py, fanout_refine.py): a typed app
pinned to one variant per task, served on this CPU by a real tritonserver, and the machine's description."""
from __future__ import annotations

import copy
import os
import platform
from importlib import metadata
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from jigsawserve.orchestrator.spec.appspec import AppSpec, parse_app
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.serving.inventory import Inventory
from jigsawserve.orchestrator.planning.plan import Plan
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan
from jigsawserve.orchestrator.spec.profiles import load_profiles
from jigsawserve.orchestrator.serving.render import build_configs, write_repository
from jigsawserve.orchestrator.serving.server import TritonServer, free_ports
from jigsawserve.orchestrator.serving.tritonenv import find_runtime, prepare_backend_dir, server_env


def pinned(app: AppSpec, choice: dict[str, str]) -> AppSpec:
    """``app`` with only the variant ``choice`` names at each task (so that the plan cannot route elsewhere)."""
    doc = copy.deepcopy(dict(app.doc))
    for task, variant in choice.items():
        doc["tasks"][task]["variants"] = {variant: doc["tasks"][task]["variants"][variant]}
    for edge in doc.get("edges") or []:
        edge.pop("factors", None)
    return parse_app(doc, origin=f"{app.name} pinned to {choice}")


@contextmanager
def serve(app: AppSpec, profiles: Path, out: Path, demand: float = 2.0, graph_instances: int = 4,
          extra: Callable[[Path], None] | None = None) -> Iterator[tuple[TritonServer, Plan]]:
    """Plan ``app`` for ``demand`` on 4 whole-CPU slices, render it (``extra`` adds models to the repository)
    and serve it; the server is stopped through its process group on exit."""
    plan = make_plan(app, load_profiles(profiles), gpu_type("cpu"), demand, PlanOptions(gpus=4))
    write_repository(build_configs(plan, Inventory(gpus=(), source="bench: cpu"), graph_instances=graph_instances),
                     out / "repo")
    if extra:
        extra(out / "repo")
    http_port, grpc_port, metrics_port = free_ports(3)
    with TritonServer(out / "repo", prepare_backend_dir(out / "backends"), http_port=http_port, grpc_port=grpc_port,
                      metrics_port=metrics_port, log_path=out / "tritonserver.log", env=server_env(),
                      ready_timeout_s=180.0) as server:
        yield server, plan


def machine() -> dict[str, Any]:
    """Where a benchmark ran: CPU model and count, OS, Python, tritonserver."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpu": model, "cpus": os.cpu_count(), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "gpu": None,
            "tritonserver": f"2.51 from nvidia-pytriton {metadata.version('nvidia-pytriton')} ({find_runtime().server_bin})",
            "onnxruntime": metadata.version("onnxruntime")}
