"""Platform floors: what Ray and Python cost on this machine before ohmdb does any work.

Design note
-----------
A speed target only means something next to what the platform allows, so this
measures, in one run, the floors every ohmdb figure sits on:

* **call chains** -- ``client -> a -> b -> ...`` through empty actors of ohmdb's
  own shape (spawned by ``runtime.spawn``, with the control concurrency group),
  each hop a blocking call inside the previous one, for depths 1..4, once with
  threaded actors and once with async ones (every ohmdb actor is threaded;
  the async column shows what the replicas cost before they became threaded).
  A cross-partition transaction needs, on its critical path, at least the
  chain ``client -> coordinator -> leader -> follower`` (depth 3: the PREPARE
  must be on the follower before anyone may count on it), and a separately
  logged decision adds ``coordinator -> holder -> follower`` (depth 3 minus
  depth 1).  Those sums, with empty actors, are the latency floors printed.
* **call costs** -- pipelined calls to one empty actor: calls per second and
  the CPU microseconds each costs in the actor and in the caller.  At ~1 ms
  of CPU per call on a small machine, throughput comes from putting many
  transactions in one call.
* **procedure ceilings** -- the workload's procedure in a loop on in-process
  ``PartitionCore`` objects (no Ray, no log), and the same with what k=1 adds
  to every transaction at the least: encoding its redo records into a log
  batch, shipping it as bytes, checking and decoding it, and applying it on
  a second (follower) core; each the best of ``CEILING_ROUNDS`` rounds.
  The second figure, times the machine's cores, bounds any k=1 throughput.
* **ohmdb beside them** (unless skipped) -- one client's p50 of a
  single-partition and a cross-partition bank transfer on a real 4-partition
  k=1 cluster (sync durability), in the same run, so the gap between the
  floor and ohmdb is ohmdb's own cost.

Nothing here asserts a speed; ``run`` returns figures and ``ohmdb bench floor``
prints them.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import tempfile
import time
import uuid
from typing import Any

from actors import runtime
from actors.client import Cluster
from actors.errors import UserAbort, invariant
from actors.partition_core import PartitionCore
from recovery.log_format import LogCodec, from_wire, to_wire
from workloads import bank, voter

#: Chain depths measured (1 = a plain call from the driver).
CHAIN_DEPTH_MAX = 4
#: Timed calls per chain depth (after WARMUP_CALLS untimed ones).
CHAIN_CALLS_DEFAULT = 300
WARMUP_CALLS = 30
#: Pipelined calls timed for the CPU cost of a call, per timed chain call, and how many are in flight at once.
CALL_COST_PER_CHAIN_CALL = 7  # run(calls=300): 2,100 pipelined calls per kind
PIPELINE_DEPTH = 8
#: Transactions per ceiling measurement, and per log batch in the replicated one.
CEILING_TXNS = 20_000
CEILING_BATCH_TXNS = 500
#: Runs of each ceiling; the best one counts.
CEILING_ROUNDS = 3
#: The cluster measured beside the floors: partitions, accounts, and untimed transfers first.
CLUSTER_PARTITIONS = 4
CLUSTER_ACCOUNTS = 10_000
CLUSTER_WARMUP_CALLS = 20
#: Threads of the threaded probe (it only needs one call at a time per chain).
PROBE_THREADS = 4


class HopProbe:
    """An empty threaded actor: ``hop(rest)`` calls ``rest[0].hop(rest[1:])`` and waits."""

    def hop(self, rest: list[Any]) -> int:
        if not rest:
            return 1
        return runtime.call(rest[0], "hop", rest[1:])

    def cpu_s(self) -> float:
        return _process_cpu_s()


class AsyncHopProbe:
    """The same as an async actor (the shape partition replicas had before they became threaded)."""

    async def hop(self, rest: list[Any]) -> int:
        if not rest:
            return 1
        return await runtime.get_async(runtime.submit(rest[0], "hop", rest[1:]))

    async def cpu_s(self) -> float:
        return _process_cpu_s()


def _process_cpu_s() -> float:
    """CPU seconds this process has used, all threads."""
    t = os.times()
    return t.user + t.system


def _spawn_probes(threaded: bool, count: int, into: list[Any]) -> None:
    """Spawn ``count`` probes into ``into`` one by one, so the caller's cleanup sees each one spawned."""
    cls = HopProbe if threaded else AsyncHopProbe
    tag = uuid.uuid4().hex[:8]
    for k in range(count):
        into.append(runtime.spawn(cls, f"floor-{tag}-{k}", max_concurrency=PROBE_THREADS if threaded else None))


