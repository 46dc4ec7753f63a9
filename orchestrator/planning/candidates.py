"""Candidate instance configurations (task, variant, segment, batch) and static budgets.

A candidate is one segment (MIG size x MPS processes) running one variant at one max batch.
Its worst-case latency per request is the profiled p95 times (1 + ceil(items / batch)): one batch
forming while one executes, then the batches a request's items need. ``items`` is the most items
one request can bring to the task (the product of the largest fan-out factors on the way from a
source; 1 for a source task, where this is the paper's 2x p95). Its throughput is the profiled one
times ``batch_fill``: Triton's dynamic batcher never splits a request, so a batch of requests that
bring several items each holds fewer than ``batch`` rows (5 requests of 3 items fill 15 of 16). Candidates
dominated by another of the same task and variant (no more slices, no less throughput, no more
latency) are pruned: that is exact, since a smaller MIG shape fits wherever a larger one does.

With a queueing term (``loads``), each configuration is offered at a few loads: planned at load ``r`` it
counts ``r`` x its throughput and adds to its worst case the p95 wait behind earlier batches of a server
kept that busy by Poisson arrivals (``queue_wait_ms``). Without it (the paper's model) a configuration
counts its whole throughput and no such wait.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..spec.appspec import AppSpec
from ..errors import InfeasibleError
from .features import Features
from ..spec.gpus import GpuType
from ..spec.profiles import ProfilePoint, Profiles

QUEUE_LOADS = (0.5, 0.65, 0.8)   # the loads a configuration is offered at with the queueing term
QUEUE_P95_PER_MEAN = 3.0          # an exponential tail's p95 is ln(20) = 3.0 x its mean


def queue_wait_ms(load: float, service_ms: float) -> float:
    """The p95 wait behind earlier batches at a server kept ``load`` busy by Poisson arrivals: the
    Pollaczek-Khinchine mean wait of an M/D/1 queue, load / (2 (1 - load)) x the batch time, times
    ``QUEUE_P95_PER_MEAN`` for its tail. An approximation: batching (a queued request joins the next
    batch) and several instances sharing one queue make the real wait shorter."""
    if not 0 < load < 1:
        raise ValueError(f"load: expected a share in (0, 1), got {load}")
    return QUEUE_P95_PER_MEAN * load / (2 * (1 - load)) * service_ms


LATENCY_MODELS = ("batches", "paper")
LATENCY_RULES = {"batches": "p95 x (1 + batches per request)", "paper": "2 x p95"}


def worst_case_ms(latency_ms: float, batch: int, items: float = 1.0, model: str = "batches") -> float:
    """Worst-case time of one request at a task. ``batches`` (the default, what the runtime needs when a
    request brings more items than a batch holds): a batch-forming wait plus ceil(items / batch) batches.
    ``paper``: the paper's 2 x p95 (one batch forming while one runs), optimistic under fan-out."""
    if model == "paper":
        return 2 * latency_ms
    return latency_ms * (1 + math.ceil(items / batch - 1e-9))


def batch_fill(batch: int, lo: float, hi: float) -> float:
    """The share of a full batch's rows that whole requests fill when requests keep coming, each
    bringing between ``lo`` and ``hi`` items (the fan-out products per source request; a stage sends
    floor or ceil of them, in chunks of at most ``batch`` rows). Chunks of ``batch`` rows fill a batch;
    the remainder chunks share batches, and a batch closes when the next chunk does not fit: it holds
    at least the least sum of remainder sizes that leaves less room than the largest one (k rows each:
    ``batch // k * k``, exact when every request brings the same count). The least fill over the
    request sizes."""
    sizes = range(max(1, math.floor(lo + 1e-9)), max(1, math.ceil(hi - 1e-9)) + 1)
    rests = sorted({r % batch for r in sizes} - {0})
    if not rests:
        return 1.0
    sums = {0}
    for total in range(1, batch + 1):
        if any(total - k in sums for k in rests):
            sums.add(total)
    rows = min(s for s in sums if s > batch - rests[-1])
    return min(r / (r - r % batch + (r % batch) * batch / rows) for r in sizes)


def items_per_request(app: AppSpec, features: Features) -> dict[str, float]:
    """The most items one request brings to each task: the largest fan-out factors of the allowed
    variants along the way, summed over a join's parents (a request brings the items of each)."""
    return {t: hi for t, (_, hi) in demand_bounds(app, features).items()}


