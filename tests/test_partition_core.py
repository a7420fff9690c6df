"""Unit tests of the partition core (no Ray): atomicity, outcomes, redo, bad input.

The model-based tests run random batches against a ``PartitionCore`` and against
a deliberately naive model: every transaction of the model works on a deep copy
of the state and the copy replaces the state only if the procedure returns
normally.  So the model cannot half-apply anything, and any difference from the
core (which writes in place and rolls back from an undo log) is a core bug.
"""

import copy
import decimal
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.errors import (
    BatchTooLarge, DuplicateKey, InvalidArguments, KeyNotFound, OhmError, ProcedureFailed,
    ReadOnlyViolation, SchemaViolation, UnknownProcedure, UserAbort, WrongPartition,
)
from actors.participant import MP_TXN_BIT
from actors.partition_core import PartitionCore, is_failure
from actors.routing import partition_of
from actors.schema import Schema, Table, procedure
from recovery.log_format import LogCodec
from recovery.redo import DELETE, INSERT, UPDATE

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

# Deterministic (derandomize) and without an example database on disk.
MODEL_SETTINGS = settings(
    max_examples=120, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
REPLAY_SETTINGS = settings(MODEL_SETTINGS, max_examples=80)

# --- schema ------------------------------------------------------------------------

KV = Table(
    "kv",
    pa.schema([pa.field("id", pa.int64()), pa.field("val", pa.int64(), nullable=False), pa.field("note", pa.string())]),
    primary_key="id", partition_by="id",
)
ACCT = Table(
    "acct",
    pa.schema([
        pa.field("region", pa.string()), pa.field("id", pa.int64()),
        pa.field("bal", pa.int64(), nullable=False), pa.field("tag", pa.string()),
    ]),
    primary_key=["region", "id"], partition_by="region",
)
REF = Table("ref", pa.schema([("code", pa.string()), ("name", pa.string())]), primary_key="code", replicated=True)
TYPED = Table(
    "typed",
    pa.schema([
        pa.field("id", pa.int64()), pa.field("small", pa.int8()), pa.field("mid", pa.int32()),
        pa.field("ratio", pa.float64()), pa.field("flag", pa.bool_()),
        pa.field("name", pa.string(), nullable=False), pa.field("blob", pa.binary()),
        pa.field("tags", pa.list_(pa.int64())), pa.field("price", pa.decimal128(5, 2)),
    ]),
    primary_key="id", partition_by="id",
)


@procedure(partition_by="p")
def script(tx, p: int, ops: list, ending: str):
    """Run ``ops`` ((method, *args) tuples) in order, then commit, abort or raise."""
    out = []
    for method, *op_args in ops:
        out.append(getattr(tx, method)(*op_args))
    if ending == "abort":
        tx.abort(f"script aborted after {len(ops)} ops")
    if ending == "raise":
        raise ValueError(f"script failed after {len(ops)} ops")
    return out


@procedure(partition_by="id")
def kv_insert(tx, id: int, val: int, note: str | None = None):
    tx.insert("kv", {"id": id, "val": val, "note": note})


@procedure(partition_by="id")
def kv_update(tx, id: int, val: int):
    return tx.update("kv", id, {"val": val})


@procedure(partition_by="id")
def kv_upsert(tx, id: int, val: int, note: str | None = None):
    tx.upsert("kv", {"id": id, "val": val, "note": note})


@procedure(partition_by="id")
def kv_delete(tx, id: int):
    tx.delete("kv", id)


@procedure(partition_by="id")
def kv_get(tx, id: int):
    return tx.get("kv", id)


@procedure(partition_by="region")
def transfer(tx, region: str, src: int, dst: int, amount: int):
    """Debit, then credit (KeyNotFound midway if dst is missing), then maybe abort."""
    row = tx.get("acct", (region, src))
    if row is None:
        tx.abort(f"no account {src}")
    tx.update("acct", (region, src), {"bal": row["bal"] - amount})
    dst_row = tx.get("acct", (region, dst))
    tx.update("acct", (region, dst), {"bal": (0 if dst_row is None else dst_row["bal"]) + amount})
    if row["bal"] - amount < 0:
        tx.abort("insufficient funds")
    return row["bal"] - amount


@procedure(partition_by="id", read_only=True)
def kv_read_only_write(tx, id: int):
    tx.insert("kv", {"id": id, "val": 0, "note": None})


@procedure(multi_partition=True, read_only=True)
def kv_total(tx):
    return 0


PROCEDURES = [script, kv_insert, kv_update, kv_upsert, kv_delete, kv_get, transfer, kv_read_only_write, kv_total]
SCHEMA = Schema([KV, ACCT, REF, TYPED], PROCEDURES)


def new_core(partitions: int = 1, partition: int = 0, **kw) -> PartitionCore:
    return PartitionCore(SCHEMA, partition, partitions, **kw)


# --- the model ------------------------------------------------------------------------

# Column rules of the model for the two tables the random tests write:
# (python type, nullable); every int column is int64.
MODEL_COLUMNS = {
    "kv": {"id": (int, False), "val": (int, False), "note": (str, True)},
    "acct": {"region": (str, False), "id": (int, False), "bal": (int, False), "tag": (str, True)},
}
MODEL_PK = {"kv": ("id",), "acct": ("region", "id")}


class ModelTx:
    """The TxContext API over plain dicts, with no undo log at all."""

    def __init__(self, state: dict) -> None:
        self.state = state
        self.writes = 0

    def _check_row(self, table: str, row: dict, full: bool) -> dict:
        cols = MODEL_COLUMNS[table]
        if set(row) - set(cols) or (full and set(row) != set(cols)):
            raise SchemaViolation("columns")
        if not full and set(row) & set(MODEL_PK[table]):
            raise SchemaViolation("pk change")
        for col, v in row.items():
            kind, nullable = cols[col]
            if v is None:
                if not nullable:
                    raise SchemaViolation("null")
            elif not isinstance(v, kind) or isinstance(v, bool) or (kind is int and not INT64_MIN <= v <= INT64_MAX):
                raise SchemaViolation("type")
        return dict(row)

    def _key(self, table: str, row: dict) -> Any:
        pk = MODEL_PK[table]
        return row[pk[0]] if len(pk) == 1 else tuple(row[c] for c in pk)

    def get(self, table, key):
        row = self.state[table].get(key)
        return None if row is None else dict(row)

    def count(self, table):
        return len(self.state[table])

    def insert(self, table, row):
        clean = self._check_row(table, row, full=True)
        key = self._key(table, clean)
        if key in self.state[table]:
            raise DuplicateKey("dup")
        self.state[table][key] = clean
        self.writes += 1

    def upsert(self, table, row):
        clean = self._check_row(table, row, full=True)
        self.state[table][self._key(table, clean)] = clean
        self.writes += 1

    def update(self, table, key, changes):
        if key not in self.state[table]:
            raise KeyNotFound("missing")
        new = {**self.state[table][key], **self._check_row(table, changes, full=False)}
        self.state[table][key] = new
        self.writes += 1
        return dict(new)

    def delete(self, table, key):
        if key not in self.state[table]:
            raise KeyNotFound("missing")
        del self.state[table][key]
        self.writes += 1

    def abort(self, reason="aborted by procedure"):
        raise UserAbort(str(reason), reason=str(reason))


# Loaded before every random run (into core and model alike), so that updates,
# deletes and transfers find rows about half the time.
INITIAL_ROWS = {
    "kv": [{"id": i, "val": i, "note": None} for i in (0, 2, 4)],
    "acct": [{"region": r, "id": i, "bal": 5, "tag": None} for r in ("eu", "us") for i in (0, 1)],
}


def loaded_core() -> PartitionCore:
    core = new_core()
    for table, rows in INITIAL_ROWS.items():
        core.load(table, rows)
    return core


class Model:
    def __init__(self) -> None:
        self.state: dict = {"kv": {}, "acct": {}, "ref": {}, "typed": {}}
        for table, rows in INITIAL_ROWS.items():
            for row in rows:
                self.state[table][ModelTx(self.state)._key(table, row)] = dict(row)
        self.counters = {"committed": 0, "aborted": 0, "failed": 0}

    def run(self, name: str, args: tuple) -> tuple[Any, OhmError | None, int]:
        """(result, expected error, writes of a committed txn)."""
        tx = ModelTx(copy.deepcopy(self.state))
        try:
            result = SCHEMA.procedures[name].func(tx, *args)
        except UserAbort as err:
            self.counters["aborted"] += 1
            return None, err, 0
        except OhmError as err:
            self.counters["failed"] += 1
            return None, err, 0
        except Exception as exc:
            self.counters["failed"] += 1
            return None, ProcedureFailed("", exception=type(exc).__name__), 0
        self.state = tx.state
        self.counters["committed"] += 1
        return result, None, tx.writes


# --- strategies ---------------------------------------------------------------------------

# Mostly good values; about one in four is refused by the int64, non-null `val` and `bal` columns.
BAD_VALUES = ("x", None, INT64_MAX + 1, 1.5, True)
values = st.integers(-5, 10 + len(BAD_VALUES)).map(lambda v: BAD_VALUES[v - 11] if v > 10 else v)
good_values = st.integers(-5, 10)
notes = st.none() | st.sampled_from(["a", "b"])
kv_ids = st.integers(0, 4)
regions = st.sampled_from(["eu", "us"])
acct_ids = st.integers(0, 2)
acct_keys = st.tuples(regions, acct_ids)

kv_rows = st.builds(lambda i, v, n: {"id": i, "val": v, "note": n}, kv_ids, values, notes)
acct_rows = st.builds(lambda k, b, t: {"region": k[0], "id": k[1], "bal": b, "tag": t}, acct_keys, values, notes)
kv_changes = st.fixed_dictionaries({}, optional={"val": values, "note": notes})
acct_changes = st.fixed_dictionaries({}, optional={"bal": values, "tag": notes})

ops = st.one_of(
    st.tuples(st.sampled_from(["insert", "upsert"]), st.just("kv"), kv_rows),
    st.tuples(st.sampled_from(["insert", "upsert"]), st.just("acct"), acct_rows),
    st.tuples(st.just("update"), st.just("kv"), kv_ids, kv_changes),
    st.tuples(st.just("update"), st.just("acct"), acct_keys, acct_changes),
    st.tuples(st.sampled_from(["delete", "get"]), st.just("kv"), kv_ids),
    st.tuples(st.sampled_from(["delete", "get"]), st.just("acct"), acct_keys),
    st.tuples(st.just("count"), st.sampled_from(["kv", "acct"])),
)

script_calls = st.tuples(st.just("script"), st.tuples(st.just(0), st.lists(ops, max_size=6),
                                                     st.sampled_from(["commit", "commit", "abort", "raise"])))
single_op_calls = st.one_of(
    st.tuples(st.just("kv_insert"), st.tuples(kv_ids, values.filter(lambda v: type(v) is int), notes)),
    st.tuples(st.just("kv_upsert"), st.tuples(kv_ids, good_values, notes)),
    st.tuples(st.just("kv_update"), st.tuples(kv_ids, good_values)),
    st.tuples(st.just("kv_delete"), st.tuples(kv_ids)),
    st.tuples(st.just("kv_get"), st.tuples(kv_ids)),
    st.tuples(st.just("transfer"), st.tuples(regions, acct_ids, acct_ids, st.integers(0, 8))),
)
# st.one_of flattens nested one_ofs and picks each branch alike: listing the scripts
# three times (as distinct strategy objects) makes a third of the calls multi-write scripts.
calls = st.one_of(script_calls, script_calls.map(tuple), script_calls.map(list), single_op_calls)
batches = st.lists(st.lists(calls, max_size=8), min_size=1, max_size=6)


def assert_same_error(got: OhmError, want: OhmError) -> None:
    assert type(got) is type(want), (got, want)
    if isinstance(want, UserAbort):
        assert got.message == want.message
        assert got.details["reason"] == want.message
    if isinstance(want, ProcedureFailed):
        assert got.details["exception"] == want.details["exception"]
        assert want.details["exception"] in got.message


# --- model-based tests ------------------------------------------------------------------------


@MODEL_SETTINGS
@given(batches)
def test_random_transactions_match_the_copy_on_begin_model(batch_list):
    core, model = loaded_core(), Model()
    assert core.tables == model.state
    for batch in batch_list:
        out = core.execute_batch(batch)
        assert len(out.results) == len(batch)
        failed_idx, writing_txns = set(), 0
        for i, (name, args) in enumerate(batch):
            want_result, want_err, writes = model.run(name, args)
            if want_err is None:
                assert i not in out.errors, (batch[i], out.errors.get(i))
                assert out.results[i] == want_result
                writing_txns += writes > 0
            else:
                failed_idx.add(i)
                assert i in out.errors, (batch[i], "should have failed with", want_err)
                assert_same_error(out.errors[i], want_err)
                assert out.results[i] is None
        assert set(out.errors) == failed_idx
        assert core.tables == model.state
        assert core.counters() == model.counters
        # Redo carries committed writing transactions only, each under its own id, in order.
        ids = [r.txn_id for r in out.redo]
        assert ids == sorted(ids)
        assert len(set(ids)) == writing_txns
        assert {r.op for r in out.redo} <= {INSERT, UPDATE, DELETE}


@REPLAY_SETTINGS
@given(batches)
def test_redo_replay_reproduces_the_leader(batch_list):
    """Through the log's encoding, as a follower gets it (apply_redo stores decoded rows as they are)."""
    leader, follower = new_core(), new_core()
    codec, lsn = LogCodec(SCHEMA), 1
    for batch in batch_list:
        out = leader.execute_batch(batch)
        if out.redo:
            encoded, _ = codec.encode(out.redo, lsn, 1)
            lsn += len(out.redo)
            follower.apply_redo(codec.decode(encoded))
        assert follower.tables == leader.tables
    # The follower's rows are its own: changing them cannot reach the leader.
    for name, rows in follower.tables.items():
        for key, row in rows.items():
            assert row is not leader.tables[name][key]
            row["__poison__"] = 1
    assert all("__poison__" not in row for rows in leader.tables.values() for row in rows.values())


@REPLAY_SETTINGS
@given(batches)
def test_redo_replay_of_all_batches_at_once_onto_a_loaded_follower(batch_list):
    """Replaying the concatenated redo onto a core that got the same initial load."""
    leader, follower = loaded_core(), loaded_core()
    redo = []
    for batch in batch_list:
        redo.extend(leader.execute_batch(batch).redo)
    follower.apply_redo(redo)
    assert follower.tables == leader.tables


# --- execute_batch outcome contract ----------------------------------------------------------


@procedure(partition_by="p")
def abort_with(tx, p: int, reason: str):
    tx.insert("kv", {"id": 100, "val": 1, "note": None})
    tx.abort(reason)


@procedure(partition_by="p")
def raise_plain(tx, p: int, message: str):
    tx.insert("kv", {"id": 101, "val": 1, "note": None})
    raise ValueError(message)


@procedure(partition_by="p")
def raise_key_error(tx, p: int):
    tx.insert("kv", {"id": 102, "val": 1, "note": None})
    return {}["missing"]


@procedure(partition_by="p")
def abort_default(tx, p: int):
    tx.abort()


OUTCOME_SCHEMA = Schema([KV, ACCT, REF, TYPED], PROCEDURES + [abort_with, raise_plain, raise_key_error, abort_default])


def test_execute_batch_outcome_contract():
    core = PartitionCore(OUTCOME_SCHEMA, 0, 1)
    calls = [
        ("kv_insert", (1, 10, "one")),          # 0 commit
        ("abort_with", (0, "not today")),        # 1 user abort
        ("kv_get", (1,)),                        # 2 commit: sees txn 0
        ("raise_plain", (0, "boom")),            # 3 ValueError
        ("no_such_proc", ()),                    # 4 unknown procedure
        ("kv_insert", (1, 11)),                  # 5 duplicate key
        ("kv_update", ("1", 5)),                 # 6 wrong argument type
        "not a pair at all",                     # 7 malformed call
        ("raise_key_error", (0,)),               # 8 KeyError
        ("abort_default", (0,)),                 # 9 abort without a reason
        ("kv_update", (1, 12)),                  # 10 commit
        ("kv_total", ()),                        # 11 multi-partition procedure on one partition
    ]
    out = core.execute_batch(calls)
    assert len(out.results) == len(calls)
    assert out.results[0] is None
    assert out.results[2] == {"id": 1, "val": 10, "note": "one"}
    assert out.results[10] == {"id": 1, "val": 12, "note": "one"}
    assert sorted(out.errors) == [1, 3, 4, 5, 6, 7, 8, 9, 11]
    for i in out.errors:
        assert out.results[i] is None
        assert isinstance(out.errors[i], OhmError)

    abort = out.errors[1]
    assert type(abort) is UserAbort and abort.code == "USER_ABORT"
    assert abort.message == "not today" and abort.details == {"reason": "not today"}

    failed = out.errors[3]
    assert type(failed) is ProcedureFailed
    assert failed.details["procedure"] == "raise_plain"
    assert failed.details["exception"] == "ValueError"
    assert "ValueError" in failed.message and "boom" in failed.message
    assert "ValueError: boom" in failed.details["traceback"]

    assert type(out.errors[4]) is UnknownProcedure and out.errors[4].details["procedure"] == "no_such_proc"
    assert type(out.errors[5]) is DuplicateKey
    assert type(out.errors[6]) is InvalidArguments and out.errors[6].details["argument"] == "id"
    assert type(out.errors[7]) is InvalidArguments and out.errors[7].details["index"] == 7
    assert type(out.errors[8]) is ProcedureFailed and out.errors[8].details["exception"] == "KeyError"
    assert type(out.errors[9]) is UserAbort and out.errors[9].message == "aborted by procedure"
    assert type(out.errors[11]) is InvalidArguments and out.errors[11].details["procedure"] == "kv_total"

    assert core.counters() == {"committed": 3, "aborted": 2, "failed": 7}
    assert core.tables["kv"] == {1: {"id": 1, "val": 12, "note": "one"}}
    assert [(r.op, r.table, r.key) for r in out.redo] == [(INSERT, "kv", 1), (UPDATE, "kv", 1)]
    assert out.redo[1].row == {"id": 1, "val": 12, "note": "one"}


def test_execute_batch_accepts_list_args_and_a_bare_single_argument():
    core = new_core()
    out = core.execute_batch([("kv_insert", [3, 30]), ("kv_get", 3)])
    assert out.errors == {}
    assert out.results == [None, {"id": 3, "val": 30, "note": None}]


def test_empty_batch():
    core = new_core()
    out = core.execute_batch([])
    assert out.results == [] and out.errors == {} and out.redo == []
    assert core.counters() == {"committed": 0, "aborted": 0, "failed": 0}


def test_txn_ids_are_unique_and_carry_the_partition():
    partitions = 4
    pid = 2
    id_here = next(i for i in range(1000) if partition_of(i, partitions) == pid)
    core = new_core(partitions=partitions, partition=pid)
    out = core.execute_batch([("kv_insert", (id_here, 1)), ("kv_update", (id_here, 2)), ("kv_delete", (id_here,))])
    assert out.errors == {}
    ids = [r.txn_id for r in out.redo]
    assert len(set(ids)) == 3
    assert all(i >> 40 == pid for i in ids)
    assert [r.op for r in out.redo] == [INSERT, UPDATE, DELETE]


# --- partitions > 1 ------------------------------------------------------------------------

PARTITIONS = 4


def _ids_on(partition: int, n: int) -> list[int]:
    return [i for i in range(10_000) if partition_of(i, PARTITIONS) == partition][:n]


def _ids_off(partition: int, n: int) -> list[int]:
    return [i for i in range(10_000) if partition_of(i, PARTITIONS) != partition][:n]


def _region_on(partition: int, on: bool) -> str:
    return next(r for r in (f"r{i}" for i in range(1000)) if (partition_of(r, PARTITIONS) == partition) == on)


def test_procedure_touching_another_partition_gets_wrong_partition_and_changes_nothing():
    core = new_core(partitions=PARTITIONS, partition=0)
    here, there = _ids_on(0, 2), _ids_off(0, 1)[0]
    core.load("kv", [{"id": here[0], "val": 1, "note": None}])
    before = copy.deepcopy(core.tables)
    attempts = [
        # writes on this partition first, then a key of another partition
        [("update", "kv", here[0], {"val": 2}), ("insert", "kv", {"id": here[1], "val": 3, "note": None}),
         ("insert", "kv", {"id": there, "val": 4, "note": None})],
        [("insert", "kv", {"id": here[1], "val": 3, "note": None}), ("get", "kv", there)],
        [("delete", "kv", here[0]), ("upsert", "kv", {"id": there, "val": 4, "note": None})],
        [("update", "kv", here[0], {"val": 2}), ("update", "kv", there, {"val": 5})],
        [("update", "kv", here[0], {"val": 2}), ("delete", "kv", there)],
    ]
    out = core.execute_batch([("script", (here[0], steps, "commit")) for steps in attempts])
    assert sorted(out.errors) == list(range(len(attempts)))
    for err in out.errors.values():
        assert type(err) is WrongPartition
        assert err.details["partition"] == 0 and err.details["table"] == "kv"
    assert core.tables == before
    assert out.redo == []
    assert core.counters() == {"committed": 0, "aborted": 0, "failed": len(attempts)}


def test_composite_key_routes_by_its_partition_column_only():
    core = new_core(partitions=PARTITIONS, partition=1)
    home, away = _region_on(1, True), _region_on(1, False)
    p = _ids_on(1, 1)[0]
    rows = [{"region": home, "id": i, "bal": i, "tag": None} for i in range(50)]
    assert core.load("acct", rows) == 50          # every id of a home region lives here
    out = core.execute_batch([
        ("transfer", (home, 0, 1, 0)),                                                  # fine
        ("script", (p, [("update", "acct", (home, 2), {"bal": 0}),
                           ("get", "acct", (away, 2))], "commit")),                   # reaches away
        ("transfer", (away, 0, 1, 0)),                                                  # routed away
    ])
    assert sorted(out.errors) == [1, 2]
    assert type(out.errors[1]) is WrongPartition and type(out.errors[2]) is WrongPartition
    assert core.tables["acct"][(home, 2)]["bal"] == 2
    # A routing argument of another partition is refused before the body runs.
    assert "procedure" in out.errors[2].details and core.txn_seq == 2


def test_routing_argument_of_another_partition_is_refused_before_running():
    core = new_core(partitions=PARTITIONS, partition=3)
    there = _ids_off(3, 1)[0]
    out = core.execute_batch([("kv_insert", (there, 1))])
    assert type(out.errors[0]) is WrongPartition
    assert out.errors[0].details == {"procedure": "kv_insert", "partition": 3}
    assert core.tables["kv"] == {} and core.txn_seq == 0
    assert core.counters()["failed"] == 1


def test_load_of_another_partitions_row_is_all_or_nothing():
    core = new_core(partitions=PARTITIONS, partition=0)
    rows = [{"id": i, "val": 0, "note": None} for i in _ids_on(0, 3)]
    rows.append({"id": _ids_off(0, 1)[0], "val": 0, "note": None})
    with pytest.raises(WrongPartition):
        core.load("kv", rows)
    assert core.tables["kv"] == {}
    # replicated rows belong on every partition
    for p in range(PARTITIONS):
        assert new_core(partitions=PARTITIONS, partition=p).load("ref", [{"code": "x", "name": "X"}]) == 1


def test_partition_core_rejects_a_partition_outside_the_range():
    with pytest.raises(ValueError):
        PartitionCore(SCHEMA, 4, 4)
    with pytest.raises(ValueError):
        PartitionCore(SCHEMA, -1, 4)


# --- bad input: typed error, nothing changed --------------------------------------------------


@pytest.fixture
def core() -> PartitionCore:
    c = new_core()
    c.load("kv", [{"id": i, "val": i * 10, "note": None} for i in range(1, 4)])
    c.load("acct", [{"region": "eu", "id": 1, "bal": 5, "tag": "t"}])
    c.load("ref", [{"code": "a", "name": "A"}])
    c.load("typed", [{"id": 1, "small": 1, "mid": 1, "ratio": 1.0, "flag": True, "name": "n",
                      "blob": None, "tags": [1], "price": decimal.Decimal("1.50")}])
    return c


def assert_refused(core: PartitionCore, call, err_type: type, *fragments: str, **details) -> OhmError:
    before = copy.deepcopy(core.tables)
    counters = core.counters()
    out = core.execute_batch([call])
    assert list(out.errors) == [0], out.errors
    err = out.errors[0]
    assert type(err) is err_type, err
    for fragment in fragments:
        assert fragment in err.message, (fragment, err.message)
    for k, v in details.items():
        assert err.details.get(k) == v, (k, err.details)
    assert out.results == [None] and out.redo == []
    assert core.tables == before
    counters["aborted" if err_type is UserAbort else "failed"] += 1
    assert core.counters() == counters
    return err


GOOD_FIRST = ("insert", "kv", {"id": 50, "val": 1, "note": None})   # each bad step follows a good write
TYPED_ROW = {"id": 2, "small": 1, "mid": 1, "ratio": 1.0, "flag": False, "name": "n", "blob": b"", "tags": [],
             "price": None}


def typed(**changes) -> dict:
    return {**TYPED_ROW, **changes}


BAD_STEPS = [
    pytest.param(("insert", "nope", {"id": 1}), SchemaViolation, ["unknown table 'nope'"], {}, id="unknown-table"),
    pytest.param(("get", "nope", 1), SchemaViolation, ["unknown table"], {}, id="unknown-table-read"),
    pytest.param(("scan", "nope"), SchemaViolation, ["unknown table"], {}, id="unknown-table-scan"),
    pytest.param(("insert", "kv", {"id": 9, "val": 1}), SchemaViolation, ["missing column", "note"],
                 {"column": "note"}, id="missing-column"),
    pytest.param(("insert", "kv", {"id": 9, "val": 1, "note": None, "extra": 2}), SchemaViolation,
                 ["unknown column", "extra"], {"column": "extra"}, id="unknown-column"),
    pytest.param(("update", "kv", 1, {"bogus": 1}), SchemaViolation, ["unknown column", "bogus"], {},
                 id="unknown-column-update"),
    pytest.param(("insert", "kv", {"id": 9, "val": "7", "note": None}), SchemaViolation, ["'val'"],
                 {"column": "val"}, id="str-into-int64"),
    pytest.param(("insert", "kv", {"id": 9, "val": 7.0, "note": None}), SchemaViolation, ["'val'"],
                 {"column": "val"}, id="float-into-int64"),
    pytest.param(("insert", "kv", {"id": 9, "val": True, "note": None}), SchemaViolation, ["'val'"],
                 {"column": "val"}, id="bool-into-int64"),
    pytest.param(("insert", "kv", {"id": 9, "val": INT64_MAX + 1, "note": None}), SchemaViolation,
                 ["out of range"], {"column": "val"}, id="int64-overflow"),
    pytest.param(("insert", "kv", {"id": "9", "val": 1, "note": None}), SchemaViolation, ["'id'"],
                 {"column": "id"}, id="str-key"),
    pytest.param(("insert", "kv", {"id": 9, "val": 1, "note": 3}), SchemaViolation, ["'note'"],
                 {"column": "note"}, id="int-into-string"),
    pytest.param(("insert", "kv", {"id": 9, "val": None, "note": None}), SchemaViolation, ["may not be null"],
                 {"column": "val"}, id="none-non-nullable"),
    pytest.param(("insert", "kv", {"id": None, "val": 1, "note": None}), SchemaViolation, ["may not be null"],
                 {"column": "id"}, id="none-key"),
    pytest.param(("update", "kv", 1, {"val": None}), SchemaViolation, ["may not be null"], {}, id="update-to-none"),
    pytest.param(("insert", "typed", typed(small=128)), SchemaViolation, ["out of range", "int8"],
                 {"column": "small"}, id="int8-overflow"),
    pytest.param(("insert", "typed", typed(small=-129)), SchemaViolation, ["out of range"],
                 {"column": "small"}, id="int8-underflow"),
    pytest.param(("insert", "typed", typed(mid=1 << 31)), SchemaViolation, ["out of range", "int32"],
                 {"column": "mid"}, id="int32-overflow"),
    pytest.param(("insert", "typed", typed(ratio="1.0")), SchemaViolation, ["'ratio'"], {"column": "ratio"},
                 id="str-into-float"),
    pytest.param(("insert", "typed", typed(ratio=False)), SchemaViolation, ["'ratio'"], {"column": "ratio"},
                 id="bool-into-float"),
    pytest.param(("insert", "typed", typed(flag=1)), SchemaViolation, ["'flag'"], {"column": "flag"},
                 id="int-into-bool"),
    pytest.param(("insert", "typed", typed(name=None)), SchemaViolation, ["may not be null"], {"column": "name"},
                 id="none-into-non-nullable-string"),
    pytest.param(("insert", "typed", typed(blob="text")), SchemaViolation, ["'blob'"], {"column": "blob"},
                 id="str-into-binary"),
    pytest.param(("insert", "typed", typed(tags=["a"])), SchemaViolation, ["'tags'"], {"column": "tags"},
                 id="bad-list-element"),
    pytest.param(("insert", "typed", typed(price=1.5)), SchemaViolation, ["'price'"], {"column": "price"},
                 id="float-into-decimal"),
    pytest.param(("insert", "kv", "not a dict"), SchemaViolation, ["must be a dict"], {}, id="row-not-dict"),
    pytest.param(("update", "kv", 1, ["val", 1]), SchemaViolation, ["must be a dict"], {}, id="changes-not-dict"),
    pytest.param(("get", "acct", "eu"), SchemaViolation, ["key must be a tuple"], {}, id="scalar-composite-key"),
    pytest.param(("get", "acct", ("eu", 1, 2)), SchemaViolation, ["key must be a tuple"], {},
                 id="long-composite-key"),
    pytest.param(("delete", "acct", ("eu", "1")), SchemaViolation, ["'id'"], {}, id="bad-composite-key-part"),
    pytest.param(("insert", "kv", {"id": 1, "val": 1, "note": None}), DuplicateKey, ["duplicate primary key"],
                 {"table": "kv"}, id="duplicate-key"),
    pytest.param(("insert", "kv", {"id": 50, "val": 2, "note": None}), DuplicateKey, ["duplicate"], {},
                 id="duplicate-of-own-write"),
    pytest.param(("insert", "acct", {"region": "eu", "id": 1, "bal": 0, "tag": None}), DuplicateKey, ["duplicate"],
                 {}, id="duplicate-composite-key"),
    pytest.param(("update", "kv", 99, {"val": 1}), KeyNotFound, ["to update"], {"table": "kv"}, id="update-missing"),
    pytest.param(("delete", "kv", 99), KeyNotFound, ["to delete"], {"table": "kv"}, id="delete-missing"),
    pytest.param(("update", "acct", ("us", 1), {"bal": 1}), KeyNotFound, [], {}, id="update-missing-composite"),
    pytest.param(("update", "kv", 1, {"id": 2}), SchemaViolation, ["primary-key column 'id'"], {"column": "id"},
                 id="update-changes-pk"),
    pytest.param(("update", "kv", 1, {"id": 1}), SchemaViolation, ["primary-key column"], {},
                 id="update-sets-pk-to-same-value"),
    pytest.param(("update", "acct", ("eu", 1), {"region": "us"}), SchemaViolation, ["primary-key column 'region'"],
                 {}, id="update-changes-partition-column"),
    pytest.param(("insert", "ref", {"code": "b", "name": "B"}), ReadOnlyViolation, ["replicated"],
                 {"table": "ref"}, id="insert-replicated"),
    pytest.param(("upsert", "ref", {"code": "a", "name": "B"}), ReadOnlyViolation, ["replicated"], {},
                 id="upsert-replicated"),
    pytest.param(("update", "ref", "a", {"name": "B"}), ReadOnlyViolation, ["replicated"], {},
                 id="update-replicated"),
    pytest.param(("delete", "ref", "a"), ReadOnlyViolation, ["replicated"], {}, id="delete-replicated"),
]


@pytest.mark.parametrize("bad_step, err_type, fragments, details", BAD_STEPS)
def test_bad_write_after_a_good_one_is_typed_and_rolls_back(core, bad_step, err_type, fragments, details):
    assert_refused(core, ("script", (0, [GOOD_FIRST, bad_step], "commit")), err_type, *fragments, **details)


@pytest.mark.parametrize("bad_step", [p.values[0] for p in BAD_STEPS])
def test_caught_bad_write_leaves_nothing_behind(core, bad_step):
    """A procedure that catches the typed error and commits keeps only its good writes."""

    @procedure(partition_by="p")
    def catcher(tx, p: int, step: tuple):
        tx.insert(*GOOD_FIRST[1:])
        method, *op_args = step
        try:
            getattr(tx, method)(*op_args)
        except OhmError as err:
            return type(err).__name__
        return "no error"

    c = PartitionCore(Schema([KV, ACCT, REF, TYPED], [catcher]), 0, 1)
    for name, rows in core.tables.items():
        c.load(name, rows.values())
    before = copy.deepcopy(c.tables)
    out = c.execute_batch([("catcher", (0, bad_step))])
    assert out.errors == {}
    assert out.results[0] != "no error"
    assert c.tables == {**before, "kv": {**before["kv"], 50: GOOD_FIRST[2]}}
    assert [(r.op, r.key) for r in out.redo] == [(INSERT, 50)]


BAD_CALLS = [
    pytest.param(("nope", (1,)), UnknownProcedure, ["unknown procedure 'nope'"], id="unknown-procedure"),
    pytest.param((None, ()), UnknownProcedure, [], id="none-procedure-name"),
    pytest.param(("kv_insert", (1,)), InvalidArguments, ["takes 2..3 argument(s)"], id="too-few-args"),
    pytest.param(("kv_insert", (1, 2, "n", 4)), InvalidArguments, ["got 4"], id="too-many-args"),
    pytest.param(("kv_get", ()), InvalidArguments, ["got 0"], id="no-args"),
    pytest.param(("kv_insert", ("7", 1)), InvalidArguments, ["argument 'id' must be int"], id="str-for-int"),
    pytest.param(("kv_insert", (True, 1)), InvalidArguments, ["argument 'id'"], id="bool-for-int"),
    pytest.param(("kv_insert", (7, 1.0)), InvalidArguments, ["argument 'val'"], id="float-for-int"),
    pytest.param(("kv_insert", (7, 1, 5)), InvalidArguments, ["argument 'note' must be str or None"],
                 id="int-for-optional-str"),
    pytest.param(("kv_insert", (None, 1)), InvalidArguments, ["argument 'id'"], id="none-for-int"),
    pytest.param(("transfer", (1, 1, 1, 1)), InvalidArguments, ["argument 'region'"], id="int-for-str"),
    pytest.param(("script", (0, "not a list", "commit")), InvalidArguments, ["argument 'ops' must be list"],
                 id="str-for-list"),
    pytest.param(("kv_total", ()), InvalidArguments, ["multi-partition"], id="multi-partition"),
    pytest.param(("kv_read_only_write", (9,)), ReadOnlyViolation, ["read-only"], id="read-only-procedure-write"),
    pytest.param(("script", (0, [GOOD_FIRST], "abort")), UserAbort, ["script aborted after 1 ops"], id="abort"),
    pytest.param(("script", (0, [GOOD_FIRST], "raise")), ProcedureFailed, ["ValueError"], id="raise"),
]


@pytest.mark.parametrize("call, err_type, fragments", BAD_CALLS)
def test_bad_call_is_typed_and_changes_nothing(core, call, err_type, fragments):
    seq = core.txn_seq
    assert_refused(core, call, err_type, *fragments)
    if err_type in (UnknownProcedure, InvalidArguments):
        assert core.txn_seq == seq, "argument errors are found before a transaction starts"


def test_batch_over_the_limit_is_refused_whole():
    core = new_core(batch_txns_max=3)
    ok = [("kv_insert", (i, i)) for i in range(3)]
    out = core.execute_batch(ok)
    assert out.errors == {}
    before, counters = copy.deepcopy(core.tables), core.counters()
    with pytest.raises(BatchTooLarge) as info:
        core.execute_batch([("kv_insert", (i, i)) for i in range(10, 14)])
    assert info.value.details == {"size": 4, "limit": 3}
    assert core.tables == before and core.counters() == counters and core.txn_seq == 3


def test_batch_limit_default_and_exact_fit():
    core = new_core(batch_txns_max=2)
    assert core.execute_batch([("kv_get", (1,)), ("kv_get", (2,))]).errors == {}
    assert new_core().batch_txns_max == 10_000


def test_run_fragment_is_read_only(core):
    before = copy.deepcopy(core.tables)

    def writer(tx, i):
        tx.insert("kv", {"id": i, "val": 0, "note": None})

    def read_then_write(tx):
        rows = tx.scan("kv")
        tx.update("kv", 1, {"val": -1})
        return rows

    def reader(tx, i):
        return tx.get("kv", i), tx.count("kv"), len(tx.scan("kv", lambda r: r["val"] > 10))

    txns = iter(range(1, 100))

    def run(fragment, args):
        """A fragment of a read-only MP txn, which then releases this partition."""
        txn = MP_TXN_BIT | next(txns)
        out = core.run_fragment_mp(txn, txn, fragment, tuple(args), now_s=0.0, read_only=True)
        core.mp.release(txn)
        return out

    for fragment, args in ((writer, (77,)), (read_then_write, ()), (lambda tx: tx.delete("kv", 1), ())):
        out = run(fragment, args)
        assert type(out.error) is ReadOnlyViolation and not out.wrote
        assert "read-only" in out.error.message
        assert core.tables == before
    assert run(reader, [2]).result == ({"id": 2, "val": 20, "note": None}, 3, 2)
    failed = run(lambda tx: 1 / 0, ())
    assert failed.error.details["exception"] == "ZeroDivisionError"
    assert core.tables == before and not core.mp.locks


def test_load_is_all_or_nothing(core):
    before = copy.deepcopy(core.tables)
    good = [{"id": i, "val": i, "note": None} for i in range(10, 15)]
    bad_rows = [
        (SchemaViolation, good + [{"id": 20, "val": "x", "note": None}]),
        (SchemaViolation, good + [{"id": 20, "val": 1}]),
        (SchemaViolation, good + [{"id": 20, "val": 1, "note": None, "more": 1}]),
        (SchemaViolation, good + [{"id": 20, "val": None, "note": None}]),
        (SchemaViolation, good + [["not", "a", "dict"]]),
        (DuplicateKey, good + [{"id": 10, "val": 1, "note": None}]),     # duplicate inside the load
        (DuplicateKey, good + [{"id": 1, "val": 1, "note": None}]),      # duplicate of a stored row
    ]
    for err_type, rows in bad_rows:
        with pytest.raises(err_type):
            core.load("kv", rows)
        assert core.tables == before
    with pytest.raises(SchemaViolation):
        core.load("nope", good)

    def exploding():
        yield from good
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError):
        core.load("kv", exploding())
    assert core.tables == before
    assert core.counters() == {"committed": 0, "aborted": 0, "failed": 0}
    assert core.load("kv", iter(good)) == 5
    assert core.tables["kv"][12] == {"id": 12, "val": 12, "note": None}


