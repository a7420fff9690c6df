"""Unit tests of the 2PC participant (``actors.participant``) inside a real ``PartitionCore``; no Ray.

A leader core runs MP fragments (``run_fragment_mp``), SP batches
(``execute_batch``) and the participant's phase-1/phase-2 calls; a second core
plays the follower (or the recovering replica) and is fed the records the leader
produced, through ``apply_redo`` -- sometimes after an Arrow ``LogCodec`` round
trip.  The last test runs random interleavings against a model that applies
committed MP txns only, at their commit point.
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors import participant
from actors.errors import (
    InvariantViolation, KeyNotFound, ProcedureFailed, ReadOnlyViolation, TxnAborted, UserAbort,
)
from actors.locks import DIE, WAIT, Conflict
from actors.participant import (
    MP_TXN_BIT, OUTCOME_ABORT, OUTCOME_COMMIT, PREPARED, RUNNING, TXN_STATE_ID, marker_payload,
)
from actors.partition_core import PartitionCore
from actors.routing import partition_of
from actors.schema import Schema, Table, procedure
from recovery.log_format import LogCodec
from recovery.redo import ABORT, COMMIT, DECISION, DELETE, INSERT, PREPARE, REQUEST, UPDATE, RedoRecord

# --- schema ------------------------------------------------------------------------------

ACCT = Table(
    "acct",
    pa.schema([pa.field("id", pa.int64()), pa.field("bal", pa.int64(), nullable=False), pa.field("note", pa.string())]),
    primary_key="id", partition_by="id",
)
REF = Table("ref", pa.schema([("code", pa.string()), ("name", pa.string())]), primary_key="code", replicated=True)


def acct(id: int, bal: int, note: str | None = None) -> dict:
    return {"id": id, "bal": bal, "note": note}


def run_ops(tx, ops) -> list:
    """Semantic ops shared by SP procedures, MP fragments and the model (all total: no op fails by itself
    except ``upd`` on a missing row)."""
    out = []
    for op in ops:
        kind = op[0]
        if kind == "read":
            row = tx.get("acct", op[1])
            out.append(None if row is None else row["bal"])
        elif kind == "add":  # read-modify-write, creating the row at 0
            row = tx.get("acct", op[1])
            new = (0 if row is None else row["bal"]) + op[2]
            tx.upsert("acct", acct(op[1], new))
            out.append(new)
        elif kind == "upd":  # KeyNotFound when missing
            out.append(tx.update("acct", op[1], {"bal": op[2]})["bal"])
        elif kind == "copy":  # read one key, write another: a dirty read would leak into the write
            row = tx.get("acct", op[1])
            tx.upsert("acct", acct(op[2], -1 if row is None else row["bal"], "copy"))
            out.append(None if row is None else row["bal"])
        elif kind == "drop":
            if tx.get("acct", op[1]) is not None:
                tx.delete("acct", op[1])
            out.append(None)
        elif kind == "sum_into":  # a scan feeding a write: phantoms would show
            total = sum(r["bal"] for r in tx.scan("acct"))
            tx.upsert("acct", acct(op[1], total, "sum"))
            out.append(total)
        elif kind == "ref":
            tx.upsert("ref", {"code": op[1], "name": op[2]})
            out.append(None)
        elif kind == "refread":
            row = tx.get("ref", op[1])
            out.append(None if row is None else row["name"])
        else:
            raise AssertionError(kind)
    return out


def finish(tx, ops, ending: str):
    out = run_ops(tx, ops)
    if ending == "abort":
        tx.abort("planned abort")
    if ending == "raise":
        raise ValueError("planned failure")
    return out


@procedure(partition_by="id")
def sp_get(tx, id: int):
    return tx.get("acct", id)


@procedure(partition_by="id")
def sp_set(tx, id: int, bal: int):
    tx.upsert("acct", acct(id, bal))
    return bal


@procedure(partition_by="id")
def sp_sum(tx, id: int):
    return sum(r["bal"] for r in tx.scan("acct"))


@procedure(partition_by="id")
def sp_count(tx, id: int):
    return tx.count("acct")


@procedure(partition_by="id")
def sp_ref_get(tx, id: int, code: str):
    row = tx.get("ref", code)
    return None if row is None else row["name"]


@procedure(partition_by="id")
def sp_ref_set(tx, id: int, code: str, name: str):
    tx.upsert("ref", {"code": code, "name": name})


@procedure(partition_by="id")
def sp_ops(tx, id: int, ops: list, ending: str):
    return finish(tx, ops, ending)


SCHEMA = Schema([ACCT, REF], [sp_get, sp_set, sp_sum, sp_count, sp_ref_get, sp_ref_set, sp_ops])
PARTS, PID = 2, 0
MINE = [k for k in range(1, 500) if partition_of(k, PARTS) == PID]
K0, K1, K2, K3, K4, K5, K6, K7 = MINE[:8]
T1, T2, T3, T4 = (MP_TXN_BIT | n for n in (1, 2, 3, 4))  # smaller = older
PARTICIPANTS = (0, 1)
INITIAL_ACCT = [acct(K0, 100), acct(K1, 200, "b"), acct(K2, 300), acct(K3, 400)]
INITIAL_REF = [{"code": "AMS", "name": "Amsterdam"}, {"code": "OSL", "name": "Oslo"}]


def new_core(loaded: bool = True) -> PartitionCore:
    core = PartitionCore(SCHEMA, PID, PARTS)
    if loaded:
        core.load("acct", INITIAL_ACCT)
        core.load("ref", INITIAL_REF)
    return core


def tables_of(core: PartitionCore) -> dict[str, dict[Any, dict]]:
    """The stored rows, as plain copies: table -> key -> row."""
    return {name: {k: dict(r) for k, r in rows.items()} for name, rows in core.tables.items()}


def copy_of(core: PartitionCore) -> dict[str, dict[Any, dict]]:
    """``state_copy()`` by key (and checked to have no duplicate keys)."""
    out = {}
    for name, rows in core.state_copy().items():
        spec = SCHEMA.tables[name]
        out[name] = {spec.key_of(r): dict(r) for r in rows}
        assert len(out[name]) == len(rows), f"duplicate keys in state_copy of {name}"
    return out


def script(ftx, ops, ending="ok"):
    """A fragment running raw TxContext calls ((method, *args) tuples), then ending as told."""
    out = [getattr(ftx, method)(*args) for method, *args in ops]
    if ending == "abort":
        ftx.abort("fragment aborted")
    if ending == "raise":
        raise ValueError("fragment failed")
    return out


def frag(core, txn, ops, ending="ok", now=0.0, priority=None, read_only=False):
    return core.run_fragment_mp(txn, txn if priority is None else priority, script, (ops, ending), now, read_only)


def ok(outcome):
    assert outcome.error is None and outcome.conflict is None, outcome
    return outcome.result


def sp(core, name, *args):
    """Run one SP txn that must not be blocked; (result, error)."""
    out = core.execute_batch([(name, args)])
    assert out.blocked_at is None, f"{name}{args} blocked by {out.blocked_by}"
    return out.results[0], out.errors.get(0)


def blocked_by(core, name, *args):
    out = core.execute_batch([(name, args)])
    assert out.results == [None] and out.errors == {} and out.redo == []
    return out.blocked_by if out.blocked_at == 0 else None


def prepare(core, txn, holder=0, now=0.0):
    yes, records, why = core.mp.prepare(txn, PARTICIPANTS, holder, now)
    assert yes, why
    return records


# writes used by several tests: an update, an insert, a delete, a write to the replicated table
WRITES = [("update", "acct", K0, {"bal": 101}), ("insert", "acct", acct(K5, 5)), ("delete", "acct", K1),
          ("update", "ref", "AMS", {"name": "Mokum"})]


def after_writes(base: dict) -> dict:
    out = copy.deepcopy(base)
    out["acct"][K0] = acct(K0, 101)
    out["acct"][K5] = acct(K5, 5)
    del out["acct"][K1]
    out["ref"]["AMS"] = {"code": "AMS", "name": "Mokum"}
    return out


# --- fragments: visibility, isolation, SP blocking ---------------------------------------------


def test_fragment_writes_visible_to_next_fragment_and_hidden_from_state_copy():
    core = new_core()
    before = tables_of(core)
    out = frag(core, T1, WRITES)
    ok(out)
    assert out.wrote
    # written in place (the txn reads its own writes) ...
    assert tables_of(core) == after_writes(before)
    # ... the next fragment of the same txn sees them
    seen = ok(frag(core, T1, [("get", "acct", K0), ("get", "acct", K5), ("get", "acct", K1), ("get", "ref", "AMS"),
                              ("count", "acct")]))
    assert seen == [acct(K0, 101), acct(K5, 5), None, {"code": "AMS", "name": "Mokum"}, len(INITIAL_ACCT)]
    # ... but a snapshot copy shows the committed state only
    assert copy_of(core) == before
    # and the copy is a copy: the live rows still hold the txn's writes
    assert tables_of(core) == after_writes(before)
    assert core.mp.open[T1].state == RUNNING


@pytest.mark.parametrize("outcome", [OUTCOME_COMMIT, OUTCOME_ABORT])
def test_open_txn_blocks_sp_txns_on_its_keys_until_it_ends(outcome):
    core = new_core()
    before = tables_of(core)
    ok(frag(core, T1, [*WRITES, ("get", "acct", K2)]))  # K2 only read: S lock
    # SP reads of X keys, writes of any locked key, scans and counts of a table with X keys: blocked
    for call in [("sp_get", K0), ("sp_set", K0, 1), ("sp_get", K5), ("sp_set", K5, 1), ("sp_get", K1),
                 ("sp_set", K1, 1), ("sp_set", K2, 1), ("sp_sum", K3), ("sp_count", K3), ("sp_ref_get", K3, "AMS")]:
        assert blocked_by(core, *call) == T1, call
    # SP txns on other keys run; a read of a key the txn only read runs too
    assert sp(core, "sp_get", K2) == (acct(K2, 300), None)
    assert sp(core, "sp_set", K3, 444) == (444, None)
    assert sp(core, "sp_get", K6) == (None, None)
    assert sp(core, "sp_ref_get", K3, "OSL") == ("Oslo", None)
    before["acct"][K3] = acct(K3, 444)
    # a batch with a blocked txn is undone whole: the txns before it ran and were rolled back
    out = core.execute_batch([("sp_set", (K4, 4)), ("sp_get", (K3,)), ("sp_get", (K0,)), ("sp_set", (K6, 6))])
    assert (out.blocked_at, out.blocked_by) == (2, T1)
    assert out.results == [None] * 4 and out.errors == {} and out.redo == []
    assert K4 not in core.tables["acct"] and K6 not in core.tables["acct"]
    assert copy_of(core) == before
    if outcome == OUTCOME_COMMIT:
        prepare(core, T1)
        assert blocked_by(core, "sp_get", K0) == T1  # still locked while prepared
        assert core.mp.commit(T1) == [RedoRecord(T1, COMMIT, "", str(T1), {"outcome": b"{}"})]
        expected = after_writes(before)
    else:
        assert core.mp.abort(T1) == []
        expected = before
    assert tables_of(core) == expected == copy_of(core)
    assert not core.mp.locks and core.mp.open == {}
    # everything runs now, and sees the outcome
    assert sp(core, "sp_get", K0)[0] == expected["acct"][K0]
    assert sp(core, "sp_get", K1)[0] == expected["acct"].get(K1)
    assert sp(core, "sp_sum", K3)[0] == sum(r["bal"] for r in expected["acct"].values())
    assert sp(core, "sp_ref_get", K3, "AMS")[0] == expected["ref"]["AMS"]["name"]
    assert sp(core, "sp_set", K2, 1) == (1, None)


def test_a_blocked_batch_is_undone_whole():
    core = new_core()
    ok(frag(core, T1, [("update", "acct", K0, {"bal": 1})]))
    before, counters = tables_of(core), core.counters()
    calls = [("sp_set", (K1, 11)),                                   # update
             ("sp_ops", (K2, [("drop", K2)], "ok")),                  # delete
             ("sp_set", (K4, 4)),                                     # insert
             ("sp_ops", (K3, [("add", K3, 1)], "abort")),             # user abort: rolled back by itself
             ("sp_ops", (K3, [("upd", K6, 1)], "ok")),                # KeyNotFound
             ("sp_ops", (K3, [("add", K3, 5), ("read", K0)], "ok")),  # writes K3, then blocked on K0
             ("sp_set", (K5, 5))]
    out = core.execute_batch(calls)
    assert (out.blocked_at, out.blocked_by) == (5, T1)
    assert out.results == [None] * len(calls) and out.errors == {} and out.redo == []
    assert tables_of(core) == before
    assert core.counters() == counters
    # once T1 ends the same batch runs in full
    core.mp.abort(T1)
    out = core.execute_batch(calls)
    assert out.blocked_at is None
    assert out.results[:3] == [11, [None], 4] and out.results[5] == [405, 100]
    assert isinstance(out.errors[3], UserAbort) and isinstance(out.errors[4], KeyNotFound)
    assert [(r.op, r.key) for r in out.redo] == [(UPDATE, K1), (DELETE, K2), (INSERT, K4), (UPDATE, K3),
                                                 (INSERT, K5)]


def test_sp_scan_not_blocked_by_readers_but_sp_write_blocked_by_mp_scan():
    core = new_core()
    ok(frag(core, T1, [("scan", "acct")]))  # table S lock, no X
    assert sp(core, "sp_sum", K3)[0] == 1000
    assert sp(core, "sp_get", K0)[0] == acct(K0, 100)
    assert blocked_by(core, "sp_set", K6, 1) == T1  # a new key in a scanned table: phantom
    assert sp(core, "sp_ref_get", K0, "AMS")[0] == "Amsterdam"
    core.mp.release(T1)  # read-only participant done
    assert not core.mp.locks
    assert sp(core, "sp_set", K6, 1) == (1, None)


# --- prepare / commit / abort -------------------------------------------------------------------


def test_prepare_returns_prepare_marker_then_the_txn_redo():
    core = new_core()
    ok(frag(core, T1, WRITES[:2]))
    ok(frag(core, T1, WRITES[2:]))
    yes, records, why = core.mp.prepare(T1, (0, 3, 5), 3, 7.0)
    assert yes and why == ""
    head, *redo = records
    assert (head.txn_id, head.op, head.table, head.key) == (T1, PREPARE, "", str(T1))
    assert marker_payload(head) == {"participants": [0, 3, 5], "holder": 3}
    assert redo == [
        RedoRecord(T1, UPDATE, "acct", K0, acct(K0, 101)),
        RedoRecord(T1, INSERT, "acct", K5, acct(K5, 5)),
        RedoRecord(T1, DELETE, "acct", K1, None),
        RedoRecord(T1, UPDATE, "ref", "AMS", {"code": "AMS", "name": "Mokum"}),
    ]
    t = core.mp.open[T1]
    assert (t.state, t.participants, t.holder) == (PREPARED, (0, 3, 5), 3)
    assert core.mp.in_doubt() == [(T1, (0, 3, 5), 3)]
    # asked again: still yes, nothing more to log
    assert core.mp.prepare(T1, (0, 3, 5), 3, 8.0) == (True, [], "")
    # no more fragments once prepared: refused, nothing written
    before = tables_of(core)
    out = frag(core, T1, [("update", "acct", K2, {"bal": 0})])
    assert isinstance(out.error, TxnAborted) and out.result is None
    assert tables_of(core) == before


def test_prepare_of_a_txn_that_only_read_logs_just_the_marker():
    core = new_core()
    out = frag(core, T1, [("get", "acct", K0)])
    assert ok(out) == [acct(K0, 100)] and not out.wrote
    records = prepare(core, T1)
    assert [r.op for r in records] == [PREPARE]


def test_commit_keeps_writes_and_frees_the_keys():
    core = new_core()
    before = tables_of(core)
    ok(frag(core, T1, WRITES))
    prepare(core, T1)
    records = core.mp.commit(T1)
    assert [(r.txn_id, r.op, r.key) for r in records] == [(T1, COMMIT, str(T1))]
    assert tables_of(core) == after_writes(before) == copy_of(core)
    assert core.mp.open == {} and not core.mp.locks and core.mp.in_doubt() == []
    assert core.mp.commit(T1) == []  # gone: nothing to do
    assert core.mp.counters()["mp_committed"] == 1
    # another MP txn takes the keys at once
    ok(frag(core, T2, [("update", "acct", K0, {"bal": 1}), ("scan", "acct")]))


@pytest.mark.parametrize("prepared", [False, True])
def test_abort_restores_every_before_image(prepared):
    core = new_core()
    before = tables_of(core)
    ok(frag(core, T1, WRITES))
    # a second fragment piles more writes on the same keys: the first before-image must win
    ok(frag(core, T1, [("update", "acct", K0, {"bal": 102, "note": "x"}), ("delete", "acct", K5),
                       ("insert", "acct", acct(K1, 9)), ("upsert", "acct", acct(K2, 33)),
                       ("delete", "ref", "OSL"), ("insert", "ref", {"code": "LIS", "name": "Lisbon"})]))
    assert tables_of(core) != before
    if prepared:
        prepare(core, T1)
    records = core.mp.abort(T1)
    assert [(r.op, r.txn_id) for r in records] == ([(ABORT, T1)] if prepared else [])
    assert tables_of(core) == before == copy_of(core)
    assert core.mp.open == {} and not core.mp.locks
    assert core.mp.counters()["mp_aborted"] == 1
    # it stays dead: a late fragment is refused (and writes nothing), a late PREPARE votes no
    out = frag(core, T1, [("update", "acct", K0, {"bal": 0})])
    assert isinstance(out.error, TxnAborted)
    assert tables_of(core) == before
    yes, recs, why = core.mp.prepare(T1, PARTICIPANTS, 0, 0.0)
    assert (yes, recs) == (False, []) and why
    assert core.mp.abort(T1) == []  # again: nothing
    assert not core.mp.locks


def test_unknown_txn_votes_no_and_a_later_fragment_is_refused():
    core = new_core()
    before = tables_of(core)
    yes, records, why = core.mp.prepare(T1, PARTICIPANTS, 0, 0.0)
    assert yes is False and records == [] and str(T1) in why
    out = frag(core, T1, [("update", "acct", K0, {"bal": 0})])
    assert isinstance(out.error, TxnAborted)
    assert tables_of(core) == before
    assert T1 not in core.mp.open and not core.mp.locks
    # other txns are unaffected
    ok(frag(core, T2, [("update", "acct", K0, {"bal": 0})]))


@pytest.mark.parametrize("ending, error", [("abort", UserAbort), ("raise", ProcedureFailed), ("missing", KeyNotFound)])
def test_a_failed_fragment_is_undone_alone(ending, error):
    core = new_core()
    before = tables_of(core)
    ok(frag(core, T1, [("update", "acct", K0, {"bal": 1}), ("insert", "acct", acct(K5, 5))]))
    mid = tables_of(core)
    ops = [("update", "acct", K0, {"bal": 2}), ("delete", "acct", K5), ("update", "acct", K2, {"bal": 3}),
           ("insert", "acct", acct(K6, 6))]
    if ending == "missing":
        ops.append(("update", "acct", K7, {"bal": 0}))
    out = frag(core, T1, ops, ending if ending != "missing" else "ok")
    assert isinstance(out.error, error) and out.result is None and out.conflict is None
    assert out.wrote  # the first fragment's writes are still the txn's
    assert tables_of(core) == mid
    # the txn goes on; its redo holds the first fragment only
    assert ok(frag(core, T1, [("get", "acct", K0)])) == [acct(K0, 1)]
    records = prepare(core, T1)
    assert [(r.op, r.key) for r in records[1:]] == [(UPDATE, K0), (INSERT, K5)]
    core.mp.abort(T1)
    assert tables_of(core) == before


def test_a_failed_first_fragment_leaves_an_empty_txn():
    core = new_core()
    before = tables_of(core)
    out = frag(core, T1, [("update", "acct", K0, {"bal": 1})], "raise")
    assert isinstance(out.error, ProcedureFailed) and not out.wrote
    assert tables_of(core) == before
    assert [r.op for r in prepare(core, T1)] == [PREPARE]
    core.mp.commit(T1)
    assert tables_of(core) == before


# --- wait-die between MP txns ---------------------------------------------------------------------


def test_lock_conflicts_between_mp_txns_follow_wait_die():
    core = new_core()
    ok(frag(core, T2, [("update", "acct", K0, {"bal": 2})]))
    before = tables_of(core)
    # T1 is older than T2: it waits; its fragment (a write, then the conflicting read) left nothing
    out = frag(core, T1, [("update", "acct", K3, {"bal": 1}), ("get", "acct", K0)])
    assert out.conflict == Conflict((T2,), WAIT)
    assert out.error is None and out.result is None and not out.wrote
    # T3 is younger: it dies, also without a trace
    out = frag(core, T3, [("insert", "acct", acct(K4, 4)), ("update", "acct", K0, {"bal": 3})])
    assert out.conflict == Conflict((T2,), DIE) and not out.wrote
    # a failed fragment's writes are undone but its locks stay (strict 2PL): T1 still holds X on K3 and
    # T3 on K4, so scans conflict with every other writer
    assert blocked_by(core, "sp_get", K3) == T1
    assert blocked_by(core, "sp_get", K4) == T3
    assert frag(core, T1, [("scan", "acct")]).conflict == Conflict((T2, T3), WAIT)
    assert frag(core, T3, [("count", "acct")]).conflict == Conflict((T1, T2), DIE)
    assert tables_of(core) == before
    # the other way round: T1 holds X on K2 now, T2 (younger) dies reading it
    ok(frag(core, T1, [("update", "acct", K2, {"bal": 1})]))
    assert frag(core, T2, [("get", "acct", K2)]).conflict == Conflict((T1,), DIE)
    # a conflicting fragment after a successful one keeps the first one's writes
    out = frag(core, T1, [("get", "acct", K0)])
    assert out.conflict is not None and out.wrote
    assert core.tables["acct"][K2] == acct(K2, 1)
    # T3 died: the coordinator aborts it everywhere
    core.mp.abort(T3)
    # T2 finishes: T1 reads its committed value
    prepare(core, T2)
    core.mp.commit(T2)
    assert ok(frag(core, T1, [("get", "acct", K0)])) == [acct(K0, 2)]
    assert [(r.op, r.key) for r in prepare(core, T1)[1:]] == [(UPDATE, K2)]
    core.mp.commit(T1)
    assert not core.mp.locks and core.mp.open == {}
    assert sp(core, "sp_get", K4)[0] is None and sp(core, "sp_get", K3)[0] == acct(K3, 400)


def test_a_fragment_reads_through_shared_locks_of_others():
    core = new_core()
    ok(frag(core, T2, [("get", "acct", K0), ("scan", "acct")]))
    assert ok(frag(core, T1, [("get", "acct", K0), ("scan", "acct")]))[0] == acct(K0, 100)
    assert frag(core, T3, [("update", "acct", K0, {"bal": 0})]).conflict == Conflict((T1, T2), DIE)
    # a write to any key of a scanned table conflicts with the scanners
    assert frag(core, T3, [("insert", "acct", acct(K6, 0))]).conflict == Conflict((T1, T2), DIE)


# --- replicated tables, read-only fragments -------------------------------------------------------


def test_replicated_table_sp_cannot_write_it_mp_fragment_can():
    core = new_core()
    result, error = sp(core, "sp_ref_set", K0, "AMS", "Mokum")
    assert result is None and isinstance(error, ReadOnlyViolation)
    assert core.tables["ref"]["AMS"] == {"code": "AMS", "name": "Amsterdam"}
    ok(frag(core, T1, [("update", "ref", "AMS", {"name": "Mokum"}), ("insert", "ref", {"code": "LIS", "name": "L"})]))
    assert blocked_by(core, "sp_ref_get", K0, "AMS") == T1
    records = prepare(core, T1)
    assert [(r.op, r.table, r.key) for r in records[1:]] == [(UPDATE, "ref", "AMS"), (INSERT, "ref", "LIS")]
    core.mp.commit(T1)
    assert sp(core, "sp_ref_get", K0, "AMS")[0] == "Mokum"
    assert sp(core, "sp_ref_get", K0, "LIS")[0] == "L"


def test_read_only_fragment_cannot_write():
    core = new_core()
    before = tables_of(core)
    out = frag(core, T1, [("get", "acct", K0), ("update", "acct", K0, {"bal": 0})], read_only=True)
    assert isinstance(out.error, ReadOnlyViolation) and not out.wrote
    assert tables_of(core) == before


# --- the holder's decision -------------------------------------------------------------------------


@pytest.mark.parametrize("first, second", [(OUTCOME_ABORT, OUTCOME_COMMIT), (OUTCOME_COMMIT, OUTCOME_ABORT)])
def test_log_decision_first_writer_wins(first, second):
    core = new_core()
    before = tables_of(core)
    ok(frag(core, T1, WRITES))
    prepare(core, T1)
    reply = pickle.dumps({"result": 42})
    outcome, records = core.mp.log_decision(T1, first, (0, 1), "req-1", reply)
    assert outcome == first
    assert records[0].op == DECISION and records[0].txn_id == T1
    assert marker_payload(records[0]) == {"outcome": first, "participants": [0, 1]}
    if first == OUTCOME_COMMIT:
        assert [r.op for r in records] == [DECISION, COMMIT, REQUEST]
        assert records[2] == RedoRecord(T1, REQUEST, "", "req-1", {"outcome": reply})
        assert core.recall("req-1") == reply
        assert tables_of(core) == after_writes(before)
    else:
        assert [r.op for r in records] == [DECISION, ABORT]
        assert core.recall("req-1") is None
        assert tables_of(core) == before
    assert not core.mp.locks and core.mp.open == {}
    # the later request gets the first outcome and logs nothing; nothing changes
    snapshot = tables_of(core)
    assert core.mp.log_decision(T1, second, (0, 1), "req-2", b"other") == (first, [])
    assert core.mp.recorded(T1) == first
    assert core.recall("req-2") is None
    assert tables_of(core) == snapshot
    # and the txn cannot come back
    assert isinstance(frag(core, T1, [("get", "acct", K2)]).error, TxnAborted)


def test_log_decision_commit_without_request_id_logs_no_reply():
    core = new_core()
    ok(frag(core, T1, WRITES))
    prepare(core, T1)
    outcome, records = core.mp.log_decision(T1, OUTCOME_COMMIT, (0, 1), None, None)
    assert outcome == OUTCOME_COMMIT and [r.op for r in records] == [DECISION, COMMIT]


def test_log_decision_abort_of_a_running_txn_logs_only_the_decision():
    core = new_core()
    before = tables_of(core)
    ok(frag(core, T1, WRITES))
    outcome, records = core.mp.log_decision(T1, OUTCOME_ABORT, (0, 1), None, None)
    assert outcome == OUTCOME_ABORT and [r.op for r in records] == [DECISION]
    assert tables_of(core) == before and not core.mp.locks
    # a txn the holder never saw can be decided too (abort: e.g. a participant in doubt asks)
    assert core.mp.log_decision(T2, OUTCOME_ABORT, (0, 1), None, None)[0] == OUTCOME_ABORT
    assert core.mp.recorded(T2) == OUTCOME_ABORT
    assert core.mp.recorded(T3) is None


# --- followers and recovery -------------------------------------------------------------------------


def follower_of(leader_records=()) -> PartitionCore:
    f = new_core()
    f.apply_redo(list(leader_records))
    return f


@pytest.mark.parametrize("outcome", [OUTCOME_COMMIT, OUTCOME_ABORT])
@pytest.mark.parametrize("holder", [True, False])
def test_follower_holds_txn_records_until_the_outcome(outcome, holder):
    leader, follower = new_core(), new_core()
    before = tables_of(leader)
    ok(frag(leader, T1, WRITES))
    prep = prepare(leader, T1, holder=0 if holder else 1)
    follower.apply_redo(prep)
    # none of the txn's writes show yet; it is pending
    assert tables_of(follower) == before
    p = follower.mp.pending[T1]
    assert (p.participants, p.holder, p.records) == (PARTICIPANTS, 0 if holder else 1, prep[1:])
    # SP txns of the leader on other keys, logged meanwhile, apply at once
    out = leader.execute_batch([("sp_set", (K3, 7)), ("sp_set", (K6, 6))])
    follower.apply_redo(out.redo)
    assert tables_of(follower) == copy_of(leader)
    # the outcome
    if holder:
        decided, records = leader.mp.log_decision(T1, outcome, PARTICIPANTS, "req-9", b"reply")
        assert decided == outcome
    else:
        records = leader.mp.commit(T1) if outcome == OUTCOME_COMMIT else leader.mp.abort(T1)
    follower.apply_redo(records)
    assert follower.mp.pending == {}
    assert tables_of(follower) == tables_of(leader)
    if outcome == OUTCOME_COMMIT:
        assert tables_of(follower)["acct"][K5] == acct(K5, 5)
    else:
        expected = copy.deepcopy(before)
        expected["acct"][K3] = acct(K3, 7)
        expected["acct"][K6] = acct(K6, 6)
        assert tables_of(follower) == expected
    if holder:
        assert follower.mp.recorded(T1) == outcome
        assert follower.recall("req-9") == (b"reply" if outcome == OUTCOME_COMMIT else None)
    if outcome == OUTCOME_ABORT:
        # a promoted follower refuses a late fragment of the aborted txn
        assert isinstance(frag(follower, T1, [("get", "acct", K0)]).error, TxnAborted)


def codec_round_trip(records: list[RedoRecord], codec: LogCodec, first_lsn: int = 1) -> list[RedoRecord]:
    batch, _meta = codec.encode(records, first_lsn, 3)
    return codec.decode(batch)


@pytest.mark.parametrize("outcome", [OUTCOME_COMMIT, OUTCOME_ABORT])
def test_2pc_records_survive_the_log_codec(outcome):
    codec = LogCodec(SCHEMA)
    leader = new_core()
    ok(frag(leader, T1, WRITES))
    ok(frag(leader, T1, [("insert", "acct", acct(K6, 6, "n"))]))
    records = prepare(leader, T1, holder=0)
    sp_out = leader.execute_batch([("sp_set", (K3, 7))])
    records += sp_out.redo
    records += leader.mp.log_decision(T1, outcome, PARTICIPANTS, "req-1", pickle.dumps("done"))[1]
    decoded = codec_round_trip(records, codec, first_lsn=10)
    assert decoded == records
    assert [type(r.txn_id) for r in decoded] == [int] * len(records)
    # applied the same way, in the same steps
    direct, via_log = new_core(), new_core()
    for i in range(len(records)):
        direct.apply_redo(records[i:i + 1])
        via_log.apply_redo(decoded[i:i + 1])
        assert tables_of(direct) == tables_of(via_log)
        assert direct.mp.pending.keys() == via_log.mp.pending.keys()
    assert tables_of(via_log) == tables_of(leader)
    assert via_log.mp.recorded(T1) == outcome
    if outcome == OUTCOME_COMMIT:
        assert pickle.loads(via_log.recall("req-1")) == "done"


@pytest.mark.parametrize("outcome", [OUTCOME_COMMIT, OUTCOME_ABORT])
def test_adopt_holds_the_pending_txn_prepared_and_locked(outcome):
    leader, follower = new_core(), new_core()
    before = tables_of(leader)
    ok(frag(leader, T1, WRITES))
    ok(frag(leader, T1, [("update", "acct", K0, {"bal": 102})]))  # two records on one key
    follower.apply_redo(prepare(leader, T1, holder=1))
    assert tables_of(follower) == before
    # the leader is gone; the follower takes over
    assert follower.mp.adopt(50.0) == [T1]
    assert follower.mp.pending == {}
    t = follower.mp.open[T1]
    assert (t.state, t.participants, t.holder) == (PREPARED, PARTICIPANTS, 1)
    assert follower.mp.in_doubt() == [(T1, PARTICIPANTS, 1)]
    assert tables_of(follower) == tables_of(leader)   # its writes are applied ...
    assert copy_of(follower) == before                # ... but not in a snapshot copy
    # X locks on its keys: SP access blocked, other keys free
    for call in [("sp_get", K0), ("sp_set", K0, 1), ("sp_get", K5), ("sp_set", K1, 1), ("sp_sum", K3),
                 ("sp_ref_get", K3, "AMS")]:
        assert blocked_by(follower, *call) == T1, call
    assert sp(follower, "sp_get", K2)[0] == acct(K2, 300)
    # other MP txns conflict with it by wait-die (its priority: its id)
    assert frag(follower, T2, [("get", "acct", K0)]).conflict == Conflict((T1,), DIE)
    follower.mp.abort(T2)  # it died: the coordinator aborts it
    assert isinstance(frag(follower, T1, [("get", "acct", K2)]).error, TxnAborted)  # prepared: no fragments
    # a snapshot of the new leader carries it as pending
    assert [p for p in pickle.loads(dict(follower.kept_entries())[TXN_STATE_ID])["pending"]][0][0] == T1
    # the coordinator's decision, as on the original leader
    if outcome == OUTCOME_COMMIT:
        records = follower.mp.commit(T1)
        leader.mp.commit(T1)
        assert tables_of(follower) == tables_of(leader)
        assert [r.op for r in records] == [COMMIT]
    else:
        records = follower.mp.abort(T1)
        assert tables_of(follower) == before
        assert [r.op for r in records] == [ABORT]
    assert copy_of(follower) == tables_of(follower)
    assert not follower.mp.locks and follower.mp.open == {}
    assert sp(follower, "sp_set", K0, 1) == (1, None)


def test_kept_entries_round_trip_carries_pending_txns_decisions_and_requests():
    core = new_core()
    core.remember("sp-req", b"sp-outcome")
    # T1: prepared here, undecided
    ok(frag(core, T1, WRITES))
    prep = prepare(core, T1, holder=1)
    # T2 committed and T3 aborted, recorded here as the holder
    ok(frag(core, T2, [("update", "acct", K2, {"bal": 2})]))
    prepare(core, T2)
    assert core.mp.log_decision(T2, OUTCOME_COMMIT, PARTICIPANTS, "mp-req", b"mp-outcome")[0] == OUTCOME_COMMIT
    ok(frag(core, T3, [("update", "acct", K3, {"bal": 3})]))
    assert core.mp.log_decision(T3, OUTCOME_ABORT, PARTICIPANTS, None, None)[0] == OUTCOME_ABORT
    # T4: running (lost on a rebuild; its writes must not leak)
    ok(frag(core, T4, [("insert", "acct", acct(K7, 7))]))
    committed = copy_of(core)
    assert committed["acct"][K2] == acct(K2, 2) and K7 not in committed["acct"] and K5 not in committed["acct"]

    entries = core.kept_entries()
    assert entries[-1][0] == TXN_STATE_ID
    rebuilt = new_core(loaded=False)
    rebuilt.restore(core.state_copy())
    rebuilt.restore_entries(entries)
    assert tables_of(rebuilt) == committed                 # T1 pending, not applied
    assert list(rebuilt.mp.pending) == [T1]
    p = rebuilt.mp.pending[T1]
    assert (p.participants, p.holder, p.records) == (PARTICIPANTS, 1, prep[1:])
    assert rebuilt.mp.open == {} and not rebuilt.mp.locks
    assert rebuilt.mp.recorded(T2) == OUTCOME_COMMIT and rebuilt.mp.recorded(T3) == OUTCOME_ABORT
    assert rebuilt.mp.recorded(T4) is None
    assert rebuilt.recall("sp-req") == b"sp-outcome" and rebuilt.recall("mp-req") == b"mp-outcome"
    # decided txns stay dead on the rebuilt replica
    assert isinstance(frag(rebuilt, T2, [("get", "acct", K0)]).error, TxnAborted)
    # the rest of T1's story applies on top: COMMIT brings its writes
    commit = core.mp.commit(T1)
    core.mp.abort(T4)
    rebuilt.apply_redo(commit)
    assert tables_of(rebuilt) == tables_of(core)
    # and a second generation (from the rebuilt replica) carries the same things
    again = new_core(loaded=False)
    again.restore(rebuilt.state_copy())
    again.restore_entries(rebuilt.kept_entries())
    assert tables_of(again) == tables_of(core)
    assert again.mp.pending == {} and again.mp.recorded(T2) == OUTCOME_COMMIT
    assert again.recall("sp-req") == b"sp-outcome"


def test_a_rebuilt_replica_can_adopt_and_abort_the_pending_txn():
    core = new_core()
    before = tables_of(core)
    ok(frag(core, T1, WRITES))
    prepare(core, T1)
    rebuilt = new_core(loaded=False)
    rebuilt.restore(core.state_copy())
    rebuilt.restore_entries(core.kept_entries())
    assert rebuilt.mp.adopt(1.0) == [T1]
    assert tables_of(rebuilt) == tables_of(core)
    assert blocked_by(rebuilt, "sp_get", K0) == T1
    assert [r.op for r in rebuilt.mp.abort(T1)] == [ABORT]
    assert tables_of(rebuilt) == before


# --- settling without the coordinator ------------------------------------------------------------


def test_abort_running_aborts_only_running_txns_below_the_bound():
    core = new_core()
    before = tables_of(core)
    ok(frag(core, T1, [("update", "acct", K0, {"bal": 1})]))
    ok(frag(core, T2, [("update", "acct", K1, {"bal": 2})]))
    prepare(core, T2)
    ok(frag(core, T4, [("update", "acct", K3, {"bal": 4})]))
    assert core.mp.abort_running(T3) == [T1]
    assert core.tables["acct"][K0] == before["acct"][K0]            # T1 undone
    assert core.tables["acct"][K1] == acct(K1, 2, "b")            # T2 (prepared) kept
    assert core.tables["acct"][K3] == acct(K3, 4)                   # T4 (newer) kept
    assert set(core.mp.open) == {T2, T4}
    assert isinstance(frag(core, T1, [("get", "acct", K2)]).error, TxnAborted)
    assert sp(core, "sp_set", K0, 9) == (9, None)  # T1's lock is gone
    assert core.mp.abort_running(T3) == []


def test_expired_lists_idle_running_and_waiting_prepared_txns():
    core = new_core()
    ok(frag(core, T1, [("update", "acct", K0, {"bal": 1})], now=0.0))
    ok(frag(core, T2, [("update", "acct", K1, {"bal": 1})], now=10.0))
    ok(frag(core, T3, [("update", "acct", K2, {"bal": 1})], now=0.0))
    prepare(core, T3, now=5.0)
    running, doubt = core.mp.expired(20.0, running_s=15.0, prepared_s=12.0)
    assert running == [T1]
    assert [t.txn for t in doubt] == [T3] and doubt[0].state == PREPARED
    # exactly at the limit is not over it
    running, doubt = core.mp.expired(20.0, running_s=20.0, prepared_s=15.0)
    assert running == [] and doubt == []
    # a fragment touches the txn again
    ok(frag(core, T1, [("get", "acct", K0)], now=18.0))
    running, doubt = core.mp.expired(30.0, running_s=15.0, prepared_s=100.0)
    assert running == [T2] and doubt == []
    # a conflicting or failed fragment is still a sign of life
    ok(frag(core, T4, [("update", "acct", K3, {"bal": 1})], now=30.0))
    assert frag(core, T2, [("get", "acct", K3)], now=40.0).conflict is not None
    running, _ = core.mp.expired(50.0, running_s=15.0, prepared_s=100.0)
    assert T2 not in running
    # expired only lists: nothing was aborted
    assert set(core.mp.open) == {T1, T2, T3, T4}


def test_release_of_a_reader_frees_it_of_a_writer_rolls_back():
    core = new_core()
    before = tables_of(core)
    ok(frag(core, T1, [("get", "acct", K0), ("scan", "acct")]))
    ok(frag(core, T2, [("get", "acct", K2)]))
    ok(frag(core, T2, [("update", "ref", "OSL", {"name": "x"})]))
    assert core.mp.release(T1) == []
    assert core.mp.release(T2) == []  # it wrote: rolled back (it was never prepared)
    assert tables_of(core) == before
    assert core.mp.open == {} and not core.mp.locks
    assert isinstance(frag(core, T2, [("get", "acct", K2)]).error, TxnAborted)


def test_tombstones_and_decisions_are_bounded_oldest_forgotten(monkeypatch):
    monkeypatch.setattr(participant, "TOMBSTONES_KEPT_MAX", 3)
    monkeypatch.setattr(participant, "DECISIONS_KEPT_MAX", 2)
    core = new_core()
    txns = [MP_TXN_BIT | n for n in range(1, 6)]
    for txn in txns:
        core.mp.abort(txn)
    assert list(core.mp.tombstones) == txns[2:]
    assert isinstance(frag(core, txns[4], [("get", "acct", K0)]).error, TxnAborted)  # still remembered
    holder = new_core()
    for txn in txns[:3]:
        holder.mp.log_decision(txn, OUTCOME_ABORT, PARTICIPANTS, None, None)
    assert list(holder.mp.decisions) == txns[1:3]
    assert holder.mp.recorded(txns[0]) is None and holder.mp.recorded(txns[2]) == OUTCOME_ABORT


def test_counters():
    core = new_core()
    ok(frag(core, T1, [("update", "acct", K0, {"bal": 1})]))
    ok(frag(core, T2, [("update", "acct", K1, {"bal": 1})]))
    prepare(core, T2)
    core.mp.commit(T2)
    ok(frag(core, T3, [("update", "acct", K2, {"bal": 1})]))
    prepare(core, T3, holder=0)
    core.mp.log_decision(T3, OUTCOME_ABORT, PARTICIPANTS, None, None)
    follower = new_core()
    ok(frag(core, T4, [("update", "acct", K3, {"bal": 1})]))
    follower.apply_redo(prepare(core, T4))
    assert core.mp.counters() == {"mp_open": 2, "mp_pending": 0, "mp_decisions": 1, "mp_committed": 1,
                                  "mp_aborted": 1}
    assert follower.mp.counters()["mp_pending"] == 1


def test_a_txn_record_without_its_prepare_is_an_invariant_violation():
    follower = new_core()
    with pytest.raises(InvariantViolation):
        follower.apply_redo([RedoRecord(T1, UPDATE, "acct", K0, acct(K0, 1))])


def test_a_late_fragment_of_a_committed_txn_is_refused():
    core = new_core()
    ok(frag(core, T1, [("update", "acct", K0, {"bal": 1})]))
    prepare(core, T1, holder=1)  # another partition holds the decision
    core.mp.commit(T1)
    out = frag(core, T1, [("update", "acct", K0, {"bal": 2})])
    try:
        assert isinstance(out.error, TxnAborted)
    finally:
        core.mp.abort(T1)


# --- random interleavings against a model of the committed txns -------------------------------------

KEYS = MINE[:4]
CODES = ["AMS", "OSL"]
N_SLOTS = 3


class ModelTx:
    """The few TxContext calls ``run_ops`` uses, over plain dicts."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def get(self, table, key):
        row = self.state[table].get(key)
        return None if row is None else dict(row)

    def upsert(self, table, row):
        key = row["id"] if table == "acct" else row["code"]
        self.state[table][key] = dict(row)

    def update(self, table, key, changes):
        if key not in self.state[table]:
            raise KeyNotFound("missing")
        self.state[table][key] = {**self.state[table][key], **changes}
        return dict(self.state[table][key])

    def delete(self, table, key):
        del self.state[table][key]

    def scan(self, table):
        return [dict(r) for r in self.state[table].values()]

    def abort(self, reason):
        raise UserAbort(reason)


