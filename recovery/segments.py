"""Log segment files: append, flush (fsync), read back with validation, cut a bad tail.

Design note
-----------
A partition replica's log is a directory of segment files
``seg-<first lsn, 20 digits>.arrow``, each a plain Arrow IPC *stream*: a
schema message, then one record batch per group commit (see ``log_format``).
A segment is closed when it passes ``segment_bytes_max``; the next batch opens
a new one.

``SegmentWriter.append`` writes a batch (the OS holds it); ``flush`` fsyncs,
and is the only thing that makes it durable.  A failed write or fsync marks
the writer failed for good: it never claims durability it does not have.

``read_log`` walks the segments in LSN order and validates every batch right
after reading it (CRC of the raw message body, record count, LSN continuity).
At the first torn or corrupt batch it stops: the bytes from there on, and
every later segment, are moved aside into ``quarantine/`` (never deleted), the
segment is truncated to its last valid batch, and the cut is reported.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pyarrow as pa

from recovery.log_format import META_CRC, CorruptBatch, LogCodec, check_batch

SEGMENT_BYTES_MAX = 64 * 1024 * 1024
SEGMENT_RE = re.compile(r"^seg-(\d{20})\.arrow$")
QUARANTINE_DIR = "quarantine"


def segment_name(first_lsn: int) -> str:
    return f"seg-{first_lsn:020d}.arrow"


def list_segments(directory: str) -> list[tuple[int, str]]:
    """(first lsn, path) of every segment, in LSN order."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        m = SEGMENT_RE.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(directory, name)))
    return sorted(found)


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LogWriteFailed(Exception):
    """Writing or flushing the log failed; nothing after the last flush is durable."""


class SegmentWriter:
    """Appends batches to the newest segment; ``flush`` makes them durable.

    ``append`` (the executing thread) and ``flush`` (a flusher thread) may run
    at once: ``flush`` fsyncs a duplicate of the current file descriptor taken
    under the lock, so a segment rotation cannot close it underneath.
    """

    def __init__(self, directory: str, codec: LogCodec, next_lsn: int,
                 segment_bytes_max: int = SEGMENT_BYTES_MAX, fsync: Callable[[int], None] = os.fsync) -> None:
        self.directory = directory
        self.codec = codec
        self.next_lsn = next_lsn
        self.segment_bytes_max = segment_bytes_max
        self._fsync = fsync
        self._lock = threading.Lock()
        self._file: Any = None
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._path: str | None = None
        self.failed: BaseException | None = None
        self.written_lsn = next_lsn - 1   # last LSN handed to the OS
        self.flushed_lsn = next_lsn - 1   # last LSN known durable
        self.bytes_written = 0
        self.fsyncs = 0
        self.batches = 0
        os.makedirs(directory, exist_ok=True)

    def append(self, batch: pa.RecordBatch, meta: dict[bytes, bytes]) -> int:
        """Write one encoded batch (numbered from ``next_lsn``); its last LSN."""
        with self._lock:
            self._check_ok()
            first = int(meta[b"first_lsn"])
            if first != self.next_lsn:
                raise LogWriteFailed(f"batch starts at lsn {first}, log expects {self.next_lsn}")
            try:
                if self._writer is None:
                    self._open(first)
                before = self._file.tell()
                self._writer.write_batch(batch, custom_metadata=meta)
                self.bytes_written += self._file.tell() - before
                self.batches += 1
                self.next_lsn = first + batch.num_rows
                self.written_lsn = self.next_lsn - 1
                if self._file.tell() >= self.segment_bytes_max:
                    self._close_segment()
            except LogWriteFailed:
                raise
            except BaseException as exc:
                self.failed = exc
                raise LogWriteFailed(f"write to {self._path} failed: {exc}") from exc
            return self.written_lsn

    def flush(self) -> int:
        """fsync everything written so far; the LSN now durable."""
        with self._lock:
            self._check_ok()
            target = self.written_lsn
            if target <= self.flushed_lsn or self._file is None:
                self.flushed_lsn = max(self.flushed_lsn, target)
                return self.flushed_lsn
            fd = os.dup(self._file.fileno())
        try:
            self._fsync(fd)
            self.fsyncs += 1
        except BaseException as exc:
            self.failed = exc
            raise LogWriteFailed(f"fsync of {self._path} failed: {exc}") from exc
        finally:
            os.close(fd)
        with self._lock:
            self.flushed_lsn = max(self.flushed_lsn, target)
            return self.flushed_lsn

    def close(self) -> None:
        with self._lock:
            if self._writer is not None and self.failed is None:
                self._close_segment()

    def _check_ok(self) -> None:
        if self.failed is not None:
            raise LogWriteFailed(f"log is failed since an earlier error: {self.failed}")

    def _open(self, first_lsn: int) -> None:
        self._path = os.path.join(self.directory, segment_name(first_lsn))
        self._file = open(self._path, "xb", buffering=0)
        self._writer = pa.ipc.new_stream(self._file, self.codec.arrow_schema)
        fsync_dir(self.directory)

    def _close_segment(self) -> None:
        """Seal the current segment (caller holds the lock): fsync, end-of-stream, fsync, close."""
        self._fsync(self._file.fileno())
        self._writer.close()
        self._fsync(self._file.fileno())
        self._file.close()
        self.flushed_lsn = self.written_lsn
        self._writer = self._file = None

    def delete_segments_before(self, lsn: int) -> list[str]:
        """Delete closed segments whose records all precede ``lsn``."""
        segments = list_segments(self.directory)
        removed = []
        for (first, path), nxt in zip(segments, segments[1:]):
            if nxt[0] <= lsn + 1 and path != self._path:
                os.remove(path)
                removed.append(path)
        if removed:
            fsync_dir(self.directory)
        return removed


