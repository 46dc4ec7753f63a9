"""Serve a ``ClusterPlan`` on a Ray cluster (thin adapter): one tritonserver per node, one front door.

- A node is a Ray node carrying the custom resource ``jigsaw_node:<name>`` (``node_resource``);
  ``cluster_nodes`` reads the live ones into ``NodeSpec``s: GPUs from Ray's "GPU" resource (their
  inventory read by NVML on the node), CPU slices from its "CPU" resource otherwise.
- ``NodeServer`` is an actor pinned to its node by that resource; it owns the node's tritonserver as a
  single-node run does (``render.build_configs`` of the node's plan with the node's own inventory, the
  jigsaw backend, an MPS daemon when the repository asks for it, a control key), and moves it to a new
  plan with ``control.apply`` (no failed request, as on one node), or lets a ``Controller`` of its own do so.
- ``FrontDoorActor`` runs ``front_door.FrontDoor`` (Triton's gRPC protocol, requests spread over the nodes
  by their planned shares) on the head node.
- ``ClusterServing`` starts, applies (node by node) and stops them from a driver; its actors are named
  (namespace ``NAMESPACE``) and detached, so that another driver (``jigsaw apply --ray``) finds them.
- ``LocalCluster`` starts a real multi-node Ray cluster on 127.0.0.1 (one raylet per node) for the demo and
  the tests, and ends each node's servers with the node.
"""
from __future__ import annotations

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
from pathlib import Path
from types import TracebackType
from typing import Any, Callable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .cluster import ClusterPlan, NodeSpec
from .errors import UnreachableError
from .inventory import Inventory, detect
from .plan import Plan

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
        self._controller: Any = None  # the Controller moving this node's plan (``control``)
        self._controlling: tuple[threading.Thread, threading.Event, Any] | None = None  # its thread, stop, Applier

    def _render(self, plan: Plan) -> Any:
        from .render import GRAPH_INSTANCES, build_configs
        return build_configs(plan, detect(None), graph_instances=self.graph_instances or GRAPH_INSTANCES)

    def start(self, plan_json: dict[str, Any]) -> dict[str, Any]:
        """Render the node's plan, serve it; the server's addresses (``urls``)."""
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
        """The plan the node serves now (its controller's latest, while one runs)."""
        plan = self._controller.plan if self._controller is not None else self.plan
        return plan.to_json() if plan else None

    def control(self, profiles: Any, opts: Any, policy: Any, interval_s: float, origin: float) -> None:
        """Keep the node's plan matched to the arrivals its share of the front door's requests brings: a
        ``Controller`` of its own (measure, forecast, replan for the node's ``opts.gpus``, apply without failed
        requests) every ``interval_s`` until ``stop``; its decisions in the node's events.jsonl, times from
        ``origin`` (``time.time()``)."""
        from .appspec import parse_app
        from .control import Applier, control_headers
        from .controller import Controller, EventLog
        from .forecast import HoltQuantile
        from .gpus import gpu_type

        if self._server is None or self.plan is None:
            raise RuntimeError(f"node {self.node}: not serving")
        applier = Applier(self.repo, self._client, control_headers(self.key, grpc=True))
        controller = Controller(parse_app(self.plan.app_spec, origin=f"node {self.node}'s plan"), profiles,
                                gpu_type(self.plan.gpu_type), opts, detect(None), self.repo, self._server.metrics_url,
                                HoltQuantile(), EventLog(self.dir / "events.jsonl", origin), policy,
                                apply_plan=applier, progress=lambda line: print(f"node {self.node}: {line}"))
        controller.plan = self.plan
        stop = threading.Event()
        thread = threading.Thread(target=controller.run, args=(interval_s, stop), name="jigsaw-controller", daemon=True)
        self._controller, self._controlling = controller, (thread, stop, applier)
        thread.start()

    def events(self) -> list[dict[str, Any]]:
        """The node controller's decisions so far (events.jsonl: plans, infeasible demands, errors)."""
        path = self.dir / "events.jsonl"
        kinds = ("plan", "infeasible", "apply_failed", "error")
        lines = path.read_text().splitlines() if path.is_file() else []
        return [{k: v for k, v in e.items() if k != "plan"} | ({"slices": e["plan"]["slices"]} if "plan" in e else {})
                for e in map(json.loads, lines) if e["kind"] in kinds]

    def _stop_control(self) -> None:
        if self._controlling is not None:
            thread, stop, applier = self._controlling
            stop.set()
            thread.join()
            applier.wait()
            self.plan, self._controller, self._controlling = self._controller.plan, None, None

    def apply(self, plan_json: dict[str, Any], drain_s: float | None = None) -> dict[str, Any]:
        """Move the node's server to ``plan_json`` (``control.apply``: rolled back on failure; runners it no
        longer uses unloaded ``drain_s`` after its new routing, by default ``control``'s); what it did."""
        from .control import apply, control_headers

        if self._server is None:
            raise RuntimeError(f"node {self.node}: not serving")
        if self._controlling is not None:
            raise RuntimeError(f"node {self.node}: its controller moves its plan; stop it first")
        plan = Plan.from_json(plan_json)
        report = apply(self._render(plan), self.repo, self._client, control_headers(self.key, grpc=True),
                       drain_s=drain_s)
        self.plan = plan
        return {"node": self.node, "loaded": report.loaded, "unchanged": report.unchanged,
                "unloaded": report.unloaded, "rerouted": report.rerouted, "serving_s": report.serving_s}

    def stop(self) -> None:
        """Stop the controller, then the server (and MPS daemon) by their process groups. Idempotent."""
        self._stop_control()
        if self._client is not None:
            self._client.close()
            self._client = None
        self._stack.close()
        (self.dir / PROCESSES_FILE).unlink(missing_ok=True)
        self._server = None

    def __ray_shutdown__(self) -> None:  # Ray calls it when the actor exits gracefully
        self.stop()


