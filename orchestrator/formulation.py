"""The planning problem in cvxpy: integer instance counts per (task, variant, segment, batch).

Variables, per unit of source demand (see docs/planning.md for each linearisation):
  M[c]   instances of candidate c (integer; continuous in the relaxation)
  x[t,v] items of task t routed to variant v per source request
  y[c]   candidate c in use (binary), L[t] task t's worst-case latency   (only when T is on)
  r[t]   lower bound on log(accuracy of task t)                          (only when A is on)
"""
from __future__ import annotations

import functools
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass

import cvxpy as cp
import highspy
import numpy as np

from .appspec import AppSpec
from .candidates import Candidate, allowed_variants, demand_bounds
from .features import Features

LOG_STEP = 0.02   # geometric step of the chords of log N: each chord within LOG_STEP^2 / 8 of log
TANGENT_STEP = 0.03  # step between the tangency points of -log d and of exp (gap <= step^2 / 8)
MAX_PIECES = 48
# with more paths of a variable accuracy, or more candidates, than these: Jensen's bound over the paths
# instead of the exact mean (conservative; its binaries cost seconds on 120-GPU plans, docs/planning.md)
MAX_EXACT_PATHS = 8
MAX_EXACT_CANDIDATES = 120
SLICE_GAP = 0.005  # on large plans, stop within this share of the slices of the optimum (see _abs_gap)
ACCURACY_GAP = 1e-3  # and otherwise within this much of the optimum's accuracy
# objective per ms of the tasks' worst-case latencies summed, a tie-break among plans of the same slices and
# (to 0.001 of the accuracy per 100 ms) the same accuracy; capped so that all of it is worth < 0.01 slice
LATENCY_TIE_BREAK = 1e-5
HIGHS_FEASIBLE = 2  # HighsInfo.primal_solution_status: a feasible primal solution is known


class SolveTimeout(Exception):
    """HiGHS reached its time limit before finding any feasible plan (feasibility unknown)."""


@dataclass(frozen=True)
class Weights:
    """Objective: maximise alpha * pipeline accuracy - beta * slices."""

    alpha: float
    beta: float


@dataclass(frozen=True)
class Limits:
    """Cluster limits: compute and memory slices (None: unlimited), the number of 7-slice MIG GPUs
    (for the layout cuts) and the static budgets when T is off (whole slices per task, accuracy)."""

    slices: int | None = None
    mem_slices: int | None = None
    mig_gpus: int | None = None
    task_slices: dict[str, int] | None = None
    task_accuracy: dict[str, float] | None = None


@dataclass
class Solution:
    counts: dict[Candidate, float]
    routing: dict[str, dict[str, float]]
    status: str
    seconds: float
    relaxed: bool
    gap: float | None = None  # HiGHS's relative gap between the plan's objective and its dual bound (MILP)
    relaxed_slices: float | None = None  # the LP relaxation's (fractional) slices, for a rounded plan
    budgets: dict[str, float] | None = None  # each task's modelled worst-case latency (L_t), where modelled


@functools.cache
def _silence_banner() -> None:
    """HiGHS prints a banner on the C-level stdout when its first instance starts, before any option can
    silence it (once a process): start that instance with stdout on /dev/null, so that the banner stays
    off the program's output. Solves then run with output_flag off and touch no file descriptor, so the
    other threads' output is never redirected."""
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def _pieces(lo: float, hi: float, step: float, log_scale: bool) -> int:
    span = math.log(hi / lo) if log_scale else hi - lo
    return max(2, min(MAX_PIECES, math.ceil(span / step)))


def _chords(lo: float, hi: float) -> list[tuple[float, float]]:
    """(slope, intercept) of the chords of log on [lo, hi] at geometric breakpoints: all lie below log."""
    if hi <= lo * (1 + 1e-9):
        return [(0.0, math.log(lo))]
    pts = np.geomspace(lo, hi, _pieces(lo, hi, LOG_STEP, True) + 1)
    lines = []
    for a, b in zip(pts[:-1], pts[1:]):
        slope = (math.log(b) - math.log(a)) / (b - a)
        lines.append((slope, math.log(a) - slope * a))
    return lines


