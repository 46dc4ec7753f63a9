"""Maximum serviceable demand: the largest request rate for which a plan fits the cluster."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

from ..spec.appspec import AppSpec
from .candidates import allowed_variants, build_candidates, demand_bounds
from ..errors import InfeasibleError
from ..spec.gpus import GpuType
from .planner import ROUND_FIRST, Deadline, PlanOptions, make_plan
from .plan import Plan
from ..spec.profiles import Profiles

SMALL_GPUS = 8  # up to this many GPUs, a probe that rounding fails tries the MILP (few instances: it settles)
GROWTH = 8.0  # the most one step multiplies the demand by before any probe has failed


@dataclass(frozen=True)
class Capacity:
    max_demand_rps: float
    plan: Plan | None
    probes: int
    probe_seconds: list[float]
    seconds: float
    upper_rps: float  # the least demand found not to fit (or the analytical bound): the answer is in [max, upper)
    note: str = ""


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
               progress: Callable[[str], None] | None = None, deadline: Deadline | None = None) -> Capacity:
    """Search the demand (0 when nothing fits) within ``opts.time_limit`` seconds for the whole search, from
    now or from ``deadline``'s start (a caller that began earlier, e.g. reading its files).

    Each probe asks for the fewest slices that meet both SLOs: a diagnosed probe at 1/64 of the analytical
    bound (a latency or accuracy SLO that no demand meets gives 0 at once), then steps to where the last
    plan's slices, scaled with the demand, would fill the cluster (``aim``). With ``method`` auto a probe
    tries the LP relaxation with rounding and, where it fails on a model small enough for the MILP to settle
    (``planner.ROUND_FIRST`` candidates, or ``SMALL_GPUS`` GPUs), the MILP within a share of the time left; ``relax`` and ``milp``
    use theirs alone. A probe the time limit cuts counts as not fitting, and the answer says so."""
    start = time.perf_counter()
    deadline = deadline or Deadline(opts.time_limit)
    times: list[float] = []
    best: Plan | None = None
    note = ""
    small = (opts.gpus or 0) <= SMALL_GPUS or candidate_count(app, profiles, gpu, opts) <= ROUND_FIRST

    def probe(demand: float, method: str, diagnose: bool = False) -> bool:
        nonlocal best, note
        began = time.perf_counter()
        limit = deadline.left() if method == "relax" else min(deadline.left(), max(2.0, opts.time_limit / 6))
        try:
            plan = make_plan(app, profiles, gpu, demand, replace(opts, alpha=0.0, beta=1.0, diagnose=diagnose,
                                                                 method=method, time_limit=max(limit, 1e-3)))
            best, verdict, fits = plan, f"fits ({plan.slices} slices)", True
        except InfeasibleError as exc:
            verdict, fits = f"does not fit ({exc.binding})", False
            if exc.binding in ("latency", "accuracy"):
                raise
            if exc.binding == "time_limit":
                note = f"the time limit cut a probe at {demand:.1f} req/s (counted as not fitting)"
        times.append(time.perf_counter() - began)
        if progress:
            progress(f"  {opts.features.label}: {demand:10.1f} req/s {verdict} [{method}]")
        return fits

    upper = _upper_bound(app, profiles, gpu, opts)
    floor = upper * 1e-6  # below this, nothing fits
    total = (opts.gpus or 0) * gpu.slices

    def fast(demand: float, diagnose: bool = False) -> bool:
        """``auto``: rounding first; where it fails (rounding fixes its latency budgets by a heuristic and can
        miss plans the MILP finds), the MILP before calling the demand too high, on models where it settles
        in the time. ``relax`` or ``milp``: that alone."""
        if opts.method != "auto":
            return probe(demand, opts.method, diagnose)
        return probe(demand, "relax", diagnose) or (small and probe(demand, "auto"))

    def aim(lo: float, hi: float | None) -> float:
        """Where the plan at ``lo``, its slices scaled with the demand, would fill the cluster: at least a
        tolerance above ``lo``, at most ``GROWTH`` times it, and inside the bracket (else a quarter of the
        bracket below ``hi``: a failed aim is most often just above the capacity)."""
        scaled = lo * total / best.slices if best is not None and best.slices > 0 else 2 * lo
        guess = min(max(scaled, lo * (1 + rel_tol)), GROWTH * lo)
        if hi is None:
            return guess
        return guess if guess < hi * (1 - rel_tol / 2) else hi - (hi - lo) / 4

    lo, hi = 0.0, None
    try:
        first = upper / 64
        if fast(first, diagnose=True):
            lo = first
        else:
            hi = first
        while deadline.left() > 0 and (hi is None or (hi - lo > rel_tol * hi and hi > floor)):
            mid = aim(lo, hi) if lo > 0 else hi / 4
            if hi is None and mid >= upper:
                hi = upper
                continue
            if fast(mid):
                lo = mid
            else:
                hi = mid
    except InfeasibleError:
        lo, hi = 0.0, 0.0
    hi = upper if hi is None else hi
    if hi - lo > rel_tol * hi and hi > floor and not note:
        note = f"the time limit of {opts.time_limit:g} s ended the search"
    return Capacity(lo, best if lo > 0 else None, len(times), times, time.perf_counter() - start, hi, note)


def candidate_count(app: AppSpec, profiles: Profiles, gpu: GpuType, opts: PlanOptions) -> int:
    """How many candidates a plan of ``app`` weighs (every task's, within the SLO)."""
    cands = build_candidates(app, profiles, gpu, opts.features, None, (None,), opts.latency_model)
    return sum(len(cs) for cs in cands.values())