def model_run(state: dict, ops, ending: str):
    """(new state, result) of running ``ops`` atomically on a copy, or (state, None) when it fails."""
    trial = copy.deepcopy(state)
    try:
        result = finish(ModelTx(trial), ops, ending)
    except (UserAbort, KeyNotFound, ValueError):
        return state, None
    return trial, result


op = st.one_of(
    st.tuples(st.just("read"), st.sampled_from(KEYS)),
    st.tuples(st.just("add"), st.sampled_from(KEYS), st.integers(-5, 5)),
    st.tuples(st.just("upd"), st.sampled_from(KEYS), st.integers(0, 9)),
    st.tuples(st.just("drop"), st.sampled_from(KEYS)),
    st.tuples(st.just("sum_into"), st.sampled_from(KEYS)),
    st.tuples(st.just("copy"), st.sampled_from(KEYS), st.sampled_from(KEYS)),
    st.tuples(st.just("refread"), st.sampled_from(CODES)),
)
mp_op = st.one_of(op, st.tuples(st.just("ref"), st.sampled_from(CODES), st.sampled_from(["a", "b", "c"])))
ending = st.sampled_from(["ok", "ok", "ok", "abort", "raise"])
STEPS = {
    "frag": st.tuples(st.just("frag"), st.integers(0, N_SLOTS - 1), st.lists(mp_op, min_size=1, max_size=3), ending),
    "prepare": st.tuples(st.just("prepare"), st.integers(0, N_SLOTS - 1)),
    "end": st.tuples(st.just("end"), st.integers(0, N_SLOTS - 1),
                     st.sampled_from([OUTCOME_COMMIT, OUTCOME_COMMIT, OUTCOME_ABORT]), st.booleans()),
    "sp": st.tuples(st.just("sp"), st.lists(st.tuples(st.sampled_from(KEYS), st.lists(op, min_size=1, max_size=3),
                                                      ending), min_size=1, max_size=3)),
    "failover": st.tuples(st.just("failover"), st.booleans()),
}
# weighted: mostly fragments and SP batches, now and then a phase-1/2 step, rarely a failover
step = st.sampled_from(["frag"] * 6 + ["sp"] * 3 + ["prepare"] * 2 + ["end"] * 2 + ["failover"]).flatmap(STEPS.get)

