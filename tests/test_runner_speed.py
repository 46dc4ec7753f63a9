"""tools/runner_speed.py and `jigsaw refine-profiles`: runner speeds read back from a run's events."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import ROOT

from jigsawserve.orchestrator.spec.appspec import load_app
from jigsawserve.orchestrator.cli import main
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan
from jigsawserve.orchestrator.spec.profiles import ProfilePoint, Profiles, load_profiles, save_profiles
from jigsawserve.orchestrator.loop.refinement import expected_ms
from jigsawserve.orchestrator.serving.render import runner_name
from jigsawserve.tools.runner_speed import extended, observations, refined, slowdowns

CPU = ROOT / "examples" / "cpu"


def _run(tmp_path: Path, slow: float, steps: int = 4, busy_batches: int = 400) -> tuple[Path, dict]:
    """A run directory whose events hold one plan and ``steps`` 10 s steps in which the det runner ran
    ``busy_batches`` batches of 2 rows ``slow`` times its profiled p95 and the other runners 30 batches
    as profiled; the plan and the det entry."""
    app, profiles = load_app(CPU / "app.yaml"), load_profiles(CPU / "profiles.csv")
    plan = make_plan(app, profiles, gpu_type("cpu"), 22.0, PlanOptions())
    events = [{"t": 0.0, "kind": "plan", "plan": plan.to_json()}]
    totals: dict[str, dict[str, float]] = {}
    for step in range(steps + 1):
        for e in plan.entries:
            profile = app.task(e.task).variant(e.variant).profile
            ms = expected_ms(profiles.for_variant(profile, "cpu"), 2.0)
            n, ratio = (busy_batches, slow) if e.task == "det" else (30, 1.0)
            c = totals.setdefault(runner_name(app.name, e), dict.fromkeys(
                ("batches", "rows", "requests", "padding", "compute_us", "queue_us"), 0.0))
            if step:
                c.update(batches=c["batches"] + n, rows=c["rows"] + 2 * n, requests=c["requests"] + 2 * n,
                         compute_us=c["compute_us"] + 2 * n * ratio * ms * 1000, queue_us=c["queue_us"] + 2 * n * 500)
        events.append({"t": 10.0 * step + 0.5, "kind": "metrics", "runners": json.loads(json.dumps(totals))})
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run, next(e for e in plan.entries if e.task == "det")


def test_observations_measure_each_runner_against_its_profile(tmp_path: Path) -> None:
    run, det = _run(tmp_path, slow=1.3)
    obs = observations(run, load_profiles(CPU / "profiles.csv"))
    dets = [o for o in obs if o.shape[2:] == (det.mig, det.mps) and "det" in o.runner]
    assert len(dets) == 4 and all(o.ratio == pytest.approx(1.3) for o in dets)
    assert all(o.batch == pytest.approx(2.0) and o.queue_ms == pytest.approx(0.5) for o in dets)
    # 400 batches of 1.3 x the profiled time in 10 s, over the runner's processes
    ms = dets[0].profiled_ms * 1.3
    assert dets[0].busy == pytest.approx(400 * ms / 1000 / 10.0 / (det.count * det.mps))
    assert all(o.ratio == pytest.approx(1.0) for o in obs if "det" not in o.runner)


def test_slowdowns_count_only_busy_steps_and_refined_scales_only_the_slow_shapes(tmp_path: Path) -> None:
    run, det = _run(tmp_path, slow=1.3)
    profiles = load_profiles(CPU / "profiles.csv")
    obs = observations(run, profiles)
    busy = {o.shape for o in obs if o.busy >= 0.5}
    found = slowdowns(obs, min_busy=0.5)
    assert set(found) == busy and all(steps == 4 for _, steps in found.values())
    assert slowdowns(obs, min_steps=5) == {}
    out = refined(profiles, slowdowns(obs, min_busy=0.0), min_ratio=1.05)
    app = load_app(CPU / "app.yaml")
    slow_shape = (app.task("det").variant(det.variant).profile, "cpu", det.mig, det.mps)
    for p, q in zip(profiles.points, out.points):
        if (p.variant, p.gpu, p.mig, p.mps) == slow_shape:
            assert q.latency_ms == pytest.approx(1.3 * p.latency_ms)
            assert q.throughput_rps == pytest.approx(p.throughput_rps / 1.3)
        else:
            assert q == p


def test_save_profiles_round_trips(tmp_path: Path) -> None:
    profiles = load_profiles(CPU / "profiles.csv")
    save_profiles(profiles, tmp_path / "p.csv")
    again = load_profiles(tmp_path / "p.csv")
    assert len(again.points) == len(profiles.points)
    for p, q in zip(profiles.points, again.points):
        assert (p.variant, p.gpu, p.mig, p.mps, p.batch) == (q.variant, q.gpu, q.mig, q.mps, q.batch)
        assert q.latency_ms == pytest.approx(p.latency_ms, abs=1e-4)


def test_refine_profiles_command_writes_the_refined_csv_and_says_what_it_scaled(tmp_path: Path, capsys) -> None:
    run, _ = _run(tmp_path, slow=1.3)
    out, profiles = tmp_path / "refined.csv", str(CPU / "profiles.csv")
    assert main(["refine-profiles", str(run), "--profiles", profiles, "--out", str(out), "--min-busy", "0"]) == 0
    printed = capsys.readouterr().out
    assert "x1.300" in printed and "kept" in printed and f"wrote {out}" in printed
    assert load_profiles(out).points != load_profiles(profiles).points
    # no step busy enough, no events: clear errors, exit 1
    assert main(["refine-profiles", str(run), "--profiles", profiles, "--out", str(tmp_path / "x.csv"),
                 "--min-busy", "1"]) == 1
    assert "busy 1 of the time" in capsys.readouterr().err
    assert main(["refine-profiles", str(tmp_path), "--profiles", profiles, "--out", str(tmp_path / "x.csv")]) == 1
    assert "no events.jsonl" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()


def test_extended_borrows_the_nearest_seen_shape_with_the_same_process_count() -> None:
    shapes = [("v", 1, 1), ("v", 2, 1), ("v", 3, 1), ("v", 1, 2), ("v", 4, 2), ("w", 1, 1), ("w", 1, 2)]
    profiles = Profiles(tuple(ProfilePoint(v, "g", mig, mps, 1, 10.0, 100.0) for v, mig, mps in shapes))
    found = {("v", "g", 1, 1): (1.2, 3), ("v", "g", 3, 1): (1.1, 3), ("v", "g", 1, 2): (1.3, 3),
             ("w", "g", 1, 1): (1.4, 3)}
    assert extended(profiles, found) == {
        ("v", "g", 2, 1): (("v", "g", 1, 1), 1.2),   # 1g and 3g as near: the larger ratio
        ("v", "g", 4, 2): (("v", "g", 1, 2), 1.3),
    }                                                # w 1g x2: no x2 shape of w seen, kept


def test_refine_profiles_extend_scales_unseen_shapes_like_their_neighbour(tmp_path: Path, capsys) -> None:
    run, det = _run(tmp_path, slow=1.3)
    app = load_app(CPU / "app.yaml")
    profile = app.task("det").variant(det.variant).profile
    base = load_profiles(CPU / "profiles.csv")
    # the same rows once more as a 2-slice shape no run used
    wider = [replace(p, mig=2) for p in base.points if p.variant == profile]
    src = tmp_path / "profiles.csv"
    save_profiles(Profiles(base.points + tuple(wider)), src)
    out = tmp_path / "refined.csv"
    assert main(["refine-profiles", str(run), "--profiles", str(src), "--out", str(out), "--min-busy", "0",
                 "--extend"]) == 0
    printed = capsys.readouterr().out
    assert "(from 1g x1)" in printed and "1 not seen scaled like a neighbour" in printed
    again = {(p.variant, p.mig, p.batch): p.latency_ms for p in load_profiles(out).points}
    for p in wider:
        assert again[(p.variant, 2, p.batch)] == pytest.approx(1.3 * p.latency_ms, rel=1e-4)
