"""Tests for jigsawserve.orchestrator.serving.tritonenv, jigsawserve.orchestrator.serving.server and ``jigsaw serve`` with a real tritonserver (CPU).

The ``jigsaw`` backend is tested with a placeholder ``triton_backend`` package in a temp directory,
put first on sys.path, so neither the repository's model.py nor its state matters here.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from jigsawserve.orchestrator.serving import tritonenv
from jigsawserve.orchestrator.cli import main
from jigsawserve.orchestrator.errors import InputError
from jigsawserve.orchestrator.serving.server import (CONTROL_HEADER, GRPC_CONTROL_HEADER, REPO_LOCK, MpsDaemon, RepoBusy, RepoLock,
                                 TritonServer, free_ports)
from jigsawserve.orchestrator.serving.tritonenv import find_runtime, prepare_backend_dir, server_env

ROOT = Path(__file__).resolve().parents[1]

TENSORS = """\
max_batch_size: 8
input [{ name: "INPUT0", data_type: TYPE_FP32, dims: [4] }]
output [{ name: "OUTPUT0", data_type: TYPE_FP32, dims: [4] }]
instance_group [{ kind: KIND_CPU, count: 1 }]
"""

DOUBLE_PY = """\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() * 2)]) for r in requests]
"""

PLACEHOLDER_PY = DOUBLE_PY.replace("* 2", "+ 100")  # the placeholder jigsaw backend adds 100

FAILING_PY = """\
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("placeholder failure in initialize")
"""


def _model(repo: Path, name: str, backend: str, model_py: str | None = None) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "{backend}"\n{TENSORS}')
    if model_py:
        (repo / name / "1" / "model.py").write_text(model_py)


def _ports() -> dict[str, int]:
    return dict(zip(("http_port", "grpc_port", "metrics_port"), free_ports(3)))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def placeholder_pkg(tmp_path_factory) -> Path:
    """A temp ``jigsawserve.triton_backend`` package (placeholder model.py) importable ahead of the repository's."""
    root = tmp_path_factory.mktemp("pkg")
    (root / "jigsawserve" / "triton_backend").mkdir(parents=True)
    (root / "jigsawserve" / "triton_backend" / "__init__.py").write_text("")
    (root / "jigsawserve" / "triton_backend" / "model.py").write_text(PLACEHOLDER_PY)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        mp.delitem(sys.modules, "jigsawserve.triton_backend", raising=False)
        yield root


@pytest.fixture(scope="module")
def backend_dir(placeholder_pkg, tmp_path_factory) -> Path:
    return prepare_backend_dir(tmp_path_factory.mktemp("backends"))


@pytest.fixture(scope="module")
def model_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    _model(repo, "double", "python", DOUBLE_PY)
    _model(repo, "jig", "jigsaw")
    return repo


