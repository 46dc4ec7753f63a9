"""bench/h200_eval.py --merge: per-call results of one app combined in the systems' order; bench/runner_loads.py."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("h200_eval", ROOT / "bench" / "h200_eval.py")
h200_eval = importlib.util.module_from_spec(spec)
spec.loader.exec_module(h200_eval)


def _entry(system: str, **over) -> dict:
    e = {"system": system, "label": h200_eval.SYSTEMS[system], "app": "ar", "device": "GPU", "gpus": 1,
         "peak_rps": 313.0, "capacity_ast_rps": 626.0, "slices_total": 7, "duration_s": 200.0,
         "interval_s": 10.0, "headroom": 0.5}
    e.update(over)
    return e


def test_merge_orders_systems_and_keeps_every_entry(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([_entry("st"), _entry("as")]))
    b.write_text(json.dumps([_entry("at", infeasible="slices: ..."), _entry("ast")]))
    assert [e["system"] for e in h200_eval.merge([str(a), str(b)])] == ["ast", "at", "st", "as"]


def test_merge_refuses_runs_on_different_days(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([_entry("ast")]))
    b.write_text(json.dumps([_entry("st", duration_s=100.0)]))
    with pytest.raises(SystemExit, match="st differs from ast in duration_s"):
        h200_eval.merge([str(a), str(b)])


def test_merge_refuses_runs_with_different_refinement(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([_entry("ast", refine_drift=0.25)]))
    b.write_text(json.dumps([_entry("st", refine_drift=0.1)]))
    with pytest.raises(SystemExit, match="st differs from ast in refine_drift"):
        h200_eval.merge([str(a), str(b)])


def test_merge_refuses_runs_planned_from_different_profiles(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([_entry("ast", profiles="examples/h200/profiles.csv")]))
    b.write_text(json.dumps([_entry("st", profiles="examples/h200/profiles.refined.csv")]))
    with pytest.raises(SystemExit, match="st differs from ast in profiles"):
        h200_eval.merge([str(a), str(b)])


def test_runner_loads_per_architecture() -> None:
    spec = importlib.util.spec_from_file_location("runner_loads", ROOT / "bench" / "runner_loads.py")
    runner_loads = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner_loads)
    lines = ['I1129 model.py:1] "jigsaw runner app__t__vits__1g1p1b seg0_0: ready 10.0 s after its stub started '
             '(build and capture 9.5 s)"',
             "jigsaw runner app__t__vits__1g2p1b seg0_1: ready 6.0 s after its stub started (build and capture 5.5 s; "
             "context 0.50, imports 3.00, build 1.00, b1 1.00)",
             "jigsaw runner app__u__resnet50__3g1p8b seg0_0: ready 4.0 s after its stub started (build and capture 3.0 s; "
             "context 0.50, build 1.00, b1 0.25, b2 0.25, b8 1.00)",
             "unrelated line"]
    per_arch, share = runner_loads.summarize(lines)
    assert per_arch == {"vits": [(10.0, 9.5), (6.0, 5.5)], "resnet50": [(4.0, 3.0)]}
    assert share == pytest.approx(18.0 / 20.0)
    assert runner_loads.breakdown(lines) == {"resnet50": {"context": 0.5, "build": 1.0, "capture": 1.5},
                                             "vits": {"context": 0.5, "imports": 3.0, "build": 1.0, "capture": 1.0}}


def test_the_capture_threshold_is_named_as_the_runners_read_it() -> None:
    zoo = pytest.importorskip("jigsawserve.triton_backend.zoo")
    assert (h200_eval.CAPTURE_ENV, h200_eval.CAPTURE_POLICIES) == (zoo.CAPTURE_ENV, zoo.CAPTURE_POLICIES)
