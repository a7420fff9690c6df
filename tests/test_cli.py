"""CLI smoke tests: the real ``ohmdb`` entry point in a child process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from actors import Cluster
from tests import bank

REPORT_KEYS = {"workload", "config", "committed", "aborted", "errors", "duration_s", "throughput_tps",
               "latency_ms", "ceiling_tps", "ratio_to_ceiling"}


def _ohmdb(args: list[str], env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    exe = shutil.which("ohmdb")
    cmd = [exe] if exe else [sys.executable, "-m", "actors.cli"]
    return subprocess.run(cmd + args, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args", [["--help"], ["bench", "--help"], ["bench", "voter", "--help"],
                                  ["status", "--help"], ["shutdown", "--help"]])
def test_help_everywhere(args):
    proc = _ohmdb(args, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: ohmdb" in proc.stdout


def test_bad_usage_exits_2_with_a_message():
    proc = _ohmdb(["bench", "voter", "--batch", "0", "--address", "127.0.0.1:1"], timeout=60)
    assert proc.returncode == 2 and "--batch must be at least 1" in proc.stderr
    proc = _ohmdb(["bench", "voter", "--duration", "1", "--transactions", "5"], timeout=60)
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr


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
        assert status["name"] == "test-cli-status" and len(status["replicas"]) == 2
        assert status["counts"]["committed"] == 1
        proc = _ohmdb(["status", "--name", "test-cli-status"], env={**subprocess_env, "COLUMNS": "200"})
        assert proc.returncode == 0 and "test-cli-status:p1:r0" in proc.stdout
        proc = _ohmdb(["shutdown", "--name", "test-cli-status"], env=subprocess_env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        db.shutdown()
    proc = _ohmdb(["status", "--name", "test-cli-status"], env=subprocess_env)
    assert proc.returncode == 2 and "no ohmdb cluster named 'test-cli-status'" in proc.stderr
