"""Bank workload: the transfer stream, the invariant check, the procedures and fragments on
in-process partition cores, and the benchmark driver against an in-process stand-in for a
cluster.  No Ray.

Multi-partition procedures run here through ``FakeMP``: fragments on ``PartitionCore``
objects through ``TxContext``, every fragment rolled back when the procedure aborts --
the atomicity the two-phase-commit coordinator gives, not its concurrency.
"""

from __future__ import annotations

import inspect
import json
import pickle
import random
import threading
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.errors import (
    OhmError, OutcomeUnknown, PartitionUnavailable, Timeout, TxnAborted, UserAbort, WrongPartition,
)
from actors.participant import MP_TXN_BIT
from actors.partition_core import PartitionCore, TxContext, is_failure
from actors.routing import partition_of
from actors.schema import Schema
from workloads import bank, bank_bench

PARTITIONS = 4
ACCOUNTS = 200
BALANCE = 100

# The procedures a PartitionCore can hold today (no multi-partition write: see test_schema_*).
CORE_SCHEMA = Schema(tables=[bank.accounts], procedures=[bank.transfer_local, bank.total])
PROCEDURES = {p.name: p for p in (bank.transfer_local, bank.transfer, bank.total)}


def _cores(partitions: int = PARTITIONS, accounts: int = ACCOUNTS, balance: int = BALANCE) -> list[PartitionCore]:
    cores = [PartitionCore(CORE_SCHEMA, p, partitions) for p in range(partitions)]
    rows = bank.initial_data(accounts, balance)["accounts"]
    for p, core in enumerate(cores):
        core.load("accounts", [r for r in rows if partition_of(r["id"], partitions) == p])
    return cores


def _balance(cores: list[PartitionCore], account: int) -> int:
    return cores[partition_of(account, len(cores))].tables["accounts"][account]["balance"]


def _pair(cross: bool, seed: int = 0) -> tuple[int, int, int]:
    load = bank.BankLoad(random.Random(seed), ACCOUNTS, PARTITIONS)
    return load.next_cross() if cross else load.next_local()


class FakeMP:
    """The ``tx`` of a multi-partition procedure, run on in-process cores."""

    def __init__(self, cores: list[PartitionCore]) -> None:
        self.cores = cores
        self.partitions = len(cores)
        self.opened: list[TxContext] = []

    def _fragment(self, key, fragment, args: tuple):
        ftx = TxContext(self.cores[partition_of(key, self.partitions)], 1, [], False)
        self.opened.append(ftx)
        return fragment(ftx, *args)

    def run(self, key, fragment, *args):
        return self._fragment(key, fragment, args)

    def run_many(self, calls, last: bool = False):
        return [self._fragment(key, fragment, tuple(args)) for key, fragment, args in calls]

    def run_all(self, fragment, *args):
        return [fragment(TxContext(core, 1, [], True), *args) for core in self.cores]

    def abort(self, reason: str):
        raise UserAbort(str(reason), reason=str(reason))


def run_mp(cores: list[PartitionCore], proc, *args):
    """The procedure's result, or its error after every fragment was rolled back."""
    tx = FakeMP(cores)
    try:
        return proc.func(tx, *args)
    except OhmError as err:
        for ftx in reversed(tx.opened):
            ftx._rollback(0)
        return err


def run_local(cores: list[PartitionCore], *args):
    out = cores[partition_of(args[0], len(cores))].execute("transfer_local", args, [])
    return out.error if is_failure(out) else out


# --- BankLoad ---------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(accounts=st.integers(2, 300), partitions=st.integers(1, 8), seed=st.integers(0, 2**32))
def test_bank_load_picks_cross_and_local_pairs(accounts, partitions, seed):
    load = bank.BankLoad(random.Random(seed), accounts, partitions)
    nonempty = sum(1 for g in load.by_partition if g)
    for cross in (True, False):
        possible = nonempty >= 2 if cross else any(len(g) >= 2 for g in load.by_partition)
        if not possible:
            with pytest.raises(ValueError):
                load.next_batch(1, cross)
            continue
        for src, dst, amount in load.next_batch(50, cross):
            assert 0 <= src < accounts and 0 <= dst < accounts and src != dst
            assert bank.AMOUNT_MIN <= amount <= bank.AMOUNT_MAX
            same = partition_of(src, partitions) == partition_of(dst, partitions)
            assert same is not cross


