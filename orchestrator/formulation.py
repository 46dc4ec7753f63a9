"""The planning problem in cvxpy: integer instance counts per (task, variant, segment, batch).

Variables, per unit of source demand (see docs/planning.md for each linearisation):
  M[c]   instances of candidate c (integer; continuous in the relaxation)
  x[t,v] items of task t routed to variant v per source request
  y[c]   candidate c in use (binary), L[t] task t's worst-case latency   (only when T is on)
  r[t]   lower bound on log(accuracy of task t)                          (only when A is on)
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Iterator

import cvxpy as cp
import numpy as np

from .appspec import AppSpec
from .candidates import Candidate, allowed_variants, demand_bounds
from .features import Features

CHORD_POINTS = 16
# objective per ms of the tasks' worst-case latencies summed: a tie-break among plans of the same slices
# and (to 0.001 of the accuracy per 100 ms) the same accuracy, for the one with more latency slack
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
    (for the layout cuts) and the static budgets when T is off."""

    slices: int | None = None
    mem_slices: int | None = None
    mig_gpus: int | None = None
    task_slice_share: dict[str, float] | None = None
    task_accuracy: dict[str, float] | None = None


@dataclass
class Solution:
    counts: dict[Candidate, float]
    routing: dict[str, dict[str, float]]
    status: str
    seconds: float
    relaxed: bool


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """HiGHS prints its banner on the C-level stdout; keep stdout for the program's own output."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _chords(lo: float, hi: float) -> list[tuple[float, float]]:
    """(slope, intercept) of the chords of log on [lo, hi] at geometric breakpoints."""
    if hi <= lo * (1 + 1e-9):
        return [(0.0, math.log(lo))]
    pts = np.geomspace(lo, hi, CHORD_POINTS + 1)
    lines = []
    for a, b in zip(pts[:-1], pts[1:]):
        slope = (math.log(b) - math.log(a)) / (b - a)
        lines.append((slope, math.log(a) - slope * a))
    return lines


def exp_chord_slope(tau: float) -> float:
    """Slope of the chord of exp on [log tau, 0]: the objective's accuracy is 1 + slope * log-accuracy."""
    return 1.0 if tau >= 1 else (1 - tau) / (-math.log(tau))


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
    if limits.task_slice_share and limits.slices is not None and M is not None:
        for t in app.tasks:
            mask = np.array([c.task == t.name for c in clist], dtype=float)
            cons.append((mask * size) @ M <= limits.task_slice_share[t.name] * limits.slices)

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

    # Accuracy: r[t] <= log(N_t) - log(d_t) by chords of log N (conservative) and a tangent of
    # -log d (conservative); Jensen over paths (conservative); exact when each task has one variant.
    tau = app.accuracy_slo
    r: dict[str, cp.Expression | float] = {}
    for t in app.tasks:
        vs = allowed_variants(app, t.name, features)
        if len(vs) == 1:
            r[t.name] = 0.0
            continue
        acc = np.array([app.task(t.name).variant(v).accuracy for v in vs])
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
            d0 = math.sqrt(dmin * dmax)
            h = -math.log(d0) - (cp.sum(x[own]) - d0) / d0
        r[t.name] = g + h
    log_acc = [sum(r[t] for t in p.tasks) for p in app.paths]
    has_acc = any(not isinstance(v, float) for v in r.values())
    objective = -weights.beta * slices
    if has_acc:
        mean_log = sum(p.weight * s for p, s in zip(app.paths, log_acc))
        if graph_aware and tau < 1:
            cons.append(mean_log >= math.log(tau))
        objective = objective + weights.alpha * exp_chord_slope(tau) * mean_log

    if any(not isinstance(v, float) for v in L.values()):
        objective = objective - LATENCY_TIE_BREAK * sum(L.values())

    problem = cp.Problem(cp.Maximize(objective), cons)
    opts = {"time_limit": float(time_limit)} if not relaxed else {}
    try:
        with warnings.catch_warnings(), _stdout_to_stderr():
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
    return Solution(counts, routing, str(problem.status), seconds, relaxed)


def _mig_layout_cuts(clist: list[Candidate], M: cp.Variable, gpus: int) -> list[cp.Constraint]:
    """Valid inequalities of the A100/H100/H200 MIG layout (each GPU: a left half, memory slices 0-3,
    and a right half, 4-7, of which 1g/2g can use only 3 compute slices): a 7g takes both halves, a 4g
    the left one, a 3g either; a 3g beyond the right halves goes left and wastes one compute slice."""
    def count(size: int) -> cp.Expression:
        mask = np.array([c.slices == size for c in clist], dtype=float)
        return mask @ M
    n3, n4, n7 = count(3), count(4), count(7)
    waste = cp.Variable(nonneg=True, name="waste3g")
    compute = np.array([c.slices for c in clist], dtype=float) @ M
    return [2 * n7 + n4 + n3 <= 2 * gpus, n7 + n4 <= gpus, waste >= n3 + n7 - gpus,
            compute + waste <= 7 * gpus]


def _latency_binds(app: AppSpec, cands: dict[str, list[Candidate]]) -> bool:
    """False when every path meets the SLO even with each task's slowest candidate."""
    slowest = {t: max((c.wc_latency_ms for c in cs), default=0.0) for t, cs in cands.items()}
    return any(sum(slowest[t] for t in p.tasks) > app.latency_slo_ms + 1e-9 for p in app.paths)
