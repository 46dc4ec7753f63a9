"""App specs: a DAG of tasks, each with model variants, fan-out edges and the app's SLOs.

YAML layout (see examples/)::

    name: tagging
    latency_slo_ms: 120
    accuracy_slo: 0.95            # fraction of the maximum achievable pipeline accuracy
    tasks:
      scene:
        variants:
          resnet50:  {accuracy: 76.13, source: "torchvision model card"}
          resnet152: {accuracy: 78.31}
      objects:
        variants:
          densenet121: {accuracy: 74.43, profile: densenet121}
    edges:
      - {from: scene, to: objects, factor: 3.0, factors: {resnet152: 3.4}}
    paths:                        # optional: weight of each source-to-sink path (default equal)
      - {tasks: [scene, objects], weight: 1}

Accuracies are fractions in [0, 1] or scores above 1 (percent, or a metric such as CIDEr, at most
1000; name it in ``metric``), read as fractions (``Variant.fraction``: a task's scores above 1 / 100).
The pipeline's accuracy is the paper's: the paths' weighted mean of their products of routed raw
accuracies over the same with every task at its best variant, so its maximum is 1 (docs/planning.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any, Mapping

import yaml

from ..errors import InputError
from .typed import TypedIO, absolute_paths, parse_typed


@dataclass(frozen=True)
class Variant:
    """One model variant of a task; ``accuracy`` is normalised to the task's best variant."""

    name: str
    accuracy: float
    raw_accuracy: float
    profile: str
    runtime: Mapping[str, Any] = field(default_factory=dict)
    fraction: float = 0.0  # the raw accuracy as a fraction: raw, or raw / 100 for a task on a percent-like scale


@dataclass(frozen=True)
class Task:
    name: str
    variants: tuple[Variant, ...]

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    @property
    def best(self) -> Variant:
        """The most accurate variant (the first of equals)."""
        return max(self.variants, key=lambda v: v.accuracy)


@dataclass(frozen=True)
class Edge:
    """``src`` -> ``dst``: each item ``src`` serves sends ``factor`` items on (per upstream variant)."""

    src: str
    dst: str
    factor: float
    factors: Mapping[str, float] = field(default_factory=dict)

    def factor_for(self, variant: str) -> float:
        return self.factors.get(variant, self.factor)

    @property
    def max_factor(self) -> float:
        return max([self.factor, *self.factors.values()])


@dataclass(frozen=True)
class Path:
    tasks: tuple[str, ...]
    weight: float


@dataclass(frozen=True)
class AppSpec:
    """A validated app; ``tasks`` is in topological order."""

    name: str
    latency_slo_ms: float
    accuracy_slo: float
    tasks: tuple[Task, ...]
    edges: tuple[Edge, ...]
    paths: tuple[Path, ...]
    tensor_width: int = 16
    doc: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    typed: TypedIO | None = None  # the request's, response's and tasks' tensors and the edges' adapters (typed.py)

    def task(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)

    def parents(self, name: str) -> tuple[Edge, ...]:
        return tuple(e for e in self.edges if e.dst == name)

    def children(self, name: str) -> tuple[Edge, ...]:
        return tuple(e for e in self.edges if e.src == name)

    def path_scale(self, path: "Path") -> float:
        """The best raw accuracy a path can reach (the product of its tasks' best fractions): the
        paper's pipeline accuracy weighs each path's raw product, so paths of different scale count
        in proportion to it."""
        return math.prod(self.task(t).best.fraction for t in path.tasks)

    def accuracy_weights(self) -> dict[tuple[str, ...], float]:
        """Each path's weight in the pipeline accuracy normalised to its maximum: w_p x scale_p / sum
        of them. With these, the pipeline accuracy is the weighted mean of the per-task-normalised
        path products (exactly the paper's ratio of raw means)."""
        raw = {p.tasks: p.weight * self.path_scale(p) for p in self.paths}
        total = sum(raw.values())
        return {k: (v / total if total > 0 else 0.0) for k, v in raw.items()}

    @property
    def sources(self) -> tuple[str, ...]:
        targets = {e.dst for e in self.edges}
        return tuple(t.name for t in self.tasks if t.name not in targets)

    @property
    def sinks(self) -> tuple[str, ...]:
        """The tasks with no children: where an answer leaves the graph."""
        origins = {e.src for e in self.edges}
        return tuple(t.name for t in self.tasks if t.name not in origins)


