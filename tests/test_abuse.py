"""Abuse and fault injection against a real tritonserver (CPU): no single request may take the server down,
errors are per request with the right status and no server internals, runners answer the graph model only,
and the stubs do not burn the CPU while idle.

One server (``jigsaw render`` of examples/cpu with task det split 0.7/0.3 over two runners, as in
test_serving.py, started as ``jigsaw serve`` starts it: a control key, the HTTP and gRPC fronts) serves the module; every
test ends by checking that it still runs and answers. The last one kills a runner's stub.
"""
from __future__ import annotations

import gzip
import http.client
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
from test_serving import _routed_plan
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from jigsawserve.orchestrator.spec.appspec import load_app
from jigsawserve.orchestrator.serving.control import reload_runner
from jigsawserve.orchestrator.loop.controller import Controller, EventLog
from jigsawserve.orchestrator.loop.forecast import MovingAverage
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.serving.metrics import scrape
from jigsawserve.orchestrator.planning.planner import PlanOptions
from jigsawserve.orchestrator.spec.profiles import load_profiles
from jigsawserve.triton_backend.backlog import DOWN_METRIC
from jigsawserve.orchestrator.serving.front import FRONT_HEADER, GRPC_FRONT_HEADER
from jigsawserve.orchestrator.serving.inventory import Inventory
from jigsawserve.orchestrator.serving.render import RUNNER_KEY_FILE, build_configs, runner_name, write_repository
from jigsawserve.orchestrator.serving.server import CONTROL_HEADER, GRPC_CONTROL_HEADER, TritonServer, free_ports
from jigsawserve.orchestrator.serving.tritonenv import MATH_THREAD_VARS, prepare_backend_dir, server_env

ROOT = Path(__file__).resolve().parents[1]
CPU = ROOT / "examples" / "cpu"
KEY = "abuse-key"
MAX_REQUEST_BYTES = 2**20
APP = "cpudemo"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[TritonServer]:
    tmp = tmp_path_factory.mktemp("abuse")
    app = load_app(CPU / "app.yaml")
    plan = _routed_plan(app)
    rendered = build_configs(plan, Inventory(gpus=(), source="test: cpu"), graph_instances=4)
    write_repository(rendered, tmp / "repo")
    h, g, m = free_ports(3)
    with TritonServer(tmp / "repo", prepare_backend_dir(tmp / "backends"), http_port=h, grpc_port=g, metrics_port=m,
                      control_key=KEY, log_path=tmp / "server.log", env=server_env(),
                      max_request_bytes=MAX_REQUEST_BYTES, grpc_front=True) as srv:
        srv.wait_ready(120)
        srv.runners = {e.variant: runner_name(app.name, e) for e in plan.entries}  # type: ignore[attr-defined]
        yield srv


def _x(items: int = 1) -> np.ndarray:
    return np.ones((1, items, 16), np.float32)


def _grpc_infer(server: TritonServer, model: str = APP, x: np.ndarray | None = None, **kw):
    x = _x() if x is None else x
    inp = grpcclient.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        return client.infer(model, [inp], **kw)


