"""Integration tests of the serving path on CPU: plan -> render -> real tritonserver -> gRPC/HTTP clients.

One tritonserver serves the whole module (``served`` fixture). Its plan comes from ``make_plan`` on
``examples/cpu`` and is then edited so that task ``det`` is routed over two variants with the
shares 0.7 (det_small) / 0.3 (det_large); every test uses that plan.

The tests run sequentially and read counters as deltas (before/after), so they don't depend on
each other's traffic. The tests that load the server hard come last.
"""
from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from jigsawserve.orchestrator.spec.appspec import AppSpec, load_app
from jigsawserve.orchestrator.loop.controller import Controller, EventLog
from jigsawserve.orchestrator.loop.forecast import MovingAverage
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.serving.inventory import Inventory
from jigsawserve.orchestrator.planning.placement import place
from jigsawserve.orchestrator.planning.plan import Entry, Plan, segment_label
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan
from jigsawserve.orchestrator.spec.profiles import load_profiles
from jigsawserve.orchestrator.serving.render import build_configs, runner_name, write_repository
from jigsawserve.orchestrator.serving.server import TritonServer, free_ports
from jigsawserve.orchestrator.serving.tritonenv import prepare_backend_dir, server_env

ROOT = Path(__file__).resolve().parents[1]
CPU = ROOT / "examples" / "cpu"
WIDTH = 16
SHARES = {"det_small": 0.7, "det_large": 0.3}
FANOUT = {"det_small": 3, "det_large": 4}        # cls items per det item (examples/cpu/app.yaml)
# 300 req/s: the planner picks det_large b8, cls_small b16, cap_large b8 (one instance each). At
# 40 req/s it picks cls_large b2, whose one instance cannot serve the ~100 cls rows of a burst of 30
# requests within the 250 ms SLO, so test_concurrent_requests_meet_slo would measure capacity rather
# than the serving path (at 300 the burst's slowest request takes ~160 ms on the 2-core test machine).
# With these batches a request of <= 2 items is also one chunk at every runner (exact fan-out checks).
DEMAND = 300.0

# ---------------------------------------------------------------------------------------------
# helpers

@dataclass
class Served:
    server: TritonServer
    app: AppSpec
    plan: Plan
    runners: dict[str, str]          # det variant -> runner model name
    grpc: grpcclient.InferenceServerClient
    http: httpclient.InferenceServerClient


def _routed_plan(app: AppSpec) -> Plan:
    """make_plan's plan with task det split 0.7/0.3 over det_small/det_large at the planner's det batch."""
    profiles = load_profiles(CPU / "profiles.csv")
    gpu = gpu_type("cpu")
    plan = make_plan(app, profiles, gpu, DEMAND, PlanOptions(gpus=8))
    dets = [e for e in plan.entries if e.task == "det"]
    assert len(dets) == 1, f"expected the planner to pick one det variant, got {dets}"
    batch = dets[0].batch
    batches = {e.task: e.batch for e in plan.entries}
    # preconditions of the tests: <= 2 items is one chunk at det and cap, <= 8 rows one chunk at cls
    assert batches["det"] >= 2 and batches["cap"] >= 2 and batches["cls"] >= 8, batches
    det_entries = []
    for variant, share in SHARES.items():
        point = next(p for p in profiles.for_variant(variant, "cpu") if (p.mig, p.mps, p.batch) == (1, 1, batch))
        det_entries.append(Entry("det", variant, mig=1, mps=1, batch=batch, count=1,
                                 latency_ms=point.latency_ms, throughput_rps=point.throughput_rps, share=share))
    plan.entries = [e for e in plan.entries if e.task != "det"] + det_entries
    plan.routing["det"] = {v: s * DEMAND for v, s in SHARES.items()}
    # one placement segment per entry instance, as make_plan builds it
    placement = place([(segment_label(e, i), e.mig) for e in plan.entries for i in range(e.count)], gpu)
    plan.placement, plan.gpus = placement.to_json(), placement.gpus_used
    return plan


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("serving")
    app = load_app(CPU / "app.yaml")
    plan = _routed_plan(app)
    rendered = build_configs(plan, Inventory(gpus=(), source="test: cpu"))
    write_repository(rendered, tmp / "repo")
    backends = prepare_backend_dir(tmp / "backends")
    http_port, grpc_port, metrics_port = free_ports(3)
    runners = {e.variant: runner_name(app.name, e) for e in plan.entries if e.task == "det"}
    # the context manager stops the server (process group) on teardown, also when tests failed
    with TritonServer(tmp / "repo", backends, http_port=http_port, grpc_port=grpc_port,
                      metrics_port=metrics_port, log_path=tmp / "tritonserver.log", env=server_env()) as server:
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        http = httpclient.InferenceServerClient(server.http_url, network_timeout=30.0)
        try:
            yield Served(server, app, plan, runners, grpc, http)
        finally:
            grpc.close()
            http.close()


