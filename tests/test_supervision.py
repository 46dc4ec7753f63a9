"""``jigsaw serve --restart N`` against a real tritonserver (CPU): a killed server is restarted on the same ports
and serves again; no exit path leaves the server's shared-memory regions in /dev/shm.

``jigsaw serve`` runs as a subprocess in its own session; each test stops it, and every tritonserver it
reported, by process group at the end, also when it failed.
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from test_server import DOUBLE_PY, _group_alive, _model, _ports, placeholder_pkg  # noqa: F401 (fixture)

from jigsawserve.orchestrator.serving.server import SHM_DIR

ROOT = Path(__file__).resolve().parents[1]


class Serve:
    """A ``jigsaw serve`` subprocess (own session) whose output lines are read by a thread."""

    def __init__(self, repo: Path, ports: dict[str, int], pkg: Path, tmp: Path, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pkg), str(ROOT)]), "TMPDIR": str(tmp)}
        self.ports, self.lines, self.servers = ports, [], []
        self.prefixes: dict[int, str] = {}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jigsawserve.orchestrator.cli", "serve", str(repo), *args,
             *(f"--{k.replace('_', '-')}={v}" for k, v in ports.items())],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp, start_new_session=True)
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def expect(self, marker: str, timeout_s: float) -> str:
        """The next line holding ``marker`` (one naming a ready tritonserver records its pid)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {marker!r} in {timeout_s} s:\n{''.join(self.lines)}") from None
            assert line is not None, f"serve exited before {marker!r}:\n{''.join(self.lines)}"
            self.lines.append(line)
            if " ready: " in line:
                pid = int(line.split("tritonserver pid ")[1].split()[0])
                self.servers.append(pid)
                self.prefixes[pid] = _shm_prefix(pid)
            if marker in line:
                return line

    def wait(self, timeout_s: float) -> int:
        """serve's exit status, once it has exited and all its output is read."""
        self.proc.wait(timeout=timeout_s)
        while (line := self._queue.get(timeout=5)) is not None:
            self.lines.append(line)
        return self.proc.returncode

    def regions(self, pid: int) -> list[Path]:
        """The shared-memory regions of the tritonserver ``pid`` that exist now."""
        return sorted(SHM_DIR.glob(f"{self.prefixes[pid]}*"))

    def stop(self) -> None:
        """Kill what is left: serve's process group, then each tritonserver's, and remove their regions."""
        for pgid in (self.proc.pid, *self.servers):
            if _group_alive(pgid):
                os.killpg(pgid, signal.SIGKILL)
        self.proc.wait()
        for pid in self.servers:
            _wait_gone(pid)
            for region in self.regions(pid):
                region.unlink(missing_ok=True)


def _shm_prefix(pid: int) -> str:
    """The shared-memory region prefix on the command line of the tritonserver ``pid``."""
    flag = "--backend-config=python,shm-region-prefix-name="
    return next(a[len(flag):] for a in Path(f"/proc/{pid}/cmdline").read_text().split("\0") if a.startswith(flag))


def _wait_gone(pgid: int, timeout_s: float = 10.0) -> bool:
    """Whether the process group ``pgid`` is gone within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture
def repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    _model(repo, "double", "python", DOUBLE_PY)
    _model(repo, "jig", "jigsaw")  # a Python-based backend: its regions take the python backend's prefix too
    return repo


@pytest.fixture
def serve(repo, placeholder_pkg, tmp_path) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def run(*args: str) -> Serve:
        started.append(Serve(repo, _ports(), placeholder_pkg, tmp_path, *args))
        return started[-1]
    yield run
    for s in started:
        s.stop()


def _stubs(pgid: int) -> list[int]:
    """The Python-backend stubs of the tritonserver ``pgid``: the other members of its process group."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == pgid and int(stat.parent.name) != pgid:
            pids.append(int(stat.parent.name))
    return pids


def _infer(s: Serve) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    inp = httpclient.InferInput("INPUT0", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    with httpclient.InferenceServerClient(f"127.0.0.1:{s.ports['http_port']}") as client:  # the front
        np.testing.assert_array_equal(client.infer("double", [inp]).as_numpy("OUTPUT0"), x * 2)
    inp = grpcclient.InferInput("INPUT0", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    with grpcclient.InferenceServerClient(f"127.0.0.1:{s.ports['grpc_port']}") as client:
        np.testing.assert_array_equal(client.infer("double", [inp]).as_numpy("OUTPUT0"), x * 2)


def test_killed_server_is_restarted_then_given_up_without_leaving_shm(serve):
    s = serve("--restart", "1")
    s.expect(" ready: ", 60)
    first = s.servers[0]
    regions = s.regions(first)
    assert len(regions) == 2, regions  # one per model instance
    _infer(s)
    # a stub that outlives its server (some did, blocked, under load) is ended and its region removed:
    # a stopped one stands in for it
    stubs = _stubs(first)
    assert len(stubs) == 2, stubs
    os.kill(stubs[0], signal.SIGSTOP)
    os.kill(first, signal.SIGKILL)
    killed = time.monotonic()
    line = s.expect("died", 5)
    assert f"tritonserver (pid {first}) died: signal 9 (SIGKILL); restarting (1/1) ..." in line, line
    assert time.monotonic() - killed < 2
    assert _wait_gone(first, 8 - (time.monotonic() - killed)), "the dead server's stubs were not ended"
    s.expect("serving again after", 60)
    assert not any(r.exists() for r in regions)
    second = s.servers[1]
    assert len(s.regions(second)) == 2
    _infer(s)  # same ports, HTTP (a new front) and gRPC

    regions = s.regions(second)
    os.kill(second, signal.SIGKILL)  # no restart left: serve exits 1 saying so
    assert s.wait(30) == 1, "".join(s.lines)
    out = "".join(s.lines)
    assert f"tritonserver (pid {second}) died: signal 9 (SIGKILL); no restart left (--restart 1)" in out, out
    assert "Traceback" not in out
    assert not _group_alive(second)
    assert not any(r.exists() for r in regions)


def test_stop_leaves_no_shm_of_the_server(serve):
    s = serve()
    s.expect(" ready: ", 60)
    regions = s.regions(s.servers[0])
    assert len(regions) == 2, regions
    s.proc.send_signal(signal.SIGTERM)
    assert s.wait(30) == 0, "".join(s.lines)
    assert s.lines[-1].strip() == "stopped"
    assert not _group_alive(s.servers[0])
    assert not any(r.exists() for r in regions)