def chain_latencies(threaded: bool, calls: int = CHAIN_CALLS_DEFAULT,
                    depth_max: int = CHAIN_DEPTH_MAX) -> dict[int, float]:
    """p50 milliseconds of a call chain through ``depth`` empty actors, for depth 1..depth_max."""
    probes: list[Any] = []
    try:
        _spawn_probes(threaded, depth_max, probes)
        out = {}
        for depth in range(1, depth_max + 1):
            rest = probes[1:depth]
            for _ in range(WARMUP_CALLS):
                runtime.call(probes[0], "hop", rest)
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                runtime.call(probes[0], "hop", rest)
                times.append(time.perf_counter() - t0)
            out[depth] = statistics.median(times) * 1000
        return out
    finally:
        for probe in probes:
            runtime.kill(probe)


def call_costs(threaded: bool, calls: int) -> dict[str, float]:
    """Pipelined calls (PIPELINE_DEPTH in flight) to one empty actor: calls/s, CPU microseconds per call
    in the actor and in this driver (what batching saves per transaction it puts in one call)."""
    probes: list[Any] = []
    try:
        _spawn_probes(threaded, 1, probes)
        probe = probes[0]
        for _ in range(WARMUP_CALLS):
            runtime.call(probe, "hop", [])
        actor0, driver0, t0 = runtime.call(probe, "cpu_s"), _process_cpu_s(), time.perf_counter()
        pending: list[Any] = []
        for _ in range(calls):
            pending.append(runtime.submit(probe, "hop", []))
            if len(pending) >= PIPELINE_DEPTH:
                runtime.get(pending.pop(0))
        for ref in pending:  # each must answer: a failed call raises rather than counting
            runtime.get(ref)
        elapsed = time.perf_counter() - t0
        actor_s, driver_s = runtime.call(probe, "cpu_s") - actor0, _process_cpu_s() - driver0
        return {"calls_s": calls / elapsed, "actor_cpu_us": actor_s / calls * 1e6,
                "driver_cpu_us": driver_s / calls * 1e6}
    finally:
        for probe in probes:
            runtime.kill(probe)


def _core(schema: Any, data: dict[str, list[dict[str, Any]]]) -> PartitionCore:
    """A one-partition core holding all of ``data``."""
    core = PartitionCore(schema, 0, 1)
    for table, rows in data.items():
        core.load(table, rows)
    return core


def _workload(name: str, seed: int, transactions: int) -> tuple[Any, dict, str, list[tuple]]:
    """(schema, initial data, procedure, argument tuples) for one partition holding every key."""
    rng = random.Random(seed)
    if name == "voter":
        gen = voter.VoterGenerator(rng)
        return voter.schema(), voter.initial_data(), "vote", gen.next_batch(transactions)
    if name == "bank":
        load = bank.BankLoad(rng, bank.ACCOUNTS_DEFAULT, 1)
        return bank.schema(), bank.initial_data(), "transfer_local", [load.next_local() for _ in range(transactions)]
    raise ValueError(f"no procedure ceiling for workload {name!r}; known: voter, bank")


def procedure_ceilings(name: str, seed: int = 1, transactions: int = CEILING_TXNS,
                       rounds: int = CEILING_ROUNDS) -> dict[str, float]:
    """Transactions per second of ``name``'s procedure on one in-process core: bare, and with k=1's least work.

    Each is the best of ``rounds`` runs over fresh cores: a ceiling is an upper bound, and the
    machine is shared, so a slow round says more about the neighbours than about the code.
    """
    schema, data, procedure, calls = _workload(name, seed, transactions)
    bare_s = min(_bare_seconds(schema, data, procedure, calls) for _ in range(rounds))
    replicated_s = min(_replicated_seconds(schema, data, procedure, calls) for _ in range(rounds))
    return {"procedure": procedure, "transactions": len(calls), "rounds": rounds,
            "bare_txn_s": len(calls) / bare_s, "k1_txn_s": len(calls) / replicated_s}


def _bare_seconds(schema: Any, data: dict, procedure: str, calls: list[tuple]) -> float:
    core, redo = _core(schema, data), []
    t0 = time.perf_counter()
    for args in calls:
        core.execute(procedure, args, redo)
        redo.clear()
    return time.perf_counter() - t0