def test_load_normalizes_values():
    core = new_core()
    core.load("typed", [typed(id=5, ratio=3)])
    assert type(core.tables["typed"][5]["ratio"]) is float


# --- copies -------------------------------------------------------------------------------


@procedure(partition_by="p")
def mutate_reads(tx, p: int):
    row = tx.get("kv", 1)
    row["val"] = -1
    row["extra"] = "x"
    for r in tx.scan("kv"):
        r["val"] = -2
    for r in tx.scan("kv", lambda r: True):
        r.clear()
    updated = tx.update("kv", 2, {"note": "u"})
    updated["val"] = -3
    mine = {"id": 9, "val": 9, "note": None}
    tx.insert("kv", mine)
    mine["val"] = -4
    return tx.get("kv", 1)["val"], tx.get("kv", 2)["val"], tx.get("kv", 9)["val"]


def test_rows_handed_out_are_copies(core):
    c = PartitionCore(Schema([KV, ACCT, REF, TYPED], [mutate_reads]), 0, 1)
    c.load("kv", core.tables["kv"].values())
    out = c.execute_batch([("mutate_reads", (0,))])
    assert out.errors == {}
    assert out.results[0] == (10, 20, 9)
    assert c.tables["kv"][1] == {"id": 1, "val": 10, "note": None}
    assert c.tables["kv"][2] == {"id": 2, "val": 20, "note": "u"}
    assert c.tables["kv"][9] == {"id": 9, "val": 9, "note": None}
    # Redo after-images are not the dicts the procedure held either.
    assert {r.key: r.row for r in out.redo} == {2: c.tables["kv"][2], 9: c.tables["kv"][9]}


