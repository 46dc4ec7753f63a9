"""Serve a ``ClusterPlan`` on a Ray cluster (thin adapter): one tritonserver per node, one front door.

- A node is a Ray node carrying the custom resource ``jigsaw_node:<name>`` (``node_resource``);
  ``cluster_nodes`` reads the live ones into ``NodeSpec``s: GPUs from Ray's "GPU" resource (their
  inventory read by NVML on the node), CPU slices from its "CPU" resource otherwise.
- ``NodeServer`` is an actor pinned to its node by that resource; it owns the node's tritonserver as a
  single-node run does (``render.build_configs`` of the node's plan with the node's own inventory, the
  jigsaw backend, an MPS daemon when the repository asks for it, a control key), and moves it to a new
  plan with ``control.apply`` (no failed request, as on one node; the old runners drain in the background).
- ``FrontDoorActor`` runs ``front_door.FrontDoor`` (Triton's gRPC and HTTP protocols, requests spread over the
  nodes by their planned shares; HTTP to each node's HTTP front) on the head node.
- ``ClusterServing`` starts, applies (node by node, rolled back across the cluster when a node's apply fails),
  forgets lost nodes and stops them from a driver; its actors are named (namespace ``NAMESPACE``) and detached,
  so that another driver (``jigsaw apply --ray``) finds them. ``cluster_control.ClusterController`` drives it.
- ``LocalCluster`` starts a real multi-node Ray cluster on 127.0.0.1 (one raylet per node) for the demo and
  the tests, adds nodes to it, and ends each node's servers with the node.
"""
from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Callable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..planning.cluster import ClusterPlan, NodeSpec
from ..errors import UnreachableError
from .front_door import FrontDoor, Route
from .inventory import Inventory, detect
from ..planning.plan import Plan

NODE_RESOURCE = "jigsaw_node:"
NAMESPACE = "jigsaw"
NODE_ACTOR = "jigsaw-node:"  # + node name
FRONT_DOOR_ACTOR = "jigsaw-front-door"
# of its node's custom resource (1 per node) an actor takes: it pins the actor there without using it up
PIN = 0.001
# where a node's servers note their process groups: set in each LocalCluster node's environment
NODE_DIR_ENV = "JIGSAW_NODE_DIR"
PROCESSES_FILE = "processes.json"
# Ray resolves a loopback address to the machine's interface address when a driver connects (intended:
# ray-project/ray#26293, #59110), so a cluster kept on 127.0.0.1 needs its "local IP is loopback" mode
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
START_TIMEOUT_S = 300.0
CONNECT_TIMEOUT_S = 5.0
PING_TIMEOUT_S = 2.0  # a NodeServer that answers nothing this long to a ping is not counted lost (only busy)
HEAD_RESOURCE = "node:__internal_head__"


def node_resource(name: str) -> str:
    """The custom resource that names a node (1 of it per node)."""
    return f"{NODE_RESOURCE}{name}"


@ray.remote(num_cpus=0)
def _node_inventory() -> Inventory:
    """The GPUs NVML sees on this node, narrowed to those Ray gave this task (``CUDA_VISIBLE_DEVICES``)."""
    return detect(None)


def cluster_nodes() -> list[NodeSpec]:
    """The live nodes of the connected Ray cluster that carry a ``jigsaw_node:<name>`` resource, by name."""
    specs = []
    for node in ray.nodes():
        names = [k[len(NODE_RESOURCE):] for k in node["Resources"] if k.startswith(NODE_RESOURCE)]
        if not node["Alive"] or len(names) != 1:
            continue
        name, res = names[0], node["Resources"]
        gpus = int(res.get("GPU", 0))
        if gpus:
            inventory = ray.get(_node_inventory.options(resources={node_resource(name): PIN}, num_gpus=gpus).remote())
        else:
            inventory = Inventory((), f"ray node {name}: CPU")
        specs.append(NodeSpec(name, inventory, gpus or int(res.get("CPU", 0))))
    return sorted(specs, key=lambda s: s.name)


def _write_processes(node_dir: Path, servers: dict[str, dict[str, Any]]) -> None:
    path = node_dir / PROCESSES_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(servers))
    os.replace(tmp, path)


