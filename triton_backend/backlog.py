"""The items each runner has outstanding from all the graph model's instances together, and how its
answers compared with their estimates.

Each graph instance is a stub process of its own, and each sees only what it sent itself: admitting
on that view, the instances all found an idle runner at the same moment, each admitted a batch of
requests, and together they queued far more than the runner could serve before the deadline (seen
in tests/test_overload.py with such a per-instance count, during development). So they share one
table, a memory-mapped file beside the routing file: one row per instance (claimed under a file
lock, written by that instance only), one slot per runner model in it: key, items outstanding, and
over the answers so far their count and the sums of their observed and estimated latencies (us). A
reader sums a runner's slots over the rows of live instances; an instance that died without
clearing its row is skipped once its pid is gone.
"""
from __future__ import annotations

import fcntl
import glob
import os
import time
import zlib

import numpy as np

PREFIX = ".backlog-"  # + the server's pid: the table's file name in the graph model's directory
ROWS = 256           # graph instances at once (both copies of the graph model during a reload included)
SLOTS = 32           # runner models one instance has sent to
FIELDS = 5           # per slot: key, items outstanding, answers, observed us, estimated us
LIVE_CHECK_S = 1.0   # how often a reader looks again for rows whose owner is gone


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
            self._table = np.memmap(path, dtype=np.int64, mode="r+", shape=(ROWS, 1 + FIELDS * SLOTS))
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
        self._keys = self._table[:, 1::FIELDS]
        self._items = self._table[:, 2::FIELDS]
        self._answers = self._table[:, 3::FIELDS]
        self._observed = self._table[:, 4::FIELDS]
        self._estimated = self._table[:, 5::FIELDS]
        self._slot: dict[str, int] = {}
        self._live = np.ones(ROWS, dtype=bool)
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
        self._table[self.row, 1 + slot * FIELDS:1 + (slot + 1) * FIELDS] = 0
        row[slot] = _key(model)
        self._slot[model] = slot
        return slot

    def add(self, model: str, items: int) -> None:
        """``items`` more (or fewer, when negative) outstanding at ``model`` from this instance."""
        slot = self._slot.get(model) if items < 0 else self._own_slot(model)
        if slot is not None:  # else more runners than slots: not shared (and an answer to what was not counted)
            self._items[self.row, slot] += items

    def answered(self, model: str, estimated_ms: float, observed_ms: float) -> None:
        """An answer from ``model``: how long it took, and how long it was estimated to take."""
        slot = self._slot.get(model)
        if slot is not None:
            self._answers[self.row, slot] += 1
            self._observed[self.row, slot] += int(observed_ms * 1000)
            self._estimated[self.row, slot] += int(estimated_ms * 1000)

    def totals(self, model: str) -> tuple[int, int, int, int]:
        """Over every live instance: the items outstanding at ``model``, and over its answers so far
        how many, and the sums of their observed and of their estimated latencies (us)."""
        now = time.monotonic()
        if now - self._live_at > LIVE_CHECK_S:
            owners = self._table[:, 0]
            self._live = np.array([o != 0 and _alive(int(o)) for o in owners])
            self._live_at = now
        mask = (self._keys == _key(model)) & self._live[:, None]
        return (max(0, int(self._items[mask].sum())), int(self._answers[mask].sum()),
                int(self._observed[mask].sum()), int(self._estimated[mask].sum()))

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