def test_loaded_rows_are_copies():
    core = new_core()
    row = {"id": 1, "val": 1, "note": None}
    core.load("kv", [row])
    row["val"] = 2
    assert core.tables["kv"][1]["val"] == 1


@procedure(partition_by="p")
def predicate_mutates(tx, p: int):
    tx.scan("kv", lambda r: r.update(val=-1) or True)
    tx.abort("look only")


def test_scan_predicate_cannot_change_storage(core):
    """Regression (found at 5786c2a): scan passed the stored row itself to the predicate."""
    c = PartitionCore(Schema([KV, ACCT, REF, TYPED], [predicate_mutates]), 0, 1)
    c.load("kv", core.tables["kv"].values())
    before = copy.deepcopy(c.tables)
    out = c.execute_batch([("predicate_mutates", (0,))])
    assert type(out.errors[0]) is UserAbort
    assert c.tables == before


@procedure(partition_by="p")
def append_tag_then_abort(tx, p: int):
    row = tx.get("typed", 1)
    row["tags"].append(99)
    for r in tx.scan("typed"):
        r["tags"].append(98)
    tx.abort("changed my mind")


@procedure(partition_by="p")
def keep_list_after_insert(tx, p: int):
    tags = [5]
    tx.insert("typed", typed(id=3, tags=tags))
    tags.append(6)
    changed = tx.update("typed", 3, {"name": "m"})
    changed["tags"].append(7)
    return tx.get("typed", 3)["tags"]


