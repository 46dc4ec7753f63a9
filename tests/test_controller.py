"""The online controller without a server: the replanning policy (``decide``), profile scaling and
interpolation, metrics parsing, the event log, and ``Controller.step`` on synthetic scrapes
(``jigsawserve.orchestrator.loop.controller.scrape`` monkeypatched) with the real planner on examples/cpu."""
from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT

from jigsawserve.orchestrator.loop import controller as ctl
from jigsawserve.orchestrator.spec.appspec import load_app
from jigsawserve.orchestrator.loop.controller import Controller, EventLog, Policy, decide
from jigsawserve.orchestrator.errors import InfeasibleError
from jigsawserve.orchestrator.loop.forecast import HoltQuantile, MovingAverage
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.serving.inventory import Inventory
from jigsawserve.orchestrator.serving.metrics import Scrape, increase, parse, requests_total
from jigsawserve.orchestrator.planning.planner import PlanOptions
from jigsawserve.orchestrator.spec.profiles import ProfilePoint, Profiles, load_profiles
from jigsawserve.orchestrator.loop.refinement import expected_ms, scaled
from jigsawserve.orchestrator.serving.render import runner_name

CPU = ROOT / "examples" / "cpu"
POLICY = Policy(headroom=0.3, down_ratio=0.7, down_cooldown=3, down_ratio_target=0.9)  # explicit: defaults may be tuned


# -- decide ---------------------------------------------------------------------------------------

def test_decide_goes_up_at_once_with_headroom() -> None:
    assert decide(100.0, 120.0, 0, POLICY) == pytest.approx(156.0)       # no cooldown going up
    assert decide(100.0, 100.001, 0, Policy(headroom=0.5)) == pytest.approx(150.0015)
    assert decide(100.0, 100.0, 50, POLICY) is None                     # at the planned demand: keep


def test_decide_goes_down_only_below_the_ratio_after_the_cooldown() -> None:
    for intervals in range(3):
        assert decide(100.0, 50.0, intervals, POLICY) is None
    assert decide(100.0, 50.0, 3, POLICY) == pytest.approx(65.0)          # forecast x (1 + headroom)
    assert decide(100.0, 50.0, 10, POLICY) == pytest.approx(65.0)
    assert decide(100.0, 70.0, 10, POLICY) is None                        # not below 0.7 x planned
    assert decide(100.0, 69.9, 10, POLICY) is None                        # 90.87: shrinks the plan by < 10%
    assert decide(100.0, 69.2, 10, POLICY) == pytest.approx(69.2 * 1.3)   # 89.96: by at least 10%


def test_decide_never_calls_a_replan_at_or_above_the_plan_down() -> None:
    # headroom 0.5 x down ratio 0.7 = 1.05: forecast x (1 + headroom) can exceed the planned demand
    wide = Policy(headroom=0.5, down_ratio=0.7, down_cooldown=3)
    assert decide(7.5, 5.0, 3, wide) is None                        # 7.5: the plan already made for it
    assert decide(100.0, 69.0, 3, wide) is None                     # 103.5 would be up, not down
    assert decide(100.0, 60.0, 3, wide) == pytest.approx(90.0)
    assert decide(100.0, 61.0, 3, wide) is None                     # 91.5: less than a 10% step down
    assert decide(100.0, 120.0, 0, wide) == pytest.approx(180.0)


@pytest.mark.parametrize("forecast", [70.0, 75.0, 85.0, 99.9, 100.0])
def test_decide_keeps_the_plan_inside_the_band(forecast: float) -> None:
    assert all(decide(100.0, forecast, n, POLICY) is None for n in range(20))


def _replans(forecasts: np.ndarray, policy: Policy) -> list[float]:
    """Drive ``decide`` the way Controller.step does: the demands replanned for."""
    planned, intervals, out = float(forecasts[0]) * (1 + policy.headroom), 0, []
    for f in forecasts[1:]:
        intervals += 1
        target = decide(planned, float(f), intervals, policy)
        if target is not None:
            planned, intervals = target, 0
            out.append(target)
    return out


def test_decide_does_not_flap_on_a_noisy_flat_demand() -> None:
    forecasts = 100.0 * (1 + np.random.default_rng(0).uniform(-0.1, 0.1, 300))   # +-10 % around 100
    # the headroom covers the noise going up, the down ratio and cooldown the noise going down
    assert len(_replans(forecasts, POLICY)) <= 1
    # without the band it would replan nearly every interval: the check above has teeth
    assert len(_replans(forecasts, Policy(headroom=0.0, down_ratio=1.0, down_cooldown=0,
                                          down_ratio_target=1.0))) > 200


def test_decide_follows_a_step_and_a_sustained_drop() -> None:
    forecasts = np.array([20.0] * 5 + [200.0] * 10 + [40.0] * 10)
    targets = _replans(forecasts, POLICY)
    assert targets == pytest.approx([260.0, 52.0])   # up at the step, down 3 intervals into the drop


def test_decide_goes_up_past_the_noise_at_once_within_it_only_when_it_persists() -> None:
    """An interval's rate varies 5 req/s beyond Poisson's: the forecast goes up at once only 2 x 5 over
    the plan; nearer, at the second step running over it."""
    p = Policy(headroom=0.3, noise_z=2.0, up_intervals=2)
    assert decide(100.0, 109.0, 0, p, noise_rps=6.0, extra_rps=5.0) is None
    assert decide(100.0, 109.0, 0, p, noise_rps=6.0, extra_rps=5.0, intervals_over=2) == pytest.approx(141.7)
    assert decide(100.0, 111.0, 0, p, noise_rps=6.0, extra_rps=5.0) == pytest.approx(144.3)
    assert decide(100.0, 109.0, 0, p) == pytest.approx(141.7)   # Poisson arrivals: at once, as before


