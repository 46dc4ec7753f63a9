"""Forecasters on known traces: constant, ramp, step; the arrivals' dispersion (orchestrator/loop/forecast.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from jigsawserve.orchestrator.loop.forecast import Dispersion, HoltQuantile, MovingAverage, one_step_forecasts


def test_baseline_exact_values_on_a_step() -> None:
    """Mean of the last 5 intervals (fewer at the start) plus 5 %."""
    rates = [100.0] * 3 + [200.0] * 6
    expected = [100, 100, 100, (100 * 3 + 200) / 4, (100 * 3 + 200 * 2) / 5, (100 * 2 + 200 * 3) / 5,
                (100 + 200 * 4) / 5, 200]
    assert one_step_forecasts(MovingAverage(), rates) == pytest.approx(np.array(expected) * 1.05)


def test_baseline_window_and_slack() -> None:
    f = MovingAverage(window=2, slack=0.5)
    for rate in (10, 20, 40):
        f.observe(rate)
    assert f.forecast() == pytest.approx(30 * 1.5)


@pytest.mark.parametrize("make", [MovingAverage, HoltQuantile])
def test_constant_trace(make) -> None:
    forecasts = one_step_forecasts(make(), [250.0] * 40)
    assert forecasts[0] == pytest.approx(250 * 1.05)        # both start with the baseline's 5 %
    assert (forecasts >= 250).all()
    # the baseline keeps its fixed 5 %; HoltQuantile's slack is the quantile of its (zero) errors
    assert forecasts[-1] == pytest.approx(250 * 1.05 if make is MovingAverage else 250.0)


def test_ramp_holt_tracks_the_trend_the_baseline_lags() -> None:
    rates = 100 + 20 * np.arange(60, dtype=float)           # +20 req/s per interval
    actual = rates[1:]
    base = one_step_forecasts(MovingAverage(), rates)
    holt = one_step_forecasts(HoltQuantile(), rates)
    # the baseline forecasts the mean of the last 5, 3 intervals behind (+5 %): under-provisioned
    # while 5 % of the rate is less than 60 req/s
    assert base[-1] == pytest.approx((rates[-2] - 40) * 1.05)
    assert (base[10:] < actual[10:]).sum() > 20
    # Holt's trend converges to the slope: no under-provisioning once warmed up, and close to the actual
    assert (holt[30:] >= actual[30:] - 1e-6).all()
    assert holt[-1] == pytest.approx(actual[-1], rel=0.01)


def test_step_holt_catches_up_sooner_than_the_baseline() -> None:
    rates = [100.0] * 30 + [200.0] * 30
    base, holt = (one_step_forecasts(make(), rates)[29:] for make in (MovingAverage, HoltQuantile))
    actual = np.array(rates[30:])
    assert (holt < actual).sum() == 2 and (base < actual).sum() == 5
    assert holt[-1] >= 200 and base[-1] == pytest.approx(210)


def test_holt_slack_follows_recent_noise() -> None:
    quiet, noisy = HoltQuantile(), HoltQuantile()
    for rate in [100.0] * 30:
        quiet.observe(rate)
    for rate in [90.0, 110.0] * 15:
        noisy.observe(rate)
    assert quiet.slack() == 0 and noisy.slack() > 0.1


def test_holt_warm_up_and_negative_trend_clamped_at_zero() -> None:
    f = HoltQuantile()
    f.observe(100)
    assert f.forecast() == pytest.approx(105)               # one observation: the level plus 5 %
    for rate in (50, 10, 0, 0, 0):
        f.observe(rate)
    assert f.forecast() >= 0


@pytest.mark.parametrize("make", [MovingAverage, HoltQuantile])
def test_bad_use(make) -> None:
    f = make()
    with pytest.raises(RuntimeError, match="before any observe"):
        f.forecast()
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="observed rate"):
            f.observe(bad)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="window >= 1"):
        MovingAverage(window=0)
    with pytest.raises(ValueError, match="0 < alpha <= 1"):
        HoltQuantile(alpha=0)
    with pytest.raises(ValueError, match="window >= 3"):
        HoltQuantile(window=2)


def test_forecasts_steps_ahead_follow_the_trend_or_stay_flat() -> None:
    holt = HoltQuantile(alpha=1.0, beta=1.0, initial_slack=0.0)
    avg = MovingAverage(window=2, slack=0.0)
    for rate in (10, 20, 30):
        holt.observe(rate)
        avg.observe(rate)
    assert [holt.forecast(k) for k in (1, 3)] == pytest.approx([40, 60])
    assert avg.forecast(1) == avg.forecast(5) == pytest.approx(25)
    for rate in (20, 10):
        holt.observe(rate)
    assert holt.forecast(4) == 0.0                   # a falling trend stops at zero


def _dispersion(rates: np.ndarray, seconds: float, seed: int) -> float:
    """``Dispersion.index`` after Poisson counts of ``rates`` (req/s per second), summed per ``seconds``."""
    per_s = np.random.default_rng(seed).poisson(np.maximum(rates, 0.0))
    d = Dispersion()
    for i in range(0, len(per_s) - int(seconds) + 1, int(seconds)):
        d.observe(float(per_s[i:i + int(seconds)].sum()), seconds)
    return d.index()


def test_dispersion_is_about_1_for_poisson_and_1_plus_cv2_rate_for_a_noisy_rate() -> None:
    """Poisson counts vary with their mean; a rate with 20% noise per second at 45 req/s adds (0.2 x 45)^2
    per second: D = 1 + 0.04 x 45 = 2.8."""
    rng = np.random.default_rng(0)
    poisson = [_dispersion(np.full(240, 45.0), 2.0, seed) for seed in range(20)]
    noisy = [_dispersion(45.0 * (1 + 0.2 * rng.normal(size=240)), 2.0, seed) for seed in range(20)]
    assert 1.0 <= np.median(poisson) < 1.2 and max(poisson) < 2.2
    assert 2.2 < np.median(noisy) < 3.4 and min(noisy) > 1.5


def test_dispersion_takes_a_ramp_for_no_noise() -> None:
    """A Poisson ramp from 50 to 400 req/s in a minute, flat before and after: its slope is no noise, nor
    are the two kinks."""
    rates = np.concatenate([np.full(60, 50.0), np.linspace(50.0, 400.0, 60), np.full(60, 400.0)])
    assert np.median([_dispersion(rates, 2.0, seed) for seed in range(10)]) < 1.3


def test_dispersion_is_1_until_enough_counts_and_ignores_too_few_arrivals() -> None:
    d = Dispersion(window=10, least=3)
    for n in (100, 10, 100, 10):     # wildly noisy, but 3 triples only 2 scores: not yet
        d.observe(n, 2.0)
    assert d.index() == 1.0
    d.observe(100, 2.0)
    assert d.index() > 10
    sparse = Dispersion(least=1)
    for n in (1, 9, 0, 8, 2):        # under Dispersion.MIN_COUNT arrivals per count: no score
        sparse.observe(n, 1.0)
    assert sparse.index() == 1.0
    with pytest.raises(ValueError):
        d.observe(5, 0.0)
