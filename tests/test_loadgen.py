"""Demand traces and arrivals (orchestrator/workload/trace.py) and the open-loop load generator (orchestrator/workload/loadgen.py,
``jigsaw load``) against a real tritonserver serving examples/cpu (started once for the module)."""
from __future__ import annotations

import asyncio
import csv
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from jigsawserve.orchestrator.spec.appspec import load_app
from jigsawserve.orchestrator.cli import main
from jigsawserve.orchestrator.errors import InputError
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.serving.inventory import Inventory
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan
from jigsawserve.orchestrator.spec.profiles import load_profiles
from jigsawserve.orchestrator.serving.render import build_configs, write_repository
from jigsawserve.orchestrator.serving.server import TritonServer, free_ports
from jigsawserve.orchestrator.serving.tritonenv import prepare_backend_dir, server_env
from jigsawserve.orchestrator.workload.loadgen import COLUMNS, ModelInfo, _Run, describe, run_load, run_load_apart
from jigsawserve.orchestrator.workload.trace import Trace, arrivals, compress, load_trace, poisson, scale_to_peak, synthetic_diurnal

ROOT = Path(__file__).resolve().parents[1]
CPU = ROOT / "examples" / "cpu"
SHIPPED = ROOT / "examples" / "traces" / "diurnal-synthetic.csv"


def _within_poisson(count: int, mean: float, sigmas: float = 4.0) -> bool:
    """A Poisson count is within ``sigmas`` standard deviations (sqrt(mean)) of its mean."""
    return abs(count - mean) <= sigmas * math.sqrt(mean)


# ---------------------------------------------------------------------------------------------
# arrivals

def test_poisson_rate_and_order() -> None:
    t = poisson(200.0, 50.0, seed=3)
    assert _within_poisson(len(t), 200 * 50), len(t)
    assert (np.diff(t) >= 0).all() and t[0] >= 0 and t[-1] < 50
    gaps = np.diff(t)                    # exponential gaps: mean 1/rate, coefficient of variation 1
    assert abs(gaps.std() / gaps.mean() - 1) < 0.05
    assert np.array_equal(t, poisson(200.0, 50.0, seed=3)) and not np.array_equal(t, poisson(200.0, 50.0, seed=4))