def _post(url: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
    host, port = url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", path, body, headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def _json_infer(shape: list[int], values: int, parameters: dict | None = None) -> bytes:
    doc: dict = {"inputs": [{"name": "INPUT", "shape": shape, "datatype": "FP32", "data": [1.0] * values}]}
    if parameters:
        doc["parameters"] = parameters
    return json.dumps(doc).encode()


def _still_serves(server: TritonServer) -> None:
    assert server.exit_code is None, f"tritonserver exited with {server.exit_code}:\n{server.log_tail()}"
    assert _grpc_infer(server).as_numpy("cap_OUTPUT").shape == (1, 1, 16)
    status, body = _post(server.http_url, f"/v2/models/{APP}/infer", _json_infer([1, 1, 16], 16))
    assert status == 200, body


def _no_internals(message: str) -> None:
    for leak in ("Traceback", "At:\n", "model.py", "/tmp/", str(ROOT)):
        assert leak not in message, f"{leak!r} reached the client: {message}"


# ---------------------------------------------------------------------------------------------
# 1. no single request takes the server down

def test_json_shape_larger_than_its_data_is_refused(server: TritonServer) -> None:
    """[1, 1e9, 16] FP32 with 32 values: tritonserver 2.51 allocates 64 GB for it and aborts (bad_alloc)."""
    body = _json_infer([1, 1_000_000_000, 16], 32)
    status, text = _post(server.http_url, f"/v2/models/{APP}/infer", body)
    assert status == 400 and "has 16000000000 elements, its 'data' holds 32 values" in text, (status, text)
    # the same, gzip-compressed; and the versioned path
    status, text = _post(server.http_url, f"/v2/models/{APP}/versions/1/infer", gzip.compress(body),
                         {"Content-Encoding": "gzip"})
    assert status == 400 and "16000000000 elements" in text, (status, text)
    # negative or non-integer dims
    status, text = _post(server.http_url, f"/v2/models/{APP}/infer", _json_infer([1, -1, 16], 16))
    assert status == 400 and "non-negative integers" in text, (status, text)
    _still_serves(server)


def _declare_oversize(url: str, path: str) -> tuple[int, str]:
    """Headers that declare a body over the limit, and none of it: the front answers from the headers (a
    client streaming the whole body may see its connection closed under it, as the front answers first)."""
    host, port = url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {MAX_REQUEST_BYTES + 1}\r\n\r\n".encode())
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.read().decode(errors="replace")


def test_oversize_bodies_are_refused(server: TritonServer) -> None:
    status, text = _declare_oversize(server.http_url, f"/v2/models/{APP}/infer")
    assert status == 413 and "over the" in text, (status, text)
    bomb = gzip.compress(b" " * (8 * MAX_REQUEST_BYTES))  # small on the wire, large once decompressed
    status, text = _post(server.http_url, f"/v2/models/{APP}/infer", bomb, {"Content-Encoding": "gzip"})
    assert status == 413 and "decompresses to more than" in text, (status, text)
    _still_serves(server)


def test_binary_tensor_shape_larger_than_its_bytes_is_refused(server: TritonServer) -> None:
    header = json.dumps({"inputs": [{"name": "INPUT", "shape": [1, 1_000_000_000, 16], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 64}}]}).encode()
    status, text = _post(server.http_url, f"/v2/models/{APP}/infer", header + bytes(64),
                         {"Inference-Header-Content-Length": str(len(header))})
    assert status == 400 and "byte size mismatch" in text, (status, text)
    _still_serves(server)


def test_tritonservers_own_http_port_refuses_inference(server: TritonServer) -> None:
    """Behind the front, tritonserver's HTTP port (127.0.0.1, private) answers inference to the front only."""
    internal = f"127.0.0.1:{server._internal_http_port}"
    status, text = _post(internal, f"/v2/models/{APP}/infer", _json_infer([1, 1_000_000_000, 16], 32))
    assert status == 403 and FRONT_HEADER in text, (status, text)
    status, text = _post(internal, f"/v2/models/{APP}/infer", _json_infer([1, 1, 16], 16), {FRONT_HEADER: "guess"})
    assert status == 403, (status, text)
    _still_serves(server)


def _raw_infer(url: str, shape: list[int], raw: bytes | None = None, fp32: list[float] | None = None,
               metadata: tuple = ()) -> tuple[grpc.StatusCode, str]:
    """A gRPC ModelInfer of INPUT with ``shape`` and the data given (raw bytes or typed contents), as built by
    hand, unchecked: its status code and details."""
    request = service_pb2.ModelInferRequest(model_name=APP)
    tensor = request.inputs.add(name="INPUT", datatype="FP32", shape=shape)
    if fp32 is not None:
        tensor.contents.fp32_contents.extend(fp32)
    if raw is not None:
        request.raw_input_contents.append(raw)
    with grpc.insecure_channel(url, options=[("grpc.max_send_message_length", 2**31 - 1)]) as channel:
        try:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=metadata, timeout=60)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _group_rss_mb(pgid: int) -> float:
    """Resident memory of tritonserver and its stubs (MB; shared memory counted in each process mapping it)."""
    total = 0
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                total += next(int(line.split()[1]) for line in (d / "status").read_text().splitlines()
                              if line.startswith("VmRSS"))
        except (OSError, StopIteration):
            continue
    return total / 1024


