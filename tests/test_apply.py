"""jigsaw apply against a real tritonserver: zero failed requests under load, routing swapped in place
(the graph model is not reloaded), and rollback."""
from __future__ import annotations

import http.client
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import tritonclient.grpc as grpcclient

from conftest import ROOT
from jigsawserve.orchestrator.spec.appspec import parse_app
from jigsawserve.orchestrator.serving.control import Applier, apply, control_headers
from jigsawserve.orchestrator.errors import InputError
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.serving.inventory import Inventory
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan
from jigsawserve.orchestrator.spec.profiles import load_profiles
from google.protobuf import text_format

from jigsawserve.orchestrator.serving.render import build_configs, routing_path, write_repository
from jigsawserve.orchestrator.serving.server import LOAD_THREADS, RepoBusy, RepoLock, TritonServer, free_ports
from jigsawserve.orchestrator.serving.tritonenv import prepare_backend_dir, server_env

CPU = Inventory(gpus=(), source="test: cpu")
KEY = "test-key"


def _plan(demand: float, features: str = "ast", slo_ms: float = 2000):
    from jigsawserve.orchestrator.planning.features import Features
    # A generous SLO: while Triton starts the new models' stub processes, the 2-core test machine can
    # stall requests past the example's 250 ms, and the stages would then drop them (an SLO outcome,
    # tested in test_serving.py, not an apply failure; seen in CI-like runs).
    doc = yaml.safe_load((ROOT / "examples" / "cpu" / "app.yaml").read_text())
    app = parse_app({**doc, "latency_slo_ms": slo_ms}, origin=f"examples/cpu/app.yaml, SLO {slo_ms:g} ms")
    return make_plan(app, load_profiles(ROOT / "examples" / "cpu" / "profiles.csv"), gpu_type("cpu"), demand,
                     PlanOptions(gpus=12, features=Features.parse(features)))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("apply")
    repo = tmp / "repo"
    write_repository(build_configs(_plan(40), CPU), repo)
    h, g, m = free_ports(3)
    with TritonServer(repo, prepare_backend_dir(tmp / "backends"), http_port=h, grpc_port=g, metrics_port=m,
                      control_key=KEY, log_path=tmp / "server.log", env=server_env()) as srv:
        srv.wait_ready(120)
        yield srv


class Load:
    """Paced gRPC clients (one request per ``period`` each, within the plans' capacity) that record
    every outcome until stopped."""

    def __init__(self, url: str, threads: int = 3, period: float = 0.1) -> None:
        self.period = period
        self.url, self.ok, self.errors = url, 0, []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        x = np.ones((1, 1, 16), dtype=np.float32)
        inp = grpcclient.InferInput("INPUT", [1, 1, 16], "FP32")
        inp.set_data_from_numpy(x)
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                client.infer("cpudemo", [inp])
                self.ok += 1
            except Exception as exc:  # every failure is a test failure: keep its message
                self.errors.append(str(exc))
            self._stop.wait(max(0.0, self.period - (time.monotonic() - began)))

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


class Recording:
    """A gRPC client whose ``load_model`` calls are recorded: ("start"|"ok"|"failed", name) events in
    order and the most in flight at once."""

    def __init__(self, client: grpcclient.InferenceServerClient) -> None:
        self._client, self._lock = client, threading.Lock()
        self.events: list[tuple[str, str]] = []
        self.in_flight = self.max_in_flight = 0

    def __getattr__(self, attr: str):
        return getattr(self._client, attr)

    def _record(self, event: str, name: str, delta: int) -> None:
        with self._lock:
            self.events.append((event, name))
            self.in_flight += delta
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def load_model(self, name: str, **kwargs) -> None:
        self._record("start", name, 1)
        try:
            self._client.load_model(name, **kwargs)
        except Exception:
            self._record("failed", name, -1)
            raise
        self._record("ok", name, -1)

    def names(self, event: str) -> list[str]:
        return [n for e, n in self.events if e == event]