def test_decide_goes_down_past_the_noise_and_plans_for_the_forecast_plus_it() -> None:
    p = Policy(headroom=0.3, down_ratio=0.7, down_cooldown=3, noise_z=2.0)
    assert decide(100.0, 60.0, 3, p, noise_rps=6.0) is None                     # 72: not under 70
    assert decide(100.0, 55.0, 3, p, noise_rps=6.0) == pytest.approx(67 * 1.3)  # planned for 55 + 12


def test_decide_keeps_a_plan_on_noise_beyond_poisson_that_the_plain_band_flaps_on() -> None:
    """A steady 45 req/s whose interval rates vary 20% (9 req/s) around it, forecast by HoltQuantile as the
    controller does, 120 intervals: the band alone (no margin for the measured noise) replans every few
    intervals, up on high draws and down on low ones; with the margins (9 req/s beyond Poisson's 3 at 5 s
    intervals) it moves the plan up once and at most once back."""
    rng = np.random.default_rng(1)
    rates = np.maximum(0.0, 45.0 * (1 + 0.2 * rng.normal(size=120)))
    forecaster = HoltQuantile()
    forecasts = []
    for r in rates:
        forecaster.observe(float(r))
        forecasts.append(forecaster.forecast())
    extra = 45.0 * 0.2
    noise = float(np.hypot(extra, np.sqrt(45.0 / 5)))

    def replans(policy: Policy, noise_rps: float, extra_rps: float) -> int:
        planned, intervals, over, n = 45.0 * 1.3, 0, 0, 0
        for f in forecasts:
            intervals += 1
            over = over + 1 if f > planned else 0
            target = decide(planned, f, intervals, policy, noise_rps, extra_rps, over)
            if target is not None:
                planned, intervals, over, n = target, 0, 0, n + 1
        return n

    assert replans(POLICY, 0.0, 0.0) >= 10
    assert replans(replace(POLICY, noise_z=2.0, up_intervals=2), noise, extra) <= 2


# -- scaled / expected_ms ---------------------------------------------------------------------------

def _pt(variant: str, gpu: str = "a100-80gb", mig: int = 1, mps: int = 1, batch: int = 1,
        latency: float = 10.0, throughput: float = 100.0) -> ProfilePoint:
    return ProfilePoint(variant, gpu, mig, mps, batch, latency, throughput)


def test_scaled_changes_only_the_matching_rows() -> None:
    rows = (_pt("a", batch=1), _pt("a", batch=4, latency=20, throughput=200),
            _pt("a", mig=3), _pt("a", mps=2), _pt("a", gpu="h100-80gb"), _pt("b"))
    out = scaled(Profiles(rows), "a", "a100-80gb", 1, 1, 2.0)
    assert out.points[0] == _pt("a", batch=1, latency=20.0, throughput=50.0)
    assert out.points[1] == _pt("a", batch=4, latency=40.0, throughput=100.0)
    assert out.points[2:] == rows[2:]                          # other segment shape, gpu or variant
    assert Profiles(rows).points == rows                       # the input is left alone


def test_expected_ms_interpolates_at_fractional_batches() -> None:
    points = [_pt("a", batch=8, latency=20.0), _pt("a", batch=1, latency=10.0), _pt("a", batch=4, latency=16.0)]
    assert expected_ms(points, 1.0) == pytest.approx(10.0)
    assert expected_ms(points, 2.5) == pytest.approx(13.0)
    assert expected_ms(points, 6.0) == pytest.approx(18.0)
    assert expected_ms(points, 0.5) == pytest.approx(10.0)    # clamped to the profiled range
    assert expected_ms(points, 32.0) == pytest.approx(20.0)
    assert expected_ms([], 2.0) is None


# -- metrics ---------------------------------------------------------------------------------------

