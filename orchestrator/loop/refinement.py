"""Profile refinement: a runner's measured batch time against its profile, and profiles slowed down to match.

Pure functions over profiles and a runner's counters; the controller refines online
(``Controller._refine``), ``jigsaw refine-profiles`` offline from recorded runs (``tools/runner_speed.py``).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..spec.appspec import AppSpec
from ..planning.plan import Entry
from ..spec.profiles import ProfilePoint, Profiles


def scaled(profiles: Profiles, variant: str, gpu: str, mig: int, mps: int, ratio: float) -> Profiles:
    """``profiles`` with one variant's rows on one segment shape slowed down by ``ratio``."""
    return Profiles(tuple(replace(p, latency_ms=p.latency_ms * ratio, throughput_rps=p.throughput_rps / ratio)
                          if (p.variant, p.gpu, p.mig, p.mps) == (variant, gpu, mig, mps) else p
                          for p in profiles.points))


def expected_ms(points: list[ProfilePoint], batch: float) -> float | None:
    """Profiled p95 at a (possibly fractional) mean batch, linear between profiled batches."""
    pts = sorted((p.batch, p.latency_ms) for p in points)
    if not pts:
        return None
    return float(np.interp(batch, [b for b, _ in pts], [lat for _, lat in pts]))


def batch_times_ms(app: AppSpec, profiles: Profiles, gpu: str, e: Entry,
                   d: dict[str, float]) -> tuple[float, float | None] | None:
    """Runner ``e``'s mean batch time over an interval and its profiled p95 on its segment at the batch
    that ran (ms), from the increases ``d`` of its runner counters (``controller.RUNNER_COUNTERS``'
    keys); None when it answered nothing. The batch that ran is the rows requested plus the rows the
    runner padded its batches with up to a size it captured; Triton adds a batch's compute time to its
    counter once per request in the batch (the dynamic batcher merges the stages' requests), so the
    mean batch time is that counter over the requests."""
    if d["batches"] <= 0 or d["requests"] <= 0:
        return None
    profile = app.task(e.task).variant(e.variant).profile
    points = [p for p in profiles.for_variant(profile, gpu) if (p.mig, p.mps) == (e.mig, e.mps)]
    measured = d["compute_us"] / d["requests"] / 1000
    return measured, expected_ms(points, (d["rows"] + d["padding"]) / d["batches"])
