"""Durable clusters through Ray: recovery after a stop, after kill -9 of every Ray process,
a failing disk, automatic snapshots, and data directories that do not fit."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from actors import Cluster, runtime
from actors.errors import InvalidConfig, LogWriteFailed
from recovery.replay import LOG_DIR
from recovery.segments import list_segments
from tests import bank

KILL_RUNS = 3


def _recover(name: str, data_dir, partitions: int = 2, k: int = 1) -> Cluster:
    return Cluster.create(bank.schema(), partitions=partitions, k=k, name=name, data_dir=str(data_dir))


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_a_stopped_cluster_comes_back_from_its_data_dir(ray_address, tmp_path, durability):
    db = Cluster.create(bank.schema(), partitions=2, name=f"test-dur-{durability}", data_dir=str(tmp_path),
                        durability=durability, initial_data={"branches": bank.BRANCHES})
    db.call_many("open_account", [(i, f"o{i}", 5) for i in range(20)])
    db.call_many("credit", [(i % 20, i, i) for i in range(300)])
    before = db.call("dump")
    db.shutdown()
    again = Cluster.create(bank.schema(), partitions=2, name=f"test-dur-{durability}", data_dir=str(tmp_path),
                           durability=durability, initial_data={"branches": bank.BRANCHES})
    try:
        assert again.call("dump") == before
        assert again.call("branch_city", 1, "LIS") == "Lisbon"  # replicated rows came back, not loaded twice
        reports = [r["recovery"] for r in again.status()["replicas"]]
        assert sum(r["records_replayed"] for r in reports) > 0 and all(r["cut"] == [] for r in reports)
        assert again.call("credit", 3, 10_000, 1) > 0  # and it keeps writing after recovery
    finally:
        again.shutdown()


def _kill_session(pid: int) -> None:
    """SIGKILL every process in the session of ``pid`` (its Ray: GCS, raylet, workers, actors)."""
    sid = os.getsid(pid)
    listing = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        p, s = line.split()
        if int(s) == sid:
            try:
                os.kill(int(p), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _wait_for_acks(path: str, count: int, proc: subprocess.Popen, timeout_s: float = 180) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"writer exited early with {proc.returncode}: {proc.stderr.read()[-3000:]}"
        if os.path.exists(path):
            with open(path) as f:
                lines = f.read().count("\n")
            if lines > count:
                return lines
        time.sleep(0.05)
    raise AssertionError(f"writer did not acknowledge {count} transactions in {timeout_s} s")


@pytest.mark.parametrize("run", range(KILL_RUNS))
def test_kill_9_of_every_ray_process_loses_nothing_acknowledged(ray_address, tmp_path, run):
    data_dir, acks = tmp_path / "data", tmp_path / "acks.txt"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.crash_writer", str(data_dir), str(acks), str(run)],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env=env,
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        kill_after = random.Random(run).randrange(50, 1500)
        _wait_for_acks(str(acks), kill_after, proc)
    finally:
        _kill_session(proc.pid)
        proc.wait(timeout=30)
    acked = [tuple(map(int, line.split())) for line in acks.read_text().splitlines() if not line.startswith("#")]
    db = _recover(f"test-kill9-{run}", data_dir)
    try:
        state = db.call("dump")
        bank.check_credits(state, acked)
        assert len(state["accounts"]) == 40 and len(state["entries"]) >= len(acked)
    finally:
        db.shutdown()


def test_a_failing_disk_stops_acknowledgements_with_a_typed_error(ray_address, tmp_path):
    db = Cluster.create(bank.schema(), partitions=1, k=0, name="test-dur-disk", data_dir=str(tmp_path))
    try:
        db.call("open_account", 1, "a", 0)
        assert runtime.call(runtime.find("test-dur-disk:p0:r0"), "inject_fault", "fsync", control=True)
        with pytest.raises(LogWriteFailed, match="No space left on device") as info:
            db.call("deposit", 1, 5)
        assert info.value.not_applied is False
        out = db.call_many("deposit", [(1, 1), (1, 2)])
        assert all(isinstance(o, LogWriteFailed) for o in out)  # nothing acknowledged any more
        replica, = db.status()["replicas"]
        assert replica["health"] == "log-failed" and "No space left" in replica["log_failed"]
    finally:
        db.shutdown()
    db = _recover("test-dur-disk", tmp_path, partitions=1, k=0)
    try:
        # The failed deposit's outcome was unknown (written, never fsynced): either is right.
        # The two refused afterwards never ran.
        account, = db.call("dump")["accounts"]
        assert account["balance"] in (0, 5)
    finally:
        db.shutdown()


def test_snapshots_are_taken_automatically_and_truncate_the_log(ray_address, tmp_path):
    db = Cluster.create(bank.schema(), partitions=1, k=0, name="test-dur-snap", data_dir=str(tmp_path),
                        segment_bytes_max=16_384, snapshot_log_bytes=65_536)
    try:
        db.call_many("open_account", [(i, f"o{i}", 0) for i in range(10)])
        for k in range(40):
            db.call_many("credit", [(i, k * 10 + i, 1) for i in range(10)])
        manual = db.snapshot()
        assert manual[0]["lsn"] > 0 and manual[0]["tables"]["entries"]["rows"] == 400
        replica, = db.status()["replicas"]
        assert replica["snapshots_taken"] >= 2
        before = db.call("dump")
    finally:
        db.shutdown()
    segments = list_segments(str(tmp_path / "p0" / "r0" / LOG_DIR))
    assert segments and segments[0][0] > 1  # the log before the kept snapshots is gone
    db = _recover("test-dur-snap", tmp_path, partitions=1, k=0)
    try:
        assert db.call("dump") == before
        assert db.status()["replicas"][0]["recovery"]["snapshot_lsn"] > 0
    finally:
        db.shutdown()


def test_data_dirs_that_do_not_fit_are_refused(ray_address, tmp_path):
    db = Cluster.create(bank.schema(), partitions=2, name="test-dur-fit", data_dir=str(tmp_path / "db"))
    db.shutdown()
    with pytest.raises(InvalidConfig, match="2 partitions; asked for 3"):
        Cluster.create(bank.schema(), partitions=3, name="test-dur-fit", data_dir=str(tmp_path / "db"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a database")
    with pytest.raises(InvalidConfig, match="holds no ohmdb catalog"):
        Cluster.create(bank.schema(), partitions=2, name="test-dur-fit", data_dir=str(tmp_path / "other"))
    with pytest.raises(InvalidConfig, match="needs data_dir"):
        Cluster.create(bank.schema(), partitions=2, name="test-dur-fit", durability="sync")
    with pytest.raises(InvalidConfig, match="unknown Cluster.create setting"):
        Cluster.create(bank.schema(), partitions=2, name="test-dur-fit", flush_every=3)
