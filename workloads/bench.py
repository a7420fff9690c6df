"""The benchmark runner: drive a workload through a cluster and report figures.

Design note
-----------
A run has three parts:

1. **ceiling** -- the workload's procedure run in a loop in this process,
   directly on ``PartitionCore`` objects (no Ray, no logging), over the same
   generated arguments the clients will send.  It is the baseline that the
   end-to-end figure is reported against (``ratio_to_ceiling``), measured in
   the same run so machine noise hits both.
2. **load** -- ``clients`` driver threads, each with its own seeded generator,
   each sending ``call_many`` batches of ``batch`` transactions and waiting for
   the answer (closed loop).  A transaction's latency is its batch's round
   trip: a transaction is acknowledged when its batch returns.
3. **report** -- committed / aborted (user aborts, by reason) / errors, latency
   percentiles weighted per transaction, throughput, and workload checks
   (voter: the results procedure's total equals the committed votes).

The runner never asserts a speed; it prints and writes figures.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from actors import runtime
from actors.client import Cluster
from actors.errors import OhmError, UserAbort
from actors.partition_core import PartitionCore
from actors.routing import partition_of
from workloads import voter

#: Transactions the ceiling measurement runs (fewer if the run itself is shorter).
CEILING_TXNS_MAX = 50_000
#: Transactions of a run when neither a count nor a duration is given.
TRANSACTIONS_DEFAULT = 200_000
#: How often the progress display refreshes.
PROGRESS_REFRESH_S = 0.25


@dataclass
class BenchConfig:
    workload: str = "voter"
    partitions: int = 2
    clients: int = 4
    batch: int = 500
    duration_s: float | None = None
    transactions: int | None = TRANSACTIONS_DEFAULT
    seed: int = 1
    contestants: int = voter.CONTESTANTS_DEFAULT
    max_votes: int = voter.MAX_VOTES_DEFAULT
    durability: str = "sync"
    k: int = 1
    data_dir: str | None = None      # None: a temporary directory, removed after the run
    address: str | None = None

    def validate(self) -> "BenchConfig":
        if self.workload != "voter":
            raise ValueError(f"unknown workload {self.workload!r}; available: voter")
        validate_load(self.partitions, self.clients, self.batch, self.durability, self.duration_s, self.transactions)
        return self


def validate_load(partitions: int, clients: int, batch: int, durability: str,
                  duration_s: float | None, transactions: int | None) -> None:
    """The checks every benchmark's load settings share; ValueError naming the option."""
    for name, value in (("partitions", partitions), ("clients", clients), ("batch", batch)):
        if value < 1:
            raise ValueError(f"--{name} must be at least 1")
    if (duration_s is None) == (transactions is None):
        raise ValueError("give exactly one of --duration and --transactions")
    if duration_s is not None and duration_s <= 0:
        raise ValueError("--duration must be positive")
    if transactions is not None and transactions < 1:
        raise ValueError("--transactions must be at least 1")
    if durability not in ("sync", "async", "off"):
        raise ValueError(f"--durability must be sync, async or off, got {durability!r}")


@dataclass
class LoadTally:
    """What the client threads observed (shared, guarded by ``lock``)."""

    submitted: int = 0
    committed: int = 0
    aborted: int = 0
    errors: int = 0
    abort_reasons: Counter = field(default_factory=Counter)
    error_codes: Counter = field(default_factory=Counter)
    batches: list[tuple[float, int]] = field(default_factory=list)  # (latency_ms, transactions)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, latency_ms: float, outcomes: list[Any]) -> None:
        committed = aborted = errors = 0
        reasons: Counter = Counter()
        codes: Counter = Counter()
        for value in outcomes:
            if isinstance(value, UserAbort):
                aborted += 1
                reasons[_reason_kind(value.message)] += 1
            elif isinstance(value, OhmError):
                errors += 1
                codes[value.code] += 1
            else:
                committed += 1
        with self.lock:
            self.committed += committed
            self.aborted += aborted
            self.errors += errors
            self.abort_reasons.update(reasons)
            self.error_codes.update(codes)
            self.batches.append((latency_ms, len(outcomes)))


