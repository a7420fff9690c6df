"""The benchmark harness end to end on a real local Ray instance: workloads, faults, checkers, outputs.

Short runs (memory-only clusters, a few seconds of load) of each workload, with and without faults.
Each asserts the checkers' verdicts and that every injected fault was reported with its durations.
"""

from __future__ import annotations

import json

import pytest

from workloads import runner
from workloads.append import AppendWorkload
from workloads.bank_workload import BankWorkload
from workloads.voter_workload import VoterWorkload
from workloads.workload import Verdict
from workloads.ycsb import YcsbWorkload


def _run(ray_address, wl, **kw):
    cfg = runner.RunConfig(workload=wl.name, partitions=2, k=1, durability="off", address=ray_address, **kw)
    return runner.run(cfg, wl)


def _failed(report):
    return {name: c["detail"] for name, c in report["checks"].items() if not c["ok"]}


def _assert_faults_reported(report, expected: int):
    faults = [f for f in report["faults"] if not f["skipped"]]
    assert len(faults) == expected, report["faults"]
    for f in faults:
        r = f["report"]
        assert r is not None and r["detection_s"] is not None and r["recovery_s"] is not None, f
        assert 0 <= r["detection_s"] <= r["recovery_s"] < 60, f


def test_voter_without_faults(ray_address):
    report = _run(ray_address, VoterWorkload(), clients=2, batch=100, duration_s=None, transactions=3000)
    assert report["ok"], _failed(report)
    assert report["committed"] + report["aborted"] + report["errors"] == 3000
    assert {"acknowledged_votes", "results", "results_reads"} <= set(report["checks"])
    assert report["faults"] == [] and report["unknown"] == 0 and report["ceiling_tps"] > 0


@pytest.mark.parametrize("make", [lambda: BankWorkload(600, partitions=2), lambda: YcsbWorkload("c", 300),
                                  lambda: AppendWorkload(keys=6)], ids=["bank", "ycsb-c", "append"])
def test_each_workload_without_faults(ray_address, make):
    wl = make()
    report = _run(ray_address, wl, clients=2, batch=4, duration_s=2.0)
    assert report["ok"], _failed(report)
    assert report["committed"] > 0 and report["unknown"] == 0 and report["faults"] == []
    assert "faults" not in report["checks"] and len(report["checks"]) >= 2


def test_voter_through_a_leader_pause(ray_address):
    report = _run(ray_address, VoterWorkload(), clients=2, batch=50, duration_s=5.0, faults="pause:leader[p0]@1.5s:2s")
    assert report["ok"], _failed(report)
    _assert_faults_reported(report, 1)
    assert report["faults"][0]["report"]["kind"] == "hang" and report["faults"][0]["resumed_s"] is not None


def test_bank_with_a_leader_kill_a_follower_pause_and_a_coordinator_kill(ray_address):
    report = _run(ray_address, BankWorkload(1000, partitions=2), clients=3, batch=5, duration_s=7.0,
                  faults="kill:leader@1.5s,pause:follower@3s:1s,kill:coordinator@5s", seed=3)
    assert report["ok"], _failed(report)
    assert report["checks"]["bank_total"]["ok"] and report["checks"]["acknowledged_transfers"]["ok"]
    _assert_faults_reported(report, 3)
    kinds = {f["label"]: f["report"]["kind"] for f in report["faults"]}
    assert kinds == {"kill leader": "crash", "pause follower": "hang", "kill coordinator": "coordinator-failure"}
    assert report["committed"] > 0 and report["heal"]["whole"]


def test_ycsb_open_loop_through_a_follower_kill(ray_address):
    report = _run(ray_address, YcsbWorkload("a", 500), clients=2, batch=20, rate=400.0, duration_s=5.0,
                  faults="kill:follower[p1]@2s")
    assert report["ok"], _failed(report)
    _assert_faults_reported(report, 1)
    assert report["faults"][0]["partition"] == 1
    # An open loop sends on schedule: about rate x duration transactions, whatever the latency.
    assert 0.5 * 400 * 5 <= report["transactions"] <= 1.1 * 400 * 5


def test_append_through_a_leader_kill_then_a_supervisor_kill(ray_address):
    """The supervisor dies while it rebuilds the killed leader's replacement.

    Regression: the restarted supervisor killed the half-built follower but the leader kept it in its
    configuration and waited for its acknowledgements forever; every transaction on that partition hung.
    """
    report = _run(ray_address, AppendWorkload(), clients=2, batch=2, duration_s=7.0,
                  faults="kill:leader[p0]@2s,kill:supervisor@3s")
    assert report["ok"], _failed(report)
    assert report["checks"]["elle"]["ok"] and report["checks"]["acknowledged_appends"]["ok"]
    _assert_faults_reported(report, 2)
    assert report["committed"] > 20


def test_outputs_are_written_and_a_failing_checker_fails_the_run(ray_address, tmp_path):
    class Strict(VoterWorkload):
        def check(self, db, ops):
            return {**super().check(db, ops), "always_fails": Verdict(False, "planted")}

    out = tmp_path / "run"
    report = _run(ray_address, Strict(), clients=2, batch=50, duration_s=2.0, out=str(out))
    assert not report["ok"] and _failed(report) == {"always_fails": "planted"}
    written = json.loads((out / "report.json").read_text())
    assert written["checks"]["always_fails"]["ok"] is False and written["files"]["timeline"] == "timeline.png"
    assert len(written["timeline"]) >= 2 and sum(row["ok"] for row in written["timeline"]) == written["committed"]
    lines = (out / "history.jsonl").read_text().splitlines()
    assert len(lines) == 2 * written["history"]["ops"]
    assert json.loads(lines[0])["type"] == "invoke"
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("bad, message", [
    ({"faults": "kill:leader@5s,explode:leader@2s"}, "fault 2 'explode:leader@2s': unknown action 'explode'"),
    ({"faults": "node@2s"}, "give --nodes 2 or more"),
    ({"faults": "kill:leader@2s", "duration_s": None, "transactions": 10}, "--faults needs --duration"),
    ({"rate": 100.0, "duration_s": None, "transactions": 10}, "--rate must be positive and goes with --duration"),
    ({"workload": "tpcc"}, "unknown workload 'tpcc'"),
    ({"nodes": 2, "address": "auto"}, "cannot go with --address"),
])
def test_bad_configurations_are_refused_naming_the_problem(bad, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        runner.RunConfig(**{"duration_s": 5.0, **bad}).validate()