TRITON_TEXT = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="cpudemo",version="1"} 120
nv_inference_request_success{model="cpudemo__det",version="1"} 118
nv_inference_request_success{model="cpudemo__det",version="2"} 2
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="cpudemo",reason="OTHER",version="1"} 3
nv_inference_request_failure{model="cpudemo",reason="BACKEND",version="1"} 1
# HELP nv_inference_exec_count Number of model executions performed (does not include cached requests)
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="cpudemo__det__det_large__1g1p8b",version="1"} 40
# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.25
# HELP jigsaw_stage_variant_items_total items a jigsaw stage routed to each variant
# TYPE jigsaw_stage_variant_items_total counter
jigsaw_stage_variant_items_total{app="cpudemo",task="det",variant="det_small"} 70
jigsaw_stage_variant_items_total{app="cpudemo",task="det",variant="det_large"} 30
jigsaw_stage_variant_items_total{app="cpudemo",task="cls",variant="cls_small"} 290
jigsaw_stage_variant_items_total{app="other",task="det",variant="det_small"} 5
"""


def test_parse_names_counters_total_and_sums_by_label() -> None:
    s = parse(TRITON_TEXT, t=12.5)
    assert s.t == 12.5
    # Triton exposes counters without the suffix; the parser names their samples <name>_total
    assert s.total("nv_inference_request_success") == 0
    assert s.total("nv_inference_request_success_total", model="cpudemo") == 120
    assert s.total("nv_inference_request_success_total", model="cpudemo__det") == 120    # both versions
    assert s.total("nv_inference_request_success_total", model="cpudemo__det", version="2") == 2
    assert s.total("nv_inference_request_success_total") == 240
    assert s.total("nv_inference_request_failure_total", model="cpudemo") == 4
    assert s.total("nv_inference_exec_count_total", model="cpudemo__det__det_large__1g1p8b") == 40
    assert s.total("nv_inference_exec_count_total", model="no_such_model") == 0
    assert s.total("nv_cpu_utilization") == 0.25                                        # a gauge keeps its name
    assert requests_total(s, "cpudemo") == 124                                          # arrivals: ok + failed
    assert s.by_label("jigsaw_stage_variant_items_total", "task", "variant", app="cpudemo") == {
        ("det", "det_small"): 70, ("det", "det_large"): 30, ("cls", "cls_small"): 290}
    assert s.by_label("jigsaw_stage_variant_items_total", "task") == {("det",): 105, ("cls",): 290}
    assert s.by_label("nv_inference_request_failure_total", "reason", model="cpudemo") == {
        ("OTHER",): 3, ("BACKEND",): 1}
    assert s.by_label("nv_inference_request_success_total", "no_such_label", model="cpudemo") == {("",): 120}


def test_increase_handles_a_counter_reset() -> None:
    assert increase(100.0, 130.0) == 30.0
    assert increase(100.0, 100.0) == 0.0
    assert increase(100.0, 7.0) == 7.0         # reloaded model: its counter restarted from 0


# -- EventLog --------------------------------------------------------------------------------------

def test_event_log_writes_json_lines_relative_to_its_origin(tmp_path: Path, monkeypatch) -> None:
    clock = SimpleNamespace(time=lambda: 1000.0)
    monkeypatch.setattr(ctl, "time", clock)
    log = EventLog(tmp_path / "events.jsonl", origin=990.0)
    log.write("plan", demand_rps=7.5, reason="initial")
    clock.time = lambda: 1002.3456
    log.write("interval", demand_rps=5.0, forecast_rps=None)
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [
        {"t": 10.0, "kind": "plan", "demand_rps": 7.5, "reason": "initial"},
        {"t": 12.346, "kind": "interval", "demand_rps": 5.0, "forecast_rps": None}]
    log.origin = 1003.0                       # the experiment moves the origin to the load's start
    log.write("metrics", variant_items={})
    assert json.loads((tmp_path / "events.jsonl").read_text().splitlines()[-1])["t"] == -0.654


def test_event_log_lines_stay_whole_under_concurrent_writers(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl", origin=0.0)
    threads = [threading.Thread(target=lambda i=i: [log.write("x", writer=i, n=n, pad="p" * 500) for n in range(50)])
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert sorted((e["writer"], e["n"]) for e in events) == [(i, n) for i in range(4) for n in range(50)]


# -- Controller.step on synthetic scrapes -------------------------------------------------------------

INTERVAL_S = 10.0


class Fixture:
    """A Controller on examples/cpu with a metrics endpoint that serves queued synthetic scrapes."""

    def __init__(self, tmp_path: Path, monkeypatch, policy: Policy) -> None:
        self.app = load_app(CPU / "app.yaml")
        self.applied: list = []
        self.lines: list[str] = []
        self.scrapes: list[Scrape] = []
        self.events_path = tmp_path / "events.jsonl"
        monkeypatch.setattr(ctl, "scrape", self._scrape)
        self.c = Controller(self.app, load_profiles(CPU / "profiles.csv"), gpu_type("cpu"), PlanOptions(),
                            Inventory(gpus=(), source="test: cpu"), tmp_path / "repo", "http://fake/metrics",
                            MovingAverage(window=1, slack=0.0), EventLog(self.events_path, origin=0.0),
                            policy, apply_plan=self.applied.append, progress=self.lines.append)
        self.arrived, self.pushed = 0.0, 0
        self.runners: dict[str, dict[str, float]] = {}
        self.stage_counts: dict[tuple[str, str], float] = {}

    def _scrape(self, url: str, t: float) -> Scrape:
        assert url == "http://fake/metrics"
        return self.scrapes.pop(0)

    def push(self, rps: float, runner_batches: dict[str, tuple[int, float, float]] | None = None,
             padding: dict[str, float] | None = None, stages: dict[tuple[str, str], float] | None = None) -> None:
        """Queue the next scrape, ``INTERVAL_S`` after the last: ``rps`` arrivals at the app model and, per
        runner, (executions, mean batch, batch time in ms) during the interval. As Triton does, the
        compute time is counted once per request of a batch (here one item per request). ``padding``:
        rows per batch a runner padded its batches with, as the jigsaw runners export it. ``stages``:
        per (task, "drops" or "misses"), that stage counter's increase per second."""
        t = self.pushed * INTERVAL_S
        self.pushed += 1
        self.arrived += rps * INTERVAL_S
        for key, per_s in (stages or {}).items():
            self.stage_counts[key] = self.stage_counts.get(key, 0.0) + per_s * INTERVAL_S
        samples = {("nv_inference_request_success_total", (("model", self.app.name), ("version", "1"))): self.arrived}
        for (task, kind), n in self.stage_counts.items():
            samples[(ctl.STAGE_COUNTERS[kind], (("app", self.app.name), ("task", task)))] = n
        for name, (execs, batch, ms) in (runner_batches or {}).items():
            c = self.runners.setdefault(name, dict.fromkeys(("exec", "items", "requests", "us", "pad"), 0.0))
            c["exec"] += execs
            c["pad"] += execs * (padding or {}).get(name, 0.0)
            c["items"] += execs * batch
            c["requests"] += execs * batch
            c["us"] += execs * batch * ms * 1000
            key = (("model", name), ("version", "1"))
            samples.update({("nv_inference_exec_count_total", key): c["exec"],
                            ("nv_inference_count_total", key): c["items"],
                            ("nv_inference_request_success_total", key): c["requests"],
                            ("nv_inference_compute_infer_duration_us_total", key): c["us"],
                            ("jigsaw_runner_padding_rows_total", (("model", name),)): c["pad"]})
        self.scrapes.append(Scrape(t, samples))

    def events(self, kind: str) -> list[dict]:
        return [e for e in map(json.loads, self.events_path.read_text().splitlines()) if e["kind"] == kind]

    def runner(self, task: str) -> str:
        return runner_name(self.app.name, next(e for e in self.c.plan.entries if e.task == task))


