"""Bank under the benchmark harness: mixed transfers, consistent total reads, and its checkers.

Design note
-----------
Each client alternates transfer batches: same-partition pairs through
``transfer_local`` (single-partition) and cross-partition pairs through
``transfer`` (two-phase commit), with probability ``cross_fraction`` of a
cross batch; one batch in ``total_every`` (default ``TOTAL_EVERY``; 0: none)
is a single consistent ``total`` read.  The checkers, run after the load:

* ``bank_total`` -- every ``total`` read that answered during the run, and a
  final one, shows the starting total, every account, no negative balance.
* ``acknowledged_transfers`` -- a final ``all_balances`` read.  An account's
  balance must equal its start plus the effect of every acknowledged transfer
  touching it, plus some subset of the unknown-outcome ones: with none, it is
  exact; with some, it must lie between the sums of their negative and of their
  positive effects.  Refused and aborted transfers never count.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any, Sequence

from workloads import bank
from workloads.history import OK, UNKNOWN, Op
from workloads.workload import EVIDENCE_MAX, Verdict

#: One client batch in this many is a single consistent ``total`` read (by default).
TOTAL_EVERY = 10
TRANSFERS = ("transfer", "transfer_local")


class _Client:
    def __init__(self, rng: random.Random, accounts: int, partitions: int, cross_fraction: float,
                 total_every: int) -> None:
        self.rng = rng
        self.load = bank.BankLoad(rng, accounts, partitions, cross_fraction)
        self.cross_fraction = cross_fraction
        self.total_every = total_every
        self.batches = 0

    def next_batch(self, n: int) -> tuple[str, list[Sequence[Any]]]:
        self.batches += 1
        if self.total_every and self.batches % self.total_every == 0:
            return "total", [()]
        cross = self.load.partitions > 1 and self.rng.random() < self.cross_fraction
        return ("transfer" if cross else "transfer_local"), self.load.next_batch(n, cross)


class BankWorkload:
    name = "bank"

    def __init__(self, accounts: int = bank.ACCOUNTS_DEFAULT, balance: int = bank.BALANCE_DEFAULT,
                 cross_fraction: float = 0.5, partitions: int = 2, total_every: int = TOTAL_EVERY) -> None:
        if accounts < 2 * max(1, partitions):
            raise ValueError(f"--accounts must be at least 2 per partition, got {accounts} for {partitions}")
        if not 0.0 <= cross_fraction <= 1.0:
            raise ValueError(f"--cross must be in [0, 1], got {cross_fraction}")
        if isinstance(total_every, bool) or not isinstance(total_every, int) or total_every < 0:
            raise ValueError(f"--total-every must be a whole number >= 0 (0: no reads during the run), "
                             f"got {total_every!r}")
        self.accounts, self.balance, self.cross_fraction, self.partitions = accounts, balance, cross_fraction, partitions
        self.total_every = total_every

    def schema(self):
        return bank.schema()

    def initial_data(self) -> dict[str, list[dict[str, Any]]]:
        return bank.initial_data(self.accounts, self.balance)

    def client(self, process: int, rng: random.Random) -> _Client:
        return _Client(rng, self.accounts, self.partitions, self.cross_fraction, self.total_every)

    def check(self, db: Any, ops: list[Op]) -> dict[str, Verdict]:
        reads = [op for op in ops if op.f == "total" and op.type == OK]
        final_total = db.call("total")
        final = dict(db.call("all_balances"))
        return {
            "bank_total": check_totals(reads, final_total, self.accounts * self.balance, self.accounts),
            "acknowledged_transfers": check_balances([op for op in ops if op.f in TRANSFERS], final,
                                                     self.accounts, self.balance),
        }


def check_totals(reads: list[Op], final: dict[str, Any], expected: int, accounts: int) -> Verdict:
    """The invariant on every read of the run and on the final one."""
    problems = []
    for op in reads:
        problems += [f"read at {op.invoke_s:.3f}s: {v}" for v in bank.check_total(op.result, expected, accounts)]
    problems += [f"final read: {v}" for v in bank.check_total(final, expected, accounts)]
    detail = f"{len(reads)} total reads during the run and a final one; total {final['total']:,} (expected {expected:,})"
    if problems:
        detail = f"{len(problems)} violation(s): {problems[0]}; {detail}"
    return Verdict(not problems, detail, {"violations": problems[:EVIDENCE_MAX]} if problems else {})


def effects(transfers: list[Op]) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
    """Per account: the acknowledged transfers' net effect, and the unknown ones' negative and positive sums."""
    acked: dict[int, int] = defaultdict(int)
    low: dict[int, int] = defaultdict(int)
    high: dict[int, int] = defaultdict(int)
    for op in transfers:
        src, dst, amount = op.value
        if op.type == OK:
            acked[src] -= amount
            acked[dst] += amount
        elif op.type == UNKNOWN:
            low[src] -= amount
            high[dst] += amount
    return acked, low, high


def check_balances(transfers: list[Op], final: dict[int, int], accounts: int, balance: int) -> Verdict:
    """Every account's final balance explained by the acknowledged transfers (and unknown ones, as a range)."""
    acked, low, high = effects(transfers)
    problems = []
    for account in range(accounts):
        start = balance + acked.get(account, 0)
        lo, hi = start + low.get(account, 0), start + high.get(account, 0)
        got = final.get(account)
        if got is None or not lo <= got <= hi:
            want = f"{lo}" if lo == hi else f"{lo}..{hi}"
            problems.append(f"account {account} holds {got}, expected {want}")
    n_ok = sum(1 for op in transfers if op.type == OK)
    n_unknown = sum(1 for op in transfers if op.type == UNKNOWN)
    detail = f"{accounts:,} balances explained by {n_ok:,} acknowledged and {n_unknown:,} unknown transfers"
    if problems:
        detail = f"{len(problems)} account(s) off: {problems[0]}; {detail}"
    return Verdict(not problems, detail, {"accounts": problems[:EVIDENCE_MAX]} if problems else {})
