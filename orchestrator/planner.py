"""Planning: candidates -> MILP (or LP relaxation + rounding) -> placement -> exact check -> Plan."""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

from .appspec import AppSpec
from .candidates import (QUEUE_LOADS, Candidate, build_candidates, check_latency_reachable, fastest_latency,
                         static_budgets)
from .checker import metrics, task_demand, violations
from .errors import InfeasibleError, InputError
from .features import Features
from .formulation import Limits, Solution, SolveTimeout, Weights, solve
from .gpus import GpuType
from .placement import Placement, place
from .plan import Entry, Plan, segment_label
from .profiles import Profiles, check_coverage

METHODS = ("auto", "milp", "relax")
REFERENCE_SLICES = 28
REFERENCE_BETA = 0.035


@dataclass(frozen=True)
class PlanOptions:
    """``beta`` is per slice; by default the paper's 0.035 per slice of a 28-slice testbed, scaled
    to the cluster (``0.98 / slices``) when ``gpus`` is given. ``time_limit`` bounds the MILP.
    ``latency_reserve``: the share of the latency SLO a plan leaves unused, its paths' worst cases
    within the rest; a plan the jigsaw runtime serves leaves its stages' admission reserve
    (``Controller`` sets it to ``Policy.admission_reserve``), which they hold back from every request.
    ``queueing``: plan each instance at a load of ``candidates.QUEUE_LOADS`` with the p95 wait of a
    queue that busy in its worst case (``docs/planning.md``); off, the paper's 2 x p95."""

    features: Features = Features()
    gpus: int | None = None
    alpha: float = 1.0
    beta: float | None = None
    method: str = "auto"
    time_limit: float = 2.0
    latency_reserve: float = 0.0
    queueing: bool = False

    def weights(self, gpu: GpuType) -> Weights:
        if self.beta is not None:
            return Weights(self.alpha, self.beta)
        if self.gpus:
            return Weights(self.alpha, REFERENCE_BETA * REFERENCE_SLICES / (self.gpus * gpu.slices))
        return Weights(self.alpha, REFERENCE_BETA)


@dataclass
class _Setup:
    cands: dict[str, list[Candidate]]
    limits: Limits
    fallback_budgets: dict[str, float]


def _setup(app: AppSpec, profiles: Profiles, gpu: GpuType, opts: PlanOptions) -> _Setup:
    feats = opts.features
    check_latency_reachable(app, fastest_latency(app, profiles, gpu, feats))
    budgets, shares, task_acc = static_budgets(app, profiles, gpu, feats)
    cands = build_candidates(app, profiles, gpu, feats, None if feats.task_graph else budgets,
                             QUEUE_LOADS if opts.queueing else (None,))
    for t, cs in cands.items():
        if not cs:
            where = f"its static budget of {budgets[t]:.1f} ms" if not feats.task_graph else \
                f"the SLO of {app.latency_slo_ms:g} ms"
            raise InfeasibleError(f"latency: task {t} has no configuration whose worst-case latency "
                                  f"(p95 x (1 + batches per request)) fits {where}", binding="latency")
    limits = Limits(
        slices=opts.gpus * gpu.slices if opts.gpus else None,
        mem_slices=opts.gpus * gpu.mem_slices if opts.gpus else None,
        mig_gpus=opts.gpus if opts.gpus and gpu.mig else None,
        task_slice_share=None if feats.task_graph else shares,
        task_accuracy=None if feats.task_graph else task_acc)
    return _Setup(cands, limits, budgets)


def _absolute_routing(app: AppSpec, sol: Solution, demand: float) -> dict[str, dict[str, float]]:
    """Route each task's actual arrivals in the solution's shares (topological order)."""
    routing: dict[str, dict[str, float]] = {}
    for t in app.tasks:
        arrived = task_demand(app, routing, demand)[t.name]
        per_unit = sol.routing[t.name]
        total = sum(per_unit.values())
        routing[t.name] = {v: (arrived * r / total if total > 0 else 0.0) for v, r in per_unit.items()
                           if r > 1e-9 * max(total, 1.0)}
    return routing


