"""Bank: money transfers between accounts, the classic multi-partition workload.

Design note
-----------
One table, ``accounts`` (id -> balance), partitioned by id.  Money only moves,
so the sum of all balances never changes and no balance goes below zero:
``check_total`` tests that invariant against a read of ``total``.

* ``transfer_local(src, dst, amount)`` -- single-partition, routed by ``src``;
  both accounts must live on the same partition.  Refused (user abort) when
  ``src`` holds less than ``amount``; aborted naming a missing account.
* ``transfer(src, dst, amount)`` -- multi-partition (two-phase commit): one
  ``tx.run_many`` with a ``debit`` fragment on src's partition (aborts rather
  than go negative) and a ``credit`` fragment on dst's.  A fragment's abort
  aborts the whole transaction.  When both accounts share a partition the
  ``transfer_within`` fragment does both halves there (two fragments on one
  partition are not concurrent).  Returns src's new balance.
* ``total()`` -- a consistent read-only multi-partition read: every partition
  reports (sum of balances, rows, negative balances); summed into one dict.
* ``all_balances()`` -- every account's balance, one consistent read (checkers).

Fragments are module-level functions: they are pickled to the partitions.

``BankLoad`` picks transfers from a passed-in ``random.Random``: cross-partition
pairs (``next_cross``) or same-partition pairs (``next_local``), amounts
``AMOUNT_MIN..AMOUNT_MAX``.  Account ids are ``0..accounts-1``; their placement
comes from ``actors.routing.partition_of``, computed once per (accounts,
partitions) and shared.
"""

from __future__ import annotations

import functools
import random
from typing import Any

import pyarrow as pa

from actors.routing import partition_of
from actors.schema import Schema, Table, procedure

AMOUNT_MIN = 1
AMOUNT_MAX = 100
ACCOUNTS_DEFAULT = 10_000
BALANCE_DEFAULT = 1_000
#: Negative balances one partition lists in a ``total`` read (there should be none).
NEGATIVE_LISTED_MAX = 100

INSUFFICIENT_FUNDS = "insufficient funds"
NO_ACCOUNT = "no account"
BAD_TRANSFER = "bad transfer"

accounts = Table(
    "accounts",
    pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("balance", pa.int64(), nullable=False)]),
    primary_key="id", partition_by="id",
)


# --- fragments (module level: pickled to the partitions) ------------------------------


def _balance_of(ftx, account: int) -> int:
    row = ftx.get("accounts", account)
    if row is None:
        ftx.abort(f"{NO_ACCOUNT} {account}")
    return row["balance"]


def debit(ftx, account: int, amount: int) -> int:
    """Take ``amount`` from ``account``; abort rather than go negative.  The new balance."""
    balance = _balance_of(ftx, account)
    if balance < amount:
        ftx.abort(f"{INSUFFICIENT_FUNDS}: account {account} holds {balance}, transfer of {amount}")
    ftx.update("accounts", account, {"balance": balance - amount})
    return balance - amount


def credit(ftx, account: int, amount: int) -> int:
    """Add ``amount`` to ``account``.  The new balance."""
    balance = _balance_of(ftx, account)
    ftx.update("accounts", account, {"balance": balance + amount})
    return balance + amount


def transfer_within(ftx, src: int, dst: int, amount: int) -> int:
    """Both halves of a transfer on one partition.  Src's new balance."""
    _balance_of(ftx, dst)  # a missing dst aborts before anything is written
    new_src = debit(ftx, src, amount)
    credit(ftx, dst, amount)
    return new_src


def balances(ftx) -> tuple[int, int, list[tuple[int, int]]]:
    """(sum of balances, rows, up to NEGATIVE_LISTED_MAX negative (id, balance)) of this partition."""
    total = rows = 0
    negative: list[tuple[int, int]] = []
    for row in ftx.scan("accounts"):
        total += row["balance"]
        rows += 1
        if row["balance"] < 0 and len(negative) < NEGATIVE_LISTED_MAX:
            negative.append((row["id"], row["balance"]))
    return total, rows, negative


def balance_rows(ftx) -> list[tuple[int, int]]:
    """Every (id, balance) of this partition."""
    return [(row["id"], row["balance"]) for row in ftx.scan("accounts")]


FRAGMENTS = (debit, credit, transfer_within, balances, balance_rows)


# --- procedures ------------------------------------------------------------------------


def _bad_transfer(src: int, dst: int, amount: int) -> str | None:
    if amount < AMOUNT_MIN:
        return f"{BAD_TRANSFER}: amount {amount} is below {AMOUNT_MIN}"
    if src == dst:
        return f"{BAD_TRANSFER}: account {src} to itself"
    return None


@procedure(partition_by="src")
def transfer_local(tx, src: int, dst: int, amount: int) -> int:
    """Move ``amount`` from src to dst, both on src's partition.  Src's new balance."""
    bad = _bad_transfer(src, dst, amount)
    if bad:
        tx.abort(bad)
    return transfer_within(tx, src, dst, amount)


@procedure(multi_partition=True)
def transfer(tx, src: int, dst: int, amount: int) -> int:
    """Move ``amount`` from src to dst on any partitions (two-phase commit).  Src's new balance."""
    bad = _bad_transfer(src, dst, amount)
    if bad:
        tx.abort(bad)
    if partition_of(src, tx.partitions) == partition_of(dst, tx.partitions):
        return tx.run(src, transfer_within, src, dst, amount)
    # The only round of fragments: each partition prepares as it runs its fragment (one round trip fewer).
    new_src, _ = tx.run_many([(src, debit, (src, amount)), (dst, credit, (dst, amount))], last=True)
    return new_src


