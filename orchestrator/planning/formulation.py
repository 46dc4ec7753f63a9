"""The planning problem as a linear (integer) model for HiGHS: instance counts per (task, variant, segment, batch).

Variables, per unit of source demand (see docs/planning.md for each linearisation):
  M[c]   instances of candidate c (integer; continuous in the relaxation)
  x[t,v] items of task t routed to variant v per source request
  u[t,k] task t's latency budget reaches its k-th level (binary)    (only when T is on)
  g[t], h[t]  lower bounds on log N_t and -log d_t                  (only when A is on)

The model is built row by row and handed to highspy in one piece: through cvxpy, building a 120-GPU model
took longer than HiGHS took to solve it, and cvxpy gives no way to hand HiGHS a starting plan.
"""
from __future__ import annotations

import functools
import math
import os
import sys
import time
from dataclasses import dataclass, field

import highspy
import numpy as np

from ..spec.appspec import AppSpec
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
INF = highspy.kHighsInf
FEASIBLE = 2  # HighsInfo.primal_solution_status: a feasible primal solution is known
OUTER = math.inf  # as a relaxation's tangent point: the chord instead (see _below_convex)


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
    (for the layout cuts) and their maximal patterns (``placement.patterns``: exact placement), and the
    static budgets when T is off (whole slices per task, accuracy)."""

    slices: int | None = None
    mem_slices: int | None = None
    mig_gpus: int | None = None
    patterns: tuple[tuple[int, ...], ...] | None = None
    task_slices: dict[str, int] | None = None
    task_accuracy: dict[str, float] | None = None


@dataclass
class Solution:
    counts: dict[Candidate, float]
    routing: dict[str, dict[str, float]]
    status: str
    seconds: float
    relaxed: bool
    gap: float | None = None  # (dual bound - objective) in slices' worth, over the plan's slices (MILP; _gap)
    relaxed_slices: float | None = None  # the LP relaxation's (fractional) slices, for a rounded plan
    budgets: dict[str, float] | None = None  # each task's modelled worst-case latency (L_t), where modelled
    bound: float | None = None  # the MILP's dual bound: no plan's objective exceeds it
    objective: float | None = None  # the model's own objective at this solution
    points: dict[str, float] = field(default_factory=dict)  # the argument of each linearised convex term


class _Outer(dict):
    """Tangent points that are all OUTER: every convex term of a relaxation below its chord."""

    def get(self, key, default=None):
        return OUTER


class Lin:
    """A linear form over the model's columns plus a constant (the few operations the model needs)."""

    __slots__ = ("terms", "const")

    def __init__(self, terms: dict[int, float] | None = None, const: float = 0.0) -> None:
        self.terms = terms or {}
        self.const = float(const)

    @staticmethod
    def dot(cols: list[int], coefs) -> "Lin":
        out: dict[int, float] = {}
        for j, a in zip(cols, coefs):
            if a:
                out[j] = out.get(j, 0.0) + float(a)
        return Lin(out)

    def __add__(self, other: "Lin | float") -> "Lin":
        if not isinstance(other, Lin):
            return Lin(dict(self.terms), self.const + float(other))
        out = dict(self.terms)
        for j, a in other.terms.items():
            out[j] = out.get(j, 0.0) + a
        return Lin(out, self.const + other.const)

    __radd__ = __add__

    def __mul__(self, k: float) -> "Lin":
        return Lin({j: a * k for j, a in self.terms.items()}, self.const * k)

    __rmul__ = __mul__

    def __neg__(self) -> "Lin":
        return self * -1.0

    def __sub__(self, other: "Lin | float") -> "Lin":
        return self + (-other if isinstance(other, Lin) else -float(other))

    def value(self, x: np.ndarray) -> float:
        return self.const + sum(a * x[j] for j, a in self.terms.items())


