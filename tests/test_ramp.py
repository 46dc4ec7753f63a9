"""bench/ramp.py: what a plan really serves when the GPU runs as other profiles say (``served_rps``)."""
import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ramp", ROOT / "bench" / "ramp.py")
ramp = importlib.util.module_from_spec(spec)
sys.modules.setdefault("ramp", ramp)
spec.loader.exec_module(ramp)

from orchestrator.appspec import load_app  # noqa: E402
from orchestrator.controller import Policy  # noqa: E402
from orchestrator.gpus import gpu_type  # noqa: E402
from orchestrator.inventory import Inventory  # noqa: E402
from orchestrator.planner import PlanOptions, make_plan  # noqa: E402
from orchestrator.profiles import load_profiles  # noqa: E402
from orchestrator.refinement import scaled  # noqa: E402

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