def test_trace_arrivals_follow_each_interval() -> None:
    trace = Trace(20.0, [50.0, 300.0, 0.0, 120.0])
    t = arrivals(trace, seed=1)
    counts = np.bincount((t // 20).astype(int), minlength=4)
    assert len(counts) == 4 and counts[2] == 0
    for count, rate in zip(counts, trace.rates):
        assert rate == 0 or _within_poisson(count, rate * 20), (counts, trace.rates)


def test_scale_and_compress_keep_the_shape() -> None:
    day = synthetic_diurnal(seed=0)
    scaled = scale_to_peak(day, 40.0)
    assert scaled.peak_rps == pytest.approx(40.0)
    assert scaled.rates / day.rates == pytest.approx(np.full(288, 40.0 / day.peak_rps))
    fast = compress(scaled, 60.0)
    assert fast.duration_s == pytest.approx(60.0) and fast.interval_s == pytest.approx(60.0 / 288)
    assert np.array_equal(fast.rates, scaled.rates)
    t = arrivals(fast, seed=0)
    assert _within_poisson(len(t), fast.expected_requests) and t[-1] < 60.0
    with pytest.raises(InputError, match="peak"):
        scale_to_peak(day, 0)
    with pytest.raises(InputError, match="compress"):
        compress(day, -1)


def test_synthetic_day_is_diurnal_and_deterministic() -> None:
    day = synthetic_diurnal(seed=0)
    assert len(day.rates) == 288 and day.interval_s == 300 and day.peak_rps == pytest.approx(1000)
    hour = day.rates.reshape(24, 12).mean(axis=1)
    assert hour[3] < 0.2 * hour.max() and hour[3] < hour[8] < hour[12] and hour[16] < hour[12] < hour[20]
    assert np.array_equal(day.rates, synthetic_diurnal(seed=0).rates)
    assert not np.array_equal(day.rates, synthetic_diurnal(seed=1).rates)


def test_shipped_trace_is_the_synthetic_day() -> None:
    shipped = load_trace(SHIPPED)
    assert "SYNTHETIC" in SHIPPED.read_text().splitlines()[0]
    assert shipped.interval_s == 300 and shipped.rates == pytest.approx(synthetic_diurnal(seed=0).rates, abs=1e-3)


# ---------------------------------------------------------------------------------------------
# load_trace

def test_timestamps_file_is_binned(tmp_path: Path) -> None:
    path = tmp_path / "ts.txt"
    path.write_text("# arrivals\n100.1\n100.2\n\n101.5\n102.9\n")
    trace = load_trace(path)
    assert trace.interval_s == 1.0 and trace.rates.tolist() == [2.0, 1.0, 1.0]
    assert load_trace(path, bin_s=2.0).rates.tolist() == [1.5, 0.5]


@pytest.mark.parametrize("text, message", [
    ("interval_start_s,rate_rps\n0,10\n60,x\n", r":3: rate_rps: expected a number, got 'x'"),
    ("interval_start_s,rate_rps\n0,10\n60,5,1\n", r":3: expected 2 fields"),
    ("interval_start_s,rate_rps\n0,10\n60,-5\n", r":3: rate_rps: expected a rate >= 0"),
    ("# c\ninterval_start_s,rate_rps\n0,10\n60,5\n130,5\n", r":5: interval_start_s: expected 120 "),
    ("interval_start_s,rate_rps\n0,10\n0,5\n", r":3: interval_start_s: expected increasing"),
    ("interval_start_s,rate_rps\n0,10\n", r"expected at least 2 intervals"),
    ("start,rate\n0,10\n", r":1: expected the header 'interval_start_s,rate_rps'"),
    ("1.0\n2.0\nsoon\n", r":3: arrival time \(s\): expected a number, got 'soon'"),
    ("1.0\nnan\n", r":2: arrival time \(s\): expected a finite number"),
    ("# only comments\n\n", r"empty trace"),
])
def test_load_trace_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as exc:
        load_trace(path)
    assert str(path) in str(exc.value)


def test_load_trace_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read the trace"):
        load_trace(tmp_path / "nope.csv")


# ---------------------------------------------------------------------------------------------
# the load generator against a real server

@pytest.fixture(scope="module")
def url(tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("loadgen")
    # 300 req/s as in tests/test_serving.py: every runner batches enough for short bursts
    plan = make_plan(load_app(CPU / "app.yaml"), load_profiles(CPU / "profiles.csv"), gpu_type("cpu"), 300.0,
                     PlanOptions(gpus=8))
    write_repository(build_configs(plan, Inventory(gpus=(), source="test: cpu")), tmp / "repo")
    backends = prepare_backend_dir(tmp / "backends")
    http_port, grpc_port, metrics_port = free_ports(3)
    # the context manager stops the server (process group) on teardown, also when tests failed
    with TritonServer(tmp / "repo", backends, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                      log_path=tmp / "tritonserver.log", env=server_env()) as server:
        yield server.grpc_url


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        return list(reader)


def test_describe_reads_width_outputs_and_slo(url: str) -> None:
    info = describe(url, "cpudemo")
    assert info.width == 16 and set(info.outputs) == {"cls_OUTPUT", "cap_OUTPUT"} and info.slo_ms == 250


def test_poisson_load_all_ok_and_logged(url: str, tmp_path: Path) -> None:
    times = poisson(20.0, 2.0, seed=1)
    progress = []
    result = run_load(url, "cpudemo", times, items=2, width=None, slo_ms=None, on_progress=progress.append,
                      stream_to=tmp_path / "requests.csv", progress_s=0.5)
    summary = result.summary()
    assert summary["requests"] == len(times) and summary["ok"] == len(times), summary
    assert summary["slo_ms"] == 250 and summary["latency_ms"]["p50"] > 0
    assert progress and progress[-1].sent == len(times) and progress[-1].in_flight == 0
    rows = _csv(tmp_path / "requests.csv")           # streamed in completion order
    assert sorted(int(r["id"]) for r in rows) == list(range(len(times)))
    for row in rows:
        assert row["outcome"] == "ok" and row["items"] == "2" and row["error"] == ""
        assert float(row["sent_s"]) >= float(row["scheduled_s"]) == pytest.approx(times[int(row["id"])], abs=1e-6)
    result.write_csv(tmp_path / "sorted.csv")
    assert [int(r["id"]) for r in _csv(tmp_path / "sorted.csv")] == list(range(len(times)))


def test_outcomes_late_and_dropped(url: str) -> None:
    times = np.array([0.0, 0.05, 0.1])
    # answered within the server's SLO but after the client's: late
    late = run_load(url, "cpudemo", times, 1, 16, slo_ms=0.001).summary()
    assert late["late"] == 3 and late["latency_ms"]["p50"] is not None
    # a 1 ms deadline cannot be met: the stage drops the requests early
    dropped = run_load(url, "cpudemo", times, 1, 16, slo_ms=None, deadline_ms=1).records
    assert [r.outcome for r in dropped] == ["dropped"] * 3
    assert "jigsaw: request dropped at stage det" in dropped[0].error


class _Recording:
    """A stand-in for the gRPC client that keeps each request's parameters."""

    def __init__(self) -> None:
        self.params: list[dict | None] = []

    async def infer(self, model, inputs, outputs=None, parameters=None, client_timeout=None):
        self.params.append(parameters)
        return type("Result", (), {"as_numpy": lambda self, name: np.zeros((1, 1, 16), np.float32)})()


@pytest.mark.parametrize("send, slo_ms, deadline_ms, budget_ms", [
    (True, 100.0, None, 250.0),    # the served SLO, whatever the client calls late
    (True, 100.0, 40.0, 40.0),     # a tighter deadline_ms
    (False, 100.0, 40.0, None),
])
def test_requests_carry_the_clients_deadline(send: bool, slo_ms: float, deadline_ms: float | None,
                                             budget_ms: float | None) -> None:
    """``deadline_ns``: the send time on this host's clock plus what the server enforces."""
    client = _Recording()
    run = _Run(client, "app", ModelInfo(16, ("OUT",), 250.0), np.array([0.0]), 1, 16,
               min(slo_ms, deadline_ms or slo_ms), deadline_ms, send, time.monotonic(), 5.0, 0, None)
    before = time.time_ns()
    asyncio.run(run.one(0))
    after = time.time_ns()
    params = client.params[0] or {}
    assert params.get("deadline_ms") == deadline_ms
    if budget_ms is None:
        assert "deadline_ns" not in params
    else:
        assert before + budget_ms * 1e6 <= params["deadline_ns"] <= after + budget_ms * 1e6
    assert run.records[0].outcome == "ok"


def test_load_apart_returns_the_same_records_and_raises_the_same_errors(url: str, tmp_path: Path) -> None:
    times = poisson(20.0, 1.0, seed=2)
    progress = []
    result = run_load_apart(url, "cpudemo", times, items=1, width=None, slo_ms=None, on_progress=progress.append,
                            stream_to=tmp_path / "requests.csv", progress_s=0.3)
    assert [r.id for r in result.records] == list(range(len(times)))
    assert result.summary()["ok"] == len(times) and result.slo_ms == 250
    assert progress and progress[-1].sent == len(times)
    assert len(_csv(tmp_path / "requests.csv")) == len(times)
    with pytest.raises(InputError, match="model 'nope'.*unknown model"):
        run_load_apart(url, "nope", np.array([0.0]), 1, None, 100.0)


def test_load_apart_starts_its_origin_once_the_generator_is_connected(url: str) -> None:
    """With ``on_start`` the replay's origin comes after the spawned process connected (however long it took to
    start), so the first arrivals are not sent late in a burst; ``on_start`` gets it before any send."""
    times = poisson(20.0, 1.0, seed=3)
    started: list[float] = []
    before = time.time()
    result = run_load_apart(url, "cpudemo", times, items=1, width=None, slo_ms=None, on_start=started.append)
    assert len(started) == 1 and before < started[0] < time.time()
    assert result.summary()["ok"] == len(times)
    assert max(r.sent_s - r.scheduled_s for r in result.records) < 0.3


def test_bad_model_and_width(url: str) -> None:
    with pytest.raises(InputError, match="model 'nope'.*unknown model"):
        run_load(url, "nope", np.array([0.0]), 1, None, 100.0)
    with pytest.raises(InputError, match=r"width: model 'cpudemo' takes INPUT \[1, items, 16\], got width 8"):
        run_load(url, "cpudemo", np.array([0.0]), 1, 8, None)
    with pytest.raises(InputError, match="url '127.0.0.1:1'"):
        run_load("127.0.0.1:1", "cpudemo", np.array([0.0]), 1, None, None)
    with pytest.raises(InputError, match="arrivals"):
        run_load(url, "cpudemo", np.array([1.0, 0.5]), 1, None, None)


def test_cli_trace_replay(url: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "requests.csv"
    code = main(["load", "--url", url, "--model", "cpudemo", "--trace", str(SHIPPED), "--peak", "30",
                 "--compress", "2", "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["requests"] > 0 and summary["ok"] == summary["requests"], summary
    assert len(_csv(out)) == summary["requests"]
    assert "sending" in captured.err


@pytest.mark.parametrize("args, message", [
    (["--rate", "10"], "give either --rate and --duration"),
    (["--rate", "10", "--duration", "1", "--trace", "x.csv"], "alternatives"),
    (["--rate", "10", "--duration", "1", "--peak", "5"], "give either --rate and --duration"),
    (["--rate", "-1", "--duration", "1"], "'--rate'"),
    (["--rate", "10", "--duration", "1", "--items", "0"], "'--items'"),
    (["--trace", "no-such-trace.csv"], "cannot read the trace"),
])
def test_cli_bad_input_exits_1(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["load", "--model", "cpudemo", "--url", "127.0.0.1:1", *args]) == 1
    assert message in capsys.readouterr().err