@dataclass(frozen=True)
class Candidate:
    task: str
    variant: str
    accuracy: float
    point: ProfilePoint
    mem_slices: int
    items: float = 1.0
    fill: float = 1.0  # batch_fill at its batch
    load: float | None = None  # planned busy share, with the queueing term
    latency_model: str = "batches"

    @property
    def slices(self) -> int:
        return self.point.mig

    @property
    def served(self) -> float:
        """Items per second at full batches of whole requests."""
        return self.point.throughput_rps * self.fill

    @property
    def throughput(self) -> float:
        """Items per second the plan counts on: what it serves, times its load with the queueing term."""
        return self.served * (self.load or 1.0)

    @property
    def wc_latency_ms(self) -> float:
        wait = queue_wait_ms(self.load, self.point.latency_ms) if self.load else 0.0
        return worst_case_ms(self.point.latency_ms, self.point.batch, self.items, self.latency_model) + wait

    @property
    def key(self) -> tuple[str, str, int, int, int]:
        p = self.point
        return (self.task, self.variant, p.mig, p.mps, p.batch)


def _fits_memory(p: ProfilePoint, gpu: GpuType) -> bool:
    if p.memory_mb is None or not gpu.mig:
        return True
    return p.memory_mb * p.mps <= gpu.shape(p.mig).memory_gb * 1024


