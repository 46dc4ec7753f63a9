"""Profiles: measured p95 batch latency and segment throughput per variant x segment x batch.

Canonical CSV columns: ``variant,gpu,mig,mps,batch,latency_ms,throughput_rps`` and optionally
``memory_mb``. ``mig`` is the segment size in slices, ``mps`` the number of identical MPS processes
sharing it, ``latency_ms`` the p95 of one batch in one process and ``throughput_rps`` that of the
whole segment. Rows with a zero latency or throughput record a configuration that did not run
(out of memory) and are skipped.

The profilers (tools/profile_cpu.py, tools/profile_gpu.py) measure a variant's batches in one segment
through ``screened``: on a busy machine one row can come out several times too slow (on the 2-core
development machine 127.9 ms at batch 1 against 34.4 ms at batch 2), and the planner would take it
at its word. Rows whose latency falls as the batch grows, whose throughput falls, or whose repeats
spread widely are measured again, and a warning names those that stay so.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .appspec import AppSpec
from ..errors import InputError
from .gpus import GpuType

COLUMNS = ("variant", "gpu", "mig", "mps", "batch", "latency_ms", "throughput_rps")


@dataclass(frozen=True)
class ProfilePoint:
    variant: str
    gpu: str
    mig: int
    mps: int
    batch: int
    latency_ms: float
    throughput_rps: float
    memory_mb: float | None = None


@dataclass(frozen=True)
class Profiles:
    """All runnable profile points, with lookups by (profile variant, gpu)."""

    points: tuple[ProfilePoint, ...]

    def gpus(self) -> list[str]:
        return sorted({p.gpu for p in self.points})

    def for_variant(self, variant: str, gpu: str) -> list[ProfilePoint]:
        return [p for p in self.points if p.variant == variant and p.gpu == gpu]


@dataclass(frozen=True)
class Sample:
    """One row's measurement: the p95 and the median of its repeats' times (ms), and what a profiler keeps
    beside them (the GPU profiler: mean batch time and the segment's throughput)."""

    p95_ms: float
    median_ms: float
    mean_ms: float | None = None
    throughput_rps: float | None = None

    @property
    def spread(self) -> float:
        """How far the p95 lies above the median, as a share of the median."""
        return self.p95_ms / self.median_ms - 1 if self.median_ms > 0 else math.inf


@dataclass(frozen=True)
class Screen:
    """What makes a variant's row in one segment suspicious, and how often it is measured again."""

    latency_drop: float = 0.2     # its p95 is below the next smaller batch's by more than this share
    throughput_drop: float = 0.5  # its throughput (batch / p95) is below the next smaller batch's by more
    #                               than this share (a collapse: a larger batch may well pay more per item)
    spread_limit: float = 1.0     # its p95 is more than 1 + this times its median: the repeats were disturbed
    retries: int = 2              # suspicious rows are measured at most this many more times


def suspects(samples: dict[int, Sample], screen: Screen = Screen()) -> list[tuple[tuple[int, ...], str]]:
    """What looks wrong in one variant's rows in one segment (``Screen``): per finding, the batches of the
    rows concerned and why. A latency or throughput that falls concerns both rows of the pair, since
    either may be off."""
    found = [((b, ), f"batch {b}'s p95 {s.p95_ms:.1f} ms is {s.p95_ms / s.median_ms:.1f}x its median "
                     f"{s.median_ms:.1f} ms") for b, s in sorted(samples.items()) if s.spread > screen.spread_limit]
    batches = sorted(samples)
    for a, b in zip(batches, batches[1:]):
        la, lb = samples[a].p95_ms, samples[b].p95_ms
        if lb < la * (1 - screen.latency_drop):
            found.append(((a, b), f"latency falls from {la:.1f} ms at batch {a} to {lb:.1f} ms at batch {b}"))
        elif b / lb < a / la * (1 - screen.throughput_drop):
            found.append(((a, b), f"throughput falls from {1000 * a / la:.0f}/s at batch {a} to {1000 * b / lb:.0f}/s "
                                  f"at batch {b} ({la:.1f} -> {lb:.1f} ms)"))
    return found


def screened(batches: Sequence[int], measure: Callable[[int], Sample], label: str,
             warn: Callable[[str], None], screen: Screen = Screen()) -> dict[int, Sample]:
    """``measure`` at every batch, then the rows of the ``suspects`` measured again, at most
    ``screen.retries`` times, until none is left; per batch the sample with the lowest p95 of its
    measurements (another process on the machine only ever slows a measurement down). ``warn`` gets
    a line per finding left (``label``: the variant and segment), with every measurement of its rows."""
    tried = {b: [measure(b)] for b in batches}

    def best() -> dict[int, Sample]:
        return {b: min(samples, key=lambda s: s.p95_ms) for b, samples in tried.items()}

    for _ in range(screen.retries):
        again = sorted({b for rows, _ in suspects(best(), screen) for b in rows})
        if not again:
            break
        for b in again:
            tried[b].append(measure(b))
    final = best()
    for rows, why in suspects(final, screen):
        seen = "; ".join(f"batch {b} measured {len(tried[b])}x, p95 {', '.join(f'{s.p95_ms:.1f}' for s in tried[b])} ms"
                         for b in rows)
        warn(f"{label}: {why} ({seen}); its profile rows may be off")
    return final


def _parse_row(row: dict[str, str], where: str) -> ProfilePoint | None:
    def num(col: str, kind: type) -> float:
        text = (row.get(col) or "").strip()
        try:
            value = kind(float(text)) if kind is int else float(text)
        except ValueError:
            raise InputError(f"{where}: column {col!r}: expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < 0:
            raise InputError(f"{where}: column {col!r}: expected a finite value >= 0, got {text!r}")
        if kind is int and float(text) != int(float(text)):
            raise InputError(f"{where}: column {col!r}: expected an integer, got {text!r}")
        return value

    latency, thr = num("latency_ms", float), num("throughput_rps", float)
    mig, mps, batch = int(num("mig", int)), int(num("mps", int)), int(num("batch", int))
    for col, val in (("mig", mig), ("mps", mps), ("batch", batch)):
        if val < 1:
            raise InputError(f"{where}: column {col!r}: must be >= 1, got {val}")
    if latency == 0 or thr == 0:
        return None
    mem_text = (row.get("memory_mb") or "").strip()
    memory = num("memory_mb", float) if mem_text else None
    variant, gpu = (row.get("variant") or "").strip(), (row.get("gpu") or "").strip().lower()
    if not variant or not gpu:
        raise InputError(f"{where}: columns 'variant' and 'gpu' must not be empty")
    return ProfilePoint(variant, gpu, mig, mps, batch, latency, thr, memory)


def _read_csv(path: Path) -> list[ProfilePoint]:
    points = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)} (expected {','.join(COLUMNS)}[,memory_mb])")
        for i, row in enumerate(reader, start=2):
            point = _parse_row(row, f"{path}:{i}")
            if point is not None:
                points.append(point)
    return points


