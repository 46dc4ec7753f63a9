"""The items each runner has outstanding from all the graph model's instances together, and how its
recent answers compared with their estimates.

Each graph instance is a stub process of its own, and each sees only what it sent itself: admitting
on that view, the instances all found an idle runner at the same moment, each admitted a batch of
requests, and together they queued far more than the runner could serve before the deadline (seen
in tests/test_overload.py with such a per-instance count, during development). So they share one
table, a memory-mapped file beside the routing file: one row per instance (claimed under a file
lock, written by that instance only), one slot per runner model in it: key, items outstanding, when
it last answered, and over its answers their count and the sums of their observed and estimated
latencies (ms), each answer weighted by exp(-age / ``DECAY_S``), and until when the instance found it
failing (``mark_down``: a runner whose stub died answers every request with an error, and Triton does not
restart it). A reader sums a runner's slots over
the rows of live instances; an instance that died without clearing its row is skipped once its pid
is gone. (The answers' sums were first kept per instance over a sliding window, which an instance
could judge only once it had seen a window's answers itself: each of the 32 instances admitted on
the profile alone for its first 0.1-0.2 s of traffic, and late answers followed, in
tests/test_overload.py at the start and whenever a fresh instance took its first requests.)
"""
from __future__ import annotations

import fcntl
import functools
import glob
import math
import os
import time
import zlib
from typing import NamedTuple

import numpy as np

PREFIX = ".backlog-"  # + the server's pid: the table's file name in the graph model's directory
# what the stages count each time they find a runner down (``mark_down``), per app, task and runner model: the
# controller reloads a runner of its plan that it counts (a dead stub stays dead: Triton does not restart it)
DOWN_METRIC = "jigsaw_runner_down_total"
ROWS = 256           # graph instances at once (both copies of the graph model during a reload included)
SLOTS = 32           # runner models one instance has sent to
FIELDS = 7           # per slot: key, items outstanding, last answer (s), answers, observed ms, estimated ms,
                     # down until (s)
LIVE_CHECK_S = 1.0   # how often a reader looks again for rows whose owner is gone
DECAY_S = 1.0        # an answer's weight in the sums falls by e every this many seconds


class Totals(NamedTuple):
    """A runner's row sums over the live instances, the answers' decayed to now."""
    items: int             # outstanding
    answers: float         # recent answers (decayed count)
    observed_ms: float     # their observed latencies, summed
    estimated_ms: float    # their estimates when sent, summed
    idle_s: float          # since its last answer (inf: none yet)
    down_s: float = 0.0    # until some instance's mark_down runs out (0: not marked)


