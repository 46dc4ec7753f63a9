"""Overload against a real tritonserver: a runner offered three times what it can serve. The stages
must shed the excess early (drops) and keep what they admit within the SLO, instead of queueing
everything behind the runner until every answer is late; also when the runner is slower than its
profile says (the stages then learn its pace from its answers). The SLO is the client's: the
stages' admission reserve covers the way to the client and back."""
from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from jigsawserve.orchestrator.spec.appspec import parse_app
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.serving.inventory import Inventory
from jigsawserve.orchestrator.serving.metrics import scrape
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan
from jigsawserve.orchestrator.spec.profiles import Profiles, ProfilePoint
from jigsawserve.orchestrator.serving.render import build_configs, write_repository
from jigsawserve.orchestrator.serving.server import TritonServer, free_ports
from jigsawserve.orchestrator.serving.tritonenv import prepare_backend_dir, server_env

SLO_MS = 300.0
SERVICE_MS = 20.0          # one request at a time: the runner serves 50 req/s
OFFERED_RPS = 150.0
SECONDS = 4.0


def _plan(actual_ms: float):
    """One task, one runner of one instance profiled at SERVICE_MS per request; it takes ``actual_ms``."""
    app = parse_app({"name": "slow", "latency_slo_ms": SLO_MS, "accuracy_slo": 0.5, "tensor_width": 16,
                     "tasks": {"work": {"variants": {"w": {"accuracy": 1.0, "runtime": {
                         "kind": "numpy_mlp", "depth": 1, "delay_ms": actual_ms}}}}}},
                    origin="test_overload")
    profiles = Profiles((ProfilePoint("w", "cpu", 1, 1, 1, SERVICE_MS, 1000 / SERVICE_MS),))
    return make_plan(app, profiles, gpu_type("cpu"), 40.0, PlanOptions(gpus=1))


def _offer(url: str) -> tuple[list[float], list[str]]:
    """OFFERED_RPS open-loop requests for SECONDS: the latency (ms) of every answer, the error of every
    failure."""
    client = grpcclient.InferenceServerClient(url)
    inp = grpcclient.InferInput("INPUT", [1, 1, 16], "FP32")
    inp.set_data_from_numpy(np.ones((1, 1, 16), dtype=np.float32))
    latencies, errors, lock = [], [], threading.Lock()
    n = int(OFFERED_RPS * SECONDS)
    done = threading.Semaphore(0)
    start = time.monotonic()
    for i in range(n):
        time.sleep(max(0.0, start + i / OFFERED_RPS - time.monotonic()))
        sent = time.monotonic()

        def callback(result, error, sent=sent):
            with lock:
                if error is not None:
                    errors.append(str(error))
                else:
                    latencies.append((time.monotonic() - sent) * 1000)
            done.release()
        client.async_infer("slow", [inp], callback)
    for _ in range(n):
        assert done.acquire(timeout=30), "a request got no answer"
    client.close()
    return latencies, errors


@pytest.fixture
def no_gc():
    """The collector off during the offer: with it on, a burst of answers about 2 s in looked late,
    all timed late by one pause of this process (docs/runtime.md: 1-9 late answers of 600 with it
    off, 2-15 with it on)."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


@pytest.fixture(scope="module", params=[1.0, 1.6], ids=["as-profiled", "slower-than-profiled"])
def server(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("overload")
    repo = tmp / "repo"
    write_repository(build_configs(_plan(request.param * SERVICE_MS), Inventory(gpus=(), source="test: cpu")), repo)
    h, g, m = free_ports(3)
    with TritonServer(repo, prepare_backend_dir(tmp / "backends"), http_port=h, grpc_port=g, metrics_port=m,
                      log_path=tmp / "server.log", env=server_env()) as srv:
        srv.wait_ready(120)
        yield srv


def test_overload_sheds_early_and_serves_the_rest_in_time(server, no_gc) -> None:
    latencies, errors = _offer(server.grpc_url)
    late = [x for x in latencies if x > SLO_MS]
    total = len(latencies) + len(errors)
    time.sleep(0.3)  # the stage's counters reach the server within 0.1 s
    misses = scrape(server.metrics_url, time.time()).total("jigsaw_stage_deadline_misses_total", app="slow")
    print(f"{total} requests: {len(latencies)} answered ({len(late)} late; {misses:g} already late leaving "
          f"the stage), {len(errors)} failed; p50 {np.percentile(latencies, 50):.0f} ms"
          if latencies else "none answered")
    assert all("jigsaw: request dropped" in e or "Request timeout expired" in e for e in errors), errors[:3]
    # the runner serves a third of the offer (a fifth when slower): the rest is shed, and what is
    # answered is in time (without shedding most answers are late; on the 2-core CI machine, with the
    # client in the same process, 5.5% late was measured once at 1.6x: the bound leaves that room)
    assert len(latencies) >= 0.15 * total, f"only {len(latencies)} of {total} answered"
    assert len(late) <= 0.08 * total, f"{len(late)} of {total} answered after the {SLO_MS:g} ms SLO"