def _entries(sol: Solution, routing: dict[str, dict[str, float]]) -> list[Entry]:
    counts = {c: int(n) for c, n in sol.counts.items() if n >= 0.5}
    cap: dict[tuple[str, str], float] = {}
    for c, n in counts.items():
        cap[(c.task, c.variant)] = cap.get((c.task, c.variant), 0.0) + n * c.throughput
    merged: dict[tuple, tuple[Candidate, int, float]] = {}  # one configuration at several loads: one entry
    for c, n in counts.items():
        rate = routing.get(c.task, {}).get(c.variant, 0.0)
        total = sum(routing.get(c.task, {}).values())
        share = (rate / total) * (n * c.throughput / cap[(c.task, c.variant)]) if total > 0 else 0.0
        _, m, s = merged.get(c.key, (c, 0, 0.0))
        merged[c.key] = (c, m + n, s + share)
    return [Entry(c.task, c.variant, c.point.mig, c.point.mps, c.point.batch, n, c.point.latency_ms, c.served, share,
                  c.items) for c, n, share in merged.values()]


def _score(app: AppSpec, sol: Solution, demand: float, w: Weights) -> float:
    routing = _absolute_routing(app, sol, demand)
    m = metrics(app, _entries(sol, routing), routing, demand)
    return w.alpha * m.accuracy - w.beta * m.slices


def _round_up(app: AppSpec, lp: Solution, demand: float) -> Solution:
    """Ceil every count, top up any variant still short (most slice-efficient candidate), then drop
    instances (largest segments first) while capacity still covers the routed items."""
    counts = {c: float(math.ceil(n - 1e-6)) for c, n in lp.counts.items()}
    for t in app.tasks:
        for v, rate in lp.routing[t.name].items():
            own = sorted((c for c in counts if c.task == t.name and c.variant == v),
                         key=lambda c: (-c.slices, c.throughput))
            need = demand * rate
            have = sum(counts[c] * c.throughput for c in own)
            if own and have < need:
                best = max(own, key=lambda c: (c.throughput / c.slices, lp.counts[c]))
                extra = math.ceil((need - have) / best.throughput)
                counts[best] += extra
                have += extra * best.throughput
            for c in own:
                while counts[c] > 0 and have - c.throughput >= need * (1 + 1e-9):
                    counts[c] -= 1
                    have -= c.throughput
    return Solution(counts, lp.routing, lp.status, lp.seconds, relaxed=False)


def _within_limits(sol: Solution, limits: Limits) -> bool:
    """The rounded counts respect the slice, memory-slice and per-task share limits."""
    if limits.slices is None:
        return True
    used = sum(c.slices * n for c, n in sol.counts.items())
    mem = sum(c.mem_slices * n for c, n in sol.counts.items())
    if used > limits.slices or (limits.mem_slices is not None and mem > limits.mem_slices):
        return False
    for task, share in (limits.task_slice_share or {}).items():
        if sum(c.slices * n for c, n in sol.counts.items() if c.task == task) > share * limits.slices + 1e-9:
            return False
    return True


def _relax_and_round(app: AppSpec, setup: _Setup, demand: float, feats: Features, w: Weights,
                     limits: Limits) -> Solution | None:
    """LP relaxation; fix each task's latency budget from the LP's choices (scaled onto the SLO,
    else the static budgets); re-solve the LP within those budgets; round up and repair."""
    start = time.perf_counter()
    lp = solve(app, setup.cands, demand, feats, w, limits, relaxed=True)
    if lp is None:
        return None
    if feats.task_graph:
        used = {t: max((c.wc_latency_ms for c, n in lp.counts.items() if c.task == t and n > 1e-6),
                       default=min(c.wc_latency_ms for c in cs)) for t, cs in setup.cands.items()}
        worst = max(sum(used[t] for t in p.tasks) for p in app.paths)
        scale = min(1.0, app.latency_slo_ms / worst) if worst > 0 else 1.0
        for budgets in ({t: b * scale for t, b in used.items()}, setup.fallback_budgets):
            cands = {t: [c for c in cs if c.wc_latency_ms <= budgets[t] + 1e-9] for t, cs in setup.cands.items()}
            if all(cands.values()):
                lp2 = solve(app, cands, demand, feats, w, limits, relaxed=True)
                if lp2 is not None:
                    lp = lp2
                    break
        else:
            return None
    sol = _round_up(app, lp, demand)
    if not _within_limits(sol, limits):
        return None
    sol.seconds = time.perf_counter() - start
    return sol