class Model:
    """Columns (bounds, integrality, objective) and rows ``lo <= form <= hi``, passed to HiGHS at once."""

    def __init__(self) -> None:
        self.lower: list[float] = []
        self.upper: list[float] = []
        self.integer: list[bool] = []
        self.rows: list[tuple[Lin, float, float]] = []

    def cols(self, n: int, lower: float | np.ndarray = 0.0, upper: float | np.ndarray = INF,
             integer: bool = False) -> list[int]:
        first = len(self.lower)
        self.lower += list(np.broadcast_to(np.asarray(lower, dtype=float), (n,)))
        self.upper += list(np.broadcast_to(np.asarray(upper, dtype=float), (n,)))
        self.integer += [integer] * n
        return list(range(first, first + n))

    def col(self, lower: float = -INF, upper: float = INF, integer: bool = False) -> Lin:
        return Lin({self.cols(1, lower, upper, integer)[0]: 1.0})

    def add(self, form: Lin, lo: float = -INF, hi: float = INF) -> None:
        self.rows.append((form, lo - form.const, hi - form.const))

    def solve(self, objective: Lin, time_limit: float, options: dict, start: dict[int, float] | None
              ) -> tuple[str, np.ndarray | None, highspy.HighsInfo]:
        """Maximise; (status, column values or None, HiGHS's info). The status is ``optimal``,
        ``user_limit`` (stopped at the time limit), ``infeasible`` or ``error``."""
        _silence_banner()
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("time_limit", max(float(time_limit), 0.01))
        for k, v in options.items():
            h.setOptionValue(k, v)
        h.passModel(self._lp(objective))
        if start:
            h.setSolution(len(start), np.array(list(start), dtype=np.int32),
                          np.array(list(start.values()), dtype=float))
        h.run()
        status, info = h.getModelStatus(), h.getInfo()
        feasible = info.primal_solution_status == FEASIBLE
        values = np.array(h.getSolution().col_value) if feasible else None
        if status == highspy.HighsModelStatus.kOptimal:
            return "optimal", values, info
        if status in (highspy.HighsModelStatus.kInfeasible, highspy.HighsModelStatus.kUnboundedOrInfeasible):
            return "infeasible", None, info
        if status in (highspy.HighsModelStatus.kTimeLimit, highspy.HighsModelStatus.kInterrupt,
                      highspy.HighsModelStatus.kSolutionLimit):
            return "user_limit", values, info
        return "error", None, info

    def _lp(self, objective: Lin) -> highspy.HighsLp:
        lp = highspy.HighsLp()
        n = len(self.lower)
        lp.num_col_, lp.num_row_ = n, len(self.rows)
        cost = np.zeros(n)
        for j, a in objective.terms.items():
            cost[j] += a
        lp.col_cost_, lp.sense_ = -cost, highspy.ObjSense.kMinimize  # the callers negate, adding objective.const
        lp.col_lower_, lp.col_upper_ = np.array(self.lower), np.array(self.upper)
        lp.row_lower_ = np.array([lo for _, lo, _ in self.rows], dtype=float)
        lp.row_upper_ = np.array([hi for _, _, hi in self.rows], dtype=float)
        starts, index, value = [0], [], []
        for form, _, _ in self.rows:
            index += form.terms.keys()
            value += form.terms.values()
            starts.append(len(index))
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.start_ = np.array(starts, dtype=np.int32)
        lp.a_matrix_.index_ = np.array(index, dtype=np.int32)
        lp.a_matrix_.value_ = np.array(value, dtype=float)
        if any(self.integer):
            lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                               for i in self.integer]
        return lp


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


