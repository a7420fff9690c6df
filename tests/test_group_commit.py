"""Group commit and per-client ordering, deterministically (no Ray, no sleeps for timing)."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from recovery.group_commit import ASYNC, OFF, SYNC, RedoLog
from recovery.log_format import LogCodec
from recovery.redo import INSERT, RedoRecord
from recovery.segments import LogWriteFailed, SegmentWriter
from actors.sequencer import Sequencer
from tests import bank

CODEC = LogCodec(bank.schema())


def _recs(n: int, start: int) -> list[RedoRecord]:
    return [RedoRecord(start + i, INSERT, "accounts", start + i, {"id": start + i, "owner": "x", "balance": 0})
            for i in range(n)]


class GatedFsync:
    """An fsync that blocks until the test opens the gate; counts calls."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.entered.set()
        self.gate.wait(timeout=30)
        os.fsync(fd)


def _committers(log: RedoLog, ids: range, results: dict[int, object]) -> list[threading.Thread]:
    """One thread per batch: append it, then wait until it is durable; its outcome goes to ``results``.
    Appends take a lock, as the replica's lock orders them."""
    appending = threading.Lock()

    def commit(i: int) -> None:
        try:
            with appending:
                log.append(_recs(2, i * 10), epoch=1)
                lsn = log.written_lsn
            results[i] = log.wait_durable(lsn, timeout_s=30)
        except LogWriteFailed as exc:
            results[i] = exc

    return [threading.Thread(target=commit, args=(i,)) for i in ids]


def test_batches_written_during_an_fsync_share_the_next_one(tmp_path):
    fsync = GatedFsync()
    writer = SegmentWriter(str(tmp_path), CODEC, 1, fsync=fsync)
    log = RedoLog(SYNC, CODEC, writer, 1)
    results: dict[int, object] = {}
    [first] = _committers(log, range(0, 1), results)
    first.start()
    assert fsync.entered.wait(30)
    # The first fsync is in progress: these five batches are written meanwhile.
    rest = _committers(log, range(1, 6), results)
    for t in rest:
        t.start()
    deadline = time.monotonic() + 30
    while log.written_lsn < 12 and time.monotonic() < deadline:  # the five appends are done
        time.sleep(0.001)
    assert log.written_lsn == 12
    assert results == {}  # nothing acknowledged before its fsync
    fsync.gate.set()
    for t in [first, *rest]:
        t.join(timeout=30)
    assert results == {i: True for i in range(6)}
    assert writer.batches == 6
    assert fsync.calls == writer.fsyncs == 2  # one for the first batch, one shared by the five written during it
    assert log.durable_lsn == 12
    log.close()


def test_a_failed_fsync_fails_every_waiter_and_every_later_append(tmp_path):
    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    writer = SegmentWriter(str(tmp_path), CODEC, 1, fsync=broken)
    log = RedoLog(SYNC, CODEC, writer, 1)
    results: dict[int, object] = {}
    threads = _committers(log, range(1, 4), results)
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == [1, 2, 3]
    assert all(isinstance(r, LogWriteFailed) for r in results.values()), results
    with pytest.raises(LogWriteFailed):
        log.append(_recs(1, 9), epoch=1)
    assert log.durable_lsn == 0


def test_a_waiter_runs_the_fsync_others_wait_for_it_bounded(tmp_path):
    fsync = GatedFsync()
    writer = SegmentWriter(str(tmp_path), CODEC, 1, fsync=fsync)
    log = RedoLog(SYNC, CODEC, writer, 1)
    log.append(_recs(2, 1), epoch=1)
    results: dict[str, object] = {}
    first = threading.Thread(target=lambda: results.update(first=log.wait_durable(2)))
    first.start()
    assert fsync.entered.wait(30)  # the first waiter runs the fsync itself
    assert log.wait_durable(2, timeout_s=0.05) is False  # it is held: another wait gives up, bounded
    second = threading.Thread(target=lambda: results.update(second=log.wait_durable(2)))
    second.start()
    fsync.gate.set()
    first.join(timeout=30)
    second.join(timeout=30)
    assert results == {"first": True, "second": True}
    assert fsync.calls == 1  # the second waiter shared the first one's fsync
    with pytest.raises(ValueError, match="lsn 3 is not written yet"):
        log.wait_durable(3)
    log.close()
    assert log.wait_durable(2) is True


def test_async_mode_acknowledges_at_once_and_flushes_on_its_interval(tmp_path):
    writer = SegmentWriter(str(tmp_path), CODEC, 1)
    log = RedoLog(ASYNC, CODEC, writer, 1, flush_interval_ms=10)
    log.append(_recs(3, 1), epoch=1)
    assert log.wait_durable(log.written_lsn, timeout_s=0) is True  # does not wait for an fsync
    for _ in range(500):
        if log.durable_lsn == 3:
            break
        time.sleep(0.01)
    else:
        raise AssertionError("the interval flush never came")
    log.close()


def test_off_mode_writes_nothing_and_keeps_a_bounded_memory_tail(tmp_path):
    log = RedoLog(OFF, CODEC, None, 1)
    for i in range(5):
        log.append(_recs(2, i * 2 + 1), epoch=1)
    assert log.written_lsn == log.durable_lsn == 10 and len(log.memory_tail) == 5
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="needs a log directory"):
        RedoLog(SYNC, CODEC, None, 1)


def test_sequencer_runs_each_clients_calls_in_the_order_sent():
    lock = threading.Lock()
    seq = Sequencer(lock, wait_s=5)
    ran: list[tuple[str, int]] = []

    def call(client: str, n: int) -> None:
        with lock:
            seq.turn(client, n)
            ran.append((client, n))  # "execution": the lock held from the turn to here

    arrivals = [(c, n) for c in "ab" for n in range(20)]
    random.Random(3).shuffle(arrivals)
    threads = [threading.Thread(target=call, args=a) for a in arrivals]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert seq.gaps == 0
    for client in "ab":
        assert [n for c, n in ran if c == client] == list(range(20))


def test_sequencer_holds_the_next_call_until_done():
    lock = threading.Lock()
    seq = Sequencer(lock, wait_s=5)
    ran: list[str] = []
    with lock:
        seq.turn("c", 0, hold=True)
    second = threading.Thread(target=lambda: (lock.acquire(), seq.turn("c", 1), ran.append("1"), lock.release()))
    second.start()
    second.join(timeout=0.1)
    assert second.is_alive() and ran == []  # call 0 has not finished executing
    with lock:
        ran.append("0")
        seq.done("c", 0)
    second.join(timeout=10)
    assert ran == ["0", "1"]


def test_sequencer_goes_ahead_after_a_bounded_wait_for_a_lost_call():
    lock = threading.Lock()
    seq = Sequencer(lock, wait_s=0.05)
    with lock:
        seq.turn("c", 0)
        seq.turn("c", 2)  # call 1 never comes
        seq.turn("c", 3)
    assert seq.gaps == 1
