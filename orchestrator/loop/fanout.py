"""Measured fan-out: per edge and parent variant, the child items the edge's adapter made per parent item
(the graph model's ``jigsaw_edge_parent_items_total`` and ``jigsaw_edge_child_items_total``), and the app
with its edge factors replaced by what was measured.

A typed app's fan-out is the data's (lines per image, objects per frame): the spec's ``factor`` is a guess
that sizes the child task's runners until it is measured. The paper profiles fan-out per variant; here the
controller measures it on the served traffic (``Controller._refine_fanout``).
"""
from __future__ import annotations

import copy
import math
from typing import Mapping

from ..spec.appspec import AppSpec, parse_app
from ..serving.metrics import Scrape

PARENTS = "jigsaw_edge_parent_items_total"
CHILDREN = "jigsaw_edge_child_items_total"
FLOOR = 0.01  # an edge that made no child items: the smallest factor a spec takes (factors are > 0)

Key = tuple[str, str, str]  # (parent task, child task, parent variant)


def edge_counts(s: Scrape, app: str) -> dict[Key, tuple[float, float]]:
    """(parent items adapted, child items made) so far per (parent, child, parent variant) of ``app``."""
    parents = s.by_label(PARENTS, "parent", "child", "variant", app=app)
    children = s.by_label(CHILDREN, "parent", "child", "variant", app=app)
    return {k: (n, children.get(k, 0.0)) for k, n in parents.items()}


class FanoutMeter:
    """Per (edge, parent variant), the items counted since the meter's first scrape, summed across counter
    restarts (an apply that reloads the graph model starts its counters from 0 again)."""

    def __init__(self) -> None:
        self.last: dict[Key, tuple[float, float]] | None = None
        self.totals: dict[Key, tuple[float, float]] = {}

    def update(self, counts: Mapping[Key, tuple[float, float]]) -> None:
        """Add the increases since the previous scrape (the first one only sets the baseline)."""
        if self.last is not None:
            for key, (p, c) in counts.items():
                lp, lc = self.last.get(key, (0.0, 0.0))
                tp, tc = self.totals.get(key, (0.0, 0.0))
                dp, dc = (p, c) if p < lp else (p - lp, c - lc)  # a restart counts from 0
                self.totals[key] = (tp + dp, tc + dc)
        self.last = dict(counts)

    def factor(self, key: Key) -> tuple[float, float, float]:
        """(measured factor, parent items, child items) of ``key`` so far; the factor is 0 before any."""
        p, c = self.totals.get(key, (0.0, 0.0))
        return (c / p if p else 0.0), p, c


def drifted(measured: float, planned: float, parents: float, drift: float, z: float) -> bool:
    """Whether a measured factor differs from the planned one by more than ``drift`` of it and by more than
    ``z`` standard errors of the measurement, so that a few parents with many or few children each do not
    replan the app. The standard error takes each parent's child count as Poisson around the measured mean
    (sqrt(measured / parents)): an approximation, close for counts of detected objects or text lines, which
    vary about that much from parent to parent."""
    stderr = math.sqrt(max(measured, FLOOR) / parents) if parents > 0 else math.inf
    return abs(measured - planned) > max(drift * planned, z * stderr)


def with_factors(app: AppSpec, factors: Mapping[Key, float]) -> AppSpec:
    """``app`` re-parsed from its document with ``factors`` as its edges' per-variant factors (the plan
    carries the document, so the rendered repository and the report see what the planner used)."""
    doc = copy.deepcopy(dict(app.doc))
    edges = []
    for body in doc.get("edges") or []:
        body = dict(body)
        given = {v: round(max(f, FLOOR), 4) for (src, dst, v), f in factors.items()
                 if (src, dst) == (body["from"], body["to"])}
        if given:
            body["factors"] = {**(body.get("factors") or {}), **given}
        edges.append(body)
    doc["edges"] = edges
    return parse_app(doc, origin=f"app {app.name} with measured fan-out")
