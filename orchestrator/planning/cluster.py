"""A cluster of nodes, and a plan over it that keeps every request's path inside one node.

Each node serves the whole app with its own plan (its own tritonserver: no cross-node hop per task); the
nodes' planned demands sum to the app's. Pure planning code: no Ray or Triton import (``ray_cluster.py``
reads a Ray cluster's nodes into ``NodeSpec``s).

Cluster inventory file (JSON; ``load_cluster``)::

    {"nodes": [                     # at least one; other keys of a node must start with "_" (comments)
      {"name": "n0",                # non-empty string, unique
       "gpus": 8,                   # int >= 1: GPUs (or CPU slices) the planner may use on the node;
                                    #   optional with an inventory (default: all its GPUs)
       "inventory": {"gpus": [...]}}]}  # optional: the node's GPUs as ``inventory.py`` reads them;
                                    #   omitted: CPU slices
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..spec.appspec import AppSpec
from .capacity import Capacity, max_demand
from .checker import TOL, metrics
from ..errors import InfeasibleError, InputError
from ..spec.gpus import GpuType
from ..serving.inventory import Inventory, parse as parse_inventory
from .plan import Plan, write_json
from .planner import Deadline, PlanOptions, make_plan
from ..spec.profiles import Profiles

DEFAULT_TIME_LIMIT = 30.0  # seconds: `jigsaw plan --cluster` or `--nodes` without --time-limit
CAPACITY_SHARE = 1 / 3  # of the call's time: the capacity searches (one per node size); the node plans get the rest
REACH_TOL = 0.005  # relative: how close the bisection for a node's reach at its slices gets (as max_demand's)
PROBE_SHARE = 4  # a reach probe's plan may take a 1/PROBE_SHARE of the time left


@dataclass(frozen=True)
class NodeSpec:
    """One node: its name (the Ray node's, or the inventory file's), its GPUs (an ``Inventory``: NVML-like
    GPUs, MIG or not, or none for CPU slices) and how many GPUs (or CPU slices) the planner may use on it."""

    name: str
    inventory: Inventory
    gpus: int


def uniform(count: int, gpus: int) -> list[NodeSpec]:
    """``count`` identical nodes ``node-0``... of ``gpus`` GPUs each, their inventories unread (a plan made before
    the nodes exist: ``jigsaw plan --nodes N --gpus-per-node G``)."""
    if count < 1 or gpus < 1:
        raise InputError(f"--nodes {count} --gpus-per-node {gpus}: expected at least 1 of each")
    return [NodeSpec(f"node-{i}", Inventory((), "not read (--nodes)"), gpus) for i in range(count)]


@dataclass
class ClusterPlan:
    """Per node, the plan it serves (``Plan.demand_rps`` is that node's share of the demand); nodes without
    a plan serve nothing. ``capacity_rps`` and ``node_gpus`` cover every node of the cluster, idle ones too:
    the most demand its GPUs serve (from ``capacity.max_demand``) and the GPUs it has. ``accuracy`` is the
    whole cluster's pipeline accuracy (the paper's definition over all nodes' routing together)."""

    app: str
    demand_rps: float
    nodes: dict[str, Plan] = field(default_factory=dict)
    capacity_rps: dict[str, float] = field(default_factory=dict)
    node_gpus: dict[str, int] = field(default_factory=dict)
    accuracy: float = 0.0
    solve_seconds: float = 0.0
    solver: dict[str, Any] = field(default_factory=dict)

    @property
    def slices(self) -> int:
        return sum(p.slices for p in self.nodes.values())

    @property
    def gpus(self) -> int:
        return sum(p.gpus for p in self.nodes.values())

    @property
    def idle(self) -> list[str]:
        """The cluster's nodes that serve nothing."""
        return [n for n in self.node_gpus if n not in self.nodes]

    def share(self, node: str) -> float:
        """The fraction of the requests ``node`` should get: its planned demand over the whole."""
        total = sum(p.demand_rps for p in self.nodes.values())
        return self.nodes[node].demand_rps / total if node in self.nodes and total else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"app": self.app, "demand_rps": self.demand_rps, "slices": self.slices, "gpus": self.gpus,
                "accuracy": self.accuracy, "shares": {n: self.share(n) for n in self.nodes},
                "capacity_rps": self.capacity_rps, "node_gpus": self.node_gpus,
                "solve_seconds": self.solve_seconds, "solver": self.solver,
                "nodes": {n: p.to_json() for n, p in self.nodes.items()}}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ClusterPlan:
        return cls(app=doc["app"], demand_rps=float(doc["demand_rps"]),
                   nodes={n: Plan.from_json(p) for n, p in doc["nodes"].items()},
                   capacity_rps={n: float(c) for n, c in doc.get("capacity_rps", {}).items()},
                   node_gpus={n: int(g) for n, g in doc.get("node_gpus", {}).items()},
                   accuracy=float(doc.get("accuracy", 0.0)), solve_seconds=float(doc.get("solve_seconds", 0.0)),
                   solver=doc.get("solver", {}))

    def save(self, path: str | Path) -> None:
        """Write the cluster plan JSON, making the folder it goes in."""
        write_json(path, self.to_json(), "the cluster plan")

    def summary(self) -> str:
        """Per node what it serves (demand, share of the whole, load against its capacity), its slices, GPUs and
        fragmentation (free slices on the GPUs it uses); then the idle nodes and the splits compared."""
        plans = list(self.nodes.values())
        held = sum(p.placement.get("slices_used", p.slices) + p.placement.get("free_slices", 0) for p in plans)
        free = sum(p.placement.get("free_slices", 0) for p in plans)
        kind, slo = (f" of {plans[0].gpu_type}", f" (SLO {plans[0].accuracy_slo:g} of max)") if plans else ("", "")
        lines = [f"cluster plan for {self.app} at {self.demand_rps:g} req/s on {len(self.node_gpus) or len(plans)} "
                 f"node(s){kind}: {len(plans)} serve it, {len(self.idle)} idle",
                 f"  {self.slices} slices on {self.gpus} GPU(s), fragmentation {free / held if held else 0:.1%} "
                 f"({free} free slices), accuracy {self.accuracy:.4f}{slo}, solved in {self.solve_seconds:.2f} s "
                 f"({self.solver.get('capacity_seconds', 0.0):.2f} s of it the nodes' capacity)",
                 f"  {'node':<12} {'demand req/s':>12} {'share':>6} {'capacity':>9} {'load':>5} {'slices':>6} "
                 f"{'GPUs':>7} {'free':>4} {'fragm.':>6}"]
        for name, p in self.nodes.items():
            cap = self.capacity_rps.get(name, 0.0)
            gpus = f"{p.gpus}/{self.node_gpus[name]}" if name in self.node_gpus else str(p.gpus)
            lines.append(f"  {name:<12} {p.demand_rps:12.1f} {self.share(name):6.1%} {cap:9.1f} "
                         f"{p.demand_rps / cap if cap else 0:5.0%} {p.slices:6d} {gpus:>7} "
                         f"{p.placement.get('free_slices', 0):4d} {p.placement.get('fragmentation', 0):6.1%}")
        if self.idle:
            lines.append(f"  idle: {', '.join(self.idle)}")
        for s in self.solver.get("splits", []):
            what = f"{s['slices']} slices, accuracy {s['accuracy']:.4f}" if "slices" in s else f"no plan ({s['error']})"
            mark = " (chosen)" if s.get("chosen") else ""
            lines.append(f"  split {s['split']} over {s['nodes']} node(s): {what}{mark}")
        return "\n".join(lines)


