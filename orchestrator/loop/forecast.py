"""Forecasters of the next interval's demand (req/s) from the rates observed in past intervals.

Common interface: ``observe(rate)`` after each interval, ``forecast(steps)`` for the interval ``steps``
ahead (1: the next one). Pure
(numpy only); ``bench/forecast.py`` compares them on the shipped trace. ``Dispersion`` measures how much
noisier than Poisson the arrivals are, so that the controller can tell noise from a change in demand.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Protocol

import numpy as np


class Forecaster(Protocol):
    """Anything that forecasts an upcoming interval's rate from the rates observed so far."""

    def observe(self, rate: float) -> None: ...

    def forecast(self, steps: int = 1) -> float: ...


def _checked(rate: float) -> float:
    rate = float(rate)
    if not (math.isfinite(rate) and rate >= 0):
        raise ValueError(f"observed rate: expected a finite rate >= 0 req/s, got {rate!r}")
    return rate


class MovingAverage:
    """The paper's baseline: the mean of the last ``window`` intervals plus ``slack`` (a fraction)."""

    def __init__(self, window: int = 5, slack: float = 0.05) -> None:
        if window < 1 or slack < 0:
            raise ValueError(f"MovingAverage: expected window >= 1 and slack >= 0, got {window}, {slack}")
        self.slack = slack
        self._recent: deque[float] = deque(maxlen=window)

    def observe(self, rate: float) -> None:
        self._recent.append(_checked(rate))

    def forecast(self, steps: int = 1) -> float:
        """The same for every ``steps`` (a moving average has no trend)."""
        if not self._recent:
            raise RuntimeError("MovingAverage: forecast() before any observe()")
        return sum(self._recent) / len(self._recent) * (1 + self.slack)


class HoltQuantile:
    """Holt's double exponential smoothing (level + trend) times ``1 + slack``, where the slack is the
    ``quantile`` of the last ``window`` relative one-step errors (actual / point forecast - 1), at
    least 0; ``initial_slack`` until 3 errors are known.

    The trend removes the moving average's lag on ramps (under-provisioning going up, over going
    down); the slack adapts to how noisy the recent past was instead of a fixed 5 %. The defaults
    were picked from a small grid (alpha 0.5/0.7, beta 0.1/0.2, window 12/24/36, quantile 0.7-0.9)
    on synthetic diurnal traces: see bench/README.md, "Demand forecasting".
    """

    def __init__(self, alpha: float = 0.7, beta: float = 0.1, window: int = 24, quantile: float = 0.8,
                 initial_slack: float = 0.05) -> None:
        if not (0 < alpha <= 1 and 0 <= beta <= 1 and window >= 3 and 0 <= quantile <= 1 and initial_slack >= 0):
            raise ValueError(f"HoltQuantile: expected 0 < alpha <= 1, 0 <= beta <= 1, window >= 3, "
                             f"0 <= quantile <= 1, initial_slack >= 0; got {alpha}, {beta}, {window}, "
                             f"{quantile}, {initial_slack}")
        self.alpha, self.beta, self.quantile, self.initial_slack = alpha, beta, quantile, initial_slack
        self._level: float | None = None
        self._trend = 0.0
        self._errors: deque[float] = deque(maxlen=window)

    def _point(self, steps: int = 1) -> float:
        assert self._level is not None
        return max(0.0, self._level + steps * self._trend)

    def observe(self, rate: float) -> None:
        rate = _checked(rate)
        if self._level is None:
            self._level = rate
            return
        point = self._point()
        if point > 0:
            self._errors.append(rate / point - 1)
        previous = self._level
        self._level = self.alpha * rate + (1 - self.alpha) * (self._level + self._trend)
        self._trend = self.beta * (self._level - previous) + (1 - self.beta) * self._trend

    def slack(self) -> float:
        """The current multiplicative slack over the point forecast."""
        if len(self._errors) < 3:
            return self.initial_slack
        return max(0.0, float(np.quantile(self._errors, self.quantile)))

    def forecast(self, steps: int = 1) -> float:
        """Level + ``steps`` x trend, times 1 + the one-step slack."""
        if self._level is None:
            raise RuntimeError("HoltQuantile: forecast() before any observe()")
        return self._point(steps) * (1 + self.slack())


class Dispersion:
    """The arrivals' index of dispersion (a count's variance over its mean: 1 for Poisson arrivals, more
    when the rate itself fluctuates), measured from the counts of consecutive intervals.

    Per three consecutive intervals, the second divided difference of their mean rates (which a rate
    changing linearly in time leaves at 0: a ramp is not noise), divided by its standard deviation for
    Poisson arrivals at their mean rate; D is the variance of the last ``window`` of them, estimated from
    the smallest ``KEEP`` of them (squared, over what that share of a normal variable's squares averages),
    so that the few kinks where a ramp starts or ends do not count as noise either. At least 1
    (arrivals are never less noisy than Poisson for the
    controller's purposes) and 1 until ``least`` of them were seen; three intervals with fewer than
    ``MIN_COUNT`` arrivals on average give none (too few for a normal approximation of their counts).
    """

    MIN_COUNT = 10.0
    KEEP = 0.8
    # E[u^2 | |u| < c] for a standard normal u, c its two-sided KEEP quantile (1.2816): 1 - 2c phi(c) / KEEP
    KEPT_SQUARE = 1 - 2 * 1.2816 * math.exp(-1.2816 ** 2 / 2) / math.sqrt(2 * math.pi) / KEEP

    def __init__(self, window: int = 48, least: int = 8) -> None:
        if not (least >= 1 and window >= least):
            raise ValueError(f"Dispersion: expected window >= least >= 1, got {window}, {least}")
        self.least = least
        self._last: deque[tuple[float, float, float]] = deque(maxlen=3)   # (mid time, count, seconds)
        self._scores: deque[float] = deque(maxlen=window)
        self._t = 0.0

    def observe(self, count: float, seconds: float) -> None:
        """``count`` arrivals over the ``seconds`` right after the previous observation's."""
        count, seconds = _checked(count), float(seconds)
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"Dispersion: expected an interval of > 0 s, got {seconds!r}")
        self._last.append((self._t + seconds / 2, count, seconds))
        self._t += seconds
        if len(self._last) < 3:
            return
        (t1, n1, d1), (t2, n2, d2), (t3, n3, d3) = self._last
        mean = (n1 + n2 + n3) / (d1 + d2 + d3)
        if n1 + n2 + n3 < 3 * self.MIN_COUNT:
            return
        c1, c3 = 1 / (t2 - t1), 1 / (t3 - t2)
        diff = c3 * (n3 / d3 - n2 / d2) - c1 * (n2 / d2 - n1 / d1)
        self._scores.append(diff / math.sqrt(mean * (c1 ** 2 / d1 + (c1 + c3) ** 2 / d2 + c3 ** 2 / d3)))

    def index(self) -> float:
        """D (>= 1): a count over ``s`` seconds at rate ``r`` varies with a standard deviation of
        ``sqrt(D r s)``."""
        if len(self._scores) < self.least:
            return 1.0
        squares = np.sort(np.square(self._scores))[:max(1, round(self.KEEP * len(self._scores)))]
        return max(1.0, float(squares.mean()) / self.KEPT_SQUARE)


def one_step_forecasts(forecaster: Forecaster, rates: Iterable[float]) -> np.ndarray:
    """Feed ``rates`` in order; element i is the forecast for interval i + 1 made after observing
    intervals 0..i (so it lines up with ``rates[1:]``)."""
    out = []
    for rate in rates:
        forecaster.observe(rate)
        out.append(forecaster.forecast())
    return np.array(out[:-1])
