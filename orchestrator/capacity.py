"""Maximum serviceable demand: the largest request rate for which a plan fits the cluster."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

from .appspec import AppSpec
from .candidates import allowed_variants, demand_bounds
from .errors import InfeasibleError
from .gpus import GpuType
from .planner import PlanOptions, make_plan
from .plan import Plan
from .profiles import Profiles


@dataclass(frozen=True)
class Capacity:
    max_demand_rps: float
    plan: Plan | None
    probes: int
    probe_seconds: list[float]
    seconds: float


def _upper_bound(app: AppSpec, profiles: Profiles, gpu: GpuType, opts: PlanOptions) -> float:
    """No task can serve more than all slices at its best throughput per slice allows."""
    assert opts.gpus is not None
    bounds = demand_bounds(app, opts.features)
    best = float("inf")
    for t in app.tasks:
        per_slice = max((p.throughput_rps / p.mig for v in allowed_variants(app, t.name, opts.features)
                         for p in profiles.for_variant(t.variant(v).profile, gpu.name)), default=0.0)
        best = min(best, opts.gpus * gpu.slices * per_slice / bounds[t.name][0])
    return best


def max_demand(app: AppSpec, profiles: Profiles, gpu: GpuType, opts: PlanOptions, rel_tol: float = 0.005,
               progress: Callable[[str], None] | None = None) -> Capacity:
    """Bisect on demand (0 when nothing fits); each probe asks for the fewest slices that meet both SLOs."""
    start = time.perf_counter()
    probe_opts = replace(opts, alpha=0.0, beta=1.0)
    lo, hi = 0.0, _upper_bound(app, profiles, gpu, opts)
    best: Plan | None = None
    times: list[float] = []
    floor = hi * 1e-6
    while hi - lo > rel_tol * hi and hi > floor:
        mid = (lo + hi) / 2
        began = time.perf_counter()
        try:
            plan = make_plan(app, profiles, gpu, mid, probe_opts)
            lo, best = mid, plan
            verdict = f"fits ({plan.slices} slices)"
        except InfeasibleError as exc:
            hi = mid
            verdict = f"does not fit ({exc.binding})"
            if exc.binding in ("latency", "accuracy"):
                lo = hi = 0.0
        times.append(time.perf_counter() - began)
        if progress:
            progress(f"  {opts.features.label}: {mid:10.1f} req/s {verdict}")
    return Capacity(lo, best, len(times), times, time.perf_counter() - start)
