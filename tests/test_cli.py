"""CLI smoke tests: the real ``ohmdb`` entry point in a child process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from actors import Cluster, runtime
from tests import bank
from tests.harness import wait_until

REPORT_KEYS = {"workload", "config", "committed", "aborted", "errors", "duration_s", "throughput_tps",
               "latency_ms", "ceiling_tps", "ratio_to_ceiling"}


def _ohmdb(args: list[str], env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    exe = shutil.which("ohmdb")
    cmd = [exe] if exe else [sys.executable, "-m", "actors.cli"]
    return subprocess.run(cmd + args, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args", [["--help"], ["bench", "--help"], ["bench", "voter", "--help"],
                                  ["bench", "ycsb", "--help"], ["bench", "append", "--help"], ["bench", "bank", "--help"],
                                  ["status", "--help"], ["shutdown", "--help"], ["faults", "--help"],
                                  ["bench", "faults", "--help"], ["bench", "floor", "--help"]])
def test_help_everywhere(args):
    proc = _ohmdb(args, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: ohmdb" in proc.stdout


def test_bad_usage_exits_2_with_a_message():
    proc = _ohmdb(["bench", "voter", "--batch", "0", "--address", "127.0.0.1:1"], timeout=60)
    assert proc.returncode == 2 and "--batch must be at least 1" in proc.stderr
    proc = _ohmdb(["bench", "voter", "--duration", "1", "--transactions", "5"], timeout=60)
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr


def test_bad_fault_specs_exit_2_naming_the_bad_part():
    proc = _ohmdb(["bench", "bank", "--duration", "5", "--faults", "kill:leader@2s,pause:follower@3s"], timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "fault 2 'pause:follower@3s': pause needs a duration, e.g. pause:follower@3s:2s" in proc.stderr
    proc = _ohmdb(["bench", "ycsb", "--faults", "node@3s"], timeout=60)
    assert proc.returncode == 2 and "node faults remove a Ray node: give --nodes 2 or more" in proc.stderr
    proc = _ohmdb(["bench", "ycsb", "--mix", "z", "--address", "127.0.0.1:1"], timeout=60)
    assert proc.returncode == 2 and "unknown YCSB mix 'z'" in proc.stderr


def test_bench_ycsb_short_run_writes_the_output_directory(subprocess_env, ray_address, tmp_path):
    out = tmp_path / "ycsb"
    proc = _ohmdb(["bench", "ycsb", "--mix", "f", "--duration", "2", "--clients", "2", "--batch", "20",
                   "--records", "500", "--durability", "off", "--faults", "kill:leader@1s",
                   "--address", ray_address, "--out", str(out), "--quiet"], env=subprocess_env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for text in ("checks", "acknowledged_writes", "applied_once", "faults", "kill leader", "crash (recovered)"):
        assert text in proc.stdout, text
    report = json.loads((out / "report.json").read_text())
    assert report["workload"] == "ycsb" and report["ok"] and report["faults"][0]["report"]["recovery_s"] > 0
    assert (out / "timeline.png").stat().st_size > 10_000 and (out / "history.jsonl").stat().st_size > 0


def test_bench_bank_on_three_nodes_survives_a_node_removal(tmp_path):
    """Its own multi-node Ray cluster on this machine (--nodes), one worker node removed under load."""
    out = tmp_path / "node"
    proc = _ohmdb(["bench", "bank", "--nodes", "3", "--partitions", "2", "--clients", "2", "--batch", "5",
                   "--duration", "8", "--faults", "node@3s", "--durability", "off", "--accounts", "1000",
                   "--out", str(out), "--quiet"], timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["nodes"] == 3 and report["ok"]
    (fault,) = report["faults"]
    assert fault["label"] == "remove node" and fault["report"]["kind"] in ("node-loss", "hang", "crash")


def test_bench_voter_short_run_writes_report(subprocess_env, ray_address, tmp_path):
    path = tmp_path / "report.json"
    proc = _ohmdb(["bench", "voter", "--transactions", "4000", "--clients", "2", "--batch", "200",
                   "--address", ray_address, "--json", str(path), "--quiet"], env=subprocess_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "throughput" in proc.stdout and "ratio to ceiling" in proc.stdout
    report = json.loads(path.read_text())
    assert REPORT_KEYS <= set(report)
    assert report["committed"] + report["aborted"] + report["errors"] == 4000
    assert all(check["ok"] for check in report["checks"].values())


def test_status_and_shutdown_of_a_running_cluster(subprocess_env, ray_address):
    db = Cluster.create(bank.schema(), partitions=2, name="test-cli-status")
    try:
        db.call("open_account", 1, "a")
        proc = _ohmdb(["status", "--name", "test-cli-status", "--json"], env=subprocess_env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        status = json.loads(proc.stdout)
        assert status["name"] == "test-cli-status" and len(status["replicas"]) == 4  # 2 partitions, k=1
        assert status["counts"]["committed"] == 1
        proc = _ohmdb(["status", "--name", "test-cli-status"], env={**subprocess_env, "COLUMNS": "200"})
        assert proc.returncode == 0 and "test-cli-status:p1:r0" in proc.stdout
        assert "coordinator: pid" in proc.stdout and "ready" in proc.stdout
        proc = _ohmdb(["shutdown", "--name", "test-cli-status"], env=subprocess_env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        db.shutdown()
    proc = _ohmdb(["status", "--name", "test-cli-status"], env=subprocess_env)
    assert proc.returncode == 2 and "no ohmdb cluster named 'test-cli-status'" in proc.stderr


def test_faults_of_a_running_cluster_and_of_its_data_dir(subprocess_env, ray_address, tmp_path):
    db = Cluster.create(bank.schema(), partitions=1, name="test-cli-faults", data_dir=str(tmp_path))
    try:
        db.call("open_account", 1, "a")
        follower = next(r for r in db.status()["replicas"] if r["role"] == "follower")
        os.kill(follower["pid"], signal.SIGKILL)
        wait_until(lambda: [f["state"] for f in db.faults()] == ["recovered"], what="the fault report")
        proc = _ohmdb(["faults", "--name", "test-cli-faults", "--json"], env=subprocess_env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        [report] = json.loads(proc.stdout)
        assert report["kind"] == "crash" and report["where"]["actors"][0]["actor"] == follower["actor_name"]
    finally:
        db.shutdown()
    proc = _ohmdb(["faults", "--data-dir", str(tmp_path), "--actions"], env=subprocess_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "crash" in proc.stdout and follower["actor_name"] in proc.stdout and "respawn" in proc.stdout


def test_log_dump_and_recover_on_a_data_dir(ray_address, tmp_path):
    data_dir = tmp_path / "db"
    db = Cluster.create(bank.schema(), partitions=2, name="test-cli-log", data_dir=str(data_dir))
    try:
        db.call_many("open_account", [(i, f"o{i}", 0) for i in range(6)])
        db.call_many("credit", [(i, 100 + i, 7) for i in range(6)])
    finally:
        db.shutdown()
    proc = _ohmdb(["log", "dump", "--data-dir", str(data_dir), "--json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    everything = [json.loads(line) for line in proc.stdout.splitlines()]
    records = [r for r in everything if r["replica"] == 0]
    follower = [r for r in everything if r["replica"] == 1]
    strip = [{k: v for k, v in r.items() if k != "replica"} for r in records]
    assert strip == [{k: v for k, v in r.items() if k != "replica"} for r in follower]  # same log on both
    data = [r for r in records if r["op"] != "REQUEST"]
    assert len(data) == 6 + 6 * 2  # 6 inserts, then an entry insert and a balance update per credit
    assert {r["op"] for r in data} == {"INSERT", "UPDATE"} and {r["partition"] for r in records} == {0, 1}
    requests = [r for r in records if r["op"] == "REQUEST"]
    assert len(requests) == 4 and all(r["row"]["outcome_bytes"] > 0 for r in requests)  # one per batch per partition
    for p in (0, 1):
        lsns = [r["lsn"] for r in records if r["partition"] == p]
        assert lsns == list(range(1, len(lsns) + 1))
    proc = _ohmdb(["log", "dump", "--data-dir", str(data_dir), "--partition", "0", "--from-lsn", "3", "--json"])
    assert proc.stdout.strip()
    assert all(json.loads(line)["lsn"] >= 3 and json.loads(line)["partition"] == 0 for line in proc.stdout.splitlines())

    # Tear the tail of partition 0's log: recover reports the cut and moves the bytes aside.
    seg = sorted((data_dir / "p0" / "r0" / "log").glob("seg-*.arrow"))[-1]
    seg.write_bytes(seg.read_bytes()[:-20])
    proc = _ohmdb(["recover", "--data-dir", str(data_dir), "--json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = {(r["partition"], r["replica"]): r for r in json.loads(proc.stdout)}
    assert reports[(0, 0)]["cut"] and not reports[(0, 1)]["cut"] and not reports[(1, 0)]["cut"]
    # The torn batch (partition 0's credits) is gone from replica 0 only.
    assert reports[(0, 0)]["rows"]["entries"] < reports[(0, 1)]["rows"]["entries"]
    assert reports[(0, 0)]["next_lsn"] < reports[(0, 1)]["next_lsn"]
    assert list((data_dir / "p0" / "r0" / "log" / "quarantine").glob("*.cut"))
    proc = _ohmdb(["recover", "--data-dir", str(data_dir)], env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0 and "next lsn" in proc.stdout


def test_recover_on_a_directory_without_a_database(tmp_path):
    proc = _ohmdb(["recover", "--data-dir", str(tmp_path)], timeout=60)
    assert proc.returncode == 2 and "holds no ohmdb database" in proc.stderr


def test_bench_replication_short_run(subprocess_env, ray_address, tmp_path):
    path = tmp_path / "repl.json"
    proc = _ohmdb(["bench", "replication", "--transactions", "2000", "--kills", "1", "--rebuild-rows", "2000",
                   "--address", ray_address, "--json", str(path)], env=subprocess_env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(path.read_text())
    assert report["k_cost"]["ratio_k1_to_k0"] > 0
    assert report["failover"]["kills"] == 1 and report["failover"]["median_s"] > 0
    assert report["rebuild"]["rows"] > 0 and report["rebuild"]["rows_per_s"] > 0


def test_bench_floor_measures_chains_ceilings_and_ohmdb_beside_them(subprocess_env, ray_address, tmp_path):
    path = tmp_path / "floor.json"
    proc = _ohmdb(["bench", "floor", "--calls", "20", "--address", ray_address, "--json", str(path)],
                  env={**subprocess_env, "COLUMNS": "200"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MP, decision logged at a holder" in proc.stdout and "cross-partition transfer p50" in proc.stdout
    report = json.loads(path.read_text())
    for kind in ("threaded", "async"):
        chain = {int(d): ms for d, ms in report["chain_p50_ms"][kind].items()}
        assert sorted(chain) == [1, 2, 3, 4] and chain[4] > chain[1] > 0  # more hops cost more
    for kind in ("threaded", "async"):
        cost = report["call_cost"][kind]
        assert cost["calls_s"] > 0 and cost["actor_cpu_us"] > 0 and cost["driver_cpu_us"] > 0
    floors = report["floors_ms"]
    assert floors["mp_logged_decision_async_ms"] > floors["mp_implicit_decision_async_ms"] > 0
    for name in ("voter", "bank"):
        assert report["ceilings"][name]["bare_txn_s"] > 0 and report["ceilings"][name]["k1_txn_s"] > 0
    mine = report["ohmdb_p50_ms"]
    assert mine["mp_transfer_ms"] > 0 and mine["sp_transfer_ms"] > 0
    assert not [n for n in runtime.list_names() if n.startswith("floor-")]  # probes and cluster gone
    proc = _ohmdb(["bench", "floor", "--calls", "5", "--address", ray_address], env=subprocess_env, timeout=60)
    assert proc.returncode == 2 and "--calls must be 10..100000, got 5" in proc.stderr


def test_bench_bank_short_run(subprocess_env, ray_address, tmp_path):
    """Both phases through a real cluster; the invariant holds; the report has both phases' figures."""
    path = tmp_path / "bank.json"
    proc = _ohmdb(["bench", "bank", "--compare", "--partitions", "2", "--clients", "2", "--batch", "10", "--duration", "1.5",
                   "--accounts", "500", "--durability", "off", "--address", ray_address, "--json", str(path)],
                  env=subprocess_env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(path.read_text())
    assert report["checks"]["invariant"]["ok"] and report["checks"]["invariant"]["reads"] > 0
    sp, mp = report["phases"]["sp"], report["phases"]["mp"]
    assert sp["committed"] > 0 and mp["committed"] > 0 and mp["unknown"] == 0
    assert report["mp_cost_ratio"]["throughput_sp_to_mp"] > 0


def test_bench_faults_short_run(subprocess_env, ray_address, tmp_path):
    """One fault of each kind: each is reported as the right kind, with its figures."""
    path = tmp_path / "faults.json"
    proc = _ohmdb(["bench", "faults", "--faults", "1", "--big-rows", "0", "--partitions", "2", "--durability", "off",
                   "--address", ray_address, "--json", str(path)], env=subprocess_env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    faults = json.loads(path.read_text())["faults"]
    expected = {"crash": ["crash"], "hang": ["hang"], "follower-crash": ["crash"],
                "coordinator-crash": ["coordinator-failure"], "coordinator-hang": ["coordinator-failure"]}
    assert {kind: r["reported_as"] for kind, r in faults.items()} == expected
    for kind, r in faults.items():
        assert r["detected_s"]["n"] == r["available_s"]["n"] == r["redundant_s"]["n"] == 1, kind
        assert 0 < r["detected_s"]["median"] <= r["redundant_s"]["median"], kind
