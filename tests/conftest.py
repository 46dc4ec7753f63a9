"""Shared fixtures: the shipped A100 profiles and small synthetic apps."""
from __future__ import annotations

from pathlib import Path

import pytest

from jigsawserve.orchestrator.spec.appspec import AppSpec, parse_app
from jigsawserve.orchestrator.spec.profiles import Profiles, ProfilePoint, load_profiles

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def a100_profiles() -> Profiles:
    return load_profiles(ROOT / "examples" / "a100" / "profiles.csv")


def tiny_app(latency_slo_ms: float = 60, accuracy_slo: float = 0.9, factor: float = 2.0,
             factors: dict | None = None) -> AppSpec:
    """Two-task chain ``det -> cls`` with two variants each (synthetic)."""
    edge = {"from": "det", "to": "cls", "factor": factor}
    if factors:
        edge["factors"] = factors
    return parse_app({
        "name": "tiny", "latency_slo_ms": latency_slo_ms, "accuracy_slo": accuracy_slo,
        "tasks": {"det": {"variants": {"det_s": {"accuracy": 0.80}, "det_l": {"accuracy": 0.90}}},
                  "cls": {"variants": {"cls_s": {"accuracy": 0.70}, "cls_l": {"accuracy": 0.80}}}},
        "edges": [edge]})


def tiny_profiles() -> Profiles:
    """A few segments per variant: (mig, mps, batch, p95 ms, segment req/s)."""
    table = {
        "det_s": [(1, 1, 1, 4, 200), (1, 1, 4, 10, 350), (3, 1, 4, 5, 900), (7, 1, 8, 6, 2200)],
        "det_l": [(1, 1, 1, 8, 110), (3, 1, 4, 9, 480), (7, 1, 8, 10, 1300)],
        "cls_s": [(1, 1, 1, 3, 300), (1, 2, 4, 12, 520), (3, 1, 8, 8, 1500), (7, 1, 16, 9, 3600)],
        "cls_l": [(1, 1, 1, 6, 150), (3, 1, 8, 14, 800), (7, 1, 16, 15, 2000)],
    }
    return Profiles(tuple(ProfilePoint(v, "a100-80gb", m, p, b, lat, thr)
                          for v, rows in table.items() for m, p, b, lat, thr in rows))