def _pareto(cands: list[Candidate]) -> list[Candidate]:
    """Drop each candidate that ``size // size'`` copies of a smaller (or as large) one serve as well:
    no more slices, no less throughput, no more latency. Exact on the MIG layouts of the catalogue:
    that many copies of a smaller shape fit inside the larger one's memory slices wherever it starts
    (1g x k anywhere, 2g x 2 in a 4g, 2g x 3 or 3g x 2 in a 7g), so any plan using it stays feasible,
    with the same slices, when the copies replace it."""
    ordered = sorted(cands, key=lambda c: (c.slices, -c.throughput, c.wc_latency_ms, c.point.mps, c.point.batch))
    kept: list[Candidate] = []
    for c in ordered:
        if not any(k.slices <= c.slices and (c.slices // k.slices) * k.throughput >= c.throughput
                   and k.wc_latency_ms <= c.wc_latency_ms for k in kept):
            kept.append(c)
    return kept


def demand_bounds(app: AppSpec, features: Features) -> dict[str, tuple[float, float]]:
    """Per-task (min, max) items per source request, over the variants the features allow."""
    bounds: dict[str, tuple[float, float]] = {}
    for task in app.tasks:
        parents = app.parents(task.name)
        if not parents:
            bounds[task.name] = (1.0, 1.0)
            continue
        lo = hi = 0.0
        for e in parents:
            upstream = allowed_variants(app, e.src, features)
            fs = [e.factor_for(v) for v in upstream]
            lo += bounds[e.src][0] * min(fs)
            hi += bounds[e.src][1] * max(fs)
        bounds[task.name] = (lo, hi)
    return bounds


def allowed_variants(app: AppSpec, task: str, features: Features) -> list[str]:
    t = app.task(task)
    return [v.name for v in t.variants] if features.accuracy_scaling else [t.best.name]


def build_candidates(app: AppSpec, profiles: Profiles, gpu: GpuType, features: Features,
                     budgets_ms: dict[str, float] | None = None,
                     loads: tuple[float | None, ...] = (None,),
                     latency_model: str = "batches") -> dict[str, list[Candidate]]:
    """Runnable, non-dominated candidates per task within the SLO (or the static per-task budgets),
    each configuration at each of ``loads`` (None: no queueing term)."""
    out: dict[str, list[Candidate]] = {}
    items = items_per_request(app, features)
    bounds = demand_bounds(app, features)
    for task in app.tasks:
        limit = budgets_ms[task.name] if budgets_ms else app.latency_slo_ms
        cands: list[Candidate] = []
        for vname in allowed_variants(app, task.name, features):
            v = task.variant(vname)
            per_variant = []
            for p in profiles.for_variant(v.profile, gpu.name):
                if not features.spatial and (p.mig != gpu.slices or p.mps != 1):
                    continue
                if not _fits_memory(p, gpu):
                    continue
                for load in loads:
                    c = Candidate(task.name, vname, v.accuracy, p, gpu.shape(p.mig).mem_slices,
                                  items[task.name], batch_fill(p.batch, *bounds[task.name]), load,
                                  latency_model)
                    if c.wc_latency_ms <= limit + 1e-9:
                        per_variant.append(c)
            cands.extend(_pareto(per_variant))
        out[task.name] = cands
    return out


def fastest_latency(app: AppSpec, profiles: Profiles, gpu: GpuType, features: Features,
                    latency_model: str = "batches") -> dict[str, float]:
    """Each task's lowest worst-case latency over all the variants and segments the features allow."""
    fastest = {}
    items = items_per_request(app, features)
    for task in app.tasks:
        lat = [worst_case_ms(p.latency_ms, p.batch, items[task.name], latency_model)
               for vname in allowed_variants(app, task.name, features)
               for p in profiles.for_variant(task.variant(vname).profile, gpu.name)
               if (features.spatial or (p.mig == gpu.slices and p.mps == 1)) and _fits_memory(p, gpu)]
        fastest[task.name] = min(lat) if lat else math.inf
    return fastest


def check_latency_reachable(app: AppSpec, fastest: dict[str, float], latency_model: str = "batches") -> None:
    """Raise InfeasibleError when even the fastest configuration of every task misses the SLO."""
    for path in app.paths:
        total = sum(fastest[t] for t in path.tasks)
        if total > app.latency_slo_ms + 1e-9:
            parts = ", ".join(f"{t} {fastest[t]:.1f} ms" for t in path.tasks)
            raise InfeasibleError(
                f"latency: the fastest possible path {' -> '.join(path.tasks)} takes {total:.1f} ms "
                f"worst-case ({LATENCY_RULES[latency_model]}: {parts}) vs the SLO of {app.latency_slo_ms:g} ms",
                binding="latency")


def static_budgets(app: AppSpec, profiles: Profiles, gpu: GpuType, features: Features,
                   latency_model: str = "batches") -> tuple[
        dict[str, float], dict[str, float], dict[str, float]]:
    """Graph-unaware budgets (the paper's Appendix B): per task latency (ms), resource share and accuracy.

    Latency is split along each path in proportion to each task's need: the worst-case latency of its
    most accurate variant at batch 1 on the largest segment allowed; a task on several paths keeps its
    smallest share. Resources are split in proportion to the slices each task would need with that
    variant's most slice-efficient segment within its budget, at its worst-case demand. Accuracy: each
    task must reach ``slo ** (1 / L)`` on its own, L the number of tasks on the longest path through it.
    """
    need: dict[str, float] = {}
    items = items_per_request(app, features)
    for task in app.tasks:
        rows = [p for p in profiles.for_variant(task.best.profile, gpu.name)
                if features.spatial or (p.mig == gpu.slices and p.mps == 1)]
        largest = max(p.mig for p in rows) if rows else gpu.slices
        b1 = [p for p in rows if p.mig == largest and p.mps == 1] or rows
        need[task.name] = min(worst_case_ms(p.latency_ms, p.batch, items[task.name], latency_model) for p in b1) if b1 else math.inf
    latency: dict[str, float] = {t.name: math.inf for t in app.tasks}
    length: dict[str, int] = {t.name: 1 for t in app.tasks}
    for path in app.paths:
        total = sum(need[t] for t in path.tasks)
        for t in path.tasks:
            latency[t] = min(latency[t], app.latency_slo_ms * need[t] / total)
            length[t] = max(length[t], len(path.tasks))
    bounds = demand_bounds(app, features)
    cost: dict[str, float] = {}
    for task in app.tasks:
        rows = [p for p in profiles.for_variant(task.best.profile, gpu.name)
                if (features.spatial or (p.mig == gpu.slices and p.mps == 1))
                and worst_case_ms(p.latency_ms, p.batch, items[task.name], latency_model) <= latency[task.name]]
        per_slice = max((p.throughput_rps / p.mig for p in rows), default=0.0)
        cost[task.name] = bounds[task.name][1] / per_slice if per_slice > 0 else math.inf
    finite = sum(c for c in cost.values() if math.isfinite(c))
    share = {t: (c / finite if math.isfinite(c) and finite > 0 else 1.0) for t, c in cost.items()}
    accuracy = {t: app.accuracy_slo ** (1.0 / length[t]) for t in length}
    return latency, share, accuracy


def static_slice_caps(share: dict[str, float], slices: int, unit: int) -> dict[str, int]:
    """The static resource shares as whole segments: ``slices`` split in units of ``unit`` slices (a
    whole GPU without S, one slice with it) by largest remainder, at least one unit per task while
    units last. Shares below one unit would otherwise leave a task no segment at all."""
    units = slices // unit
    tasks = sorted(share, key=lambda t: -share[t])
    quota = {t: share[t] * units for t in tasks}
    caps = {t: (max(1, math.floor(quota[t])) if units >= len(tasks) else 0) for t in tasks}
    if units < len(tasks):
        for t in tasks[:units]:
            caps[t] = 1
    while sum(caps.values()) > units:  # the minimum of one unit each overdrew: take from the largest
        t = max((t for t in tasks if caps[t] > 1), key=lambda t: caps[t] - quota[t])
        caps[t] -= 1
    for t in sorted(tasks, key=lambda t: caps[t] - quota[t])[:units - sum(caps.values())]:
        caps[t] += 1
    return {t: n * unit for t, n in caps.items()}
