"""The run history recorder and the pure checkers of the harness (no Ray)."""

from __future__ import annotations

import json
import threading

import pytest

from actors.errors import LockConflict, OutcomeUnknown, Timeout, UserAbort
from workloads import bank_workload, injector, voter_workload
from workloads.fault_spec import KILL, NODE, PAUSE
from workloads.history import FAIL, INVOKE, OK, UNKNOWN, History, Op, classify, events, write_jsonl


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_classify_outcomes():
    assert classify(5) == (OK, 5, None)
    assert classify(UserAbort("insufficient funds: account 3"))[0:2] == (FAIL, None)
    assert classify(LockConflict("busy")) == (FAIL, None, "LOCK_CONFLICT")
    assert classify(OutcomeUnknown("later")) == (UNKNOWN, None, "OUTCOME_UNKNOWN")
    assert classify(Timeout("slow")) == (UNKNOWN, None, "TIMEOUT")
    assert classify(RuntimeError("x")) == (UNKNOWN, None, "RuntimeError")


def test_history_records_times_from_the_clock_and_completes_once():
    clock = FakeClock()
    h = History(clock)
    clock.t += 1.0
    ops = h.invoke_many(3, "vote", [(1,), (2,)])
    clock.t += 0.25
    h.complete_many(ops, [7, UserAbort("over vote limit: 2")])
    a, b = h.ops()
    assert (a.type, a.result, a.invoke_s, a.complete_s, a.latency_s) == (OK, 7, 1.0, 1.25, 0.25)
    assert b.type == FAIL and b.error.startswith("USER_ABORT")
    with pytest.raises(ValueError, match="completed twice"):
        h.complete(a, 8)
    with pytest.raises(ValueError, match="2 ops but 1 outcomes"):
        h.complete_many(ops, [1])


def test_open_ops_become_unknown_at_close_and_scheduled_invoke_times_are_kept():
    clock = FakeClock()
    h = History(clock)
    (op,) = h.invoke_many(0, "f", [()], at=-0.5)
    clock.t += 2
    assert h.counts()[INVOKE] == 1
    assert h.close() == 1
    assert (op.type, op.error, op.invoke_s, op.complete_s) == (UNKNOWN, "OPEN_AT_END", -0.5, 2.0)


def test_history_is_bounded_and_says_so():
    h = History(FakeClock(), ops_max=3)
    ops = h.invoke_many(0, "f", [(i,) for i in range(5)])
    assert ops[3] is None and ops[4] is None and h.truncated and h.dropped == 2
    h.complete_many(ops, list(range(5)))  # completing dropped ops is harmless
    assert len(h.ops()) == 3
    with pytest.raises(ValueError):
        History(ops_max=0)


