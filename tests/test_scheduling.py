"""The stages' pure scheduling pieces and the backlog table the graph instances share."""
from __future__ import annotations

import math
import multiprocessing
import os

import pytest

from jigsawserve.triton_backend import backlog as backlog_mod
from jigsawserve.triton_backend.backlog import SharedBacklog, remove_stale
from jigsawserve.triton_backend.scheduling import Route, backlog_ms, choose_route, drop_decision, pace

A = Route("m_a", "a", 0.5, 4, 10.0, 400.0)
B = Route("m_b", "b", 0.5, 2, 20.0, 100.0)


def test_backlog_ms_serves_what_is_ahead_at_the_planned_throughput() -> None:
    assert backlog_ms(10.0, 0, 400.0) == 10.0
    assert backlog_ms(10.0, 40, 400.0) == pytest.approx(110.0)


def test_drop_decision_holds_the_reserve_back() -> None:
    # fastest path 10 + 20 ms, 5 ms held in reserve: 35 ms left is enough, 34 ms is not
    assert not drop_decision(0, 35_000_000, 5.0, 10.0, 20.0, "det").drop
    decision = drop_decision(0, 34_000_000, 5.0, 10.0, 20.0, "det")
    assert decision.drop and decision.reason == (
        "jigsaw: request dropped at stage det: 34.0 ms left before its deadline, the fastest remaining path "
        "needs 30.0 ms and 5.0 ms are held in reserve")


def test_choose_route_keeps_the_pick_that_makes_it() -> None:
    est = {"m_a": 50.0, "m_b": 20.0}.__getitem__
    assert choose_route(A, [A, B], 2, left_ms=100, downstream_ms=40, estimate=lambda r: est(r.model)) is A


def test_choose_route_moves_a_chunk_off_a_runner_too_far_behind() -> None:
    est = {"m_a": 90.0, "m_b": 20.0}
    assert choose_route(A, [A, B], 2, 100, 40, lambda r: est[r.model]) is B
    # B takes at most 2 rows in one batch: a chunk of 4 cannot move there
    assert choose_route(A, [A, B], 4, 100, 40, lambda r: est[r.model]) is None
    assert choose_route(A, [A, B], 2, 50, 40, lambda r: est[r.model]) is None


def _add(path: str, model: str, n: int, done, release) -> None:
    table = SharedBacklog(path)
    table.add(model, n)
    done.set()
    release.wait(30)


def test_instances_share_their_outstanding_items(tmp_path) -> None:
    path = str(tmp_path / ".backlog-1")
    mine = SharedBacklog(path)
    mine.add("runner", 3)
    ctx = multiprocessing.get_context("fork")
    done, release = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_add, args=(path, "runner", 5, done, release))
    other.start()
    try:
        assert done.wait(30)
        assert mine.totals("runner")[0] == 8
        assert mine.totals("another")[0] == 0
        mine.add("runner", -3)
        assert mine.totals("runner")[0] == 5
    finally:
        release.set()
        other.join(30)
    mine._live_at = 0.0  # look for gone owners now rather than within LIVE_CHECK_S
    assert mine.totals("runner")[0] == 0, "the row of an instance that is gone still counts"
    again = SharedBacklog(path)  # the gone instance's row is free again
    assert again.row != mine.row


def test_close_gives_the_row_back(tmp_path) -> None:
    path = str(tmp_path / ".backlog-1")
    first = SharedBacklog(path)
    first.add("runner", 2)
    first.close()
    second = SharedBacklog(path)
    assert second.row == first.row and second.totals("runner")[0] == 0


def test_slots_are_reused_once_a_runner_has_nothing_outstanding(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(backlog_mod, "SLOTS", 2)
    table = SharedBacklog(str(tmp_path / ".backlog-1"))
    table.add("r1", 1)
    table.add("r2", 1)
    table.add("r3", 1)          # no free slot: not shared, and nothing breaks
    assert table.totals("r3")[0] == 0
    table.add("r1", -1)
    table.add("r3", -1)         # the answer to what was not counted: not counted either
    table.add("r3", 4)          # r1's slot, empty now
    assert tuple(table.totals(r)[0] for r in ("r1", "r2", "r3")) == (0, 1, 4)


def test_remove_stale_keeps_live_servers_tables(tmp_path) -> None:
    live = tmp_path / f".backlog-{os.getpid()}"
    gone = tmp_path / ".backlog-999999999"
    mine = tmp_path / ".backlog-7"
    for p in (live, gone, mine):
        p.write_bytes(b"")
    remove_stale(str(tmp_path / ".backlog-*"), keep=str(mine))
    assert live.exists() and mine.exists() and not gone.exists()


def test_pace_is_observed_over_estimated() -> None:
    assert pace(0.0, 0.0, 0.0, math.inf) == 1.0
    assert pace(1.5, 30.0, 20.0, 0.1) == 1.0                     # too few recent answers to tell
    assert pace(4.0, 60.0, 40.0, 0.1) == pytest.approx(1.5)
    assert pace(4.0, 30.0, 40.0, 0.1) == 1.0                     # faster than estimated: still 1
    assert pace(4.0, 60.0, 40.0, 1.5) == 1.0                     # nothing came for a second: try it again


def test_answers_are_summed_over_instances_and_decay(tmp_path) -> None:
    path = str(tmp_path / ".backlog-1")
    a, b = SharedBacklog(path), SharedBacklog(path)
    for table, est, obs in ((a, 10.0, 15.0), (b, 20.0, 30.0)):
        table.add("runner", 1)
        table.add("runner", -1)
        table.answered("runner", est, obs, now=100.0)
    assert a.totals("runner", now=100.0) [:5] == (0, 2.0, 45.0, 30.0, 0.0)
    assert a.totals("other", now=100.0) [:5] == (0, 0.0, 0.0, 0.0, math.inf)
    # a second later they weigh 1/e; a new answer of b's is added at full weight, its older one decayed
    b.answered("runner", 10.0, 10.0, now=101.0)
    later = a.totals("runner", now=101.0)
    assert later.answers == pytest.approx(2 / math.e + 1) and later.idle_s == 0.0
    assert later.observed_ms == pytest.approx(45 / math.e + 10) and later.estimated_ms == pytest.approx(30 / math.e + 10)
    # a fresh instance reads the runner's recent pace at once: no history of its own needed
    fresh = SharedBacklog(path)
    assert fresh.totals("runner", now=101.5).idle_s == pytest.approx(0.5)
    assert pace(*fresh.totals("runner", now=101.0)[1:5], min_answers=1) == pytest.approx(later.observed_ms / later.estimated_ms)


def test_a_runner_marked_down_is_down_for_every_instance(tmp_path) -> None:
    import time
    path = str(tmp_path / ".backlog-1")
    mine, other = SharedBacklog(path), SharedBacklog(path)
    assert other.totals("runner").down_s == 0
    mine.mark_down("runner", time.monotonic() + 5)
    assert 4 < other.totals("runner").down_s <= 5
    assert other.totals("another").down_s == 0
    assert other.totals("runner", now=time.monotonic() + 6).down_s == 0  # then it is tried again
