"""Feature flags of the planner, as the paper's ablations.

A: accuracy scaling (without it only each task's most accurate variant).
S: spatial partitions, MIG sizes x MPS shares (without it whole GPUs only, one process each).
T: task-graph-informed budgets (without it static per-task latency, resource and accuracy budgets).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class Features:
    accuracy_scaling: bool = True
    spatial: bool = True
    task_graph: bool = True

    @classmethod
    def parse(cls, text: str) -> "Features":
        """Parse a subset of ``a``, ``s``, ``t`` (any order, ``+``/``,`` allowed) or ``none``."""
        t = text.strip().lower().replace("+", "").replace(",", "").replace(" ", "")
        if t == "none":
            return cls(False, False, False)
        bad = sorted(set(t) - set("ast"))
        if not t or bad:
            raise InputError(f"--features: {text!r} is not a subset of a, s, t or 'none'")
        return cls("a" in t, "s" in t, "t" in t)

    @property
    def label(self) -> str:
        name = "+".join(f.upper() for f, on in zip("ast", (self.accuracy_scaling, self.spatial, self.task_graph)) if on)
        return name or "none"


ALL_FEATURE_SETS = tuple(Features.parse(s) for s in ("none", "t", "a", "at", "s", "st", "as", "ast"))
