"""The participant side of two-phase commit on one partition; no Ray, no clock.

Design note
-----------
A multi-partition (MP) transaction reaches a partition as fragments, each run
by the partition core inside the transaction (``OpenTxn``: its undo and redo
span all its fragments, its locks live in ``LockTable``).  On the leader its
writes go to storage at once, locked, so later fragments read them; nothing is
logged while it runs, so a leader change loses a RUNNING txn and the
coordinator aborts it.

* ``prepare`` turns the txn into log records: a PREPARE marker (the writers
  and the holder, as JSON) followed by the txn's redo records.  Once they are
  durable on every replica the partition votes YES.  A txn this partition does
  not know (never ran here, or aborted, or lost with a previous leader) votes
  NO and leaves a tombstone, so a late fragment cannot revive it.
* ``commit`` logs COMMIT and releases the locks; ``abort`` rolls the writes
  back, releases, leaves a tombstone and logs ABORT when PREPARE was logged.
* The *holder* (the lowest writer) records the outcome: ``log_decision``
  keeps the first outcome asked for a txn (first writer wins) and answers
  every later request with it; its DECISION record is followed by its own
  COMMIT or ABORT, and by the client's reply (a REQUEST record) on commit, so
  a retry with the same request id finds the outcome after any failover.
* Followers and recovery see the same records through ``apply``: a txn's
  records after its PREPARE are held back (``pending``) until COMMIT applies
  them or ABORT drops them.  A follower promoted to leader ``adopt``s its
  pending txns: applies them (keeping undo) and locks their keys, so it can
  finish them with the coordinator's decision.
* ``expired`` lists what a participant must settle on its own when the
  coordinator is gone: RUNNING txns idle too long (aborted: no vote was
  given) and PREPARED txns left in doubt (the shell asks the holder to record
  abort -- first writer wins -- and carries out the answer).

Snapshots and rebuilt replicas must not see uncommitted writes:
``clean_tables`` patches a copy of the rows with the open txns' before-images,
and ``state`` / ``restore`` carry the prepared txns and the recorded
decisions along.
"""

from __future__ import annotations

import json
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from actors.errors import TxnAborted, invariant
from actors.locks import LockTable
from recovery.redo import ABORT, COMMIT, DECISION, PREPARE, REQUEST, RedoRecord, apply_record

if TYPE_CHECKING:
    from actors.partition_core import PartitionCore

#: Txn ids of MP transactions have this bit set (the coordinator numbers them); SP ids never do.
MP_TXN_BIT = 1 << 62
RUNNING = "running"
PREPARED = "prepared"
OUTCOME_COMMIT = "commit"
OUTCOME_ABORT = "abort"
#: Ended (aborted, committed, released) txn ids remembered so a late fragment or PREPARE is refused
#: (oldest forgotten first).
TOMBSTONES_KEPT_MAX = 100_000
#: Recorded outcomes kept at a holder (oldest forgotten first).
DECISIONS_KEPT_MAX = 100_000
#: The reserved entry of a snapshot's request list holding this state (not a request id).
TXN_STATE_ID = "\x00ohmdb:2pc-state"


def is_mp_txn(txn_id: int) -> bool:
    return bool(txn_id & MP_TXN_BIT)


@dataclass
class OpenTxn:
    """An MP transaction open on this partition's leader."""

    txn: int
    priority: int
    started_s: float
    state: str = RUNNING
    undo: list[tuple[str, dict, Any, dict | None]] = field(default_factory=list)
    redo: list[RedoRecord] = field(default_factory=list)
    participants: tuple[int, ...] = ()
    holder: int | None = None
    touched_s: float = 0.0

    @property
    def wrote(self) -> bool:
        return bool(self.redo)


@dataclass
class PendingTxn:
    """A prepared MP transaction seen in the log (follower, recovery): its records, held back."""

    txn: int
    participants: tuple[int, ...]
    holder: int
    records: list[RedoRecord] = field(default_factory=list)


