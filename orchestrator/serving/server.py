"""Run tritonserver and an MPS control daemon as child processes in their own process groups.

Both are stopped through their process group (never by name), so a Python-backend stub left behind
by a killed server goes with it, and so do the server's shared-memory regions (SHM_PREFIX).
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Sequence

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from .front import DEFAULT_MAX_REQUEST_BYTES, FRONT_HEADER, GrpcFront, HttpFront
from .tritonenv import find_runtime, server_env

CONTROL_HEADER = "jigsaw-control-key"
# tritonserver waits this long for open HTTP connections and in-flight requests after SIGTERM (default
# 30 s); below stop()'s default timeout, so it exits on its own and finalises its stubs (no SIGKILL)
EXIT_TIMEOUT_S = 10
# tritonserver 2.51 prefixes restricted gRPC header keys with "triton-grpc-protocol-"
GRPC_CONTROL_HEADER = f"triton-grpc-protocol-{CONTROL_HEADER}"
# models tritonserver loads at once (its default); control.apply issues as many runner loads at a time
LOAD_THREADS = 4
# API groups no inference client needs, restricted to the control key (a random one when the server has
# none): registering shared memory (a stub's region registered and written into crashed 2.51), the
# repository (load, unload, index), statistics (they list every runner), trace and logging settings.
# Without a control key the repository API stays open (tests, profiling); health, metadata, model config
# and inference stay open.
ADMIN_APIS = ("shared-memory", "statistics", "trace", "logging")
# The Python backend (and each Python-based backend, as jigsaw) names a model instance's shared-memory region
# "<prefix><uuid>" in /dev/shm (python_backend r24.10 src/stub_launcher.cc), the prefix by default
# "triton_<backend>_backend_shm_region_" for every server alike. A region goes when its stub ends (also when
# the stub sees its server gone, measured); a stub killed with its server leaves it behind, memory nothing
# frees. The prefix is set per server (backend config shm-region-prefix-name, src/python_be.cc), so stop()
# removes exactly this server's regions.
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "jigsaw_tritonserver_"
# The stubs of a server that died notice it within 0.3 s (pb_stub.cc checks its parent every 300 ms) and
# exit; under load some stayed blocked, and stop() waited its 15 s for them before it killed them (a death
# under the CPU demo at 40 req/s took 17.8 s to end, 3 of 35 regions left, measured). Once the server is
# gone they get this long.
ORPHAN_GRACE_S = 2.0


# held (flock) by `jigsaw serve` for its server's life, with the holder's PID and ports in it: a second
# serve of the repository fails before it changes anything (its control key, the first server's)
REPO_LOCK = ".jigsaw-serve.lock"


class RepoBusy(RuntimeError):
    """The repository is already served; ``holder`` is what its server wrote in the lock (may be {})."""

    def __init__(self, message: str, holder: dict) -> None:
        super().__init__(message)
        self.holder = holder


class RepoLock:
    """An exclusive, non-blocking flock on ``REPO/REPO_LOCK``, kept until ``release`` (or the process
    exits: the kernel drops it, also on SIGKILL). ``acquire`` raises RepoBusy naming the holder."""

    def __init__(self, repo: Path) -> None:
        self.path = Path(repo) / REPO_LOCK
        self._fd: int | None = None

    def acquire(self, **info: object) -> RepoLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read(fd)
            os.close(fd)
            raise RepoBusy(f"{self.path.parent} is already served by {self.describe(holder)}; stop it first "
                           f"(or serve another repository)", holder) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        os.ftruncate(fd, 0)  # what an earlier holder killed outright left
        self.update(pid=os.getpid(), **info)
        return self

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            holder = json.loads(os.read(fd, 65536).decode() or "{}")
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    @staticmethod
    def describe(holder: dict) -> str:
        if not holder.get("pid"):
            return "another jigsaw serve (its PID and ports are not written yet)"
        ports = ", ".join(f"{k} {holder['host']}:{holder[f'{k}_port']}" for k in ("http", "grpc", "metrics")
                          if f"{k}_port" in holder and "host" in holder)
        triton = f", tritonserver pid {holder['tritonserver_pid']}" if holder.get("tritonserver_pid") else ""
        return f"jigsaw serve pid {holder['pid']}{triton}" + (f" ({ports})" if ports else "")

    def update(self, **info: object) -> None:
        """Merge ``info`` into what the lock file says about its holder."""
        assert self._fd is not None, "lock not held"
        holder = {**self._read(self._fd), **info}
        data = json.dumps(holder).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Empty the file and drop the lock. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)

    def __enter__(self) -> RepoLock:
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now (bind them soon: nothing reserves them)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _wait_group_gone(pgid: int, timeout_s: float) -> bool:
    """Poll until no process is left in the group; False on timeout."""
    deadline = time.monotonic() + timeout_s
    while _signal_group(pgid, 0):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _stop_group(proc: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM the leader's group, wait for it to empty, SIGKILL the group after ``timeout_s``."""
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass
    if not _wait_group_gone(proc.pid, max(0.0, deadline - time.monotonic())):
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        _wait_group_gone(proc.pid, 5.0)


