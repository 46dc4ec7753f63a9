"""Demand traces: per-interval request rates, a synthetic diurnal day, and Poisson arrivals from them.

    python3 -m jigsawserve.orchestrator.workload.trace --out examples/traces/diurnal-synthetic.csv

A trace is piecewise constant: ``rates[i]`` req/s during ``[i * interval_s, (i + 1) * interval_s)``.
Pure (numpy only); bad files raise ``InputError`` naming ``file:line``.
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jigsawserve.orchestrator.errors import InputError

HEADER = ("interval_start_s", "rate_rps")
SYNTHETIC_PEAK_RPS = 1000.0


@dataclass(frozen=True, eq=False)
class Trace:
    """Request rates (req/s) over consecutive intervals of ``interval_s`` seconds, from time 0."""

    interval_s: float
    rates: np.ndarray

    def __post_init__(self) -> None:
        rates = np.array(self.rates, dtype=np.float64).reshape(-1)
        if not (math.isfinite(self.interval_s) and self.interval_s > 0):
            raise InputError(f"trace interval_s: expected a positive number of seconds, got {self.interval_s!r}")
        if rates.size == 0:
            raise InputError("trace rates: expected at least one interval")
        if not np.isfinite(rates).all() or (rates < 0).any():
            raise InputError("trace rates: expected finite rates >= 0 req/s")
        rates.setflags(write=False)
        object.__setattr__(self, "rates", rates)

    @property
    def duration_s(self) -> float:
        """Length of the whole trace in seconds."""
        return self.interval_s * len(self.rates)

    @property
    def peak_rps(self) -> float:
        """The highest interval rate."""
        return float(self.rates.max())

    @property
    def expected_requests(self) -> float:
        """Mean number of arrivals over the whole trace."""
        return float(self.rates.sum() * self.interval_s)


def _bump(hours: np.ndarray, centre: float, width: float) -> np.ndarray:
    """A Gaussian bump in hours of the day, wrapped around midnight."""
    d = (hours - centre + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (d / width) ** 2)


def synthetic_diurnal(seed: int = 0, bins: int = 288, bin_s: float = 300.0) -> Trace:
    """A SYNTHETIC day shaped like a web service's load, peak ``SYNTHETIC_PEAK_RPS``, deterministic by seed.

    Low at night (about 12 % of the peak around 04:00), a morning ramp from 06:00, a midday peak
    (12:30), an afternoon dip, the day's peak in the evening (20:30); multiplicative AR(1) noise
    (5 % standard deviation, correlated over ~20 minutes) and four short bursts (1-3 bins, x1.4-2.0).
    """
    if bins < 1 or not (math.isfinite(bin_s) and bin_s > 0):
        raise InputError(f"synthetic_diurnal: expected bins >= 1 and bin_s > 0, got {bins}, {bin_s}")
    rng = np.random.default_rng(seed)
    hours = ((np.arange(bins) + 0.5) * bin_s / 3600.0) % 24.0
    morning = 1.0 / (1.0 + np.exp(-(hours - 8.0) / 0.8)) * (1.0 - 1.0 / (1.0 + np.exp(-(hours - 23.0) / 0.9)))
    shape = (0.12 + 0.38 * morning + 0.30 * _bump(hours, 12.5, 1.6)
             + 0.50 * _bump(hours, 20.5, 1.7) - 0.08 * _bump(hours, 16.0, 1.2))
    phi, sigma = 0.75, 0.05                              # AR(1) on the log rate, stationary std sigma
    noise = np.empty(bins)
    noise[0] = rng.normal(0.0, sigma)
    for i in range(1, bins):
        noise[i] = phi * noise[i - 1] + rng.normal(0.0, sigma * math.sqrt(1.0 - phi ** 2))
    rates = shape * np.exp(noise)
    for start in rng.choice(bins, size=min(4, bins), replace=False):
        length = int(rng.integers(1, 4))
        rates[start:start + length] *= rng.uniform(1.4, 2.0)
    return Trace(bin_s, rates * (SYNTHETIC_PEAK_RPS / rates.max()))


def scale_to_peak(trace: Trace, peak_rps: float) -> Trace:
    """The same trace with its rates scaled so that its highest interval is ``peak_rps``."""
    if not (math.isfinite(peak_rps) and peak_rps > 0):
        raise InputError(f"peak: expected a positive rate in req/s, got {peak_rps!r}")
    if trace.peak_rps == 0:
        raise InputError("peak: the trace's rates are all 0, so it cannot be scaled to a peak")
    return Trace(trace.interval_s, trace.rates * (peak_rps / trace.peak_rps))


def with_burst(trace: Trace, factor: float = 1.5, fraction: float = 0.1, at: float = 0.45) -> Trace:
    """The trace with a burst: ``factor`` x its peak over ``fraction`` of its intervals, starting ``at`` that
    share of the day (a load the day's shape never warned of: what a plan's headroom and the apply speed
    must absorb)."""
    if not (factor > 0 and 0 < fraction <= 1 and 0 <= at < 1):
        raise InputError(f"burst: factor {factor!r} > 0, fraction {fraction!r} in (0, 1] and at {at!r} in [0, 1)")
    rates = np.array(trace.rates)
    start = int(at * len(rates))
    stop = min(len(rates), start + max(1, round(fraction * len(rates))))
    rates[start:stop] = factor * trace.peak_rps
    return Trace(trace.interval_s, rates)


def compress(trace: Trace, duration_s: float) -> Trace:
    """The whole trace replayed in ``duration_s`` seconds: same rates, intervals shortened alike."""
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise InputError(f"compress: expected a positive duration in seconds, got {duration_s!r}")
    return Trace(duration_s / len(trace.rates), trace.rates)


def arrivals(trace: Trace, seed: int = 0) -> np.ndarray:
    """Arrival times (s from 0, sorted) of a non-homogeneous Poisson process with the trace's
    piecewise-constant rate: Poisson counts per interval, uniform times within it."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(trace.rates * trace.interval_s)
    starts = np.repeat(np.arange(len(trace.rates)) * trace.interval_s, counts)
    return np.sort(starts + rng.random(starts.size) * trace.interval_s)