def _items(n: int, seed: int = 0) -> np.ndarray:
    """One request of ``n`` items: the app model's INPUT is [1, items, width] (batch dimension of 1)."""
    return np.random.default_rng(seed).random((1, n, WIDTH), dtype=np.float32)


def _grpc_input(x: np.ndarray, name: str = "INPUT", dtype: str = "FP32") -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(x.shape), dtype)
    inp.set_data_from_numpy(x)
    return inp


def _http_input(x: np.ndarray) -> httpclient.InferInput:
    inp = httpclient.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def _grpc_infer(s: Served, n: int, **kw) -> grpcclient.InferResult:
    return s.grpc.infer(s.app.name, [_grpc_input(_items(n))], **kw)


Samples = list[tuple[str, dict[str, str], float]]


def _scrape(s: Served) -> Samples:
    time.sleep(0.3)  # stages send their counters at most every 0.1 s (triton_backend/model.py, _Counters)
    text = urllib.request.urlopen(s.server.metrics_url, timeout=10).read().decode()
    return [(x.name, x.labels, x.value) for fam in text_string_to_metric_families(text) for x in fam.samples]


def _value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 when none). The parser
    names every counter sample ``<name>_total`` (also Triton's, exposed without the suffix)."""
    base = name.removesuffix("_total")
    return sum(v for n, ls, v in samples
               if n.removesuffix("_total") == base and all(ls.get(k) == x for k, x in labels.items()))


def _det_items(samples: Samples) -> dict[str, float]:
    return {v: _value(samples, "jigsaw_stage_variant_items_total", task="det", variant=v) for v in SHARES}


def _poll(s: Served, done: Callable[[Samples], bool], timeout_s: float = 5.0) -> Samples:
    """Scrape until ``done`` (counters are updated as requests are released, maybe just after the reply)."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = _scrape(s)
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def _served_by(s: Served, before: Samples, n: int) -> str:
    """The det variant that took the ``n`` items of the last request (one chunk: n <= det batch)."""
    after = _poll(s, lambda m: sum(_det_items(m).values()) - sum(_det_items(before).values()) >= n)
    delta = {v: _det_items(after)[v] - _det_items(before)[v] for v in SHARES}
    served = [v for v, d in delta.items() if d]
    assert len(served) == 1 and delta[served[0]] == n, f"det items routed by that request: {delta}"
    return served[0]


def _downstream_ms(s: Served, task: str) -> float:
    """Fastest remaining latency after ``task`` (slowest chain of the children's fastest variants)."""
    fastest = {t: min(e.latency_ms for e in s.plan.entries if e.task == t) for t in {e.task for e in s.plan.entries}}
    return max((fastest[e.dst] + _downstream_ms(s, e.dst) for e in s.app.edges if e.src == task), default=0.0)


def _check_outputs(cls_out: np.ndarray, cap_out: np.ndarray, n: int, variant: str) -> None:
    assert cls_out.dtype == np.float32 and cap_out.dtype == np.float32
    assert cls_out.shape == (1, FANOUT[variant] * n, WIDTH), (variant, cls_out.shape)
    assert cap_out.shape == (1, n, WIDTH), cap_out.shape
    assert np.isfinite(cls_out).all() and np.isfinite(cap_out).all()


# ---------------------------------------------------------------------------------------------
# 1. fan-out and outputs

@pytest.mark.parametrize("n", [1, 2])
def test_grpc_fan_out_and_outputs(served: Served, n: int) -> None:
    before = _scrape(served)
    result = _grpc_infer(served, n)
    variant = _served_by(served, before, n)
    _check_outputs(result.as_numpy("cls_OUTPUT"), result.as_numpy("cap_OUTPUT"), n, variant)


@pytest.mark.parametrize("n", [1, 2])
def test_http_fan_out_and_outputs(served: Served, n: int) -> None:
    before = _scrape(served)
    result = served.http.infer(served.app.name, [_http_input(_items(n))])
    variant = _served_by(served, before, n)
    _check_outputs(result.as_numpy("cls_OUTPUT"), result.as_numpy("cap_OUTPUT"), n, variant)


def test_both_det_variants_fan_out_as_specified(served: Served) -> None:
    """Over a few requests both det variants serve (0.7/0.3), each with its own fan-out (3 or 4 rows).

    Each graph instance walks the 10-pick cycle S L S S S L S S L S from its own phase, and
    Triton decides which instance takes a request: at most 3 picks in a row are det_small, so 30
    requests include det_large whichever instances they reach (6 did not, once)."""
    rows: dict[str, set[int]] = {v: set() for v in SHARES}
    for i in range(30):
        before = _scrape(served)
        result = _grpc_infer(served, 1)
        rows[_served_by(served, before, 1)].add(result.as_numpy("cls_OUTPUT").shape[1])
        if i >= 5 and all(rows.values()):
            break  # both variants seen, after at least 6 requests
    assert rows == {"det_small": {3}, "det_large": {4}}


def test_empty_request_gives_empty_outputs(served: Served) -> None:
    result = _grpc_infer(served, 0)
    assert result.as_numpy("cls_OUTPUT").shape == (1, 0, WIDTH)
    assert result.as_numpy("cap_OUTPUT").shape == (1, 0, WIDTH)


# ---------------------------------------------------------------------------------------------
# 2. deadlines and early drops

def test_tiny_deadline_is_dropped_early_with_numbers(served: Served) -> None:
    before = _scrape(served)
    with pytest.raises(InferenceServerException) as exc:
        _grpc_infer(served, 1, parameters={"deadline_ms": 1})
    message = str(exc.value)
    assert "jigsaw: request dropped at stage det" in message, message
    left = re.search(r"(-?\d+\.\d) ms left before its deadline", message)
    assert left and float(left.group(1)) <= 1.0, message
    # the fastest remaining path: det's fastest variant + the slowest of cls/cap's fastest variants
    fastest_det = min(e.latency_ms for e in served.plan.entries if e.task == "det")
    need = fastest_det + _downstream_ms(served, "det")
    assert f"the fastest remaining path needs {need:.1f} ms" in message, message
    after = _poll(served, lambda m: _value(m, "jigsaw_stage_drops_total", task="det")
                  > _value(before, "jigsaw_stage_drops_total", task="det"))
    for task in ("det", "cls", "cap"):
        delta = (_value(after, "jigsaw_stage_drops_total", task=task)
                 - _value(before, "jigsaw_stage_drops_total", task=task))
        assert delta == (1 if task == "det" else 0), (task, delta)
    # the request reached det (counted) and went no further
    assert (_value(after, "jigsaw_stage_requests_total", task="det")
            - _value(before, "jigsaw_stage_requests_total", task="det")) == 1
    assert _det_items(after) == _det_items(before)


def test_tiny_deadline_over_http(served: Served) -> None:
    with pytest.raises(InferenceServerException, match="dropped at stage det"):
        served.http.infer(served.app.name, [_http_input(_items(1))], parameters={"deadline_ms": 1})


@pytest.mark.parametrize("deadline_ms", [200, 10_000])
def test_generous_deadline_succeeds(served: Served, deadline_ms: int) -> None:
    before = _scrape(served)
    result = _grpc_infer(served, 1, parameters={"deadline_ms": deadline_ms})
    _check_outputs(result.as_numpy("cls_OUTPUT"), result.as_numpy("cap_OUTPUT"), 1,
                   _served_by(served, before, 1))
    after = _scrape(served)
    assert _value(after, "jigsaw_stage_drops_total") == _value(before, "jigsaw_stage_drops_total")


def test_non_numeric_deadline_is_rejected(served: Served) -> None:
    with pytest.raises(InferenceServerException,
                       match=r"deadline_ms must be a positive finite number of milliseconds, got 'soon'"):
        _grpc_infer(served, 1, parameters={"deadline_ms": "soon"})


def test_clients_deadline_counts_time_spent_before_the_graph(served: Served) -> None:
    """``deadline_ns``: the client's absolute deadline. One 5 ms away (as if the request had spent the
    rest of its SLO on the way) is dropped at the first stage, though the SLO alone would admit it."""
    with pytest.raises(InferenceServerException) as exc:
        _grpc_infer(served, 1, parameters={"deadline_ns": time.time_ns() + 5_000_000})
    message = str(exc.value)
    assert "jigsaw: request dropped at stage det" in message, message
    left = re.search(r"(-?\d+\.\d) ms left before its deadline", message)
    assert left and float(left.group(1)) <= 5.0, message


def test_clients_deadline_later_than_the_slo_keeps_the_slo(served: Served) -> None:
    before = _scrape(served)
    result = _grpc_infer(served, 1, parameters={"deadline_ns": time.time_ns() + 10**10})
    _check_outputs(result.as_numpy("cls_OUTPUT"), result.as_numpy("cap_OUTPUT"), 1,
                   _served_by(served, before, 1))
    with pytest.raises(InferenceServerException, match="dropped at stage det"):  # the tighter of the two
        _grpc_infer(served, 1, parameters={"deadline_ns": time.time_ns() + 10**10, "deadline_ms": 1})


@pytest.mark.parametrize("value, match", [
    ("soon", r"deadline_ns must be an integer \(ns since the Unix epoch\), got 'soon'"),
    (True, r"deadline_ns must be an integer"),
    (1_700_000_000_000, r"deadline_ns=1700000000000 is \d+ s before the server's clock: it must be ns since "
                        r"the Unix epoch \(not ms or s\)"),
])
def test_bad_clients_deadline_is_rejected(served: Served, value: object, match: str) -> None:
    with pytest.raises(InferenceServerException, match=match):
        _grpc_infer(served, 1, parameters={"deadline_ns": value})


# ---------------------------------------------------------------------------------------------
# 3. weighted routing

def test_weighted_routing_follows_plan_shares(served: Served) -> None:
    n = 100
    before = _scrape(served)
    for _ in range(n):      # sequential: one request at a time per runner (see DEMAND)
        _grpc_infer(served, 1)

    def runner_requests(m: Samples) -> dict[str, float]:
        return {v: _value(m, "nv_inference_request_success", model=model) for v, model in served.runners.items()}

    after = _poll(served, lambda m: sum(runner_requests(m).values()) - sum(runner_requests(before).values()) >= n)
    items = {v: _det_items(after)[v] - _det_items(before)[v] for v in SHARES}
    assert sum(items.values()) == n, items
    for variant, share in SHARES.items():
        assert abs(items[variant] / n - share) <= 0.05, (items, SHARES)
    # Triton's own count agrees: each 1-item request is one request to exactly one det runner
    runs = {v: runner_requests(after)[v] - runner_requests(before)[v] for v in SHARES}
    assert runs == items, (runs, items)


def test_controller_metrics_event_keeps_stage_and_runner_counters(served: Served, tmp_path: Path) -> None:
    """The controller's per-step metrics event, scraped from this server: each stage's requests and drops
    and each of the plan's runners' batches and rows, as Triton and the stages count them."""
    for _ in range(10):     # both det runners get some (shares 0.7 / 0.3, weighted round robin)
        _grpc_infer(served, 1)
    scraped = _poll(served, lambda m: all(_value(m, "nv_inference_count", model=model) > 0
                                          for model in served.runners.values()))
    events = tmp_path / "events.jsonl"
    c = Controller(served.app, load_profiles(CPU / "profiles.csv"), gpu_type("cpu"), PlanOptions(),
                   Inventory(gpus=(), source="test"), tmp_path / "repo", served.server.metrics_url,
                   MovingAverage(window=1), EventLog(events, origin=0.0))
    c.plan = served.plan
    c.record_metrics()
    logged = json.loads(events.read_text().splitlines()[-1])
    for task in ("det", "cls", "cap"):
        assert logged["stages"]["requests"][task] == _value(scraped, "jigsaw_stage_requests_total", task=task)
        assert logged["stages"]["drops"][task] == _value(scraped, "jigsaw_stage_drops_total", task=task)
    assert set(logged["runners"]) == {runner_name(served.app.name, e) for e in served.plan.entries}
    for model in served.runners.values():
        assert logged["runners"][model]["rows"] == _value(scraped, "nv_inference_count", model=model) > 0
        assert logged["runners"][model]["batches"] == _value(scraped, "nv_inference_exec_count", model=model)
        assert logged["runners"][model]["requests"] == _value(scraped, "nv_inference_request_success", model=model)


# ---------------------------------------------------------------------------------------------
# 4. bad requests answered with clear errors

def _grpc_error(call: Callable[[], object]) -> str:
    with pytest.raises(InferenceServerException) as exc:
        call()
    return str(exc.value)


def test_wrong_shape(served: Served) -> None:
    def error(shape: tuple[int, ...]) -> str:
        x = np.zeros(shape, np.float32)
        return _grpc_error(lambda: served.grpc.infer(served.app.name, [_grpc_input(x)]))

    message = error((1, 1, 8))
    assert "unexpected shape for input 'INPUT'" in message and "Expected [-1,-1,16], got [1,1,8]" in message, message
    # items without the batch dimension of one request
    assert "Expected [-1,-1,16], got [1,16]" in error((1, 16))
    # two requests' worth in one: each request is one batch entry of [items, width]
    message = error((2, 1, WIDTH))
    assert f"must be FP32 of shape [1, items, {WIDTH}] (one request), got float32 [2, 1, {WIDTH}]" in message, message


@pytest.mark.parametrize("dtype, np_dtype", [("FP64", np.float64), ("INT32", np.int32)])
def test_wrong_dtype(served: Served, dtype: str, np_dtype: type) -> None:
    x = np.zeros((1, 1, WIDTH), np_dtype)
    message = _grpc_error(lambda: served.grpc.infer(served.app.name, [_grpc_input(x, dtype=dtype)]))
    assert f"input 'INPUT' data-type is '{dtype}', but model '{served.app.name}' expects 'FP32'" in message, message


def test_missing_input(served: Served) -> None:
    message = _grpc_error(lambda: served.grpc.infer(served.app.name, []))
    assert "missing required input(s) ['INPUT']" in message, message
    message = _grpc_error(lambda: served.grpc.infer(served.app.name, [_grpc_input(_items(1), name="IMAGE")]))
    assert "unexpected inference input 'IMAGE'" in message, message


def test_unknown_model(served: Served) -> None:
    message = _grpc_error(lambda: served.grpc.infer("no_such_app", [_grpc_input(_items(1))]))
    assert "unknown model" in message and "'no_such_app'" in message, message
    with pytest.raises(InferenceServerException, match="unknown model"):
        served.http.infer("no_such_app", [_http_input(_items(1))])


def test_http_wrong_shape(served: Served) -> None:
    x = np.zeros((1, 1, 8), np.float32)
    inp = httpclient.InferInput("INPUT", [1, 1, 8], "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException, match=r"Expected \[-1,-1,16\], got \[1,1,8\]"):
        served.http.infer(served.app.name, [inp])


def test_server_still_serves_after_bad_requests(served: Served) -> None:
    assert served.grpc.is_server_live() and served.grpc.is_model_ready(served.app.name)
    result = _grpc_infer(served, 1)
    assert result.as_numpy("cap_OUTPUT").shape == (1, 1, WIDTH)


# ---------------------------------------------------------------------------------------------
# requests larger than the runners' max batch (several chunks per runner)

def test_request_larger_than_runner_batch_meets_slo(served: Served) -> None:
    """20 items, more than any runner's max batch: det chunks 8+8+4 over two variants, 60-80 cls rows
    in chunks of 16, cap chunks 8+8+4, i.e. several requests queued at one runner instance at once.
    Each takes ~100 ms. (Regression: runners
    rendered with a dynamic_batching default_queue_policy timeout stalled ~500 ms here and failed
    with "Request timeout expired" in ~80% of such requests; see docs/runtime.md.)"""
    for _ in range(10):
        t = time.monotonic()
        result = _grpc_infer(served, 20)
        ms = (time.monotonic() - t) * 1000
        assert result.as_numpy("cap_OUTPUT").shape == (1, 20, WIDTH)
        assert 3 * 20 <= result.as_numpy("cls_OUTPUT").shape[1] <= 4 * 20
        assert ms <= served.app.latency_slo_ms, f"20-item request took {ms:.0f} ms"


# ---------------------------------------------------------------------------------------------
# 5. concurrency; it loads the server, so it runs last

def test_concurrent_requests_meet_slo(served: Served) -> None:
    """30 simultaneous 1-item requests with the default deadline (the SLO) all succeed in time.
    (Regression: when a stage instance served one request per execute, 10-12 of them were dropped
    early at stage cls; stages now take ragged batches of requests and serve them concurrently.)"""
    n, slo_ms = 30, served.app.latency_slo_ms
    before = _scrape(served)
    lock, done = threading.Lock(), threading.Event()
    outcomes: list[tuple[str | None, float]] = []
    start: dict[int, float] = {}

    def callback(i: int, result: object, error: InferenceServerException | None) -> None:
        with lock:
            outcomes.append((str(error) if error else None, (time.monotonic() - start[i]) * 1000))
            if len(outcomes) == n:
                done.set()

    for i in range(n):
        start[i] = time.monotonic()
        served.grpc.async_infer(served.app.name, [_grpc_input(_items(1, seed=i))],
                                callback=lambda result, error, i=i: callback(i, result, error))
    assert done.wait(30), "not all concurrent requests answered"
    errors = [e for e, _ in outcomes if e]
    assert not errors, f"{len(errors)}/{n} failed, e.g. {errors[:3]}"
    after = _scrape(served)
    misses = _value(after, "jigsaw_stage_deadline_misses_total") - _value(before, "jigsaw_stage_deadline_misses_total")
    assert misses == 0, f"{misses} stage responses left after their deadline"
    worst = max(ms for _, ms in outcomes)
    assert worst <= slo_ms + 50, f"slowest of {n} concurrent requests took {worst:.0f} ms (SLO {slo_ms:g} ms)"
