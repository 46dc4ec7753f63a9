"""Keep tritonserver serving: when it dies on its own, start it again on the same repository and ports.

The repository always holds the last applied plan (``jigsaw apply`` writes its files before it loads them), so a
fresh server serves what the dead one served. A death is seen by polling the process, not the health endpoint.
"""
from __future__ import annotations

import signal
import time
from typing import Callable

from .server import TritonServer

POLL_S = 0.1
# back-off before restart k is k times this, capped: a server that dies at once is not restarted in a tight loop
BACKOFF_S, MAX_BACKOFF_S = 1.0, 10.0


class ServerDied(RuntimeError):
    """tritonserver died and no restart is left; the message says of what (its log's tail was echoed)."""


def exit_reason(code: int) -> str:
    """``exit code N`` or ``signal N (SIGNAME)`` for a Popen return code."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"signal {-code} ({signal.Signals(-code).name})"
    except ValueError:
        return f"signal {-code}"


def _death(server: TritonServer) -> tuple[str, str]:
    """Wait until the server exits: what it died of, and the last lines of its log."""
    pid = server.pid
    while (code := server.exit_code) is None:
        time.sleep(POLL_S)
    return (f"tritonserver (pid {pid}) died: {exit_reason(code)}",
            f"last lines of {server.log_path}:\n{server.log_tail()}")


def _next(attempt: int, restarts: int) -> str:
    """What comes after a death when ``attempt`` of the ``restarts`` are spent."""
    if attempt < restarts:
        return f"restarting ({attempt + 1}/{restarts}) ..."
    return f"no restart left (--restart {restarts})" if restarts else "not restarted (see --restart)"


def supervise(start: Callable[[], TritonServer], restarts: int, echo: Callable[[str], None]) -> None:
    """Serve with ``start()`` (a ready server) until interrupted (KeyboardInterrupt propagates; the caller
    stops the current server). When the server dies, stop what is left of it (stubs, shared memory) and start
    a new one, at most ``restarts`` times in all; then raise ServerDied. A restart that fails to become ready
    counts as one."""
    server: TritonServer | None = start()
    attempt = 0
    while True:
        if server is not None:
            what, detail = _death(server)
            down = time.monotonic()
            echo(f"{what}; {_next(attempt, restarts)}; {detail}")  # before the stop (up to ORPHAN_GRACE_S)
            server.stop()
            server = None
        if attempt == restarts:
            raise ServerDied(f"{what}; {_next(attempt, restarts)}")
        attempt += 1
        time.sleep(min(BACKOFF_S * attempt, MAX_BACKOFF_S))
        try:
            server = start()
        except RuntimeError as exc:  # start stopped it
            what = f"restart {attempt}/{restarts} failed"
            echo(f"{what}; {_next(attempt, restarts)}; {exc}")
            continue
        echo(f"serving again after {time.monotonic() - down:.1f} s (tritonserver pid {server.pid})")