def _reason_kind(message: str) -> str:
    for kind in (voter.INVALID_CONTESTANT, voter.OVER_VOTE_LIMIT):
        if message.startswith(kind):
            return kind
    return "other"


def _generator(cfg: BenchConfig, client: int) -> voter.VoterGenerator:
    return voter.VoterGenerator(random.Random(cfg.seed * 1_000_003 + client), cfg.contestants, cfg.max_votes)


def _client_quota(cfg: BenchConfig, client: int) -> int | None:
    if cfg.transactions is None:
        return None
    return cfg.transactions // cfg.clients + (1 if client < cfg.transactions % cfg.clients else 0)


# --- ceiling -------------------------------------------------------------------------


def measure_ceiling(cfg: BenchConfig) -> dict[str, Any]:
    """The vote procedure in a loop on in-process partition cores, same arguments."""
    total = min(cfg.transactions or CEILING_TXNS_MAX, CEILING_TXNS_MAX)
    calls: list[tuple[int, tuple]] = []
    for client in range(cfg.clients):
        gen = _generator(cfg, client)
        quota = total // cfg.clients + (1 if client < total % cfg.clients else 0)
        calls.extend((partition_of(args[0], cfg.partitions), args) for args in gen.next_batch(quota))
    schema = voter.schema()
    cores = [PartitionCore(schema, p, cfg.partitions) for p in range(cfg.partitions)]
    for table, rows in voter.initial_data(cfg.contestants).items():
        for core in cores:
            core.load(table, rows)
    redo: list = []
    start = time.perf_counter()
    for p, args in calls:
        cores[p].execute("vote", args, redo)
        if len(redo) > 100_000:
            redo.clear()
    elapsed = time.perf_counter() - start
    return {"transactions": len(calls), "elapsed_s": elapsed, "tps": len(calls) / elapsed if elapsed else 0.0}


# --- load ------------------------------------------------------------------------------


def _client_loop(db: Cluster, cfg: BenchConfig, client: int, tally: LoadTally, stop_at: float | None,
                 stop: threading.Event) -> None:
    gen = _generator(cfg, client)
    remaining = _client_quota(cfg, client)
    while not stop.is_set():
        if remaining is not None and remaining <= 0:
            return
        if stop_at is not None and time.perf_counter() >= stop_at:
            return
        n = cfg.batch if remaining is None else min(cfg.batch, remaining)
        args = gen.next_batch(n)
        with tally.lock:
            tally.submitted += n
        t0 = time.perf_counter()
        outcomes = db.call_many("vote", args)
        tally.record((time.perf_counter() - t0) * 1000.0, outcomes)
        if remaining is not None:
            remaining -= n


def run_load(db: Cluster, cfg: BenchConfig, on_progress: Callable[[LoadTally, float], None] | None = None) -> tuple[LoadTally, float]:
    tally = LoadTally()
    stop = threading.Event()
    start = time.perf_counter()
    stop_at = None if cfg.duration_s is None else start + cfg.duration_s
    errors: list[BaseException] = []

    def guarded(client: int) -> None:
        try:
            _client_loop(db, cfg, client, tally, stop_at, stop)
        except BaseException as exc:  # surface a crashed client instead of hanging
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=guarded, args=(c,), name=f"client-{c}", daemon=True) for c in range(cfg.clients)]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=PROGRESS_REFRESH_S)
                if on_progress is not None:
                    on_progress(tally, time.perf_counter() - start)
    except KeyboardInterrupt:
        stop.set()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return tally, time.perf_counter() - start


def weighted_percentiles(batches: list[tuple[float, int]], quantiles: tuple[float, ...]) -> list[float]:
    """Percentiles over transactions, where each batch stands for ``n`` transactions."""
    if not batches:
        return [0.0 for _ in quantiles]
    ordered = sorted(batches)
    total = sum(n for _, n in ordered)
    out = []
    for q in quantiles:
        target = q * total
        seen = 0
        for latency, n in ordered:
            seen += n
            if seen >= target:
                out.append(latency)
                break
        else:
            out.append(ordered[-1][0])
    return out