def _replicated_seconds(schema: Any, data: dict, procedure: str, calls: list[tuple]) -> float:
    """The leader core executes a batch, its redo is encoded, shipped as bytes, checked, decoded and applied."""
    leader, follower = _core(schema, data), _core(schema, data)
    codec, lsn = LogCodec(schema), 1
    t0 = time.perf_counter()
    for start in range(0, len(calls), CEILING_BATCH_TXNS):
        redo: list = []
        for args in calls[start:start + CEILING_BATCH_TXNS]:
            leader.execute(procedure, args, redo)
        if redo:
            batch, meta = codec.encode(redo, lsn, 1)
            follower.apply_redo(codec.decode(from_wire(to_wire(batch), codec.arrow_schema, meta)))
            lsn += len(redo)
    elapsed = time.perf_counter() - t0
    invariant(follower.state_copy() == leader.state_copy(), "the follower core must hold what the leader wrote")
    return elapsed


def floors(threaded: dict[int, float], asynchronous: dict[int, float]) -> dict[str, float]:
    """Latency floors of a cross-partition transaction with empty actors (see the design note)."""
    out = {}
    for kind, chain in (("threaded", threaded), ("async", asynchronous)):
        phase1 = chain[3]
        out[f"mp_implicit_decision_{kind}_ms"] = phase1
        out[f"mp_logged_decision_{kind}_ms"] = phase1 + (chain[3] - chain[1])
        out[f"sp_replicated_{kind}_ms"] = chain[2]
    return out


def ohmdb_latencies(calls: int = CHAIN_CALLS_DEFAULT, seed: int = 1) -> dict[str, float]:
    """One client's p50 ms of bank transfers on a real k=1 cluster: single- and cross-partition."""
    directory = tempfile.mkdtemp(prefix="ohmdb-floor-")
    try:
        db = Cluster.create(bank.schema(), partitions=CLUSTER_PARTITIONS, k=1, name=f"floor-{uuid.uuid4().hex[:8]}",
                            data_dir=directory, durability="sync", initial_data=bank.initial_data(CLUSTER_ACCOUNTS))
        try:
            return _transfer_latencies(db, calls, seed)
        finally:
            db.shutdown()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _transfer_latencies(db: Cluster, calls: int, seed: int) -> dict[str, float]:
    """p50 of one client's transfers; a refused one (the balance would go negative) counts: it ran to its end."""
    load = bank.BankLoad(random.Random(seed), CLUSTER_ACCOUNTS, CLUSTER_PARTITIONS)
    out = {}
    for label, procedure, next_args in (("sp_transfer", "transfer_local", load.next_local),
                                        ("mp_transfer", "transfer", load.next_cross)):
        for _ in range(CLUSTER_WARMUP_CALLS):
            _transfer(db, procedure, next_args())
        times = []
        for _ in range(calls):
            args = next_args()
            t0 = time.perf_counter()
            _transfer(db, procedure, args)
            times.append(time.perf_counter() - t0)
        out[f"{label}_ms"] = statistics.median(times) * 1000
    return out


def _transfer(db: Cluster, procedure: str, args: tuple) -> None:
    try:
        db.call(procedure, *args)
    except UserAbort:
        pass


def run(calls: int = CHAIN_CALLS_DEFAULT, seed: int = 1, with_cluster: bool = True) -> dict[str, Any]:
    """Every floor, measured now (Ray must be connected); ohmdb's own figures beside them unless skipped."""
    threaded = chain_latencies(True, calls)
    asynchronous = chain_latencies(False, calls)
    costs = {"threaded": call_costs(True, calls * CALL_COST_PER_CHAIN_CALL),
             "async": call_costs(False, calls * CALL_COST_PER_CHAIN_CALL)}
    cores = os.cpu_count() or 1
    ceilings = {name: procedure_ceilings(name, seed) for name in ("voter", "bank")}
    return {
        "cpus": cores,
        "chain_p50_ms": {"threaded": threaded, "async": asynchronous},
        "floors_ms": floors(threaded, asynchronous),
        "call_cost": costs,
        "ceilings": ceilings,
        "k1_bound_txn_s": {name: c["k1_txn_s"] * cores for name, c in ceilings.items()},
        "ohmdb_p50_ms": ohmdb_latencies(calls, seed) if with_cluster else None,
    }
