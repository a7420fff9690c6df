"""The supervisor through Ray: SIGKILL and SIGSTOP of every actor kind, reports, restarts, no flapping.

Every fault test runs a writer (credits whose acknowledgements it remembers) while the fault
happens, then checks: the right kind of fault was reported with its actions and durations,
the service came back (writes acknowledged, k+1 replicas serving), every acknowledged credit
is present once on every replica, and no transaction was left with an unknown outcome.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from actors import runtime
from actors.supervisor import CRASH_PHASES
from tests.harness import Writer, check_state, ledger, redundant, wait_until


def _replica(db, role: str, partition: int) -> dict:
    return next(r for r in db.status()["replicas"]
                if r["partition"] == partition and r["role"] == role and r["state"] == "serving")


def _recovered(db, count: int) -> list[dict]:
    """Wait until ``count`` reports exist and all are closed; return them."""
    def done() -> bool:
        found = db.faults()
        return len(found) >= count and all(f["state"] == "recovered" for f in found)
    wait_until(done, timeout_s=120, what=f"{count} recovered fault report(s)")
    return db.faults()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _complete(report: dict) -> None:
    """Every field a report promises is filled in, and the durations are ordered."""
    d = report["durations"]
    assert report["id"] and report["detected_at"] >= report["fault_at"]
    assert report["where"]["node"] and report["where"]["actors"]
    assert 0 <= d["detection_s"] <= d["availability_s"] <= d["redundancy_s"] < 120
    assert report["recovered_at"] >= report["available_at"] >= report["detected_at"]
    assert report["actions"][0]["action"] == "detected"
    times = [a["at"] for a in report["actions"]]
    assert times == sorted(times)


@pytest.mark.parametrize("role", ["leader", "follower"])
@pytest.mark.parametrize("sig, kind", [(signal.SIGKILL, "crash"), (signal.SIGSTOP, "hang")])
def test_a_killed_or_paused_replica_is_found_replaced_and_reported(ray_address, tmp_path, role, sig, kind):
    with ledger(f"test-sup-{role}-{kind}", tmp_path, partitions=2, k=1, accounts=10) as db:
        with Writer(db, 10) as writer:
            writer.wait_for_acks(200)
            victim = _replica(db, role, 1)
            os.kill(victim["pid"], sig)
            writer.wait_for_acks(200)
            wait_until(lambda: redundant(db, 2), what="k+1 replicas again")
            [report] = _recovered(db, 1)
            writer.wait_for_acks(100)
        assert writer.unknown == []
        check_state(db, writer)
        assert report["kind"] == kind
        assert report["where"]["actors"] == [{"actor": victim["actor_name"], "partition": 1, "role": role,
                                              "pid": victim["pid"]}]
        _complete(report)
        actions = [a["action"] for a in report["actions"]]
        # a lost leader is killed only once the follower answered the fence (a silent one is kept otherwise)
        expected = ["fence", "kill", "promote"] if role == "leader" else ["kill", "drop-follower"]
        assert [a for a in actions if a in expected] == expected
        assert "respawn" in actions and "rebuilt" in actions
        assert report["impact"]["partitions"] == [1]
        assert report["impact"]["partitions_unavailable"] == ([1] if role == "leader" else [])
        if sig == signal.SIGSTOP:
            assert report["signal"] == "heartbeat-silence"
            assert report["impact"]["process"] == {victim["actor_name"]: "stopped"}
            wait_until(lambda: _gone(victim["pid"]), timeout_s=10, what="the paused process killed")


@pytest.mark.parametrize("sig, cause", [(signal.SIGKILL, "crash"), (signal.SIGSTOP, "hang")])
def test_the_supervisor_killed_or_paused_comes_back_with_its_map_and_reports(ray_address, tmp_path, sig, cause):
    with ledger(f"test-sup-self-{cause}", tmp_path, partitions=2, k=1, accounts=10) as db:
        with Writer(db, 10) as writer:
            writer.wait_for_acks(100)
            os.kill(_replica(db, "follower", 0)["pid"], signal.SIGKILL)   # a fault before: its report must survive
            before = _recovered(db, 1)
            old = db.status()["supervisor"]
            os.kill(old["pid"], sig)
            writer.wait_for_acks(300)   # the data plane does not need the supervisor
            wait_until(lambda: db.status()["supervisor"]["pid"] != old["pid"], timeout_s=60, what="a new supervisor")
            status = db.status()
            assert status["supervisor"]["restarted"] and status["map_version"] >= 1
            reports = _recovered(db, 2)
            victim = _replica(db, "leader", 1)                             # the new supervisor watches too
            os.kill(victim["pid"], signal.SIGKILL)
            writer.wait_for_acks(200)
            reports = _recovered(db, 3)
        assert writer.unknown == []
        check_state(db, writer)
        assert reports[0]["id"] == before[0]["id"]
        restart = reports[1]
        assert restart["kind"] == "supervisor-restart" and restart["impact"]["cause"] == cause
        assert restart["where"]["actors"][0]["pid"] == old["pid"]
        assert [a["action"] for a in restart["actions"]][:3] == ["detected", "restarted", "rechecked"]
        if sig == signal.SIGSTOP:
            assert restart["signal"] == "watchdog-heartbeat-silence"
            wait_until(lambda: _gone(old["pid"]), timeout_s=10, what="the paused supervisor killed")
        assert reports[2]["kind"] == "crash" and reports[2]["where"]["actors"][0]["actor"] == victim["actor_name"]


@pytest.mark.parametrize("phase", CRASH_PHASES)
def test_the_supervisor_dying_in_the_middle_of_a_recovery_leaves_one_leader(ray_address, tmp_path, phase):
    with ledger(f"test-sup-mid-{phase}", tmp_path, partitions=1, k=2, accounts=10) as db:
        with Writer(db, 10) as writer:
            writer.wait_for_acks(200)
            runtime.call(runtime.find(f"test-sup-mid-{phase}:supervisor"), "inject_crash", phase)
            old = db.status()["supervisor"]["pid"]
            os.kill(_replica(db, "leader", 0)["pid"], signal.SIGKILL)
            writer.wait_for_acks(300)
            wait_until(lambda: db.status()["supervisor"]["pid"] != old, timeout_s=60, what="a restarted supervisor")
            wait_until(lambda: redundant(db, 3), timeout_s=120, what="three replicas again")
            writer.wait_for_acks(200)
        assert writer.unknown == []
        check_state(db, writer)
        replicas = [r for r in db.status()["replicas"] if r["state"] == "serving"]
        leaders = [r for r in replicas if r["role"] == "leader"]
        assert len(leaders) == 1
        assert all(r["epoch"] == leaders[0]["epoch"] and r["leader"] == leaders[0]["actor_name"] for r in replicas)
        kinds = [f["kind"] for f in db.faults()]
        assert "crash" in kinds and "supervisor-restart" in kinds


def test_two_faults_close_together(ray_address, tmp_path):
    with ledger("test-sup-two", tmp_path, partitions=2, k=1, accounts=10) as db:
        with Writer(db, 10) as writer:
            writer.wait_for_acks(200)
            a, b = _replica(db, "leader", 0), _replica(db, "follower", 1)
            os.kill(a["pid"], signal.SIGKILL)
            os.kill(b["pid"], signal.SIGSTOP)
            writer.wait_for_acks(300)
            wait_until(lambda: redundant(db, 2), what="k+1 replicas again")
            reports = _recovered(db, 2)
        assert writer.unknown == []
        check_state(db, writer)
        by_actor = {r["where"]["actors"][0]["actor"]: r for r in reports}
        assert by_actor[a["actor_name"]]["kind"] == "crash" and by_actor[b["actor_name"]]["kind"] == "hang"
        for report in reports:
            _complete(report)


def test_a_fault_during_a_rebuild(ray_address, tmp_path):
    """k=2: a follower dies; while its replacement is rebuilt from the leader, the leader hangs."""
    with ledger("test-sup-rebuild", tmp_path, partitions=1, k=2, accounts=10) as db:
        db.load("accounts", [{"id": 1000 + i, "owner": "bulk", "balance": 0} for i in range(60_000)])
        with Writer(db, 10) as writer:
            writer.wait_for_acks(100)
            os.kill(_replica(db, "follower", 0)["pid"], signal.SIGKILL)
            wait_until(lambda: any(r["state"] == "starting" for r in db.status()["replicas"]), timeout_s=30,
                       what="a replacement being rebuilt")
            os.kill(_replica(db, "leader", 0)["pid"], signal.SIGSTOP)   # the rebuild's source hangs
            writer.wait_for_acks(300)
            wait_until(lambda: redundant(db, 3), timeout_s=180, what="three replicas again")
            reports = _recovered(db, 2)
            writer.wait_for_acks(100)
        assert writer.unknown == []
        check_state(db, writer)
        assert [r["kind"] for r in reports] == ["crash", "hang"]
        for report in reports:
            _complete(report)


def test_a_log_write_failure_fails_the_leader_over(ray_address, tmp_path):
    with ledger("test-sup-disk", tmp_path, partitions=1, k=1, accounts=10) as db:
        with Writer(db, 10) as writer:
            writer.wait_for_acks(100)
            leader = _replica(db, "leader", 0)
            assert runtime.call(runtime.find(leader["actor_name"]), "inject_fault", "fsync")
            writer.wait_for_acks(300)
            wait_until(lambda: redundant(db, 2), what="k+1 replicas again")
            [report] = _recovered(db, 1)
        assert writer.unknown == []  # the failed batch was re-sent with its request id to the new leader
        check_state(db, writer)
        assert report["kind"] == "log-write-failure"
        assert report["where"]["actors"][0]["actor"] == leader["actor_name"]
        _complete(report)


def test_a_busy_replica_is_not_declared_dead(ray_address, tmp_path):
    """Long CPU-bound transactions and large batches on every partition: no fault, no failover."""
    with ledger("test-sup-busy", tmp_path, partitions=2, k=1, accounts=10) as db:
        epochs = {r["actor_name"]: r["epoch"] for r in db.status()["replicas"]}
        stop = threading.Event()
        done = {"credits": 0, "burns": 0}
        errors: list[BaseException] = []

        def hammer(offset: int) -> None:
            seq = 0
            try:
                while not stop.is_set():
                    seq += 1
                    out = db.call_many("credit", [(i % 10, offset + seq * 5000 + i, 1) for i in range(4000)])
                    done["credits"] += sum(1 for o in out if isinstance(o, int))
                    out = db.call_many("burn", [(i, 0.2) for i in range(10)])  # 1 s of CPU per partition
                    done["burns"] += sum(1 for o in out if isinstance(o, int))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=hammer, args=(k * 10**9,), daemon=True) for k in range(3)]
        for t in threads:
            t.start()
        time.sleep(12)
        stop.set()
        for t in threads:
            t.join(timeout=120)
        assert errors == []
        assert done["credits"] >= 3 * 4000 and done["burns"] >= 30  # the load did run
        status = db.status()
        assert db.faults() == []
        assert {r["actor_name"]: r["epoch"] for r in status["replicas"]} == epochs
        assert all(r["heartbeat"] is not None and not r["heartbeat"]["suspected"] for r in status["replicas"])


def test_a_torn_log_found_at_restart_is_reported_and_the_data_kept(ray_address, tmp_path):
    from recovery.segments import list_segments

    with ledger("test-sup-torn", tmp_path, partitions=1, k=1, accounts=5) as db:
        acked = db.call_many("credit", [(i, i, 10) for i in range(5)])
    assert acked == [10] * 5
    (_, path), *_ = reversed(list_segments(str(tmp_path / "p0" / "r0" / "log")))
    with open(path, "r+b") as f:  # a crash mid-write on one replica
        f.truncate(os.path.getsize(path) - 3)
    with ledger("test-sup-torn", tmp_path, partitions=1, k=1, accounts=0) as db:
        reports = [r for r in db.faults() if r["kind"] == "corrupt-log"]
        assert len(reports) == 1 and reports[0]["where"]["actors"][0]["actor"] == "test-sup-torn:p0:r0"
        assert reports[0]["impact"]["cut"] and reports[0]["state"] == "recovered"
        assert [a["action"] for a in reports[0]["actions"]] == ["detected", "cut-log"]
        assert db.call_many("deposit", [(i, 0) for i in range(5)]) == [10] * 5  # the other replica had it all


def test_a_paused_last_replica_is_kept_and_its_report_closes_when_it_answers_again(ray_address, tmp_path):
    control_timeout_s = 30.0
    with ledger("test-sup-last", tmp_path, partitions=1, k=0, accounts=3, control_timeout_s=control_timeout_s) as db:
        only = _replica(db, "leader", 0)
        os.kill(only["pid"], signal.SIGSTOP)
        try:
            wait_until(lambda: [f["state"] for f in db.faults()] == ["unrecovered"], timeout_s=30,
                       what="the hang reported")
            [report] = db.faults()
            assert report["kind"] == "hang" and report["actions"][-1]["action"] == "kept"
            # a status call does not wait on the silent replica (it used to, for the whole control timeout)
            started = time.monotonic()
            [kept] = db.status()["replicas"]
            assert time.monotonic() - started < control_timeout_s / 2
            assert kept["health"] == "unreachable" and kept["error"] == "TIMEOUT" and kept["heartbeat"]["suspected"]
        finally:
            os.kill(only["pid"], signal.SIGCONT)
        [report] = _recovered(db, 1)
        assert [a["action"] for a in report["actions"]][-1] == "answered-again"
        assert db.call("deposit", 1, 5) == 5   # the same process serves again: nothing was lost
        assert _replica(db, "leader", 0)["pid"] == only["pid"]


def test_a_paused_leader_is_kept_when_no_other_replica_answers_the_fence(ray_address, tmp_path):
    """The follower cannot take over (its fence fails, as on a node being lost at the same time):
    killing the silent leader could only lose data, so it is kept and serves again once it answers."""
    with ledger("test-sup-keep", tmp_path, partitions=1, k=1, accounts=5) as db:
        assert db.call_many("credit", [(i, i, 10) for i in range(5)]) == [10] * 5
        leader, follower = _replica(db, "leader", 0), _replica(db, "follower", 0)
        assert runtime.call(runtime.find(follower["actor_name"]), "inject_fault", "fail-fence")
        os.kill(leader["pid"], signal.SIGSTOP)
        try:
            wait_until(lambda: [f["state"] for f in db.faults()] == ["unrecovered"], timeout_s=30,
                       what="the hang reported")
            [report] = db.faults()
            actions = [a["action"] for a in report["actions"]]
            assert report["kind"] == "hang" and actions[-1] == "kept", actions
            assert {"action": "kill", "replica": follower["actor_name"]}.items() <= \
                next(a for a in report["actions"] if a["action"] == "kill").items()
        finally:
            os.kill(leader["pid"], signal.SIGCONT)
        [report] = _recovered(db, 1)
        assert [a["action"] for a in report["actions"]][-1] == "answered-again"
        assert db.call_many("deposit", [(i, 0) for i in range(5)]) == [10] * 5  # nothing was lost
        assert _replica(db, "leader", 0)["pid"] == leader["pid"]
        wait_until(lambda: redundant(db, 2), what="a new follower built from the kept leader")


def test_a_paused_probe_makes_its_node_unreachable_until_it_answers_again(ray_address, tmp_path):
    """On one node, a silent probe leaves no node reachable: writes halt (the minority rule). The probe is
    kept and pinged on, so writes resume once it answers -- not only after a new probe is spawned."""
    from actors.supervisor import PROBE_RESPAWN_S

    with ledger("test-sup-probe", tmp_path, partitions=1, k=1, accounts=3) as db:
        node = db.status()["nodes"][0]["node_id"]
        wait_until(lambda: node in db.status()["probes"], timeout_s=30, what="the node's probe watched")
        probe = db.status()["probes"][node]
        name = probe["actor_name"]
        os.kill(probe["pid"], signal.SIGSTOP)
        try:
            wait_until(lambda: db.status()["halted"] is not None, timeout_s=30, what="writes halted")
            with pytest.raises(Exception, match="CLUSTER_MINORITY"):
                db.call("deposit", 1, 1)
        finally:
            os.kill(probe["pid"], signal.SIGCONT)
            resumed_from = time.monotonic()
        wait_until(lambda: db.status()["halted"] is None, timeout_s=30, what="writes resumed")
        assert time.monotonic() - resumed_from < PROBE_RESPAWN_S  # the same probe answered again
        assert db.status()["probes"][node] == {**probe, "reachable": True}
        assert runtime.call(runtime.find(name), "ping", control=True, timeout_s=10)["pid"] == probe["pid"]
        assert db.call("deposit", 1, 1) == 1