#: A marker without a payload (COMMIT, ABORT).
EMPTY_PAYLOAD = b"{}"
#: Marker payloads kept encoded and decoded: they repeat (a few writer sets, two outcomes), and JSON
#: costs more than the rest of a marker.  Each cache is cleared when full.
PAYLOADS_KEPT_MAX = 1024
_encoded: dict[tuple, bytes] = {}
_decoded: dict[bytes, dict[str, Any]] = {}


def marker(op: str, txn: int, payload: bytes = EMPTY_PAYLOAD) -> RedoRecord:
    return RedoRecord(txn, op, "", str(txn), {"outcome": payload})


def prepare_payload(participants: tuple[int, ...], holder: int) -> bytes:
    """A PREPARE's payload: the writers and the holder, as JSON."""
    key = (PREPARE, participants, holder)
    data = _encoded.get(key)
    return data if data is not None else _keep(key, {"participants": list(participants), "holder": holder})


def decision_payload(outcome: str, participants: tuple[int, ...]) -> bytes:
    """A DECISION's payload: the outcome and the writers, as JSON."""
    key = (DECISION, outcome, participants)
    data = _encoded.get(key)
    return data if data is not None else _keep(key, {"outcome": outcome, "participants": list(participants)})


def _keep(key: tuple, payload: dict[str, Any]) -> bytes:
    if len(_encoded) >= PAYLOADS_KEPT_MAX:
        _encoded.clear()
    data = _encoded[key] = json.dumps(payload).encode()
    return data


def marker_payload(rec: RedoRecord) -> dict[str, Any]:
    """A marker's payload (shared between equal payloads: read it, never change it)."""
    data = rec.row.get("outcome") if rec.row else None
    if not data:
        return {}
    body = _decoded.get(data)
    if body is None:
        if len(_decoded) >= PAYLOADS_KEPT_MAX:
            _decoded.clear()
        body = _decoded[data] = json.loads(data)
    return body


