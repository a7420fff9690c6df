"""Redo records: what a transaction changed, in the form logs ship and replay.

Design note
-----------
The partition core turns every committed transaction into redo records
``(txn_id, op, table, key, row)``: ``row`` is the full after-image for INSERT
and UPDATE and ``None`` for DELETE.  After-images (not procedure calls) are
what followers apply and recovery replays, so procedures need not be
deterministic and replay never re-runs user code.  Applying a record is
idempotent for a given final state: INSERT/UPDATE store the image, DELETE
removes the key if present.

The Arrow encoding of record batches (segments, LSNs, CRCs) belongs to the
durability work and builds on this record type.
"""

from __future__ import annotations

from typing import Any, MutableMapping, NamedTuple

INSERT = "INSERT"
UPDATE = "UPDATE"
DELETE = "DELETE"
#: The outcome of a client request (a batch): key = request id, row = {"outcome": pickled bytes}.
#: Logged with the batch's writes so a retry after a failover finds it on the new leader.
REQUEST = "REQUEST"
#: Two-phase-commit markers of a multi-partition transaction (key = its txn id as text, row =
#: {"outcome": JSON payload}).  PREPARE precedes the txn's own records, which followers and recovery
#: hold back until COMMIT (apply) or ABORT (drop); DECISION is the outcome recorded at the holder.
PREPARE = "PREPARE"
COMMIT = "COMMIT"
ABORT = "ABORT"
DECISION = "DECISION"
#: Records that change a table row.
ROW_OPS = (INSERT, UPDATE, DELETE)
#: Records that carry no table data: their key and payload travel in the log's ``request`` column.
CONTROL_OPS = (REQUEST, PREPARE, COMMIT, ABORT, DECISION)
OPS = (*ROW_OPS, *CONTROL_OPS)


class RedoRecord(NamedTuple):
    txn_id: int
    op: str
    table: str
    key: Any
    row: dict[str, Any] | None


def apply_record(tables: MutableMapping[str, dict[Any, dict[str, Any]]], rec: RedoRecord) -> None:
    """Apply one record to ``tables`` (table name -> key -> row).

    The record's row is stored as it is, not copied: it must be the caller's own (records decoded
    from a log batch are), and stored rows are never changed in place.
    """
    if rec.op in CONTROL_OPS:
        return  # not table data: the partition core handles it (PartitionCore.apply_redo)
    if rec.op == DELETE:
        tables[rec.table].pop(rec.key, None)
    elif rec.op in (INSERT, UPDATE):
        tables[rec.table][rec.key] = rec.row if rec.row is not None else {}
    else:
        raise ValueError(f"unknown redo op {rec.op!r} in transaction {rec.txn_id}")