@pytest.fixture(scope="module")
def server(model_repo, backend_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "tritonserver.log"
    with TritonServer(model_repo, backend_dir, control_key="k3y", log_path=log, **_ports()) as s:
        yield s


def _x() -> np.ndarray:
    return np.arange(8, dtype=np.float32).reshape(2, 4)


def _http_infer(server: TritonServer, model: str) -> np.ndarray:
    inp = httpclient.InferInput("INPUT0", [2, 4], "FP32")
    inp.set_data_from_numpy(_x())
    with httpclient.InferenceServerClient(server.http_url) as client:  # open connections delay shutdown
        return client.infer(model, [inp]).as_numpy("OUTPUT0")


def test_prepare_backend_dir_layout_and_idempotent(backend_dir, placeholder_pkg):
    runtime = find_runtime()
    py = backend_dir / "python"
    assert sorted(p.name for p in py.iterdir()) == sorted(
        ["libtriton_python.so", "triton_python_backend_utils.py", "triton_python_backend_stub"])
    assert (py / "triton_python_backend_stub").read_bytes() == runtime.stub.read_bytes()
    assert os.access(py / "triton_python_backend_stub", os.X_OK)
    assert (backend_dir / "jigsaw" / "model.py").read_text() == PLACEHOLDER_PY
    before = {p: p.stat().st_ino for p in backend_dir.rglob("*")}
    assert prepare_backend_dir(backend_dir) == backend_dir
    assert {p: p.stat().st_ino for p in backend_dir.rglob("*")} == before


def test_find_runtime_errors(monkeypatch):
    monkeypatch.setattr(tritonenv.sys, "version_info", (3, 99, 0))
    with pytest.raises(InputError, match=r"no Python backend stub for Python 3\.99 \(it has: .*3\.1"):
        find_runtime()
    monkeypatch.setattr(tritonenv, "_package_dirs", lambda name: [])
    with pytest.raises(InputError, match="nvidia-pytriton is not installed"):
        find_runtime()


def test_server_env_paths():
    env = server_env()
    pythonpath = env["PYTHONPATH"].split(os.pathsep)
    assert str(Path(np.__file__).parents[1]) in pythonpath
    assert str(ROOT) in pythonpath
    assert str(find_runtime().libs) in env["LD_LIBRARY_PATH"].split(os.pathsep)


def test_http_and_grpc_inference(server):
    np.testing.assert_array_equal(_http_infer(server, "double"), _x() * 2)
    inp = grpcclient.InferInput("INPUT0", [2, 4], "FP32")
    inp.set_data_from_numpy(_x())
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        np.testing.assert_array_equal(client.infer("double", [inp]).as_numpy("OUTPUT0"), _x() * 2)


def test_jigsaw_backend_loads_from_backend_dir(server):
    np.testing.assert_array_equal(_http_infer(server, "jig"), _x() + 100)


def test_metrics(server):
    _http_infer(server, "double")
    with urllib.request.urlopen(server.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    assert 'nv_inference_request_success{model="double"' in text


@pytest.mark.parametrize("client_mod", [httpclient, grpcclient], ids=["http", "grpc"])
def test_model_control_needs_key(server, client_mod):
    http = client_mod is httpclient
    header = CONTROL_HEADER if http else GRPC_CONTROL_HEADER
    with client_mod.InferenceServerClient(server.http_url if http else server.grpc_url) as client:
        for headers in (None, {header: "wrong"}, {GRPC_CONTROL_HEADER if http else CONTROL_HEADER: "k3y"}):
            with pytest.raises(InferenceServerException, match="restricted"):
                client.unload_model("double", headers=headers)
            with pytest.raises(InferenceServerException, match="restricted"):
                client.get_model_repository_index(headers=headers)
        assert client.is_model_ready("double")
        key = {header: "k3y"}
        client.unload_model("double", headers=key)
        assert not client.is_model_ready("double")
        client.load_model("double", headers=key)
        assert client.is_model_ready("double")


def test_process_group_gone_after_exception(model_repo, backend_dir, tmp_path):
    server = TritonServer(model_repo, backend_dir, load=["double"], log_path=tmp_path / "log", **_ports())
    with pytest.raises(ZeroDivisionError):
        with server:
            pid = server.pid
            assert _group_alive(pid)
            1 / 0
    assert not _group_alive(pid)
    assert server.pid is None
    server.stop()  # idempotent


def test_wait_ready_reports_failed_model(backend_dir, tmp_path):
    _model(tmp_path / "repo", "broken", "python", FAILING_PY)
    server = TritonServer(tmp_path / "repo", backend_dir, log_path=tmp_path / "log", **_ports())
    with pytest.raises(RuntimeError, match=r"(?s)exited with code.*placeholder failure in initialize"):
        with server:
            pass
    assert server.pid is None


def test_mps_unavailable_without_binary(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not MpsDaemon.available()
    with pytest.raises(RuntimeError, match="MPS unavailable"):
        MpsDaemon().start()


def test_serve_missing_repo(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nope")]) == 1
    assert "no such directory" in capsys.readouterr().err


def test_serve_until_sigterm(placeholder_pkg, tmp_path):
    repo = tmp_path / "repo"
    _model(repo, "double", "python", DOUBLE_PY)
    (repo / "jigsaw.json").write_text('{"uses_mps": true}')  # MPS unavailable here: served without
    ports = _ports()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(placeholder_pkg), str(ROOT)]), "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jigsawserve.orchestrator.cli", "serve", str(repo), "--http-port", str(ports["http_port"]),
         "--grpc-port", str(ports["grpc_port"]), "--metrics-port", str(ports["metrics_port"])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    server_pid = None
    try:
        lines = []
        while not any("ready" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "serve exited early:\n" + "".join(lines)
            lines.append(line)
        key_file = repo / ".jigsaw-control-key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert str(key_file) in lines[0]
        assert not any(key_file.read_text() in line for line in lines), "the control key went to stdout"
        server_pid = int(lines[-1].split("pid ")[1].split()[0])
        with httpclient.InferenceServerClient(f"127.0.0.1:{ports['http_port']}") as client:
            assert client.is_model_ready("double")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if server_pid and _group_alive(server_pid):  # serve failed to stop its server: do it here
            os.killpg(server_pid, signal.SIGKILL)
    assert proc.returncode == 0, out
    assert out.rstrip().endswith("stopped")
    assert not _group_alive(server_pid)


def _serve(repo: Path, ports: dict[str, int], placeholder_pkg: Path, tmp_path: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(placeholder_pkg), str(ROOT)]), "TMPDIR": str(tmp_path)}
    return subprocess.Popen(
        [sys.executable, "-m", "jigsawserve.orchestrator.cli", "serve", str(repo), "--http-port", str(ports["http_port"]),
         "--grpc-port", str(ports["grpc_port"]), "--metrics-port", str(ports["metrics_port"])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path, **kw)


def test_second_serve_of_a_served_repo_fails_at_once_naming_the_first(placeholder_pkg, tmp_path):
    repo = tmp_path / "repo"
    _model(repo, "double", "python", DOUBLE_PY)
    ports, other = _ports(), _ports()
    first = _serve(repo, ports, placeholder_pkg, tmp_path)
    server_pid = None
    try:
        lines = []
        while not any("ready" in line for line in lines):
            line = first.stdout.readline()
            assert line, "serve exited early:\n" + "".join(lines)
            lines.append(line)
        server_pid = int(lines[-1].split("pid ")[1].split()[0])
        key_file = repo / ".jigsaw-control-key"
        key, key_stat = key_file.read_text(), key_file.stat()
        started = time.monotonic()
        second = _serve(repo, other, placeholder_pkg, tmp_path)
        try:
            out, _ = second.communicate(timeout=60)
        finally:
            if second.poll() is None:
                second.kill()
                second.wait()
        took = time.monotonic() - started
        assert second.returncode == 1, out
        assert took < 15, f"took {took:.1f} s: {out}"  # a Python start; no tritonserver was started
        assert "Traceback" not in out and "tritonserver" in out and "control key in" not in out
        assert f"jigsaw serve pid {first.pid}, tritonserver pid {server_pid}" in out, out
        for port in ports.values():
            assert f"127.0.0.1:{port}" in out, out
        assert (key_file.read_text(), key_file.stat().st_mtime_ns) == (key, key_stat.st_mtime_ns)
        with httpclient.InferenceServerClient(f"127.0.0.1:{ports['http_port']}") as client:
            assert client.is_model_ready("double")
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        if server_pid and _group_alive(server_pid):
            os.killpg(server_pid, signal.SIGKILL)
    assert first.returncode == 0, out
    RepoLock(repo).acquire().release()  # released when the server stopped


def test_serve_releases_the_repo_lock_when_the_server_fails(tmp_path, capsys, monkeypatch):
    def fail(self):
        raise RuntimeError("tritonserver exited with code 1 (test)")
    monkeypatch.setattr(TritonServer, "__enter__", fail)
    monkeypatch.setattr("jigsawserve.orchestrator.serving.tritonenv.prepare_backend_dir", lambda d: d)
    monkeypatch.setattr("jigsawserve.orchestrator.serving.tritonenv.server_env", lambda: {})
    ports = _ports()
    args = ["serve", str(tmp_path), *(f"--{k.replace('_', '-')}={v}" for k, v in ports.items())]
    assert main(args) == 1
    assert "exited with code 1 (test)" in capsys.readouterr().err
    assert (tmp_path / REPO_LOCK).read_text() == ""  # no holder left in it
    key = (tmp_path / ".jigsaw-control-key").read_text()
    with RepoLock(tmp_path).acquire(host="127.0.0.1", http_port=1) as lock:  # free again
        with pytest.raises(RepoBusy, match=rf"already served by jigsaw serve pid {os.getpid()} \(http 127\.0\.0\.1:1\)"):
            RepoLock(tmp_path).acquire()
        lock.update(tritonserver_pid=42)
        assert main(args) == 1  # before the key is written
        assert f"pid {os.getpid()}, tritonserver pid 42" in capsys.readouterr().err
        assert (tmp_path / ".jigsaw-control-key").read_text() == key