def test_nested_values_handed_out_are_copies(core):
    """Regression (found at 5786c2a): rows were copied shallowly, so a list value was shared
    with storage and an aborted transaction left a trace."""
    c = PartitionCore(Schema([KV, ACCT, REF, TYPED], [append_tag_then_abort, keep_list_after_insert]), 0, 1)
    c.load("typed", core.tables["typed"].values())
    out = c.execute_batch([("append_tag_then_abort", (0,)), ("keep_list_after_insert", (0,))])
    assert type(out.errors[0]) is UserAbort
    assert c.tables["typed"][1]["tags"] == [1]
    assert out.errors.keys() == {0}
    assert out.results[1] == [5]
    assert c.tables["typed"][3]["tags"] == [5]


def test_unhashable_procedure_name_is_a_typed_error_not_a_crash():
    """Regression (found at 5786c2a): the procedure lookup sat outside execute's try, so an
    unhashable name raised TypeError out of execute_batch after earlier transactions of the
    batch had committed (their redo was lost with the outcome)."""
    core = new_core()
    out = core.execute_batch([("kv_insert", (1, 1)), (["kv_insert"], (2, 2)), ({"a": 1}, ()), ("kv_get", (1,))])
    assert out.errors.keys() == {1, 2}
    assert all(isinstance(out.errors[i], (UnknownProcedure, InvalidArguments)) for i in (1, 2))
    assert out.results[3] == {"id": 1, "val": 1, "note": None}
    assert [r.key for r in out.redo] == [1]
    assert core.counters() == {"committed": 2, "aborted": 0, "failed": 2}


