"""``jigsaw plan --accuracy CSV``: measured accuracies replace the spec's cited ones, and the plan says
which each variant was planned with (orchestrator/spec/accuracy.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT, tiny_app
from jigsawserve.orchestrator.spec.accuracy import with_measured
from jigsawserve.orchestrator.cli import main
from jigsawserve.orchestrator.errors import InputError

CPU = ROOT / "examples" / "cpu"


def _csv(path: Path, rows: list[str], header: str = "task,variant,metric,accuracy,requests,others") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_measured_accuracies_replace_the_cited_ones(tmp_path: Path) -> None:
    app = tiny_app()
    measured, used = with_measured(app, _csv(tmp_path / "acc.csv", ["det,det_s,top-1,0.95,40,cls=cls_l",
                                                                     "det,det_l,top-1,0.85,40,cls=cls_l"]))
    assert used == ["det/det_s", "det/det_l"]
    assert measured.task("det").best.name == "det_s"  # measured: the small one reads better here
    assert measured.task("det").variant("det_l").accuracy == pytest.approx(0.85 / 0.95)
    assert measured.task("cls").variant("cls_l").raw_accuracy == 0.8  # not measured: cited
    source = measured.doc["tasks"]["det"]["variants"]["det_s"]["source"]
    assert source == "measured: acc.csv (metric top-1, requests 40); cited 0.8"


@pytest.mark.parametrize("rows, header, match", [
    (["det,det_x,top-1,0.9,1,"], None, r"acc.csv line 2: det/det_x is not a variant of app tiny"),
    (["det,det_s,top-1,high,1,"], None, r"line 2: accuracy: expected a number, got 'high'"),
    (["det,det_s,top-1,80,1,"], None, r"line 2: accuracy 80.0 is not in \(0, 1\]"),
    (["det,det_s,0.9"], "task,variant,score", r"expected a header with task, variant, accuracy; missing accuracy"),
    ([], None, r"the file has no rows"),
])
def test_a_bad_accuracy_csv_names_the_file_line_and_field(tmp_path: Path, rows, header, match) -> None:
    path = _csv(tmp_path / "acc.csv", rows, *([header] if header else []))
    with pytest.raises(InputError, match=match):
        with_measured(tiny_app(), path)


def test_plan_cli_plans_with_the_measured_accuracies_and_says_so(tmp_path: Path, capsys) -> None:
    acc = _csv(tmp_path / "acc.csv", ["det,det_small,top-1,0.9,50,", "det,det_large,top-1,0.6,50,"])
    args = ["plan", str(CPU / "app.yaml"), "--profiles", str(CPU / "profiles.csv"), "--demand", "20", "--gpus", "4"]
    assert main([*args, "--out", str(tmp_path / "cited.json")]) == 0
    assert main([*args, "--accuracy", str(acc), "--out", str(tmp_path / "measured.json")]) == 0
    out = capsys.readouterr().out
    assert f"accuracy: measured ({acc}) for det/det_small, det/det_large; cited (the spec's) for cls/cls_small" in out
    cited, measured = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("cited", "measured"))
    variants = measured["app_spec"]["tasks"]["det"]["variants"]
    assert variants["det_large"]["accuracy"] == 0.6 and variants["det_large"]["source"].startswith("measured: acc.csv")
    assert "source" not in measured["app_spec"]["tasks"]["cls"]["variants"]["cls_large"]
    assert {e["variant"] for e in measured["tasks"]["det"]} == {"det_small"}  # the one measured best
    assert "det_large" in {e["variant"] for e in cited["tasks"]["det"]}
    assert main([*args, "--accuracy", str(tmp_path / "missing.csv")]) == 1
