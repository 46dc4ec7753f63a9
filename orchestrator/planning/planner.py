"""Planning: candidates -> MILP (or LP relaxation + rounding) -> placement -> exact check -> Plan."""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..spec.appspec import AppSpec
from .candidates import (LATENCY_MODELS, LATENCY_RULES, QUEUE_LOADS, Candidate, build_candidates,
                         check_latency_reachable, fastest_latency, static_budgets, static_slice_caps)
from .checker import metrics, task_demand, violations
from ..errors import InfeasibleError, InputError
from .features import Features
from .formulation import Limits, Lin, Model, Solution, SolveTimeout, Weights, solve
from ..spec.gpus import GpuType
from .placement import Placement, patterns, place
from .plan import Entry, Plan, segment_label
from ..spec.profiles import Profiles, check_coverage

METHODS = ("auto", "milp", "relax")
REFERENCE_SLICES = 28
REFERENCE_BETA = 0.035
ROUND_FIRST = 120  # candidates above which `auto` rounds the relaxation before the MILP (see _solve)
RESTRICTED_SECONDS = 1.0  # the most the rounding's MILP over a few candidates may take
TANGENT_ROUNDS = 4  # the most times a relaxation moves its tangents to its own solution
MARGIN, MARGIN_MAX_S = 0.12, 0.3  # of a call's time limit, kept for its last steps (Deadline)
MIN_SOLVE_SECONDS = 0.02  # below this much time left, a MILP is not started
PRICE_ROUNDS = 2  # the most times the latency budgets are re-priced at a new routing
NEXT_WAYS = 8  # where no priced budgets have an LP, the most next-cheapest ones tried


@dataclass(frozen=True)
class PlanOptions:
    """``beta`` is per slice; by default the paper's 0.035 per slice of a 28-slice testbed, scaled
    to the cluster (``0.98 / slices``) when ``gpus`` is given. ``time_limit`` bounds the whole call's
    wall time (every solve, the fallback and the diagnosis of an infeasible demand share it).
    ``latency_reserve``: the share of the latency SLO a plan leaves unused, its paths' worst cases
    within the rest; a plan the jigsaw runtime serves leaves its stages' admission reserve
    (``Controller`` sets it to ``Policy.admission_reserve``), which they hold back from every request.
    ``queueing``: plan each instance at a load of ``candidates.QUEUE_LOADS`` with the p95 wait of a
    queue that busy in its worst case (``docs/planning.md``); off, no queueing wait.
    ``latency_model``: ``batches`` (p95 x (1 + batches per request), what the runtime needs under
    fan-out) or ``paper`` (2 x p95)."""

    features: Features = Features()
    gpus: int | None = None
    alpha: float = 1.0
    beta: float | None = None
    method: str = "auto"
    time_limit: float = 2.0
    latency_reserve: float = 0.0
    queueing: bool = False
    latency_model: str = "batches"
    diagnose: bool = True  # on no plan, find the binding constraint (more solves); capacity probes skip it

    def weights(self, gpu: GpuType) -> Weights:
        if self.beta is not None:
            return Weights(self.alpha, self.beta)
        if self.gpus:
            return Weights(self.alpha, REFERENCE_BETA * REFERENCE_SLICES / (self.gpus * gpu.slices))
        return Weights(self.alpha, REFERENCE_BETA)


class Deadline:
    """The wall-clock end of one planning call, shared by all of its solves. ``left`` keeps back a margin
    (``MARGIN`` of the limit, at most ``MARGIN_MAX_S``) for what follows the last solve (placement, the
    exact check) and for HiGHS running a little past its own limit, so that the call ends within it.
    ``start`` (``time.monotonic()``, default now): when the call began; the CLI starts the clock at a
    command's entry, so that reading and checking its files count against the limit."""

    def __init__(self, seconds: float, start: float | None = None) -> None:
        self.seconds = seconds
        self.start = time.monotonic() if start is None else start
        self.end = self.start + seconds - min(MARGIN * seconds, MARGIN_MAX_S)

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self) -> None:
        if self.left() <= 0:
            raise SolveTimeout(f"the time limit of {self.seconds:g} s passed")


