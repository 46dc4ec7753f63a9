"""Pure scheduling logic of a stage: weighted routing, fan-out counts, runner backlogs and early-drop
decisions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass
class Route:
    model: str
    variant: str
    share: float
    batch: int
    latency_ms: float
    throughput_rps: float


class WeightedRoundRobin:
    """Smooth weighted round robin: after n picks each route has had within one pick of share * n."""

    def __init__(self, routes: list[Route]) -> None:
        total = sum(r.share for r in routes)
        if not routes or total <= 0:
            raise ValueError("a stage needs at least one route with a positive share")
        self.routes = routes
        self._weights = [r.share / total for r in routes]
        self._current = [0.0] * len(routes)

    def pick(self) -> Route:
        for i, w in enumerate(self._weights):
            self._current[i] += w
        best = max(range(len(self.routes)), key=lambda i: self._current[i])
        self._current[best] -= 1.0
        return self.routes[best]


class FanOut:
    """Items sent downstream per upstream item, per variant; fractional factors carry a remainder so
    that the long-run ratio is exact and the count per request deterministic."""

    def __init__(self, factors: dict[str, float], default: float) -> None:
        self.factors = factors
        self.default = default
        self._carry: dict[str, float] = {}

    def count(self, variant: str, rows: int) -> int:
        exact = self.factors.get(variant, self.default) * rows + self._carry.get(variant, 0.0)
        n = int(exact)
        self._carry[variant] = exact - n
        return n


@dataclass(frozen=True)
class DropDecision:
    drop: bool
    reason: str = ""


def drop_decision(now_ns: int, deadline_ns: int, reserve_ms: float, own_fastest_ms: float, downstream_ms: float,
                  task: str) -> DropDecision:
    """Drop when even the fastest variant here and on every remaining task, with no batching delay,
    cannot finish ``reserve_ms`` before the deadline."""
    need_ns = int((own_fastest_ms + downstream_ms) * 1e6)
    left_ns = deadline_ns - now_ns
    if left_ns - reserve_ms * 1e6 >= need_ns:
        return DropDecision(False)
    return DropDecision(True, f"jigsaw: request dropped at stage {task}: {left_ns / 1e6:.1f} ms left before "
                              f"its deadline, the fastest remaining path needs {need_ns / 1e6:.1f} ms "
                              f"and {reserve_ms:.1f} ms are held in reserve")


def backlog_ms(profiled_ms: float, items_ahead: int, throughput_rps: float) -> float:
    """When a request sent now to a runner with ``items_ahead`` items outstanding answers: after the
    runner has served those at its planned throughput, plus its profiled p95 for this one."""
    return profiled_ms + 1000.0 * items_ahead / throughput_rps


def pace(answers: float, observed_ms: float, estimated_ms: float, idle_s: float, min_answers: float = 2.0,
         idle_limit_s: float = 1.0) -> float:
    """How much slower than estimated (``backlog_ms``) a runner has answered lately: its recent
    answers' observed latencies summed over their estimates summed (``SharedBacklog.totals``: over all
    graph instances, each answer weighted by its age), at least 1; and 1 when fewer than
    ``min_answers`` recent answers came or none for ``idle_limit_s`` (so that a runner shed entirely
    is tried again). A runner slower than its profile (a neighbour's load, an apply's captures, a
    wrong profile) drains its backlog more slowly than planned; the estimates follow it before the
    controller's replan does."""
    if answers < min_answers or idle_s > idle_limit_s or estimated_ms <= 0:
        return 1.0
    return max(1.0, observed_ms / estimated_ms)


def choose_route(picked: Route, routes: list[Route], rows: int, left_ms: float, downstream_ms: float,
                 estimate: Callable[[Route], float]) -> Route | None:
    """The route for a chunk of ``rows``: the one the weighted round robin ``picked`` when its
    ``estimate`` (ms) leaves ``downstream_ms`` before the deadline, ``left_ms`` away; else the route of
    the plan that does (and takes ``rows`` in one batch) with the soonest estimate; None when none
    does."""
    if estimate(picked) + downstream_ms <= left_ms:
        return picked
    fits = [r for r in routes if r.batch >= rows and estimate(r) + downstream_ms <= left_ms]
    return min(fits, key=estimate) if fits else None
