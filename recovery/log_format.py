"""Arrow encoding of redo batches: one record batch per group commit.

Design note
-----------
A log batch is an Arrow record batch with one row per redo record:

``lsn`` (uint64), ``epoch`` (uint64), ``txn_id`` (int64), ``op`` (string:
INSERT / UPDATE / DELETE), ``table`` (string), then one nullable struct column
per table of the schema, named after the table, holding the row's after-image
(INSERT, UPDATE) or only its primary-key columns (DELETE).  Every other table
column of that row is null.  A ``REQUEST`` record (table ``""``) closes a
client's batch: its ``request`` column holds the request id and the pickled
outcome, so a retry after a failover gets the first outcome.  The two-phase-
commit markers (PREPARE, COMMIT, ABORT, DECISION) use the same column: the
txn id as text and a JSON payload.  So a segment is a plain Arrow IPC stream that
pyarrow, DuckDB, Polars or pandas read as is.

Each batch carries custom metadata: ``first_lsn``, ``epoch``, ``records`` and
``crc32`` (CRC-32 of the batch's IPC message without its custom metadata:
header and body).  The writer computes it before writing; the reader
recomputes it from the batch it decoded, and checks that LSNs run on without
a gap.

On the wire (leader to follower) a batch travels as its IPC message bytes
(``to_wire``) next to its metadata: Ray would otherwise pickle the Arrow
schema with every batch.  ``from_wire`` reads them back against the log schema
and runs the same checks as a batch read from disk.

``LogCodec`` is pure: batches in, records out.  Files live in ``segments``.
"""

from __future__ import annotations

import zlib
from typing import Any, Iterable

import pyarrow as pa
# ``Array.take`` (decode) needs pyarrow.compute, which pyarrow imports on first use: import it with this
# module, so a replica's first shipped batch does not hold its process (and its heartbeat) for the import.
import pyarrow.compute  # noqa: F401

from actors.errors import InvalidConfig
from actors.schema import Schema, Table
from recovery.redo import CONTROL_OPS, DELETE, OPS, RedoRecord

FORMAT_VERSION = "1"
REQUEST_COLUMN = "request"
META_FIRST_LSN = b"first_lsn"
META_EPOCH = b"epoch"
META_RECORDS = b"records"
META_CRC = b"crc32"
HEADER_COLUMNS = ("lsn", "epoch", "txn_id", "op", "table", "request")


class CorruptBatch(Exception):
    """A log batch failed validation (CRC, LSN continuity, shape)."""


def log_schema(schema: Schema) -> pa.Schema:
    fields = [
        pa.field("lsn", pa.uint64(), nullable=False),
        pa.field("epoch", pa.uint64(), nullable=False),
        pa.field("txn_id", pa.int64(), nullable=False),
        pa.field("op", pa.string(), nullable=False),
        pa.field("table", pa.string(), nullable=False),
        pa.field(REQUEST_COLUMN, pa.struct([("id", pa.string()), ("outcome", pa.binary())]), nullable=True),
    ]
    for t in schema.tables.values():
        if t.name in HEADER_COLUMNS:
            raise InvalidConfig(f"table name {t.name!r} collides with a log column {HEADER_COLUMNS}", table=t.name)
        fields.append(pa.field(t.name, pa.struct([f.with_nullable(True) for f in t.schema]), nullable=True))
    return pa.schema(fields, metadata={b"ohmdb.log_format": FORMAT_VERSION.encode()})


def batch_crc(batch: pa.RecordBatch) -> int:
    """CRC-32 of the batch's IPC message (header and body, without custom metadata).

    The reader recomputes it from the batch it decoded, so a flipped bit in the
    message header (buffer offsets, lengths, null counts) is caught as well as
    one in the data.
    """
    return zlib.crc32(batch.serialize())


