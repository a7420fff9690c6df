"""Group commit: many batches, one fsync; the three durability modes.

Design note
-----------
``RedoLog`` sits between a partition replica's executor and its segment files.
The executor (the replica's threads, one at a time under its lock) calls
``append`` after each batch -- the redo is encoded and written to the OS at
once -- and then, with its lock released, blocks in ``wait_durable(lsn)``.
In ``sync`` mode the first waiter that finds no fsync running runs one
itself, covering everything written so far; every batch written while it
ran waits and shares the next one (group commit, with no hand-off to another
thread when the load is light).  In ``async`` mode a flusher thread fsyncs on
its interval.

Modes:

* ``sync``: ``wait_durable`` returns only when an fsync covered the LSN.  Nothing
  is acknowledged before it is on disk.
* ``async``: ``wait_durable`` returns at once; the flusher fsyncs every
  ``flush_interval_ms`` (VoltDB's default, 200 ms).  A crash loses what was
  acknowledged in the last interval (at most ``flush_interval_ms`` of writes).
* ``off``: nothing is written; LSNs still advance.

In every mode the last ``MEMORY_TAIL_BATCHES_MAX`` batches stay in memory, so
a leader can send a lagging follower what it misses.

A failed write or fsync fails every waiter at once with ``LogWriteFailed``
and every later append: the replica stops acknowledging.  Closing the log
(a planned stop, or a follower replaced by a leader's copy) flushes what was
written and wakes every waiter: what the last flush covered is durable, the
rest fails with ``LogWriteFailed``, so no waiter outlives its log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

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
        self._flushed = threading.Condition()  # notified after every flush, failure and close
        self._closed = False
        self._flushing = False  # a waiter runs an fsync now (sync mode)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if mode == ASYNC:
            self._thread = threading.Thread(target=self._flusher, name="ohmdb-flusher", daemon=True)
            self._thread.start()

    # -- executor side (the replica's threads) ------------------------------------------

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
        return self.written_lsn

    def batches_from(self, lsn: int) -> list[tuple[Any, dict[bytes, bytes]]] | None:
        """Kept batches holding ``lsn`` and after, or None when memory no longer reaches back to it."""
        if lsn > self.written_lsn:
            return []
        tail = list(self.memory_tail)
        if not tail or tail[0][0] > lsn:
            return None
        return [(b, m) for first, b, m in tail if first + b.num_rows > lsn]

    def wait_durable(self, lsn: int, timeout_s: float | None = None) -> bool:
        """Block until ``lsn`` is durable per the mode (False after ``timeout_s``); LogWriteFailed if it
        never will be (the log failed, or was closed before a flush covered it)."""
        if self.failed is not None:
            raise LogWriteFailed(f"the log failed: {self.failed}")
        if self.mode != SYNC:
            return True
        if lsn > self.written_lsn:
            raise ValueError(f"lsn {lsn} is not written yet (the log is at {self.written_lsn})")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._flushed:
            while self.writer.flushed_lsn < lsn:
                if self.failed is not None:
                    raise LogWriteFailed(f"the log failed: {self.failed}")
                if self._closed:
                    raise LogWriteFailed(f"the log was closed before lsn {lsn} was flushed")
                if not self._flushing:
                    self._flush_as_waiter()
                    continue
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._flushed.wait(left)
        return True

    def _flush_as_waiter(self) -> None:
        """Run one fsync for every waiter (the caller holds ``_flushed``; released during the fsync)."""
        self._flushing = True
        self._flushed.release()
        try:
            self.writer.flush()
        finally:
            self._flushed.acquire()
            self._flushing = False
            self._flushed.notify_all()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.writer is not None and self.writer.failed is None:
            self.writer.flush()
            self.writer.close()
        with self._flushed:
            self._closed = True
            self._flushed.notify_all()

    # -- flusher thread -------------------------------------------------------------------

    def _flusher(self) -> None:
        interval_s = self.flush_interval_ms / 1000.0
        while not self._stop.is_set():
            self._wake.wait(timeout=interval_s)
            self._wake.clear()
            if self.writer.written_lsn <= self.writer.flushed_lsn:
                continue
            try:
                self.writer.flush()
            except LogWriteFailed as exc:
                log.error("log flush failed: %s", exc)
                self._notify_waiters()
                return
            self._notify_waiters()

    def _notify_waiters(self) -> None:
        with self._flushed:
            self._flushed.notify_all()
