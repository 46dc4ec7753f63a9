"""How long tritonserver takes to unload the graph model (its ``render.GRAPH_INSTANCES`` instances),
on a real tritonserver serving the bundled CPU example: the control API's unload, then the model's
state polled until it is no longer READY or UNLOADING. Tritonserver finalises a model's instances one
after another (each its own Python stub), so this bounds a clean shutdown (docs/runtime.md).

    python3 bench/graph_unload.py --out bench/results/graph-unload.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tritonclient.grpc as grpcclient  # noqa: E402

from jigsawserve.orchestrator.spec.appspec import load_app  # noqa: E402
from jigsawserve.orchestrator.serving.control import control_headers  # noqa: E402
from jigsawserve.orchestrator.spec.gpus import gpu_type  # noqa: E402
from jigsawserve.orchestrator.serving.inventory import Inventory  # noqa: E402
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan  # noqa: E402
from jigsawserve.orchestrator.spec.profiles import load_profiles  # noqa: E402
from jigsawserve.orchestrator.serving.render import GRAPH_INSTANCES, build_configs, write_repository  # noqa: E402
from jigsawserve.orchestrator.serving.server import TritonServer, free_ports  # noqa: E402
from jigsawserve.orchestrator.serving.tritonenv import prepare_backend_dir, server_env  # noqa: E402

KEY = "graph-unload"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=float, default=90.0, help="seconds to wait for the unload")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    app = load_app(ROOT / "examples" / "cpu" / "app.yaml")
    plan = make_plan(app, load_profiles(ROOT / "examples" / "cpu" / "profiles.csv"), gpu_type("cpu"), 40.0,
                     PlanOptions(gpus=12))
    tmp = Path(tempfile.mkdtemp(prefix="graph-unload-"))
    write_repository(build_configs(plan, Inventory((), "cpu")), tmp / "repo")
    h, g, m = free_ports(3)
    with TritonServer(tmp / "repo", prepare_backend_dir(tmp / "backends"), http_port=h, grpc_port=g,
                      metrics_port=m, control_key=KEY, log_path=tmp / "server.log", env=server_env()) as server:
        server.wait_ready(120)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        headers = control_headers(KEY, grpc=True)
        started = time.monotonic()
        client.unload_model(app.name, headers=headers)
        state = "UNLOADING"
        while state in ("READY", "UNLOADING") and time.monotonic() - started < args.limit:
            time.sleep(0.1)
            state = {x.name: x.state for x in client.get_model_repository_index(headers=headers).models}.get(app.name)
        took = time.monotonic() - started
        client.close()
    record = {"command": "python3 bench/graph_unload.py " + " ".join(sys.argv[1:]), "host": platform.node(),
              "graph_instances": GRAPH_INSTANCES, "state_after": state, "unload_s": round(took, 2),
              "per_instance_s": round(took / GRAPH_INSTANCES, 2) if state not in ("READY", "UNLOADING") else None}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
