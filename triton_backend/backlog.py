"""The items each runner has outstanding from all the graph model's instances together.

Each graph instance is a stub process of its own, and each sees only what it sent itself: admitting
on that view, the instances all found an idle runner at the same moment, each admitted a batch of
requests, and together they queued far more than the runner could serve before the deadline
(measured, tests/test_overload.py). So they share one table, a memory-mapped file beside the routing
file: one row per instance (claimed under a file lock, written by that instance only), one slot per
runner model in it, (key, items outstanding). A reader sums a runner's slots over the rows of live
instances; an instance that died without clearing its row is skipped once its pid is gone.
"""
from __future__ import annotations

import fcntl
import glob
import os
import time
import zlib

import numpy as np

ROWS = 256           # graph instances at once (both copies of the graph model during a reload included)
SLOTS = 32           # runner models one instance has sent to
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
            if os.fstat(fd).st_size != ROWS * (1 + 2 * SLOTS) * 8:
                os.ftruncate(fd, ROWS * (1 + 2 * SLOTS) * 8)
            self._table = np.memmap(path, dtype=np.int64, mode="r+", shape=(ROWS, 1 + 2 * SLOTS))
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
        self._keys = self._table[:, 1::2]
        self._items = self._table[:, 2::2]
        self._slot: dict[str, int] = {}
        self._live = np.ones(ROWS, dtype=bool)
        self._live_at = 0.0

    def add(self, model: str, items: int) -> None:
        """``items`` more (or fewer, when negative) outstanding at ``model`` from this instance."""
        slot = self._slot.get(model)
        if slot is None and items < 0:
            return  # its items were never counted (no free slot then)
        if slot is None:
            row = self._keys[self.row]
            free = ([s for s in range(SLOTS) if row[s] == 0]
                    or [s for s in range(SLOTS) if self._items[self.row, s] == 0])
            if not free:
                return  # more runners than slots: this instance's share of the count is not shared
            slot = free[0]
            for name, s in list(self._slot.items()):
                if s == slot:
                    del self._slot[name]
            self._items[self.row, slot] = 0
            row[slot] = _key(model)
            self._slot[model] = slot
        self._items[self.row, slot] += items

    def outstanding(self, model: str) -> int:
        """Items outstanding at ``model`` from every live instance."""
        now = time.monotonic()
        if now - self._live_at > LIVE_CHECK_S:
            owners = self._table[:, 0]
            self._live = np.array([o != 0 and _alive(int(o)) for o in owners])
            self._live_at = now
        mask = (self._keys == _key(model)) & self._live[:, None]
        return max(0, int(self._items[mask].sum()))

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
