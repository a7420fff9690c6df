"""Group commit and per-client ordering, deterministically (no Ray, no sleeps for timing)."""

from __future__ import annotations

import asyncio
import os
import random
import threading

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


def test_batches_written_during_an_fsync_share_the_next_one(tmp_path):
    fsync = GatedFsync()
    writer = SegmentWriter(str(tmp_path), CODEC, 1, fsync=fsync)
    log = RedoLog(SYNC, CODEC, writer, 1)

    async def scenario() -> list[int]:
        order: list[int] = []

        async def commit(i: int) -> None:
            log.append(_recs(2, i * 10), epoch=1)
            await log.durable(log.written_lsn)
            order.append(i)

        first = asyncio.ensure_future(commit(0))
        await asyncio.get_running_loop().run_in_executor(None, fsync.entered.wait, 30)
        # The first fsync is in progress: these five batches are written meanwhile.
        rest = [asyncio.ensure_future(commit(i)) for i in range(1, 6)]
        await asyncio.sleep(0)
        assert not any(t.done() for t in [first, *rest])  # nothing acknowledged before its fsync
        fsync.gate.set()
        await asyncio.wait_for(asyncio.gather(first, *rest), timeout=30)
        return order

    order = asyncio.run(scenario())
    assert sorted(order) == list(range(6))
    assert writer.batches == 6
    assert fsync.calls == writer.fsyncs == 2  # one for the first batch, one shared by the five written during it
    assert log.durable_lsn == 12
    log.close()


def test_a_failed_fsync_fails_every_waiter_and_every_later_append(tmp_path):
    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    writer = SegmentWriter(str(tmp_path), CODEC, 1, fsync=broken)
    log = RedoLog(SYNC, CODEC, writer, 1)

    async def scenario() -> list[BaseException]:
        async def commit(i: int) -> None:
            log.append(_recs(1, i), epoch=1)
            await log.durable(log.written_lsn)

        results = await asyncio.wait_for(
            asyncio.gather(*(commit(i) for i in range(1, 4)), return_exceptions=True), timeout=30)
        return results

    results = asyncio.run(scenario())
    assert all(isinstance(r, LogWriteFailed) for r in results)
    with pytest.raises(LogWriteFailed):
        log.append(_recs(1, 9), epoch=1)
    assert log.durable_lsn == 0


def test_async_mode_acknowledges_at_once_and_flushes_on_its_interval(tmp_path):
    writer = SegmentWriter(str(tmp_path), CODEC, 1)
    log = RedoLog(ASYNC, CODEC, writer, 1, flush_interval_ms=10)

    async def scenario() -> None:
        log.append(_recs(3, 1), epoch=1)
        await asyncio.wait_for(log.durable(log.written_lsn), timeout=1)  # does not wait for an fsync
        for _ in range(500):
            if log.durable_lsn == 3:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the interval flush never came")

    asyncio.run(scenario())
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
    async def scenario() -> list[tuple[str, int]]:
        seq = Sequencer(wait_s=5)
        ran: list[tuple[str, int]] = []

        async def call(client: str, n: int) -> None:
            await seq.turn(client, n)
            ran.append((client, n))  # "execution": no await between turn and here

        arrivals = [(c, n) for c in "ab" for n in range(20)]
        random.Random(3).shuffle(arrivals)
        await asyncio.wait_for(asyncio.gather(*(call(c, n) for c, n in arrivals)), timeout=10)
        return ran

    ran = asyncio.run(scenario())
    for client in "ab":
        assert [n for c, n in ran if c == client] == list(range(20))


def test_sequencer_goes_ahead_after_a_bounded_wait_for_a_lost_call():
    async def scenario() -> Sequencer:
        seq = Sequencer(wait_s=0.05)
        await seq.turn("c", 0)
        await asyncio.wait_for(seq.turn("c", 2), timeout=5)  # call 1 never comes
        await seq.turn("c", 3)
        return seq

    seq = asyncio.run(scenario())
    assert seq.gaps == 1
