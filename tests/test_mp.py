"""Multi-partition transactions through Ray: the coordinator, two-phase commit, and its failures.

Each test checks the bank invariant (money only moves), that every replica of a
partition holds the same committed rows, and that no transaction is left open
(no lock held forever) once the dust settles.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from actors import Cluster, runtime
from actors.coordinator import CRASH_POINTS, coordinator_name
from actors.errors import OhmError, OutcomeUnknown, ReadOnlyViolation, TxnAborted, UserAbort
from actors.routing import partition_of
from tests import bank
from tests.harness import wait_until

ACCOUNTS = 200
START_BALANCE = 100


def _bank(name: str, tmp_path, partitions: int = 2, **settings) -> Cluster:
    db = Cluster.create(bank.schema(), partitions=partitions, k=1, name=name, data_dir=str(tmp_path),
                        initial_data={"branches": bank.BRANCHES}, **settings)
    db.call_many("open_account", [(i, f"o{i}", START_BALANCE) for i in range(ACCOUNTS)])
    return db


def _pair(partitions: int, first: int = 0, second: int = 1) -> tuple[int, int]:
    """An account on partition ``first`` and one on ``second``."""
    src = next(i for i in range(ACCOUNTS) if partition_of(i, partitions) == first)
    dst = next(i for i in range(ACCOUNTS) if partition_of(i, partitions) == second)
    return src, dst


def _balances(db: Cluster) -> dict[int, int]:
    return {r["id"]: r["balance"] for r in db.call("dump")["accounts"]}


def _digests(db: Cluster) -> dict[int, list[dict]] | None:
    """Per partition, each serving replica's fingerprint; None while one of them is gone (being replaced)."""
    out: dict[int, list[dict]] = {}
    for r in db.status()["replicas"]:
        if r["state"] == "serving":
            handle = runtime.find(r["actor_name"])
            if handle is None:
                return None
            try:
                out.setdefault(r["partition"], []).append(runtime.call(handle, "digest", timeout_s=30))
            except OhmError:
                return None
    return out


def _settled(db: Cluster) -> bool:
    """No open or pending MP txn anywhere, and every replica of a partition holds the same rows."""
    digests = _digests(db)
    if digests is None or len(digests) != db.partitions:
        return False
    for reps in digests.values():
        if any(d["mp_open"] or d["mp_pending"] for d in reps) or len({d["rows"] for d in reps}) != 1:
            return False
    return True


def _after(*transfers: tuple[int, int, int]) -> dict[int, int]:
    """Every balance after these (src, dst, amount) transfers from the start."""
    balances = {i: START_BALANCE for i in range(ACCOUNTS)}
    for src, dst, amount in transfers:
        balances[src] -= amount
        balances[dst] += amount
    return balances


def _committed(outcomes: list[tuple[tuple, object]]) -> list[tuple]:
    return [call for call, out in list(outcomes) if not isinstance(out, OhmError)]


def _lose_decisions(db: Cluster, partition: int = 1) -> dict:
    """Partition ``partition``'s leader (its status entry), from now on deaf to 2PC decisions."""
    leader = next(r for r in db.status()["replicas"] if r["partition"] == partition and r["role"] == "leader")
    runtime.call(runtime.find(leader["actor_name"]), "inject_fault", "drop-decisions", timeout_s=30)
    return leader


def _open_at(leader: dict) -> int:
    return runtime.call(runtime.find(leader["actor_name"]), "digest", timeout_s=30)["mp_open"]


def _coordinator_report(db: Cluster) -> dict:
    """The one coordinator-failure report, once it says recovered."""
    wait_until(lambda: any(f["kind"] == "coordinator-failure" and f["state"] == "recovered" for f in db.faults()),
               timeout_s=60, what="a recovered coordinator-failure report")
    [report] = [f for f in db.faults() if f["kind"] == "coordinator-failure"]
    return report