def _runners(client) -> set[str]:
    return {m.name for m in client.get_model_repository_index(headers=control_headers(KEY, True)).models
            if m.state == "READY" and m.name.count("__") == 3}


def _graph_requests(client) -> int:
    """Requests the graph model has served since Triton loaded it (a reload starts again from 0)."""
    stats = client.get_inference_statistics("cpudemo", headers=control_headers(KEY, True))  # restricted
    return stats.model_stats[0].inference_stats.success.count


def _requests(client, names: set[str]) -> dict[str, int]:
    return {n: client.get_inference_statistics(n, headers=control_headers(KEY, True)).model_stats[0]
            .inference_stats.success.count for n in names}


def test_routing_change_is_swapped_in_place_under_load(server) -> None:
    client = Recording(grpcclient.InferenceServerClient(server.grpc_url))
    before = _runners(client)
    new = build_configs(_plan(90), CPU)
    with Load(server.grpc_url) as load:
        time.sleep(1.0)
        served_before, ok_before = _graph_requests(client), load.ok
        report = apply(new, server.repo, client, control_headers(KEY, True))
        served_during = load.ok
        time.sleep(1.0)
    assert load.errors == []
    assert load.ok > served_during > ok_before > 0
    after = _runners(client)
    assert after == {n for n in new.configs if n.count("__") == 3}
    added = after - before
    assert added and before - after and added <= set(report.loaded) and "cpudemo" not in report.loaded
    assert set(report.unloaded) == before - after
    # the graph model took the new routing without a reload: no load call, and Triton's request count
    # of the same loaded copy kept growing by what the clients got (a new copy would count from 0)
    assert report.rerouted == ["cpudemo"] and "cpudemo" in report.unchanged
    assert "cpudemo" not in client.names("start")
    assert served_before > 10
    assert _graph_requests(client) - served_before >= load.ok - ok_before - 3  # those in flight at the first read
    assert routing_path(server.repo, "cpudemo").read_text() == new.routing_text()
    assert all(n > 0 for n in _requests(client, added).values())  # the new runners took the traffic