def _below_convex(value: cp.Expression, arg: cp.Expression, f, slope_of, points: np.ndarray, upper: float,
                  relaxed: bool, name: str) -> list[cp.Constraint]:
    """value <= f(arg) for a convex f on [points[0], points[-1]], within the tangent gap: arg lies in one of
    the intervals between the points (a binary each) and value below f's tangent at that interval's middle.
    The disaggregated form (arg = sum a_k, a_k within its interval when chosen, value <= sum of the chosen
    tangent at a_k) has the tightest relaxation of such a choice, so HiGHS branches little; the hypograph
    of a convex function needs the choice at all. Relaxed (no binaries), value stays below the middle
    interval's tangent alone: a bound from below, so that a relaxation's routing keeps its accuracy."""
    lo, hi = points[:-1], points[1:]
    mids = np.sqrt(lo * hi) if points[0] > 0 else (lo + hi) / 2
    slopes = np.array([slope_of(t) for t in mids])
    icpts = np.array([f(t) - slope_of(t) * t for t in mids])
    if relaxed:
        k = len(mids) // 2
        return [value <= slopes[k] * arg + icpts[k], value <= upper]
    z = cp.Variable(len(mids), boolean=True, name=name)
    a = cp.Variable(len(mids), name=f"{name}_arg")
    return [cp.sum(z) == 1, arg == cp.sum(a), a >= cp.multiply(lo, z), a <= cp.multiply(hi, z),
            value <= slopes @ a + icpts @ z, value <= upper]