def poisson(rate: float, duration: float, seed: int = 0) -> np.ndarray:
    """Arrival times (s, sorted) of a Poisson process of ``rate`` req/s over ``duration`` seconds."""
    if not (math.isfinite(rate) and rate > 0):
        raise InputError(f"rate: expected a positive rate in req/s, got {rate!r}")
    if not (math.isfinite(duration) and duration > 0):
        raise InputError(f"duration: expected a positive number of seconds, got {duration!r}")
    return arrivals(Trace(duration, [rate]), seed)


def number(text: str, where: str) -> float:
    """``text`` as a finite float; an InputError naming ``where`` otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{where}: expected a number, got {text.strip()!r}") from None
    if not math.isfinite(value):
        raise InputError(f"{where}: expected a finite number, got {text.strip()!r}")
    return value


def _rows(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the file's lines that are neither blank nor ``#`` comments."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the trace: {exc}") from None
    rows = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    return [(n, line) for n, line in rows if line and not line.startswith("#")]


def _interval_csv(path: Path, rows: list[tuple[int, str]]) -> Trace:
    if len(rows) < 3:
        raise InputError(f"{path}: expected at least 2 intervals after the header, got {len(rows) - 1}")
    starts, rates = [], []
    for n, line in rows[1:]:
        fields = line.split(",")
        if len(fields) != 2:
            raise InputError(f"{path}:{n}: expected 2 fields ({','.join(HEADER)}), got {len(fields)}: {line!r}")
        start, rate = (number(f, f"{path}:{n}: {name}") for f, name in zip(fields, HEADER))
        if rate < 0:
            raise InputError(f"{path}:{n}: rate_rps: expected a rate >= 0, got {rate:g}")
        starts.append(start)
        rates.append(rate)
    interval = starts[1] - starts[0]
    if interval <= 0:
        raise InputError(f"{path}:{rows[2][0]}: interval_start_s: expected increasing starts, got "
                         f"{starts[0]:g} then {starts[1]:g}")
    for i, ((n, _), start) in enumerate(zip(rows[1:], starts)):
        expected = starts[0] + i * interval
        if abs(start - expected) > 1e-6 * max(1.0, abs(start)):
            raise InputError(f"{path}:{n}: interval_start_s: expected {expected:g} (intervals of {interval:g} s), "
                             f"got {start:g}")
    return Trace(interval, rates)


def _timestamps(path: Path, rows: list[tuple[int, str]], bin_s: float) -> Trace:
    times = np.array([number(line, f"{path}:{n}: arrival time (s)") for n, line in rows])
    span = times.max() - times.min()
    counts = np.bincount(((times - times.min()) // bin_s).astype(np.int64), minlength=max(1, math.ceil(span / bin_s)))
    return Trace(bin_s, counts / bin_s)


def load_trace(path: str | Path, bin_s: float = 1.0) -> Trace:
    """Read a trace: a per-interval CSV (header ``interval_start_s,rate_rps``, evenly spaced starts) or
    a timestamps file (one arrival time in seconds per line, any order), binned into ``bin_s``-second
    intervals from its first arrival. Lines starting with ``#`` and blank lines are skipped."""
    path = Path(path)
    if not (math.isfinite(bin_s) and bin_s > 0):
        raise InputError(f"bin_s: expected a positive number of seconds, got {bin_s!r}")
    rows = _rows(path)
    if not rows:
        raise InputError(f"{path}: empty trace (no lines besides comments)")
    first_n, first = rows[0]
    if tuple(f.strip() for f in first.split(",")) == HEADER:
        return _interval_csv(path, rows)
    if "," in first:
        raise InputError(f"{path}:{first_n}: expected the header {','.join(HEADER)!r} (per-interval CSV) or one "
                         f"arrival time in seconds per line, got {first!r}")
    return _timestamps(path, rows, bin_s)


