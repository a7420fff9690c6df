"""Replication: the pure rules, and k=1 clusters through Ray (identical replicas, fencing, follower loss)."""

from __future__ import annotations

import threading

import pytest

from actors import Cluster, runtime
from actors.errors import InvalidArguments, NotLeader, PartitionUnavailable, StaleEpoch
from actors.routing import partition_of
from recovery.log_format import LogCodec, to_wire
from recovery.redo import INSERT, RedoRecord
from recovery.replication import ACCEPT, DUPLICATE, STALE, WAIT, AckTracker, choose_leader, follower_verdict
from tests import bank
from tests.harness import Writer, check_state as _check_state, ledger as _ledger, redundant as _redundant
from tests.harness import replica_states as _replica_states, wait_until as _wait_until

# --- pure rules ---------------------------------------------------------------------------------------


def test_follower_verdicts():
    assert follower_verdict(my_epoch=2, next_lsn=10, msg_epoch=1, first_lsn=10, records=3) == STALE
    assert follower_verdict(2, 10, 2, 10, 3) == ACCEPT
    assert follower_verdict(2, 10, 3, 10, 3) == ACCEPT          # a newer leader is followed
    assert follower_verdict(2, 10, 2, 14, 3) == WAIT            # a gap: wait for the batches before it
    assert follower_verdict(2, 10, 2, 5, 5) == DUPLICATE        # already held: acknowledged, not re-applied
    with pytest.raises(ValueError, match="overlaps"):
        follower_verdict(2, 10, 2, 8, 5)


def test_ack_tracker_waits_for_every_follower_in_the_configuration():
    acks = AckTracker()
    acks.configure(["a", "b"], start_lsn=0)
    acks.ack("a", 7)
    assert acks.replicated_lsn(leader_durable_lsn=9) == 0
    acks.ack("b", 5)
    assert acks.replicated_lsn(9) == 5
    acks.ack("b", 3)                       # acks never go backwards
    assert acks.replicated_lsn(9) == 5
    acks.configure(["a"], start_lsn=0)     # b left the configuration
    assert acks.replicated_lsn(9) == 7
    acks.ack("zz", 100)                    # not in the configuration: ignored
    assert acks.replicated_lsn(6) == 6     # the leader's own durability bounds it too
    acks.configure([], start_lsn=0)
    assert acks.replicated_lsn(6) == 6


def test_choose_leader_prefers_the_highest_lsn_then_the_lowest_replica():
    assert choose_leader({0: 5, 1: 9, 2: 9}) == 1
    assert choose_leader({}) is None


# --- through Ray --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replicated(ray_address, tmp_path_factory):
    db = Cluster.create(bank.schema(), partitions=2, k=1, name="test-rep", data_dir=str(tmp_path_factory.mktemp("rep")),
                        initial_data={"branches": bank.BRANCHES})
    db.call_many("open_account", [(i, f"o{i}", 0) for i in range(30)])
    yield db
    db.shutdown()


