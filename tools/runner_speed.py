"""How fast a recorded run's runners really ran against their profiles, and profiles refined to match.

A run's ``events.jsonl`` keeps, at every controller step, the runner counters of the plan in force
(``Controller.record_metrics``). Per step and runner: the mean batch time against the profiled p95 at
the batch that ran (``jigsawserve.orchestrator.loop.refinement.batch_times_ms``, the controller's own judgement), and
how busy its processes were. Per variant and segment shape, over one or more runs: a quantile of the
ratios of the steps it was busy at least half the time (the median by default). A runner that idles
runs fast (alone on a quiet GPU, small batches); what a plan's capacity depends on is its speed busy.
``jigsaw refine-profiles`` scales the profile rows of every shape that ran slower than ``min_ratio`` by
that ratio: the slowdowns a busy GPU showed (on the H200, MIG emulated with MPS: neighbours share
memory bandwidth and caches) carried into the next day's plans. Shapes that never ran keep their rows,
or with ``--extend`` take the ratio of the nearest shape of the same variant and process count
(``extended``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jigsawserve.orchestrator.spec.appspec import AppSpec, parse_app
from jigsawserve.orchestrator.loop.controller import RUNNER_COUNTERS
from jigsawserve.orchestrator.errors import InputError
from jigsawserve.orchestrator.serving.metrics import increase
from jigsawserve.orchestrator.planning.plan import Plan
from jigsawserve.orchestrator.spec.profiles import Profiles
from jigsawserve.orchestrator.loop.refinement import batch_times_ms, scaled
from jigsawserve.orchestrator.serving.render import runner_name

Shape = tuple[str, str, int, int]  # (profile variant, gpu, mig, mps)


@dataclass(frozen=True)
class Observation:
    """One runner over one controller step."""

    t: float
    runner: str
    shape: Shape
    batches: float
    batch: float        # rows that ran per batch, padding included
    rows: float         # items requested per batch
    queue_ms: float     # a request's mean wait in the runner's queue
    measured_ms: float  # mean batch time
    profiled_ms: float  # profiled p95 at ``batch``
    busy: float         # share of the step its processes spent in batches

    @property
    def ratio(self) -> float:
        return self.measured_ms / self.profiled_ms


def _events(run: Path) -> list[dict]:
    path = run / "events.jsonl"
    if not path.is_file():
        raise InputError(f"{run}: no events.jsonl (a run directory of `jigsaw experiment` or bench/h200_eval.py)")
    lines = path.read_text().splitlines()
    return sorted((json.loads(line) for line in lines if line.strip()), key=lambda e: e["t"])


def observations(run: Path, profiles: Profiles, app: AppSpec | None = None,
                 min_batches: int = 20) -> list[Observation]:
    """Per step and runner of the plan in force, those that ran at least ``min_batches`` batches since
    the step before; the app is the plans' own (``app_spec``) unless ``app`` is given."""
    plan, spec, prev, prev_t, out = None, app, None, 0.0, []
    for e in _events(run):
        if e["kind"] == "plan":
            plan = Plan.from_json(e["plan"])
            spec = app or parse_app(plan.app_spec, origin=f"{run}: plan app_spec")
        if e["kind"] != "metrics" or "runners" not in e:
            continue
        for name, now in e["runners"].items():
            entry = next((x for x in plan.entries if runner_name(spec.name, x) == name), None) if plan else None
            before = (prev or {}).get(name)
            if entry is None or before is None or spec is None:  # a runner the step before did not count
                continue
            d = {k: increase(before.get(k, 0.0), now.get(k, 0.0)) for k in RUNNER_COUNTERS}
            times = batch_times_ms(spec, profiles, plan.gpu_type, entry, d) if d["batches"] >= min_batches else None
            if times is None or not times[1]:
                continue
            profile = spec.task(entry.task).variant(entry.variant).profile
            processes = entry.count * entry.mps
            busy = d["batches"] * times[0] / 1000 / max(e["t"] - prev_t, 1e-9) / processes
            out.append(Observation(e["t"], name, (profile, plan.gpu_type, entry.mig, entry.mps), d["batches"],
                                   (d["rows"] + d["padding"]) / d["batches"], d["rows"] / d["batches"],
                                   d["queue_us"] / d["requests"] / 1000, times[0], times[1], busy))
        prev, prev_t = e["runners"], e["t"]
    return out


def slowdowns(obs: list[Observation], quantile: float = 0.5, min_steps: int = 3,
              min_busy: float = 0.5) -> dict[Shape, tuple[float, int]]:
    """Per shape busy at least ``min_busy`` of the time in at least ``min_steps`` steps: (the ``quantile``
    of its ratios in those steps, the steps)."""
    by_shape: dict[Shape, list[float]] = {}
    for o in obs:
        if o.busy >= min_busy:
            by_shape.setdefault(o.shape, []).append(o.ratio)
    return {shape: (float(np.quantile(r, quantile)), len(r)) for shape, r in sorted(by_shape.items())
            if len(r) >= min_steps}


def extended(profiles: Profiles, found: dict[Shape, tuple[float, int]]) -> dict[Shape, tuple[Shape, float]]:
    """For each profiled shape not in ``found`` whose variant ran on a shape with the same process count:
    (that shape, its ratio), taking the nearest MIG size, and of two as near the larger ratio. A busy
    GPU slows a variant down alike on segments shared alike (on the H200, every emulated segment shares
    the memory bandwidth); a shape a plan never chose would otherwise keep its quiet-GPU rows, and the
    planner would favour it for that alone."""
    out: dict[Shape, tuple[Shape, float]] = {}
    for shape in sorted({(p.variant, p.gpu, p.mig, p.mps) for p in profiles.points} - set(found)):
        variant, gpu, mig, mps = shape
        seen = [(abs(m - mig), -r, (v, g, m, n)) for (v, g, m, n), (r, _) in found.items()
                if (v, g, n) == (variant, gpu, mps)]
        if seen:
            _, neg_ratio, source = min(seen)
            out[shape] = (source, -neg_ratio)
    return out


def refined(profiles: Profiles, found: dict[Shape, tuple[float, int]], min_ratio: float = 1.05) -> Profiles:
    """``profiles`` with every shape whose slowdown is over ``min_ratio`` scaled by it."""
    for (variant, gpu, mig, mps), (ratio, _) in found.items():
        if ratio > min_ratio:
            profiles = scaled(profiles, variant, gpu, mig, mps, ratio)
    return profiles
