"""Bank benchmark: a multi-partition transfer's cost next to a single-partition one.

Design note
-----------
One cluster, loaded with ``accounts`` accounts of ``balance`` each, runs two
measured phases one after the other in the same run (so machine noise hits
both alike):

1. **sp** -- ``transfer_local``: both accounts on one partition, no 2PC.
2. **mp** -- ``transfer``: accounts on different partitions, two-phase commit.

Each phase runs ``clients`` closed-loop threads for ``duration_s`` seconds,
each sending ``batch`` transfers at a time (``db.call_many``; ``batch=1`` is
``db.call``, one transaction at a time, for latency).  A transaction's latency
is its batch's round trip (for batch > 1 every transaction of a batch counts
the batch's latency).  Outcomes are counted as committed, refused (user abort:
insufficient funds), aborted (``TxnAborted``: the coordinator decided abort),
unknown (``OutcomeUnknown``, ``Timeout``) and other (any other error, by code).
Throughput counts committed + refused: a refusal is a completed transaction.

During both phases a reader thread runs ``total`` every
``TOTAL_READ_INTERVAL_S`` and checks the invariant (``bank.check_total``: the
sum of balances and the account count never change, no balance is negative);
a last check follows the phases.  Figures are reported, never asserted; only
the invariant decides ``ok``.
"""

from __future__ import annotations

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
from actors.errors import OhmError, OutcomeUnknown, Timeout, TxnAborted, UserAbort
from workloads import bank
from workloads.bench import weighted_percentiles

#: Interval between two invariant reads (``total``) during the phases.
TOTAL_READ_INTERVAL_S = 0.5
#: Violation messages kept in the report (all are counted).
VIOLATIONS_KEPT_MAX = 20
#: Distinct error messages kept per phase, for diagnosis.
ERROR_SAMPLES_MAX = 5
#: Attempts at the final invariant read, and the pause between them.
FINAL_READ_ATTEMPTS = 3
FINAL_READ_RETRY_S = 1.0

COMMITTED, REFUSED, ABORTED, UNKNOWN, OTHER = "committed", "refused", "aborted", "unknown", "other"
OUTCOME_KINDS = (COMMITTED, REFUSED, ABORTED, UNKNOWN, OTHER)
#: (phase, procedure, cross-partition?) in the order they run.
PHASES = (("sp", "transfer_local", False), ("mp", "transfer", True))
LATENCY_NOTE = ("latency is per transaction; with batch > 1 each transaction of a batch counts the whole "
                "batch's round trip")


