"""Typed apps under load and the controller, on a real tritonserver (CPU):

- the closed loop (``jigsawserve.orchestrator.loop.experiment.run``) drives tests/typed_app with its ground-truth requests
  (3 squares per image: a fan-out of 3 where the spec says 2); the controller measures the fan-out from
  the graph's jigsaw_edge_* counters, replans with the measured factor, and the report shows planned
  against measured;
- a join (tests/typed_app/join.yaml: measure has two parents) serves both parents' items;
- ``jigsaw load --input`` sends a typed app's real requests and records how many items each answered.

Every server is stopped through its process group by ``TritonServer`` (a context manager), also on
failure; the closed loop's by ``experiment.run``'s ExitStack.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from jigsawserve.orchestrator.spec.appspec import load_app
from jigsawserve.orchestrator.loop.controller import Policy
from jigsawserve.orchestrator.loop.experiment import Experiment, run
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.serving.inventory import Inventory, detect
from jigsawserve.orchestrator.planning.plan import Plan
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan
from jigsawserve.orchestrator.spec.profiles import load_profiles
from jigsawserve.orchestrator.serving.render import build_configs, write_repository
from jigsawserve.orchestrator.serving.server import TritonServer, free_ports
from jigsawserve.orchestrator.serving.tritonenv import prepare_backend_dir, server_env
from jigsawserve.orchestrator.workload.trace import Trace

APP = Path(__file__).resolve().parent / "typed_app"


def _png(squares: list[tuple[int, int, int, int]], width: int = 64, height: int = 48) -> bytes:
    img = np.zeros((height, width, 3), np.uint8)
    for x0, y0, x1, y1 in squares:
        img[y0:y1, x0:x1] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_closed_loop_refines_the_fanout_to_the_measured_one(tmp_path: Path) -> None:
    out = tmp_path / "run"
    lines: list[str] = []
    exp = Experiment(app=load_app(APP / "app.yaml"), profiles=load_profiles(APP / "profiles.csv"),
                     gpu=gpu_type("cpu"), opts=PlanOptions(gpus=4), inventory=detect(None),
                     trace=Trace(1.0, [10.0] * 20), interval_s=2.0, out=out, policy=Policy(),
                     notes="tests/test_typed_control.py")
    summary = run(exp, progress=lines.append)
    log = "\n".join(lines)
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]

    rows = list(csv.DictReader((out / "requests.csv").open()))
    assert len(rows) == summary["requests"]["total"] > 150
    assert summary["requests"]["error"] == 0, [r["error"] for r in rows if r["outcome"] == "error"][:3]
    assert {r["items"] for r in rows if r["outcome"] in ("ok", "late")} == {"3"}, "every answer has 3 squares"
    assert json.loads((out / "run.json").read_text())["dataset"] == str(out / "dataset")

    fanouts = [e for e in events if e["kind"] == "fanout"]
    first = fanouts[0]
    assert (first["edge"], first["planned"], first["measured"], first["refined"]) == ("find->measure", 2.0, 3.0, True)
    refined = [p for p in events if p["kind"] == "plan" and "fan-out measured" in p["reason"]]
    assert refined, log
    spec = refined[0]["plan"]["app_spec"]
    assert spec["edges"][0]["factors"] == {first["variant"]: 3.0}
    assert refined[0]["plan"]["task_demand"]["measure"] == pytest.approx(3 * refined[0]["plan"]["task_demand"]["find"])
    # settled: the later measurements agree with the factor planned, within a few intervals
    later = [e for e in fanouts if e["t"] > first["t"] and e["variant"] == first["variant"]]
    assert later and not any(e["refined"] for e in later) and all(e["planned"] == 3.0 for e in later)
    (row,) = [r for r in summary["fanout"] if r["variant"] == first["variant"]]
    assert (row["spec"], row["planned"], row["measured"], row["refinements"]) == (2.0, 3.0, 3.0, 1)
    assert row["converged_interval"] <= 4, row


@pytest.fixture(scope="module")
def join_server(tmp_path_factory) -> Iterator[TritonServer]:
    tmp = tmp_path_factory.mktemp("join")
    app = load_app(APP / "join.yaml")
    plan = make_plan(app, load_profiles(APP / "profiles.csv"), gpu_type("cpu"), 20.0, PlanOptions(gpus=4))
    write_repository(build_configs(plan, Inventory(gpus=(), source="test: cpu"), graph_instances=2), tmp / "repo")
    http_port, grpc_port, metrics_port = free_ports(3)
    with TritonServer(tmp / "repo", prepare_backend_dir(tmp / "backends"), http_port=http_port, grpc_port=grpc_port,
                      metrics_port=metrics_port, log_path=tmp / "tritonserver.log", env=server_env()) as server:
        yield server


def test_a_join_answers_both_parents_items(join_server: TritonServer) -> None:
    client = grpcclient.InferenceServerClient(join_server.grpc_url)
    try:
        for squares, expected in (([(4, 4, 14, 10), (30, 20, 50, 40)], [[6, 10], [20, 20], [24, 32]]),
                                  ([], [[24, 32]])):
            image = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
            image.set_data_from_numpy(np.array([[_png(squares)]], dtype=np.object_))
            result = client.infer("shapesjoin", [image])
            # find's crops first, then shrink's half-size image (the parents' order)
            assert result.as_numpy("SIZE")[0].tolist() == expected
            assert [v.decode() for v in result.as_numpy("measure_VARIANT")[0]] == ["meter_a"] * len(expected)
    finally:
        client.close()


def test_jigsaw_load_sends_a_typed_apps_files(join_server: TritonServer, tmp_path: Path, capsys) -> None:
    from jigsawserve.orchestrator.cli import main
    (tmp_path / "one.png").write_bytes(_png([(4, 4, 14, 10)]))
    (tmp_path / "two.png").write_bytes(_png([(4, 4, 14, 10), (30, 20, 50, 40)]))
    args = ["load", "--url", join_server.grpc_url, "--model", "shapesjoin", "--rate", "20", "--duration", "1.5",
            "--out", str(tmp_path / "requests.csv"), "--json"]
    assert main([*args, "--input", str(tmp_path / "one.png"), "--input", str(tmp_path / "two.png")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["requests"] == summary["ok"] + summary["late"] > 10 and summary["error"] == 0
    rows = sorted(csv.DictReader((tmp_path / "requests.csv").open()), key=lambda r: int(r["id"]))
    assert [r["items"] for r in rows[:4]] == ["2", "3", "2", "3"]  # the files in turn: squares + the thumbnail
    assert main([*args, "--rate", "1"]) == 1
    assert "model 'shapesjoin' is a typed app (inputs IMAGE): give its requests' tensors" in capsys.readouterr().err