def _check_nodes(nodes: list[NodeSpec]) -> None:
    if not nodes:
        raise InputError("cluster: no nodes")
    seen: set[str] = set()
    for n in nodes:
        if n.name in seen:
            raise InputError(f"cluster: node name {n.name!r} given twice")
        seen.add(n.name)
        if n.gpus < 1:
            raise InputError(f"cluster: node {n.name}: gpus must be at least 1, got {n.gpus}")


def _capacities(app: AppSpec, profiles: Profiles, gpu: GpuType, nodes: list[NodeSpec], opts: PlanOptions,
                deadline: Deadline) -> dict[int, Capacity]:
    """Per node size (GPUs), the most demand one node of it serves: nodes of one size share one search; the
    searches share ``CAPACITY_SHARE`` of the time left. With ``auto`` each probe is the relaxation with rounding
    alone, the MILP only where that serves nothing: in ``auto``'s own search a MILP probe near capacity cut by
    its share of a short limit counts as not fitting, and on a loaded 2-core machine that halved a node's
    capacity (chain on 8 A100s: 1754 req/s for 3508 in a 10 s search), where rounding's are never cut short."""
    sizes = sorted({n.gpus for n in nodes}, reverse=True)
    end = time.monotonic() + deadline.left() * CAPACITY_SHARE
    out: dict[int, Capacity] = {}
    for i, g in enumerate(sizes):
        for method in ("relax", "auto") if opts.method == "auto" else (opts.method,):
            limit = (end - time.monotonic()) / (len(sizes) - i)
            if limit <= 0 or (g in out and out[g].max_demand_rps > 0):
                break
            out[g] = max_demand(app, profiles, gpu, dataclasses.replace(opts, gpus=g, time_limit=limit, method=method))
        if g not in out:
            raise InfeasibleError(f"time limit: the time limit of {opts.time_limit:g} s passed while searching the "
                                  f"nodes' capacities: raise --time-limit", binding="time_limit")
    return out


