"""Key and table locks of open multi-partition transactions, with wait-die; no Ray, no clock.

Design note
-----------
A partition runs single-partition (SP) transactions one at a time, so they
need no locks among themselves.  A multi-partition (MP) transaction is
different: its fragments run at different times and it stays open (RUNNING,
then PREPARED) until the coordinator's decision arrives.  To keep the whole
history serializable it holds locks here until it ends (strict two-phase
locking):

* a fragment's read of a key takes a shared lock (``S``), a write an
  exclusive one (``X``); a scan takes a shared lock on the whole table, which
  conflicts with any other transaction's ``X`` key lock in that table;
* an SP transaction takes no lock but must not read a key another
  transaction holds ``X`` (nor scan a table with such a key), nor write a key
  or a table someone holds at all: ``sp_blocker`` names the transaction it
  must wait for;
* two MP transactions that conflict follow wait-die by priority (the id of
  the transaction's first attempt; smaller is older): an older requester
  waits, a younger one dies (aborts and restarts with its old priority, so it
  ages and eventually wins).  Waits therefore only run from older to younger
  transactions and no cycle -- no deadlock -- can form.  So that a scan is
  not starved by a stream of short writers, a writer younger than a scan
  waiting for the table dies instead of taking a new key lock there.

``LockTable`` only answers and records; waiting and restarting belong to the
actor shell and the coordinator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable

S = "S"
X = "X"
WAIT = "wait"
DIE = "die"


@dataclass(frozen=True)
class Conflict:
    """A lock the requester cannot have now: who holds it, and wait-die's verdict."""

    holders: tuple[int, ...]
    verdict: str  # WAIT (the requester is older than every holder) or DIE


@dataclass
class _KeyLock:
    mode: str
    holders: set[int] = field(default_factory=set)


class LockTable:
    """Locks held by open MP transactions on one partition."""

    def __init__(self) -> None:
        self._keys: dict[tuple[str, Hashable], _KeyLock] = {}
        self._scans: dict[str, set[int]] = {}               # table -> txns holding a table S lock
        self._writers: dict[str, dict[int, int]] = {}       # table -> txn -> X key locks it holds there
        self._held: dict[int, list[tuple[str, Any]]] = {}    # txn -> its locks, to release them
        self._priority: dict[int, int] = {}
        self._scan_waiters: dict[str, dict[int, int]] = {}  # table -> older scans waiting for it: txn -> priority

    def __bool__(self) -> bool:
        return bool(self._held)

    def idle(self) -> bool:
        """No lock held and nobody waiting."""
        return not self._held and not self._scan_waiters

    def holders(self) -> list[int]:
        return sorted(self._held)

    # -- MP transactions ----------------------------------------------------------------

    def lock_key(self, txn: int, priority: int, table: str, key: Hashable, write: bool) -> Conflict | None:
        """Take S (read) or X (write) on ``table[key]`` for ``txn``; a Conflict if others hold it."""
        others = self._key_conflicts(txn, table, key, write)
        if others:
            return self._verdict(priority, others)
        held = self._keys.get((table, key))
        if write and not (held is not None and held.mode == X and txn in held.holders):
            # fairness: a scan waiting for this table is not overtaken by a younger writer's new X lock
            older = {t for t, p in self._scan_waiters.get(table, {}).items() if p < priority and t != txn}
            if older:
                return Conflict(tuple(sorted(older)), DIE)
        self._priority[txn] = priority
        lock = self._keys.get((table, key))
        if lock is None:
            lock = self._keys[(table, key)] = _KeyLock(S)
            self._held.setdefault(txn, []).append(("key", (table, key)))
        elif txn not in lock.holders:
            self._held.setdefault(txn, []).append(("key", (table, key)))
        lock.holders.add(txn)
        if write and lock.mode == S:
            lock.mode = X
            counts = self._writers.setdefault(table, {})
            counts[txn] = counts.get(txn, 0) + 1
        return None

    def lock_table(self, txn: int, priority: int, table: str) -> Conflict | None:
        """Take a table-wide S lock (a scan); a Conflict if another txn holds X on a key of it."""
        others = {t for t in self._writers.get(table, {}) if t != txn}
        if others:
            conflict = self._verdict(priority, others)
            if conflict.verdict == WAIT:
                self._scan_waiters.setdefault(table, {})[txn] = priority
            return conflict
        self._stop_waiting(txn, table)
        self._priority[txn] = priority
        scans = self._scans.setdefault(table, set())
        if txn not in scans:
            scans.add(txn)
            self._held.setdefault(txn, []).append(("table", table))
        return None

    def _stop_waiting(self, txn: int, table: str) -> None:
        waiters = self._scan_waiters.get(table)
        if waiters is not None:
            waiters.pop(txn, None)
            if not waiters:
                del self._scan_waiters[table]

    def release(self, txn: int) -> None:
        """Drop every lock ``txn`` holds (it committed, aborted or was released), and any wait of it."""
        for table in [t for t, w in self._scan_waiters.items() if txn in w]:
            self._stop_waiting(txn, table)
        for kind, what in self._held.pop(txn, []):
            if kind == "table":
                scans = self._scans.get(what)
                if scans is not None:
                    scans.discard(txn)
                    if not scans:
                        del self._scans[what]
                continue
            lock = self._keys.get(what)
            if lock is None:
                continue
            lock.holders.discard(txn)
            if lock.mode == X:
                self._drop_writer(what[0], txn)
            if not lock.holders:
                del self._keys[what]
        self._priority.pop(txn, None)

    def _drop_writer(self, table: str, txn: int) -> None:
        counts = self._writers.get(table)
        if counts is None or txn not in counts:
            return
        counts[txn] -= 1
        if counts[txn] <= 0:
            del counts[txn]
        if not counts:
            del self._writers[table]

    # -- SP transactions ----------------------------------------------------------------

    def sp_blocker(self, table: str, key: Hashable, write: bool) -> int | None:
        """The MP txn an SP read (or write) of ``table[key]`` must wait for, or None."""
        if not self._held:
            return None
        lock = self._keys.get((table, key))
        if lock is not None and (write or lock.mode == X):
            return min(lock.holders)
        if write:
            scans = self._scans.get(table)
            if scans:
                return min(scans)
        return None

    def sp_table_blocker(self, table: str) -> int | None:
        """The MP txn an SP scan of ``table`` must wait for (one holding X on a key of it), or None."""
        writers = self._writers.get(table)
        return min(writers) if writers else None

    # -- internals ------------------------------------------------------------------------

    def _key_conflicts(self, txn: int, table: str, key: Hashable, write: bool) -> set[int]:
        others: set[int] = set()
        lock = self._keys.get((table, key))
        if lock is not None and (write or lock.mode == X):
            others |= lock.holders - {txn}
        if write:
            others |= self._scans.get(table, set()) - {txn}
        return others

    def _verdict(self, priority: int, others: set[int]) -> Conflict:
        oldest = min(self._priority.get(t, t) for t in others)
        return Conflict(tuple(sorted(others)), WAIT if priority < oldest else DIE)
