"""Group commit: many batches, one fsync; the three durability modes.

Design note
-----------
``RedoLog`` sits between a partition replica's executor and its segment files.
The executor (one asyncio event loop thread) calls ``append`` after each batch
-- the redo is encoded and written to the OS at once -- and then awaits
``durable(lsn)``.  A flusher thread fsyncs whatever has been written; every
batch written while the previous fsync ran shares the next one (group commit).

Modes:

* ``sync``: ``durable`` returns only when an fsync covered the LSN.  Nothing
  is acknowledged before it is on disk.
* ``async``: ``durable`` returns at once; the flusher fsyncs every
  ``flush_interval_ms`` (VoltDB's default, 200 ms).  A crash loses what was
  acknowledged in the last interval (at most ``flush_interval_ms`` of writes).
* ``off``: nothing is written; LSNs still advance.

In every mode the last ``MEMORY_TAIL_BATCHES_MAX`` batches stay in memory, so
a leader can send a lagging follower what it misses.

A failed write or fsync fails every waiter at once with ``LogWriteFailed``
and every later append: the replica stops acknowledging.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
from collections import deque
from typing import Any, Callable

from recovery.log_format import LogCodec
from recovery.redo import RedoRecord
from recovery.segments import LogWriteFailed, SegmentWriter

SYNC, ASYNC, OFF = "sync", "async", "off"
MODES = (SYNC, ASYNC, OFF)
FLUSH_INTERVAL_MS = 200
MEMORY_TAIL_BATCHES_MAX = 1024

log = logging.getLogger("ohmdb.log")


class RedoLog:
    def __init__(self, mode: str, codec: LogCodec, writer: SegmentWriter | None, next_lsn: int,
                 flush_interval_ms: int = FLUSH_INTERVAL_MS) -> None:
        if mode not in MODES:
            raise ValueError(f"durability must be one of {MODES}, got {mode!r}")
        if mode != OFF and writer is None:
            raise ValueError(f"durability {mode!r} needs a log directory")
        self.mode = mode
        self.codec = codec
        self.writer = writer
        self.next_lsn = next_lsn
        self.flush_interval_ms = flush_interval_ms
        self.memory_tail: deque = deque(maxlen=MEMORY_TAIL_BATCHES_MAX)
        self._waiters: list[tuple[int, int, asyncio.Future]] = []
        self._tiebreak = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if mode != OFF:
            self._thread = threading.Thread(target=self._flusher, name="ohmdb-flusher", daemon=True)
            self._thread.start()

    # -- executor side (event loop thread) ------------------------------------------

    @property
    def failed(self) -> BaseException | None:
        return None if self.writer is None else self.writer.failed

    @property
    def written_lsn(self) -> int:
        return self.next_lsn - 1

    @property
    def fsyncs(self) -> int:
        return 0 if self.writer is None else self.writer.fsyncs

    @property
    def batches_written(self) -> int:
        return 0 if self.writer is None else self.writer.batches

    @property
    def durable_lsn(self) -> int:
        if self.mode == OFF:
            return self.written_lsn
        return self.writer.flushed_lsn

    @property
    def held_lsn(self) -> int:
        """Highest LSN this replica holds as its durability mode requires before acknowledging:
        fsynced in ``sync`` mode, written in ``async`` and ``off``."""
        return self.durable_lsn if self.mode == SYNC else self.written_lsn

    def append(self, records: list[RedoRecord], epoch: int) -> tuple[Any, dict[bytes, bytes]] | None:
        """Encode and write one batch of redo records; the (batch, metadata) written, None if empty."""
        if not records:
            return None
        batch, meta = self.codec.encode(records, self.next_lsn, epoch)
        self.append_batch(batch, meta)
        return batch, meta

    def append_batch(self, batch: Any, meta: dict[bytes, bytes]) -> int:
        """Write an already encoded batch (a follower's path); its last LSN."""
        first = int(meta[b"first_lsn"])
        if first != self.next_lsn:
            raise ValueError(f"batch starts at lsn {first}, the log is at {self.next_lsn}")
        if self.mode != OFF:
            self.writer.append(batch, meta)
        self.memory_tail.append((first, batch, meta))
        self.next_lsn = first + batch.num_rows
        if self.mode == SYNC:
            self._wake.set()
        return self.written_lsn

    def batches_from(self, lsn: int) -> list[tuple[Any, dict[bytes, bytes]]] | None:
        """Kept batches holding ``lsn`` and after, or None when memory no longer reaches back to it."""
        if lsn > self.written_lsn:
            return []
        tail = list(self.memory_tail)
        if not tail or tail[0][0] > lsn:
            return None
        return [(b, m) for first, b, m in tail if first + b.num_rows > lsn]

    async def durable(self, lsn: int) -> None:
        """Return once ``lsn`` is durable per the mode; LogWriteFailed if it never will be."""
        if self.failed is not None:
            raise LogWriteFailed(f"the log failed: {self.failed}")
        if self.mode != SYNC or lsn <= self.writer.flushed_lsn:
            return
        self._loop = self._loop or asyncio.get_running_loop()
        future = self._loop.create_future()
        heapq.heappush(self._waiters, (lsn, next(self._tiebreak), future))
        self._wake.set()
        await future

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.writer is not None and self.writer.failed is None:
            self.writer.flush()
            self.writer.close()

    # -- flusher thread -------------------------------------------------------------------

    def _flusher(self) -> None:
        interval_s = self.flush_interval_ms / 1000.0
        while not self._stop.is_set():
            if self.mode == SYNC:
                self._wake.wait()
            else:
                self._wake.wait(timeout=interval_s)
            self._wake.clear()
            if self.writer.written_lsn <= self.writer.flushed_lsn and not self._waiters:
                continue
            try:
                flushed = self.writer.flush()
            except LogWriteFailed as exc:
                log.error("log flush failed: %s", exc)
                self._notify(lambda error=exc: self._fail_all(error))
                return
            self._notify(lambda: self._release(flushed))

    def _notify(self, action: Callable[[], Any]) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(action)

    def _release(self, flushed: int) -> None:
        while self._waiters and self._waiters[0][0] <= flushed:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)
        if self._waiters:
            self._wake.set()

    def _fail_all(self, exc: BaseException) -> None:
        waiters, self._waiters = self._waiters, []
        for _, _, future in waiters:
            if not future.done():
                future.set_exception(LogWriteFailed(f"the log failed: {exc}"))