class LogCodec:
    """Records <-> Arrow record batches for one schema."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.arrow_schema = log_schema(schema)
        self._tables: dict[str, Table] = dict(schema.tables)

    def encode(self, records: list[RedoRecord], first_lsn: int, epoch: int) -> tuple[pa.RecordBatch, dict[bytes, bytes]]:
        """The batch for ``records`` numbered from ``first_lsn``, and its metadata."""
        n = len(records)
        columns: dict[str, list[Any]] = {name: [None] * n for name in self._tables}
        requests: list[Any] = [None] * n
        for i, rec in enumerate(records):
            if rec.op in CONTROL_OPS:
                requests[i] = {"id": rec.key, "outcome": rec.row["outcome"]}
                continue
            image = rec.row if rec.op != DELETE else self._key_image(rec.table, rec.key)
            columns[rec.table][i] = image
        arrays = [
            pa.array(range(first_lsn, first_lsn + n), type=pa.uint64()),
            pa.array([epoch] * n, type=pa.uint64()),
            pa.array([r.txn_id for r in records], type=pa.int64()),
            pa.array([r.op for r in records], type=pa.string()),
            pa.array([r.table for r in records], type=pa.string()),
            pa.array(requests, type=self.arrow_schema.field(REQUEST_COLUMN).type),
        ]
        for name in self._tables:
            arrays.append(pa.array(columns[name], type=self.arrow_schema.field(name).type))
        batch = pa.RecordBatch.from_arrays(arrays, schema=self.arrow_schema)
        meta = {
            META_FIRST_LSN: str(first_lsn).encode(),
            META_EPOCH: str(epoch).encode(),
            META_RECORDS: str(n).encode(),
            META_CRC: str(batch_crc(batch)).encode(),
        }
        return batch, meta

    def decode(self, batch: pa.RecordBatch) -> list[RedoRecord]:
        """Records of a validated batch."""
        txn_ids = batch.column("txn_id").to_pylist()
        ops = batch.column("op").to_pylist()
        tables = batch.column("table").to_pylist()
        cells = self._cells(batch, tables)
        out = []
        for i, (txn_id, op, table) in enumerate(zip(txn_ids, ops, tables)):
            image = cells[i]
            if op in CONTROL_OPS:
                if table != "" or image is None:  # its cell is the request column, not a table's
                    raise CorruptBatch(f"record lsn={self._lsn(batch, i)}: {op} without its request column "
                                       f"(table {table!r})")
                out.append(RedoRecord(txn_id, op, "", image["id"], {"outcome": image["outcome"]}))
                continue
            t = self._tables.get(table)
            if t is None or op not in OPS:
                raise CorruptBatch(f"record lsn={self._lsn(batch, i)}: unknown table {table!r} or op {op!r}")
            if image is None:
                raise CorruptBatch(f"record lsn={self._lsn(batch, i)}: no row image for table {table!r}")
            out.append(RedoRecord(txn_id, op, table, t.key_of(image), None if op == DELETE else image))
        return out

    def _cells(self, batch: pa.RecordBatch, tables: list[str]) -> list[Any]:
        """Each record's own cell: its table's row image, or the request column for a control
        record (table ``""``).  Only those cells become Python objects: a column is null
        in every other record, and converting it whole would cost a record per table."""
        cells: list[Any] = [None] * len(tables)
        for name in set(tables):
            column = REQUEST_COLUMN if name == "" else name
            if column not in self._tables and column != REQUEST_COLUMN:
                continue  # an unknown table: decode names it
            rows = [i for i, t in enumerate(tables) if t == name]
            values = batch.column(column)
            if len(rows) < len(tables):
                values = values.take(pa.array(rows, type=pa.int64()))
            for i, value in zip(rows, values.to_pylist()):
                cells[i] = value
        return cells

    @staticmethod
    def _lsn(batch: pa.RecordBatch, i: int) -> Any:
        return batch.column("lsn")[i].as_py()

    def _key_image(self, table: str, key: Any) -> dict[str, Any]:
        t = self._tables[table]
        values = (key,) if len(t.primary_key) == 1 else key
        return dict(zip(t.primary_key, values))


def check_batch(batch: pa.RecordBatch, meta: dict[bytes, bytes] | None, expected_lsn: int | None) -> tuple[int, int, int]:
    """Validate one batch read from disk; (first_lsn, epoch, records) or CorruptBatch."""
    if not meta or META_CRC not in meta:
        raise CorruptBatch("batch has no ohmdb metadata")
    try:
        first_lsn = int(meta[META_FIRST_LSN])
        epoch = int(meta[META_EPOCH])
        count = int(meta[META_RECORDS])
        crc = int(meta[META_CRC])
    except (KeyError, ValueError) as exc:
        raise CorruptBatch(f"unreadable batch metadata: {exc}") from None
    if batch_crc(batch) != crc:
        raise CorruptBatch(f"CRC mismatch in batch at lsn {first_lsn}")
    if batch.num_rows != count:
        raise CorruptBatch(f"batch at lsn {first_lsn} has {batch.num_rows} records, metadata says {count}")
    if expected_lsn is not None and first_lsn != expected_lsn:
        raise CorruptBatch(f"LSN gap: expected {expected_lsn}, batch starts at {first_lsn}")
    lsns = batch.column("lsn")
    if count and (lsns[0].as_py() != first_lsn or lsns[count - 1].as_py() != first_lsn + count - 1):
        raise CorruptBatch(f"batch at lsn {first_lsn}: lsn column does not run {first_lsn}..{first_lsn + count - 1}")
    return first_lsn, epoch, count


def to_wire(batch: pa.RecordBatch) -> bytes:
    """The batch's IPC message (no schema: both ends know it), as shipped to followers."""
    return batch.serialize().to_pybytes()


def from_wire(data: Any, arrow_schema: pa.Schema, meta: dict[bytes, bytes] | None) -> pa.RecordBatch:
    """A shipped batch read back and validated (CRC, record count, LSN run); CorruptBatch if it is not."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CorruptBatch(f"a shipped batch must be IPC message bytes, not {type(data).__name__}")
    if not meta or META_CRC not in meta:
        raise CorruptBatch("shipped batch has no ohmdb metadata")
    if str(zlib.crc32(data)).encode() != meta[META_CRC]:  # every byte as sent, padding included
        raise CorruptBatch(f"CRC mismatch in the shipped batch at lsn {meta.get(META_FIRST_LSN, b'?').decode()}")
    try:
        batch = pa.ipc.read_record_batch(pa.py_buffer(data), arrow_schema)
    except (pa.ArrowException, ValueError) as exc:
        raise CorruptBatch(f"unreadable shipped batch: {exc}") from None
    check_batch(batch, meta, None)
    return batch


def iter_batch_records(batches: Iterable[pa.RecordBatch], codec: LogCodec) -> Iterable[RedoRecord]:
    for batch in batches:
        yield from codec.decode(batch)
