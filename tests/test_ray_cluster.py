"""Serving across nodes on a real local 2-node Ray cluster (one raylet and one tritonserver per node, all on
127.0.0.1): plain tritonclient calls (gRPC and HTTP) through the front door, spread by the planned shares; a cluster apply
without failed requests, and one rolled back across the cluster when a node's apply fails; the cluster
controller replanning around a node lost under load, then onto a node added."""
from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import threading
import time

import numpy as np
import pytest
import yaml

ray = pytest.importorskip("ray")

import grpc  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from conftest import ROOT  # noqa: E402
from jigsawserve.orchestrator.spec.appspec import parse_app  # noqa: E402
from jigsawserve.orchestrator.planning.cluster import ClusterPlan, plan_cluster  # noqa: E402
from jigsawserve.orchestrator.loop.cluster_control import ClusterController  # noqa: E402
from jigsawserve.orchestrator.loop.controller import EventLog  # noqa: E402
from jigsawserve.orchestrator.planning.features import Features  # noqa: E402
from jigsawserve.orchestrator.serving.front_door import NO_NODE, Balancer, FrontDoor, Route  # noqa: E402
from jigsawserve.orchestrator.spec.gpus import gpu_type  # noqa: E402
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan  # noqa: E402
from jigsawserve.orchestrator.spec.profiles import load_profiles  # noqa: E402
from jigsawserve.orchestrator.serving.ray_cluster import ClusterApplyError, ClusterServing, LocalCluster, cluster_nodes  # noqa: E402
from jigsawserve.orchestrator.serving.server import CONTROL_HEADER, free_ports  # noqa: E402
from jigsawserve.orchestrator.reporting import cluster_report  # noqa: E402

# a generous SLO: the 2-core machine runs two servers, the raylets and the front door (cf. test_apply.py)
SLO_MS = 2000


def _app():
    doc = yaml.safe_load((ROOT / "examples" / "cpu" / "app.yaml").read_text())
    return parse_app({**doc, "latency_slo_ms": SLO_MS}, origin=f"examples/cpu/app.yaml, SLO {SLO_MS} ms")


def _cluster_plan(demands: dict[str, float], broken: tuple[str, ...] = ()) -> ClusterPlan:
    """Each node's own plan for its demand: two nodes with unequal shares, whatever ``plan_cluster``'s
    time-limited capacity search finds (89.9 to 449 req/s for one node, across calls on this machine). The
    nodes ``broken`` get a plan whose runners fail to load (a runtime kind no backend has)."""
    app, profiles = _app(), load_profiles(ROOT / "examples" / "cpu" / "profiles.csv")
    nodes = {n: make_plan(app, profiles, gpu_type("cpu"), d, PlanOptions(gpus=4, features=Features.parse("ast")))
             for n, d in demands.items()}
    for name in broken:
        nodes[name] = dataclasses.replace(nodes[name], app_spec=copy.deepcopy(nodes[name].app_spec))
        for task in nodes[name].app_spec["tasks"].values():
            for v in task["variants"].values():
                v["runtime"] = {"kind": "no_such_kind"}
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


def _http_request() -> list[httpclient.InferInput]:
    inp = httpclient.InferInput("INPUT", [1, 1, 16], "FP32")
    inp.set_data_from_numpy(np.ones((1, 1, 16), dtype=np.float32))
    return [inp]