@dataclass
class _Setup:
    cands: dict[str, list[Candidate]]
    limits: Limits
    fallback_budgets: dict[str, float]


def _setup(app: AppSpec, profiles: Profiles, gpu: GpuType, opts: PlanOptions) -> _Setup:
    feats, model = opts.features, opts.latency_model
    check_latency_reachable(app, fastest_latency(app, profiles, gpu, feats, model), model)
    budgets, shares, task_acc = static_budgets(app, profiles, gpu, feats, model)
    cands = build_candidates(app, profiles, gpu, feats, None if feats.task_graph else budgets,
                             QUEUE_LOADS if opts.queueing else (None,), model)
    for t, cs in cands.items():
        if not cs:
            where = f"its static budget of {budgets[t]:.1f} ms" if not feats.task_graph else \
                f"the SLO of {app.latency_slo_ms:g} ms"
            raise InfeasibleError(f"latency: task {t} has no configuration whose worst-case latency "
                                  f"({LATENCY_RULES[model]}) fits {where}", binding="latency")
    slices = opts.gpus * gpu.slices if opts.gpus else None
    caps = None
    if not feats.task_graph and slices is not None:
        caps = static_slice_caps(shares, slices, 1 if feats.spatial else gpu.slices)
        short = [t for t, c in caps.items() if c == 0]
        if short:
            raise InfeasibleError(
                f"slices: without T each task gets a static share of whole {'slices' if feats.spatial else 'GPUs'}; "
                f"{len(app.tasks)} tasks need at least {len(app.tasks)} but {opts.gpus} GPU(s) give "
                f"{slices // (1 if feats.spatial else gpu.slices)} (no share for {', '.join(sorted(short))})",
                binding="slices")
    limits = Limits(
        slices=slices,
        mem_slices=opts.gpus * gpu.mem_slices if opts.gpus else None,
        mig_gpus=opts.gpus if opts.gpus and gpu.mig else None,
        patterns=patterns(gpu) if opts.gpus and gpu.mig else None,
        task_slices=caps,
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


def _trim(counts: dict[Candidate, int], routing: dict[str, dict[str, float]]) -> dict[Candidate, int]:
    """Drop every instance the routing does not need (largest segments, then the slowest, first): a
    plan buys no capacity its routing leaves unused. An optimal solve leaves none; a time-limited one
    or a rounding may."""
    out = dict(counts)
    for (task, variant) in {(c.task, c.variant) for c in counts}:
        need = routing.get(task, {}).get(variant, 0.0)
        own = sorted((c for c in out if c.task == task and c.variant == variant and out[c] > 0),
                     key=lambda c: (-c.slices, -c.wc_latency_ms, c.throughput))
        have = sum(out[c] * c.throughput for c in own)
        for c in own:
            while out[c] > 0 and have - c.throughput >= need * (1 + 1e-9):
                out[c] -= 1
                have -= c.throughput
    return {c: n for c, n in out.items() if n > 0}


def _entries(sol: Solution, routing: dict[str, dict[str, float]]) -> list[Entry]:
    counts = _trim({c: int(round(n)) for c, n in sol.counts.items() if n >= 0.5}, routing)
    cap: dict[tuple[str, str], float] = {}
    for c, n in counts.items():
        cap[(c.task, c.variant)] = cap.get((c.task, c.variant), 0.0) + n * c.throughput
    merged: dict[tuple, tuple[Candidate, int, float, float]] = {}  # one configuration at several loads: one entry
    for c, n in counts.items():
        rate = routing.get(c.task, {}).get(c.variant, 0.0)
        total = sum(routing.get(c.task, {}).values())
        part = n * c.throughput / cap[(c.task, c.variant)]  # routed to it in proportion to its capacity
        share = (rate / total) * part if total > 0 else 0.0
        _, m, s, served = merged.get(c.key, (c, 0, 0.0, 0.0))
        merged[c.key] = (c, m + n, s + share, served + rate * part)
    return [Entry(c.task, c.variant, c.point.mig, c.point.mps, c.point.batch, n, c.point.latency_ms, c.served, share,
                  c.items, served / (n * c.served), c.latency_model) for c, n, share, served in merged.values()]


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
    """The rounded counts respect the slice, memory-slice and per-task limits."""
    if limits.slices is None:
        return True
    used = sum(c.slices * n for c, n in sol.counts.items())
    mem = sum(c.mem_slices * n for c, n in sol.counts.items())
    if used > limits.slices or (limits.mem_slices is not None and mem > limits.mem_slices):
        return False
    for task, cap in (limits.task_slices or {}).items():
        if sum(c.slices * n for c, n in sol.counts.items() if c.task == task) > cap:
            return False
    return True


def _relax_and_round(app: AppSpec, setup: _Setup, demand: float, feats: Features, w: Weights,
                     limits: Limits, deadline: Deadline) -> Solution | None:
    """LP relaxation; fix each task's latency budget (``_budget_ways``), the LP within each way's budgets
    ranked by its objective; then, best first, the MILP over a few candidates within them (what the LP
    used, and per variant the most slice-efficient and the smallest: no latency binaries are needed), or,
    failing that in its time, the LP rounded up and repaired. The first way that gives a plan wins."""
    start = time.perf_counter()
    lp = _relaxation(app, setup.cands, demand, feats, w, limits, deadline)
    if lp is None:
        return None
    ways = sorted(_budget_ways(app, setup, lp, demand, feats, w, limits, deadline), key=lambda way: -way[1].objective)
    best: Solution | None = None
    for within, fixed in ways:
        sol = _restricted_milp(app, within, fixed, demand, feats, w, limits, deadline) \
            or _round_up(app, fixed, demand)
        if _within_limits(sol, limits):
            best = sol
            break
    if best is None:
        return None
    best.seconds = time.perf_counter() - start
    # a restricted MILP's status and gap say nothing of the whole problem's optimum: the plan is feasible, and
    # how far it may be from the optimum is the MILP's bound where one ran (``_solve``), else unknown
    best.status, best.gap = "feasible", None
    best.relaxed_slices = lp.relaxed_slices
    return best


def _relaxation(app: AppSpec, cands: dict[str, list[Candidate]], demand: float, feats: Features, w: Weights,
                limits: Limits, deadline: Deadline, at: dict[str, float] | None = None) -> Solution | None:
    """The LP relaxation with its convex accuracy terms below tangents, first at ``at`` (else where the true
    relaxation, chords in their place, lands: its slices are the plan's ``relaxed_slices``), moved to its
    own solution while that gains (each step keeps the last solution feasible): a tangent far from where
    the routing lands understates its accuracy, and the LP then buys accuracy it does not need."""
    outer = None
    if at is None:
        outer = solve(app, cands, demand, feats, w, limits, relaxed=True, outer=True, time_limit=deadline.left())
        if outer is None:
            return None
        at = outer.points
    sol = solve(app, cands, demand, feats, w, limits, relaxed=True, time_limit=deadline.left(), at=at)
    if sol is None and outer is not None:
        sol = solve(app, cands, demand, feats, w, limits, relaxed=True, time_limit=deadline.left())
    for _ in range(TANGENT_ROUNDS):
        if sol is None or not sol.points:
            break
        moved = solve(app, cands, demand, feats, w, limits, relaxed=True, time_limit=deadline.left(), at=sol.points)
        if moved is None or moved.objective <= sol.objective + 1e-6 * max(1.0, abs(sol.objective)):
            break
        sol = moved
    if sol is not None and outer is not None:
        sol.relaxed_slices = sum(c.slices * n for c, n in outer.counts.items())
    return sol


def _within(cands: dict[str, list[Candidate]], budgets: dict[str, float]) -> dict[str, list[Candidate]]:
    return {t: [c for c in cs if c.wc_latency_ms <= budgets[t] + 1e-9] for t, cs in cands.items()}


def _budget_ways(app: AppSpec, setup: _Setup, lp: Solution, demand: float, feats: Features, w: Weights,
                 limits: Limits, deadline: Deadline) -> list[tuple[dict[str, list[Candidate]], Solution]]:
    """(candidates within fixed latency budgets, the LP over them): the budgets priced in slices and in
    shares of a GPU (where memory slices bind: a 3g takes half a GPU's), each re-priced at the routing of
    the LP within them while that changes them; where none has an LP, the next cheapest (``NEXT_WAYS``);
    the static budgets where none of these has an LP."""
    if not feats.task_graph:
        return [(setup.cands, lp)]
    tried: list[dict[str, float]] = []
    ways = []
    for price in (_slices, _gpu_share):
        fixed = lp
        for _ in range(PRICE_ROUNDS):
            budgets = _priced_budgets(app, setup.cands, fixed.routing, demand, price, deadline)
            if budgets is None or budgets in tried:
                break
            tried.append(budgets)
            within = _within(setup.cands, budgets)
            fixed = _relaxation(app, within, demand, feats, w, limits, deadline, lp.points)
            if fixed is None:
                break
            ways.append((within, fixed))
    for _ in range(NEXT_WAYS if not ways else 0):
        # near the capacity the cheapest budgets at the LP's routing may have no LP at all (tagging at 1.5x
        # its SLO: scene 14 ms had none where the MILP's plans give it 22): the next cheapest not within
        # any of those, until one has
        budgets = _priced_budgets(app, setup.cands, lp.routing, demand, _gpu_share, deadline, tried)
        if budgets is None:
            break
        budgets = _lifted(app, setup.cands, budgets)
        tried.append(budgets)
        within = _within(setup.cands, budgets)
        fixed = _relaxation(app, within, demand, feats, w, limits, deadline, lp.points)
        if fixed is not None:
            ways.append((within, fixed))
            break
    within = _within(setup.cands, setup.fallback_budgets)
    if not ways and all(within.values()):
        fixed = _relaxation(app, within, demand, feats, w, limits, deadline, lp.points)
        ways += [(within, fixed)] if fixed is not None else []
    return ways


def _lifted(app: AppSpec, cands: dict[str, list[Candidate]], budgets: dict[str, float]) -> dict[str, float]:
    """Each task's budget raised (in the app's order) to its largest level that keeps every path through it
    within the SLO: a larger budget only adds candidates, and the pricing leaves ties between levels its
    routing does not use."""
    out = dict(budgets)
    for t in app.tasks:
        paths = [p for p in app.paths if t.name in p.tasks]
        room = min(app.latency_slo_ms - sum(out[u] for u in p.tasks if u != t.name) for p in paths)
        out[t.name] = max([c.wc_latency_ms for c in cands[t.name] if c.wc_latency_ms <= room + 1e-9],
                          default=out[t.name])
    return out


def _slices(c: Candidate) -> float:
    return float(c.slices)


def _gpu_share(c: Candidate) -> float:
    """The share of a GPU a segment takes, in compute slices: its compute or its memory slices, whichever
    is the larger part of the GPU's (a 3g takes 3 of 7 compute but 4 of 8 memory slices: 3.5)."""
    return max(float(c.slices), c.mem_slices * 7 / 8)


def _priced_budgets(app: AppSpec, cands: dict[str, list[Candidate]], routing: dict[str, dict[str, float]],
                    demand: float, price, deadline: Deadline,
                    exclude: Sequence[dict[str, float]] = ()) -> dict[str, float] | None:
    """Each task's latency budget: the levels that minimise what the routed items cost (``price`` per
    instance), each variant at its cheapest candidate per item within its task's budget (separable, the
    routing held fixed), with every path within the SLO; a small MILP, a binary per task and level. The LP
    relaxation's own budgets come from latency binaries relaxed, which let it split a task over levels
    it cannot have. ``exclude``: budgets that have no plan; neither have any within them, so some task's
    budget is above its level in each."""
    m = Model()
    cost, pick, latency = Lin(), {}, {}
    for t, cs in cands.items():
        levels, prices = _level_prices(cs, routing[t], demand, price)
        if not levels:
            return None
        z = m.cols(len(levels), 0.0, 1.0, integer=True)
        m.add(Lin.dot(z, [1.0] * len(z)), 1.0, 1.0)
        cost = cost + Lin.dot(z, prices)
        pick[t], latency[t] = (z, levels), Lin.dot(z, levels)
    for p in app.paths:
        m.add(sum((latency[t] for t in p.tasks), Lin()), hi=app.latency_slo_ms)
    for old in exclude:  # some task above its level in ``old`` (budgets within those have no plan either)
        above = [j for t, (z, levels) in pick.items() for j, level in zip(z, levels) if level > old[t] + 1e-9]
        m.add(Lin.dot(above, [1.0] * len(above)), lo=1.0)
    deadline.check()
    _, values, _ = m.solve(-cost, deadline.left(), {"mip_rel_gap": 1e-6}, None)
    if values is None:
        return None
    return {t: levels[int(np.argmax([values[j] for j in z]))] for t, (z, levels) in pick.items()}


def _level_prices(cs: list[Candidate], shares: dict[str, float], demand: float,
                  price) -> tuple[list[float], list[float]]:
    """Per distinct worst-case latency of the task's candidates, what its routed items cost within it
    (variants at their cheapest candidate per item that fast); levels some routed variant cannot meet
    are left out."""
    levels = sorted({c.wc_latency_ms for c in cs})
    used = [v for v, x in shares.items() if x > 1e-9]
    best = {v: math.inf for v in used}
    out_levels, prices = [], []
    by_latency = sorted(cs, key=lambda c: c.wc_latency_ms)
    i = 0
    for level in levels:
        while i < len(by_latency) and by_latency[i].wc_latency_ms <= level + 1e-9:
            c = by_latency[i]
            if c.variant in best:
                best[c.variant] = min(best[c.variant], price(c) / c.throughput)
            i += 1
        total = sum(demand * shares[v] * best[v] for v in used)
        if math.isfinite(total):
            out_levels.append(level)
            prices.append(total)
    return out_levels, prices


def _restricted_milp(app: AppSpec, within: dict[str, list[Candidate]], lp: Solution, demand: float,
                     feats: Features, w: Weights, limits: Limits, deadline: Deadline) -> Solution | None:
    """The MILP over the LP's support and, per variant, its most slice-efficient and its smallest candidate
    (all within the budgets the LP fixed): whole instances chosen by the solver, not by rounding up."""
    keep: set[Candidate] = {c for c, n in lp.counts.items() if n > 1e-6}
    for cs in within.values():
        for v in {c.variant for c in cs}:
            own = [c for c in cs if c.variant == v]
            keep.add(max(own, key=lambda c: c.throughput / c.slices))
            keep.add(min(own, key=lambda c: (c.slices, -c.throughput)))
    cands = {t: [c for c in cs if c in keep] for t, cs in within.items()}
    limit = min(deadline.left(), RESTRICTED_SECONDS)
    if limit <= 0:
        return None
    try:
        return solve(app, cands, demand, feats, w, limits, time_limit=limit)
    except SolveTimeout:
        return None


def _solve(app: AppSpec, setup: _Setup, demand: float, opts: PlanOptions, w: Weights,
           limits: Limits, deadline: Deadline) -> tuple[Solution | None, str]:
    """``auto``: on a large model (over ``ROUND_FIRST`` candidates, where the MILP may not close within the
    limit) rounding first, so that a plan is in hand, then the MILP started from it with the time left (it
    keeps the rounded plan or improves on it, and bounds the optimum); on a small one the MILP first (80% of
    the time), rounding only if it did not prove optimality. The better plan, scored exactly, is returned."""
    feats = opts.features
    if opts.method == "relax":
        return _relax_and_round(app, setup, demand, feats, w, limits, deadline), "relax+round"
    deadline.check()
    rounded: Solution | None = None
    large = sum(len(cs) for cs in setup.cands.values()) > ROUND_FIRST
    if opts.method == "auto" and large:
        try:
            rounded = _relax_and_round(app, setup, demand, feats, w, limits, deadline)
        except SolveTimeout:
            pass
    budget = deadline.left() * (1.0 if opts.method == "milp" or large else 0.8)
    try:
        sol = solve(app, setup.cands, demand, feats, w, limits, time_limit=budget,
                    start=rounded.counts if rounded else None) if budget > MIN_SOLVE_SECONDS else None
    except SolveTimeout as exc:
        if opts.method == "milp":
            raise _timeout(exc) from None
        sol = None
    if opts.method == "milp" or (sol is not None and sol.status == "optimal"):
        return sol, "milp"
    if not large:
        try:
            rounded = _relax_and_round(app, setup, demand, feats, w, limits, deadline)
        except SolveTimeout:
            pass
    if sol is None and rounded is None:
        deadline.check()
    if sol is None or (rounded is not None and _score(app, rounded, demand, w) >= _score(app, sol, demand, w)):
        if rounded is not None and sol is not None:
            rounded.gap, rounded.bound = sol.gap, sol.bound  # the MILP started from it and bounds the optimum
        return rounded, "relax+round"
    return sol, "milp (time limit)"


def _timeout(exc: SolveTimeout) -> InfeasibleError:
    return InfeasibleError(f"time limit: {exc}; whether a plan exists is unknown: raise --time-limit "
                           f"or use --method relax", binding="time_limit")


def _diagnose(app: AppSpec, setup: _Setup, demand: float, opts: PlanOptions, gpu: GpuType,
              deadline: Deadline) -> InfeasibleError:
    """Find the binding constraint by dropping constraints one at a time."""
    try:
        return _binding(app, setup, demand, opts, gpu, deadline)
    except SolveTimeout as exc:
        return _timeout(exc)


def _binding(app: AppSpec, setup: _Setup, demand: float, opts: PlanOptions, gpu: GpuType,
             deadline: Deadline) -> InfeasibleError:
    feats, cap = opts.features, setup.limits.slices
    least = Weights(0.0, 1.0)

    def feasible(a: AppSpec, limits: Limits) -> Solution | None:
        deadline.check()
        return solve(a, setup.cands, demand, feats, least, limits, time_limit=deadline.left())

    no_mem = dataclasses.replace(setup.limits, mem_slices=None, mig_gpus=None)
    if cap is not None and gpu.mig and feasible(app, no_mem) is not None:
        return InfeasibleError(
            f"placement: at {demand:g} req/s the segments that meet the SLOs fit {cap} slices but not the MIG "
            f"layout of {opts.gpus} {gpu.name} GPU(s) ({setup.limits.mem_slices} memory slices)", binding="placement")
    if setup.limits.task_slices:
        sol = feasible(app, dataclasses.replace(no_mem, task_slices=None))
        if sol is not None:
            need = {t.name: int(sum(c.slices * n for c, n in sol.counts.items() if c.task == t.name))
                    for t in app.tasks}
            over = [f"{t} needs {need[t]} > its {setup.limits.task_slices[t]}" for t in need
                    if need[t] > setup.limits.task_slices[t]]
            return InfeasibleError(
                f"slices: at {demand:g} req/s the static per-task shares of the {cap} slices (no T) are too "
                f"small: {'; '.join(over) or 'the shares cannot all be met at once'} "
                f"(the whole plan would fit in {sum(need.values())} slices)", binding="slices")
    free = dataclasses.replace(no_mem, slices=None, task_slices=None)
    sol = feasible(app, free)
    if sol is not None:
        need_slices = int(sum(c.slices * n for c, n in sol.counts.items()))
        return InfeasibleError(
            f"slices: meeting the SLOs at {demand:g} req/s needs at least {need_slices} slices "
            f"(at least {math.ceil(need_slices / gpu.slices)} {gpu.name} GPUs); {cap} slices ({opts.gpus} GPU(s)) "
            f"are available", binding="slices")
    if feasible(dataclasses.replace(app, accuracy_slo=1e-9), free) is not None:
        return InfeasibleError(
            f"accuracy: no plan reaches {app.accuracy_slo:g} of the maximum pipeline accuracy within the "
            f"latency SLO of {app.latency_slo_ms:g} ms (the variants fast enough are too inaccurate)",
            binding="accuracy")
    return InfeasibleError(f"latency: no combination of configurations meets the SLO of "
                           f"{app.latency_slo_ms:g} ms on every path", binding="latency")


def make_plan(app: AppSpec, profiles: Profiles, gpu: GpuType, demand: float,
              opts: PlanOptions = PlanOptions(), deadline: Deadline | None = None) -> Plan:
    """The best plan for ``demand`` req/s within ``opts.time_limit`` seconds of wall time, from now or from
    ``deadline``'s start (a caller that began the call earlier, e.g. reading its files);
    InfeasibleError names the binding constraint (``time_limit`` when the limit passed first)."""
    deadline = deadline or Deadline(opts.time_limit)
    if not (demand > 0 and math.isfinite(demand)):
        raise InputError(f"--demand: expected a positive number of requests per second, got {demand}")
    if opts.method not in METHODS:
        raise InputError(f"--method: {opts.method!r} is not one of {', '.join(METHODS)}")
    if opts.latency_model not in LATENCY_MODELS:
        raise InputError(f"--latency-model: {opts.latency_model!r} is not one of {', '.join(LATENCY_MODELS)}")
    if opts.gpus is not None and opts.gpus < 1:
        raise InputError(f"--gpus: expected at least 1, got {opts.gpus}")
    if not (opts.time_limit > 0 and math.isfinite(opts.time_limit)):
        raise InputError(f"--time-limit: expected a positive number of seconds, got {opts.time_limit:g}")
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
        try:
            sol, method = _solve(app, setup, demand, opts, w, limits, deadline)
        except SolveTimeout as exc:
            raise _timeout(exc) from None
        if sol is None:
            if not opts.diagnose:
                raise InfeasibleError(f"no plan meets the SLOs at {demand:g} req/s", binding="unknown")
            raise _diagnose(app, setup, demand, opts, gpu, deadline)
        spent += sol.seconds
        routing = _absolute_routing(app, sol, demand)
        entries = _entries(sol, routing)
        try:
            placement = place([(segment_label(e, i), e.mig) for e in entries for i in range(e.count)], gpu, opts.gpus)
        except InfeasibleError:
            placement = place([(segment_label(e, i), e.mig) for e in entries for i in range(e.count)], gpu)
        if opts.gpus is None or placement.gpus_used <= opts.gpus:
            return _finish(served, gpu, demand, opts, entries, routing, placement, spent, method, sol, w)
        over = (placement.gpus_used - opts.gpus) * gpu.slices
        limits = dataclasses.replace(limits, slices=max(0, (limits.slices or 0) - max(1, over // 2)))
    raise InfeasibleError(f"placement: the chosen segments need {placement.gpus_used} {gpu.name} GPUs under the "
                          f"MIG placement rules, more than the {opts.gpus} available", binding="placement")


def _finish(app: AppSpec, gpu: GpuType, demand: float, opts: PlanOptions, entries: list[Entry],
            routing: dict[str, dict[str, float]], placement: Placement, seconds: float, method: str,
            sol: Solution, w: Weights) -> Plan:
    m = metrics(app, entries, routing, demand)
    objective = w.alpha * m.accuracy - w.beta * m.slices
    quality: dict = {"objective": objective}
    if sol.gap is not None:
        quality["gap"] = sol.gap
    if sol.relaxed_slices is not None:
        quality["relaxed_slices"] = sol.relaxed_slices
    plan = Plan(app=app.name, gpu_type=gpu.name, features=opts.features.label, demand_rps=demand,
                latency_slo_ms=app.latency_slo_ms, accuracy_slo=app.accuracy_slo, entries=entries,
                routing=routing, task_demand=m.task_demand, task_accuracy=m.task_accuracy,
                accuracy=m.accuracy, slices=m.slices, gpus=placement.gpus_used,
                paths=[{"tasks": list(p.tasks), "weight": p.weight, "latency_ms": m.path_latency[p.tasks],
                        "accuracy": m.path_accuracy[p.tasks]} for p in app.paths],
                placement=placement.to_json(), solve_seconds=seconds,
                solver={"method": method, "status": sol.status, "time_limit_s": opts.time_limit,
                        "latency_model": opts.latency_model, **quality,
                        **({"latency_reserve": opts.latency_reserve} if opts.latency_reserve else {}),
                        **({"queue_loads": list(QUEUE_LOADS)} if opts.queueing else {})},
                app_spec=dict(app.doc))
    planned_within = dataclasses.replace(app, latency_slo_ms=app.latency_slo_ms * (1 - opts.latency_reserve))
    broken = violations(planned_within, plan, opts.gpus * gpu.slices if opts.gpus else None)
    if broken:
        raise RuntimeError("internal error: the solver's plan fails the exact check: " + "; ".join(broken))
    return plan
