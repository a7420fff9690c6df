"""Helpers shared by the integration tests: a ledger cluster, a background writer, state checks."""

from __future__ import annotations

import contextlib
import threading
import time

from actors import Cluster
from tests import bank


@contextlib.contextmanager
def ledger(name: str, tmp_path, partitions: int, k: int, accounts: int, **settings):
    """A durable cluster with ``accounts`` empty accounts, shut down afterwards."""
    db = Cluster.create(bank.schema(), partitions=partitions, k=k, name=name, data_dir=str(tmp_path), **settings)
    try:
        db.call_many("open_account", [(i, f"o{i}", 0) for i in range(accounts)])
        yield db
    finally:
        db.shutdown()


def replica_states(db: Cluster) -> dict[int, list[tuple]]:
    """Per partition: (written lsn, durable lsn, rows) of every serving replica."""
    out: dict[int, list[tuple]] = {}
    for r in db.status()["replicas"]:
        if r["health"] == "ok" and r["state"] == "serving":  # not one still being rebuilt
            out.setdefault(r["partition"], []).append((r["written_lsn"], r["durable_lsn"], r["rows"]))
    return out


class Writer:
    """Credits in a background thread; remembers what was acknowledged and what is unknown."""

    def __init__(self, db: Cluster, accounts: int) -> None:
        self.db, self.accounts = db, accounts
        self.acked: list[tuple[int, int, int]] = []
        self.unknown: list[tuple[tuple, Exception]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seq = 0
        while not self.stop.is_set():
            batch = [(i, seq + i, 1 + i % 3) for i in range(self.accounts)]
            seq += 1000
            for args, out in zip(batch, self.db.call_many("credit", batch)):
                if isinstance(out, int):
                    self.acked.append(args)
                else:
                    self.unknown.append((args, out))

    def wait_for_acks(self, n: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        target = len(self.acked) + n
        while len(self.acked) < target:
            assert time.monotonic() < deadline, "writes did not continue"
            time.sleep(0.01)

    def __enter__(self) -> "Writer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=120)


def check_state(db: Cluster, writer: Writer) -> None:
    bank.check_credits(db.call("dump"), writer.acked)
    for p, states in replica_states(db).items():
        assert all(s == states[0] for s in states), f"partition {p} replicas differ: {states}"


def wait_until(condition, timeout_s: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def redundant(db: Cluster, replicas_per_partition: int) -> bool:
    status = db.status()
    for p in range(status["partitions"]):
        ok = [r for r in status["replicas"] if r["partition"] == p and r["health"] == "ok" and r["state"] == "serving"]
        if len(ok) != replicas_per_partition:
            return False
    return True