def test_front_door_without_a_node_up_answers_unavailable():
    """gRPC: UNAVAILABLE; HTTP: 503, both "no node can answer"; HTTP live but not ready; model control refused."""
    def http_calls(url: str) -> tuple[bool, bool, InferenceServerException, InferenceServerException]:
        client = httpclient.InferenceServerClient(url)
        try:
            live, ready = client.is_server_live(), client.is_server_ready()
            with pytest.raises(InferenceServerException) as infer:
                client.infer("cpudemo", _http_request())
            with pytest.raises(InferenceServerException) as load:  # refused at the door, whatever key it carries
                client.load_model("cpudemo", headers={CONTROL_HEADER: "any"})
            return live, ready, infer.value, load.value
        finally:
            client.close()

    async def go() -> tuple[grpc.StatusCode, str, bool, tuple]:
        gone = f"127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
        door = FrontDoor({"gone": Route(gone, gone, 1.0)})
        url = await door.start()
        try:
            client = grpcclient.InferenceServerClient(url)
            try:
                ready = await asyncio.to_thread(client.is_server_ready)
                with pytest.raises(InferenceServerException) as err:
                    await asyncio.to_thread(client.infer, "cpudemo", _request())
            finally:
                client.close()
            return err.value.status(), err.value.message(), ready, await asyncio.to_thread(http_calls, door.http_url)
        finally:
            await door.stop()

    status, message, ready, (http_live, http_ready, infer, load) = asyncio.run(go())
    assert status == "StatusCode.UNAVAILABLE" and NO_NODE in message and not ready
    assert http_live and not http_ready
    assert infer.status() == "503" and NO_NODE in infer.message()
    assert load.status() == "403" and "restricted" in load.message()


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
        # a message over the nodes' request limit is refused by the door from its length prefix: no node sees it
        big = grpcclient.InferInput("INPUT", [1, 1, 17 * 2**20], "FP32")
        big.set_data_from_numpy(np.zeros((1, 1, 17 * 2**20), np.float32))
        with pytest.raises(InferenceServerException, match="larger than max"):
            client.infer("cpudemo", [big])
    finally:
        client.close()
    after = serving.stats()
    served_by = {n: after[n]["requests"] - before[n]["requests"] for n in after}
    assert served_by["node-0"] + served_by["node-1"] == 31
    assert served_by["node-0"] in (20, 21) and served_by["node-1"] in (10, 11)  # shares 2/3 and 1/3
    assert all(after[n]["failed"] - before[n]["failed"] <= 1 for n in after)


def test_plain_tritonclient_http_through_the_front_door_spreads_by_share(served):
    """The front door's HTTP side: health, metadata, inference to each node's HTTP front, HTTP and gRPC calls
    together by the shares (one balancer), the request's parameters reaching the node unparsed."""
    _, serving = served
    before = serving.stats()
    client = httpclient.InferenceServerClient(serving.http_url)
    grpc_client = grpcclient.InferenceServerClient(serving.url)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("cpudemo")
        assert client.get_server_metadata()["name"] == "triton"
        assert {o["name"] for o in client.get_model_metadata("cpudemo")["outputs"]} == {"cls_OUTPUT", "cap_OUTPUT"}
        for i in range(30):
            if i % 2:
                grpc_client.infer("cpudemo", _request())
            else:
                # every other HTTP call gzip-compressed: forwarded as it came, decompressed by the node's front
                out = client.infer("cpudemo", _http_request(), parameters={"deadline_ms": SLO_MS},
                                   request_compression_algorithm="gzip" if i % 4 == 0 else None)
                assert out.as_numpy("cls_OUTPUT").shape[-1] == 16
        with pytest.raises(InferenceServerException, match="deadline_ns"):  # an hour old: refused at the node
            client.infer("cpudemo", _http_request(), parameters={"deadline_ns": time.time_ns() - 2 * 3600 * 10**9})
    finally:
        client.close()
        grpc_client.close()
    after = serving.stats()
    served_by = {n: after[n]["requests"] - before[n]["requests"] for n in after}
    assert served_by["node-0"] + served_by["node-1"] == 31
    assert served_by["node-0"] in (20, 21) and served_by["node-1"] in (10, 11)  # shares 2/3 and 1/3
    assert sum(after[n]["failed"] - before[n]["failed"] for n in after) == 1


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