@functools.lru_cache(maxsize=1024)
def _key(model: str) -> int:
    return zlib.crc32(model.encode()) + 1  # never 0, the key of a free slot


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SharedBacklog:
    """This instance's row of the table at ``path`` (created if missing) and the sums over all rows.
    The file's name should carry the server's pid, so that a restarted server starts from zero."""

    def __init__(self, path: str) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_size != ROWS * (1 + FIELDS * SLOTS) * 8:
                os.ftruncate(fd, ROWS * (1 + FIELDS * SLOTS) * 8)
            # float64: keys, pids and counts are integers far below 2**53, so they stay exact
            self._table = np.memmap(path, dtype=np.float64, mode="r+", shape=(ROWS, 1 + FIELDS * SLOTS))
            owners = self._table[:, 0]
            free = [r for r in range(ROWS) if owners[r] == 0 or not _alive(int(owners[r]))]
            if not free:
                raise RuntimeError(f"{path}: all {ROWS} rows are taken by live graph instances")
            self.row = free[0]
            self._table[self.row, :] = 0
            self._table[self.row, 0] = os.getpid()
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        # plain ndarray views of the mapped memory: indexing np.memmap itself goes through its Python-level
        # __getitem__ and __array_finalize__, which were a third of a stage's own CPU time (bench/overhead.py)
        table = self._table.view(np.ndarray)
        self._owners = table[:, 0]
        self._slots = table[:, 1:].reshape(ROWS, SLOTS, FIELDS)  # one runner's slot: its FIELDS values
        self._keys = table[:, 1::FIELDS]
        self._items = table[:, 2::FIELDS]
        self._answered_at = table[:, 3::FIELDS]
        self._answers = table[:, 4::FIELDS]
        self._observed = table[:, 5::FIELDS]
        self._estimated = table[:, 6::FIELDS]
        self._down = table[:, 7::FIELDS]
        self._slot: dict[str, int] = {}
        self._live = np.ones(ROWS, dtype=bool)
        self._rows = ROWS  # the rows a reader looks at: up to the last one live at the last check
        self._live_at = 0.0

    def _own_slot(self, model: str) -> int | None:
        """This instance's slot for ``model``: the one it has, else a free one (or one whose runner has
        nothing outstanding from it), else None."""
        slot = self._slot.get(model)
        if slot is not None:
            return slot
        row = self._keys[self.row]
        free = ([s for s in range(SLOTS) if row[s] == 0]
                or [s for s in range(SLOTS) if self._items[self.row, s] == 0])
        if not free:
            return None
        slot = free[0]
        for name, s in list(self._slot.items()):
            if s == slot:
                del self._slot[name]
        self._slots[self.row, slot] = 0
        row[slot] = _key(model)
        self._slot[model] = slot
        return slot

    def add(self, model: str, items: int) -> None:
        """``items`` more (or fewer, when negative) outstanding at ``model`` from this instance."""
        slot = self._slot.get(model) if items < 0 else self._own_slot(model)
        if slot is not None:  # else more runners than slots: not shared (and an answer to what was not counted)
            self._items[self.row, slot] += items

    def answered(self, model: str, estimated_ms: float, observed_ms: float, now: float | None = None) -> None:
        """An answer from ``model`` at ``now`` (``time.monotonic()``, one clock for every process):
        how long it took, and how long it was estimated to take."""
        slot = self._slot.get(model)
        if slot is None:
            return
        now = time.monotonic() if now is None else now
        row = self.row
        last = self._answered_at[row, slot]
        keep = math.exp(-(now - last) / DECAY_S) if last > 0 else 0.0
        self._answers[row, slot] = self._answers[row, slot] * keep + 1
        self._observed[row, slot] = self._observed[row, slot] * keep + observed_ms
        self._estimated[row, slot] = self._estimated[row, slot] * keep + estimated_ms
        self._answered_at[row, slot] = now

    def mark_down(self, model: str, until: float) -> None:
        """``model`` failed for a reason of its own (its stub died): every instance keeps its items away from
        it until ``until`` (``time.monotonic()``), then tries it again."""
        slot = self._own_slot(model)
        if slot is not None:
            self._down[self.row, slot] = until

    def totals(self, model: str, now: float | None = None) -> Totals:
        """``model``'s items outstanding and recent answers, over every live instance."""
        clock = time.monotonic()
        now = clock if now is None else now
        if clock - self._live_at > LIVE_CHECK_S:
            self._live = np.array([o != 0 and _alive(int(o)) for o in self._owners.tolist()])
            self._rows = int(np.flatnonzero(self._live)[-1]) + 1 if self._live.any() else 0
            self._live_at = clock
        # the model's slots of the live rows (one per instance that has sent to it), summed in Python: a few
        # dozen at most, where each numpy call on so few costs more than the loop
        n = self._rows
        mine = self._keys[:n] == _key(model)
        mine &= self._live[:n, None]
        items = answers = observed = estimated = last = down = 0.0
        for _, outstanding, at, count, obs, est, until in self._slots[:n][mine].tolist():
            items += outstanding
            if at > 0:
                weight = math.exp((at - now) / DECAY_S)
                answers += count * weight
                observed += obs * weight
                estimated += est * weight
                last = max(last, at)
            down = max(down, until)
        return Totals(items=max(0, int(items)), answers=answers, observed_ms=observed, estimated_ms=estimated,
                      idle_s=now - last if last > 0 else math.inf, down_s=max(0.0, down - now))

    def close(self) -> None:
        """Give this instance's row back."""
        self._table[self.row, :] = 0
        self._table.flush()


def remove_stale(pattern: str, keep: str) -> None:
    """Delete the tables matching ``pattern`` (``<prefix>*``, the suffix a server pid) of servers that
    are gone, except ``keep``."""
    for path in glob.glob(pattern):
        pid = path.rpartition("-")[2]
        if path != keep and pid.isdigit() and not _alive(int(pid)):
            try:
                os.remove(path)
            except OSError:
                pass
