"""Fault-handling figures: detection, availability and full-redundancy times over many faults.

Design note
-----------
A k=1 voter cluster runs a steady write load (``replication_bench._Load``).
For each fault kind the benchmark injects ``faults`` faults, one at a time,
each after the cluster is back at k+1 replicas:

* ``crash``  -- SIGKILL of a partition leader's process;
* ``hang``   -- SIGSTOP of a partition leader's process (the supervisor must
  find it by heartbeats alone; Ray still thinks it is alive);
* ``follower-crash`` -- SIGKILL of a follower;
* ``coordinator-crash`` / ``coordinator-hang`` -- SIGKILL / SIGSTOP of the
  two-phase-commit coordinator; "available" is then the first answer of
  voter's ``results`` (a multi-partition read, so it needs the coordinator)
  and "redundant" the new coordinator having finished its recovery.

For each it takes the injection time from this process's clock and, from the
fault report the supervisor wrote, when the fault was detected and when the
partition was back at k+1 replicas; availability is measured by the client: the
first vote routed to that partition acknowledged after the fault.  All on one
machine, so the clocks agree.  Then one partition holding ``big_rows`` votes
loses a follower, and the time to full redundancy is reported.  Figures are
printed, never asserted (the machines are noisy).
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import time
from typing import Any, Callable

from actors import runtime
from actors.client import Cluster
from actors.coordinator import coordinator_name
from actors.errors import OhmError
from workloads import voter
from workloads.replication_bench import (
    FAILOVER_WAIT_S, _acked_again, _Load, _phone_on, _redundant, _wait, voter_cluster,
)

KINDS = ("crash", "hang", "follower-crash", "coordinator-crash", "coordinator-hang")
#: Votes per batch when filling the big partition.
FILL_BATCH = 5_000
#: Longest wait for one fault's report to close.
REPORT_WAIT_S = 120.0


def _victim(db: Cluster, kind: str) -> dict[str, Any]:
    if kind.startswith("coordinator"):
        return {"pid": db.status()["coordinator"]["pid"], "actor_name": coordinator_name(db.name)}
    role = "follower" if kind == "follower-crash" else "leader"
    return next(r for r in db.status()["replicas"] if r["partition"] == 0 and r["role"] == role
                and r["state"] == "serving")


def _report_for(db: Cluster, actor: str, after: float, pid: int | None = None) -> dict[str, Any] | None:
    """The report on ``actor`` (that process, when ``pid`` is given: a coordinator keeps its name)."""
    for report in db.faults():
        if report["detected_at"] >= after and any(a["actor"] == actor and (pid is None or a.get("pid") == pid)
                                                  for a in report["where"]["actors"]):
            return report
    return None


def one_fault(db: Cluster, kind: str, phone: int) -> dict[str, Any]:
    """Inject one fault on partition 0; its detection, availability and redundancy times."""
    victim = _victim(db, kind)
    injected = time.time()
    os.kill(victim["pid"], signal.SIGSTOP if kind.endswith("hang") else signal.SIGKILL)
    again = _read_again(db) if kind.startswith("coordinator") else _acked_again(db, phone, FAILOVER_WAIT_S)
    available = time.time() - injected if again else None
    if available is None:
        return {"kind": kind, "available_s": None, "report": "writes not acknowledged again in time"}
    pid = victim["pid"] if kind.startswith("coordinator") else None
    _wait(lambda: (r := _report_for(db, victim["actor_name"], injected - 1, pid)) is not None
          and r["state"] == "recovered", REPORT_WAIT_S)
    report = _report_for(db, victim["actor_name"], injected - 1, pid)
    if report is None:
        return {"kind": kind, "available_s": round(available, 4), "report": None}
    return {"kind": kind, "reported_as": report["kind"], "detected_s": round(report["detected_at"] - injected, 4),
            "available_s": round(available, 4), "state": report["state"],
            "redundant_s": None if report["recovered_at"] is None else round(report["recovered_at"] - injected, 4)}


def _read_again(db: Cluster) -> bool:
    """A multi-partition read (through the coordinator) answered; the client waits for a new coordinator."""
    try:
        db.call("results")
        return True
    except OhmError:
        return False


def _ready_again(db: Cluster) -> bool:
    """k+1 replicas everywhere and a coordinator that finished its recovery."""
    return _redundant(db, 2) and bool((db.status().get("coordinator") or {}).get("ready"))


def _summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    values = sorted(values)
    return {"n": len(values), "min": values[0], "median": round(statistics.median(values), 4),
            "p90": values[min(len(values) - 1, int(0.9 * len(values)))], "max": values[-1]}


def measure(db: Cluster, faults: int, seed: int, on_fault: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    phone = _phone_on(0, db.partitions)
    out: dict[str, Any] = {}
    with _Load(db, seed):
        for kind in KINDS:
            samples = []
            for _ in range(faults):
                if not _wait(lambda: _ready_again(db), REPORT_WAIT_S):
                    break
                sample = one_fault(db, kind, phone)
                samples.append(sample)
                on_fault(sample)
            out[kind] = {
                "samples": samples,
                "reported_as": sorted({s.get("reported_as") for s in samples if s.get("reported_as")}),
                **{f"{m}_s": _summary([s[f"{m}_s"] for s in samples if s.get(f"{m}_s") is not None])
                   for m in ("detected", "available", "redundant")},
            }
    return out


def measure_big_rebuild(db: Cluster, rows: int, seed: int) -> dict[str, Any]:
    """Fill partition 0 (of a one-partition cluster) with ``rows`` votes, kill a follower, time redundancy."""
    gen = voter.VoterGenerator(random.Random(seed + 7), phones_per_area_code=10_000_000, max_votes=10**9)
    loaded = 0
    while loaded < rows:
        out = db.call_many("vote", gen.next_batch(FILL_BATCH))
        loaded += sum(1 for o in out if isinstance(o, int))
    victim = _victim(db, "follower-crash")
    injected = time.time()
    os.kill(victim["pid"], signal.SIGKILL)
    _wait(lambda: (r := _report_for(db, victim["actor_name"], injected - 1)) is not None
          and r["state"] == "recovered", 300)
    report = _report_for(db, victim["actor_name"], injected - 1) or {}
    rebuild = (db.status()["rebuilds"] or [{}])[-1]
    return {"rows": rebuild.get("rows"), "redundant_s": None if not report.get("recovered_at") else
            round(report["recovered_at"] - injected, 3), "copy_and_catch_up_s": rebuild.get("seconds")}


def run(partitions: int = 2, faults: int = 20, big_rows: int = 1_000_000, seed: int = 1,
        durability: str = "sync", address: str | None = None,
        on_phase: Callable[[str], None] | None = None,
        on_fault: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    phase = on_phase or (lambda _m: None)
    runtime.connect(address)
    report: dict[str, Any] = {"config": {"partitions": partitions, "faults": faults, "big_rows": big_rows,
                                         "durability": durability, "k": 1}}
    with voter_cluster("faults", partitions, durability) as db:
        phase(f"{faults} faults of each kind: {', '.join(KINDS)}")
        report["faults"] = measure(db, faults, seed, on_fault or (lambda _s: None))
        report["config"]["settings"] = {k: db.config.to_dict()[k] for k in (
            "detector", "heartbeat_interval_ms", "heartbeat_timeout_ms", "heartbeat_timeout_max_ms", "phi_threshold")}
    if big_rows:
        with voter_cluster("faults-big", 1, durability) as db:
            phase(f"full redundancy of a partition of {big_rows:,} rows")
            report["big_rebuild"] = measure_big_rebuild(db, big_rows, seed)
    return report