def test_history_is_thread_safe():
    h = History()

    def work(p: int) -> None:
        for i in range(500):
            (op,) = h.invoke_many(p, "f", [(i,)])
            h.complete(op, i)

    threads = [threading.Thread(target=work, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ops = h.ops()
    assert len(ops) == 2000 and len({op.id for op in ops}) == 2000 and all(op.type == OK for op in ops)


def test_events_and_jsonl_put_each_completion_after_its_invoke(tmp_path):
    clock = FakeClock()
    h = History(clock)
    first = h.invoke(0, "f", (1,))
    clock.t += 1
    second = h.invoke(1, "g", (2,))
    clock.t += 1
    h.complete(second, OutcomeUnknown("x"))
    clock.t += 1
    h.complete(first, 3)
    ev = events(h.ops())
    assert [(e["type"], e["process"]) for e in ev] == [(INVOKE, 0), (INVOKE, 1), (UNKNOWN, 1), (OK, 0)]
    path = tmp_path / "h.jsonl"
    assert write_jsonl(h.ops(), str(path)) == 4
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[-1] == {"index": 0, "process": 0, "f": "f", "value": [1], "type": "ok", "time": 3.0, "result": 3}


# --- injector: matching reports and the faults verdict ------------------------------------------


def _fault(action=KILL, actor="c:p0r0", pid=10, injected_at=1000.0, pause_s=None, node_id=None) -> injector.Injected:
    f = injector.Injected(label=f"{action} leader", action=action, role="leader", partition=0, planned_s=5.0,
                          injected_s=5.0, injected_at=injected_at, actor=actor, pid=pid, node_id=node_id,
                          pause_s=pause_s)
    return f


def _report(actor="c:p0r0", pid=10, detected=1000.2, recovered=1001.5, node="n1", rid="F-1", kind="crash"):
    return {"id": rid, "kind": kind, "state": "recovered" if recovered else "open", "detected_at": detected,
            "available_at": detected + 0.1, "recovered_at": recovered,
            "where": {"node": node, "actors": [{"actor": actor, "pid": pid}]}}


def test_match_reports_pairs_by_actor_pid_and_time():
    f = _fault()
    old = _report(detected=900.0, rid="F-0")                # before the injection
    other_pid = _report(pid=11, detected=1000.1, rid="F-2")  # the same name, another incarnation
    good = _report(rid="F-3")
    injector.match_reports([f], [old, other_pid, good])
    assert f.report == {"id": "F-3", "kind": "crash", "state": "recovered", "detection_s": 0.2,
                        "availability_s": 0.3, "recovery_s": 1.5}
    n = _fault(action=NODE, actor=None, pid=None, node_id="n7")
    injector.match_reports([n], [_report(node="n7", rid="F-9", kind="node-loss")])
    assert n.report["id"] == "F-9"


def test_faults_verdict():
    kill, pause_short, pause_long, skipped = _fault(), _fault(PAUSE, pause_s=0.2), _fault(PAUSE, pause_s=5.0), _fault()
    skipped.skipped = "no serving follower"
    injector.match_reports([kill], [_report()])
    v = injector.verdict([kill, pause_short, skipped], detect_ceiling_s=2.0)
    assert v.ok and "1 skipped" in v.detail
    v = injector.verdict([kill, pause_long], detect_ceiling_s=2.0)
    assert not v.ok and "has no fault report" in v.detail
    unrecovered = _fault()
    injector.match_reports([unrecovered], [_report(recovered=None)])
    v = injector.verdict([unrecovered], detect_ceiling_s=2.0)
    assert not v.ok and "not recovered" in v.detail
    assert not injector.all_settled([unrecovered]) and injector.all_settled([kill, pause_short])


# --- voter and bank checkers ---------------------------------------------------------------------


def _op(i, f, value, type_, result=None, t0=0.0, t1=1.0) -> Op:
    return Op(i, 0, f, value, t0, type_, t1, result)


def test_voter_checkers_find_lost_and_doubled_votes():
    votes = [_op(0, "vote", (5551234, 1, 2), OK, 1), _op(1, "vote", (5551234, 2, 2), OK, 2),
             _op(2, "vote", (5559999, 3, 2), UNKNOWN), _op(3, "vote", (5550000, 1, 2), FAIL)]
    good = {5551234: [(1, 1), (2, 2)], 5559999: [(1, 3)], 5550000: []}
    assert voter_workload.check_phones(votes, good).ok
    assert voter_workload.check_phones(votes, {**good, 5559999: []}).ok  # unknown: may not have applied
    lost = voter_workload.check_phones(votes, {**good, 5551234: [(1, 1)]})
    assert not lost.ok and "acknowledged vote 2 for contestant 2 is stored as missing" in lost.detail
    doubled = voter_workload.check_phones(votes, {**good, 5550000: [(1, 1)]})
    assert not doubled.ok and "holds 1 votes; only 0 acknowledged and 0 unknown" in doubled.detail
    final = [(1, "a", 1), (2, "b", 1), (3, "c", 1)]
    assert voter_workload.check_results(votes, final).ok
    assert voter_workload.check_results(votes, [(1, "a", 1), (2, "b", 1), (3, "c", 0)]).ok
    assert not voter_workload.check_results(votes, [(1, "a", 2), (2, "b", 1), (3, "c", 0)]).ok


def test_voter_reads_must_not_go_back():
    r1 = _op(0, "results", (), OK, [(1, "a", 5)], 0.0, 1.0)
    r2 = _op(1, "results", (), OK, [(1, "a", 6)], 2.0, 3.0)
    r3 = _op(2, "results", (), OK, [(1, "a", 4)], 4.0, 5.0)
    assert voter_workload.check_reads([r1, r2]).ok
    bad = voter_workload.check_reads([r1, r2, r3])
    assert not bad.ok and "fewer votes for contestant(s) [1]" in bad.detail


def test_bank_checkers():
    ok = _op(0, "transfer", (0, 1, 30), OK, 70)
    unknown = _op(1, "transfer_local", (1, 2, 5), UNKNOWN)
    refused = _op(2, "transfer", (2, 0, 500), FAIL)
    transfers = [ok, unknown, refused]
    assert bank_workload.check_balances(transfers, {0: 70, 1: 130, 2: 100}, 3, 100).ok
    assert bank_workload.check_balances(transfers, {0: 70, 1: 125, 2: 105}, 3, 100).ok
    lost = bank_workload.check_balances(transfers, {0: 100, 1: 100, 2: 100}, 3, 100)
    assert not lost.ok and "account 0 holds 100, expected 70" in lost.detail
    total = {"total": 300, "accounts": 3, "negative": []}
    read = _op(3, "total", (), OK, {"total": 300, "accounts": 3, "negative": []})
    assert bank_workload.check_totals([read], total, 300, 3).ok
    bad_read = _op(4, "total", (), OK, {"total": 290, "accounts": 3, "negative": [(2, -10)]})
    v = bank_workload.check_totals([read, bad_read], total, 300, 3)
    assert not v.ok and "2 violation(s)" in v.detail


def test_bank_clients_read_the_total_every_nth_batch_or_never():
    import random

    def kinds(every: int) -> list[str]:
        client = bank_workload.BankWorkload(100, partitions=2, total_every=every).client(0, random.Random(1))
        return [client.next_batch(3)[0] for _ in range(12)]

    assert [i for i, k in enumerate(kinds(4), 1) if k == "total"] == [4, 8, 12]
    assert "total" not in kinds(0)
    assert kinds(bank_workload.TOTAL_EVERY).count("total") == 12 // bank_workload.TOTAL_EVERY
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="--total-every"):
            bank_workload.BankWorkload(100, partitions=2, total_every=bad)


def test_by_procedure_counts_each_procedure_apart_with_its_latency():
    from workloads.history import FAIL, OK, UNKNOWN, Op
    from workloads.runner import by_procedure

    ops = [Op(i, 0, "transfer", None, 0.0, OK, (i + 1) / 1000) for i in range(8)]
    ops += [Op(8, 0, "transfer", None, 0.0, FAIL, 0.05, None, "USER_ABORT: insufficient funds"),
            Op(9, 0, "transfer", None, 0.0, FAIL, 0.05, None, "LOCK_CONFLICT"),
            Op(10, 0, "transfer", None, 0.0, UNKNOWN, 0.05, None, "TIMEOUT"),
            Op(11, 0, "total", None, 0.0, OK, 0.2), Op(12, 0, "total", None, 0.0, OK, 0.4)]
    figures = by_procedure(ops, 2.0)
    assert figures["transfer"]["answered"] == 9 and figures["transfer"]["tps"] == 4.5  # 8 ok + 1 refused
    assert figures["total"] == {"answered": 2, "tps": 1.0, "p50_ms": 200.0, "p99_ms": 400.0}
    assert by_procedure([], 0.0) == {}


def test_the_peer_is_set_against_bank_transfers_alone_and_voter_as_a_whole():
    from actors.cli_bench import _ours_for_peer

    report = {"workload": "bank", "throughput_tps": 110.0, "latency_ms": {"p50": 9.0, "p99": 90.0},
              "by_procedure": {"transfer": {"tps": 100.0, "p50_ms": 8.0, "p99_ms": 30.0},
                               "total": {"tps": 10.0, "p50_ms": 20.0, "p99_ms": 99.0}}}
    assert _ours_for_peer(report) == (100.0, 8.0, 30.0)
    report["by_procedure"]["transfer_local"] = {"tps": 50.0, "p50_ms": 2.0, "p99_ms": 5.0}
    assert _ours_for_peer(report) == (150.0, 9.0, 90.0)  # mixed transfers: the run's latency
    voter = {"workload": "voter", "throughput_tps": 5000.0, "latency_ms": {"p50": 3.0, "p99": 7.0}}
    assert _ours_for_peer(voter) == (5000.0, 3.0, 7.0)