def _require(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(mapping, Mapping):
        raise InputError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    if key not in mapping:
        raise InputError(f"{where}.{key}: required field is missing")
    return mapping[key]


def _number(value: Any, where: str, lo: float = -math.inf, hi: float = math.inf,
            lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{where}: expected a number, got {value!r}")
    if value < lo or value > hi or (lo_open and value == lo):
        bracket = "(" if lo_open else "["
        raise InputError(f"{where}: {value} is out of range {bracket}{lo}, {hi}]")
    return float(value)


def _check_unknown(mapping: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise InputError(f"{where}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")


def _parse_task(name: str, body: Any) -> Task:
    where = f"tasks.{name}"
    variants_raw = _require(body, "variants", where)
    if not isinstance(variants_raw, Mapping) or not variants_raw:
        raise InputError(f"{where}.variants: expected a non-empty mapping of variant name -> {{accuracy: ...}}")
    raw: list[tuple[str, float, str, dict]] = []
    for vname, vbody in variants_raw.items():
        vwhere = f"{where}.variants.{vname}"
        if isinstance(vbody, (int, float)) and not isinstance(vbody, bool):
            vbody = {"accuracy": vbody}
        acc = _number(_require(vbody, "accuracy", vwhere), f"{vwhere}.accuracy", 0, 1000, lo_open=True)
        _check_unknown(vbody, {"accuracy", "profile", "source", "metric", "runtime"}, vwhere)
        profile = vbody.get("profile", vname)
        if not isinstance(profile, str) or not profile:
            raise InputError(f"{vwhere}.profile: expected a profile variant name")
        runtime = vbody.get("runtime") or {}
        if not isinstance(runtime, Mapping) or ("kind" not in runtime and runtime):
            raise InputError(f"{vwhere}.runtime: expected a mapping with a 'kind' (e.g. numpy_mlp)")
        raw.append((str(vname), acc, profile, dict(runtime)))
    percent = any(acc > 1 for _, acc, _, _ in raw)
    if percent and any(acc <= 1 for _, acc, _, _ in raw):
        raise InputError(f"{where}.variants: mixes fractions (<= 1) and percentages (> 1); use one scale per task")
    best = max(acc for _, acc, _, _ in raw)
    scale = 100.0 if percent else 1.0
    variants = tuple(Variant(n, acc / best, acc, p, rt, acc / scale) for n, acc, p, rt in raw)
    return Task(name=str(name), variants=variants)


def _topological(tasks: dict[str, Task], edges: list[Edge]) -> list[str]:
    indeg = {t: 0 for t in tasks}
    for e in edges:
        indeg[e.dst] += 1
    order = [t for t in tasks if indeg[t] == 0]
    i = 0
    while i < len(order):
        for e in edges:
            if e.src == order[i]:
                indeg[e.dst] -= 1
                if indeg[e.dst] == 0:
                    order.append(e.dst)
        i += 1
    if len(order) != len(tasks):
        left = {t for t in tasks if indeg[t] > 0}
        while True:  # peel off tasks with no edge back into the rest: what stays lies on a cycle
            sinks = {t for t in left if not any(e.src == t and e.dst in left for e in edges)}
            if not sinks:
                break
            left -= sinks
        cyclic = sorted(left)
        raise InputError(f"edges: the task graph has a cycle through {', '.join(cyclic)}")
    return order


def _enumerate_paths(order: list[str], edges: list[Edge]) -> list[tuple[str, ...]]:
    children: dict[str, list[str]] = {t: [] for t in order}
    has_parent = set()
    for e in edges:
        children[e.src].append(e.dst)
        has_parent.add(e.dst)
    paths: list[tuple[str, ...]] = []

    def walk(prefix: tuple[str, ...]) -> None:
        kids = children[prefix[-1]]
        if not kids:
            paths.append(prefix)
        for k in kids:
            walk(prefix + (k,))

    for t in order:
        if t not in has_parent:
            walk((t,))
    return paths


def parse_app(doc: Any, origin: str = "app spec") -> AppSpec:
    """Validate a parsed YAML document into an AppSpec; InputError names the offending field."""
    if not isinstance(doc, Mapping):
        raise InputError(f"{origin}: expected a mapping at the top level")
    _check_unknown(doc, {"name", "latency_slo_ms", "accuracy_slo", "tasks", "edges", "paths", "description",
                         "tensor_width", "inputs", "outputs", "evaluation"}, origin)
    name = _require(doc, "name", origin)
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
        raise InputError(f"name: expected letters, digits, '-' or '_', got {name!r}")
    slo = _number(_require(doc, "latency_slo_ms", origin), "latency_slo_ms", 0, math.inf, lo_open=True)
    acc_slo = _number(_require(doc, "accuracy_slo", origin), "accuracy_slo", 0, 1, lo_open=True)
    width = doc.get("tensor_width", 16)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise InputError(f"tensor_width: expected a positive integer, got {width!r}")
    tasks_raw = _require(doc, "tasks", origin)
    if not isinstance(tasks_raw, Mapping) or not tasks_raw:
        raise InputError("tasks: expected a non-empty mapping of task name -> {variants: ...}")
    tasks = {str(n): _parse_task(str(n), body) for n, body in tasks_raw.items()}

    edges: list[Edge] = []
    seen: set[tuple[str, str]] = set()
    edges_raw = doc.get("edges") or []
    if not isinstance(edges_raw, list):
        raise InputError("edges: expected a list of {from, to, factor}")
    for i, body in enumerate(edges_raw):
        where = f"edges[{i}]"
        src, dst = _require(body, "from", where), _require(body, "to", where)
        _check_unknown(body, {"from", "to", "factor", "factors", "adapter"}, where)
        for key, t in (("from", src), ("to", dst)):
            if t not in tasks:
                raise InputError(f"{where}.{key}: unknown task {t!r} (tasks: {', '.join(tasks)})")
        if src == dst:
            raise InputError(f"{where}: an edge from {src!r} to itself is a cycle")
        if (src, dst) in seen:
            raise InputError(f"{where}: duplicate edge {src} -> {dst}")
        seen.add((src, dst))
        factor = _number(body.get("factor", 1.0), f"{where}.factor", 0, math.inf, lo_open=True)
        factors_raw = body.get("factors") or {}
        if not isinstance(factors_raw, Mapping):
            raise InputError(f"{where}.factors: expected a mapping of upstream variant -> factor")
        factors = {}
        for v, f in factors_raw.items():
            if v not in {x.name for x in tasks[src].variants}:
                raise InputError(f"{where}.factors.{v}: {v!r} is not a variant of upstream task {src!r}")
            factors[str(v)] = _number(f, f"{where}.factors.{v}", 0, math.inf, lo_open=True)
        edges.append(Edge(src, dst, factor, factors))

    order = _topological(tasks, edges)
    found = _enumerate_paths(order, edges)
    paths_raw = doc.get("paths")
    if paths_raw is None:
        paths = tuple(Path(p, 1.0 / len(found)) for p in found)
    else:
        if not isinstance(paths_raw, list) or not paths_raw:
            raise InputError("paths: expected a non-empty list of {tasks: [...], weight: w}")
        weights: dict[tuple[str, ...], float] = {}
        for i, body in enumerate(paths_raw):
            where = f"paths[{i}]"
            seq = _require(body, "tasks", where)
            key = tuple(seq) if isinstance(seq, list) else ()
            if key not in found:
                raise InputError(f"{where}.tasks: {seq!r} is not a source-to-sink path "
                                 f"(paths: {[list(p) for p in found]})")
            weights[key] = _number(body.get("weight", 1.0), f"{where}.weight", 0, math.inf)
        total = sum(weights.values())
        if total <= 0:
            raise InputError("paths: the weights sum to zero")
        paths = tuple(Path(p, weights.get(p, 0.0) / total) for p in found)
    sources = tuple(t for t in order if not any(e.dst == t for e in edges))
    sinks = tuple(t for t in order if not any(e.src == t for e in edges))
    typed = parse_typed(doc, order, [(e.src, e.dst) for e in edges], sources, sinks)
    return AppSpec(name=name, latency_slo_ms=slo, accuracy_slo=acc_slo,
                   tasks=tuple(tasks[t] for t in order), edges=tuple(edges), paths=paths,
                   tensor_width=width, doc=dict(doc), typed=typed)


def load_app(path: str | FsPath) -> AppSpec:
    """Read and validate an app spec YAML file."""
    p = FsPath(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise InputError(f"{p}: cannot read app spec ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise InputError(f"{p}:{line} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_app(absolute_paths(doc, p.parent.resolve()), origin=str(p))