@pytest.mark.parametrize("price", [decimal.Decimal("12345.678"), decimal.Decimal("1000.00"), decimal.Decimal("0.001")])
def test_decimal_that_does_not_fit_the_column_is_refused(core, price):
    """Regression (found at 5786c2a): any Decimal was accepted, whatever the precision and scale."""
    assert_refused(core, ("script", (0, [GOOD_FIRST, ("insert", "typed", typed(price=price))], "commit")),
                   SchemaViolation, "'price'", column="price")


@pytest.mark.parametrize("price", [decimal.Decimal("999.99"), decimal.Decimal("-1.5"), decimal.Decimal("0")])
def test_decimal_that_fits_the_column_is_accepted(price):
    core = new_core()
    core.load("typed", [typed(price=price)])
    assert core.tables["typed"][2]["price"] == price


def test_a_context_kept_past_its_transaction_cannot_write():
    kept = []

    @procedure(partition_by="id")
    def leak(tx, id: int):
        kept.append(tx)

    core = PartitionCore(Schema([KV], [leak]), 0, 1)
    assert not is_failure(core.execute("leak", (1,), []))
    with pytest.raises(ReadOnlyViolation, match="has ended"):
        kept[0].insert("kv", {"id": 1, "val": 1, "note": None})
    assert core.tables["kv"] == {}