def solve(app: AppSpec, cands: dict[str, list[Candidate]], demand: float, features: Features,
          weights: Weights, limits: Limits, *, relaxed: bool = False, time_limit: float = 10.0) -> Solution | None:
    """Build and solve the model; None when it is infeasible, SolveTimeout when the time limit passed
    before any feasible plan was found."""
    start = time.perf_counter()
    clist = [c for t in app.tasks for c in cands[t.name]]
    n = len(clist)
    vkeys = [(t.name, v) for t in app.tasks for v in allowed_variants(app, t.name, features)]
    vidx = {k: i for i, k in enumerate(vkeys)}
    bounds = demand_bounds(app, features)
    graph_aware = features.task_graph

    size = np.array([c.slices for c in clist], dtype=float)
    mem = np.array([c.mem_slices for c in clist], dtype=float)
    upper = np.array([math.ceil(demand * bounds[c.task][1] / c.throughput) + 1 for c in clist], dtype=float)

    M = cp.Variable(n, integer=not relaxed, name="M") if n else None
    x = cp.Variable(len(vkeys), nonneg=True, name="x")
    cons = []
    if M is not None:
        cons += [M >= 0, M <= upper]

    # Demand flow along the edges (exact, linear); without T each task plans for its worst case.
    for t in app.tasks:
        own = [vidx[(t.name, v)] for v in allowed_variants(app, t.name, features)]
        parents = app.parents(t.name)
        if not parents or not graph_aware:
            cons.append(cp.sum(x[own]) == bounds[t.name][1])
        else:
            inflow = sum(e.factor_for(v) * x[vidx[(e.src, v)]]
                         for e in parents for v in allowed_variants(app, e.src, features))
            cons.append(cp.sum(x[own]) == inflow)

    # Capacity of each variant covers the items routed to it (exact).
    cap = np.zeros((len(vkeys), n))
    for j, c in enumerate(clist):
        cap[vidx[(c.task, c.variant)], j] = c.throughput
    if M is not None:
        cons.append((cap / demand) @ M >= x)
    else:
        cons.append(x == 0)

    slices = size @ M if M is not None else 0
    if limits.slices is not None and M is not None:
        cons.append(slices <= limits.slices)
    if limits.mem_slices is not None and M is not None:
        cons.append(mem @ M <= limits.mem_slices)
    if limits.mig_gpus is not None and M is not None:
        cons += _mig_layout_cuts(clist, M, limits.mig_gpus)
    if limits.task_slices and M is not None:
        for t in app.tasks:
            mask = np.array([c.task == t.name for c in clist], dtype=float)
            cons.append((mask * size) @ M <= limits.task_slices[t.name])

    # Per-path worst-case latency as cumulative budget levels (exact): u[t,k] = 1 when task t's
    # budget reaches its k-th distinct candidate latency; L[t] = l_1 + sum_k (l_k - l_{k-1}) u[t,k];
    # a candidate may run only if its level is reached: M[c] <= U[c] * u[t, level(c)].
    L: dict[str, cp.Expression | float] = {}
    if graph_aware and M is not None and _latency_binds(app, cands):
        for t in app.tasks:
            own = [j for j, c in enumerate(clist) if c.task == t.name]
            levels = sorted({clist[j].wc_latency_ms for j in own})
            if len(levels) == 1:
                L[t.name] = levels[0]
                continue
            u = cp.Variable(len(levels) - 1, boolean=not relaxed, name=f"u_{t.name}")
            cons += [u[1:] <= u[:-1]] if len(levels) > 2 else []
            if relaxed:
                cons += [u >= 0, u <= 1]
            L[t.name] = levels[0] + np.diff(levels) @ u
            gate = np.zeros((len(own), len(levels) - 1))
            for row, j in enumerate(own):
                k = levels.index(clist[j].wc_latency_ms)
                if k > 0:
                    gate[row, k - 1] = upper[j]
            gated = [row for row, j in enumerate(own) if levels.index(clist[j].wc_latency_ms) > 0]
            if gated:
                cons.append(M[[own[r] for r in gated]] <= gate[gated] @ u)
        for p in app.paths:
            cons.append(sum(L[t] for t in p.tasks) <= app.latency_slo_ms)

    # Accuracy (the paper's definition, docs/planning.md): r[t] <= log A_t = log N_t - log d_t, with
    # N_t = sum_v a(v) x[t,v] (a normalised to the task's best) and d_t = sum_v x[t,v]: chords of log N
    # (below the concave log) and, where d_t varies with upstream routing (per-variant fan-out), a chosen
    # tangent of -log d (below the convex -log); each path's log-accuracy S_p = sum of its tasks' r.
    r: dict[str, cp.Expression | float] = {}
    low: dict[str, float] = {}  # the least log-accuracy each task can have
    for t in app.tasks:
        vs = allowed_variants(app, t.name, features)
        if len(vs) == 1:
            r[t.name] = 0.0
            continue
        acc = np.array([app.task(t.name).variant(v).accuracy for v in vs])
        low[t.name] = math.log(acc.min())
        own = [vidx[(t.name, v)] for v in vs]
        dmin, dmax = bounds[t.name]
        if not graph_aware:
            dmin = dmax
            cons.append(acc @ x[own] >= limits.task_accuracy[t.name] * dmax)
        N = acc @ x[own]
        g = cp.Variable(name=f"g_{t.name}")
        cons += [g <= s * N + b for s, b in _chords(acc.min() * dmin, dmax)]
        if dmax <= dmin * (1 + 1e-9):
            h: cp.Expression | float = -math.log(dmax)
        else:
            h = cp.Variable(name=f"h_{t.name}")
            pts = np.geomspace(dmin, dmax, _pieces(dmin, dmax, TANGENT_STEP, True) + 1)
            cons += _below_convex(h, cp.sum(x[own]), lambda d: -math.log(d), lambda d: -1.0 / d, pts,
                                  -math.log(dmin), relaxed, f"zd_{t.name}")
        r[t.name] = g + h

    tau = app.accuracy_slo
    share = app.accuracy_weights()
    varying = [p for p in app.paths if any(t in low for t in p.tasks) and share[p.tasks] > 0]
    fixed = sum(share[p.tasks] for p in app.paths if p not in varying)  # paths always at their best
    objective = -weights.beta * slices
    if varying:
        S = {p.tasks: sum(r[t] for t in p.tasks) for p in varying}
        total = sum(share[p.tasks] for p in varying)
        need = (tau - fixed) / total  # what the varying paths' weighted mean must reach
        enforce = graph_aware and tau < 1 and need > 0
        if len(varying) > MAX_EXACT_PATHS or n > MAX_EXACT_CANDIDATES:
            # many paths or a large model: Jensen's bound, sum w e^S >= W e^(sum w S / W) (conservative; exact for
            # one path); the objective's accuracy by the chord of exp over the range the mean can take
            mean_log = sum(share[p.tasks] * S[p.tasks] for p in varying) / total
            if enforce:
                cons.append(mean_log >= math.log(need))
            least = min(sum(low.get(t, 0.0) for t in p.tasks) for p in varying)
            floor = max(least, math.log(need)) if enforce else least
            slope = (1 - math.exp(floor)) / -floor if floor < -1e-9 else 1.0
            objective = objective + weights.alpha * total * slope * mean_log
        else:
            # y_p <= e^(S_p) by the tangent of exp on the chosen piece of [least S_p, 0], exact within the gap
            y = cp.Variable(len(varying), name="path_accuracy")
            for i, p in enumerate(varying):
                w = share[p.tasks]
                floor = (tau - fixed - (total - w)) / w  # the other varying paths at their best
                # the least S_p can be: every task at its least accurate variant, less the linearisations' gaps
                lo = min(sum(low.get(t, 0.0) for t in p.tasks) - 0.01, -1e-6)
                if enforce and floor > 0 and math.log(floor) > lo:
                    lo = min(math.log(floor), -1e-6)
                    cons.append(S[p.tasks] >= lo)  # implied: below it the mean cannot reach the SLO
                pts = np.linspace(lo, 0.0, _pieces(lo, 0.0, TANGENT_STEP, False) + 1)
                cons += _below_convex(y[i], S[p.tasks], math.exp, math.exp, pts, 1.0, relaxed, f"ze_{i}")
            mean = sum(share[p.tasks] * y[i] for i, p in enumerate(varying))
            if enforce:
                cons.append(mean >= tau - fixed)
            objective = objective + weights.alpha * mean

    if any(not isinstance(v, float) for v in L.values()):
        worst = sum(max((c.wc_latency_ms for c in cands[t]), default=0.0) for t in L)
        tie = min(LATENCY_TIE_BREAK, 0.01 * weights.beta / worst) if weights.beta > 0 and worst > 0 \
            else LATENCY_TIE_BREAK
        objective = objective - tie * sum(L.values())

    problem = cp.Problem(cp.Maximize(objective), cons)
    opts: dict = {"output_flag": False}
    if not relaxed:
        opts.update(time_limit=max(float(time_limit), 0.01), mip_rel_gap=1e-6,
                    mip_abs_gap=_abs_gap(weights, clist, demand, bounds))
    try:
        _silence_banner()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "may be inaccurate" at the time limit
            problem.solve(solver=cp.HIGHS, **opts)
    except cp.error.SolverError:
        return None
    seconds = time.perf_counter() - start
    info = problem.solver_stats.extra_stats
    feasible = getattr(info, "primal_solution_status", HIGHS_FEASIBLE) == HIGHS_FEASIBLE
    if problem.status == cp.USER_LIMIT and not feasible:
        raise SolveTimeout(f"no feasible plan found within the time limit of {time_limit:g} s")
    if problem.status not in (cp.OPTIMAL, cp.USER_LIMIT) or x.value is None \
            or (M is not None and M.value is None) or not feasible:
        return None
    values = M.value if M is not None else np.zeros(0)
    counts = {c: (float(round(v)) if not relaxed else float(max(v, 0.0))) for c, v in zip(clist, values)}
    routing: dict[str, dict[str, float]] = {t.name: {} for t in app.tasks}
    for (tname, v), val in zip(vkeys, x.value):
        routing[tname][v] = max(float(val), 0.0)
    gap = getattr(info, "mip_gap", None) if not relaxed else None
    budgets = {t: float(getattr(v, "value", v)) for t, v in L.items()} or None
    return Solution(counts, routing, str(problem.status), seconds, relaxed,
                    float(gap) if gap is not None and math.isfinite(gap) else None, budgets=budgets)


