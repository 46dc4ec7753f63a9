"""The OCR example with real weights (PP-OCRv4 and PP-OCRv6 from the rapidocr wheels) served end to end
on the CPU by a real tritonserver: `jigsaw demo --app examples/ocr/app.yaml` on a few ground-truth
images; skipped where the OCR extra (pip install -e '.[ocr]') is not installed."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("rapidocr_onnxruntime")
pytest.importorskip("rapidocr")

from jigsawserve.orchestrator.spec.appspec import load_app  # noqa: E402
from jigsawserve.orchestrator.spec.typed import check_variants  # noqa: E402
from jigsawserve.tools import evaluate, typed_demo  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "examples" / "ocr" / "app.yaml"


def test_models_are_located_in_the_installed_wheels() -> None:
    app = load_app(APP)
    check_variants(app)  # every variant's model file found and of the expected signature
    assert app.task("rec").variant("rec_v6").runtime["args"]["model"].startswith("package:rapidocr/")


def test_variants_read_rendered_text_in_process(tmp_path: Path) -> None:
    app = load_app(APP)
    samples = evaluate.load_dataset(app, evaluate.make_dataset(app, tmp_path, 4, seed=3))
    _, score = evaluate.scorer(app)
    pipeline = evaluate.LocalPipeline(app)
    for choice in ({"det": "det_v4", "rec": "rec_v4"}, {"det": "det_v6", "rec": "rec_v6"}):
        assert sum(score(s.label, pipeline(s.tensors, choice)[0]) for s in samples) / len(samples) > 0.9, choice


def test_demo_serves_real_ocr_with_quality_and_fanout(tmp_path: Path) -> None:
    app = load_app(APP)
    summary = typed_demo.run(app, APP.parent / "profiles.csv", tmp_path, requests=8, progress=lambda _: None)
    assert summary["answered"] == 8 and summary["errors"] == 0
    assert summary["quality"]["metric"] == "character accuracy" and summary["quality"]["items"] == 8
    assert summary["quality"]["measured"] > 0.9
    fan = summary["fanout"]["det->rec"]
    assert fan["planned"] == pytest.approx(2.28) and fan["measured"] is not None and fan["measured"] > 0
    assert summary["bad_input"]["healthy_after"] and "not a decodable image" in summary["bad_input"]["error"]


def test_profile_accuracy_cli_writes_each_variants_measure(tmp_path: Path) -> None:
    import csv

    from jigsawserve.orchestrator.cli import main
    data = evaluate.make_dataset(load_app(APP), tmp_path / "data", 3, seed=5)
    assert main(["profile", str(APP), "--accuracy", str(data), "--out", str(tmp_path / "acc.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "acc.csv")))
    assert [(r["task"], r["variant"]) for r in rows] == [("det", "det_v4"), ("det", "det_v6"), ("det", "det_v6_320"),
                                                         ("rec", "rec_v4"), ("rec", "rec_v6")]
    assert all(0 <= float(r["accuracy"]) <= 1 and r["metric"] == "character accuracy" and r["requests"] == "3"
               for r in rows)
    assert rows[0]["others"] == "rec=rec_v6" and rows[3]["others"] == "det=det_v6"