def _below_convex(m: Model, value: Lin, arg: Lin, f, slope_of, points: np.ndarray, upper: float,
                  relaxed: bool, at: float | None) -> None:
    """value <= f(arg) for a convex f on [points[0], points[-1]], within the tangent gap: arg lies in one of
    the intervals between the points (a binary each) and value below f's tangent at that interval's middle.
    The disaggregated form (arg = sum a_k, a_k within its interval when chosen, value <= sum of the chosen
    tangent at a_k) has the tightest relaxation of such a choice, so HiGHS branches little; the hypograph
    of a convex function needs the choice at all. Relaxed (no binaries), value stays below one tangent, at
    ``at`` (a previous relaxation's argument) or else the middle interval's: a bound from below, so that a
    relaxation's routing keeps its accuracy, and exact where the argument stays; or, with ``at`` OUTER,
    below the chord over the whole range (above f: a true relaxation, whose optimum bounds the MILP's)."""
    m.add(value, hi=upper)
    lo, hi = points[:-1], points[1:]
    mids = np.sqrt(lo * hi) if points[0] > 0 else (lo + hi) / 2
    if relaxed and at == OUTER:
        a, b = points[0], points[-1]
        m.add(value - arg * ((f(b) - f(a)) / (b - a)), hi=f(a) - (f(b) - f(a)) / (b - a) * a)
        return
    if relaxed:
        t = min(max(at, points[0]), points[-1]) if at is not None else mids[len(mids) // 2]
        m.add(value - arg * slope_of(t), hi=f(t) - slope_of(t) * t)
        return
    k = len(mids)
    z = m.cols(k, 0.0, 1.0, integer=True)
    a = m.cols(k, -INF, INF)
    m.add(Lin.dot(z, np.ones(k)), 1.0, 1.0)
    m.add(arg - Lin.dot(a, np.ones(k)), 0.0, 0.0)
    for i in range(k):
        m.add(Lin({a[i]: 1.0, z[i]: -lo[i]}), lo=0.0)
        m.add(Lin({a[i]: 1.0, z[i]: -hi[i]}), hi=0.0)
    slopes = [slope_of(t) for t in mids]
    icpts = [f(t) - slope_of(t) * t for t in mids]
    m.add(value - Lin.dot(a, slopes) - Lin.dot(z, icpts), hi=0.0)


@dataclass
class _Built:
    """A model with the handles that read a plan back out of its solution."""

    model: Model
    objective: Lin
    M: list[int]
    x: list[int]
    vkeys: list[tuple[str, str]]
    clist: list[Candidate]
    L: dict[str, Lin | float]
    convex_args: dict[str, Lin]
    abs_gap: float


def _build(app: AppSpec, cands: dict[str, list[Candidate]], demand: float, features: Features,
           weights: Weights, limits: Limits, relaxed: bool, at: dict[str, float]) -> _Built:
    m = Model()
    clist = [c for t in app.tasks for c in cands[t.name]]
    n = len(clist)
    vkeys = [(t.name, v) for t in app.tasks for v in allowed_variants(app, t.name, features)]
    vidx = {k: i for i, k in enumerate(vkeys)}
    bounds = demand_bounds(app, features)
    graph_aware = features.task_graph
    size = np.array([c.slices for c in clist], dtype=float)
    upper = np.array([math.ceil(demand * bounds[c.task][1] / c.throughput) + 1 for c in clist], dtype=float)

    M = m.cols(n, 0.0, upper, integer=not relaxed)
    x = m.cols(len(vkeys), 0.0, INF if n else 0.0)

    # Demand flow along the edges (exact, linear); without T each task plans for its worst case.
    for t in app.tasks:
        own = [x[vidx[(t.name, v)]] for v in allowed_variants(app, t.name, features)]
        parents = app.parents(t.name)
        if not parents or not graph_aware:
            m.add(Lin.dot(own, np.ones(len(own))), bounds[t.name][1], bounds[t.name][1])
        else:
            inflow = sum((Lin({x[vidx[(e.src, v)]]: e.factor_for(v)})
                          for e in parents for v in allowed_variants(app, e.src, features)), Lin())
            m.add(Lin.dot(own, np.ones(len(own))) - inflow, 0.0, 0.0)

    # Capacity of each variant covers the items routed to it (exact).
    per_variant: dict[int, Lin] = {i: Lin({x[i]: -1.0}) for i in range(len(vkeys))}
    for j, c in enumerate(clist):
        per_variant[vidx[(c.task, c.variant)]].terms[M[j]] = c.throughput / demand
    for form in per_variant.values():
        m.add(form, lo=0.0)

    slices = Lin.dot(M, size)
    if limits.slices is not None and n:
        m.add(slices, hi=limits.slices)
    if limits.mem_slices is not None and n:
        m.add(Lin.dot(M, [c.mem_slices for c in clist]), hi=limits.mem_slices)
    if limits.mig_gpus is not None and n:
        _mig_layout_cuts(m, clist, M, limits.mig_gpus)
        if limits.patterns:
            _patterns(m, clist, M, limits.mig_gpus, limits.patterns, relaxed)
    if limits.task_slices and n:
        for t in app.tasks:
            m.add(Lin.dot(M, [c.slices if c.task == t.name else 0 for c in clist]), hi=limits.task_slices[t.name])

    L = _latency_levels(m, app, cands, clist, M, upper, relaxed) if graph_aware and n else {}
    objective = -weights.beta * slices
    objective, args = _accuracy(m, app, features, limits, x, vidx, bounds, n, weights, objective, relaxed, at)
    if any(not isinstance(v, float) for v in L.values()):
        worst = sum(max((c.wc_latency_ms for c in cands[t]), default=0.0) for t in L)
        tie = min(LATENCY_TIE_BREAK, 0.01 * weights.beta / worst) if weights.beta > 0 and worst > 0 \
            else LATENCY_TIE_BREAK
        objective = objective - tie * sum((v for v in L.values()), Lin())
    return _Built(m, objective, M, x, vkeys, clist, L, args, _abs_gap(weights, clist, demand, bounds))


def _latency_levels(m: Model, app: AppSpec, cands: dict[str, list[Candidate]], clist: list[Candidate],
                    M: list[int], upper: np.ndarray, relaxed: bool) -> dict[str, Lin | float]:
    """Per-path worst-case latency as cumulative budget levels (exact): u[t,k] = 1 when task t's budget
    reaches its k-th distinct candidate latency; L[t] = l_1 + sum_k (l_k - l_{k-1}) u[t,k]; a candidate
    may run only if its level is reached: M[c] <= U[c] * u[t, level(c)]."""
    if not _latency_binds(app, cands):
        return {}
    L: dict[str, Lin | float] = {}
    for t in app.tasks:
        own = [j for j, c in enumerate(clist) if c.task == t.name]
        levels = sorted({clist[j].wc_latency_ms for j in own})
        if len(levels) == 1:
            L[t.name] = levels[0]
            continue
        u = m.cols(len(levels) - 1, 0.0, 1.0, integer=not relaxed)
        for k in range(1, len(u)):
            m.add(Lin({u[k]: 1.0, u[k - 1]: -1.0}), hi=0.0)
        L[t.name] = Lin.dot(u, np.diff(levels)) + levels[0]
        for j in own:
            k = levels.index(clist[j].wc_latency_ms)
            if k > 0:
                m.add(Lin({M[j]: 1.0, u[k - 1]: -upper[j]}), hi=0.0)
    for p in app.paths:
        m.add(sum((L[t] for t in p.tasks), Lin()), hi=app.latency_slo_ms)
    return L


def _accuracy(m: Model, app: AppSpec, features: Features, limits: Limits, x: list[int], vidx: dict,
              bounds: dict[str, tuple[float, float]], n: int, weights: Weights, objective: Lin, relaxed: bool,
              at: dict[str, float]) -> tuple[Lin, dict[str, Lin]]:
    """Accuracy (the paper's definition, docs/planning.md): r[t] <= log A_t = log N_t - log d_t, with
    N_t = sum_v a(v) x[t,v] (a normalised to the task's best) and d_t = sum_v x[t,v]: chords of log N
    (below the concave log) and, where d_t varies with upstream routing (per-variant fan-out), a chosen
    tangent of -log d (below the convex -log); each path's log-accuracy S_p = sum of its tasks' r.
    Returns the objective with the accuracy term and the arguments of the linearised convex terms."""
    graph_aware = features.task_graph
    r: dict[str, Lin | float] = {}
    low: dict[str, float] = {}  # the least log-accuracy each task can have
    args: dict[str, Lin] = {}
    for t in app.tasks:
        vs = allowed_variants(app, t.name, features)
        if len(vs) == 1:
            r[t.name] = 0.0
            continue
        acc = np.array([app.task(t.name).variant(v).accuracy for v in vs])
        low[t.name] = math.log(acc.min())
        own = [x[vidx[(t.name, v)]] for v in vs]
        dmin, dmax = bounds[t.name]
        N = Lin.dot(own, acc)
        if not graph_aware:
            dmin = dmax
            m.add(N, lo=limits.task_accuracy[t.name] * dmax)
        g = m.col()
        for s, b in _chords(acc.min() * dmin, dmax):
            m.add(g - N * s, hi=b)
        if dmax <= dmin * (1 + 1e-9):
            h: Lin | float = -math.log(dmax)
        else:
            h = m.col()
            name = f"d:{t.name}"
            args[name] = Lin.dot(own, np.ones(len(own)))
            pts = np.geomspace(dmin, dmax, _pieces(dmin, dmax, TANGENT_STEP, True) + 1)
            _below_convex(m, h, args[name], lambda d: -math.log(d), lambda d: -1.0 / d, pts,
                          -math.log(dmin), relaxed, at.get(name))
        r[t.name] = g + h

    tau = app.accuracy_slo
    share = app.accuracy_weights()
    varying = [p for p in app.paths if any(t in low for t in p.tasks) and share[p.tasks] > 0]
    fixed = sum(share[p.tasks] for p in app.paths if p not in varying)  # paths always at their best
    if not varying:
        return objective, args
    S = {p.tasks: sum((r[t] for t in p.tasks), Lin()) for p in varying}
    total = sum(share[p.tasks] for p in varying)
    need = (tau - fixed) / total  # what the varying paths' weighted mean must reach
    enforce = graph_aware and tau < 1 and need > 0
    if len(varying) > MAX_EXACT_PATHS or n > MAX_EXACT_CANDIDATES:
        # many paths or a large model: Jensen's bound, sum w e^S >= W e^(sum w S / W) (conservative; exact for
        # one path); the objective's accuracy by the chord of exp over the range the mean can take
        mean_log = sum((S[p.tasks] * share[p.tasks] for p in varying), Lin()) * (1 / total)
        if enforce:
            m.add(mean_log, lo=math.log(need))
        least = min(sum(low.get(t, 0.0) for t in p.tasks) for p in varying)
        floor = max(least, math.log(need)) if enforce else least
        slope = (1 - math.exp(floor)) / -floor if floor < -1e-9 else 1.0
        return objective + mean_log * (weights.alpha * total * slope), args
    # y_p <= e^(S_p) by the tangent of exp on the chosen piece of [least S_p, 0], exact within the gap
    mean = Lin()
    for i, p in enumerate(varying):
        w = share[p.tasks]
        y = m.col()
        floor = (tau - fixed - (total - w)) / w  # the other varying paths at their best
        # the least S_p can be: every task at its least accurate variant, less the linearisations' gaps
        lo = min(sum(low.get(t, 0.0) for t in p.tasks) - 0.01, -1e-6)
        if enforce and floor > 0 and math.log(floor) > lo:
            lo = min(math.log(floor), -1e-6)
            m.add(S[p.tasks], lo=lo)  # implied: below it the mean cannot reach the SLO
        pts = np.linspace(lo, 0.0, _pieces(lo, 0.0, TANGENT_STEP, False) + 1)
        name = f"S:{i}"
        args[name] = S[p.tasks]
        _below_convex(m, y, S[p.tasks], math.exp, math.exp, pts, 1.0, relaxed, at.get(name))
        mean = mean + y * w
    if enforce:
        m.add(mean, lo=tau - fixed)
    return objective + mean * weights.alpha, args


def solve(app: AppSpec, cands: dict[str, list[Candidate]], demand: float, features: Features,
          weights: Weights, limits: Limits, *, relaxed: bool = False, time_limit: float = 10.0,
          at: dict[str, float] | None = None, outer: bool = False,
          start: dict[Candidate, float] | None = None) -> Solution | None:
    """Build and solve the model; None when it is infeasible, SolveTimeout when the time limit passed
    before any feasible plan was found. A relaxation's convex terms lie below tangents at ``at`` (an earlier
    relaxation's ``Solution.points``; else mid-range), or with ``outer`` below chords (a true relaxation);
    ``start``: instance counts of a known plan for the MILP to start from."""
    began = time.perf_counter()
    b = _build(app, cands, demand, features, weights, limits, relaxed, _Outer() if outer else (at or {}))
    options: dict = {}
    if not relaxed:
        options.update(mip_rel_gap=1e-6, mip_abs_gap=b.abs_gap)
    first = {b.M[j]: float(start[c]) for j, c in enumerate(b.clist) if c in start} if start and not relaxed else None
    if first:
        # HiGHS 1.16's presolve misjudges a start's objective (it took a traffic plan 0.28 worse than the
        # optimum for optimal, its bound equal to it); without presolve the start is judged right
        options.update(presolve="off")
    left = time_limit - (time.perf_counter() - began)
    if left <= 0:
        raise SolveTimeout(f"the time limit of {time_limit:g} s passed while building the model")
    status, values, info = b.model.solve(b.objective, left, options, first)
    seconds = time.perf_counter() - began
    if status == "user_limit" and values is None:
        raise SolveTimeout(f"no feasible plan found within the time limit of {time_limit:g} s")
    if values is None:
        return None
    counts = {c: (float(round(values[j])) if not relaxed else float(max(values[j], 0.0)))
              for j, c in zip(b.M, b.clist)}
    routing: dict[str, dict[str, float]] = {t.name: {} for t in app.tasks}
    for (tname, v), j in zip(b.vkeys, b.x):
        routing[tname][v] = max(float(values[j]), 0.0)
    bound = b.objective.const - info.mip_dual_bound if not relaxed else None
    objective = b.objective.const - info.objective_function_value
    gap = _gap(bound, objective, weights, sum(counts[c] * c.slices for c in b.clist))
    budgets = {t: (v.value(values) if isinstance(v, Lin) else float(v)) for t, v in b.L.items()} or None
    return Solution(counts, routing, status, seconds, relaxed,
                    gap, budgets=budgets,
                    bound=float(bound) if bound is not None and math.isfinite(bound) else None,
                    objective=float(objective),
                    points={k: f.value(values) for k, f in b.convex_args.items()})


def _gap(bound: float | None, objective: float, weights: Weights, slices: float) -> float | None:
    """How far the plan may be from the optimum: the MILP's dual bound less its objective, in slices' worth
    (beta each), over the plan's slices (for the fewest slices alone, HiGHS's own relative gap)."""
    if bound is None or not math.isfinite(bound) or weights.beta <= 0 or slices <= 0:
        return None
    return max(0.0, bound - objective) / (weights.beta * slices)


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


def _mig_layout_cuts(m: Model, clist: list[Candidate], M: list[int], gpus: int) -> None:
    """Valid inequalities of the A100/H100/H200 MIG layout (each GPU: a left half, memory slices 0-3,
    and a right half, 4-7, of which 1g/2g can use only 3 compute slices): a 7g takes both halves, a 4g
    the left one, a 3g either; a 3g beyond the right halves goes left and wastes one compute slice. A 2g
    starts only at memory slice 0, 2 or 4: three places a GPU, of which a 4g or a 7g takes two or three
    and a 3g at least one."""
    def count(size: int) -> Lin:
        return Lin.dot(M, [1.0 if c.slices == size else 0.0 for c in clist])
    n2, n3, n4, n7 = count(2), count(3), count(4), count(7)
    waste = m.col(0.0)
    compute = Lin.dot(M, [c.slices for c in clist])
    m.add(n7 * 2 + n4 + n3, hi=2 * gpus)
    m.add(n7 + n4, hi=gpus)
    m.add(waste - n3 - n7, lo=-gpus)
    m.add(compute + waste, hi=7 * gpus)
    m.add(n2 + n4 * 2 + n3 + n7 * 3, hi=3 * gpus)


def _patterns(m: Model, clist: list[Candidate], M: list[int], gpus: int,
              patterns: tuple[tuple[int, ...], ...], relaxed: bool) -> None:
    """Placement, exactly: P[k] GPUs take the k-th maximal pattern, at most ``gpus`` of them, and every
    size's segments fit in the patterns' places for it. A dozen integers on the A100; the layout cuts
    above are implied, but kept as the relaxation's cheaper part."""
    P = m.cols(len(patterns), 0.0, float(gpus), integer=not relaxed)
    m.add(Lin.dot(P, [1.0] * len(P)), hi=gpus)
    for size in sorted({c.slices for c in clist}):
        places = Lin.dot(P, [p.count(size) for p in patterns])
        m.add(places - Lin.dot(M, [1.0 if c.slices == size else 0.0 for c in clist]), lo=0.0)


def _latency_binds(app: AppSpec, cands: dict[str, list[Candidate]]) -> bool:
    """False when every path meets the SLO even with each task's slowest candidate."""
    slowest = {t: max((c.wc_latency_ms for c in cs), default=0.0) for t, cs in cands.items()}
    return any(sum(slowest[t] for t in p.tasks) > app.latency_slo_ms + 1e-9 for p in app.paths)