def test_step_replans_up_when_demand_steps_from_20_to_200(tmp_path: Path, monkeypatch) -> None:
    f = Fixture(tmp_path, monkeypatch, Policy(headroom=0.1))
    first = f.c.initial(20 * 1.1)
    assert (tmp_path / "repo" / "jigsaw.json").is_file()
    for rps in (20, 20, 20, 200):
        f.push(rps)
    for _ in range(3):
        f.c.step()
    assert f.applied == [] and f.c.plan is first
    f.c.step()
    assert len(f.applied) == 1, f.lines
    plans = f.events("plan")
    assert [p["demand_rps"] for p in plans] == pytest.approx([22.0, 220.0])
    assert plans[1]["reason"].startswith("forecast 200.0 req/s, up from 22.0")
    assert f.c.plan.demand_rps == pytest.approx(220.0) and f.c.intervals_in_plan == 0
    assert f.c.plan.slices > first.slices, (first.slices, f.c.plan.slices)
    # what was applied is the new plan's repository: its runners, and not the old plan's
    new_runners = {runner_name(f.app.name, e) for e in f.c.plan.entries}
    assert new_runners <= set(f.applied[0].configs)
    assert {runner_name(f.app.name, e) for e in first.entries} - new_runners
    assert [e["demand_rps"] for e in f.events("interval")] == pytest.approx([20.0, 20.0, 200.0])


def test_step_keeps_the_plan_on_flat_demand(tmp_path: Path, monkeypatch) -> None:
    f = Fixture(tmp_path, monkeypatch, POLICY)
    plan = f.c.initial(20 * 1.3)   # the band: down below 0.7 x 26 = 18.2 req/s, up above 26
    for rps in (20, 21, 19, 20, 22, 19, 20, 24, 19, 18.5, 20):
        f.push(rps)
    for _ in range(11):
        f.c.step()
    assert f.applied == [] and f.c.plan is plan
    assert len(f.events("plan")) == 1 and not f.events("refine")
    assert f.c.intervals_in_plan == 10
    assert len(f.events("interval")) == 10          # the first scrape only starts the first interval
    assert len(f.events("metrics")) == 11


def test_step_refines_a_runner_twice_as_slow_as_its_profile(tmp_path: Path, monkeypatch) -> None:
    f = Fixture(tmp_path, monkeypatch, Policy(headroom=0.1, refine_drift=0.25, refine_min_batches=20))
    first = f.c.initial(22.0)
    det, cls, cap = (next(e for e in first.entries if e.task == t) for t in ("det", "cls", "cap"))

    def profiled(e, batch: float) -> float:
        profile = f.app.task(e.task).variant(e.variant).profile
        return expected_ms(f.c.profiles.for_variant(profile, "cpu"), batch)

    det_ms = profiled(det, 2.0)
    f.push(20)
    f.push(20, {f.runner("det"): (50, 2.0, 2 * det_ms),              # twice as slow: refined
                f.runner("cls"): (50, 3.0, profiled(cls, 3.0)),        # as profiled, 3 requests a batch
                f.runner("cap"): (10, 2.0, 3 * profiled(cap, 2.0))})  # too few batches to judge
    f.c.step()
    f.c.step()
    refines = f.events("refine")
    det_profile = f.app.task("det").variant(det.variant).profile
    assert [r["variant"] for r in refines] == [det_profile], refines
    assert refines[0]["ratio"] == pytest.approx(2.0, rel=1e-3)
    assert refines[0]["profiled_ms"] == pytest.approx(det_ms, abs=1e-3)
    assert refines[0]["measured_ms"] == pytest.approx(2 * det_ms, abs=1e-3)
    # the variant's rows on that segment shape are twice as slow now, the others untouched
    old, new = load_profiles(CPU / "profiles.csv"), f.c.profiles
    for p, q in zip(old.points, new.points):
        if p.variant == det_profile and (p.mig, p.mps) == (det.mig, det.mps):
            assert q.latency_ms == pytest.approx(2 * p.latency_ms)
        else:
            assert q == p
    # and the app was replanned at the current demand with the refined profiles
    plans = f.events("plan")
    assert len(plans) == 2 and len(f.applied) == 1
    assert plans[1]["reason"].startswith(f"profile refined: {det_profile} 1g x1 x2.00")
    assert plans[1]["demand_rps"] == pytest.approx(22.0)


def test_step_judges_a_padded_runner_at_the_batch_it_ran(tmp_path: Path, monkeypatch) -> None:
    """A runner that pads its batches of 2 rows to 16 (it captured 1 and 16 only) and takes the profile's
    time for 16 is as profiled, not slow; one slower than that is refined against the batch of 16."""
    f = Fixture(tmp_path, monkeypatch, Policy(headroom=0.1, refine_drift=0.25, refine_min_batches=20))
    first = f.c.initial(22.0)
    det = next(e for e in first.entries if e.task == "det")
    points = f.c.profiles.for_variant(f.app.task("det").variant(det.variant).profile, "cpu")
    at2, at16 = expected_ms(points, 2.0), expected_ms(points, 16.0)
    assert at16 > at2 * 1.25  # precondition: judged at 2 rows, the padded batch would look slow
    runner = f.runner("det")
    f.push(20)
    f.push(20, {f.runner("det"): (50, 2.0, at16)}, padding={f.runner("det"): 14.0})
    f.push(20, {f.runner("det"): (50, 2.0, 2 * at16)}, padding={f.runner("det"): 14.0})
    f.c.step()
    f.c.step()
    assert not f.events("refine") and len(f.applied) == 0
    f.c.step()
    refines = f.events("refine")
    assert len(refines) == 1 and refines[0]["profiled_ms"] == pytest.approx(at16, abs=1e-3)
    assert refines[0]["ratio"] == pytest.approx(2.0, rel=1e-3)
    # every step's metrics event keeps the runners' counters so far, for a run's record
    logged = f.events("metrics")[-1]["runners"][runner]
    assert logged["batches"] == 100 and logged["rows"] == logged["requests"] == 200 and logged["padding"] == 1400
    assert logged["compute_us"] == pytest.approx(100 * 2 * (at16 + 2 * at16) / 2 * 1000)