def test_a_failed_node_apply_rolls_the_cluster_back(served):
    _, serving = served
    before = {n: ray.get(h.plan_json.remote())["demand_rps"] for n, h in serving.nodes.items()}
    weights = {n: s["weight"] for n, s in serving.stats().items()}
    # node-0 grows (moves first), the front door takes the new shares, then node-1's (shrinking) load fails
    bad = _cluster_plan({"node-0": 40.0, "node-1": 5.0}, broken=("node-1",))
    with Load(serving.url) as load:
        time.sleep(0.5)
        with pytest.raises(ClusterApplyError, match="(?s)failed: node node-1: RuntimeError: .*no_such_kind.*rolled back: the front door's shares, node node-0, "
                           "node node-1 rolled back on its own"):
            serving.apply(bad)
        assert {n: s["weight"] for n, s in serving.stats().items()} == pytest.approx(weights)
        time.sleep(0.5)
    assert {n: ray.get(h.plan_json.remote())["demand_rps"] for n, h in serving.nodes.items()} == before
    assert serving.plan.nodes["node-0"].demand_rps == before["node-0"]
    assert len(load.outcomes) > 10 and [e for _, e in load.outcomes if e] == []


def test_the_controller_replans_around_a_node_lost_under_load_then_onto_one_added(served, tmp_path):
    """node-1's raylet is removed under load: only requests in flight to it may fail; the controller replans on
    node-0 within one interval, logging the capacity lost; node-2 joins and the next plan spreads onto it."""
    local, serving = served
    app, profiles = _app(), load_profiles(ROOT / "examples" / "cpu" / "profiles.csv")
    path = tmp_path / "cluster-events.jsonl"
    interval = 5.0
    controller = ClusterController(app, profiles, gpu_type("cpu"), serving, EventLog(path, time.time()),
                                   PlanOptions(features=Features.parse("ast")), spread=2, progress=print)
    stop = threading.Event()
    thread = threading.Thread(target=controller.run, args=(interval, stop))

    def events(kind: str) -> list[dict]:
        return [e for e in map(json.loads, path.read_text().splitlines()) if e["kind"] == kind]

    def wait_for(kind: str, seconds: float, after: float = 0.0, check=lambda e: True) -> dict:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = [e for e in events(kind) if e["t"] >= after and check(e)]
            if found:
                return found[0]
            time.sleep(0.2)
        raise AssertionError(f"no {kind} event after {after} s within {seconds} s: {path.read_text()}")

    try:
        with Load(serving.url) as load:
            thread.start()
            time.sleep(1.0)
            lost = time.monotonic()
            local.remove_node("node-1")
            gone = wait_for("node_lost", interval)
            replanned = wait_for("plan", interval, after=gone["t"])
            kept = time.monotonic()
            assert set(replanned["nodes"]) == {"node-0"}
            local.add_node("node-2")
            joined = wait_for("node_added", 30, check=lambda e: e["node"] == "node-2")
            spread = wait_for("plan", 60, after=joined["t"])
            time.sleep(1.0)
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()
    failed = [t - lost for t, e in load.outcomes if e]
    print(f"node lost: {len(failed)} of {len(load.outcomes)} requests failed, sent at {failed} s from the loss")
    assert len(failed) <= 4 and all(-0.5 < t < 1.0 for t in failed), failed
    assert len([t for t, e in load.outcomes if t > kept]) > 10
    assert gone["node"] == "node-1" and gone["planned_rps"] == pytest.approx(10.0, rel=0.01)
    assert gone["remaining_planned_rps"] == pytest.approx(20.0, rel=0.01)
    assert set(spread["nodes"]) == {"node-0", "node-2"} and serving.plan.share("node-2") > 0
    stats = serving.stats()
    assert "node-1" not in stats and stats["node-2"]["up"] and stats["node-2"]["requests"] > 0
    # the per-node report of this run: every node that served, its requests as the front door counted them
    events = cluster_report.load_events(path)
    assert {n: cluster_report.node_count(events, n, "requests") > 0 for n in ("node-0", "node-1")} == \
        {"node-0": True, "node-1": True}
    figures = cluster_report.figures(tmp_path, {"app": app.name, "nodes": 3})
    assert set(figures) == {"nodes.png", "placement-nodes.png"}
    titles = [t.get_text() for f in figures.values() for t in f.texts]
    assert all("cpudemo on 3 node(s) (CPU slices, no GPU)" in t for t in titles), titles
    legends = {t.get_text() for ax in figures["nodes.png"].axes if ax.get_legend()
               for t in ax.get_legend().get_texts()}
    assert {"node-0: requests/s sent to it", "node-1: requests/s sent to it"} <= legends, legends