def test_bank_load_reaches_every_partition_and_amount_bound():
    load = bank.BankLoad(random.Random(7), 1_000, PARTITIONS)
    cross = load.next_batch(4_000, cross=True)
    local = load.next_batch(4_000, cross=False)
    for picks in (cross, local):
        assert {partition_of(s, PARTITIONS) for s, _, _ in picks} == set(range(PARTITIONS))
        assert {partition_of(d, PARTITIONS) for _, d, _ in picks} == set(range(PARTITIONS))
    amounts = [a for _, _, a in cross + local]
    assert min(amounts) == bank.AMOUNT_MIN and max(amounts) == bank.AMOUNT_MAX


def test_bank_load_is_deterministic_and_honours_cross_fraction():
    a = bank.BankLoad(random.Random(3), ACCOUNTS, PARTITIONS).next_batch(500, cross=True)
    b = bank.BankLoad(random.Random(3), ACCOUNTS, PARTITIONS).next_batch(500, cross=True)
    assert a == b
    for fraction in (0.0, 1.0):
        load = bank.BankLoad(random.Random(1), ACCOUNTS, PARTITIONS, cross_fraction=fraction)
        assert {load.next_transfer()[0] for _ in range(200)} == {fraction == 1.0}
    load = bank.BankLoad(random.Random(1), ACCOUNTS, PARTITIONS, cross_fraction=0.25)
    mixed = [load.next_transfer() for _ in range(4_000)]
    assert 0.2 < sum(cross for cross, _ in mixed) / len(mixed) < 0.3
    for cross, (src, dst, _) in mixed:
        assert (partition_of(src, PARTITIONS) != partition_of(dst, PARTITIONS)) is cross


def test_accounts_by_partition_places_every_account_once():
    groups = bank.accounts_by_partition(ACCOUNTS, PARTITIONS)
    assert sorted(a for g in groups for a in g) == list(range(ACCOUNTS))
    assert all(partition_of(a, PARTITIONS) == p for p, g in enumerate(groups) for a in g)


def test_bank_load_rejects_bad_arguments():
    for args in ((1, 2, 0.5), (10, 0, 0.5), (10, 2, 1.5)):
        with pytest.raises(ValueError):
            bank.BankLoad(random.Random(0), *args)
    with pytest.raises(ValueError):
        bank.BankLoad(random.Random(0), 10, 1).next_cross()


# --- check_total ------------------------------------------------------------------------------


def _read(total=ACCOUNTS * BALANCE, accounts=ACCOUNTS, negative=()):
    return {"total": total, "accounts": accounts, "negative": list(negative)}


def test_check_total_passes_a_good_read():
    assert bank.check_total(_read(), ACCOUNTS * BALANCE, ACCOUNTS) == []


def test_check_total_catches_each_violation():
    expected = ACCOUNTS * BALANCE
    [changed] = bank.check_total(_read(total=expected - 7), expected, ACCOUNTS)
    assert "off by -7" in changed
    [missing] = bank.check_total(_read(accounts=ACCOUNTS - 1), expected, ACCOUNTS)
    assert f"{ACCOUNTS - 1} accounts" in missing
    [negative] = bank.check_total(_read(negative=[(12, -3)]), expected, ACCOUNTS)
    assert "account 12" in negative and "-3" in negative
    assert len(bank.check_total(_read(expected + 1, ACCOUNTS + 1, [(1, -1), (2, -2)]), expected, ACCOUNTS)) == 4


# --- schema, procedures, fragments ------------------------------------------------------------


def test_procedures_carry_the_right_flags():
    assert not bank.transfer_local.multi_partition and bank.transfer_local.partition_by == "src"
    assert not bank.transfer_local.read_only
    assert bank.transfer.multi_partition and not bank.transfer.read_only
    assert bank.total.multi_partition and bank.total.read_only
    for proc in PROCEDURES.values():
        if proc.name != "total":
            assert proc.params == ("src", "dst", "amount")


def test_schema_registers_the_procedures():
    schema = bank.schema()
    assert set(schema.procedures) == {"transfer_local", "transfer", "total", "all_balances"}
    assert schema.procedures["transfer"].multi_partition and not schema.procedures["transfer"].read_only
    assert schema.procedures["total"].read_only and schema.procedures["all_balances"].read_only
    assert schema.tables["accounts"].partition_by == "id"