# --- the whole run -------------------------------------------------------------------------


def run_voter(cfg: BenchConfig, on_progress: Callable[[LoadTally, float], None] | None = None,
              on_phase: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Ceiling, cluster, load, checks; the report dict."""
    cfg.validate()
    phase = on_phase or (lambda _msg: None)
    phase("measuring the in-process ceiling")
    ceiling = measure_ceiling(cfg)
    phase("starting the cluster")
    runtime.connect(cfg.address)
    name = f"voter-{os.getpid()}-{int(time.time())}"
    temp_dir = None
    data_dir = cfg.data_dir
    if data_dir is None and cfg.durability != "off":
        temp_dir = data_dir = tempfile.mkdtemp(prefix="ohmdb-bench-")
    try:
        db = Cluster.create(voter.schema(), partitions=cfg.partitions, k=cfg.k, name=name, data_dir=data_dir,
                            durability=cfg.durability, initial_data=voter.initial_data(cfg.contestants))
        report = _drive(db, cfg, name, ceiling, on_progress, phase)
    finally:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
    report["data_dir"] = None if temp_dir else data_dir
    return report


def _drive(db: Cluster, cfg: BenchConfig, name: str, ceiling: dict[str, Any],
           on_progress: Callable[[LoadTally, float], None] | None, phase: Callable[[str], None]) -> dict[str, Any]:
    try:
        db.call("results")  # warm-up: every partition has answered once before the clock starts
        phase("running the load")
        tally, elapsed = run_load(db, cfg, on_progress)
        phase("checking results")
        tallies = db.call("results")
        status = db.status()
    finally:
        db.shutdown()
    p50, p95, p99 = weighted_percentiles(tally.batches, (0.50, 0.95, 0.99))
    latency_max = max((lat for lat, _ in tally.batches), default=0.0)
    done = tally.committed + tally.aborted + tally.errors
    throughput = done / elapsed if elapsed else 0.0
    votes_counted = sum(v for _, _, v in tallies)
    checks = {
        "results_match_committed": {
            "ok": votes_counted == tally.committed,
            "detail": f"results() counts {votes_counted} votes; clients saw {tally.committed} committed",
        },
        "server_counts_match": {
            "ok": status["counts"]["committed"] == tally.committed,
            "detail": f"partitions report {status['counts']['committed']} committed",
        },
    }
    return {
        "workload": cfg.workload,
        "config": asdict(cfg),
        "cluster": {"name": name, "partitions": cfg.partitions, "nodes": len(status["nodes"]),
                    "durability": cfg.durability, "k": cfg.k,
                    "fsyncs": sum(r.get("fsyncs", 0) for r in status["replicas"]),
                    "log_batches": sum(r.get("batches_written", 0) for r in status["replicas"])},
        "committed": tally.committed,
        "aborted": tally.aborted,
        "abort_reasons": dict(tally.abort_reasons),
        "errors": tally.errors,
        "error_codes": dict(tally.error_codes),
        "transactions": done,
        "duration_s": round(elapsed, 3),
        "throughput_tps": round(throughput, 1),
        "latency_ms": {"p50": round(p50, 3), "p95": round(p95, 3), "p99": round(p99, 3), "max": round(latency_max, 3)},
        "ceiling_tps": round(ceiling["tps"], 1),
        "ceiling": {k: round(v, 4) if isinstance(v, float) else v for k, v in ceiling.items()},
        "ratio_to_ceiling": round(throughput / ceiling["tps"], 3) if ceiling["tps"] else None,
        "results": [{"contestant_number": n, "contestant_name": nm, "votes": v} for n, nm, v in tallies],
        "checks": checks,
        "ok": all(c["ok"] for c in checks.values()) and tally.errors == 0,
    }


def write_report(report: dict[str, Any], path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)