def _no_capacity(app: AppSpec, profiles: Profiles, gpu: GpuType, demand: float, nodes: list[NodeSpec],
                 caps: dict[int, Capacity], opts: PlanOptions, deadline: Deadline) -> InfeasibleError:
    """The error when the nodes at capacity together serve less than ``demand``; where no node serves anything,
    the largest node's own diagnosis (a latency or accuracy SLO no plan meets, too few slices for the tasks)."""
    largest = max(nodes, key=lambda n: n.gpus)
    if all(c.max_demand_rps <= 0 for c in caps.values()) and deadline.left() > 0:
        try:
            make_plan(app, profiles, gpu, demand / len(nodes),
                      dataclasses.replace(opts, gpus=largest.gpus, time_limit=deadline.left()))
        except InfeasibleError as exc:
            return InfeasibleError(f"node {largest.name} ({largest.gpus} GPUs): {exc}", binding=exc.binding)
    count = {g: sum(1 for n in nodes if n.gpus == g) for g in caps}
    total = sum(count[g] * c.max_demand_rps for g, c in caps.items())
    each = ", ".join(f"{count[g]} x {g} GPU(s) at {c.max_demand_rps:.1f} req/s" for g, c in caps.items())
    notes = "; ".join(f"{g} GPU(s): {c.note}" for g, c in caps.items() if c.note)
    if notes:
        return InfeasibleError(f"time limit: the capacities found in the time sum to {total:.1f} req/s over the "
                               f"{len(nodes)} nodes ({each}), less than the demand of {demand:g} req/s; {notes}: "
                               f"raise --time-limit", binding="time_limit")
    return InfeasibleError(f"slices: the {len(nodes)} nodes serve at most {total:.1f} req/s together ({each}; each "
                           f"size's capacity searched to 0.5%), less than the demand of {demand:g} req/s",
                           binding="slices")


Split = list[tuple[NodeSpec, float]]
Named = tuple[str, Split]


def _splits(order: list[tuple[NodeSpec, float]], demand: float) -> tuple[list[Named], list[Named]]:
    """The splits to compare over the nodes in ``order`` (largest capacity first): over the fewest nodes that
    can serve ``demand``, ``fill`` (each node to its capacity, the remainder on the last) and ``even`` (every
    node at the same share of its capacity), and ``even`` over one node more; then, tried only when none of
    those gives every node a plan, ``even`` over each larger number of nodes."""
    k, reach = 0, 0.0
    while reach < demand:
        reach += order[k][1]
        k += 1
    fill: Split = []
    left = demand
    for i, (node, cap) in enumerate(order[:k]):
        fill.append((node, left if i == k - 1 else cap))
        left -= cap

    def even(m: int) -> Named:
        total = sum(c for _, c in order[:m])
        return "even", [(node, demand * cap / total) for node, cap in order[:m]]

    first = [("fill", fill), even(k)] + ([even(k + 1)] if k < len(order) else [])
    first = [s for i, s in enumerate(first) if all(s[1] != t[1] for t in first[:i])]
    return first, [even(m) for m in range(k + 2, len(order) + 1)]