def test_half_written_routing_file_keeps_the_routing(server) -> None:
    path = routing_path(server.repo, "cpudemo")
    good = path.read_text()
    with Load(server.grpc_url, threads=2) as load:
        time.sleep(0.5)
        path.write_text(good[:len(good) // 2])  # not atomic, as a crashed writer would leave it
        time.sleep(1.0)
        path.write_text('{"tasks": {"det": {}}}')
        time.sleep(1.0)
        path.write_text(good)
        time.sleep(0.5)
    assert load.errors == [] and load.ok > 20
    log = server.log_path.read_text()
    assert "routing.json unusable (JSONDecodeError" in log and "keeping the routing" in log


def test_runners_log_their_load_time(server) -> None:
    """Each runner instance says how long after its stub started it was ready, and how much of that
    was the build: where an apply's time goes."""
    found = re.findall(r"jigsaw runner (\S+) (\S+): ready ([0-9.]+) s after its stub started "
                       r"\(build and capture ([0-9.]+) s\)", server.log_path.read_text())
    assert found and all(float(ready) >= float(built) >= 0 for _, _, ready, built in found)


def test_failed_apply_rolls_back(server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    before = _runners(client)
    bad = _plan(200)
    for task in bad.app_spec["tasks"].values():
        for v in task["variants"].values():
            v["runtime"] = {"kind": "no_such_kind"}
    tables = {p: p.stat().st_ino for p in Path(server.repo).glob("cpudemo/.backlog-*")}
    lock = RepoLock(server.repo).acquire()  # as `jigsaw serve` holds it
    try:
        with Load(server.grpc_url, threads=2) as load:
            with pytest.raises(RuntimeError, match="rolled back"):
                apply(build_configs(bad, CPU), server.repo, client, control_headers(KEY, True))
            time.sleep(0.5)
        with pytest.raises(RepoBusy):  # the rollback kept the locked file, not a copy of it
            RepoLock(server.repo).acquire()
    finally:
        lock.release()
    assert load.errors == [] and load.ok > 0
    assert _runners(client) == before
    assert not Path(str(server.repo) + ".previous").exists()
    # the graph instances' shared backlog table is the live file, not the backup's stale copy of it
    assert len(tables) == 1 and {p: p.stat().st_ino for p in tables} == tables


def test_apply_needs_the_control_key(server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(RuntimeError, match="rolled back"):
        apply(build_configs(_plan(50), CPU), server.repo, client, headers=None)


def test_runners_load_concurrently_then_the_graph(server) -> None:
    """Another SLO changes the graph model's config: it is loaded, after the runners and the routing."""
    client = Recording(grpcclient.InferenceServerClient(server.grpc_url))
    new = build_configs(_plan(200, slo_ms=2500), CPU)
    routing_at_graph_load = []
    load_model = client.load_model

    def recording_routing(name: str, **kwargs) -> None:
        if name == "cpudemo":
            routing_at_graph_load.append(routing_path(server.repo, "cpudemo").read_text())
        load_model(name, **kwargs)

    client.load_model = recording_routing
    report = apply(new, server.repo, client, control_headers(KEY, True), drain_s=0.5)
    runners = sorted(n for n in new.configs if n.count("__") == 3)
    assert report.loaded == [*runners, "cpudemo"]  # runners (changed: all of them) sorted, then the graph
    assert report.rerouted == []
    assert 2 <= client.max_in_flight <= LOAD_THREADS
    assert client.events.index(("start", "cpudemo")) > max(client.events.index(("ok", n)) for n in runners)
    assert routing_at_graph_load == [new.routing_text()]  # the new copy reads the new routing
    assert _runners(client) == set(runners)
    assert _graph_requests(client) == 0  # a new copy
    inp = grpcclient.InferInput("INPUT", [1, 1, 16], "FP32")
    inp.set_data_from_numpy(np.ones((1, 1, 16), dtype=np.float32))
    client.infer("cpudemo", [inp])


def test_admission_reserve_is_rendered_and_checked() -> None:
    settings = json.loads(build_configs(_plan(40), CPU, admission_reserve=0.1).configs["cpudemo"]
                          .parameters["jigsaw"].string_value)
    assert settings["admission_reserve"] == 0.1
    with pytest.raises(InputError, match=r"admission reserve 1: must be a fraction of a request's budget"):
        build_configs(_plan(40), CPU, admission_reserve=1.0)


def test_failed_graph_load_restores_the_routing(server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    before = _runners(client)
    good = routing_path(server.repo, "cpudemo").read_text()
    new = build_configs(_plan(40, slo_ms=3000), CPU)
    settings = json.loads(new.configs["cpudemo"].parameters["jigsaw"].string_value)
    new.configs["cpudemo"].parameters["jigsaw"].string_value = json.dumps({**settings, "routing": "no_such_file"})
    with Load(server.grpc_url, threads=2) as load:
        with pytest.raises(RuntimeError, match="(?s)while loading cpudemo: .*rolled back"):
            apply(new, server.repo, client, control_headers(KEY, True), drain_s=2.0)
        time.sleep(0.5)
    assert load.errors == [] and load.ok > 0
    assert _runners(client) == before
    assert routing_path(server.repo, "cpudemo").read_text() == good
    assert not Path(str(server.repo) + ".previous").exists()


def test_failed_runner_load_rolls_back_the_loaded_ones(server) -> None:
    client = Recording(grpcclient.InferenceServerClient(server.grpc_url))
    before = _runners(client)
    new = build_configs(_plan(40), CPU)
    runners = sorted(n for n in new.configs if n.count("__") == 3)
    assert len(runners) > 2 and not before & set(runners)
    bad = runners[-1]
    settings = json.loads(new.configs[bad].parameters["jigsaw"].string_value)
    new.configs[bad].parameters["jigsaw"].string_value = json.dumps({**settings, "runtime": {"kind": "no_such_kind"}})
    with Load(server.grpc_url, threads=2) as load:
        with pytest.raises(RuntimeError, match=f"(?s)while loading {bad}: .*rolled back"):
            apply(new, server.repo, client, control_headers(KEY, True))
        time.sleep(0.5)
    assert load.errors == [] and load.ok > 0
    assert client.names("failed") == [bad] and sorted(client.names("ok")) == runners[:-1]  # loaded, then rolled back
    assert "cpudemo" not in client.names("start")
    assert _runners(client) == before
    assert not Path(str(server.repo) + ".previous").exists()
    # ready again (a failed load kept tritonserver's strict readiness false for good)
    assert _http_ready(server) == 200
    assert client.is_server_ready()


def _http_ready(server) -> int:
    """The status of ``/v2/health/ready`` on the server's HTTP port."""
    host, port = server.http_url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/v2/health/ready")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_http_readiness_holds_through_an_apply(server) -> None:
    """Readiness means the app can be served: it stays 200 while an apply loads new runners (tritonserver's
    own readiness is false while any model loads: 2-4 s per apply)."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    statuses, own, stop = [], [], threading.Event()

    def poll() -> None:
        while not stop.is_set():
            statuses.append(_http_ready(server))
            own.append(client.is_server_ready())
            time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        report = apply(build_configs(_plan(150), CPU), server.repo, client, control_headers(KEY, True), drain_s=0.5)
    finally:
        stop.set()
        poller.join()
    assert any(n.count("__") == 3 for n in report.loaded), report.loaded  # it loaded runners
    print(f"{len(statuses)} polls: HTTP ready {statuses.count(200)}, tritonserver's own ready {own.count(True)}")
    assert statuses and set(statuses) == {200}, statuses


def test_graph_model_queue_rejects_what_cannot_make_the_slo() -> None:
    plan = _plan(40)
    policy = build_configs(plan, CPU).configs[plan.app].dynamic_batching.default_queue_policy
    assert policy.timeout_action == policy.REJECT
    assert policy.default_timeout_microseconds == 2000 * 1000  # the SLO: a request queued longer cannot make it


def test_graph_config_is_the_same_for_every_plan_of_an_app() -> None:
    low, high = build_configs(_plan(40), CPU), build_configs(_plan(200), CPU)
    runners = {n for r in (low, high) for n in r.configs if n.count("__") == 3}
    assert {n for n in low.configs if n in runners} != {n for n in high.configs if n in runners}
    assert low.configs["cpudemo"] == high.configs["cpudemo"]
    text = text_format.MessageToString(low.configs["cpudemo"])
    assert not any(n in text for n in runners) and "latency_ms" not in text and "share" not in text
    assert low.routing != high.routing
    assert {r["model"] for t in high.routing["tasks"].values() for r in t["routes"]} == set(high.configs) - {"cpudemo"}


def test_applier_returns_before_the_drain_and_waits_for_it_only_to_load_what_it_unloads(server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    apply(build_configs(_plan(200), CPU), server.repo, client, control_headers(KEY, True), drain_s=0.5)
    applier = Applier(server.repo, client, control_headers(KEY, True))
    before = _runners(client)
    first = build_configs(_plan(30), CPU)
    report = applier(first)
    new = {n for n in first.configs if n.count("__") == 3}
    gone = before - new
    assert gone, "the two plans must differ in their runners"
    assert report.draining is not None and report.draining.is_alive() and set(report.retiring) == gone
    assert all(client.is_model_ready(n) for n in new | gone) and report.unloaded == []  # old ones still up
    again = applier(first)                     # nothing it loads is being unloaded: no wait for the drain
    assert report.draining.is_alive() and again.loaded == [] and again.draining is None
    back = build_configs(_plan(200), CPU)      # loads runners that drain unloads: waits for it first
    applier(back)
    assert not report.draining.is_alive() and set(report.unloaded) == gone
    assert all(client.is_model_ready(n) for n in back.configs)
    applier.wait()
    assert not any(client.is_model_ready(n) for n in new - set(back.configs))
