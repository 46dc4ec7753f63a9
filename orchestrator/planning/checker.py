"""Exact (non-linearised) metrics of a plan and the SLO constraints it violates."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..spec.appspec import AppSpec
from .plan import Entry, Plan

TOL = 1e-6  # relative
ABS_TOL = 1e-9


@dataclass(frozen=True)
class Metrics:
    task_demand: dict[str, float]
    task_accuracy: dict[str, float]
    path_latency: dict[tuple[str, ...], float]
    path_accuracy: dict[tuple[str, ...], float]
    accuracy: float
    slices: int


def task_demand(app: AppSpec, routing: dict[str, dict[str, float]], demand: float) -> dict[str, float]:
    """Items per second arriving at each task, given how each upstream task routes its items."""
    arrived: dict[str, float] = {}
    for t in app.tasks:
        parents = app.parents(t.name)
        arrived[t.name] = demand if not parents else sum(
            e.factor_for(v) * rate for e in parents for v, rate in routing.get(e.src, {}).items())
    return arrived


def metrics(app: AppSpec, entries: list[Entry], routing: dict[str, dict[str, float]], demand: float) -> Metrics:
    """Exact definitions (the paper's): a task's accuracy is the routing-weighted mean of its variants'
    raw accuracies; a path's is the product over its tasks; the pipeline's is the weighted mean of the
    paths' raw products divided by the same mean with every task at its best variant. Task and path
    accuracies are reported normalised to their best. A task's worst-case latency is the max over the
    entries it uses of their worst case (``Entry.wc_latency_ms``)."""
    arrived = task_demand(app, routing, demand)
    raw: dict[str, float] = {}
    for t in app.tasks:
        total = sum(routing.get(t.name, {}).values())
        raw[t.name] = (sum(t.variant(v).fraction * r for v, r in routing[t.name].items()) / total
                       if total > 0 else t.best.fraction)
    acc = {t.name: raw[t.name] / t.best.fraction for t in app.tasks}
    wc = {t.name: max((e.wc_latency_ms for e in entries if e.task == t.name and e.count > 0), default=0.0)
          for t in app.tasks}
    path_lat = {p.tasks: sum(wc[t] for t in p.tasks) for p in app.paths}
    path_raw = {p.tasks: math.prod(raw[t] for t in p.tasks) for p in app.paths}
    best = sum(p.weight * app.path_scale(p) for p in app.paths)
    pipeline = sum(p.weight * path_raw[p.tasks] for p in app.paths) / best
    path_acc = {p.tasks: path_raw[p.tasks] / app.path_scale(p) for p in app.paths}
    slices = sum(e.mig * e.count for e in entries)
    return Metrics(arrived, acc, path_lat, path_acc, pipeline, slices)


def violations(app: AppSpec, plan: Plan, slice_cap: int | None = None) -> list[str]:
    """Every SLO or resource constraint the plan breaks, each naming the constraint; [] if none."""
    m = metrics(app, plan.entries, plan.routing, plan.demand_rps)
    out: list[str] = []
    for t in app.tasks:
        routed = sum(plan.routing.get(t.name, {}).values())
        if abs(routed - m.task_demand[t.name]) > TOL * max(1.0, m.task_demand[t.name]):
            out.append(f"routing: task {t.name} routes {routed:.3f} items/s but receives {m.task_demand[t.name]:.3f}")
        for v, rate in plan.routing.get(t.name, {}).items():
            cap = sum(e.count * e.throughput_rps for e in plan.entries if e.task == t.name and e.variant == v)
            if rate > cap * (1 + TOL) + ABS_TOL:
                out.append(f"throughput: task {t.name} variant {v} is routed {rate:.2f} items/s "
                           f"but its instances serve {cap:.2f}")
    for path, lat in m.path_latency.items():
        if lat > app.latency_slo_ms + TOL:
            out.append(f"latency: path {' -> '.join(path)} worst-case {lat:.1f} ms > SLO {app.latency_slo_ms:g} ms")
    if m.accuracy < app.accuracy_slo - TOL:
        out.append(f"accuracy: pipeline accuracy {m.accuracy:.4f} < SLO {app.accuracy_slo:g} of max")
    if slice_cap is not None and m.slices > slice_cap:
        out.append(f"slices: plan uses {m.slices} slices > {slice_cap} available")
    return out