def _shifts(split: list[tuple[NodeSpec, float, Plan]], reach: list[float]) -> list[Split]:
    """Splits that move demand off one node onto the others' slack (``reach[i]``: the most demand node ``i``
    serves with its plan's slices): from each node in turn, all of its demand where the others' slack covers it
    (the node then serves nothing), else as much as their slack, the others then at their reach. With whole
    segments per task a node's first slices serve more than its last, so a node filled to capacity may spend
    slices that a lower level of it, with the rest on another node's slack, saves."""
    slack = [max(0.0, r - d) for r, (_, d, _) in zip(reach, split)]
    out: dict[tuple, Split] = {}
    for j, (node, d, _) in enumerate(split):
        others = sum(slack) - slack[j]
        if others <= 0:
            continue
        if others >= d:
            moved = [(n, di + d * slack[i] / others) for i, (n, di, _) in enumerate(split) if i != j]
        else:
            moved = [(n, di - others if i == j else reach[i]) for i, (n, di, _) in enumerate(split)]
        out.setdefault(tuple(sorted((n.gpus, di) for n, di in moved)), moved)
    return list(out.values())


def _whole_accuracy(app: AppSpec, plans: list[Plan]) -> float:
    """The paper's pipeline accuracy of all nodes' routing together: a task's accuracy is the mean over every
    node's items, so items from nodes of different fan-out weigh differently than the nodes' own figures."""
    routing: dict[str, dict[str, float]] = {}
    for p in plans:
        for t, flows in p.routing.items():
            whole = routing.setdefault(t, {})
            for v, x in flows.items():
                whole[v] = whole.get(v, 0.0) + x
    return metrics(app, [e for p in plans for e in p.entries], routing, sum(p.demand_rps for p in plans)).accuracy


@dataclass
class _Scored:
    """A split whose every node has a plan: ``key`` (total slices, minus the whole's accuracy, then the nodes' names:
    alike nodes give the same plan on each run) to minimise, its
    nodes with their demands and plans, and its row in the record of the splits tried."""

    key: tuple[int, float, tuple[str, ...]]
    nodes: list[tuple[NodeSpec, float, Plan]]
    row: dict[str, Any]


