"""Unit tests of ``actors.locks.LockTable`` (no Ray): S/X key locks, table S locks, wait-die, SP blockers.

The last tests drive the table with random request sequences (a hypothesis state
machine and a plain list-of-ops test) against a deliberately naive reference model
-- a set of ``(txn, table, key, mode)`` grants -- and check after every step that
the table answers exactly what the model says, that no two transactions ever hold
conflicting grants, and that after everything is released nothing blocks anyone.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from actors.locks import DIE, WAIT, Conflict, LockTable
from actors.participant import MP_TXN_BIT

A, B, C, D = (MP_TXN_BIT | n for n in (1, 2, 3, 4))  # smaller = older
T, U = "acct", "ref"


def grant(lt: LockTable, txn: int, key, write: bool, table: str = T, priority: int | None = None) -> None:
    """Take a key lock that must be granted."""
    assert lt.lock_key(txn, txn if priority is None else priority, table, key, write) is None


# --- key locks: compatibility ---------------------------------------------------------


def test_empty_table_is_false_and_blocks_nothing():
    lt = LockTable()
    assert not lt
    assert lt.holders() == []
    assert lt.sp_blocker(T, 1, write=False) is None
    assert lt.sp_blocker(T, 1, write=True) is None
    assert lt.sp_table_blocker(T) is None


def test_shared_shared_compatible():
    lt = LockTable()
    grant(lt, A, 1, write=False)
    grant(lt, B, 1, write=False)
    grant(lt, C, 1, write=False)
    assert lt.holders() == [A, B, C]
    # readers do not block SP reads, and no table has a writer
    assert lt.sp_blocker(T, 1, write=False) is None
    assert lt.sp_table_blocker(T) is None
    # but an SP write must wait for one of the readers
    assert lt.sp_blocker(T, 1, write=True) in {A, B, C}


@pytest.mark.parametrize("held_write, asked_write", [(False, True), (True, False), (True, True)])
def test_shared_exclusive_and_exclusive_exclusive_conflict(held_write, asked_write):
    lt = LockTable()
    grant(lt, A, 1, write=held_write)
    c = lt.lock_key(B, B, T, 1, asked_write)
    assert isinstance(c, Conflict)
    assert c.holders == (A,)
    # the refused request granted nothing
    assert lt.holders() == [A]
    # another key, and the same key in another table, are free
    grant(lt, B, 2, write=asked_write)
    grant(lt, B, 1, write=asked_write, table=U)


def test_conflict_names_every_conflicting_holder():
    lt = LockTable()
    grant(lt, A, 1, write=False)
    grant(lt, C, 1, write=False)
    grant(lt, D, 2, write=True)  # unrelated key: not a holder of the conflict
    c = lt.lock_key(B, B, T, 1, write=True)
    assert c is not None and c.holders == (A, C)


def test_relocking_own_locks_is_free():
    lt = LockTable()
    grant(lt, A, 1, write=True)
    grant(lt, A, 1, write=False)  # read own X
    grant(lt, A, 1, write=True)   # write own X again
    assert lt.holders() == [A]
    lt.release(A)
    assert not lt
    # one X lock counted once: nothing is left to block a scan
    assert lt.sp_table_blocker(T) is None
    assert lt.lock_table(B, B, T) is None


# --- upgrades ---------------------------------------------------------------------------


def test_upgrade_by_the_only_holder():
    lt = LockTable()
    grant(lt, A, 1, write=False)
    assert lt.sp_table_blocker(T) is None
    grant(lt, A, 1, write=True)  # S -> X
    # now it is an X lock: readers conflict, SP reads and scans are blocked
    c = lt.lock_key(B, B, T, 1, write=False)
    assert c is not None and c.holders == (A,)
    assert lt.sp_blocker(T, 1, write=False) == A
    assert lt.sp_table_blocker(T) == A
    c = lt.lock_table(B, B, T)
    assert c is not None and c.holders == (A,)
    lt.release(A)
    assert lt.sp_table_blocker(T) is None
    assert lt.lock_table(B, B, T) is None


def test_upgrade_blocked_while_another_holds_shared():
    lt = LockTable()
    grant(lt, A, 1, write=False)
    grant(lt, B, 1, write=False)
    c = lt.lock_key(A, A, T, 1, write=True)
    assert c is not None and c.holders == (B,)
    # the lock stayed S: readers still get it, SP reads and scans pass
    grant(lt, C, 1, write=False)
    assert lt.sp_blocker(T, 1, write=False) is None
    assert lt.sp_table_blocker(T) is None
    # once B (and C) let go, A can upgrade
    lt.release(B)
    lt.release(C)
    grant(lt, A, 1, write=True)
    assert lt.sp_table_blocker(T) == A


# --- wait-die ----------------------------------------------------------------------------


def test_older_requester_waits_younger_dies():
    lt = LockTable()
    grant(lt, B, 1, write=True)
    assert lt.lock_key(A, A, T, 1, write=False) == Conflict((B,), WAIT)  # A older than B
    assert lt.lock_key(C, C, T, 1, write=False) == Conflict((B,), DIE)   # C younger than B


def test_verdict_uses_the_oldest_conflicting_holder():
    lt = LockTable()
    grant(lt, B, 1, write=False)
    grant(lt, D, 1, write=False)
    # C is older than D but younger than B: it dies
    assert lt.lock_key(C, C, T, 1, write=True) == Conflict((B, D), DIE)
    # A is older than both: it waits
    assert lt.lock_key(A, A, T, 1, write=True) == Conflict((B, D), WAIT)


def test_verdict_ignores_non_conflicting_older_holders():
    lt = LockTable()
    grant(lt, A, 2, write=True)  # oldest txn, but on another key
    grant(lt, C, 1, write=True)
    assert lt.lock_key(B, B, T, 1, write=False) == Conflict((C,), WAIT)


def test_verdict_compares_priorities_not_txn_ids():
    """A restarted txn keeps its old priority: a new id but still old."""
    lt = LockTable()
    restarted = MP_TXN_BIT | 100
    grant(lt, restarted, 1, write=True, priority=A)  # priority of its first attempt
    assert lt.lock_key(B, B, T, 1, write=False) == Conflict((restarted,), DIE)
    # and a requester with an old priority but a big id waits for a young holder
    lt2 = LockTable()
    grant(lt2, C, 1, write=True)
    assert lt2.lock_key(restarted, A, T, 1, write=False) == Conflict((C,), WAIT)


def test_equal_priority_dies():
    """WAIT only when strictly older than every holder."""
    lt = LockTable()
    grant(lt, B, 1, write=True, priority=A)
    assert lt.lock_key(C, A, T, 1, write=False) == Conflict((B,), DIE)


# --- table scan locks --------------------------------------------------------------------


def test_table_scan_blocked_by_x_key_lock():
    lt = LockTable()
    grant(lt, B, 1, write=True)
    assert lt.lock_table(A, A, T) == Conflict((B,), WAIT)
    assert lt.lock_table(C, C, T) == Conflict((B,), DIE)
    assert lt.lock_table(C, C, U) is None  # another table
    assert lt.lock_table(B, B, T) is None  # its own X locks do not block its scan


def test_table_scan_not_blocked_by_shared_key_locks():
    lt = LockTable()
    grant(lt, B, 1, write=False)
    assert lt.lock_table(A, A, T) is None
    assert lt.lock_table(C, C, T) is None  # scans share


def test_x_key_lock_blocked_by_table_scan():
    lt = LockTable()
    assert lt.lock_table(B, B, T) is None
    assert lt.lock_key(A, A, T, 7, write=True) == Conflict((B,), WAIT)
    assert lt.lock_key(C, C, T, 7, write=True) == Conflict((B,), DIE)
    grant(lt, C, 7, write=False)          # reading under a scan is fine
    grant(lt, C, 7, write=True, table=U)  # writing another table too
    grant(lt, B, 8, write=True)           # the scanner may write its own table
    assert lt.sp_table_blocker(T) == B


def test_x_key_conflict_includes_scanners_and_key_holders():
    lt = LockTable()
    assert lt.lock_table(B, B, T) is None
    grant(lt, D, 1, write=False)
    assert lt.lock_key(C, C, T, 1, write=True) == Conflict((B, D), DIE)
    assert lt.lock_key(A, A, T, 1, write=True) == Conflict((B, D), WAIT)


def test_writer_counts_per_txn_and_table():
    lt = LockTable()
    grant(lt, A, 1, write=True)
    grant(lt, A, 2, write=True)
    grant(lt, B, 3, write=True)
    assert lt.lock_table(C, C, T) == Conflict((A, B), DIE)
    lt.release(A)
    assert lt.lock_table(C, C, T) == Conflict((B,), DIE)
    assert lt.sp_table_blocker(T) == B
    lt.release(B)
    assert lt.sp_table_blocker(T) is None
    assert lt.lock_table(C, C, T) is None


# --- SP blockers ---------------------------------------------------------------------------


def test_sp_read_blocked_only_by_x():
    lt = LockTable()
    grant(lt, A, 1, write=False)
    grant(lt, B, 2, write=True)
    assert lt.sp_blocker(T, 1, write=False) is None
    assert lt.sp_blocker(T, 2, write=False) == B
    assert lt.sp_blocker(T, 3, write=False) is None
    assert lt.sp_blocker(U, 2, write=False) is None


def test_sp_write_blocked_by_s_x_and_table_s():
    lt = LockTable()
    grant(lt, A, 1, write=False)
    grant(lt, B, 2, write=True)
    assert lt.sp_blocker(T, 1, write=True) == A
    assert lt.sp_blocker(T, 2, write=True) == B
    assert lt.sp_blocker(T, 3, write=True) is None
    assert lt.lock_table(C, C, U) is None
    assert lt.sp_blocker(U, 99, write=True) == C      # any key of a scanned table
    assert lt.sp_blocker(U, 99, write=False) is None  # reads pass a scan


def test_sp_write_names_a_holder_of_a_shared_key():
    lt = LockTable()
    grant(lt, C, 1, write=False)
    grant(lt, B, 1, write=False)
    assert lt.sp_blocker(T, 1, write=True) in {B, C}
    lt.release(B)
    assert lt.sp_blocker(T, 1, write=True) == C


def test_sp_scan_blocked_by_x_only():
    lt = LockTable()
    grant(lt, A, 1, write=False)
    assert lt.lock_table(B, B, T) is None
    assert lt.sp_table_blocker(T) is None  # readers and scanners do not block an SP scan
    grant(lt, C, 5, write=True, table=U)
    assert lt.sp_table_blocker(U) == C
    assert lt.sp_table_blocker(T) is None


# --- release -------------------------------------------------------------------------------


def test_release_frees_keys_tables_and_writer_counts():
    lt = LockTable()
    grant(lt, A, 1, write=False)
    grant(lt, A, 1, write=True)   # upgraded
    grant(lt, A, 2, write=True)
    grant(lt, A, 3, write=False)
    assert lt.lock_table(A, A, U) is None
    grant(lt, B, 3, write=False)  # shares key 3 with A
    lt.release(A)
    assert lt.holders() == [B]
    # everything A held is free for a younger txn (no DIE against a gone holder)
    grant(lt, C, 1, write=True)
    grant(lt, C, 2, write=False)
    assert lt.lock_key(C, C, T, 3, write=True) == Conflict((B,), DIE)  # B still reads key 3
    grant(lt, C, 9, write=True, table=U)  # U's scan lock is gone
    assert lt.sp_table_blocker(U) == C
    lt.release(B)
    lt.release(C)
    assert not lt
    assert lt.holders() == []
    for key in (1, 2, 3, 9):
        for table in (T, U):
            assert lt.sp_blocker(table, key, write=False) is None
            assert lt.sp_blocker(table, key, write=True) is None
    assert lt.sp_table_blocker(T) is None and lt.sp_table_blocker(U) is None
    assert lt.lock_table(D, D, T) is None and lt.lock_table(D, D, U) is None


def test_release_of_unknown_txn_is_harmless():
    lt = LockTable()
    grant(lt, A, 1, write=True)
    lt.release(B)
    lt.release(B)
    assert lt.holders() == [A]
    assert lt.sp_blocker(T, 1, write=False) == A


def test_bool_tracks_holders():
    lt = LockTable()
    assert not lt
    assert lt.lock_table(A, A, T) is None  # a table lock alone counts
    assert lt
    lt.release(A)
    assert not lt
    grant(lt, A, 1, write=True)
    assert lt.lock_key(B, B, T, 1, write=True) is not None  # refused: B holds nothing
    assert lt.holders() == [A]
    lt.release(A)
    assert not lt
    assert lt.lock_key(B, B, T, 1, write=True) is None
    assert bool(lt)


# --- fairness: a waiting scan is not overtaken by younger writers ----------------------------


def test_idle_means_no_locks_and_no_waiting_scans():
    lt = LockTable()
    assert lt.idle()
    grant(lt, B, 1, write=True)
    assert not lt.idle()
    assert lt.lock_table(A, A, T) == Conflict((B,), WAIT)  # A now waits for the table
    lt.release(B)
    assert not lt            # nothing held ...
    assert not lt.idle()     # ... but A is still waiting
    assert lt.lock_table(A, A, T) is None  # A gets its scan and stops waiting
    lt.release(A)
    assert lt.idle()


def test_younger_writer_dies_for_an_older_waiting_scan():
    lt = LockTable()
    grant(lt, C, 1, write=True)
    assert lt.lock_table(B, B, T) == Conflict((C,), WAIT)  # B (older than C) waits
    # D is younger than B: no new X key lock in T for it, although nobody holds key 2
    assert lt.lock_key(D, D, T, 2, write=True) == Conflict((B,), DIE)
    assert lt.holders() == [C]
    grant(lt, D, 2, write=False)          # reads are not held back
    grant(lt, D, 2, write=True, table=U)  # nor writes to another table
    # a writer older than the waiting scan is not held back
    grant(lt, A, 3, write=True)
    # the scan still needs the writers to finish; then it gets the table and stops waiting
    lt.release(C)
    assert lt.lock_table(B, B, T) == Conflict((A,), DIE)  # now an older writer holds X: the scan dies
    lt.release(A)
    assert lt.lock_table(B, B, T) is None
    assert lt.lock_key(D, D, T, 4, write=True) == Conflict((B,), DIE)  # plain scan-vs-X conflict now
    lt.release(B)
    grant(lt, D, 4, write=True)


def test_a_dying_scan_does_not_hold_writers_back():
    lt = LockTable()
    grant(lt, B, 1, write=True)
    assert lt.lock_table(C, C, T) == Conflict((B,), DIE)  # C is younger: dies, does not wait
    assert lt.idle() is False  # B's lock
    grant(lt, D, 2, write=True)  # D younger than C, but C is not waiting
    lt.release(B)
    lt.release(D)
    assert lt.idle()


def test_release_ends_a_scan_wait():
    lt = LockTable()
    grant(lt, C, 1, write=True)
    assert lt.lock_table(A, A, T) == Conflict((C,), WAIT)
    assert lt.lock_key(D, D, T, 2, write=True) == Conflict((A,), DIE)
    lt.release(A)  # the waiting scan's txn aborted
    grant(lt, D, 2, write=True)
    lt.release(C)
    lt.release(D)
    assert lt.idle()


def test_several_waiting_scans_are_named():
    lt = LockTable()
    grant(lt, D, 1, write=True, priority=MP_TXN_BIT | 50)
    assert lt.lock_table(A, A, T).verdict == WAIT
    assert lt.lock_table(B, B, T).verdict == WAIT
    assert lt.lock_key(C, C, T, 2, write=True) == Conflict((A, B), DIE)


def test_rewrite_of_own_x_key_survives_an_older_waiting_scan():
    lt = LockTable()
    grant(lt, C, 1, write=True)
    assert lt.lock_table(B, B, T) == Conflict((C,), WAIT)
    # C writes key 1 again (a second fragment updating the same row): it takes no new lock
    assert lt.lock_key(C, C, T, 1, write=True) is None


# --- random sequences against a reference model -----------------------------------------------

TXNS = [MP_TXN_BIT | n for n in range(1, 6)]
TABLES = [T, U]
KEYS = [1, 2, 3]
# priorities deliberately not in txn-id order (restarted txns keep their first priority)
PRIORITY = {TXNS[0]: 30, TXNS[1]: 10, TXNS[2]: 50, TXNS[3]: 20, TXNS[4]: 40}
SCAN = None  # the key of a table-wide S grant in the model


class Model:
    """The lock table as a plain set of grants ``(txn, table, key, mode)``; key None = table S lock."""

    def __init__(self) -> None:
        self.grants: set[tuple[int, str, object, str]] = set()
        self.waiters: dict[str, dict[int, int]] = {}  # table -> scans told to WAIT for it: txn -> priority

    def mode(self, txn, table, key):
        modes = {m for (t, tb, k, m) in self.grants if (t, tb, k) == (txn, table, key)}
        return "X" if "X" in modes else ("S" if modes else None)

    def key_conflicts(self, txn, table, key, write) -> set[int]:
        out = set()
        for (t, tb, k, m) in self.grants:
            if t == txn or tb != table:
                continue
            if k == key and (write or m == "X"):
                out.add(t)
            if write and k is SCAN:
                out.add(t)
        return out

    def table_conflicts(self, txn, table) -> set[int]:
        return {t for (t, tb, k, m) in self.grants if t != txn and tb == table and k is not SCAN and m == "X"}

    def verdict(self, txn, others) -> Conflict | None:
        if not others:
            return None
        oldest = min(PRIORITY[t] for t in others)
        return Conflict(tuple(sorted(others)), WAIT if PRIORITY[txn] < oldest else DIE)

    def take_key(self, txn, table, key, write) -> None:
        old = self.mode(txn, table, key)
        new = "X" if write or old == "X" else "S"
        self.grants.discard((txn, table, key, "S"))
        self.grants.add((txn, table, key, new))

    def older_scan_waiters(self, txn, table) -> set[int]:
        return {t for t, p in self.waiters.get(table, {}).items() if t != txn and p < PRIORITY[txn]}

    def take_table(self, txn, table) -> None:
        self.grants.add((txn, table, SCAN, "S"))
        self.waiters.get(table, {}).pop(txn, None)

    def wait_for_table(self, txn, table) -> None:
        self.waiters.setdefault(table, {})[txn] = PRIORITY[txn]

    def release(self, txn) -> None:
        self.grants = {g for g in self.grants if g[0] != txn}
        for w in self.waiters.values():
            w.pop(txn, None)

    def idle(self) -> bool:
        return not self.grants and not any(self.waiters.values())

    # what SP transactions must wait for
    def sp_read_blockers(self, table, key) -> set[int]:
        return {t for (t, tb, k, m) in self.grants if tb == table and k == key and k is not SCAN and m == "X"}

    def sp_write_blockers(self, table, key) -> set[int]:
        return {t for (t, tb, k, m) in self.grants if tb == table and (k == key or k is SCAN)}

    def sp_scan_blockers(self, table) -> set[int]:
        return self.table_conflicts(None, table)

    def holders(self) -> list[int]:
        return sorted({g[0] for g in self.grants})

    def check_no_conflicting_grants(self) -> None:
        for (t1, tb1, k1, m1) in self.grants:
            for (t2, tb2, k2, m2) in self.grants:
                if t1 == t2 or tb1 != tb2:
                    continue
                if k1 is SCAN and k2 is SCAN:
                    continue
                if k1 is SCAN or k2 is SCAN:
                    key_mode = m2 if k1 is SCAN else m1
                    assert key_mode != "X", f"scan by one txn and X by another on {tb1}"
                elif k1 == k2:
                    assert m1 == m2 == "S", f"{t1}:{m1} and {t2}:{m2} on {tb1}[{k1}]"


def check_against(lt: LockTable, model: Model) -> None:
    """The table's SP answers, holders and truth value agree with the model."""
    model.check_no_conflicting_grants()
    assert lt.holders() == model.holders()
    assert bool(lt) == bool(model.grants)
    assert lt.idle() == model.idle()
    for table in TABLES:
        scan_blockers = model.sp_scan_blockers(table)
        got = lt.sp_table_blocker(table)
        assert (got is None) == (not scan_blockers) and (got is None or got in scan_blockers), (table, got)
        for key in KEYS:
            for write, blockers in ((False, model.sp_read_blockers(table, key)),
                                    (True, model.sp_write_blockers(table, key))):
                got = lt.sp_blocker(table, key, write)
                assert (got is None) == (not blockers), (table, key, write, got, blockers)
                assert got is None or got in blockers, (table, key, write, got, blockers)