@procedure(multi_partition=True, read_only=True)
def total(tx) -> dict[str, Any]:
    """{"total": sum of balances, "accounts": rows, "negative": [(id, balance), ...]} over all partitions."""
    out: dict[str, Any] = {"total": 0, "accounts": 0, "negative": []}
    for part_total, rows, negative in tx.run_all(balances):
        out["total"] += part_total
        out["accounts"] += rows
        out["negative"].extend(negative)
    out["negative"].sort()
    return out


@procedure(multi_partition=True, read_only=True)
def all_balances(tx) -> list[tuple[int, int]]:
    """Every account's (id, balance), one consistent read, sorted by id."""
    return sorted(pair for part in tx.run_all(balance_rows) for pair in part)


def schema() -> Schema:
    """Needs a Schema that accepts multi-partition writes (the 2PC coordinator)."""
    return Schema(tables=[accounts], procedures=[transfer_local, transfer, total, all_balances])


def initial_data(accounts: int = ACCOUNTS_DEFAULT, balance: int = BALANCE_DEFAULT) -> dict[str, list[dict[str, int]]]:
    """Accounts ``0..accounts-1``, each holding ``balance``."""
    if accounts < 2 or balance < 0:
        raise ValueError(f"need at least 2 accounts and a balance >= 0, got {accounts} and {balance}")
    return {"accounts": [{"id": i, "balance": balance} for i in range(accounts)]}


# --- the transfer stream ---------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def accounts_by_partition(accounts: int, partitions: int) -> tuple[tuple[int, ...], ...]:
    """Account ids ``0..accounts-1`` grouped by the partition that owns them."""
    groups: list[list[int]] = [[] for _ in range(partitions)]
    for account in range(accounts):
        groups[partition_of(account, partitions)].append(account)
    return tuple(tuple(g) for g in groups)


class BankLoad:
    """Transfers ``(src, dst, amount)``: cross-partition or same-partition pairs."""

    def __init__(self, rng: random.Random, accounts: int, partitions: int, cross_fraction: float = 0.5) -> None:
        if accounts < 2 or partitions < 1 or not 0.0 <= cross_fraction <= 1.0:
            raise ValueError(f"need accounts >= 2, partitions >= 1, cross_fraction in [0, 1]; "
                             f"got {accounts}, {partitions}, {cross_fraction}")
        self.rng = rng
        self.accounts = accounts
        self.partitions = partitions
        self.cross_fraction = cross_fraction
        self.by_partition = accounts_by_partition(accounts, partitions)
        self._place = {a: (p, i) for p, group in enumerate(self.by_partition) for i, a in enumerate(group)}
        self._local_pool = [a for group in self.by_partition if len(group) >= 2 for a in group]
        self._cross_ok = sum(1 for group in self.by_partition if group) >= 2

    def _amount(self) -> int:
        return self.rng.randint(AMOUNT_MIN, AMOUNT_MAX)

    def next_cross(self) -> tuple[int, int, int]:
        """src and dst on different partitions, each uniform over the accounts allowed."""
        if not self._cross_ok:
            raise ValueError(f"{self.accounts} accounts on {self.partitions} partition(s) leave no cross-partition pair")
        rng = self.rng
        src = rng.randrange(self.accounts)
        own = self._place[src][0]
        pick = rng.randrange(self.accounts - len(self.by_partition[own]))
        for p, group in enumerate(self.by_partition):
            if p == own:
                continue
            if pick < len(group):
                return src, group[pick], self._amount()
            pick -= len(group)
        raise AssertionError("unreachable: pick is below the accounts of the other partitions")

    def next_local(self) -> tuple[int, int, int]:
        """src != dst on the same partition."""
        if not self._local_pool:
            raise ValueError(f"{self.accounts} accounts on {self.partitions} partitions leave no same-partition pair")
        rng = self.rng
        src = self._local_pool[rng.randrange(len(self._local_pool))]
        p, i = self._place[src]
        group = self.by_partition[p]
        j = rng.randrange(len(group) - 1)
        return src, group[j + 1 if j >= i else j], self._amount()

    def next_transfer(self) -> tuple[bool, tuple[int, int, int]]:
        """(cross?, transfer): cross-partition with probability ``cross_fraction``."""
        cross = self.rng.random() < self.cross_fraction
        return cross, self.next_cross() if cross else self.next_local()

    def next_batch(self, n: int, cross: bool) -> list[tuple[int, int, int]]:
        pick = self.next_cross if cross else self.next_local
        return [pick() for _ in range(n)]


# --- the invariant -----------------------------------------------------------------------


def check_total(read: dict[str, Any], expected_total: int, accounts: int) -> list[str]:
    """Violations of the bank invariant in one ``total`` read; empty when it holds."""
    violations = []
    if read["total"] != expected_total:
        violations.append(f"total is {read['total']}, expected {expected_total} "
                          f"(off by {read['total'] - expected_total:+d})")
    if read["accounts"] != accounts:
        violations.append(f"{read['accounts']} accounts, expected {accounts}")
    for account, balance in read["negative"]:
        violations.append(f"account {account} has a negative balance {balance}")
    return violations