class _Search:
    """Node plans for splits of the demand, one ``make_plan`` per distinct (node size, demand), all within one
    deadline; every split scored is recorded (``tried``)."""

    def __init__(self, app: AppSpec, profiles: Profiles, gpu: GpuType, opts: PlanOptions, deadline: Deadline) -> None:
        self.app, self.profiles, self.gpu, self.opts, self.deadline = app, profiles, gpu, opts, deadline
        self.plans: dict[tuple[int, float], Plan | InfeasibleError] = {}
        self.tried: list[dict[str, Any]] = []

    def plan(self, g: int, d: float, limit: float) -> Plan | InfeasibleError:
        """The plan of a node of ``g`` GPUs at ``d`` req/s (made once, within ``limit`` seconds), or why none."""
        if (g, d) not in self.plans:
            try:
                if limit <= 0:
                    raise InfeasibleError(f"the time limit of {self.opts.time_limit:g} s passed", binding="time_limit")
                self.plans[(g, d)] = make_plan(self.app, self.profiles, self.gpu, d, dataclasses.replace(
                    self.opts, gpus=g, time_limit=limit, diagnose=False))
            except InfeasibleError as exc:
                self.plans[(g, d)] = exc
        return self.plans[(g, d)]

    def solve(self, splits: list[Split]) -> None:
        """A plan per new (node size, demand) of ``splits``, each given an even share of the time left (small
        plans end well within theirs: what they leave goes to the shifts)."""
        todo = list(dict.fromkeys((n.gpus, d) for split in splits for n, d in split if (n.gpus, d) not in self.plans))
        for i, (g, d) in enumerate(todo):
            self.plan(g, d, self.deadline.left() / (len(todo) - i))

    def reach(self, g: int, d: float, slices: int, upper: float) -> float:
        """The most demand (within ``REACH_TOL``) that a node of ``g`` GPUs serves with at most ``slices`` slices:
        a bisection from ``d`` (a demand it serves so) towards ``upper`` (its capacity's bound), starting from the
        plans already made; every probe's plan is kept for the splits."""
        known = [(x, p) for (h, x), p in self.plans.items() if h == g]
        lo = max([d] + [x for x, p in known if isinstance(p, Plan) and p.slices <= slices])
        hi = min([upper] + [x for x, p in known if x > lo and not (isinstance(p, Plan) and p.slices <= slices)])
        while hi - lo > REACH_TOL * hi and self.deadline.left() > 0:
            mid = (lo + hi) / 2
            p = self.plan(g, mid, self.deadline.left() / PROBE_SHARE)
            lo, hi = (mid, hi) if isinstance(p, Plan) and p.slices <= slices else (lo, mid)
        return lo

    def score(self, name: str, split: Split) -> _Scored | None:
        """A solved split scored, or None (recorded why) when a node has no plan or the whole misses the
        accuracy SLO."""
        row: dict[str, Any] = {"split": name, "nodes": len(split)}
        self.tried.append(row)
        plans: list[Plan] = []
        for n, d in split:
            plan = self.plans[(n.gpus, d)]
            if isinstance(plan, InfeasibleError):
                row.update(error=f"node {n.name} at {d:.1f} req/s: {plan}", binding=plan.binding)
                return None
            plans.append(plan)
        accuracy = _whole_accuracy(self.app, plans)
        if accuracy < self.app.accuracy_slo - TOL:
            row.update(error=f"the whole's accuracy {accuracy:.4f} is below the SLO", binding="accuracy")
            return None
        row.update(slices=sum(p.slices for p in plans), accuracy=accuracy)
        return _Scored((row["slices"], -accuracy, tuple(sorted(n.name for n, _ in split))),
                       [(n, d, p) for (n, d), p in zip(split, plans)], row)