def test_replicas_are_placed_and_identical_after_concurrent_load(replicated):
    db = replicated
    status = db.status()
    assert status["k"] == 1 and len(status["replicas"]) == 4
    for p in range(2):
        roles = sorted(r["role"] for r in status["replicas"] if r["partition"] == p)
        assert roles == ["follower", "leader"]
        pids = {r["pid"] for r in status["replicas"] if r["partition"] == p}
        assert len(pids) == 2  # distinct processes (distinct nodes when the cluster has them)

    def writer(offset: int) -> None:
        for k in range(20):
            db.call_many("credit", [(i, offset + k * 100 + i, 1) for i in range(30)])

    threads = [threading.Thread(target=writer, args=(n * 10_000,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p, states in _replica_states(db).items():
        assert len(states) == 2 and states[0] == states[1], f"partition {p} replicas differ: {states}"
    assert db.call("total_balance") == 3 * 20 * 30


def test_an_acknowledged_batch_is_durable_on_the_follower_already(replicated):
    db = replicated
    for k in range(5):
        db.call_many("credit", [(i, 50_000 + k * 100 + i, 1) for i in range(30)])
        for states in _replica_states(db).values():
            leader_written = max(s[0] for s in states)
            assert all(s[1] >= leader_written for s in states)


def test_a_follower_answers_not_leader_and_refuses_a_stale_epoch(replicated):
    db = replicated
    follower = runtime.find("test-rep:p0:r1")
    results, errors, batch_error = runtime.call(follower, "execute_batch", "some-client", 0, [("deposit", (1, 1))])
    assert isinstance(batch_error, NotLeader) and batch_error.details["leader"] == "test-rep:p0:r0"
    before = _replica_states(db)
    # A fenced leader from epoch 0 tries to write: every replica refuses it.
    codec = LogCodec(bank.schema())
    written = before[0][0][0]
    batch, meta = codec.encode([RedoRecord(1, INSERT, "accounts", 999, {"id": 999, "owner": "ghost", "balance": 1})],
                               written + 1, epoch=0)
    answer = runtime.call(follower, "replicate", 0, to_wire(batch), meta)
    assert isinstance(answer, StaleEpoch)
    assert _replica_states(db) == before
    # Damaged bytes on the wire, even in the current epoch, are refused with a typed error naming the damage.
    current = runtime.call(follower, "status", control=True)["epoch"]
    batch, meta = codec.encode([RedoRecord(1, INSERT, "accounts", 999, {"id": 999, "owner": "ghost", "balance": 1})],
                               written + 1, epoch=current)
    wire = bytearray(to_wire(batch))
    wire[-3] ^= 0x01
    answer = runtime.call(follower, "replicate", current, bytes(wire), meta)
    assert isinstance(answer, InvalidArguments) and "CRC mismatch" in answer.message
    assert _replica_states(db) == before


def test_losing_a_follower_keeps_the_partition_writing(ray_address, tmp_path):
    with _ledger("test-rep-loss", tmp_path, partitions=1, k=1, accounts=5) as db:
        runtime.kill(runtime.find("test-rep-loss:p0:r1"))
        assert runtime.wait_gone("test-rep-loss:p0:r1", 30)
        out = db.call_many("credit", [(i, 100 + i, 2) for i in range(5)])
        assert out == [2] * 5  # acknowledged without the dead follower
        assert db.call("total_balance") == 10
        # ... and a replacement is rebuilt and joins the configuration.
        _wait_until(lambda: _redundant(db, 2), what="the replacement")
        leader = next(r for r in db.status()["replicas"] if r["role"] == "leader")
        assert leader["followers"] == ["test-rep-loss:p0:r1.g1"]


@pytest.mark.parametrize("durability", ["async", "off"])
def test_replication_in_the_other_durability_modes(ray_address, tmp_path, durability):
    db = Cluster.create(bank.schema(), partitions=1, k=1, name=f"test-rep-{durability}", durability=durability,
                        data_dir=str(tmp_path) if durability != "off" else None)
    try:
        db.call_many("open_account", [(i, f"o{i}", 0) for i in range(5)])
        db.call_many("credit", [(i, 100 + i, 3) for i in range(5)])
        states = _replica_states(db)[0]
        assert len(states) == 2 and states[0][0] == states[1][0] and states[0][2] == states[1][2]
    finally:
        db.shutdown()


# --- failover -----------------------------------------------------------------------------------------


def test_killing_each_leader_under_load_fails_over_and_loses_nothing(ray_address, tmp_path):
    with _ledger("test-failover", tmp_path, partitions=2, k=2, accounts=12) as db:
        with Writer(db, 12) as writer:
            writer.wait_for_acks(200)
            for victim_partition in (0, 1, 0):
                leader = db.status()["leaders"][victim_partition]
                runtime.kill(runtime.find(leader))
                writer.wait_for_acks(200)  # the load continues on the promoted follower
        # A batch whose leader died was re-sent with its request id: every transaction got its
        # one outcome (a second execution would have answered DUPLICATE_KEY for the entry).
        assert writer.unknown == []
        status = db.status()
        epochs = {p: max(r["epoch"] for r in status["replicas"] if r["partition"] == p) for p in (0, 1)}
        assert epochs == {0: 3, 1: 2}
        _check_state(db, writer)


def test_losing_every_replica_makes_the_partition_unavailable_not_wrong(ray_address, tmp_path):
    db = Cluster.create(bank.schema(), partitions=2, k=1, name="test-unavailable", data_dir=str(tmp_path))
    try:
        on = {}
        for i in range(20):
            on.setdefault(partition_of(i, 2), i)
        db.call_many("open_account", [(on[0], "zero", 0), (on[1], "one", 0)])
        for name in ("test-unavailable:p0:r0", "test-unavailable:p0:r1"):
            runtime.kill(runtime.find(name))
            assert runtime.wait_gone(name, 30)
        first = db.call_many("deposit", [(on[0], 1), (on[1], 1)])
        assert isinstance(first[0], PartitionUnavailable) and first[1] == 1
        with pytest.raises(PartitionUnavailable, match="no live replica"):
            db.call("deposit", on[0], 1)
        assert db.status()["leaders"][0] is None
        assert db.call("deposit", on[1], 1) == 2  # the other partition keeps serving
    finally:
        db.shutdown()


def test_a_retried_request_gets_its_first_outcome_even_after_a_restart(ray_address, tmp_path):
    db = Cluster.create(bank.schema(), partitions=1, k=1, name="test-request-ids", data_dir=str(tmp_path))
    try:
        db.call("open_account", 1, "a", 0)
        leader = runtime.find("test-request-ids:p0:r0")
        calls = [("credit", (1, 7, 5)), ("credit", (1, 7, 5))]  # the second one collides: DUPLICATE_KEY
        first = runtime.call(leader, "execute_batch", "retrying-client", 0, calls, "req-1")
        again = runtime.call(leader, "execute_batch", "retrying-client", 1, calls, "req-1")
        assert first[0][0] == 5 and 1 in first[1] and again[0] == first[0] and again[1] == first[1]
        assert db.call("deposit", 1, 0) == 5  # applied once
        db.snapshot()
        db.call_many("credit", [(1, 8, 1)])   # and one more in the log after the snapshot
    finally:
        db.shutdown()
    db = Cluster.create(bank.schema(), partitions=1, k=1, name="test-request-ids", data_dir=str(tmp_path))
    try:
        leader = runtime.find("test-request-ids:p0:r0")
        again = runtime.call(leader, "execute_batch", "retrying-client", 0, calls, "req-1")
        assert again[0][0] == 5 and db.call("deposit", 1, 0) == 6  # remembered across the restart
    finally:
        db.shutdown()


def test_after_failovers_and_losing_every_replica_the_disk_restores_all_acknowledged(ray_address, tmp_path):
    with _ledger("test-rep-disk", tmp_path, partitions=2, k=1, accounts=10) as db:
        with Writer(db, 10) as writer:
            writer.wait_for_acks(200)
            runtime.kill(runtime.find(db.status()["leaders"][0]))   # failover: p0 now has one replica
            writer.wait_for_acks(200)
            runtime.kill(runtime.find(db.status()["leaders"][0]))   # and loses it: unavailable
            deadline = 600
            while not any(isinstance(e, PartitionUnavailable) for _, e in writer.unknown) and deadline:
                writer.wait_for_acks(1)
                deadline -= 1
        assert any(isinstance(e, PartitionUnavailable) for _, e in writer.unknown)
    # The two replicas of p0 stopped at different points, in different epochs: the newest log
    # leads, the other is rebuilt from it.
    db = Cluster.create(bank.schema(), partitions=2, k=1, name="test-rep-disk", data_dir=str(tmp_path))
    try:
        _check_state(db, writer)
        status = db.status()
        assert all(r["health"] == "ok" for r in status["replicas"])
        assert sum(r["installs"] for r in status["replicas"] if r["partition"] == 0) == 1
        db.call_many("credit", [(i, 10**9 + i, 1) for i in range(10)])
        _check_state(db, writer)
    finally:
        db.shutdown()


def test_a_lost_replica_is_replaced_and_rebuilt_while_writes_go_on(ray_address, tmp_path):
    with _ledger("test-rebuild", tmp_path, partitions=2, k=1, accounts=10) as db:
        with Writer(db, 10) as writer:
            writer.wait_for_acks(300)
            runtime.kill(runtime.find("test-rebuild:p1:r1"))                 # a follower
            writer.wait_for_acks(300)
            _wait_until(lambda: _redundant(db, 2), what="the follower's replacement")
            runtime.kill(runtime.find(db.status()["leaders"][0]))          # a leader
            writer.wait_for_acks(300)
            _wait_until(lambda: _redundant(db, 2), what="the leader's replacement")
            writer.wait_for_acks(300)
        assert writer.unknown == []
        status = db.status()
        assert len(status["rebuilds"]) == 2 and all(r["rows"] > 0 for r in status["rebuilds"])
        names = {r["actor_name"] for r in status["replicas"] if r["state"] == "serving"}
        assert any(".g1" in n for n in names)
        _check_state(db, writer)


def test_killing_the_new_leader_while_its_replacement_catches_up(ray_address, tmp_path):
    with _ledger("test-rep-double", tmp_path, partitions=1, k=2, accounts=10) as db:
        with Writer(db, 10) as writer:
            writer.wait_for_acks(500)
            runtime.kill(runtime.find(db.status()["leaders"][0]))      # failover 1; a replacement starts
            writer.wait_for_acks(50)
            runtime.kill(runtime.find(db.status()["leaders"][0]))      # the new leader, during the rebuild
            writer.wait_for_acks(300)
            _wait_until(lambda: _redundant(db, 3), timeout_s=180, what="three replicas again")
            writer.wait_for_acks(300)
        assert writer.unknown == []
        _check_state(db, writer)


def test_killing_k_replicas_at_once(ray_address, tmp_path):
    with _ledger("test-rep-k-at-once", tmp_path, partitions=1, k=2, accounts=10) as db:
        with Writer(db, 10) as writer:
            writer.wait_for_acks(300)
            status = db.status()
            leader = status["leaders"][0]
            follower = next(r["actor_name"] for r in status["replicas"] if r["role"] == "follower")
            runtime.kill(runtime.find(leader))
            runtime.kill(runtime.find(follower))
            writer.wait_for_acks(300)
            _wait_until(lambda: _redundant(db, 3), timeout_s=180, what="three replicas again")
            writer.wait_for_acks(300)
        assert writer.unknown == []
        _check_state(db, writer)


def test_a_read_whose_leader_just_died_is_sent_to_the_new_one(ray_address):
    db = Cluster.create(bank.schema(), partitions=2, k=1, name="test-rep-read", durability="off")
    try:
        db.call_many("open_account", [(i, f"o{i}", 3) for i in range(10)])
        runtime.kill(runtime.find(db.status()["leaders"][1]))
        assert runtime.wait_gone("test-rep-read:p1:r0", 30)
        assert db.call("total_balance") == 30  # no PartitionUnavailable: the read went to the promoted follower
        assert db.status()["leaders"][1] == "test-rep-read:p1:r1"
    finally:
        db.shutdown()
