"""Replication figures, side by side in one run: the cost of k=1, failover time, rebuild rate.

Design note
-----------
Three measurements, each printed, none asserted:

1. **k=1 vs k=0** -- the voter benchmark twice with the same calls and the
   same durability, once per k; the ratio of throughputs.
2. **failover** -- a k=1 voter cluster under a steady write load; the leader
   of partition 0 is killed ``kills`` times (each time after the partition is
   back to two replicas); for each kill, the time until a vote routed to that
   partition is acknowledged again (the client's own retry path does the
   failover).
3. **rebuild** -- a partition loaded with ``rebuild_rows`` votes; a follower is
   killed; the supervisor's replacement copies the leader's state and log
   tail.  Reports rows per second of the rebuild and the write throughput
   during it relative to just before.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Iterator

from actors import runtime
from actors.client import Cluster
from actors.routing import partition_of
from workloads import voter
from workloads.bench import BenchConfig, run_voter

#: How long throughput is sampled before and during a rebuild.
SAMPLE_S = 2.0
#: Longest wait for writes to be acknowledged again after a fault.
FAILOVER_WAIT_S = 60.0
#: Votes per write batch of the background load.
LOAD_BATCH = 200


def compare_k(cfg: BenchConfig) -> dict[str, Any]:
    runs = {}
    for k in (0, 1):
        report = run_voter(replace(cfg, k=k))
        runs[k] = {"throughput_tps": report["throughput_tps"], "latency_ms": report["latency_ms"], "ok": report["ok"]}
    ratio = runs[1]["throughput_tps"] / runs[0]["throughput_tps"] if runs[0]["throughput_tps"] else None
    return {"k0": runs[0], "k1": runs[1], "ratio_k1_to_k0": None if ratio is None else round(ratio, 3)}


class _Load:
    """Votes in a background thread; counts acknowledged votes."""

    def __init__(self, db: Cluster, seed: int) -> None:
        self.db, self.acked, self.stop = db, 0, threading.Event()
        self.gen = voter.VoterGenerator(random.Random(seed), phones_per_area_code=1_000_000)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            out = self.db.call_many("vote", self.gen.next_batch(LOAD_BATCH))
            self.acked += sum(1 for o in out if isinstance(o, int))

    def rate(self, seconds: float) -> float:
        before, t0 = self.acked, time.perf_counter()
        time.sleep(seconds)
        return (self.acked - before) / (time.perf_counter() - t0)

    def __enter__(self) -> "_Load":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=120)


def _wait(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _redundant(db: Cluster, per_partition: int) -> bool:
    status = db.status()
    serving = [r for r in status["replicas"] if r["state"] == "serving" and r["health"] == "ok"]
    return all(sum(1 for r in serving if r["partition"] == p) == per_partition for p in range(status["partitions"]))


def _phone_on(partition: int, partitions: int) -> int:
    phone = 212 * 10_000_000
    while partition_of(phone, partitions) != partition:
        phone += 1
    return phone


def _acked_again(db: Cluster, phone: int, timeout_s: float) -> bool:
    """Vote on ``phone``'s partition until one is acknowledged (True) or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if isinstance(db.call_many("vote", [(phone, 1, 10**9)])[0], int):
            return True
    return False


def measure_failover(db: Cluster, kills: int, seed: int) -> dict[str, Any]:
    times = []
    phone = _phone_on(0, db.partitions)
    with _Load(db, seed):
        for _ in range(kills):
            if not _wait(lambda: _redundant(db, 2), 120):
                break
            leader = db.status()["leaders"][0]
            started = time.perf_counter()
            runtime.kill(runtime.find(leader))
            if not _acked_again(db, phone, FAILOVER_WAIT_S):
                break  # not back in time: reported as fewer kills than asked
            times.append(time.perf_counter() - started)
    return {"kills": len(times), "seconds": [round(t, 4) for t in times],
            "median_s": round(statistics.median(times), 4) if times else None}


def measure_rebuild(db: Cluster, rows: int, seed: int) -> dict[str, Any]:
    gen = voter.VoterGenerator(random.Random(seed + 1), phones_per_area_code=1_000_000)
    loaded = 0
    while loaded < rows:
        out = db.call_many("vote", gen.next_batch(5_000))
        loaded += sum(1 for o in out if isinstance(o, int))
    with _Load(db, seed) as load:
        before = load.rate(SAMPLE_S)
        victim = next(r["actor_name"] for r in db.status()["replicas"] if r["role"] == "follower" and r["partition"] == 0)
        rebuilds_before = len(db.status()["rebuilds"])
        runtime.kill(runtime.find(victim))
        during_acked, t0 = load.acked, time.perf_counter()
        _wait(lambda: len(db.status()["rebuilds"]) > rebuilds_before, 300)
        during = (load.acked - during_acked) / (time.perf_counter() - t0)
    rebuild = db.status()["rebuilds"][-1] if len(db.status()["rebuilds"]) > rebuilds_before else {}
    seconds = rebuild.get("seconds") or 0.0
    return {
        "rows": rebuild.get("rows"), "copy_and_catch_up_s": seconds, "total_s": rebuild.get("total_s"),
        "rows_per_s": round(rebuild["rows"] / seconds) if seconds else None,
        "throughput_before_tps": round(before), "throughput_during_tps": round(during),
        "ratio_during_to_before": round(during / before, 3) if before else None,
    }


def run(cfg: BenchConfig, kills: int = 5, rebuild_rows: int = 200_000,
        on_phase: Callable[[str], None] | None = None) -> dict[str, Any]:
    phase = on_phase or (lambda _m: None)
    runtime.connect(cfg.address)
    phase("voter at k=0 and k=1")
    report: dict[str, Any] = {"k_cost": compare_k(cfg)}
    with voter_cluster("repl", cfg.partitions, cfg.durability) as db:
        phase(f"failover: {kills} leader kills")
        report["failover"] = measure_failover(db, kills, cfg.seed)
        phase(f"rebuild of a partition with about {rebuild_rows:,} rows")
        report["rebuild"] = measure_rebuild(db, rebuild_rows, cfg.seed)
    return report


@contextlib.contextmanager
def voter_cluster(name: str, partitions: int, durability: str) -> Iterator[Cluster]:
    """A k=1 voter cluster (in a temporary data directory unless durability is off), removed afterwards."""
    data_dir = tempfile.mkdtemp(prefix=f"ohmdb-{name}-") if durability != "off" else None
    try:
        db = Cluster.create(voter.schema(), partitions=partitions, k=1, name=f"{name}-{os.getpid()}",
                            data_dir=data_dir, durability=durability, initial_data=voter.initial_data())
        try:
            yield db
        finally:
            db.shutdown()
    finally:
        if data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