def plan_cluster(app: AppSpec, profiles: Profiles, gpu: GpuType, demand: float, nodes: list[NodeSpec],
                 opts: PlanOptions = PlanOptions(), deadline: Deadline | None = None) -> ClusterPlan:
    """Split ``demand`` over ``nodes`` (all of GPU type ``gpu``) so that the total slices are fewest, each node
    serving the whole app with its own ``make_plan`` (``opts`` with ``gpus`` the node's): no request's path
    leaves its node.

    A node's slices are a nondecreasing step function of its demand, up to its capacity (``max_demand``, searched
    once per node size within ``CAPACITY_SHARE`` of ``opts.time_limit``); per-node overheads (every task needs an
    instance on every node) make fewer nodes cheaper. So the splits compared (``_splits``) are over the fewest
    nodes that can serve the demand, filled or even, and even over one node more; then the best is improved by
    moving demand onto its nodes' slack (``_shifts``) while that saves slices. The fewest total slices win, then
    the higher accuracy; nodes left out get no plan. ``opts.time_limit`` bounds the whole call: the node plans
    share what the capacity searches leave (``deadline``: a clock started earlier, as the CLI starts it at a
    command's entry). Every node's plan meets both SLOs for its requests (its own exact check); the whole
    cluster's accuracy (``_whole_accuracy``) is checked as well, since a task's accuracy over all nodes weighs each node's items, not its requests: a split whose whole falls below the SLO (nodes routing
    differently under per-variant fan-out) is not taken. InfeasibleError when the nodes at capacity together
    serve less than the demand (naming that total), or when no split gives every node a plan in time.
    """
    began = time.perf_counter()
    deadline = deadline or Deadline(opts.time_limit)
    if not (demand > 0 and math.isfinite(demand)):
        raise InputError(f"--demand: expected a positive number of requests per second, got {demand}")
    if not (opts.time_limit > 0 and math.isfinite(opts.time_limit)):
        raise InputError(f"--time-limit: expected a positive number of seconds, got {opts.time_limit:g}")
    _check_nodes(nodes)
    caps = _capacities(app, profiles, gpu, nodes, opts, deadline)
    order = sorted(((n, caps[n.gpus].max_demand_rps) for n in nodes if caps[n.gpus].max_demand_rps > 0),
                   key=lambda nc: -nc[1])
    if sum(c for _, c in order) < demand:
        raise _no_capacity(app, profiles, gpu, demand, nodes, caps, opts, deadline)
    search = _Search(app, profiles, gpu, opts, deadline)
    if opts.alpha == 0:  # the searches' plans at capacity (fewest slices) are what the node plans would be there
        search.plans.update({(g, c.plan.demand_rps): c.plan for g, c in caps.items() if c.plan is not None})
    first, fallback = _splits(order, demand)
    best: _Scored | None = None
    for named in (first, fallback):
        search.solve([split for _, split in named])
        for name, split in named:
            scored = search.score(name, split)
            if scored is not None and (best is None or scored.key < best.key):
                best = scored
        if best is not None:
            break
    if best is None:
        binding = "time_limit" if any(r.get("binding") == "time_limit" for r in search.tried) else "slices"
        raise InfeasibleError(f"{binding}: no split of {demand:g} req/s over the nodes gave every node a plan: "
                              + "; ".join(f"{r['split']} over {r['nodes']}: {r['error']}" for r in search.tried),
                              binding=binding)
    while deadline.left() > 0:
        reach = [search.reach(n.gpus, d, p.slices, caps[n.gpus].upper_rps) for n, d, p in best.nodes]
        shifts = _shifts(best.nodes, reach)
        search.solve(shifts)
        better = [s for s in (search.score("shift", split) for split in shifts) if s is not None]
        if not better or min(s.key for s in better) >= best.key:
            break
        best = min(better, key=lambda s: s.key)
    best.row["chosen"] = True
    return ClusterPlan(
        app=app.name, demand_rps=demand,
        nodes={n.name: dataclasses.replace(p) for n, _, p in sorted(best.nodes, key=lambda c: nodes.index(c[0]))},
        capacity_rps={n.name: caps[n.gpus].max_demand_rps for n in nodes}, node_gpus={n.name: n.gpus for n in nodes},
        accuracy=-best.key[1], solve_seconds=time.perf_counter() - began,
        solver={"time_limit_s": opts.time_limit, "capacity_seconds": sum(c.seconds for c in caps.values()),
                "splits": search.tried, "capacity_notes": {str(g): c.note for g, c in caps.items() if c.note}})


def load_cluster(path: str | Path) -> list[NodeSpec]:
    """The nodes of a cluster inventory file (schema in the module docstring); InputError names the file and
    the field."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read the cluster inventory ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
    raw_nodes = doc.get("nodes") if isinstance(doc, dict) else None
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise InputError(f"{path}: nodes: expected a non-empty list of nodes, got {raw_nodes!r}")
    out: list[NodeSpec] = []
    for i, raw in enumerate(raw_nodes):
        where = f"{path}: nodes[{i}]"
        if not isinstance(raw, dict):
            raise InputError(f"{where}: expected an object, got {raw!r}")
        unknown = sorted(k for k in raw if k not in ("name", "gpus", "inventory") and not k.startswith("_"))
        if unknown:
            raise InputError(f"{where}: unknown field(s) {', '.join(unknown)} (expected name, gpus, inventory)")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise InputError(f"{where}.name: expected a non-empty string, got {name!r}")
        if any(n.name == name for n in out):
            raise InputError(f"{where}.name: {name!r} names an earlier node too")
        if "inventory" in raw:
            try:
                inventory = parse_inventory(raw["inventory"], f"file {path}, node {name}")
            except InputError as exc:
                raise InputError(f"{where}.inventory: {exc}") from None
        else:
            inventory = Inventory((), f"file {path}, node {name}: CPU slices")
        gpus = raw.get("gpus", len(inventory.gpus) or None)
        if gpus is None:
            raise InputError(f"{where}.gpus: missing (needed where no inventory lists the node's GPUs)")
        if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
            raise InputError(f"{where}.gpus: expected an integer >= 1, got {gpus!r}")
        if inventory.gpus and gpus > len(inventory.gpus):
            raise InputError(f"{where}.gpus: {gpus}, but its inventory lists {len(inventory.gpus)} GPU(s)")
        out.append(NodeSpec(name, inventory, gpus))
    return out