def _solve(app: AppSpec, setup: _Setup, demand: float, opts: PlanOptions, w: Weights,
           limits: Limits) -> tuple[Solution | None, str]:
    feats = opts.features
    if opts.method == "relax":
        return _relax_and_round(app, setup, demand, feats, w, limits), "relax+round"
    try:
        sol = solve(app, setup.cands, demand, feats, w, limits, time_limit=opts.time_limit)
    except SolveTimeout as exc:
        if opts.method == "milp":
            raise _timeout(exc) from None
        sol = None
    if opts.method == "milp" or (sol is not None and sol.status == "optimal"):
        return sol, "milp"
    rounded = _relax_and_round(app, setup, demand, feats, w, limits)
    if sol is None or (rounded is not None and _score(app, rounded, demand, w) > _score(app, sol, demand, w)):
        return rounded, "relax+round"
    return sol, "milp (time limit)"


def _timeout(exc: SolveTimeout) -> InfeasibleError:
    return InfeasibleError(f"time limit: {exc}; whether a plan exists is unknown: raise --time-limit "
                           f"or use --method relax", binding="time_limit")


def _diagnose(app: AppSpec, setup: _Setup, demand: float, opts: PlanOptions, gpu: GpuType) -> InfeasibleError:
    """Find the binding constraint by dropping constraints one at a time."""
    try:
        return _binding(app, setup, demand, opts, gpu)
    except SolveTimeout as exc:
        return _timeout(exc)


def _binding(app: AppSpec, setup: _Setup, demand: float, opts: PlanOptions, gpu: GpuType) -> InfeasibleError:
    feats, cap = opts.features, setup.limits.slices
    least = Weights(0.0, 1.0)
    no_mem = dataclasses.replace(setup.limits, mem_slices=None, mig_gpus=None)
    if cap is not None and gpu.mig and solve(app, setup.cands, demand, feats, least, no_mem,
                                             time_limit=opts.time_limit) is not None:
        return InfeasibleError(
            f"placement: at {demand:g} req/s the segments that meet the SLOs fit {cap} slices but not the MIG "
            f"layout of {opts.gpus} {gpu.name} GPU(s) ({setup.limits.mem_slices} memory slices)", binding="placement")
    free = dataclasses.replace(no_mem, slices=None, task_slice_share=None)
    sol = solve(app, setup.cands, demand, feats, least, free, time_limit=opts.time_limit)
    if sol is not None:
        need = int(sum(c.slices * n for c, n in sol.counts.items()))
        extra = "" if feats.task_graph else " with static per-task resource shares"
        return InfeasibleError(
            f"slices: meeting the SLOs at {demand:g} req/s needs at least {need} slices "
            f"(at least {math.ceil(need / gpu.slices)} {gpu.name} GPUs); {cap} slices ({opts.gpus} GPU(s)) "
            f"are available{extra}", binding="slices")
    loose = dataclasses.replace(app, accuracy_slo=1e-9)
    if solve(loose, setup.cands, demand, feats, least, free, time_limit=opts.time_limit) is not None:
        return InfeasibleError(
            f"accuracy: no plan reaches {app.accuracy_slo:g} of the maximum pipeline accuracy within the "
            f"latency SLO of {app.latency_slo_ms:g} ms (the variants fast enough are too inaccurate)",
            binding="accuracy")
    return InfeasibleError(f"latency: no combination of configurations meets the SLO of "
                           f"{app.latency_slo_ms:g} ms on every path", binding="latency")