def test_surge_replans_up_when_the_projected_rate_outruns_the_plan(tmp_path: Path, monkeypatch) -> None:
    """The rate over the last window, plus its rise against the window before times (half a window + the
    last apply + one poll): under the plan's demand, nothing; over it, a plan at once for that projection
    (or the forecast, if larger) plus headroom. The forecaster is not fed; the next step goes on as before."""
    f = Fixture(tmp_path, monkeypatch, Policy(headroom=0.1, surge_window_s=10.0))
    f.c.initial(22.0)
    f.push(20)
    f.push(20)
    f.c.step()
    f.c.step()              # the forecaster has seen 20 req/s
    f.push(20)
    assert f.c.surge() is False and f.applied == []
    assert f.c.arrival_trend() == (pytest.approx(20.0), pytest.approx(0.0))
    f.push(40)              # 40 req/s over the last 10 s, 20 over the 10 s before: rising 2 req/s per s
    assert f.c.surge() is True and len(f.applied) == 1
    surge = f.events("surge")
    assert len(surge) == 1 and surge[0]["demand_rps"] == pytest.approx(40.0)
    assert surge[0]["rise_rps_per_s"] == pytest.approx(2.0) and surge[0]["lead_s"] == pytest.approx(7.0)  # 5 + 0 + 2
    assert surge[0]["projected_rps"] == pytest.approx(54.0) and surge[0]["planned_rps"] == pytest.approx(22.0)
    plan = f.events("plan")[-1]
    assert plan["demand_rps"] == pytest.approx(54.0 * 1.1)
    assert plan["reason"].startswith("surge: 40.0 req/s now, rising 2.0/s: 54.0 in 7 s, over the 22.0 planned")
    assert f.c.intervals_in_plan == 0 and f.c.observed == 1
    f.push(40)              # steady: no rise, 40 < 59.4
    assert f.c.surge() is False
    f.push(60)
    f.c.step()              # the step's interval spans the surge checks: (20 + 40 + 40 + 60) / 4 = 40
    assert [e["demand_rps"] for e in f.events("interval")][-1] == pytest.approx(40.0)
    assert f.c.observed == 2


def test_surge_sees_a_late_rise_that_the_mean_since_the_step_hides(tmp_path: Path, monkeypatch) -> None:
    """20, 20, then 60 req/s after a step: 33 req/s since the step is under the 44 planned, but the last
    window's 60 is not."""
    f = Fixture(tmp_path, monkeypatch, Policy(headroom=0.0, surge_window_s=10.0))
    f.c.initial(44.0)
    f.push(20)
    f.c.step()
    f.push(20)
    assert f.c.surge() is False
    f.push(20)
    assert f.c.surge() is False
    f.push(60)
    assert f.c.surge() is True
    assert f.events("surge")[-1]["projected_rps"] == pytest.approx(60.0 + 4.0 * 7.0)
    f.push(30)              # falling: no rise
    assert f.c.surge() is False and len(f.events("surge")) == 1
    assert f.c.arrival_trend() == (pytest.approx(30.0), 0.0)


def test_surge_takes_a_rise_within_poisson_noise_for_none(tmp_path: Path, monkeypatch) -> None:
    """Over 10 s windows, with z = 2: 110 arrivals against 100, and 120 against 110, are within 2 standard
    deviations (2 x sqrt(210) = 29, 2 x sqrt(230) = 30): no rise; 160 against 120 (over 2 x sqrt(280) = 33)
    is one."""
    f = Fixture(tmp_path, monkeypatch, Policy(headroom=0.5, surge_window_s=10.0, surge_rise_z=2.0))
    f.c.initial(100.0)
    f.push(10)
    f.c.step()
    for rps, rise in ((10, 0.0), (11, 0.0), (12, 0.0), (16, 0.4)):
        f.push(rps)
        assert f.c.surge() is False
        assert f.c.arrival_trend() == (pytest.approx(rps), pytest.approx(rise))


def test_no_surge_checks_when_they_are_off(tmp_path: Path, monkeypatch) -> None:
    f = Fixture(tmp_path, monkeypatch, Policy(headroom=0.5, surge_poll_s=0.0))
    f.c.initial(10.0)
    f.push(5)
    f.c.step()
    f.push(30)
    assert f.c.surge() is False and len(f.scrapes) == 1 and f.applied == []


def test_surge_before_any_forecast_plans_for_the_rate(tmp_path: Path, monkeypatch) -> None:
    f = Fixture(tmp_path, monkeypatch, Policy(headroom=0.5))
    f.c.initial(10.0)
    assert f.c.surge() is False  # no step yet: nothing to measure from
    f.push(5)
    f.c.step()
    f.push(30)
    assert f.c.surge() is True and f.c.plan.demand_rps == pytest.approx(45.0)