class TritonServer:
    """A tritonserver child process in explicit model-control mode.

    ``with TritonServer(repo, backend_dir, ...) as server:`` starts it, waits until it is ready and
    stops it (process group) on exit. With ``control_key``, the model-repository API (load, unload,
    index) answers only requests carrying the header ``CONTROL_HEADER: <key>`` on HTTP and
    ``GRPC_CONTROL_HEADER: <key>`` on gRPC; so do the ``ADMIN_APIS`` (always: without a control key they
    answer a random ``admin_key``). With ``http_front`` (default), the HTTP port is served by the front
    (``orchestrator/serving/front.py``), which checks requests before tritonserver allocates for them; with
    ``grpc_front`` (as ``jigsaw serve`` runs it), the gRPC port too (messages of at most ``max_request_bytes``).
    """

    def __init__(self, repo: Path, backend_dir: Path, *, host: str = "127.0.0.1", http_port: int = 8000,
                 grpc_port: int = 8001, metrics_port: int = 8002, control_key: str | None = None,
                 load: Sequence[str] = ("*",), log_path: Path | None = None,
                 env: dict[str, str] | None = None, ready_timeout_s: float = 60.0,
                 http_front: bool = True, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 grpc_front: bool = False) -> None:
        self.repo, self.backend_dir = Path(repo), Path(backend_dir)
        self.host, self.http_port, self.grpc_port, self.metrics_port = host, http_port, grpc_port, metrics_port
        self.control_key, self.load = control_key, tuple(load)
        self.admin_key = control_key or secrets.token_hex(16)
        # tritonserver's own HTTP endpoint sits behind the front (orchestrator/serving/front.py) on a private port
        self.http_front, self.max_request_bytes = http_front, max_request_bytes
        self._front_key = secrets.token_hex(16)
        self._internal_http_port: int | None = None
        self._front: HttpFront | None = None
        # tritonserver's gRPC endpoint likewise behind the gRPC front, with the same secret
        self.grpc_front = grpc_front
        self._internal_grpc_port: int | None = None
        self._grpc_front: GrpcFront | None = None
        self.log_path = Path(log_path) if log_path else None
        self.env = env
        self.ready_timeout_s = ready_timeout_s
        self.shm_prefix = f"{SHM_PREFIX}{secrets.token_hex(8)}_"
        self._proc: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP endpoint (tritonclient.http form, no scheme)."""
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint (tritonclient.grpc form)."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """Full URL of the Prometheus metrics page."""
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        """PID of the running server (also its process-group id); None when not started or stopped."""
        return self._proc.pid if self._proc else None

    @property
    def exit_code(self) -> int | None:
        """The server's exit status once it has exited on its own; None while it runs."""
        return self._proc.poll() if self._proc else None

    def command(self) -> list[str]:
        """The tritonserver command line."""
        args = [str(find_runtime().server_bin),
                f"--model-repository={self.repo}", f"--backend-directory={self.backend_dir}",
                "--model-control-mode=explicit", f"--model-load-thread-count={LOAD_THREADS}",
                *(f"--load-model={name}" for name in self.load),
                *self._http_args(), *self._grpc_args(),
                "--allow-metrics=true", f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
                "--exit-on-error=true", f"--exit-timeout-secs={EXIT_TIMEOUT_S}", "--log-verbose=0",
                # ready once started (every model of the repository loaded), not only while every model ever
                # named is: with strict readiness a model whose load failed kept 2.51 unready for good (a rolled
                # back apply; unloading it did not help, measured), and every load made it unready for 2-4 s,
                # while the app was served. HTTP's /v2/health/ready is the app's (the front, app_models).
                "--strict-readiness=false",
                # Python-based backends (jigsaw) take the python backend's config (2.51's log shows it)
                f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}"]
        # 2.51 parses '<apis>:<header>=<value>' (apis comma-separated); its --help text shows a comma before the
        # header, which it rejects. One flag per header: each API group is restricted once.
        apis = ",".join((*(("model-repository",) if self.control_key else ()), *ADMIN_APIS))
        restricted = f"{apis}:{CONTROL_HEADER}={self.admin_key}"
        args += [f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}"]
        if self.http_front:  # tritonserver's HTTP inference answers the front only
            args.append(f"--http-restricted-api=inference:{FRONT_HEADER}={self._front_key}")
        if self.grpc_front:  # and its gRPC inference the gRPC front only
            args.append(f"--grpc-restricted-protocol=inference:{FRONT_HEADER}={self._front_key}")
        return args

    def shm_regions(self) -> list[Path]:
        """This server's shared-memory regions in /dev/shm (its stubs'; left behind when it was killed)."""
        return sorted(SHM_DIR.glob(f"{self.shm_prefix}*"))

    def _http_args(self) -> list[str]:
        if not self.http_front:
            return [f"--http-address={self.host}", f"--http-port={self.http_port}"]
        if self._internal_http_port is None:
            self._internal_http_port = free_ports(1)[0]
        return ["--http-address=127.0.0.1", f"--http-port={self._internal_http_port}"]

    def _grpc_args(self) -> list[str]:
        if not self.grpc_front:
            return [f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}"]
        if self._internal_grpc_port is None:
            self._internal_grpc_port = free_ports(1)[0]
        return ["--grpc-address=127.0.0.1", f"--grpc-port={self._internal_grpc_port}"]

    def start(self) -> TritonServer:
        """Start tritonserver in a new session (its own process group); output goes to ``log_path``
        (a temporary file when not given)."""
        if self._proc:
            raise RuntimeError(f"tritonserver already started (pid {self._proc.pid})")
        cmd = self.command()
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        if self.http_front:  # the public port is bound before the server starts: taken, or the start fails
            assert self._internal_http_port is not None
            self._front = HttpFront((self.host, self.http_port), ("127.0.0.1", self._internal_http_port),
                                    self._front_key, self.max_request_bytes, self.app_models).start()
        try:
            if self.grpc_front:  # its port is bound before the server starts too
                self._grpc_front = GrpcFront((self.host, self.grpc_port), f"127.0.0.1:{self._internal_grpc_port}",
                                             self._front_key, self.max_request_bytes).start()
            with open(self.log_path, "wb") as log:
                self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                              env=self.env if self.env is not None else server_env(),
                                              start_new_session=True)
        except BaseException:
            self._stop_front()
            raise
        return self

    def app_models(self) -> list[str] | None:
        """The models the served app needs now: the graph model the repository's manifest names (``jigsaw
        render``) and the runners of its current routing file; None for another repository."""
        try:
            graph = json.loads((self.repo / "jigsaw.json").read_text())["model"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        routing = json.loads((self.repo / graph / "routing.json").read_text())
        return [graph, *sorted({r["model"] for t in routing["tasks"].values() for r in t["routes"]})]

    def _stop_front(self) -> None:
        front, self._front = self._front, None
        if front is not None:
            front.stop()
        grpc_front, self._grpc_front = self._grpc_front, None
        if grpc_front is not None:
            grpc_front.stop()

    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines of the server log."""
        if not self.log_path or not self.log_path.is_file():
            return ""
        with open(self.log_path, errors="replace") as f:
            return "".join(deque(f, maxlen=n))

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until the server reports ready; RuntimeError (with the log tail) if it exits or times out."""
        if not self._proc:
            raise RuntimeError("tritonserver not started")
        deadline = time.monotonic() + timeout_s
        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise RuntimeError(f"tritonserver exited with code {code}; last lines of {self.log_path}:\n"
                                       f"{self.log_tail()}")
                try:
                    if client.is_server_ready(client_timeout=2.0):
                        return
                except (OSError, InferenceServerException):
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise RuntimeError(f"tritonserver not ready after {timeout_s:.0f} s; last lines of "
                                       f"{self.log_path}:\n{self.log_tail()}")
                time.sleep(0.2)
        finally:
            client.close()

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the server's process group, SIGKILL it after ``timeout_s`` (``ORPHAN_GRACE_S`` when the
        server itself has already exited), then remove its shared-memory regions. Idempotent."""
        self._stop_front()  # first: tritonserver waits for its open HTTP connections (the front's) at exit
        proc = self._proc
        if proc:  # forgotten once stopped: a stop interrupted (Ctrl-C) is done again by the next
            _stop_group(proc, timeout_s if proc.poll() is None else ORPHAN_GRACE_S)
            for region in self.shm_regions():  # what killed stubs left behind; the group is gone
                region.unlink(missing_ok=True)
            self._proc = None

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready(self.ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class MpsDaemon:
    """A private MPS control daemon (own pipe and log directories) for the server's CUDA clients.

    Started in the foreground (``nvidia-cuda-mps-control -f``) as a child in its own process group, so
    it is tracked by PID; ``-d`` would fork it away. ``env()`` gives the variables clients need.
    """

    BINARY = "nvidia-cuda-mps-control"

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._dirs: tuple[Path, Path] | None = None

    @classmethod
    def available(cls) -> bool:
        """Whether MPS can run here: the control binary is on PATH and an NVIDIA GPU device exists."""
        return shutil.which(cls.BINARY) is not None and any(Path("/dev").glob("nvidia[0-9]*"))

    @property
    def pid(self) -> int | None:
        """PID of the control daemon (also its process-group id); None when not running."""
        return self._proc.pid if self._proc else None

    def env(self) -> dict[str, str]:
        """``CUDA_MPS_PIPE_DIRECTORY`` and ``CUDA_MPS_LOG_DIRECTORY`` of this daemon, for its clients."""
        if not self._dirs:
            raise RuntimeError("MPS daemon not started")
        return {"CUDA_MPS_PIPE_DIRECTORY": str(self._dirs[0]), "CUDA_MPS_LOG_DIRECTORY": str(self._dirs[1])}

    def start(self, timeout_s: float = 15.0) -> MpsDaemon:
        """Start the control daemon and wait until it answers on its pipe."""
        if not self.available():
            raise RuntimeError(f"MPS unavailable: {self.BINARY} not on PATH or no NVIDIA GPU device in /dev")
        pipe, log_dir = (Path(tempfile.mkdtemp(prefix=f"jigsaw-mps-{kind}-")) for kind in ("pipe", "log"))
        self._dirs = (pipe, log_dir)
        with open(log_dir / "control-stdout.log", "wb") as log:
            self._proc = subprocess.Popen([self.BINARY, "-f"], stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, env={**os.environ, **self.env()},
                                          start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while self._control("get_server_list", 2.0) is None:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.BINARY} did not start")
            time.sleep(0.1)
        return self

    def _control(self, command: str, timeout_s: float) -> str | None:
        """Send one command to the daemon; its answer, or None when it does not answer."""
        try:
            done = subprocess.run([self.BINARY], input=f"{command}\n", capture_output=True, text=True,
                                  env={**os.environ, **self.env()}, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        return done.stdout if done.returncode == 0 else None

    def stop(self, timeout_s: float = 15.0) -> None:
        """``quit`` the daemon (it stops its MPS server), then its process group; remove its directories."""
        proc, self._proc = self._proc, None
        if proc:
            if proc.poll() is None and self._control("quit", timeout_s) is not None:
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    pass
            _stop_group(proc, timeout_s)
        if self._dirs:
            for d in self._dirs:
                shutil.rmtree(d, ignore_errors=True)
            self._dirs = None

    def __enter__(self) -> MpsDaemon:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