INTERLEAVE_SETTINGS = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def mp_frag(ftx, ops, ending):
    return finish(ftx, ops, ending)


class Slot:
    def __init__(self) -> None:
        self.txn: int | None = None
        self.state = None          # None (no txn), RUNNING, PREPARED
        self.fragments: list = []  # (ops, result) of its successful fragments, in order


class Interleaving:
    """One leader, one follower fed the leader's log, and the model of the committed state."""

    def __init__(self, via_codec: bool) -> None:
        self.leader, self.follower = new_core(), new_core()
        self.model = {"acct": {r["id"]: dict(r) for r in INITIAL_ACCT}, "ref": {r["code"]: dict(r) for r in INITIAL_REF}}
        self.codec = LogCodec(SCHEMA) if via_codec else None
        self.lsn = 1
        self.slots = [Slot() for _ in range(N_SLOTS)]
        self.next_txn = 1
        self.now = 0.0
        self.replies: dict[str, bytes] = {}
        self.history: list[RedoRecord] = []  # the whole log, for a replica recovering by replay

    def log(self, records: list[RedoRecord]) -> None:
        if not records:
            return
        if self.codec is not None:
            decoded = codec_round_trip(records, self.codec, self.lsn)
            assert decoded == records
            self.lsn += len(records)
            records = decoded
        self.history += records
        self.follower.apply_redo(records)

    def check(self) -> None:
        committed = copy_of(self.leader)
        assert committed == self.model, "leader's state copy differs from the model"
        assert tables_of(self.follower) == self.model, "follower differs from the model"

    def step(self, s) -> None:
        self.now += 1.0
        kind = s[0]
        if kind == "frag":
            self.fragment(self.slots[s[1]], s[2], s[3])
        elif kind == "prepare":
            self.prepare(self.slots[s[1]])
        elif kind == "end":
            self.end(self.slots[s[1]], s[2], s[3])
        elif kind == "sp":
            self.sp_batch(s[1])
        else:
            self.failover(s[1])

    def fragment(self, slot: Slot, ops, end: str) -> None:
        if slot.state is None:
            slot.txn, slot.state, slot.fragments = MP_TXN_BIT | self.next_txn, RUNNING, []
            self.next_txn += 1
        out = self.leader.run_fragment_mp(slot.txn, slot.txn, mp_frag, (ops, end), self.now)
        if slot.state == PREPARED:
            assert isinstance(out.error, TxnAborted)
            return
        if out.conflict is not None:
            assert out.error is None and out.result is None
            if out.conflict.verdict == DIE:
                assert self.leader.mp.abort(slot.txn) == []
                slot.__init__()
            return  # WAIT: the fragment did not run (a later "frag" step of the slot plays the retry)
        if out.error is not None:
            assert end != "ok" or isinstance(out.error, KeyNotFound), out.error
            return
        assert end == "ok"
        slot.fragments.append((ops, out.result))

    def prepare(self, slot: Slot) -> None:
        if slot.state is None:  # a txn this partition never saw: NO
            txn = MP_TXN_BIT | self.next_txn
            self.next_txn += 1
            yes, records, _ = self.leader.mp.prepare(txn, PARTICIPANTS, 0, self.now)
            assert not yes and records == []
            return
        yes, records, _ = self.leader.mp.prepare(slot.txn, PARTICIPANTS, 0, self.now)
        assert yes
        assert (records == []) == (slot.state == PREPARED)
        slot.state = PREPARED
        self.log(records)

    def end(self, slot: Slot, outcome: str, via_holder: bool) -> None:
        if slot.state is None:
            return
        if outcome == OUTCOME_COMMIT and slot.state == RUNNING:
            self.prepare(slot)
        mp = self.leader.mp
        if via_holder:
            request_id = f"req-{slot.txn}"
            reply = pickle.dumps(slot.txn)
            decided, records = mp.log_decision(slot.txn, outcome, PARTICIPANTS, request_id, reply)
            assert decided == outcome
            if outcome == OUTCOME_COMMIT:
                self.replies[request_id] = reply
        else:
            records = mp.commit(slot.txn) if outcome == OUTCOME_COMMIT else mp.abort(slot.txn)
        if outcome == OUTCOME_COMMIT:
            # the commit point: its successful fragments, replayed on the model, read what they read
            # on the leader (strict 2PL: nothing they read changed before the commit)
            for ops, seen in slot.fragments:
                new, result = model_run(self.model, ops, "ok")
                assert result == seen, f"txn {slot.txn}: fragment {ops} read {seen} but {result} at its commit point"
                self.model = new
        self.log(records)
        assert slot.txn not in mp.open
        slot.__init__()

    def sp_batch(self, calls) -> None:
        out = self.leader.execute_batch([("sp_ops", (k, ops, end)) for k, ops, end in calls])
        if out.blocked_at is not None:  # undone whole: nothing ran (the shell would run it again later)
            assert out.blocked_by in {s.txn for s in self.slots if s.state is not None}
            assert out.redo == [] and out.errors == {} and out.results == [None] * len(calls)
            return
        for i, (_k, ops, end) in enumerate(calls):
            self.model, result = model_run(self.model, ops, end)
            if result is None:
                assert i in out.errors, (i, ops, end)
            else:
                assert i not in out.errors and out.results[i] == result, (i, ops, out.results[i], result)
        self.log(out.redo)

    def failover(self, rebuild_from_snapshot: bool) -> None:
        """The follower becomes leader: RUNNING txns are lost (the coordinator aborts them),
        PREPARED ones are adopted.  The new follower is rebuilt from the new leader's snapshot
        (state copy + kept entries) or recovers by replaying the whole log."""
        prepared = {s.txn for s in self.slots if s.state == PREPARED}
        for s in self.slots:
            if s.state == RUNNING:
                s.__init__()
        new_leader = self.follower
        assert set(new_leader.mp.pending) == prepared
        assert set(new_leader.mp.adopt(self.now)) == prepared
        self.leader = new_leader
        if rebuild_from_snapshot:
            follower = new_core(loaded=False)
            follower.restore(new_leader.state_copy())
            follower.restore_entries(new_leader.kept_entries())
        else:
            follower = new_core()
            follower.apply_redo(self.history)
        assert set(follower.mp.pending) == prepared
        for request_id, reply in self.replies.items():
            assert follower.recall(request_id) == reply
        self.follower = follower

    def finish_all(self, outcomes) -> None:
        for i, slot in enumerate(self.slots):
            if slot.state is not None:
                self.end(slot, outcomes[i], via_holder=bool(i % 2))
                self.check()


@INTERLEAVE_SETTINGS
@given(steps=st.lists(step, min_size=10, max_size=40), via_codec=st.booleans(),
       outcomes=st.lists(st.sampled_from([OUTCOME_COMMIT, OUTCOME_ABORT]), min_size=N_SLOTS, max_size=N_SLOTS))
def test_random_interleavings_match_a_model_of_committed_txns(steps, via_codec, outcomes):
    run = Interleaving(via_codec)
    run.check()
    for s in steps:
        run.step(s)
        run.check()
    run.finish_all(outcomes)
    leader, follower = run.leader, run.follower
    assert tables_of(leader) == tables_of(follower) == run.model
    assert not leader.mp.locks and leader.mp.locks.holders() == [] and leader.mp.open == {}
    assert leader.mp.locks.idle()  # no scan left waiting either
    assert follower.mp.pending == {} and leader.mp.pending == {}
    for request_id, reply in run.replies.items():
        assert leader.recall(request_id) == reply
        assert follower.recall(request_id) == reply
    # no SP txn is blocked any more
    for k in KEYS:
        for call in [("sp_get", (k,)), ("sp_set", (k, 1)), ("sp_sum", (k,))]:
            assert leader.execute_batch([call]).blocked_at is None