# --- single-partition batches meeting an open multi-partition txn -----------------------

def _mp_write(ftx, id: int, val: int):
    ftx.update("kv", id, {"val": val})


def test_a_batch_that_meets_a_locked_key_is_undone_whole_and_runs_again_later():
    """Nothing of a blocked batch stays applied or in its redo: the batch is all-or-nothing in the log,
    so a retry with its request id after a failover cannot apply a part of it twice."""
    core = new_core()
    core.execute_batch([("kv_insert", (1, 10)), ("kv_insert", (2, 20))])
    before = copy.deepcopy(core.tables)
    counters = core.counters()
    txn = MP_TXN_BIT | 1
    out = core.run_fragment_mp(txn, txn, _mp_write, (2, 99), now_s=0.0)
    assert out.error is None and out.conflict is None
    locked_state = copy.deepcopy(core.tables)

    blocked = core.execute_batch([("kv_update", (1, 11)), ("kv_insert", (3, 30)), ("kv_get", (2,))])
    assert (blocked.blocked_at, blocked.blocked_by) == (2, txn)
    assert blocked.redo == [] and blocked.results == [None, None, None] and blocked.errors == {}
    assert core.tables == locked_state and core.counters() == counters  # the first two were undone

    core.mp.abort(txn)
    assert core.tables == before
    again = core.execute_batch([("kv_update", (1, 11)), ("kv_insert", (3, 30)), ("kv_get", (2,))])
    assert again.blocked_at is None and again.errors == {}
    assert again.results[2] == {"id": 2, "val": 20, "note": None}
    assert core.tables["kv"][1]["val"] == 11 and 3 in core.tables["kv"]
    assert [r.op for r in again.redo] == [UPDATE, INSERT]


def test_the_remembered_partition_of_a_value_is_always_partition_of(monkeypatch):
    """``_partition_of`` remembers ints and strs only, and stays right after it forgets (bounded)."""
    import actors.partition_core as pc
    monkeypatch.setattr(pc, "HOMES_KEPT_MAX", 16)
    core = new_core(partitions=7, partition=3)
    values = [*range(-40, 40), *(f"k{n}" for n in range(40)), True, False, 2.0, 2.5, (1, "a"), b"x", 1 << 70]
    for _ in range(2):  # the second pass answers from what is remembered (or was forgotten)
        for value in values:
            assert core._partition_of(value) == partition_of(value, 7), value
    assert len(core._homes) <= 16
    assert all(type(v) in (int, str) for v in core._homes)


def test_replaying_a_record_with_an_unknown_op_is_refused():
    from recovery.redo import RedoRecord

    core = new_core()
    with pytest.raises(ValueError, match="unknown redo op 'BOGUS'"):
        core.apply_redo([RedoRecord(5, "BOGUS", "kv", 1, {"id": 1, "val": 1, "note": None})])
    assert core.tables["kv"] == {}