def load_profiles(path: str | Path) -> Profiles:
    """Load one CSV file, or every ``*.csv`` in a directory."""
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.csv"))
        if not files:
            raise InputError(f"{p}: no *.csv profile files in this directory")
    elif p.is_file():
        files = [p]
    else:
        raise InputError(f"{p}: no such profile file or directory")
    points: list[ProfilePoint] = []
    for f in files:
        points.extend(_read_csv(f))
    if not points:
        raise InputError(f"{p}: no runnable profile rows (all rows have zero latency or throughput)")
    return Profiles(tuple(points))


def save_profiles(profiles: Profiles, path: str | Path) -> None:
    """Write ``profiles`` as a canonical CSV (``memory_mb`` where any row has it); the rows that did not
    run are not in a ``Profiles`` and so not written."""
    with_memory = any(p.memory_mb is not None for p in profiles.points)
    columns = COLUMNS + (("memory_mb",) if with_memory else ())
    with Path(path).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for p in profiles.points:
            row = [p.variant, p.gpu, p.mig, p.mps, p.batch, f"{p.latency_ms:.4f}", f"{p.throughput_rps:.3f}"]
            writer.writerow(row + ([] if not with_memory else ["" if p.memory_mb is None else p.memory_mb]))


def check_coverage(app: AppSpec, profiles: Profiles, gpu: GpuType) -> None:
    """Every variant of the app needs runnable profile rows on ``gpu`` with valid segment sizes."""
    for task in app.tasks:
        for v in task.variants:
            rows = profiles.for_variant(v.profile, gpu.name)
            if not rows:
                have = sorted({pt.gpu for pt in profiles.points if pt.variant == v.profile})
                hint = f" (it has rows for {', '.join(have)})" if have else ""
                raise InputError(f"tasks.{task.name}.variants.{v.name}: no profile for "
                                 f"{v.profile!r} on gpu {gpu.name!r}{hint}")
            for r in rows:
                gpu.shape(r.mig)


def default_gpu(profiles: Profiles) -> str:
    """The profiles' GPU type when there is exactly one."""
    gpus = profiles.gpus()
    if len(gpus) != 1:
        raise InputError(f"profiles cover several gpu types ({', '.join(gpus)}): choose one with --gpu-type")
    return gpus[0]