def test_arrivals_are_sampled_while_an_apply_blocks_the_controller(tmp_path: Path, monkeypatch) -> None:
    """A surge's apply blocks the controller's thread; meanwhile a sampler keeps scraping every poll, so
    the checks after it see the rate of the windows it spanned (60 req/s), not a line drawn to the first
    scrape after it. Off (``sample_applies=False``), nothing is scraped during the apply."""
    import time as clock
    for sampled in (True, False):
        f = Fixture(tmp_path / str(sampled), monkeypatch,
                    Policy(headroom=0.1, surge_window_s=10.0, surge_poll_s=0.02, sample_applies=sampled))
        f.c.initial(22.0)
        f.push(20)
        f.c.step()
        f.push(40)                           # the surge check's scrape: a rise, over the 22 planned
        f.push(60)
        f.push(60)                           # two scrapes for the sampler, if it runs

        def slow_apply(rendered, f=f) -> None:
            deadline = clock.monotonic() + 1.0
            while len(f.scrapes) > 0 and clock.monotonic() < deadline:
                clock.sleep(0.01)
            f.applied.append(rendered)
        f.c.apply_plan = slow_apply
        assert f.c.surge() is True and len(f.applied) == 1
        if sampled:
            assert f.scrapes == [] and f.c.arrival_trend()[0] == pytest.approx(60.0)
        else:
            assert len(f.scrapes) == 2 and f.c.arrival_trend()[0] == pytest.approx(40.0)


def test_a_surge_plans_with_its_own_headroom_when_given(tmp_path: Path, monkeypatch) -> None:
    """``surge_headroom``: the projection already looks ahead over the apply, so a surge's plan may take less
    margin than the steps' forecasts (here 10% instead of 50%); a step's plan keeps the headroom."""
    f = Fixture(tmp_path, monkeypatch, Policy(headroom=0.5, surge_headroom=0.1))
    f.c.initial(10.0)
    f.push(5)
    f.c.step()
    f.push(30)
    assert f.c.surge() is True and f.c.plan.demand_rps == pytest.approx(33.0)


def test_a_surge_that_finds_no_plan_is_not_retried_before_the_next_step(tmp_path: Path, monkeypatch) -> None:
    f = Fixture(tmp_path, monkeypatch, Policy(headroom=0.5, fallback=()))
    f.c.initial(10.0)

    def full(demand: float):  # as when the GPUs are full
        raise InfeasibleError(f"no plan for {demand:.1f} req/s", binding="slices")

    monkeypatch.setattr(f.c, "_make", full)
    f.push(5)
    f.c.step()
    f.push(100)
    assert f.c.surge() is False and len(f.events("infeasible")) == 1
    assert f.c.surge() is False and len(f.events("infeasible")) == 1 and len(f.scrapes) == 0  # not even scraped
    f.push(5)
    f.c.step()   # (50 + 1000) / 20 = 52.5 req/s: the step tries too (one more infeasible)
    f.push(100)
    assert f.c.surge() is False and len(f.events("infeasible")) == 3  # and the surge checks again


def test_horizon_covers_the_last_apply_in_intervals(tmp_path: Path, monkeypatch) -> None:
    f = Fixture(tmp_path, monkeypatch, POLICY)
    assert f.c.horizon() == 1                       # not running yet: the next interval
    f.c.interval_s = 10.0
    for apply_s, steps in ((0.0, 1), (4.0, 2), (10.0, 2), (22.0, 4)):
        f.c.apply_s = apply_s
        assert f.c.horizon() == steps


def test_step_forecasts_as_far_ahead_as_the_last_apply_took(tmp_path: Path, monkeypatch) -> None:
    f = Fixture(tmp_path, monkeypatch, Policy(headroom=0.0))
    f.c.forecaster = HoltQuantile(alpha=1.0, beta=1.0, initial_slack=0.0)   # level = last rate, trend = last change
    f.c.initial(100.0)
    f.c.interval_s, f.c.apply_s = 10.0, 25.0           # applies take 2.5 intervals: look 4 ahead
    for rps in (50, 60, 70):
        f.push(rps)
    for _ in range(3):
        f.c.step()
    # 70 req/s rising by 10 per interval: 80 next, 110 four intervals ahead (> the plan's 100)
    assert [e["horizon"] for e in f.events("interval")] == [4, 4]
    assert f.events("interval")[-1]["forecast_rps"] == pytest.approx(110.0)
    assert f.events("plan")[-1]["demand_rps"] == pytest.approx(110.0)


def _shedding(tmp_path: Path, monkeypatch, stages: dict[tuple[str, str], float], **policy) -> Fixture:
    """A plan for 30 req/s, one step at 20 req/s under it, then 20 req/s with the ``stages`` counters
    rising (per second); ``policy``: Policy fields besides headroom 0.5 and a 10 s surge window."""
    f = Fixture(tmp_path, monkeypatch, Policy(headroom=0.5, surge_window_s=10.0, **policy))
    f.c.initial(30.0)
    f.push(20)
    f.c.step()
    f.push(20, stages=stages)
    return f


def test_shedding_steps_the_plan_up_by_its_headroom(tmp_path: Path, monkeypatch) -> None:
    """Arrivals under the plan's demand but the stages shed 10% of them (drops anywhere, late answers at
    a sink) over a whole window under the plan in force: the plan's demand x (1 + headroom), at once."""
    f = _shedding(tmp_path, monkeypatch, {("det", "drops"): 0.2})  # 1%: under the 2% limit
    assert f.c.surge() is False and f.c.shed_share() == (pytest.approx(0.01), pytest.approx(2.0))
    f.push(20, stages={("det", "drops"): 1.0, ("cls", "misses"): 1.0})
    assert f.c.surge() is True and len(f.applied) == 1
    shed = f.events("shed")
    assert len(shed) == 1 and shed[0]["share"] == pytest.approx(0.1) and shed[0]["planned_rps"] == pytest.approx(30.0)
    plan = f.events("plan")[-1]
    assert plan["demand_rps"] == pytest.approx(45.0)
    assert plan["reason"] == "shedding: 10.0% of 20.0 req/s dropped or late over 10 s, under the 30.0 planned"
    # the new plan is judged only on a whole window of its own
    f.push(20, stages={("det", "drops"): 2.0})
    assert f.c.surge() is False and f.c.shed_share() is None
    f.push(20, stages={("det", "drops"): 2.0})
    assert f.c.surge() is True and f.c.plan.demand_rps == pytest.approx(67.5)


