"""Serving across nodes on a real local 2-node Ray cluster (one raylet and one tritonserver per node, all on
127.0.0.1): plain tritonclient calls through the front door, spread by the planned shares; a cluster apply
without failed requests; a node lost under load."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import yaml

ray = pytest.importorskip("ray")

import grpc  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from conftest import ROOT  # noqa: E402
from orchestrator.appspec import parse_app  # noqa: E402
from orchestrator.cluster import ClusterPlan, plan_cluster  # noqa: E402
from orchestrator.features import Features  # noqa: E402
from orchestrator.front_door import NO_NODE, Balancer, FrontDoor  # noqa: E402
from orchestrator.gpus import gpu_type  # noqa: E402
from orchestrator.planner import PlanOptions, make_plan  # noqa: E402
from orchestrator.profiles import load_profiles  # noqa: E402
from orchestrator.ray_cluster import ClusterServing, LocalCluster, cluster_nodes  # noqa: E402
from orchestrator.server import free_ports  # noqa: E402

# a generous SLO: the 2-core machine runs two servers, the raylets and the front door (cf. test_apply.py)
SLO_MS = 2000


def _app():
    doc = yaml.safe_load((ROOT / "examples" / "cpu" / "app.yaml").read_text())
    return parse_app({**doc, "latency_slo_ms": SLO_MS}, origin=f"examples/cpu/app.yaml, SLO {SLO_MS} ms")


def _cluster_plan(demands: dict[str, float]) -> ClusterPlan:
    """Each node's own plan for its demand: two nodes with unequal shares, whatever ``plan_cluster``'s
    time-limited capacity search finds (89.9 to 449 req/s for one node, across calls on this machine)."""
    app, profiles = _app(), load_profiles(ROOT / "examples" / "cpu" / "profiles.csv")
    nodes = {n: make_plan(app, profiles, gpu_type("cpu"), d, PlanOptions(gpus=4, features=Features.parse("ast")))
             for n, d in demands.items()}
    return ClusterPlan(app.name, sum(demands.values()), nodes)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with LocalCluster(2, cpus=4, workdir=tmp_path_factory.mktemp("cluster")) as local:
        with ClusterServing(graph_instances=2, drain_s=1.0, progress=print) as serving:
            serving.start(_cluster_plan({"node-0": 20.0, "node-1": 10.0}))
            yield local, serving


def _request() -> list[grpcclient.InferInput]:
    inp = grpcclient.InferInput("INPUT", [1, 1, 16], "FP32")
    inp.set_data_from_numpy(np.ones((1, 1, 16), dtype=np.float32))
    return [inp]


class Load:
    """Paced clients (one request per ``period`` each) through the front door, every outcome kept."""

    def __init__(self, url: str, threads: int = 2, period: float = 0.1) -> None:
        self.url, self.period = url, period
        self.outcomes: list[tuple[float, str]] = []  # (time sent, "" or the error)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    client.infer("cpudemo", _request(), client_timeout=10)
                    self.outcomes.append((began, ""))
                except InferenceServerException as exc:
                    self.outcomes.append((began, str(exc)))
                self._stop.wait(max(0.0, self.period - (time.monotonic() - began)))
        finally:
            client.close()

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def test_balancer_spreads_by_weight_and_skips_nodes_down():
    b = Balancer({"a": 2.0, "b": 1.0, "c": 0.0})
    picks = [b.pick({"a", "b", "c"}) for _ in range(6)]
    assert picks == ["a", "b", "a", "a", "b", "a"]  # smooth: never three of a in a row
    assert {b.pick({"b"}) for _ in range(3)} == {"b"}
    assert b.pick({"c"}) is None and b.pick(set()) is None


def test_front_door_without_a_node_up_answers_unavailable():
    async def go() -> tuple[grpc.StatusCode, str, bool]:
        door = FrontDoor({"gone": (f"127.0.0.1:{free_ports(1)[0]}", 1.0)})  # nothing listens there
        url = await door.start()
        try:
            client = grpcclient.InferenceServerClient(url)
            try:
                ready = await asyncio.to_thread(client.is_server_ready)
                with pytest.raises(InferenceServerException) as err:
                    await asyncio.to_thread(client.infer, "cpudemo", _request())
            finally:
                client.close()
            return err.value.status(), err.value.message(), ready
        finally:
            await door.stop()

    status, message, ready = asyncio.run(go())
    assert status == "StatusCode.UNAVAILABLE" and NO_NODE in message and not ready


def test_nodes_are_read_from_the_ray_cluster(served):
    specs = cluster_nodes()
    assert [(s.name, s.gpus, s.inventory.is_cpu_only) for s in specs] == [("node-0", 4, True), ("node-1", 4, True)]


def test_plain_tritonclient_through_the_front_door_spreads_by_share(served):
    _, serving = served
    before = serving.stats()
    client = grpcclient.InferenceServerClient(serving.url)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("cpudemo")
        assert {o.name for o in client.get_model_metadata("cpudemo").outputs} == {"cls_OUTPUT", "cap_OUTPUT"}
        for _ in range(30):
            out = client.infer("cpudemo", _request(), parameters={"deadline_ms": SLO_MS})
            assert out.as_numpy("cls_OUTPUT").shape[-1] == 16
        # the request's parameters reach the node's graph model unchanged: a deadline_ns an hour behind
        # its clock is refused there as a unit error
        with pytest.raises(InferenceServerException, match="deadline_ns"):
            client.infer("cpudemo", _request(), parameters={"deadline_ns": time.time_ns() - 2 * 3600 * 10**9})
    finally:
        client.close()
    after = serving.stats()
    served_by = {n: after[n]["requests"] - before[n]["requests"] for n in after}
    assert served_by["node-0"] + served_by["node-1"] == 31
    assert served_by["node-0"] in (20, 21) and served_by["node-1"] in (10, 11)  # shares 2/3 and 1/3
    assert all(after[n]["failed"] - before[n]["failed"] <= 1 for n in after)


def test_cluster_apply_moves_node_by_node_without_failed_requests(served):
    _, serving = served
    first = serving.plan
    # the planner's split: at this demand one node serves it all (fewest slices), the other has no plan
    app, profiles = _app(), load_profiles(ROOT / "examples" / "cpu" / "profiles.csv")
    one = plan_cluster(app, profiles, gpu_type("cpu"), 60.0, cluster_nodes(), PlanOptions())
    assert len(one.nodes) == 1, one.summary()  # either node: they are alike
    (kept,), (idle,) = list(one.nodes), [n for n in ("node-0", "node-1") if n not in one.nodes]
    with Load(serving.url) as load:
        time.sleep(1.0)
        down = serving.apply(one)  # the kept node moves first, the front door drops the other, which drains, stops
        assert serving.stats()[kept]["weight"] == 1.0 and idle not in serving.stats()
        up = serving.apply(first)  # the idle node starts again, the front door spreads, then the kept one moves
        time.sleep(1.0)
    assert down["stopped"] == [idle] and (down["applied"][kept]["loaded"] or down["applied"][kept]["unchanged"])
    assert up["started"] == [idle] and kept in up["applied"]
    assert len(load.outcomes) > 50 and [e for _, e in load.outcomes if e] == []
    stats = serving.stats()
    assert {n: s["weight"] for n, s in stats.items()} == pytest.approx({"node-0": 2 / 3, "node-1": 1 / 3})


def test_a_node_lost_under_load_leaves_the_other_serving(served):
    local, serving = served
    with Load(serving.url) as load:
        time.sleep(1.0)
        lost = time.monotonic()
        local.remove_node("node-1")
        time.sleep(3.0)
    failed = [t for t, e in load.outcomes if e]
    after = [e for t, e in load.outcomes if t > lost + 1.0]  # sent once the front door saw it
    print(f"node lost: {len(failed)} of {len(load.outcomes)} requests failed: {failed}")
    assert len(failed) <= 4, failed
    assert len(after) > 10 and all(e == "" for e in after)
    stats = serving.stats()
    assert not stats["node-1"]["up"] and stats["node-0"]["up"]
