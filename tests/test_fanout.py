"""Measured fan-out (orchestrator/loop/fanout.py) and its report rows (orchestrator/reporting/fanout_report.py), without a server."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import tiny_app
from jigsawserve.orchestrator.loop.fanout import FanoutMeter, drifted, edge_counts, with_factors
from jigsawserve.orchestrator.serving.metrics import parse
from jigsawserve.orchestrator.reporting.fanout_report import fanout_lines, fanout_summary

KEY = ("det", "cls", "det_s")


def _scrape(parents: float, children: float, app: str = "tiny"):
    labels = f'app="{app}",parent="det",child="cls",variant="det_s"'
    return parse(f"# TYPE jigsaw_edge_parent_items_total counter\njigsaw_edge_parent_items_total{{{labels}}} {parents}\n"
                 f"# TYPE jigsaw_edge_child_items_total counter\njigsaw_edge_child_items_total{{{labels}}} {children}\n",
                 0.0)


def test_the_meter_counts_from_its_first_scrape_across_restarts() -> None:
    meter = FanoutMeter()
    for parents, children in ((10, 40), (30, 100), (5, 10)):  # the last: the graph model reloaded, from 0
        meter.update(edge_counts(_scrape(parents, children), "tiny"))
    assert meter.factor(KEY) == (pytest.approx(70 / 25), 25, 70)
    assert edge_counts(_scrape(1, 2), "other") == {}
    assert meter.factor(("det", "cls", "det_l")) == (0.0, 0.0, 0.0)


def test_with_factors_replans_from_the_measured_factor_and_keeps_the_rest() -> None:
    app = tiny_app(factor=2.0, factors={"det_l": 2.5})
    measured = with_factors(app, {KEY: 3.14159, ("det", "cls", "det_l"): 0.0})
    (edge,) = measured.edges
    assert (edge.factor, edge.factor_for("det_s"), edge.factor_for("det_l")) == (2.0, 3.1416, 0.01)
    assert measured.doc["edges"][0]["factors"] == {"det_l": 0.01, "det_s": 3.1416}
    assert app.edges[0].factor_for("det_s") == 2.0  # the app given is left as it was


def test_the_report_rows_say_when_the_refinement_settled(tmp_path: Path) -> None:
    events = [{"kind": "interval"}, {"kind": "interval"},
              {"kind": "fanout", "edge": "det->cls", "variant": "det_s", "planned": 2.0, "measured": 3.0,
               "parents": 20.0, "children": 60.0, "refined": True},
              {"kind": "interval"},
              {"kind": "fanout", "edge": "det->cls", "variant": "det_s", "planned": 3.0, "measured": 3.02,
               "parents": 50.0, "children": 151.0, "refined": False}]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (row,) = fanout_summary(tmp_path / "events.jsonl")
    assert row == {"edge": "det->cls", "variant": "det_s", "spec": 2.0, "planned": 3.0, "measured": 3.02,
                   "parents": 50.0, "children": 151.0, "refinements": 1, "converged_interval": 3}
    assert "spec 2, measured 3.020 over 50 items, planned last 3 (1 refinement(s); settled at interval 3)" \
        in fanout_lines([row])[0]
    assert fanout_summary(tmp_path / "none.jsonl") is None


def test_a_drift_counts_once_it_stands_out_of_the_measurements_noise() -> None:
    """3.5 children per parent against 3.0 planned (17% off): over 20 parents that is within two standard
    errors (sqrt(3.5 / 20) = 0.42 each), over 200 (0.13) it is not; a drift under 10% never counts."""
    assert not drifted(3.5, 3.0, 20, drift=0.10, z=2.0)
    assert drifted(3.5, 3.0, 200, drift=0.10, z=2.0)
    assert not drifted(3.2, 3.0, 100_000, drift=0.10, z=2.0)
    assert drifted(3.5, 3.0, 20, drift=0.10, z=0.0)  # without the test: the drift alone, as before
    assert not drifted(3.5, 3.0, 0, drift=0.10, z=2.0)