def test_fragments_are_module_level_functions():
    for fragment in bank.FRAGMENTS:
        assert inspect.isfunction(fragment)
        assert fragment.__qualname__ == fragment.__name__
        assert getattr(bank, fragment.__name__) is fragment
        assert pickle.loads(pickle.dumps(fragment)) is fragment


def _ftx(core: PartitionCore) -> TxContext:
    return TxContext(core, 1, [], False)


def test_debit_refuses_to_go_negative_and_credit_adds():
    cores = _cores()
    account = bank.accounts_by_partition(ACCOUNTS, PARTITIONS)[1][0]
    core = cores[1]
    assert bank.debit(_ftx(core), account, 30) == BALANCE - 30
    with pytest.raises(UserAbort) as refused:
        bank.debit(_ftx(core), account, BALANCE - 30 + 1)
    assert refused.value.message.startswith(bank.INSUFFICIENT_FUNDS)
    assert _balance(cores, account) == BALANCE - 30
    assert bank.debit(_ftx(core), account, BALANCE - 30) == 0
    assert bank.credit(_ftx(core), account, 45) == 45
    assert _balance(cores, account) == 45


def test_fragments_abort_on_a_missing_account():
    core = _cores()[0]
    missing = next(a for a in range(ACCOUNTS, 10 * ACCOUNTS) if partition_of(a, PARTITIONS) == 0)
    for fragment in (bank.debit, bank.credit):
        with pytest.raises(UserAbort) as err:
            fragment(_ftx(core), missing, 1)
        assert err.value.message == f"{bank.NO_ACCOUNT} {missing}"


def test_balances_fragment_reads_one_partition():
    cores = _cores()
    account = bank.accounts_by_partition(ACCOUNTS, PARTITIONS)[2][0]
    cores[2].tables["accounts"][account] = {"id": account, "balance": -5}  # a broken state, to be reported
    txn = MP_TXN_BIT | 1
    total, rows, negative = cores[2].run_fragment_mp(txn, txn, bank.balances, (), now_s=0.0, read_only=True).result
    assert rows == len(bank.accounts_by_partition(ACCOUNTS, PARTITIONS)[2])
    assert total == rows * BALANCE - BALANCE - 5
    assert negative == [(account, -5)]


def test_transfer_local_moves_refuses_and_rolls_back():
    cores = _cores()
    src, dst, _ = _pair(cross=False)
    assert run_local(cores, src, dst, 60) == BALANCE - 60
    assert (_balance(cores, src), _balance(cores, dst)) == (BALANCE - 60, BALANCE + 60)
    refused = run_local(cores, src, dst, BALANCE)
    assert isinstance(refused, UserAbort) and refused.message.startswith(bank.INSUFFICIENT_FUNDS)
    assert isinstance(run_local(cores, src, src, 1), UserAbort)
    assert isinstance(run_local(cores, src, dst, 0), UserAbort)
    far = _pair(cross=True)
    assert isinstance(run_local(cores, far[0], far[1], 1), WrongPartition)
    assert (_balance(cores, src), _balance(cores, dst)) == (BALANCE - 60, BALANCE + 60)
    assert _balance(cores, far[0]) == BALANCE


def test_transfer_local_names_a_missing_account_and_writes_nothing():
    cores = _cores()
    src = bank.accounts_by_partition(ACCOUNTS, PARTITIONS)[0][0]
    missing = next(a for a in range(ACCOUNTS, 10 * ACCOUNTS) if partition_of(a, PARTITIONS) == 0)
    err = run_local(cores, src, missing, 1)
    assert isinstance(err, UserAbort) and err.message == f"{bank.NO_ACCOUNT} {missing}"
    assert _balance(cores, src) == BALANCE


@pytest.mark.parametrize("cross", [True, False])
def test_transfer_moves_money_or_nothing(cross):
    cores = _cores()
    src, dst, _ = _pair(cross)
    assert run_mp(cores, bank.transfer, src, dst, 70) == BALANCE - 70
    refused = run_mp(cores, bank.transfer, src, dst, 31)
    assert isinstance(refused, UserAbort) and refused.message.startswith(bank.INSUFFICIENT_FUNDS)
    assert (_balance(cores, src), _balance(cores, dst)) == (BALANCE - 70, BALANCE + 70)
    missing = next(a for a in range(ACCOUNTS, 10 * ACCOUNTS)
                   if (partition_of(a, PARTITIONS) == partition_of(src, PARTITIONS)) is not cross)
    err = run_mp(cores, bank.transfer, src, missing, 1)
    assert isinstance(err, UserAbort) and err.message == f"{bank.NO_ACCOUNT} {missing}"
    assert _balance(cores, src) == BALANCE - 70  # the debit was rolled back with the failed credit