def test_grpc_message_over_the_limit_is_refused(server: TritonServer) -> None:
    """tritonserver 2.51 takes gRPC messages of up to 2 GiB and copies a graph request's inputs into its stub's
    shared memory, which never shrinks (500 MB raised the CPU example's by 2.9 GB for good, orchestrator/serving/front.py):
    the gRPC front refuses a message over the limit from its length prefix, before anything holds it."""
    rows = 4 * MAX_REQUEST_BYTES // 64  # [1, rows, 16] FP32: 4x the limit, shape and data agreeing
    code, text = _raw_infer(server.grpc_url, [1, rows, 16], raw=bytes(rows * 64))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in text, (code, text)
    _no_internals(text)
    before = _group_rss_mb(server.pid)
    big = 256 * 2**20  # hundreds of MB: refused as soon as its length is read, nothing allocated for it
    code, text = _raw_infer(server.grpc_url, [1, big // 64, 16], raw=bytes(big))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, text)
    assert _group_rss_mb(server.pid) - before < 64, (before, _group_rss_mb(server.pid))
    _still_serves(server)


def test_grpc_shape_larger_than_its_data_is_refused(server: TritonServer) -> None:
    """[1, 1e9, 16] FP32 with 32 values, as raw bytes and as typed contents: tritonserver compares the byte
    sizes before it allocates (INVALID_ARGUMENT), through the front as without it."""
    for data in ({"raw": bytes(128)}, {"fp32": [1.0] * 32}):
        code, text = _raw_infer(server.grpc_url, [1, 1_000_000_000, 16], **data)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "byte size mismatch" in text, (code, text)
        _no_internals(text)
    _still_serves(server)


def test_tritonservers_own_grpc_port_refuses_inference(server: TritonServer) -> None:
    """Behind the gRPC front, tritonserver's gRPC port (127.0.0.1, private) answers inference to the front only."""
    internal = f"127.0.0.1:{server._internal_grpc_port}"
    x = bytes(64)
    for metadata in ((), ((GRPC_FRONT_HEADER, "guess"),)):
        code, text = _raw_infer(internal, [1, 1, 16], raw=x, metadata=metadata)
        assert code != grpc.StatusCode.OK and "restricted" in text, (code, text)
    _still_serves(server)


def _stub_region(server: TritonServer) -> str:
    """The name of a shared-memory region the server's Python-backend stubs use."""
    with open(f"/proc/{server.pid}/maps") as f:
        for line in f:
            if "/dev/shm/" in line:
                return "/" + line.split("/dev/shm/")[1].strip().split()[0]
    pytest.skip("no shared-memory region mapped by tritonserver")


def test_shared_memory_and_admin_apis_need_the_control_key(server: TritonServer) -> None:
    """Registering a stub's region and directing an output into it crashed 2.51 (signal 11): the
    shared-memory API (and the statistics, trace and logging APIs) answer the control key only."""
    region = _stub_region(server)
    with grpcclient.InferenceServerClient(server.grpc_url) as g, httpclient.InferenceServerClient(server.http_url) as h:
        for call in (lambda: g.register_system_shared_memory("stub", region, 4096),
                     lambda: h.register_system_shared_memory("stub", region, 4096),
                     lambda: g.get_inference_statistics(), lambda: h.get_inference_statistics(),
                     lambda: g.update_log_settings({"log_verbose_level": 1}), lambda: h.get_log_settings(),
                     lambda: g.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]}),
                     lambda: h.get_trace_settings(), lambda: g.get_model_repository_index()):
            with pytest.raises(InferenceServerException, match="restricted"):
                call()
        # an output directed into the region that could not be registered
        inp = grpcclient.InferInput("INPUT", [1, 1, 16], "FP32")
        inp.set_data_from_numpy(_x())
        out = grpcclient.InferRequestedOutput("cap_OUTPUT")
        out.set_shared_memory("stub", 64)
        with pytest.raises(InferenceServerException):
            g.infer(APP, [inp], outputs=[out])
        # the key opens them
        assert g.get_inference_statistics(APP, headers={GRPC_CONTROL_HEADER: KEY}).model_stats
        assert h.get_inference_statistics(APP, headers={CONTROL_HEADER: KEY})["model_stats"]
    _still_serves(server)


# ---------------------------------------------------------------------------------------------
# 3 and 8. errors per request, with their status, without server internals

@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e308, "inf", "-inf", "nan", -5, 0, True, "soon"],
                         ids=lambda v: repr(v))