def apply_op(lt: LockTable, model: Model, op: tuple) -> None:
    kind = op[0]
    if kind == "key":
        _, txn, table, key, write = op
        want = model.verdict(txn, model.key_conflicts(txn, table, key, write))
        allowed = [want]
        if want is None and write:
            # fairness: a writer younger than a scan waiting for the table dies instead of taking a new
            # key lock there.  Re-writing a key it already holds X is no new lock: either answer is
            # accepted here (test_rewrite_of_own_x_key_survives_an_older_waiting_scan pins the rule).
            older = model.older_scan_waiters(txn, table)
            if older:
                die = Conflict(tuple(sorted(older)), DIE)
                allowed = [die, None] if model.mode(txn, table, key) == "X" else [die]
        got = lt.lock_key(txn, PRIORITY[txn], table, key, write)
        assert got in allowed, (op, got, allowed)
        if got is None:
            model.take_key(txn, table, key, write)
    elif kind == "table":
        _, txn, table = op
        want = model.verdict(txn, model.table_conflicts(txn, table))
        got = lt.lock_table(txn, PRIORITY[txn], table)
        assert got == want, (op, got, want)
        if got is None:
            model.take_table(txn, table)
        elif got.verdict == WAIT:
            model.wait_for_table(txn, table)
    else:
        _, txn = op
        lt.release(txn)
        model.release(txn)