def test_shedding_counts_late_answers_only_at_the_sinks_and_needs_enough_requests(tmp_path: Path, monkeypatch) -> None:
    f = _shedding(tmp_path, monkeypatch, {("det", "misses"): 5.0})  # late leaving det, not an answer: not shed
    assert f.c.surge() is False and f.c.shed_share() == (pytest.approx(0.0), pytest.approx(0.0))
    f.push(1, stages={("cap", "misses"): 0.5})            # 50% of 10 requests: under shed_min
    assert f.c.surge() is False and f.applied == []
    assert f.c.shed_share() == (pytest.approx(0.5), pytest.approx(5.0))


def test_no_shedding_checks_when_they_are_off(tmp_path: Path, monkeypatch) -> None:
    f = _shedding(tmp_path, monkeypatch, {("det", "drops"): 10.0}, shed_limit=0.0)
    assert f.c.surge() is False and f.applied == [] and not f.events("shed")


def _stepped_up(tmp_path: Path, monkeypatch) -> Fixture:
    """A plan for 30 req/s stepped up to 45 by its stages shedding 10% of 20 req/s (down replans for the
    forecast as it is: no margin for noise)."""
    f = _shedding(tmp_path, monkeypatch, {("det", "drops"): 2.0}, down_cooldown=1, noise_z=0.0)
    assert f.c.surge() is True and f.c.plan.demand_rps == pytest.approx(45.0)
    return f


def test_no_down_replan_while_the_forecast_stays_at_the_rate_that_shed(tmp_path: Path, monkeypatch) -> None:
    """After a shedding step-up at 20 req/s (30 -> 45 planned), a forecast of 20 would plan 30 again after
    the cooldown (20 < 0.7 x 45): not while it stays at or above 20; at 12 it may."""
    f = _stepped_up(tmp_path, monkeypatch)
    for _ in range(3):
        f.push(20)
        f.c.step()
    assert f.c.plan.demand_rps == pytest.approx(45.0) and len(f.applied) == 1
    f.push(12)
    f.c.step()              # the forecaster's window of 1: 12 req/s, under the rate that shed
    assert f.c.plan.demand_rps == pytest.approx(18.0) and f.c.shed_floor is None


def test_down_replans_after_a_shedding_step_up_stop_at_the_demand_stepped_up_to(tmp_path: Path, monkeypatch) -> None:
    """A step-up at 20 req/s (30 -> 45), then the forecast up to 60 (90 planned): at 25 req/s, still over the
    rate that shed, the plan comes down to 45, not to 37.5 nor held at 90."""
    f = _stepped_up(tmp_path, monkeypatch)
    f.push(60)
    f.c.step()              # the step's rate spans the surge check's scrape too: 40 req/s
    f.push(60)
    f.c.step()
    assert f.c.plan.demand_rps == pytest.approx(90.0)
    f.push(25)
    f.c.step()
    assert f.c.plan.demand_rps == pytest.approx(45.0) and f.c.shed_floor == (pytest.approx(20.0), pytest.approx(45.0))


@pytest.mark.parametrize("down_on_rise, planned", [(False, 36.25), (True, 30.0)])
def test_a_down_replan_covers_what_rising_arrivals_project(tmp_path: Path, monkeypatch, down_on_rise: bool,
                                                           planned: float) -> None:
    """Arrivals at 5, 5, then 20 req/s under a plan for 45: the forecast (20) calls for a plan of 30, but
    the arrivals rise: over the last 6 s 120 requests against 90 in the 6 s before (2.1 sigma), 0.83
    req/s per s, projected 5 s on (half a window, no apply yet, one poll) to 24.17 req/s: the plan comes
    down only to 24.17 x 1.5, unless ``down_on_rise`` (no margin for noise here)."""
    f = Fixture(tmp_path, monkeypatch, Policy(headroom=0.5, down_cooldown=2, down_on_rise=down_on_rise, noise_z=0.0))
    f.c.initial(45.0)
    for rps in (5, 5, 20):
        f.push(rps)
        f.c.step()
    assert f.c.plan.demand_rps == pytest.approx(planned, abs=0.01)
    assert f.events("plan")[-1]["reason"] == "forecast 20.0 req/s, down from 45.0"


def test_plans_leave_the_stages_admission_reserve_of_the_slo(tmp_path: Path, monkeypatch) -> None:
    """The stages hold back ``admission_reserve`` of every request's budget: the controller's plans fit
    their paths' worst cases within the rest."""
    f = Fixture(tmp_path, monkeypatch, Policy(admission_reserve=0.2))
    plan = f.c.initial(20.0)
    assert plan.solver["latency_reserve"] == 0.2
    assert max(p["latency_ms"] for p in plan.paths) <= 0.8 * f.app.latency_slo_ms + 1e-6


def test_no_traffic_plans_the_least_once() -> None:
    """A forecast of 0 req/s (traffic stopped) replans down to MIN_PLANNED_RPS, the least plan, instead of
    asking the planner for 0 req/s (an InputError every interval); then it keeps that plan."""
    from jigsawserve.orchestrator.loop.controller import MIN_PLANNED_RPS, Policy, decide
    assert decide(60.0, 0.0, 10, Policy()) == MIN_PLANNED_RPS
    assert decide(MIN_PLANNED_RPS, 0.0, 10, Policy()) is None


# -- an unreachable server ----------------------------------------------------------------------------