def make_plan(app: AppSpec, profiles: Profiles, gpu: GpuType, demand: float,
              opts: PlanOptions = PlanOptions()) -> Plan:
    """The best plan for ``demand`` req/s; InfeasibleError names the binding constraint."""
    if not (demand > 0 and math.isfinite(demand)):
        raise InputError(f"--demand: expected a positive number of requests per second, got {demand}")
    if opts.method not in METHODS:
        raise InputError(f"--method: {opts.method!r} is not one of {', '.join(METHODS)}")
    if opts.gpus is not None and opts.gpus < 1:
        raise InputError(f"--gpus: expected at least 1, got {opts.gpus}")
    if not 0 <= opts.latency_reserve < 1:
        raise InputError(f"--latency-reserve: expected a share of the SLO in [0, 1), got {opts.latency_reserve:g}")
    check_coverage(app, profiles, gpu)
    served = app
    # the paths' worst cases within what the reserve leaves; the plan records the app's own SLO
    app = dataclasses.replace(app, latency_slo_ms=app.latency_slo_ms * (1 - opts.latency_reserve))
    setup = _setup(app, profiles, gpu, opts)
    w = opts.weights(gpu)
    limits = setup.limits
    spent = 0.0
    for _ in range(4):
        sol, method = _solve(app, setup, demand, opts, w, limits)
        if sol is None:
            raise _diagnose(app, setup, demand, opts, gpu)
        spent += sol.seconds
        routing = _absolute_routing(app, sol, demand)
        entries = _entries(sol, routing)
        placement = place([(segment_label(e, i), e.mig) for e in entries for i in range(e.count)], gpu)
        if opts.gpus is None or placement.gpus_used <= opts.gpus:
            return _finish(served, gpu, demand, opts, entries, routing, placement, spent, method, sol.status)
        over = (placement.gpus_used - opts.gpus) * gpu.slices
        limits = dataclasses.replace(limits, slices=max(0, (limits.slices or 0) - max(1, over // 2)))
    raise InfeasibleError(f"placement: the chosen segments need {placement.gpus_used} {gpu.name} GPUs under the "
                          f"MIG placement rules, more than the {opts.gpus} available", binding="placement")


def _finish(app: AppSpec, gpu: GpuType, demand: float, opts: PlanOptions, entries: list[Entry],
            routing: dict[str, dict[str, float]], placement: Placement, seconds: float, method: str,
            status: str) -> Plan:
    m = metrics(app, entries, routing, demand)
    plan = Plan(app=app.name, gpu_type=gpu.name, features=opts.features.label, demand_rps=demand,
                latency_slo_ms=app.latency_slo_ms, accuracy_slo=app.accuracy_slo, entries=entries,
                routing=routing, task_demand=m.task_demand, task_accuracy=m.task_accuracy,
                accuracy=m.accuracy, slices=m.slices, gpus=placement.gpus_used,
                paths=[{"tasks": list(p.tasks), "weight": p.weight, "latency_ms": m.path_latency[p.tasks],
                        "accuracy": m.path_accuracy[p.tasks]} for p in app.paths],
                placement=placement.to_json(), solve_seconds=seconds,
                solver={"method": method, "status": status, "time_limit_s": opts.time_limit,
                        **({"latency_reserve": opts.latency_reserve} if opts.latency_reserve else {}),
                        **({"queue_loads": list(QUEUE_LOADS)} if opts.queueing else {})},
                app_spec=dict(app.doc))
    planned_within = dataclasses.replace(app, latency_slo_ms=app.latency_slo_ms * (1 - opts.latency_reserve))
    broken = violations(planned_within, plan, opts.gpus * gpu.slices if opts.gpus else None)
    if broken:
        raise RuntimeError("internal error: the solver's plan fails the exact check: " + "; ".join(broken))
    return plan
