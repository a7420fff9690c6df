"""A small bank schema shared by the integration tests (shipped to actors by value)."""

from __future__ import annotations

import time

import pyarrow as pa

from actors import Schema, Table, procedure

accounts = Table(
    "accounts",
    pa.schema([("id", pa.int64()), ("owner", pa.string()), ("balance", pa.int64())]),
    primary_key=["id"], partition_by="id",
)
branches = Table(
    "branches",
    pa.schema([("code", pa.string()), ("city", pa.string())]),
    primary_key="code", replicated=True,
)
entries = Table(
    "entries",
    pa.schema([("account", pa.int64()), ("seq", pa.int32()), ("amount", pa.int64()), ("small", pa.int8())]),
    primary_key=["account", "seq"], partition_by="account",
)


@procedure(partition_by="account_id")
def open_account(tx, account_id: int, owner: str, balance: int = 0) -> int:
    tx.insert("accounts", {"id": account_id, "owner": owner, "balance": balance})
    return account_id


@procedure(partition_by="account_id")
def deposit(tx, account_id: int, amount: int) -> int:
    row = tx.get("accounts", account_id)
    if row is None:
        tx.abort(f"no account {account_id}")
    tx.update("accounts", account_id, {"balance": row["balance"] + amount})
    return row["balance"] + amount


@procedure(partition_by="account_id")
def withdraw_then_fail(tx, account_id: int, amount: int) -> None:
    """Writes, then raises: the write must be rolled back."""
    row = tx.get("accounts", account_id)
    tx.update("accounts", account_id, {"balance": row["balance"] - amount})
    raise ValueError(f"simulated failure after withdrawing {amount}")


@procedure(partition_by="account_id")
def raw_insert(tx, account_id: int, row: dict) -> None:
    """Insert a caller-given row as is (for schema-violation tests)."""
    tx.insert("accounts", row)


@procedure(partition_by="account_id")
def raw_update(tx, account_id: int, changes: dict) -> None:
    tx.update("accounts", account_id, changes)


@procedure(partition_by="account_id")
def close_account(tx, account_id: int) -> None:
    tx.delete("accounts", account_id)


@procedure(partition_by="account_id")
def add_entry(tx, account_id: int, seq: int, amount: int, small: int) -> None:
    tx.insert("entries", {"account": account_id, "seq": seq, "amount": amount, "small": small})


@procedure(partition_by="account_id")
def branch_city(tx, account_id: int, code: str) -> str | None:
    row = tx.get("branches", code)
    return None if row is None else row["city"]


@procedure(partition_by="account_id")
def rename_branch(tx, account_id: int, code: str, city: str) -> None:
    tx.update("branches", code, {"city": city})


@procedure(partition_by="account_id")
def touch_other_partition(tx, account_id: int, other_id: int) -> None:
    tx.update("accounts", account_id, {"balance": 0})
    tx.get("accounts", other_id)


@procedure(partition_by="account_id")
def slow_deposit(tx, account_id: int, amount: int, seconds: float) -> int:
    time.sleep(seconds)
    return deposit(tx, account_id, amount)


@procedure(partition_by="account_id")
def burn(tx, account_id: int, seconds: float) -> int:
    """Keep the partition's CPU busy (holding the GIL) for ``seconds``: a long transaction."""
    deadline = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < deadline:
        n += 1
    return n


@procedure(partition_by="account_id")
def credit(tx, account_id: int, seq: int, amount: int) -> int:
    """Two writes in one transaction: an entry and the balance it changes."""
    tx.insert("entries", {"account": account_id, "seq": seq, "amount": amount, "small": 1})
    row = tx.get("accounts", account_id)
    tx.update("accounts", account_id, {"balance": row["balance"] + amount})
    return row["balance"] + amount


def _set_city(ftx, code: str, city: str) -> str | None:
    row = ftx.get("branches", code)
    if row is None:
        ftx.abort(f"no branch {code}")
    ftx.update("branches", code, {"city": city})
    return row["city"]


@procedure(multi_partition=True)
def move_branch(tx, code: str, city: str) -> str:
    """A write to a replicated table: every partition's copy changes in one transaction."""
    return tx.run_all(_set_city, code, city)[0]


def _transfer_half(ftx, account_id: int, amount: int) -> int:
    row = ftx.get("accounts", account_id)
    if row is None:
        ftx.abort(f"no account {account_id}")
    if row["balance"] + amount < 0:
        ftx.abort(f"insufficient funds in {account_id}")
    ftx.update("accounts", account_id, {"balance": row["balance"] + amount})
    return row["balance"] + amount


@procedure(multi_partition=True)
def transfer(tx, src: int, dst: int, amount: int) -> int:
    """Move money between two accounts on any partitions (two-phase commit when they differ)."""
    left, _ = tx.run_many([(src, _transfer_half, (src, -amount)), (dst, _transfer_half, (dst, amount))])
    return left


@procedure(multi_partition=True)
def transfer_last(tx, src: int, dst: int, amount: int) -> int:
    """``transfer`` with one round trip fewer: the partitions prepare as they run the fragments."""
    left, _ = tx.run_many([(src, _transfer_half, (src, -amount)), (dst, _transfer_half, (dst, amount))], last=True)
    return left


def _dump(tx):
    return {name: tx.scan(name) for name in ("accounts", "entries")}


@procedure(multi_partition=True, read_only=True)
def dump(tx) -> dict:
    """Every partitioned row, for before/after comparisons."""
    out = {"accounts": [], "entries": []}
    for part in tx.run_all(_dump):
        for name, rows in part.items():
            out[name].extend(rows)
    for rows in out.values():
        rows.sort(key=lambda r: tuple(r.values()))
    return out


@procedure(multi_partition=True, read_only=True)
def total_balance(tx) -> int:
    return sum(tx.run_all(lambda t: sum(r["balance"] for r in t.scan("accounts"))))


def schema() -> Schema:
    return Schema(
        tables=[accounts, branches, entries],
        procedures=[open_account, deposit, withdraw_then_fail, raw_insert, raw_update, close_account,
                    add_entry, branch_city, rename_branch, touch_other_partition, slow_deposit, burn, credit, dump,
                    total_balance, move_branch, transfer, transfer_last],
    )


BRANCHES = [{"code": "AMS", "city": "Amsterdam"}, {"code": "OSL", "city": "Oslo"}, {"code": "LIS", "city": "Lisbon"}]


def check_credits(state: dict, acked: list[tuple[int, int, int]]) -> None:
    """Every acknowledged credit (account, seq, amount) is present, and every balance is exactly
    the sum of its entries: nothing lost, nothing half-applied, nothing applied twice."""
    entries = {(e["account"], e["seq"]): e["amount"] for e in state["entries"]}
    for account, seq, amount in acked:
        assert entries.get((account, seq)) == amount, f"acknowledged credit {account}/{seq} lost"
    sums: dict[int, int] = {}
    for (account, _), amount in entries.items():
        sums[account] = sums.get(account, 0) + amount
    for row in state["accounts"]:
        assert row["balance"] == sums.get(row["id"], 0), f"account {row['id']}: balance is not the sum of its entries"