def test_bad_deadline_fails_that_request_only(server: TritonServer, value) -> None:
    """Each bad ``deadline_ms`` sent with good requests that Triton may batch with it (the graph model takes 2
    requests per execute): the bad one fails with INVALID_ARGUMENT, the good ones are answered. 1e308 ms is
    beyond the SLO, which then holds."""
    param = {"deadline_ms": value}
    outcomes: list[tuple[str, object]] = []
    lock, done = threading.Lock(), threading.Semaphore(0)
    inp = grpcclient.InferInput("INPUT", [1, 1, 16], "FP32")
    inp.set_data_from_numpy(_x())
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for i in range(12):
            bad = i % 3 == 0

            def callback(result, error, bad=bad):
                with lock:
                    outcomes.append(("bad" if bad else "good", error))
                done.release()
            client.async_infer(APP, [inp], callback, parameters=param if bad else None)
        for _ in range(12):
            assert done.acquire(timeout=30)
    good = [e for kind, e in outcomes if kind == "good"]
    assert not any(good), [str(e) for e in good if e]
    bad = [e for kind, e in outcomes if kind == "bad"]
    if value == 1e308:
        assert not any(bad), [str(e) for e in bad if e]
    else:
        for e in bad:
            assert e is not None and e.status() == "StatusCode.INVALID_ARGUMENT", (e.status(), str(e))
            assert "deadline_ms must be a positive finite number of milliseconds" in str(e), str(e)
            _no_internals(str(e))
    _still_serves(server)


def test_http_bad_deadline_is_400_without_internals(server: TritonServer) -> None:
    for value in ("inf", "1e999", "soon"):
        status, text = _post(server.http_url, f"/v2/models/{APP}/infer",
                             _json_infer([1, 1, 16], 16, {"deadline_ms": value}))
        assert status == 400 and "positive finite number" in text, (value, status, text)
        _no_internals(text)
    status, text = _post(server.http_url, f"/v2/models/{APP}/infer",
                         b'{"inputs":[{"name":"INPUT","shape":[1,1,16],"datatype":"FP32","data":['
                         + b",".join([b"1"] * 16) + b']}],"parameters":{"deadline_ms":1e308}}')
    assert status == 200, text


def test_early_drop_is_unavailable(server: TritonServer) -> None:
    with pytest.raises(InferenceServerException) as exc:
        _grpc_infer(server, parameters={"deadline_ms": 1})
    assert exc.value.status() == "StatusCode.UNAVAILABLE" and "dropped at stage det" in str(exc.value)
    status, text = _post(server.http_url, f"/v2/models/{APP}/infer", _json_infer([1, 1, 16], 16, {"deadline_ms": 1}))
    assert status == 503 and "dropped at stage det" in text, (status, text)


def test_bad_input_is_invalid_argument(server: TritonServer) -> None:
    with pytest.raises(InferenceServerException) as exc:  # two requests in one: the graph's own check
        _grpc_infer(server, x=np.ones((2, 1, 16), np.float32))
    assert exc.value.status() == "StatusCode.INVALID_ARGUMENT", (exc.value.status(), str(exc.value))
    assert "(one request)" in str(exc.value)


# ---------------------------------------------------------------------------------------------
# 6. runners answer the graph model only