def test_total_sums_every_partition_and_the_invariant_holds_after_random_transfers():
    cores = _cores()
    load = bank.BankLoad(random.Random(11), ACCOUNTS, PARTITIONS, cross_fraction=0.5)
    outcomes = Counter()
    for _ in range(2_000):
        cross, args = load.next_transfer()
        out = run_mp(cores, bank.transfer, *args) if cross else run_local(cores, *args)
        outcomes[bank_bench.classify(out)] += 1
    assert outcomes["committed"] > 0 and outcomes["refused"] > 0 and set(outcomes) <= {"committed", "refused"}
    read = run_mp(cores, bank.total)
    assert read["accounts"] == ACCOUNTS and read["total"] == ACCOUNTS * BALANCE
    assert bank.check_total(read, ACCOUNTS * BALANCE, ACCOUNTS) == []


def test_initial_data():
    rows = bank.initial_data(5, 9)["accounts"]
    assert rows == [{"id": i, "balance": 9} for i in range(5)]
    for bad in ((1, 9), (5, -1)):
        with pytest.raises(ValueError):
            bank.initial_data(*bad)


# --- the benchmark's pure parts -------------------------------------------------------------------


def test_classify_outcomes():
    assert bank_bench.classify(42) == "committed"
    assert bank_bench.classify(UserAbort(f"{bank.INSUFFICIENT_FUNDS}: x")) == "refused"
    assert bank_bench.classify(UserAbort(f"{bank.NO_ACCOUNT} 3")) == "other"
    assert bank_bench.classify(TxnAborted("lock conflict")) == "aborted"
    assert bank_bench.classify(OutcomeUnknown("later")) == "unknown"
    assert bank_bench.classify(Timeout("slow")) == "unknown"
    assert bank_bench.classify(PartitionUnavailable("gone")) == "other"


def test_phase_tally_weights_batches_per_transaction():
    tally = bank_bench.PhaseTally()
    tally.record(10.0, [1, 2, UserAbort(f"{bank.INSUFFICIENT_FUNDS}: x")])
    tally.record(50.0, [TxnAborted("conflict")])
    summary = tally.summary(2.0)
    assert summary["transactions"] == 4
    assert (summary["committed"], summary["refused"], summary["aborted"]) == (2, 1, 1)
    assert summary["throughput_tps"] == 1.5  # committed + refused per second
    assert summary["latency_ms"]["p50"] == 10.0 and summary["latency_ms"]["max"] == 50.0
    assert summary["error_codes"] == {"TXN_ABORTED": 1}


def _phase(tps: float, p50: float) -> dict:
    return {"throughput_tps": tps, "latency_ms": {"p50": p50}}


def test_report_ratios_and_ok():
    cfg = bank_bench.BankBenchConfig()
    inv = {"ok": True}
    report = bank_bench.build_report(cfg, "x", {"sp": _phase(1000, 2.0), "mp": _phase(250, 9.0)}, inv)
    assert report["mp_cost_ratio"] == {"throughput_sp_to_mp": 4.0, "p50_latency_mp_to_sp": 4.5}
    assert report["ok"] and report["config"]["accounts"] == cfg.accounts
    zero = bank_bench.build_report(cfg, "x", {"sp": _phase(10, 0.0), "mp": _phase(0, 1.0)}, {"ok": False})
    assert zero["mp_cost_ratio"] == {"throughput_sp_to_mp": None, "p50_latency_mp_to_sp": None}
    assert not zero["ok"]


def test_config_validation():
    bank_bench.BankBenchConfig().validate()
    for bad in ({"partitions": 1}, {"clients": 0}, {"batch": 0}, {"duration_s": 0}, {"durability": "x"},
                {"accounts": 3}, {"balance": -1}, {"k": -1}):
        with pytest.raises(ValueError):
            bank_bench.BankBenchConfig(**bad).validate()