def release_all_and_check(lt: LockTable, model: Model, order: list[int]) -> None:
    for txn in order:
        lt.release(txn)
        model.release(txn)
        check_against(lt, model)
    assert not lt and lt.holders() == [] and lt.idle()
    for table in TABLES:
        assert lt.sp_table_blocker(table) is None
        for key in KEYS:
            assert lt.sp_blocker(table, key, write=False) is None
            assert lt.sp_blocker(table, key, write=True) is None
    # and nothing of the old grants lingers: a fresh txn gets everything
    fresh = MP_TXN_BIT | 99
    for table in TABLES:
        assert lt.lock_table(fresh, 99, table) is None
        for key in KEYS:
            assert lt.lock_key(fresh, 99, table, key, True) is None
    lt.release(fresh)
    assert not lt


op_strategy = st.one_of(
    st.tuples(st.just("key"), st.sampled_from(TXNS), st.sampled_from(TABLES), st.sampled_from(KEYS), st.booleans()),
    st.tuples(st.just("table"), st.sampled_from(TXNS), st.sampled_from(TABLES)),
    st.tuples(st.just("release"), st.sampled_from(TXNS)),
)

RANDOM_SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                           suppress_health_check=[HealthCheck.too_slow])


@RANDOM_SETTINGS
@given(ops=st.lists(op_strategy, max_size=60), order=st.permutations(TXNS))
def test_random_sequences_match_model(ops, order):
    lt, model = LockTable(), Model()
    for op in ops:
        apply_op(lt, model, op)
        check_against(lt, model)
    release_all_and_check(lt, model, list(order))


class LockMachine(RuleBasedStateMachine):
    """The same model, explored by hypothesis's state machine (shrinks to short histories)."""

    @initialize()
    def setup(self):
        self.lt, self.model = LockTable(), Model()

    @rule(txn=st.sampled_from(TXNS), table=st.sampled_from(TABLES), key=st.sampled_from(KEYS), write=st.booleans())
    def lock_key(self, txn, table, key, write):
        apply_op(self.lt, self.model, ("key", txn, table, key, write))

    @rule(txn=st.sampled_from(TXNS), table=st.sampled_from(TABLES))
    def lock_table(self, txn, table):
        apply_op(self.lt, self.model, ("table", txn, table))

    @rule(txn=st.sampled_from(TXNS))
    def release(self, txn):
        apply_op(self.lt, self.model, ("release", txn))

    @invariant()
    def agrees_with_model(self):
        if hasattr(self, "lt"):
            check_against(self.lt, self.model)

    def teardown(self):
        if hasattr(self, "lt"):
            release_all_and_check(self.lt, self.model, TXNS)


LockMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                         derandomize=True, database=None,
                                         suppress_health_check=[HealthCheck.too_slow])
TestLockMachine = LockMachine.TestCase