def test_runners_refuse_direct_calls(server: TritonServer, tmp_path: Path) -> None:
    runner = server.runners["det_small"]  # type: ignore[attr-defined]
    x = np.ones((1, 16), np.float32)
    for params in (None, {"jigsaw_caller": "guess"}):
        with pytest.raises(InferenceServerException) as exc:
            _grpc_infer(server, runner, x=x, parameters=params)
        assert exc.value.status() == "StatusCode.INVALID_ARGUMENT", str(exc.value)
        assert "answers only that model: send requests to the app" in str(exc.value)
    status, text = _post(server.http_url, f"/v2/models/{runner}/infer", json.dumps(
        {"inputs": [{"name": "INPUT", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}).encode())
    assert status == 400 and "answers only that model" in text, (status, text)
    # the repository's key (what the graph model sends) is accepted; clients never see it
    key = (server.repo / RUNNER_KEY_FILE).read_text().strip()
    assert (server.repo / RUNNER_KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert _grpc_infer(server, runner, x=x, parameters={"jigsaw_caller": key}).as_numpy("OUTPUT").shape == (1, 16)
    _still_serves(server)


# ---------------------------------------------------------------------------------------------
# 4. the stubs' math libraries run one thread each: no core spinning

def _group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of a process group."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5, pgrp
            total += int(fields[11]) + int(fields[12])  # fields 14, 15: utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def test_stubs_do_not_spin_under_light_load(server: TritonServer) -> None:
    """40 req/s for 3 s: with OpenBLAS's default threads the CPU demo's stubs used 1.44-1.54 of the 2 cores
    (a worker thread per stub busy-waiting), with one thread each 0.08-0.12."""
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[2]) != server.pid:
                continue
            env = dict(v.split("=", 1) for v in open(f"/proc/{pid}/environ").read().split("\0") if "=" in v)
        except OSError:
            continue
        assert all(env.get(name) == "1" for name in MATH_THREAD_VARS), (pid, {n: env.get(n) for n in MATH_THREAD_VARS})
    inp = grpcclient.InferInput("INPUT", [1, 1, 16], "FP32")
    inp.set_data_from_numpy(_x())
    errors: list = []
    answered = threading.Semaphore(0)

    def callback(result, error) -> None:
        if error is not None:
            errors.append(str(error))
        answered.release()

    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        before, start = _group_cpu_s(server.pid), time.monotonic()
        for i in range(120):
            time.sleep(max(0.0, start + i / 40 - time.monotonic()))
            client.async_infer(APP, [inp], callback)
        time.sleep(max(0.0, start + 3.0 - time.monotonic()))
        cores = (_group_cpu_s(server.pid) - before) / (time.monotonic() - start)
        for _ in range(120):
            assert answered.acquire(timeout=30), "a request got no answer"
    print(f"tritonserver and its stubs: {cores:.2f} cores at 40 req/s")
    assert not errors, errors[:3]
    assert cores < 0.8, f"the server's processes used {cores:.2f} cores at 40 req/s"


# ---------------------------------------------------------------------------------------------
# 2. a runner whose stub dies (last: it leaves the runner dead)

def test_dead_runner_stub_is_routed_around(server: TritonServer) -> None:
    """kill -9 of det_large's stub: Triton neither restarts it nor calls the runner unready, and every request
    routed to it failed after about 1.1 s ("Stub process 'seg0_0' is not healthy"): 3 in 10 requests. The
    stage that meets that error marks the runner down for every graph instance (DOWN_S), the request gets
    UNAVAILABLE, and det_small takes the runner's share; after DOWN_S it is tried again."""
    target = server.runners["det_large"]  # type: ignore[attr-defined]
    stubs = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if target in open(f"/proc/{pid}/cmdline").read():
                stubs.append(int(pid))
        except OSError:
            continue
    assert len(stubs) == 1, stubs
    os.kill(stubs[0], 9)
    outcomes = []
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        inp = grpcclient.InferInput("INPUT", [1, 1, 16], "FP32")
        inp.set_data_from_numpy(_x())
        for _ in range(30):
            try:
                client.infer(APP, [inp])
                outcomes.append(None)
            except InferenceServerException as exc:
                outcomes.append(exc)
            time.sleep(0.05)
    failed = [e for e in outcomes if e is not None]
    print(f"{len(failed)} of {len(outcomes)} failed after the kill")
    assert 1 <= len(failed) <= 2, [str(e) for e in failed]
    for e in failed:
        assert e.status() == "StatusCode.UNAVAILABLE" and "is not healthy" in str(e), str(e)
    assert outcomes[-20:] == [None] * 20
    assert server.exit_code is None


def test_the_controller_reloads_a_runner_the_stages_found_down(server: TritonServer, tmp_path: Path) -> None:
    """After the test above (det_large's stub killed): the stages counted it down, and the controller's next look
    reloads it (fresh stubs), after which it answers again."""
    target = server.runners["det_large"]  # type: ignore[attr-defined]
    app = load_app(CPU / "app.yaml")
    counted = scrape(server.metrics_url, time.time()).by_label(DOWN_METRIC, "model", app=APP)
    assert counted.get((target,), 0) >= 1, counted
    headers = {GRPC_CONTROL_HEADER: KEY}
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        c = Controller(app, load_profiles(CPU / "profiles.csv"), gpu_type("cpu"), PlanOptions(),
                       Inventory(gpus=(), source="test: cpu"), server.repo, server.metrics_url, MovingAverage(),
                       EventLog(tmp_path / "events.jsonl", 0.0), progress=lambda _: None)
        c.plan = _routed_plan(app)
        c.reload_runner = lambda name: reload_runner(client, headers, server.repo, name)
        assert c.heal(scrape(server.metrics_url, time.time())) == [target]
        assert c.heal(scrape(server.metrics_url, time.time())) == []       # counted once: not reloaded again
        before = client.get_inference_statistics(target, headers=headers).model_stats[0].inference_stats.success.count
    time.sleep(5.5)  # the stages keep away from a runner found down for DOWN_S (5 s, triton_backend/model.py)
    failed = 0
    for _ in range(20):
        try:
            _grpc_infer(server)
        except InferenceServerException:
            failed += 1
        time.sleep(0.05)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        after = client.get_inference_statistics(target, headers=headers).model_stats[0].inference_stats.success.count
    assert failed == 0 and after > before, (failed, before, after)