class FakeDB:
    """A stand-in for ``Cluster``: the procedures on in-process cores, one at a time."""

    def __init__(self, cores: list[PartitionCore], total_errors: int = 0) -> None:
        self.cores, self.lock = cores, threading.Lock()
        self.total_errors = total_errors  # the first reads of ``total`` fail with Timeout
        self.calls = Counter()

    def _one(self, name: str, args: tuple):
        proc = PROCEDURES[name]
        with self.lock:
            self.calls[name] += 1
            if name == "total" and self.total_errors > 0:
                self.total_errors -= 1
                return Timeout("slow read")
            if proc.multi_partition:
                return run_mp(self.cores, proc, *args)
            return run_local(self.cores, *args)

    def call(self, name: str, *args):
        out = self._one(name, args)
        if isinstance(out, OhmError):
            raise out
        return out

    def call_many(self, name: str, args_list):
        return [self._one(name, tuple(a)) for a in args_list]


@pytest.mark.parametrize("batch", [1, 16])
def test_drive_runs_both_phases_and_checks_the_invariant(monkeypatch, batch):
    monkeypatch.setattr(bank_bench, "TOTAL_READ_INTERVAL_S", 0.02)
    cfg = bank_bench.BankBenchConfig(partitions=PARTITIONS, clients=3, batch=batch, duration_s=0.3,
                                     accounts=ACCOUNTS, balance=BALANCE, durability="off")
    db = FakeDB(_cores(), total_errors=2)  # the warm-up's read and the reader's first one fail
    phases = []
    report = bank_bench._drive(db, cfg, "fake", phases.append)
    assert report["ok"], report["checks"]
    inv = report["checks"]["invariant"]
    assert inv["reads"] >= 3 and inv["final_read"] and inv["read_errors"] == {"TIMEOUT": 1}
    for key, proc in (("sp", "transfer_local"), ("mp", "transfer")):
        ph = report["phases"][key]
        assert ph["procedure"] == proc and ph["committed"] > 0 and ph["other"] == 0
        assert ph["throughput_tps"] > 0 and ph["latency_ms"]["p99"] >= ph["latency_ms"]["p50"]
    assert report["mp_cost_ratio"]["throughput_sp_to_mp"] is not None
    assert any("sp phase" in p for p in phases) and any("mp phase" in p for p in phases)


def test_reader_reports_violations_and_a_failed_final_read(monkeypatch):
    monkeypatch.setattr(bank_bench, "FINAL_READ_RETRY_S", 0.0)
    cores = _cores()
    cores[0].tables["accounts"].clear()  # accounts lost: the total and the count are off
    reader = bank_bench.InvariantReader(FakeDB(cores), ACCOUNTS * BALANCE, ACCOUNTS)
    reader.phase = "mp"
    for _ in range(bank_bench.VIOLATIONS_KEPT_MAX):
        assert reader.check_once()
    out = reader.report()
    assert not out["ok"] and out["violation_count"] == 2 * bank_bench.VIOLATIONS_KEPT_MAX
    assert len(out["violations"]) == bank_bench.VIOLATIONS_KEPT_MAX and out["violations"][0].startswith("mp +")
    failing = bank_bench.InvariantReader(FakeDB(_cores(), total_errors=10), ACCOUNTS * BALANCE, ACCOUNTS)
    failing.final_check()
    out = failing.report()
    assert not out["ok"] and not out["final_read"] and out["read_errors"] == {"TIMEOUT": bank_bench.FINAL_READ_ATTEMPTS}


@pytest.mark.parametrize("broken", [False, True])
def test_cli_prints_both_phases_writes_the_report_and_exits_on_the_invariant(monkeypatch, tmp_path, capsys, broken):
    from actors import cli

    def fake_run(cfg, on_phase=None):
        cores = _cores(cfg.partitions, cfg.accounts, cfg.balance)
        if broken:
            cores[0].tables["accounts"].clear()
        return bank_bench._drive(FakeDB(cores), cfg, "fake", on_phase or (lambda _m: None))

    monkeypatch.setattr(bank_bench, "run", fake_run)
    monkeypatch.setattr(bank_bench, "TOTAL_READ_INTERVAL_S", 0.02)
    code = cli.main(["bench", "bank", "--compare", "--duration", "0.1", "--clients", "2", "--accounts", str(ACCOUNTS),
                     "--durability", "off", "--out", str(tmp_path)])
    assert code == (1 if broken else 0)
    printed = capsys.readouterr().out
    assert "transfer_local" in printed and "transfer " in printed and "sp/mp throughput" in printed
    assert ("FAILED" in printed) is broken
    written = json.loads((tmp_path / "report.json").read_text())
    assert set(written["phases"]) == {"sp", "mp"} and written["checks"]["invariant"]["ok"] is not broken