@dataclass
class LogScan:
    """What reading a log found."""

    batches: int = 0
    records: int = 0
    first_lsn: int | None = None
    last_lsn: int | None = None
    last_epoch: int = 0
    cut: list[dict[str, Any]] = field(default_factory=list)


def read_segment(path: str, codec: LogCodec, expected_lsn: int | None) -> Iterator[tuple[pa.RecordBatch, int, int, int]]:
    """Validated (batch, first lsn, epoch, end offset) of one segment; CorruptBatch at the first bad one."""
    with open(path, "rb") as f:
        data = f.read()
    buf = pa.py_buffer(data)
    try:
        batches = pa.ipc.open_stream(buf)
        if not batches.schema.equals(codec.arrow_schema):
            raise CorruptBatch(f"{os.path.basename(path)}: schema differs from this database's log schema")
        source = pa.BufferReader(buf)
        messages = pa.ipc.MessageReader.open_stream(source)
        messages.read_next_message()  # the schema
    except (pa.ArrowInvalid, OSError, StopIteration, ValueError) as exc:
        raise CorruptBatch(f"{os.path.basename(path)}: unreadable stream header: {exc}", ) from None
    offset = source.tell()
    expected = expected_lsn
    while True:
        try:
            message = messages.read_next_message()
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError, ValueError) as exc:
            raise _cut(path, offset, f"torn or unreadable message: {exc}") from None
        if message is None:
            return
        try:
            batch_meta = batches.read_next_batch_with_custom_metadata()
            batch, meta = batch_meta.batch, batch_meta.custom_metadata
            first, epoch, count = check_batch(batch, dict(meta) if meta else None, expected)
        except StopIteration:
            raise _cut(path, offset, "message without a batch") from None
        except (pa.ArrowInvalid, OSError, ValueError, CorruptBatch) as exc:
            raise _cut(path, offset, str(exc)) from None
        offset = source.tell()
        expected = first + count
        yield batch, first, epoch, offset


def _cut(path: str, offset: int, reason: str) -> CorruptBatch:
    err = CorruptBatch(f"{os.path.basename(path)} at byte {offset}: {reason}")
    err.path, err.offset, err.reason = path, offset, reason  # type: ignore[attr-defined]
    return err


def read_log(directory: str, codec: LogCodec, on_batch: Callable[[pa.RecordBatch, int, int], None],
             repair: bool = True) -> LogScan:
    """Feed every valid batch to ``on_batch(batch, first_lsn, epoch)`` in order; cut at the first bad one."""
    scan = LogScan()
    expected: int | None = None
    segments = list_segments(directory)
    for index, (seg_first, path) in enumerate(segments):
        try:
            for batch, first, epoch, _end in read_segment(path, codec, expected):
                on_batch(batch, first, epoch)
                scan.batches += 1
                scan.records += batch.num_rows
                scan.first_lsn = first if scan.first_lsn is None else scan.first_lsn
                scan.last_lsn = first + batch.num_rows - 1
                scan.last_epoch = epoch
                expected = first + batch.num_rows
        except CorruptBatch as exc:
            offset = getattr(exc, "offset", 0)
            scan.cut.append({"segment": os.path.basename(path), "offset": offset, "reason": str(exc)})
            if repair:
                _quarantine(directory, path, offset, str(exc))
                for _, later in segments[index + 1:]:
                    scan.cut.append({"segment": os.path.basename(later), "offset": 0, "reason": "after a cut"})
                    _quarantine(directory, later, 0, f"follows the cut in {os.path.basename(path)}")
            break
    return scan


def _quarantine(directory: str, path: str, offset: int, reason: str) -> str:
    """Move bytes [offset:] of ``path`` aside; truncate it (or remove it if nothing valid remains)."""
    qdir = os.path.join(directory, QUARANTINE_DIR)
    os.makedirs(qdir, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = os.path.join(qdir, f"{os.path.basename(path)}.{offset}.{stamp}.cut")
    with open(path, "rb") as f:
        f.seek(offset)
        tail = f.read()
    with open(target, "wb") as f:
        f.write(tail)
        f.flush()
        os.fsync(f.fileno())
    with open(target + ".json", "w") as f:
        json.dump({"segment": os.path.basename(path), "offset": offset, "bytes": len(tail), "reason": reason}, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(qdir)
    if offset <= _header_bytes(path):
        os.remove(path)
    else:
        with open(path, "r+b") as f:
            f.truncate(offset)
            os.fsync(f.fileno())
    fsync_dir(directory)
    return target


def _header_bytes(path: str) -> int:
    """Bytes of the schema message at the start of a segment (0 if unreadable)."""
    try:
        with open(path, "rb") as f:
            source = pa.BufferReader(pa.py_buffer(f.read()))
        pa.ipc.MessageReader.open_stream(source).read_next_message()
        return source.tell()
    except (pa.ArrowInvalid, OSError, StopIteration, ValueError):
        return 1 << 62


__all__ = ["LogScan", "LogWriteFailed", "SegmentWriter", "read_log", "list_segments", "segment_name", "META_CRC"]