def _abs_gap(weights: Weights, clist: list[Candidate], demand: float,
             bounds: dict[str, tuple[float, float]]) -> float:
    """When HiGHS may stop: once the plan is provably within this much of the optimum objective. For the
    fewest slices alone (alpha 0), just under one slice less the latency tie-break's most (slices are whole,
    so that is optimal); else half
    a slice's worth or 0.001 of the accuracy, whichever is less; on large plans (over ``1 / SLICE_GAP``
    slices) also ``SLICE_GAP`` of a lower bound on the slices, the price of solving them in seconds (the
    plan reports its gap)."""
    if weights.beta <= 0:
        return 1e-6 * max(weights.alpha, 1e-9)
    best: dict[str, float] = {}
    for c in clist:
        best[c.task] = max(best.get(c.task, 0.0), c.throughput / c.slices)
    least = sum(demand * bounds[t][0] / per for t, per in best.items())
    exact = 0.98 * weights.beta if weights.alpha == 0 else min(0.5 * weights.beta, ACCURACY_GAP * weights.alpha)
    return max(exact, SLICE_GAP * least * weights.beta)


def _mig_layout_cuts(clist: list[Candidate], M: cp.Variable, gpus: int) -> list[cp.Constraint]:
    """Valid inequalities of the A100/H100/H200 MIG layout (each GPU: a left half, memory slices 0-3,
    and a right half, 4-7, of which 1g/2g can use only 3 compute slices): a 7g takes both halves, a 4g
    the left one, a 3g either; a 3g beyond the right halves goes left and wastes one compute slice. A 2g
    starts only at memory slice 0, 2 or 4: three places a GPU, of which a 4g or a 7g takes two or three
    and a 3g at least one."""
    def count(size: int) -> cp.Expression:
        mask = np.array([c.slices == size for c in clist], dtype=float)
        return mask @ M
    n2, n3, n4, n7 = count(2), count(3), count(4), count(7)
    waste = cp.Variable(nonneg=True, name="waste3g")
    compute = np.array([c.slices for c in clist], dtype=float) @ M
    return [2 * n7 + n4 + n3 <= 2 * gpus, n7 + n4 <= gpus, waste >= n3 + n7 - gpus,
            compute + waste <= 7 * gpus, n2 + 2 * n4 + n3 + 3 * n7 <= 3 * gpus]


def _latency_binds(app: AppSpec, cands: dict[str, list[Candidate]]) -> bool:
    """False when every path meets the SLO even with each task's slowest candidate."""
    slowest = {t: max((c.wc_latency_ms for c in cs), default=0.0) for t, cs in cands.items()}
    return any(sum(slowest[t] for t in p.tasks) > app.latency_slo_ms + 1e-9 for p in app.paths)
