"""bench/ramp.py: what a plan really serves when the GPU runs as other profiles say (``served_rps``); its
closed loop (the real Controller and planner, a fake server) on a noisy steady load and on a ramp."""
import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ramp", ROOT / "bench" / "ramp.py")
ramp = importlib.util.module_from_spec(spec)
sys.modules.setdefault("ramp", ramp)
spec.loader.exec_module(ramp)

from jigsawserve.orchestrator.spec.appspec import load_app  # noqa: E402
from jigsawserve.orchestrator.loop.controller import Policy  # noqa: E402
from jigsawserve.orchestrator.spec.gpus import gpu_type  # noqa: E402
from jigsawserve.orchestrator.serving.inventory import Inventory  # noqa: E402
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan  # noqa: E402
from jigsawserve.orchestrator.spec.profiles import load_profiles  # noqa: E402
from jigsawserve.orchestrator.loop.refinement import scaled  # noqa: E402
from jigsawserve.orchestrator.workload.trace import Trace  # noqa: E402

CPU = ROOT / "examples" / "cpu"


def test_served_rps_scales_by_the_truths_speed_of_the_slowest_routed_variant() -> None:
    app, profiles = load_app(CPU / "app.yaml"), load_profiles(CPU / "profiles.csv")
    setup = ramp.Setup(app, profiles, gpu_type("cpu"), PlanOptions(), Inventory(gpus=(), source="none"), Policy(),
                       efficiency=0.9)
    plan = make_plan(app, profiles, gpu_type("cpu"), 22.0, PlanOptions())
    assert ramp.served_rps(setup, plan) == pytest.approx(0.9 * 22.0)
    # as profiled: each routed variant's instances serve at least their rate
    spare = min(sum(e.count * e.throughput_rps for e in plan.entries if (e.task, e.variant) == (t, v)) / rate
                for t, routed in plan.routing.items() for v, rate in routed.items() if rate > 0)
    assert spare >= 1 - 1e-9
    assert ramp.served_rps(replace(setup, truth=profiles), plan) == pytest.approx(0.9 * 22.0 * spare)
    # one variant twice as slow as profiled: the plan serves what that variant's instances give
    e = next(x for x in plan.entries if x.task == "det")
    slow = scaled(profiles, app.task("det").variant(e.variant).profile, "cpu", e.mig, e.mps, 2.0)
    det_share = sum(x.count * x.throughput_rps for x in plan.entries
                    if (x.task, x.variant) == ("det", e.variant)) / 2 / plan.routing["det"][e.variant]
    assert ramp.served_rps(replace(setup, truth=slow), plan) == pytest.approx(0.9 * 22.0 * min(spare, det_share))


# -- the controller on a noisy steady load and on a ramp (the closed loop, simulated) -------------------

CPU_POLICY = Policy(headroom=0.3)   # as `jigsaw experiment` runs the CPU example


def _noisy(rates: np.ndarray, cv: float, seed: int) -> Trace:
    """Per-second rates with ``cv`` of multiplicative noise per second, as examples/traces/noisy-*.csv."""
    return Trace(1.0, np.maximum(0.0, rates * (1 + cv * np.random.default_rng(seed).normal(size=len(rates)))))


def _cpu_run(trace: Trace, policy: Policy, seed: int) -> dict:
    setup = ramp.Setup(load_app(CPU / "app.yaml"), load_profiles(CPU / "profiles.csv"), gpu_type("cpu"),
                       PlanOptions(gpus=4, time_limit=30.0), Inventory(gpus=(), source="none"), policy,
                       arrivals_seed=seed)
    return ramp.simulate(setup, trace, interval_s=5.0, apply_s=2.2)


def test_a_noisy_steady_load_keeps_its_plan() -> None:
    """45 req/s with 20% noise per second and Poisson arrivals, 5 minutes (one draw): no plan change. With
    the plain band and gates (no margins for the measured noise) the same arrivals change it 8 times: up
    on high draws of the noise, down on low ones."""
    trace = _noisy(np.full(300, 45.0), 0.2, seed=7)
    assert _cpu_run(trace, CPU_POLICY, seed=7)["plan_changes"] == 0
    assert _cpu_run(trace, replace(CPU_POLICY, noise_z=0.0, up_intervals=1), seed=7)["plan_changes"] >= 5


def test_a_ramp_in_the_same_noise_is_followed_in_time() -> None:
    """45 req/s for a minute, then up to 135 over 30 s, then flat, all with 20% noise: the plan goes up
    while the rate climbs, and a plan for more than 135 req/s serves within 5 s of the ramp's end."""
    rates = np.concatenate([np.full(60, 45.0), np.linspace(45.0, 135.0, 30), np.full(60, 135.0)])
    r = _cpu_run(_noisy(rates, 0.2, seed=1), CPU_POLICY, seed=1)
    assert r["changes"] and 60.0 < r["changes"][0]["decided_s"] < 90.0, r["changes"]
    assert any(c["demand_rps"] >= 135.0 and c["effective_s"] <= 95.0 for c in r["changes"]), r["changes"]