class NodeServer:
    """One node's tritonserver, owned by a Ray actor on that node (``ClusterServing`` creates it)."""

    def __init__(self, node: str, graph_instances: int | None = None, ready_timeout_s: float = 120.0) -> None:
        self.node, self.graph_instances, self.ready_timeout_s = node, graph_instances, ready_timeout_s
        base = os.environ.get(NODE_DIR_ENV)
        self.dir = Path(base) if base else Path(tempfile.mkdtemp(prefix=f"jigsaw-node-{node}-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.repo = self.dir / "repo"
        self.key = secrets.token_hex(16)
        self.plan: Plan | None = None
        self._stack = ExitStack()
        self._server: Any = None
        self._client: Any = None
        self._draining: list[threading.Thread] = []  # earlier applies unloading the runners they retired
        # the actor is threaded: a stop while a start is under way waits for it, so that no server starts after
        # the stop that should have ended it (re-entrant: a failed start stops what it began)
        self._lifecycle = threading.RLock()

    def _render(self, plan: Plan) -> Any:
        from .render import GRAPH_INSTANCES, build_configs
        return build_configs(plan, detect(None), graph_instances=self.graph_instances or GRAPH_INSTANCES)

    def start(self, plan_json: dict[str, Any]) -> dict[str, Any]:
        """Render the node's plan, serve it; the server's addresses (``urls``)."""
        with self._lifecycle:
            return self._start(plan_json)

    def _start(self, plan_json: dict[str, Any]) -> dict[str, Any]:
        import tritonclient.grpc as grpcclient

        from .render import write_repository
        from .server import MpsDaemon, TritonServer, free_ports
        from .tritonenv import prepare_backend_dir, server_env

        if self._server is not None:
            raise RuntimeError(f"node {self.node}: already serving")
        plan = Plan.from_json(plan_json)
        rendered = self._render(plan)
        write_repository(rendered, self.repo)
        try:
            env, mps = server_env(), None
            if rendered.manifest.get("uses_mps"):
                if not MpsDaemon.available():
                    raise RuntimeError(f"node {self.node}: the plan needs MPS, which is not available there")
                mps = self._stack.enter_context(MpsDaemon())
                env.update(mps.env())
            backends = prepare_backend_dir(self.dir / "backends")
            http, grpc_port, metrics = free_ports(3)
            server = TritonServer(self.repo, backends, host=ray.util.get_node_ip_address(), http_port=http,
                                  grpc_port=grpc_port, metrics_port=metrics, control_key=self.key, env=env,
                                  log_path=self.dir / "server.log", ready_timeout_s=self.ready_timeout_s)
            self._stack.callback(server.stop)
            server.start()
            _write_processes(self.dir, {"process_groups": [p for p in (server.pid, mps and mps.pid) if p],
                                        "shm_prefixes": [server.shm_prefix]})
            server.wait_ready(self.ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        self._server, self.plan = server, plan
        self._client = grpcclient.InferenceServerClient(server.grpc_url)
        return self.urls()

    def urls(self) -> dict[str, Any]:
        """The node's name, its server's gRPC, HTTP and metrics addresses and process id."""
        s = self._server
        return {"node": self.node, "grpc": s.grpc_url, "http": s.http_url, "metrics": s.metrics_url, "pid": s.pid,
                "log": str(s.log_path)} if s else {"node": self.node}

    def plan_json(self) -> dict[str, Any] | None:
        """The plan the node serves now."""
        return self.plan.to_json() if self.plan else None

    def apply(self, plan_json: dict[str, Any], drain_s: float | None = None) -> dict[str, Any]:
        """Move the node's server to ``plan_json`` (``control.apply``: rolled back on failure); returns once the
        new plan serves, what it did. The runners it no longer uses unload in the background ``drain_s`` after
        its new routing (by default ``control``'s), so that a cluster apply moves on to the next node; the next
        apply waits for those unloads first (an unload never races a load of the same runner)."""
        from .control import apply, control_headers

        if self._server is None:
            raise RuntimeError(f"node {self.node}: not serving")
        self._join_drains()
        plan = Plan.from_json(plan_json)
        report = apply(self._render(plan), self.repo, self._client, control_headers(self.key, grpc=True),
                       drain_s=drain_s, background=True)
        if report.draining is not None:
            self._draining.append(report.draining)
        self.plan = plan
        return {"node": self.node, "loaded": report.loaded, "unchanged": report.unchanged,
                "retiring": report.retiring, "rerouted": report.rerouted, "serving_s": report.serving_s}

    def _join_drains(self) -> None:
        for thread in self._draining:
            thread.join()
        self._draining.clear()

    def stop(self) -> None:
        """Stop the server (and MPS daemon) by their process groups, once earlier applies' unloads are done.
        Idempotent."""
        with self._lifecycle:
            self._join_drains()
            if self._client is not None:
                self._client.close()
                self._client = None
            self._stack.close()
            (self.dir / PROCESSES_FILE).unlink(missing_ok=True)
            self._server = None

    def __ray_shutdown__(self) -> None:  # Ray calls it when the actor exits gracefully
        self.stop()


class FrontDoorActor:
    """``front_door.FrontDoor`` in an async Ray actor (its event loop serves the gRPC and HTTP servers)."""

    def __init__(self) -> None:
        self.door: Any = None

    async def start(self, nodes: dict[str, Route], port: int = 0, http_port: int = 0) -> dict[str, str]:
        """Serve on this node's address; the front door's ``urls``."""
        self.door = FrontDoor(nodes, host=ray.util.get_node_ip_address(), port=port, http_port=http_port)
        await self.door.start()
        return await self.urls()

    async def set_nodes(self, nodes: dict[str, Route], drain_s: float = 0.0) -> None:
        await self.door.set_nodes(nodes, drain_s)

    async def stats(self) -> dict[str, dict[str, Any]]:
        return self.door.stats() if self.door else {}

    async def arrivals(self) -> int:
        return self.door.arrivals if self.door else 0

    async def urls(self) -> dict[str, str]:
        """``grpc`` and ``http``: the front door's ``host:port`` for each protocol (none while not serving)."""
        return {"grpc": self.door.url, "http": self.door.http_url} if self.door else {}

    async def stop(self) -> None:
        if self.door is not None:
            await self.door.stop()
            self.door = None


class ClusterApplyError(RuntimeError):
    """A cluster apply failed and was rolled back (the message says what failed and what went back)."""


@dataclass
class _Moved:
    """How far a cluster apply got: nodes started, nodes moved to the new plan, the one moving, whether the front
    door took the new shares, nodes stopped."""

    started: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    moving: str | None = None
    routed: bool = False
    stopped: list[str] = field(default_factory=list)

    def said(self) -> str:
        return (f"(started {self.started or 'none'}, moved {self.moved or 'none'}, failed at "
                f"{self.moving or 'a start or the front door'}, shares {'moved' if self.routed else 'unchanged'})")


def _head_strategy() -> NodeAffinitySchedulingStrategy:
    head = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and HEAD_RESOURCE in n["Resources"])
    return NodeAffinitySchedulingStrategy(node_id=head, soft=False)


def live_nodes() -> dict[str, str]:
    """Per live jigsaw node of the cluster, its Ray node id (a node that rejoins gets a new one)."""
    return {k[len(NODE_RESOURCE):]: n["NodeID"] for n in ray.nodes() if n["Alive"]
            for k in n["Resources"] if k.startswith(NODE_RESOURCE)}


def _live_gpus() -> dict[str, int]:
    """Per live jigsaw node of the cluster, its GPUs (Ray's "GPU" resource)."""
    return {k[len(NODE_RESOURCE):]: int(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n["Alive"]
            for k in n["Resources"] if k.startswith(NODE_RESOURCE)}


class ClusterServing:
    """A ``ClusterPlan`` served on the connected Ray cluster: a ``NodeServer`` per node with a plan, and the
    front door on the head node, all named actors in ``NAMESPACE``. ``start`` or ``attach``, then ``apply``,
    ``forget`` (nodes ``lost``) and ``stop``. ``drain_s``: how long requests started on what an apply retires get to finish (default:
    twice the SLO, at least ``control.MIN_DRAIN_S``, as on one node)."""

    def __init__(self, graph_instances: int | None = None, ready_timeout_s: float = 120.0,
                 drain_s: float | None = None, progress: Callable[[str], None] = lambda _: None) -> None:
        self.graph_instances, self.ready_timeout_s, self.progress = graph_instances, ready_timeout_s, progress
        self.drain_s = drain_s
        self.plan: ClusterPlan | None = None
        self.nodes: dict[str, Any] = {}  # node name -> NodeServer handle
        self.urls: dict[str, dict[str, Any]] = {}
        self.front: Any = None
        self.url: str | None = None  # the front door's gRPC host:port
        self.http_url: str | None = None  # ... and its HTTP host:port

    def _start_nodes(self, plan: ClusterPlan, names: list[str]) -> None:
        gpus = _live_gpus()
        missing = [n for n in names if n not in gpus]
        if missing:
            raise ValueError(f"the plan's node(s) {', '.join(missing)} are not live nodes of this Ray cluster (a "
                             f"node carries the resource {NODE_RESOURCE}<name>; live: {', '.join(sorted(gpus)) or 'none'})")
        actor = ray.remote(NodeServer)
        for name in names:
            self.nodes[name] = actor.options(
                name=f"{NODE_ACTOR}{name}", namespace=NAMESPACE, lifetime="detached", num_cpus=0,
                num_gpus=gpus[name], resources={node_resource(name): PIN}, max_concurrency=4,
            ).remote(name, self.graph_instances, self.ready_timeout_s)
        started = dict(zip(names, ray.get([self.nodes[n].start.remote(plan.nodes[n].to_json()) for n in names],
                                          timeout=START_TIMEOUT_S)))
        self.urls.update(started)
        for name, urls in started.items():
            self.progress(f"node {name}: tritonserver pid {urls['pid']} serving {plan.nodes[name].slices} slices "
                          f"at {urls['grpc']}")

    def _routes(self, plan: ClusterPlan) -> dict[str, Route]:
        return {n: Route(self.urls[n]["grpc"], self.urls[n]["http"], plan.share(n)) for n in plan.nodes}

    def start(self, plan: ClusterPlan, port: int = 0, http_port: int = 0) -> str:
        """Serve ``plan``: every node's server ready, then the front door (gRPC on ``port``, HTTP on
        ``http_port``; 0: any free one); its gRPC ``host:port`` (``http_url``: its HTTP one)."""
        try:
            self._start_nodes(plan, list(plan.nodes))
            self.front = ray.remote(FrontDoorActor).options(
                name=FRONT_DOOR_ACTOR, namespace=NAMESPACE, lifetime="detached", num_cpus=0,
                scheduling_strategy=_head_strategy()).remote()
            urls = ray.get(self.front.start.remote(self._routes(plan), port, http_port), timeout=START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        self.plan, self.url, self.http_url = plan, urls["grpc"], urls["http"]
        self.progress(f"front door at {self.url} (gRPC) and {self.http_url} (HTTP): shares "
                      + ", ".join(f"{n} {plan.share(n):.2f}" for n in plan.nodes))
        return self.url

    def attach(self) -> ClusterServing:
        """Take over the servers and front door that another driver started (``start``) on this cluster."""
        self.front = ray.get_actor(FRONT_DOOR_ACTOR, namespace=NAMESPACE)
        names = [a["name"][len(NODE_ACTOR):] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["namespace"] == NAMESPACE and a["name"].startswith(NODE_ACTOR)]
        self.nodes = {n: ray.get_actor(f"{NODE_ACTOR}{n}", namespace=NAMESPACE) for n in names}
        plans = dict(zip(names, ray.get([self.nodes[n].plan_json.remote() for n in names])))
        self.urls = dict(zip(names, ray.get([self.nodes[n].urls.remote() for n in names])))
        stats = ray.get(self.front.stats.remote())
        urls = ray.get(self.front.urls.remote())
        self.url, self.http_url = urls.get("grpc"), urls.get("http")
        served = {n: Plan.from_json(p) for n, p in plans.items() if p}
        if not served:
            raise RuntimeError("no jigsaw node serves on this Ray cluster")
        app = next(iter(served.values())).app
        self.plan = ClusterPlan(app, sum(p.demand_rps for p in served.values()), served)
        self.progress(f"attached to {len(served)} node(s) serving {app}; front door nodes {sorted(stats)}")
        return self

    def apply(self, plan: ClusterPlan) -> dict[str, Any]:
        """Move to ``plan`` node by node, each node's apply without failed requests: nodes that gain a plan
        start; nodes whose demand grows move first, then the front door takes the new shares, then nodes
        whose demand shrinks move; nodes that lose their plan get no new request, drain, then stop.

        When a step fails (a node's start or apply: that node rolls itself back), the cluster goes back the
        same way to the previous plan: the nodes already moved return to their previous plans (those that
        grow back first, then the front door's previous shares, then the rest), and the nodes started for
        ``plan`` drain and stop. ``ClusterApplyError`` then says what failed and what went back; nodes that are
        gone (their actor dead) are left to ``forget``."""
        old = self.plan
        if old is None:
            raise RuntimeError("nothing served: start or attach first")
        if plan.app != old.app:
            raise ValueError(f"the cluster serves {old.app!r}, the plan is for {plan.app!r}")
        if not plan.nodes:
            raise ValueError("the plan gives no node a plan: stop the cluster's serving instead")
        done = _Moved()
        try:
            reports = self._move(old, plan, done)
        except Exception as exc:  # noqa: BLE001 (any failure: a node's load, its loss, a front door call)
            cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None else exc
            where = f"node {done.moving}" if done.moving else "starting nodes or the front door"
            failed = f"{where}: {type(cause).__name__}: {cause}"
            self.progress(f"cluster apply failed ({failed}); rolling back {done.said()}")
            undone = self._undo(old, plan, done)
            raise ClusterApplyError(f"cluster apply failed: {failed}; rolled back: {undone}") from exc
        self.plan = plan
        return {"started": done.started, "applied": reports, "stopped": done.stopped}

    def _drain_s(self, plan: ClusterPlan) -> float:
        from .control import MIN_DRAIN_S
        if self.drain_s is not None:
            return self.drain_s
        return max([MIN_DRAIN_S] + [2 * p.latency_slo_ms / 1000 for p in plan.nodes.values()])

    def _move(self, old: ClusterPlan, plan: ClusterPlan, done: _Moved) -> dict[str, Any]:
        """``apply``'s steps from ``old`` to ``plan``, each noted in ``done`` as soon as it is taken."""
        added = [n for n in plan.nodes if n not in old.nodes]
        kept = [n for n in plan.nodes if n in old.nodes]
        gone = [n for n in old.nodes if n not in plan.nodes]
        grow = [n for n in kept if plan.nodes[n].demand_rps >= old.nodes[n].demand_rps]
        shrink = [n for n in kept if n not in grow]
        reports: dict[str, Any] = {}
        drain_s = self._drain_s(plan)
        if added:
            done.started = added
            self._start_nodes(plan, added)
        for name in grow + [None] + shrink:  # None: the front door's turn
            if name is None:
                ray.get(self.front.set_nodes.remote(self._routes(plan), drain_s))
                done.routed = True
                self.progress("front door: shares " + ", ".join(f"{n} {plan.share(n):.2f}" for n in plan.nodes))
                continue
            done.moving = name
            reports[name] = ray.get(self.nodes[name].apply.remote(plan.nodes[name].to_json(), drain_s))
            done.moved.append(name)
            self.progress(f"node {name}: {self._said(reports[name])}")
        done.moving = None
        if gone:
            time.sleep(drain_s)
            self._stop_nodes(gone)
            done.stopped = gone
            self.progress(f"node(s) {', '.join(gone)}: no plan, drained and stopped")
        return reports

    def _undo(self, old: ClusterPlan, plan: ClusterPlan, done: _Moved) -> str:
        """Back from where ``done`` says ``_move`` got to, to ``old``; what went back (and what could not)."""
        drain_s = self._drain_s(old)
        back = [n for n in done.moved if n in self.nodes]
        first = [n for n in back if old.nodes[n].demand_rps >= plan.nodes[n].demand_rps]
        said: list[str] = []
        for name in first + [None] + [n for n in back if n not in first]:
            try:
                if name is None:
                    if done.routed:
                        ray.get(self.front.set_nodes.remote(self._routes(old), drain_s))
                        said.append("the front door's shares")
                    continue
                ray.get(self.nodes[name].apply.remote(old.nodes[name].to_json(), drain_s))
                said.append(f"node {name}")
            except Exception as exc:  # noqa: BLE001 (go on with the others; the caller hears of it)
                said.append(f"not node {name or 'front door'} ({type(exc).__name__}: {exc})")
        if done.started:
            if done.routed:
                time.sleep(drain_s)
            self._stop_nodes([n for n in done.started if n in self.nodes])
            said.append(f"node(s) {', '.join(done.started)} stopped")
        if done.moving is not None:
            said.append(f"node {done.moving} rolled back on its own")
        return ", ".join(said) or "nothing had moved"

    def arrivals(self) -> int:
        """Inference requests the front door has received so far (``FrontDoor.arrivals``)."""
        return ray.get(self.front.arrivals.remote()) if self.front is not None else 0

    def lost(self) -> list[str]:
        """The serving nodes that are gone: their Ray node dead, or their ``NodeServer`` actor (it does not
        answer within ``PING_TIMEOUT_S`` because it died; one that is only busy is not lost)."""
        live = _live_gpus()
        out = [n for n in self.nodes if n not in live]
        pings = {n: h.urls.remote() for n, h in self.nodes.items() if n not in out}
        for name, ref in pings.items():
            try:
                ray.get(ref, timeout=PING_TIMEOUT_S)
            except ray.exceptions.RayActorError:
                out.append(name)
            except ray.exceptions.GetTimeoutError:
                continue
        return sorted(out)

    def forget(self, names: list[str]) -> None:
        """Drop lost nodes: the front door stops sending to them now, their actors are ended (where anything
        is left of them) and the plan served is the others' (``apply`` then moves from there)."""
        for name in names:
            handle = self.nodes.pop(name, None)
            self.urls.pop(name, None)
            if handle is not None:
                try:
                    ray.kill(handle)
                except ray.exceptions.RayError:
                    pass
        if self.plan is not None:
            kept = {n: p for n, p in self.plan.nodes.items() if n not in names}
            self.plan = dataclasses.replace(self.plan, nodes=kept, demand_rps=sum(p.demand_rps for p in kept.values()))
            ray.get(self.front.set_nodes.remote(self._routes(self.plan)))
        self.progress(f"node(s) {', '.join(names)} lost: the front door sends them nothing more")

    @staticmethod
    def _said(report: dict[str, Any]) -> str:
        return (f"{len(report['loaded'])} loaded, {len(report['unchanged'])} unchanged, "
                f"{len(report['retiring'])} to unload after the drain")

    def stats(self) -> dict[str, dict[str, Any]]:
        """The front door's counts per node (``FrontDoor.stats``)."""
        return ray.get(self.front.stats.remote()) if self.front is not None else {}

    def _stop_nodes(self, names: list[str]) -> None:
        """Stop the servers of ``names`` (at once: each waits for its tritonserver's exit), end their actors."""
        handles = {n: self.nodes.pop(n) for n in names}
        stopping = {n: h.stop.remote() for n, h in handles.items()}
        for name, ref in stopping.items():
            self.urls.pop(name, None)
            try:
                ray.get(ref, timeout=60)
            except (ray.exceptions.RayError, TimeoutError) as exc:  # its node is gone, or it hangs
                self.progress(f"node {name}: stop failed ({type(exc).__name__}); ending its actor")
            ray.kill(handles[name])

    def stop(self) -> None:
        """Stop the front door, then every node's server, and end their actors. Idempotent."""
        if self.front is not None:
            try:
                ray.get(self.front.stop.remote(), timeout=30)
            except (ray.exceptions.RayError, TimeoutError):
                pass
            ray.kill(self.front)
            self.front = None
        self._stop_nodes(list(self.nodes))

    def __enter__(self) -> ClusterServing:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _is_loopback(address: str) -> bool:
    return address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost")


class _LoopbackMode:
    """Ray's "local IP is loopback" mode while in force (for this driver and the processes it starts)."""

    def __enter__(self) -> _LoopbackMode:
        from ray._private import ray_constants
        self._saved = (os.environ.get(LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER)
        os.environ[LOOPBACK_ENV] = "0"  # the processes started from here (a LocalCluster's nodes)
        ray_constants.ENABLE_RAY_CLUSTER = False  # this driver (read when it connects)
        return self

    def __exit__(self, *exc: object) -> None:
        from ray._private import ray_constants
        env, enabled = self._saved
        if env is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = env
        ray_constants.ENABLE_RAY_CLUSTER = enabled


def _init(address: str) -> None:
    """``ray.init`` keeping this process's SIGTERM handler: Ray's (its core worker's) ends the process at once,
    so that a ``with`` that stops servers never unwinds (measured: ``jigsaw serve-cluster`` left its node
    servers running); the caller's (the CLI's: stop like Ctrl-C) stays."""
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
    if main and handler is not None:
        signal.signal(signal.SIGTERM, handler)


def connect(address: str) -> None:
    """``ray.init`` on the cluster at ``address`` (``host:port`` of its GCS, or "auto"), in ``NAMESPACE``; a
    loopback address stays loopback (a ``LocalCluster``). ``ray.shutdown()`` to leave. UnreachableError when
    nothing listens at ``address`` (Ray's driver would retry for minutes, deaf to signals)."""
    if address != "auto":
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except (OSError, ValueError) as exc:
            raise UnreachableError(f"no Ray cluster answers at {address}: {exc}") from None
    if _is_loopback(address):
        with _LoopbackMode():
            _init(address)
    else:
        _init(address)


def end_node_processes(node_dir: Path) -> None:
    """SIGKILL the process groups a node's servers noted in ``node_dir`` and remove their shared memory: what
    a machine's loss ends (a Ray node's removal ends its workers, not the tritonserver they started, which
    runs in its own session)."""
    from .server import SHM_DIR

    path = node_dir / PROCESSES_FILE
    try:
        noted = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    for pgid in noted.get("process_groups", []):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
    for prefix in noted.get("shm_prefixes", []):
        for region in SHM_DIR.glob(f"{prefix}*"):
            region.unlink(missing_ok=True)
    path.unlink(missing_ok=True)


class LocalCluster:
    """A real Ray cluster on this machine, on 127.0.0.1: a head node (the driver's, and the front door's)
    and ``nodes`` nodes named ``node-0``... (as ``cluster.uniform`` names them), each with its own raylet,
    ``cpus`` CPUs, ``gpus`` GPUs and its ``jigsaw_node:<name>`` resource. ``remove_node`` ends a node as a
    machine loss would (its raylet and workers, and the servers they started); leaving the context stops
    everything, also on failure."""

    def __init__(self, nodes: int, cpus: int = 4, gpus: int = 0, workdir: Path | None = None) -> None:
        if nodes < 1:
            raise ValueError(f"nodes: expected at least 1, got {nodes}")
        self.names = [f"node-{i}" for i in range(nodes)]  # every node started, removed ones too
        self.cpus, self.gpus = cpus, gpus
        self._given = workdir
        self.workdir: Path | None = None
        self._cluster: Any = None
        self._nodes: dict[str, Any] = {}
        self._loopback: _LoopbackMode | None = None

    def node_dir(self, name: str) -> Path:
        assert self.workdir is not None
        return self.workdir / name

    def __enter__(self) -> LocalCluster:
        from ray.cluster_utils import Cluster

        self._loopback = _LoopbackMode().__enter__()
        self.workdir = Path(self._given) if self._given else Path(tempfile.mkdtemp(prefix="jigsaw-cluster-"))
        try:
            self._cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False})
            for name in self.names:
                self._add(name)
            _init(self._cluster.address)
            self._cluster.wait_for_nodes()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    @property
    def address(self) -> str:
        """The cluster's GCS address (``ray.init(address=...)``, ``jigsaw apply --ray``)."""
        return self._cluster.address

    def _add(self, name: str) -> None:
        self.node_dir(name).mkdir(parents=True, exist_ok=True)
        self._nodes[name] = self._cluster.add_node(
            num_cpus=self.cpus, num_gpus=self.gpus, node_ip_address="127.0.0.1",
            resources={node_resource(name): 1}, env_vars={NODE_DIR_ENV: str(self.node_dir(name))})

    def add_node(self, name: str) -> None:
        """Start node ``name`` (as the others: its own raylet, CPUs, GPUs and ``jigsaw_node:<name>``), as a
        machine joining the cluster; returns once Ray counts it live. From the main thread only: Ray's node start
        installs a SIGTERM handler (ValueError elsewhere)."""
        if name in self._nodes:
            raise ValueError(f"node {name} is already in the cluster")
        if name not in self.names:
            self.names.append(name)
        self._add(name)
        self._cluster.wait_for_nodes()

    def remove_node(self, name: str) -> None:
        """End node ``name`` as a machine loss would: its raylet and workers, then its servers."""
        self._cluster.remove_node(self._nodes.pop(name), allow_graceful=False)
        end_node_processes(self.node_dir(name))

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            ray.shutdown()
            if self._cluster is not None:
                self._cluster.shutdown()
        finally:
            self._cluster = None
            for name in self.names:
                end_node_processes(self.node_dir(name))
            if self._loopback is not None:
                self._loopback.__exit__()
                self._loopback = None
            if self._given is None and self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