def _check(db: Cluster, expected: dict[int, int] | None = None) -> None:
    wait_until(lambda: _settled(db), timeout_s=60, what="every MP txn finished and replicas equal")
    balances = _balances(db)
    assert sum(balances.values()) == (ACCOUNTS * START_BALANCE if expected is None else sum(expected.values()))
    assert min(balances.values()) >= 0
    if expected is not None:
        assert balances == expected


def test_transfers_commit_refuse_and_read_consistently(ray_address, tmp_path):
    db = _bank("test-mp-basic", tmp_path, partitions=3)
    try:
        src, dst = _pair(3, 0, 2)
        assert db.call("transfer", src, dst, 30) == START_BALANCE - 30
        with pytest.raises(UserAbort, match="insufficient funds"):
            db.call("transfer", src, dst, 10_000)
        expected = _after((src, dst, 30))
        _check(db, expected)
        assert db.call("total_balance") == ACCOUNTS * START_BALANCE
    finally:
        db.shutdown()


@pytest.mark.parametrize("procedure", ["transfer", "transfer_last"])
def test_concurrent_transfers_keep_the_total_on_every_read(ray_address, tmp_path, procedure):
    """Transfers from several threads while a reader checks every total it reads."""
    db = _bank(f"test-mp-concurrent-{procedure}", tmp_path, partitions=3)
    stop = threading.Event()
    totals: list[int] = []
    outcomes: list[tuple[tuple, object]] = []

    def mover(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            batch = [(rng.randrange(ACCOUNTS), rng.randrange(ACCOUNTS), rng.randint(1, 60)) for _ in range(20)]
            batch = [b for b in batch if b[0] != b[1]]
            outcomes.extend(zip(batch, db.call_many(procedure, batch)))

    def reader() -> None:
        while not stop.is_set():
            totals.append(db.call("total_balance"))

    threads = [threading.Thread(target=mover, args=(s,)) for s in range(3)] + [threading.Thread(target=reader)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: len(totals) > 10 and len(_committed(outcomes)) > 50, timeout_s=120,
                   what="more than 10 total reads and 50 committed transfers, all at once")
        stop.set()
        for t in threads:
            t.join()
        failed = [out for _, out in outcomes if isinstance(out, OhmError)]
        assert all(isinstance(out, (UserAbort, TxnAborted)) for out in failed), failed[:3]
        assert set(totals) == {ACCOUNTS * START_BALANCE}, "a read saw money half moved"
        _check(db, _after(*_committed(outcomes)))
    finally:
        stop.set()
        db.shutdown()


def test_a_replicated_table_changes_everywhere_in_one_transaction(ray_address, tmp_path):
    db = _bank("test-mp-replicated", tmp_path, partitions=2)
    try:
        with pytest.raises(ReadOnlyViolation, match="multi-partition"):
            db.call("rename_branch", 0, "OSL", "Bergen")
        assert db.call("move_branch", "OSL", "Bergen") == "Oslo"
        seen = {db.call("branch_city", i, "OSL") for i in range(ACCOUNTS)}  # read on every partition
        assert seen == {"Bergen"}
        with pytest.raises(UserAbort, match="no branch XXX"):
            db.call("move_branch", "XXX", "Nowhere")
        _check(db)
    finally:
        db.shutdown()


def test_a_retry_with_the_same_request_id_applies_once(ray_address, tmp_path):
    db = _bank("test-mp-request-id", tmp_path, partitions=2)
    try:
        src, dst = _pair(2)
        first = db.call("transfer", src, dst, 10, request_id="pay-1")
        again = db.call("transfer", src, dst, 10, request_id="pay-1")
        assert first == again == START_BALANCE - 10
        balances = _balances(db)
        assert (balances[src], balances[dst]) == (START_BALANCE - 10, START_BALANCE + 10)
    finally:
        db.shutdown()


@pytest.mark.parametrize("procedure", ["transfer", "transfer_last"])
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_coordinator_killed_at_each_point_leaves_one_outcome(ray_address, tmp_path, point, procedure):
    """The coordinator dies at ``point`` of a transfer; a new one finishes or aborts it; the client's
    retry (same request id) returns the outcome and the transfer applies exactly once.  (``transfer_last``
    prepares with its fragments, so "before-prepare" finds both partitions prepared already.)"""
    db = _bank(f"test-mp-crash-{point}-{procedure}", tmp_path, partitions=2)
    try:
        src, dst = _pair(2)
        runtime.call(runtime.find(coordinator_name(db.name)), "inject_crash", point, timeout_s=30)
        assert db.call(procedure, src, dst, 25) == START_BALANCE - 25
        expected = _after((src, dst, 25))
        _check(db, expected)
        report = _coordinator_report(db)
        assert report["impact"]["cause"] == "crash"
        assert [a["action"] for a in report["actions"]][:4] == ["detected", "kill", "respawn", "recovered-txns"]
        assert db.call("transfer", dst, src, 25) == START_BALANCE  # the new coordinator serves
    finally:
        db.shutdown()


def test_a_participant_leader_killed_while_prepared_is_finished_by_its_successor(ray_address, tmp_path):
    """Decisions to partition 1 are lost, so it stays prepared; its leader is killed; the promoted
    follower holds the PREPARE and commits when the coordinator re-sends the decision."""
    db = _bank("test-mp-participant", tmp_path, partitions=2)
    try:
        src, dst = _pair(2)  # partition 0 holds the decision; partition 1 only prepares
        leader = _lose_decisions(db)
        assert db.call("transfer", src, dst, 40) == START_BALANCE - 40
        assert _open_at(leader) == 1  # prepared, waiting for a decision that never arrives
        os.kill(leader["pid"], signal.SIGKILL)
        expected = _after((src, dst, 40))
        _check(db, expected)
        new = next(r for r in db.status()["replicas"] if r["partition"] == 1 and r["role"] == "leader")
        assert new["actor_name"] != leader["actor_name"]
    finally:
        db.shutdown()


def test_single_partition_work_on_other_keys_goes_on_while_a_txn_is_in_doubt(ray_address, tmp_path):
    """A prepared txn locks only its keys: SP work elsewhere runs; SP work on its keys waits for it."""
    db = _bank("test-mp-locks", tmp_path, partitions=2)
    try:
        src, dst = _pair(2)
        other = next(i for i in range(ACCOUNTS) if partition_of(i, 2) == 1 and i != dst)
        leader = _lose_decisions(db)
        db.call("transfer", src, dst, 5)
        started = time.monotonic()
        assert db.call("deposit", other, 1) == START_BALANCE + 1      # not locked: runs at once
        assert time.monotonic() - started < 5
        waiting = db.call_async("deposit", dst, 1)                     # locked by the prepared txn
        time.sleep(0.5)
        assert not waiting.done()
        os.kill(leader["pid"], signal.SIGKILL)  # its successor finishes the txn, then the deposit runs
        assert waiting.result() == START_BALANCE + 5 + 1  # it ran after the transfer committed
        expected = _after((src, dst, 5))
        expected[dst] += 1
        expected[other] += 1
        _check(db, expected)
    finally:
        db.shutdown()


def test_a_paused_coordinator_is_found_and_replaced(ray_address, tmp_path):
    """SIGSTOP: Ray still lists it alive; heartbeats find it; it is SIGKILLed and a new one takes over."""
    db = _bank("test-mp-paused", tmp_path, partitions=2)
    try:
        src, dst = _pair(2)
        pid = db.status()["coordinator"]["pid"]
        os.kill(pid, signal.SIGSTOP)
        assert db.call("transfer", src, dst, 7) == START_BALANCE - 7  # the client waits for the new one
        report = _coordinator_report(db)
        assert report["impact"]["cause"] == "hang" and report["where"]["actors"][0]["pid"] == pid
        assert db.status()["coordinator"]["pid"] != pid
        expected = _after((src, dst, 7))
        _check(db, expected)
    finally:
        db.shutdown()


def test_random_kills_under_load_lose_nothing(ray_address, tmp_path):
    """Transfers from several clients while the coordinator and a partition leader are killed."""
    db = _bank("test-mp-chaos", tmp_path, partitions=2)
    stop = threading.Event()
    outcomes: list[tuple[tuple, object]] = []

    def mover(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            batch = [(rng.randrange(ACCOUNTS), rng.randrange(ACCOUNTS), rng.randint(1, 30)) for _ in range(10)]
            batch = [b for b in batch if b[0] != b[1]]
            outcomes.extend(zip(batch, db.call_many("transfer", batch)))

    threads = [threading.Thread(target=mover, args=(s,)) for s in range(3)]
    try:
        for t in threads:
            t.start()
        rng = random.Random(7)

        def committed_more(n: int) -> None:
            """Wait until ``n`` more transfers than now have committed (the load goes on)."""
            target = len(_committed(outcomes)) + n
            wait_until(lambda: len(_committed(outcomes)) >= target, timeout_s=120, what=f"{n} more commits")

        committed_more(20)
        os.kill(db.status()["coordinator"]["pid"], signal.SIGKILL)
        committed_more(1 + rng.randrange(20))
        victim = next(r for r in db.status()["replicas"] if r["role"] == "leader" and r["partition"] == rng.randrange(2))
        os.kill(victim["pid"], signal.SIGKILL)
        committed_more(50)  # after both faults
        stop.set()
        for t in threads:
            t.join()
        unknown = [out for _, out in outcomes if isinstance(out, OutcomeUnknown)]
        assert unknown == [], "the client resends with request ids until each outcome is known"
        _check(db, _after(*_committed(outcomes)))
        kinds = {f["kind"] for f in db.faults()}
        assert {"coordinator-failure", "crash"} <= kinds
    finally:
        stop.set()
        db.shutdown()


def test_a_participant_left_in_doubt_asks_the_holder_and_obeys(ray_address, tmp_path):
    """Decisions to partition 1 are lost and nothing fails: after ``mp_settle_after_s`` its leader asks the
    holder (partition 0), which recorded commit first, and commits on its own."""
    db = _bank("test-mp-settle", tmp_path, partitions=2, mp_settle_after_s=1.0)
    try:
        src, dst = _pair(2)
        leader = _lose_decisions(db)
        assert db.call("transfer", src, dst, 15) == START_BALANCE - 15
        expected = _after((src, dst, 15))
        _check(db, expected)
        now = next(r for r in db.status()["replicas"] if r["partition"] == 1 and r["role"] == "leader")
        assert now["actor_name"] == leader["actor_name"]  # settled by the same leader: no failover involved
    finally:
        db.shutdown()


@pytest.mark.parametrize("snapshot", [False, True])
def test_a_txn_in_doubt_survives_a_full_restart_and_is_finished(ray_address, tmp_path, snapshot):
    """Partition 1 holds a prepared txn whose decision (commit, recorded at partition 0) never reached it.
    The whole cluster stops and starts again from its data_dir (optionally after a snapshot that must carry
    the prepared txn along): partition 1 recovers it as pending, its new leader adopts it, and the new
    coordinator's recovery finds the recorded commit and finishes it."""
    name = f"test-mp-restart-{'snap' if snapshot else 'log'}"
    db = _bank(name, tmp_path, partitions=2)
    src, dst = _pair(2)
    try:
        leader = _lose_decisions(db)
        assert db.call("transfer", src, dst, 20) == START_BALANCE - 20
        assert _open_at(leader) == 1
        if snapshot:
            db.snapshot()
    finally:
        db.shutdown()
    again = Cluster.create(bank.schema(), partitions=2, k=1, name=name, data_dir=str(tmp_path))
    try:
        expected = _after((src, dst, 20))
        _check(again, expected)
        assert again.status()["coordinator"]["recovery"]["in_doubt"] == 1  # it was found and finished
        recovered = [r["recovery"] for r in again.status()["replicas"] if r["partition"] == 1]
        assert any(r["snapshot_lsn"] > 0 for r in recovered) == snapshot
    finally:
        again.shutdown()