class Participant:
    """Open, pending and decided MP transactions of one partition."""

    def __init__(self, core: "PartitionCore") -> None:
        self.core = core
        self.locks = LockTable()
        self.open: dict[int, OpenTxn] = {}
        self.pending: dict[int, PendingTxn] = {}
        self.decisions: OrderedDict[int, str] = OrderedDict()
        self.tombstones: OrderedDict[int, None] = OrderedDict()
        self.finished = {"committed": 0, "aborted": 0}

    # -- leader: fragments ------------------------------------------------------------

    def enter(self, txn: int, priority: int, now_s: float) -> OpenTxn:
        """The open txn a fragment runs in (begun on first use); TxnAborted if it ended or is prepared."""
        if txn in self.tombstones or txn in self.decisions:
            raise TxnAborted(f"txn {txn} already ended on partition {self.core.partition_id}", txn=txn)
        t = self.open.get(txn)
        if t is None:
            invariant(is_mp_txn(txn), f"fragment of txn {txn}, not an MP txn id")
            t = self.open[txn] = OpenTxn(txn, priority, now_s)
        elif t.state != RUNNING:
            raise TxnAborted(f"txn {txn} is prepared on partition {self.core.partition_id}: no more fragments",
                             txn=txn)
        t.touched_s = now_s
        return t

    # -- leader: phase 1 and 2 ---------------------------------------------------------

    def prepare(self, txn: int, participants: tuple[int, ...], holder: int, now_s: float) -> tuple[bool, list[RedoRecord], str]:
        """Vote on ``txn``: (yes, records to log before the vote counts, why not)."""
        t = self.open.get(txn)
        if t is None:
            self._tombstone(txn)
            return False, [], f"txn {txn} is not open on partition {self.core.partition_id} (aborted or lost)"
        if t.state == PREPARED:
            return True, [], ""
        t.state, t.participants, t.holder, t.touched_s = PREPARED, tuple(participants), holder, now_s
        head = marker(PREPARE, txn, prepare_payload(t.participants, holder))
        return True, [head, *t.redo], ""

    def commit(self, txn: int) -> list[RedoRecord]:
        """Finish a prepared txn as committed (its writes stay); the COMMIT record, or [] if it is gone."""
        t = self.open.pop(txn, None)
        if t is None:
            return []
        invariant(t.state == PREPARED, f"txn {txn}: commit on partition {self.core.partition_id} without PREPARE")
        self._tombstone(txn)  # ended: a late fragment must not open it again
        self.locks.release(txn)
        self.finished["committed"] += 1
        return [marker(COMMIT, txn)]

    def abort(self, txn: int) -> list[RedoRecord]:
        """Roll ``txn`` back and release it; the ABORT record when its PREPARE was logged."""
        self._tombstone(txn)
        t = self.open.pop(txn, None)
        if t is None:
            return []
        for _table, rows, key, old in reversed(t.undo):
            if old is None:
                rows.pop(key, None)
            else:
                rows[key] = old
        self.locks.release(txn)
        self.finished["aborted"] += 1
        return [marker(ABORT, txn)] if t.state == PREPARED else []

    def release(self, txn: int) -> list[RedoRecord]:
        """A read-only participant is done; one that wrote is rolled back (it was not asked to prepare)."""
        t = self.open.get(txn)
        if t is not None and (t.wrote or t.state == PREPARED):
            return self.abort(txn)
        self.open.pop(txn, None)
        self._tombstone(txn)
        self.locks.release(txn)
        return []

    def log_decision(self, txn: int, outcome: str, participants: tuple[int, ...],
                     request_id: str | None, reply: bytes | None) -> tuple[str, list[RedoRecord]]:
        """At the holder: record ``outcome`` unless one is recorded; (the recorded outcome, records to log)."""
        invariant(outcome in (OUTCOME_COMMIT, OUTCOME_ABORT), f"txn {txn}: unknown outcome {outcome!r}")
        recorded = self.decisions.get(txn)
        if recorded is not None:
            return recorded, []
        self._decided(txn, outcome)
        records = [marker(DECISION, txn, decision_payload(outcome, tuple(participants)))]
        if outcome == OUTCOME_COMMIT:
            records += self.commit(txn)
            if request_id is not None and reply is not None:
                self.core.remember(request_id, reply)
                records.append(RedoRecord(txn, REQUEST, "", request_id, {"outcome": reply}))
        else:
            records += self.abort(txn)
        return outcome, records

    def recorded(self, txn: int) -> str | None:
        return self.decisions.get(txn)

    # -- leader: settling without the coordinator ----------------------------------------

    def in_doubt(self) -> list[tuple[int, tuple[int, ...], int]]:
        """Prepared txns: (txn, participants, holder)."""
        return [(t.txn, t.participants, t.holder) for t in self.open.values() if t.state == PREPARED]

    def abort_running(self, before_txn: int) -> list[int]:
        """Abort RUNNING txns numbered below ``before_txn`` (a restarted coordinator forgot them)."""
        gone = [t.txn for t in self.open.values() if t.state == RUNNING and t.txn < before_txn]
        for txn in gone:
            self.abort(txn)
        return gone

    def expired(self, now_s: float, running_s: float, prepared_s: float) -> tuple[list[int], list[OpenTxn]]:
        """(RUNNING txns idle over ``running_s``, PREPARED txns waiting over ``prepared_s``)."""
        running = [t.txn for t in self.open.values() if t.state == RUNNING and now_s - t.touched_s > running_s]
        doubt = [t for t in self.open.values() if t.state == PREPARED and now_s - t.touched_s > prepared_s]
        return running, doubt

    # -- followers and recovery ----------------------------------------------------------

    def apply(self, rec: RedoRecord) -> bool:
        """Take a replicated or replayed record if it is 2PC business; False for plain data."""
        op = rec.op
        if op == PREPARE:
            body = marker_payload(rec)
            self.pending[rec.txn_id] = PendingTxn(rec.txn_id, tuple(body["participants"]), body["holder"])
        elif op == COMMIT:
            p = self.pending.pop(rec.txn_id, None)
            for r in p.records if p else ():
                apply_record(self.core.tables, r)
        elif op == ABORT:
            self.pending.pop(rec.txn_id, None)
            self._tombstone(rec.txn_id)
        elif op == DECISION:
            self._decided(rec.txn_id, marker_payload(rec)["outcome"])
        elif is_mp_txn(rec.txn_id) and rec.op != REQUEST:
            p = self.pending.get(rec.txn_id)
            invariant(p is not None, f"record of MP txn {rec.txn_id} without its PREPARE")
            p.records.append(rec)
        else:
            return False
        return True

    def adopt(self, now_s: float) -> list[int]:
        """Become leader: apply the pending txns (with undo), lock their keys, hold them PREPARED."""
        adopted = []
        for p in self.pending.values():
            t = OpenTxn(p.txn, p.txn, now_s, PREPARED, participants=p.participants, holder=p.holder, touched_s=now_s)
            for rec in p.records:
                rows = self.core.tables[rec.table]
                t.undo.append((rec.table, rows, rec.key, rows.get(rec.key)))
                apply_record(self.core.tables, rec)
                self.locks.lock_key(p.txn, p.txn, rec.table, rec.key, write=True)
                t.redo.append(rec)
            self.open[p.txn] = t
            adopted.append(p.txn)
        self.pending.clear()
        return adopted

    # -- snapshots and rebuilds ----------------------------------------------------------

    def clean_tables(self, tables: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
        """``tables`` (a state copy) without the writes of open txns: their before-images instead."""
        touched: dict[str, dict[Any, dict | None]] = {}
        for t in self.open.values():
            for table, _rows, key, old in reversed(t.undo):
                touched.setdefault(table, {})[key] = old
        if not touched:
            return tables
        out = dict(tables)
        for table, olds in touched.items():
            spec = self.core.schema.tables[table]
            by_key = {spec.key_of(r): r for r in tables[table]}
            for key, old in olds.items():
                if old is None:
                    by_key.pop(key, None)
                else:
                    by_key[key] = old
            out[table] = list(by_key.values())
        return out

    def state(self) -> bytes:
        """Prepared txns (as pending) and recorded decisions, for a snapshot or a rebuilt replica."""
        pending = [(p.txn, p.participants, p.holder, p.records) for p in self.pending.values()]
        pending += [(t.txn, t.participants, t.holder, t.redo) for t in self.open.values() if t.state == PREPARED]
        return pickle.dumps({"pending": pending, "decisions": list(self.decisions.items())})

    def restore(self, blob: bytes) -> None:
        state = pickle.loads(blob)
        self.open.clear()
        self.locks = LockTable()
        self.pending = {txn: PendingTxn(txn, tuple(parts), holder, list(records))
                        for txn, parts, holder, records in state["pending"]}
        self.decisions = OrderedDict(state["decisions"])

    def counters(self) -> dict[str, int]:
        return {"mp_open": len(self.open), "mp_pending": len(self.pending), "mp_decisions": len(self.decisions),
                "mp_committed": self.finished["committed"], "mp_aborted": self.finished["aborted"]}

    # -- internals ------------------------------------------------------------------------

    def _tombstone(self, txn: int) -> None:
        self.tombstones[txn] = None
        while len(self.tombstones) > TOMBSTONES_KEPT_MAX:
            self.tombstones.popitem(last=False)

    def _decided(self, txn: int, outcome: str) -> None:
        self.decisions.setdefault(txn, outcome)
        while len(self.decisions) > DECISIONS_KEPT_MAX:
            self.decisions.popitem(last=False)