class FrontDoorActor:
    """``front_door.FrontDoor`` in an async Ray actor (its event loop serves the gRPC server)."""

    def __init__(self) -> None:
        self.door: Any = None

    async def start(self, nodes: dict[str, tuple[str, float]], port: int = 0) -> str:
        """Serve on this node's address; the front door's ``host:port``."""
        from .front_door import FrontDoor
        self.door = FrontDoor(nodes, host=ray.util.get_node_ip_address(), port=port)
        return await self.door.start()

    async def set_nodes(self, nodes: dict[str, tuple[str, float]], drain_s: float = 0.0) -> None:
        await self.door.set_nodes(nodes, drain_s)

    async def stats(self) -> dict[str, dict[str, Any]]:
        return self.door.stats() if self.door else {}

    async def url(self) -> str | None:
        return self.door.url if self.door else None

    async def stop(self) -> None:
        if self.door is not None:
            await self.door.stop()
            self.door = None


def _head_strategy() -> NodeAffinitySchedulingStrategy:
    head = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and HEAD_RESOURCE in n["Resources"])
    return NodeAffinitySchedulingStrategy(node_id=head, soft=False)


def _live_gpus() -> dict[str, int]:
    """Per live jigsaw node of the cluster, its GPUs (Ray's "GPU" resource)."""
    return {k[len(NODE_RESOURCE):]: int(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n["Alive"]
            for k in n["Resources"] if k.startswith(NODE_RESOURCE)}


class ClusterServing:
    """A ``ClusterPlan`` served on the connected Ray cluster: a ``NodeServer`` per node with a plan, and the
    front door on the head node, all named actors in ``NAMESPACE``. ``start`` or ``attach``, then ``apply``
    and ``stop``. ``drain_s``: how long requests started on what an apply retires get to finish (default:
    twice the SLO, at least ``control.MIN_DRAIN_S``, as on one node)."""

    def __init__(self, graph_instances: int | None = None, ready_timeout_s: float = 120.0,
                 drain_s: float | None = None, progress: Callable[[str], None] = lambda _: None) -> None:
        self.graph_instances, self.ready_timeout_s, self.progress = graph_instances, ready_timeout_s, progress
        self.drain_s = drain_s
        self.plan: ClusterPlan | None = None
        self.nodes: dict[str, Any] = {}  # node name -> NodeServer handle
        self.urls: dict[str, dict[str, Any]] = {}
        self.front: Any = None
        self.url: str | None = None

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

    def _routes(self, plan: ClusterPlan) -> dict[str, tuple[str, float]]:
        return {n: (self.urls[n]["grpc"], plan.share(n)) for n in plan.nodes}

    def start(self, plan: ClusterPlan, port: int = 0) -> str:
        """Serve ``plan``: every node's server ready, then the front door; its ``host:port``."""
        try:
            self._start_nodes(plan, list(plan.nodes))
            self.front = ray.remote(FrontDoorActor).options(
                name=FRONT_DOOR_ACTOR, namespace=NAMESPACE, lifetime="detached", num_cpus=0,
                scheduling_strategy=_head_strategy()).remote()
            self.url = ray.get(self.front.start.remote(self._routes(plan), port), timeout=START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        self.plan = plan
        self.progress(f"front door at {self.url}: shares "
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
        self.url = ray.get(self.front.url.remote())
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
        whose demand shrinks move; nodes that lose their plan get no new request, drain, then stop."""
        from .control import MIN_DRAIN_S

        old = self.plan
        if old is None:
            raise RuntimeError("nothing served: start or attach first")
        if plan.app != old.app:
            raise ValueError(f"the cluster serves {old.app!r}, the plan is for {plan.app!r}")
        if not plan.nodes:
            raise ValueError("the plan gives no node a plan: stop the cluster's serving instead")
        added = [n for n in plan.nodes if n not in old.nodes]
        kept = [n for n in plan.nodes if n in old.nodes]
        gone = [n for n in old.nodes if n not in plan.nodes]
        grow = [n for n in kept if plan.nodes[n].demand_rps >= old.nodes[n].demand_rps]
        shrink = [n for n in kept if n not in grow]
        reports: dict[str, Any] = {}
        drain_s = self.drain_s
        if drain_s is None:
            drain_s = max(MIN_DRAIN_S, 2 * next(iter(plan.nodes.values())).latency_slo_ms / 1000)
        if added:
            self._start_nodes(plan, added)
        for name in grow:
            reports[name] = ray.get(self.nodes[name].apply.remote(plan.nodes[name].to_json(), drain_s))
            self.progress(f"node {name}: {self._said(reports[name])}")
        ray.get(self.front.set_nodes.remote(self._routes(plan), drain_s))
        self.progress("front door: shares " + ", ".join(f"{n} {plan.share(n):.2f}" for n in plan.nodes))
        for name in shrink:
            reports[name] = ray.get(self.nodes[name].apply.remote(plan.nodes[name].to_json(), drain_s))
            self.progress(f"node {name}: {self._said(reports[name])}")
        if gone:
            time.sleep(drain_s)
            self._stop_nodes(gone)
            self.progress(f"node(s) {', '.join(gone)}: no plan, drained and stopped")
        self.plan = plan
        return {"started": added, "applied": reports, "stopped": gone}

    def control(self, profiles: Any, opts: Any, policy: Any, interval_s: float, origin: float) -> None:
        """Start a controller on every node (``NodeServer.control``), each planning for its own node's GPUs (or
        CPU slices) and the arrivals the front door's fixed shares bring it; ``stop`` ends them. Cluster
        applies wait until then. The front door's shares are not replanned."""
        import dataclasses

        slices = {s.name: s.gpus for s in cluster_nodes()}
        ray.get([h.control.remote(profiles, dataclasses.replace(opts, gpus=slices[n]), policy, interval_s, origin)
                 for n, h in self.nodes.items()])

    def events(self) -> dict[str, list[dict[str, Any]]]:
        """Per node, its controller's decisions so far (``NodeServer.events``)."""
        return dict(zip(self.nodes, ray.get([h.events.remote() for h in self.nodes.values()])))

    @staticmethod
    def _said(report: dict[str, Any]) -> str:
        return (f"{len(report['loaded'])} loaded, {len(report['unchanged'])} unchanged, "
                f"{len(report['unloaded'])} unloaded")

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
        self.names = [f"node-{i}" for i in range(nodes)]
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
                self.node_dir(name).mkdir(parents=True, exist_ok=True)
                self._nodes[name] = self._cluster.add_node(
                    num_cpus=self.cpus, num_gpus=self.gpus, node_ip_address="127.0.0.1",
                    resources={node_resource(name): 1}, env_vars={NODE_DIR_ENV: str(self.node_dir(name))})
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