@dataclass
class BankBenchConfig:
    partitions: int = 4
    k: int = 1
    clients: int = 8
    batch: int = 1
    duration_s: float = 5.0
    accounts: int = bank.ACCOUNTS_DEFAULT
    balance: int = bank.BALANCE_DEFAULT
    durability: str = "sync"
    seed: int = 1
    data_dir: str | None = None      # None: a temporary directory (durability != off), removed after the run
    address: str | None = None

    @property
    def expected_total(self) -> int:
        return self.accounts * self.balance

    def validate(self) -> "BankBenchConfig":
        for name in ("partitions", "clients", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1")
        if self.partitions < 2:
            raise ValueError("--partitions must be at least 2 (the mp phase needs cross-partition transfers)")
        if self.k < 0:
            raise ValueError("--k must be at least 0")
        if self.duration_s <= 0:
            raise ValueError("--duration must be positive")
        if self.durability not in ("sync", "async", "off"):
            raise ValueError(f"--durability must be sync, async or off, got {self.durability!r}")
        bank.initial_data(2, self.balance)  # raises on a negative balance
        load = bank.BankLoad(random.Random(0), self.accounts, self.partitions)
        load.next_cross()  # both raise ValueError when the accounts leave no such pair
        load.next_local()
        return self


# --- outcomes -----------------------------------------------------------------------------


def classify(outcome: Any) -> str:
    """Which count a transaction's outcome (result or error object) goes to."""
    if not isinstance(outcome, OhmError):
        return COMMITTED
    if isinstance(outcome, UserAbort) and outcome.message.startswith(bank.INSUFFICIENT_FUNDS):
        return REFUSED
    if isinstance(outcome, TxnAborted):
        return ABORTED
    if isinstance(outcome, (OutcomeUnknown, Timeout)):
        return UNKNOWN
    return OTHER


@dataclass
class PhaseTally:
    """What one phase's client threads observed (shared, guarded by ``lock``)."""

    counts: Counter = field(default_factory=Counter)
    error_codes: Counter = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    batches: list[tuple[float, int]] = field(default_factory=list)  # (latency_ms, transactions)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, latency_ms: float, outcomes: list[Any]) -> None:
        kinds = Counter(classify(o) for o in outcomes)
        errors = [o for o in outcomes if isinstance(o, OhmError) and classify(o) != REFUSED]
        with self.lock:
            self.counts.update(kinds)
            self.error_codes.update(e.code for e in errors)
            for e in errors:
                if len(self.error_samples) < ERROR_SAMPLES_MAX and str(e) not in self.error_samples:
                    self.error_samples.append(str(e))
            self.batches.append((latency_ms, len(outcomes)))

    def summary(self, elapsed_s: float) -> dict[str, Any]:
        with self.lock:
            counts, batches = Counter(self.counts), list(self.batches)
            codes, samples = dict(self.error_codes), list(self.error_samples)
        p50, p95, p99 = weighted_percentiles(batches, (0.50, 0.95, 0.99))
        latency_max = max((lat for lat, _ in batches), default=0.0)
        done = counts[COMMITTED] + counts[REFUSED]
        return {
            "transactions": sum(counts.values()),
            **{kind: counts[kind] for kind in OUTCOME_KINDS},
            "error_codes": codes,
            "error_samples": samples,
            "duration_s": round(elapsed_s, 3),
            "throughput_tps": round(done / elapsed_s, 1) if elapsed_s > 0 else 0.0,
            "latency_ms": {"p50": round(p50, 3), "p95": round(p95, 3), "p99": round(p99, 3),
                           "max": round(latency_max, 3)},
        }


# --- a phase --------------------------------------------------------------------------------


def _call_batch(db: Cluster, proc: str, args_list: list[tuple]) -> list[Any]:
    """``db.call`` for a batch of one (its error object in place of a raise), else ``db.call_many``."""
    if len(args_list) == 1:
        try:
            return [db.call(proc, *args_list[0])]
        except OhmError as err:
            return [err]
    return db.call_many(proc, args_list)


def _client_loop(db: Cluster, proc: str, load: bank.BankLoad, cross: bool, batch: int,
                 stop_at: float, stop: threading.Event, tally: PhaseTally) -> None:
    while not stop.is_set() and time.perf_counter() < stop_at:
        args = load.next_batch(batch, cross)
        t0 = time.perf_counter()
        outcomes = _call_batch(db, proc, args)
        tally.record((time.perf_counter() - t0) * 1000.0, outcomes)


def _client_rng(cfg: BankBenchConfig, phase_index: int, client: int) -> random.Random:
    return random.Random(cfg.seed * 1_000_003 + phase_index * 10_007 + client)


def run_phase(db: Cluster, cfg: BankBenchConfig, phase_index: int) -> dict[str, Any]:
    """``clients`` threads sending one phase's transfers for ``duration_s``; the phase's figures."""
    _, proc, cross = PHASES[phase_index]
    tally, stop, crashed = PhaseTally(), threading.Event(), []
    loads = [bank.BankLoad(_client_rng(cfg, phase_index, c), cfg.accounts, cfg.partitions) for c in range(cfg.clients)]
    start = time.perf_counter()
    stop_at = start + cfg.duration_s

    def client(load: bank.BankLoad) -> None:
        try:
            _client_loop(db, proc, load, cross, cfg.batch, stop_at, stop, tally)
        except BaseException as exc:  # surface a crashed client instead of hanging
            crashed.append(exc)
            stop.set()

    threads = [threading.Thread(target=client, args=(load,), name=f"bank-client-{c}", daemon=True)
               for c, load in enumerate(loads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if crashed:
        raise crashed[0]
    return {"procedure": proc, "clients": cfg.clients, "batch": cfg.batch,
            **tally.summary(time.perf_counter() - start)}


# --- the invariant reader ---------------------------------------------------------------------


class InvariantReader:
    """Reads ``total`` every TOTAL_READ_INTERVAL_S in a thread and checks the bank invariant."""

    def __init__(self, db: Cluster, expected_total: int, accounts: int, phase: str = "start") -> None:
        self.db, self.expected_total, self.accounts = db, expected_total, accounts
        self.phase = phase  # names the phase in violation messages; set by the driver
        self.reads = 0
        self.read_errors: Counter = Counter()
        self.violations: list[str] = []
        self.violation_count = 0
        self.final_ok = False
        self._started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bank-reader", daemon=True)

    def check_once(self) -> bool:
        """One ``total`` read, checked; False when the read itself failed."""
        try:
            read = self.db.call("total")
        except OhmError as err:
            self.read_errors[err.code] += 1
            return False
        self.reads += 1
        self._note(bank.check_total(read, self.expected_total, self.accounts))
        return True

    def _note(self, violations: list[str]) -> None:
        self.violation_count += len(violations)
        at = time.perf_counter() - self._started
        for v in violations[:max(0, VIOLATIONS_KEPT_MAX - len(self.violations))]:
            self.violations.append(f"{self.phase} +{at:.2f}s: {v}")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check_once()
            self._stop.wait(TOTAL_READ_INTERVAL_S)

    def __enter__(self) -> "InvariantReader":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def final_check(self) -> None:
        """The read after the phases (a few attempts: it must succeed for the check to pass)."""
        self.phase = "final"
        for attempt in range(FINAL_READ_ATTEMPTS):
            if attempt:
                time.sleep(FINAL_READ_RETRY_S)
            if self.check_once():
                self.final_ok = True
                return

    def report(self) -> dict[str, Any]:
        return {"ok": self.final_ok and self.violation_count == 0, "reads": self.reads,
                "read_errors": dict(self.read_errors), "final_read": self.final_ok,
                "violation_count": self.violation_count, "violations": list(self.violations)}


# --- the whole run ---------------------------------------------------------------------------


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


def build_report(cfg: BankBenchConfig, name: str, phases: dict[str, dict[str, Any]],
                 invariant: dict[str, Any]) -> dict[str, Any]:
    sp, mp = phases["sp"], phases["mp"]
    return {
        "workload": "bank",
        "config": asdict(cfg),
        "cluster": {"name": name, "partitions": cfg.partitions, "k": cfg.k, "durability": cfg.durability},
        "latency_note": LATENCY_NOTE,
        "phases": phases,
        "mp_cost_ratio": {
            "throughput_sp_to_mp": _ratio(sp["throughput_tps"], mp["throughput_tps"]),
            "p50_latency_mp_to_sp": _ratio(mp["latency_ms"]["p50"], sp["latency_ms"]["p50"]),
        },
        "checks": {"invariant": invariant},
        "ok": invariant["ok"],
    }


def _warm_up(db: Cluster, cfg: BankBenchConfig) -> None:
    """One call of each procedure before the clock starts (outcomes ignored: transfers keep the total)."""
    load = bank.BankLoad(random.Random(cfg.seed), cfg.accounts, cfg.partitions)
    db.call_many("transfer_local", [load.next_local()])
    db.call_many("transfer", [load.next_cross()])
    db.call_many("total", [()])


def _drive(db: Cluster, cfg: BankBenchConfig, name: str, phase: Callable[[str], None]) -> dict[str, Any]:
    phase("warming up")
    _warm_up(db, cfg)
    phases: dict[str, dict[str, Any]] = {}
    with InvariantReader(db, cfg.expected_total, cfg.accounts, phase=PHASES[0][0]) as reader:
        for index, (key, proc, _) in enumerate(PHASES):
            reader.phase = key
            phase(f"{key} phase: {proc}, {cfg.clients} clients, batch {cfg.batch}, {cfg.duration_s:g} s")
            phases[key] = run_phase(db, cfg, index)
    phase("final invariant check")
    reader.final_check()
    return build_report(cfg, name, phases, reader.report())


def run(cfg: BankBenchConfig, on_phase: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Cluster, load, sp and mp phases with the invariant reader, final check; the report dict."""
    cfg.validate()
    phase = on_phase or (lambda _msg: None)
    phase("starting the cluster")
    runtime.connect(cfg.address)
    name = f"bank-{os.getpid()}-{int(time.time())}"
    temp_dir, data_dir = None, cfg.data_dir
    if data_dir is None and cfg.durability != "off":
        temp_dir = data_dir = tempfile.mkdtemp(prefix="ohmdb-bank-")
    try:
        db = Cluster.create(bank.schema(), partitions=cfg.partitions, k=cfg.k, name=name, data_dir=data_dir,
                            durability=cfg.durability, initial_data=bank.initial_data(cfg.accounts, cfg.balance))
        try:
            return _drive(db, cfg, name, phase)
        finally:
            db.shutdown()
    finally:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
