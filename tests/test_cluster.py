"""Integration tests through real Ray actors: calls, batches, futures, bad input, connect."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

from actors import Cluster, Schema, Table, procedure
from actors.errors import (
    BatchTooLarge, ClusterExists, ClusterNotFound, DuplicateKey, InvalidArguments, InvalidConfig,
    KeyNotFound, OhmError, PartitionUnavailable, ProcedureFailed, Timeout, ReadOnlyViolation, SchemaViolation, UnknownProcedure,
    UserAbort, WrongPartition,
)
from actors import runtime
from actors.routing import partition_of
from tests import bank

PARTITIONS = 3
ACCOUNTS = 30


@pytest.fixture(scope="module")
def db(ray_address):
    cluster = Cluster.create(bank.schema(), partitions=PARTITIONS, name="test-bank", batch_txns_max=100,
                             initial_data={"branches": bank.BRANCHES})
    results = cluster.call_many("open_account", [(i, f"owner{i}", 100) for i in range(ACCOUNTS)])
    assert results == list(range(ACCOUNTS))
    yield cluster
    cluster.shutdown()


def test_call_returns_result_and_raises_typed_error(db):
    before = db.call("deposit", 1, 0)
    assert db.call("deposit", 1, 5) == before + 5
    with pytest.raises(UserAbort, match="no account 999") as info:
        db.call("deposit", 999, 5)
    assert isinstance(info.value, OhmError) and info.value.code == "USER_ABORT"


def test_call_many_keeps_input_order_across_partitions(db):
    ids = [7, 3, 29, 3, 11, 0, 7, 500, 18]
    assert len({partition_of(i, PARTITIONS) for i in ids}) == PARTITIONS
    start = {i: db.call("deposit", i, 0) for i in set(ids) - {500}}
    out = db.call_many("deposit", [(i, 1) for i in ids])
    seen: dict[int, int] = {}
    for i, value in zip(ids, out):
        if i == 500:
            assert isinstance(value, UserAbort)
            continue
        seen[i] = seen.get(i, 0) + 1
        assert value == start[i] + seen[i]


def test_call_async_completes_in_submission_order(db):
    start = db.call("deposit", 4, 0)
    futures = [db.call_async("deposit", 4, 1) for _ in range(40)]
    assert [f.result() for f in futures] == [start + n for n in range(1, 41)]
    assert all(f.done() for f in futures)
    with pytest.raises(UserAbort):
        db.call_async("deposit", 12345, 1).result()


def test_replicated_table_is_on_every_partition_and_read_only(db):
    # One account on each partition reads the replicated table locally.
    per_partition = {}
    for i in range(ACCOUNTS):
        per_partition.setdefault(partition_of(i, PARTITIONS), i)
    assert len(per_partition) == PARTITIONS
    for account in per_partition.values():
        assert db.call("branch_city", account, "OSL") == "Oslo"
        assert db.call("branch_city", account, "XXX") is None
    with pytest.raises(ReadOnlyViolation, match="branches"):
        db.call("rename_branch", 0, "OSL", "Bergen")
    assert db.call("branch_city", 0, "OSL") == "Oslo"
    assert db.status()["counts"]["rows"]["branches"] == len(bank.BRANCHES)


def _bad_calls():
    """(procedure, args, expected error type, text the message must contain)."""
    good = {"id": 1, "owner": "x", "balance": 1}
    return [
        ("no_such_proc", (1,), UnknownProcedure, "no_such_proc"),
        ("deposit", (1,), InvalidArguments, "takes 2 argument"),
        ("deposit", (1, 2, 3), InvalidArguments, "takes 2 argument"),
        ("deposit", (1, "ten"), InvalidArguments, "'amount' must be int"),
        ("deposit", (1, True), InvalidArguments, "'amount' must be int"),
        ("deposit", ("one", 10), InvalidArguments, "'account_id' must be int"),
        ("raw_insert", (1, {"id": 1, "owner": "x"}), SchemaViolation, "missing column(s) ['balance']"),
        ("raw_insert", (1, {**good, "colour": "red"}), SchemaViolation, "unknown column(s) ['colour']"),
        ("raw_insert", (1, {**good, "balance": "lots"}), SchemaViolation, "column 'balance' got 'lots'"),
        ("raw_insert", (1, {**good, "owner": 5}), SchemaViolation, "column 'owner'"),
        ("raw_insert", (1, {**good, "balance": 2**70}), SchemaViolation, "out of range"),
        ("raw_insert", (1, good), DuplicateKey, "duplicate primary key 1"),
        ("raw_update", (1, {"balanse": 3}), SchemaViolation, "unknown column(s) ['balanse']"),
        ("raw_update", (1, {"id": 3}), SchemaViolation, "primary-key column 'id'"),
        ("open_account", (0, "dup"), DuplicateKey, "accounts"),
        ("close_account", (404,), KeyNotFound, "404"),
        ("add_entry", (1, 1, 5, 300), SchemaViolation, "out of range for int8"),
        ("withdraw_then_fail", (1, 50), ProcedureFailed, "ValueError: simulated failure"),
        ("touch_other_partition", (1, 2 if partition_of(2, PARTITIONS) != partition_of(1, PARTITIONS) else 5),
         WrongPartition, "another partition"),
    ]


@pytest.mark.parametrize("proc,args,error,text", _bad_calls(), ids=lambda v: v if isinstance(v, str) else None)
def test_bad_input_is_typed_and_changes_nothing(db, proc, args, error, text):
    before = db.call("dump")
    with pytest.raises(error) as info:
        db.call(proc, *args)
    assert text in str(info.value)
    assert db.call("dump") == before
    # The cluster keeps serving, and good transactions around a bad one still commit.
    mixed = db.call_many("deposit", [(2, 1), ("bad", 1), (2, 1)])
    assert isinstance(mixed[1], InvalidArguments) and mixed[2] == mixed[0] + 1


def test_unknown_procedure_in_call_many_raises_before_sending(db):
    with pytest.raises(UnknownProcedure, match="known: "):
        db.call_many("nope", [(1,)])


def test_oversized_batch_is_refused_whole(db):
    before = db.call("dump")
    with pytest.raises(BatchTooLarge, match="101 transactions exceeds the limit of 100"):
        db.call_many("deposit", [(1, 1)] * 101)
    assert db.call("dump") == before
    assert len(db.call_many("deposit", [(1, 0)] * 100)) == 100


def test_failed_transaction_in_a_batch_leaves_neighbours_committed(db):
    total = db.call("total_balance")
    out = db.call_many("withdraw_then_fail", [(5, 10)])
    assert isinstance(out[0], ProcedureFailed) and out[0].details["exception"] == "ValueError"
    out = db.call_many("deposit", [(5, 10), (99999, 1), (6, 10)])
    assert isinstance(out[1], UserAbort)
    assert db.call("total_balance") == total + 20


def test_status_lists_every_replica(db):
    status = db.status()
    assert status["name"] == "test-bank" and status["partitions"] == PARTITIONS
    assert status["k"] == 1  # the default: every partition has a leader and one follower
    assert sorted(r["partition"] for r in status["replicas"]) == sorted(list(range(PARTITIONS)) * 2)
    for r in status["replicas"]:
        assert r["health"] == "ok" and r["pid"] > 0 and r["node_id"] and r["epoch"] >= 1
        assert (r["role"] == "leader") == (r["actor_name"] == status["leaders"][r["partition"]])
        assert r["written_lsn"] == r["durable_lsn"]
    assert status["counts"]["rows"]["accounts"] == ACCOUNTS
    assert status["nodes"] and status["supervisor"]["pid"] > 0


def test_connect_from_a_second_driver(db, subprocess_env):
    script = textwrap.dedent("""
        import json
        from actors import Cluster
        from actors.errors import ClusterNotFound
        db = Cluster.connect("test-bank")
        first = db.call("deposit", 8, 1)
        try:
            Cluster.connect("no-such-cluster")
            missing = "connected?!"
        except ClusterNotFound as err:
            missing = str(err)
        print(json.dumps({"first": first, "missing": missing}))
    """)
    before = db.call("deposit", 8, 0)
    proc = subprocess.run([sys.executable, "-c", script], env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer["first"] == before + 1
    assert "no ohmdb cluster named 'no-such-cluster'" in answer["missing"] and "test-bank" in answer["missing"]
    assert db.call("deposit", 8, 0) == before + 1


def test_connect_to_missing_cluster(ray_address):
    with pytest.raises(ClusterNotFound, match="no ohmdb cluster named 'ghost'"):
        Cluster.connect("ghost")


def test_create_twice_is_refused_and_shutdown_frees_the_name(db):
    with pytest.raises(ClusterExists, match="test-bank"):
        Cluster.create(bank.schema(), partitions=1, name="test-bank")
    assert db.call("deposit", 1, 0) >= 0  # the running cluster is untouched
    other = Cluster.create(bank.schema(), partitions=1, name="test-bank-2")
    other.call("open_account", 1, "a")
    other.shutdown()
    again = Cluster.create(bank.schema(), partitions=1, name="test-bank-2")
    assert again.call("dump") == {"accounts": [], "entries": []}
    again.shutdown()


def test_bad_initial_data_creates_nothing(ray_address):
    with pytest.raises(SchemaViolation, match="column 'city'"):
        Cluster.create(bank.schema(), partitions=1, name="test-bad-load",
                       initial_data={"branches": [{"code": "X", "city": 12}]})
    with pytest.raises(InvalidArguments, match="repeats primary key 'X'"):
        Cluster.create(bank.schema(), partitions=1, name="test-bad-load",
                       initial_data={"branches": [{"code": "X", "city": "a"}, {"code": "X", "city": "b"}]})
    with pytest.raises(ClusterNotFound):
        Cluster.connect("test-bad-load")


def test_initial_data_as_arrow_table_and_bulk_load(ray_address):
    branches = pa.table({"code": ["A", "B"], "city": ["x", "y"]})
    db = Cluster.create(bank.schema(), partitions=2, name="test-load", initial_data={"branches": branches})
    try:
        rows = [{"id": i, "owner": f"o{i}", "balance": i} for i in range(50)]
        assert db.load("accounts", rows) == 50
        assert db.call("total_balance") == sum(range(50))
        with pytest.raises(DuplicateKey):
            db.load("accounts", [{"id": 3, "owner": "again", "balance": 0}])
        with pytest.raises(InvalidArguments, match="replicated"):
            db.load("branches", [{"code": "C", "city": "z"}])
        assert db.status()["counts"]["rows"] == {"accounts": 50, "branches": 2, "entries": 0}
    finally:
        db.shutdown()


def test_invalid_cluster_config_is_refused(ray_address):
    with pytest.raises(InvalidConfig, match="partitions"):
        Cluster.create(bank.schema(), partitions=0, name="x")
    with pytest.raises(InvalidConfig, match="cluster name"):
        Cluster.create(bank.schema(), partitions=1, name="bad name!")


def test_procedures_from_a_driver_script_travel_by_value(ray_address, subprocess_env):
    """A procedure defined in a driver's __main__ runs on the actors."""
    script = textwrap.dedent("""
        import pyarrow as pa
        from actors import Cluster, Schema, Table, procedure
        kv = Table("kv", pa.schema([("k", pa.string()), ("v", pa.int64())]), primary_key="k", partition_by="k")
        @procedure(partition_by="k")
        def put(tx, k: str, v: int) -> int:
            tx.upsert("kv", {"k": k, "v": v * 2})
            return tx.get("kv", k)["v"]
        db = Cluster.create(Schema(tables=[kv], procedures=[put]), partitions=2, name="test-main-driver")
        try:
            print(db.call_many("put", [("a", 1), ("b", 2)]))
        finally:
            db.shutdown()
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[2, 4]"


def test_table_without_procedures_and_an_inline_schema(ray_address):
    t = Table("t", pa.schema([("k", pa.int64()), ("v", pa.float64())]), primary_key="k", partition_by="k")

    @procedure(partition_by="k")
    def setv(tx, k: int, v: float) -> float:
        tx.upsert("t", {"k": k, "v": v})
        return tx.get("t", k)["v"]

    db = Cluster.create(Schema(tables=[t], procedures=[setv]), partitions=2, name="test-inline")
    try:
        assert db.call("setv", 1, 2) == 2.0  # an int is accepted for a float column and stored as float
        assert isinstance(db.call("setv", 1, 2), float)
    finally:
        db.shutdown()


def test_a_call_that_outlives_its_timeout_reports_unknown_outcome(db):
    before = db.call("deposit", 9, 0)
    with pytest.raises(Timeout, match="outcome is unknown") as info:
        db.call("slow_deposit", 9, 1, 1.5, timeout_s=0.3)
    assert info.value.not_applied is False
    # The partition finishes the slow transaction, then serves the next one in order.
    assert db.call("deposit", 9, 0) == before + 1


def test_a_dead_partition_answers_partition_unavailable_and_others_serve(ray_address):
    db = Cluster.create(bank.schema(), partitions=2, k=0, name="test-dead-partition")
    try:
        on = {partition_of(i, 2): i for i in range(10)}
        db.call_many("open_account", [(on[0], "zero"), (on[1], "one")])
        runtime.kill(runtime.find("test-dead-partition:p0:r0"))
        assert runtime.wait_gone("test-dead-partition:p0:r0", 30)  # Ray kills asynchronously
        out = db.call_many("deposit", [(on[0], 1), (on[1], 1)])
        assert isinstance(out[0], PartitionUnavailable) and out[0].details["partition"] == 0
        assert out[1] == 1
        with pytest.raises(PartitionUnavailable, match="partition 0"):
            db.call("deposit", on[0], 1)
        health = {r["partition"]: r["health"] for r in db.status()["replicas"]}
        assert health == {0: "unreachable", 1: "ok"}
    finally:
        db.shutdown()