def write_trace(trace: Trace, path: str | Path, comments: list[str]) -> None:
    """Write the per-interval CSV ``load_trace`` reads, after ``#`` comment lines."""
    lines = [f"# {c}" for c in comments] + [",".join(HEADER)]
    lines += [f"{i * trace.interval_s:g},{r:.3f}" for i, r in enumerate(trace.rates)]
    Path(path).write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description="Write the synthetic diurnal trace as a per-interval CSV.")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bins", type=int, default=288)
    ap.add_argument("--bin-s", type=float, default=300.0)
    args = ap.parse_args()
    trace = synthetic_diurnal(args.seed, args.bins, args.bin_s)
    command = shlex.join(["python3", "-m", "jigsawserve.orchestrator.workload.trace", *sys.argv[1:]])
    write_trace(trace, args.out, [
        "SYNTHETIC demand trace: no public production trace is installable here (no network), so this",
        "is a made-up web-service day, not a measurement (orchestrator/workload/trace.py, synthetic_diurnal).",
        f"Generated by: {command}",
        f"Seed {args.seed}: {len(trace.rates)} intervals of {trace.interval_s:g} s, low at night, morning ramp,",
        "midday and evening peaks, 5 % AR(1) noise and four short bursts; scaled to a peak of",
        f"{SYNTHETIC_PEAK_RPS:g} req/s (use --peak to rescale when replaying).",
        "Units: interval_start_s = seconds from the start of the trace; rate_rps = mean requests per",
        "second during that interval.",
    ])
    print(f"wrote {args.out}: {len(trace.rates)} intervals of {trace.interval_s:g} s, peak {trace.peak_rps:.1f} req/s, "
          f"mean {trace.rates.mean():.1f} req/s")


if __name__ == "__main__":
    main()