def test_scrape_of_a_closed_port_names_the_metrics_url() -> None:
    from jigsawserve.orchestrator.errors import UnreachableError
    from jigsawserve.orchestrator.serving.metrics import scrape
    from jigsawserve.orchestrator.serving.server import free_ports
    url = f"http://127.0.0.1:{free_ports(1)[0]}/metrics"
    with pytest.raises(UnreachableError, match=f"cannot reach the server's metrics at {url}: .*refused"):
        scrape(url, 0.0)


def test_run_against_a_dead_server_says_what_it_cannot_reach_and_keeps_the_plan(tmp_path: Path) -> None:
    from jigsawserve.orchestrator.serving.server import free_ports
    url = f"http://127.0.0.1:{free_ports(1)[0]}/metrics"
    lines: list[str] = []
    stop = threading.Event()
    c = Controller(load_app(CPU / "app.yaml"), load_profiles(CPU / "profiles.csv"), gpu_type("cpu"), PlanOptions(),
                   Inventory(gpus=(), source="test: cpu"), tmp_path / "repo", url, MovingAverage(window=1, slack=0.0),
                   EventLog(tmp_path / "events.jsonl", origin=0.0), POLICY, apply_plan=lambda r: None,
                   progress=lambda line: (lines.append(line), len(lines) == 3 and stop.set()))
    plan = c.initial(20)
    c.run(0.5, stop)  # two steps fail, each logged, then the progress callback stops it
    assert len(lines) == 3 and c.plan is plan
    for line in lines[1:]:
        assert line.startswith(f"controller step failed: cannot reach the server's metrics at {url}: ")
        assert "keeping the plan for 20 req/s, retrying in 0.5 s" in line and "URLError" not in line
    errors = [e for e in map(json.loads, (tmp_path / "events.jsonl").read_text().splitlines()) if e["kind"] == "error"]
    assert len(errors) == 2 and url in errors[0]["reason"]


def test_an_apply_to_an_unreachable_server_keeps_the_plan_and_names_the_address(tmp_path: Path, monkeypatch) -> None:
    import tritonclient.grpc as grpcclient
    from jigsawserve.orchestrator.serving.control import Applier
    from jigsawserve.orchestrator.serving.server import free_ports
    f = Fixture(tmp_path, monkeypatch, Policy(headroom=0.1))
    first = f.c.initial(20 * 1.1)
    addr = f"127.0.0.1:{free_ports(1)[0]}"
    client = grpcclient.InferenceServerClient(addr)
    f.c.apply_plan = Applier(tmp_path / "repo", client)
    try:
        for rps in (20, 200):
            f.push(rps)
        f.c.step()
        f.c.step()  # replans up; the apply cannot reach the server
    finally:
        client.close()
    assert f.c.plan is first
    assert any(line.startswith(f"apply failed, old plan keeps serving: cannot reach the server's gRPC endpoint "
                               f"at {addr}") for line in f.lines), f.lines
    assert [e["reason"] for e in f.events("apply_failed")] == [
        next(line for line in f.lines if "apply failed" in line).split("keeps serving: ", 1)[1]]
    assert not (tmp_path / "repo.previous").exists()


# -- standby plans ----------------------------------------------------------------------------------

def _routed(rendered) -> set[str]:
    return {r["model"] for t in rendered.routing["tasks"].values() for r in t["routes"]}


def test_a_scale_up_the_standby_plan_covers_is_a_routing_swap(tmp_path: Path, monkeypatch) -> None:
    f = Fixture(tmp_path, monkeypatch, Policy(headroom=0.1, standby=True))
    first = f.c.initial(22.0)
    standby = f.c.standby
    assert standby is not None and standby.demand_rps == pytest.approx(22.0 * 1.1 ** 2)
    held = dict(f.c.rendered.configs)                  # the repository the server starts from: both plans' runners
    assert {runner_name(f.app.name, e) for e in standby.entries} <= set(held)
    assert _routed(f.c.rendered) == {runner_name(f.app.name, e) for e in first.entries}
    for rps in (20, 20, 23):                           # 23 x 1.1 = 25.3: within the standby's 26.62
        f.push(rps)
    for _ in range(3):
        f.c.step()
    assert f.c.plan is standby
    swap, restandby = f.applied                        # the swap, then the next standby loaded beside it
    assert all(held.get(n) == cfg for n, cfg in swap.configs.items() if n != f.app.name)   # nothing new to load
    assert set(held) <= set(swap.configs)              # and nothing unloaded on the critical path
    assert _routed(swap) == {runner_name(f.app.name, e) for e in standby.entries}
    assert f.events("plan")[-1]["standby"] is True and "standby plan" in f.events("plan")[-1]["reason"]
    assert f.c.standby is not None and f.c.standby.demand_rps == pytest.approx(standby.demand_rps * 1.21)
    assert restandby.routing == swap.routing and set(restandby.standby) <= set(restandby.configs)


def test_a_scale_up_beyond_the_standby_plans_afresh_and_keeps_what_is_loaded(tmp_path: Path, monkeypatch) -> None:
    f = Fixture(tmp_path, monkeypatch, Policy(headroom=0.1, standby=True))
    f.c.initial(22.0)
    held = set(f.c.rendered.configs)
    for rps in (20, 20, 200):
        f.push(rps)
    for _ in range(3):
        f.c.step()
    assert f.c.plan.demand_rps == pytest.approx(220.0) and f.events("plan")[-1]["standby"] is False
    assert held <= set(f.applied[0].configs)           # loads what it needs; unloads nothing until the next standby


def test_no_standby_beyond_the_spare_slices(tmp_path: Path, monkeypatch) -> None:
    f = Fixture(tmp_path, monkeypatch, Policy(headroom=0.1, standby=True, standby_step=8.0, standby_slices=0))
    f.c.initial(22.0)
    assert f.c.standby is None and f.c.rendered.standby == []
    skipped = f.events("standby_skipped")
    assert skipped and all(e["cap_slices"] == 0 and e["extra_slices"] > 0 for e in skipped)
