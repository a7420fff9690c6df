"""The partition core: storage and serial execution of transactions, no Ray.

Design note
-----------
One ``PartitionCore`` holds one partition's rows (table -> key -> row dict) and
runs transactions one at a time, as VoltDB/H-Store do: a single thread owns the
partition, so there are no latches and every transaction is serializable.

A transaction runs a stored procedure against a ``TxContext``.  Writes go to
storage in place (so the transaction reads its own writes) and push an undo
entry; on ``tx.abort``, a typed error or any other exception, the undo entries
are replayed in reverse and the transaction's redo records are dropped, so
nothing is half-applied.  Stored rows are never mutated in place (an update
stores a new dict) and readers get copies, so user code cannot corrupt state.

``execute_batch`` runs many transactions in one call -- the unit the actor
shell receives and, later, the unit of group commit -- and returns one outcome
per transaction plus the redo records of the committed ones.  ``apply_redo``
is how a follower or a recovery replays them.  The core knows nothing of time,
Ray or files.
"""

from __future__ import annotations

import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, NoReturn

from actors.errors import (
    BatchTooLarge, DuplicateKey, InvalidArguments, KeyNotFound, OhmError, ProcedureFailed,
    ReadOnlyViolation, SchemaViolation, UnknownProcedure, UserAbort, WrongPartition,
)
from actors.locks import Conflict
from actors.participant import TXN_STATE_ID, OpenTxn, Participant, is_mp_txn
from actors.routing import partition_of
from actors.schema import Schema, Table
from recovery.redo import DELETE, INSERT, REQUEST, ROW_OPS, UPDATE, RedoRecord, apply_record

#: Default upper bound on transactions in one batch (one actor call).
BATCH_TXNS_MAX = 10_000
#: Characters of a procedure's traceback kept in a ProcedureFailed error.
TRACEBACK_CHARS_MAX = 4_000
#: Bits of a txn id that hold the per-partition sequence number.
TXN_SEQ_BITS = 40
#: Partition values whose partition is remembered (``PartitionCore._partition_of``).
HOMES_KEPT_MAX = 4_096
#: Client request outcomes remembered for retries (oldest forgotten first).
REQUESTS_KEPT_MAX = 100_000


@dataclass
class BatchOutcome:
    """Results of one batch: ``results[i]`` or ``errors[i]`` for each transaction.

    ``blocked_at`` is set when transaction ``blocked_at`` touched a key that
    the open MP txn ``blocked_by`` holds.  Then the whole batch was undone --
    none of it ran, nothing is in ``redo`` -- and the shell runs it again
    once that txn has ended.  (Undoing the transactions before it, rather
    than logging them, keeps a batch all-or-nothing in the log, so a retry
    with its request id after a failover can never apply a part twice.)
    """

    results: list[Any]
    errors: dict[int, OhmError]
    redo: list[RedoRecord] = field(default_factory=list)
    blocked_at: int | None = None
    blocked_by: int | None = None


@dataclass
class FragmentOutcome:
    """A fragment of an MP txn: its result, or its error, or the lock conflict that stopped it."""

    result: Any = None
    error: OhmError | None = None
    conflict: Conflict | None = None
    wrote: bool = False


class Blocked(BaseException):
    """An SP transaction touched a key an open MP txn holds (BaseException: user code cannot swallow it)."""

    def __init__(self, txn: int) -> None:
        super().__init__(txn)
        self.txn = txn


class LockWait(BaseException):
    """A fragment cannot have a lock now (BaseException: user code cannot swallow it)."""

    def __init__(self, conflict: Conflict) -> None:
        super().__init__(conflict)
        self.conflict = conflict


class TxContext:
    """What a procedure sees: get / insert / update / upsert / delete / scan / abort."""

    __slots__ = ("_core", "_undo", "_undo_mark", "_redo", "_txn_id", "_read_only", "_ended", "_mp")

    def __init__(self, core: "PartitionCore", txn_id: int, redo: list[RedoRecord], read_only: bool,
                 mp: OpenTxn | None = None, undo: list | None = None) -> None:
        self._core = core
        self._mp = mp  # the open MP txn this fragment runs in (its undo spans all its fragments)
        # Undo entries go to the MP txn's list (it spans fragments), the batch's (a blocked batch is
        # undone whole), or a list of this transaction's own; a rollback undoes only this context's part.
        self._undo: list[tuple[str, dict, Any, dict | None]] = mp.undo if mp is not None else (
            undo if undo is not None else [])
        self._undo_mark = len(self._undo)
        self._redo = redo
        self._txn_id = txn_id
        self._read_only = read_only
        self._ended = False

    @property
    def partition(self) -> int:
        """The partition this transaction runs on."""
        return self._core.partition_id

    @property
    def txn_id(self) -> int:
        return self._txn_id

    # -- reads ------------------------------------------------------------------

    def get(self, table: str, key: Any) -> dict[str, Any] | None:
        """The row with this primary key, as a new dict, or None."""
        t, rows = self._core._table(table)
        key = self._core._own_key(t, key)
        self._guard_key(t, key, write=False)
        row = rows.get(key)
        return None if row is None else t.copy_row(row)

    def scan(self, table: str, predicate: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        """Every row of ``table`` in this partition (that satisfies ``predicate``)."""
        t, rows = self._core._table(table)
        self._guard_table(t)
        copies = (t.copy_row(r) for r in rows.values())
        if predicate is None:
            return list(copies)
        return [r for r in copies if predicate(r)]

    def count(self, table: str) -> int:
        """Rows of ``table`` in this partition."""
        t, rows = self._core._table(table)
        self._guard_table(t)
        return len(rows)

    # -- writes -----------------------------------------------------------------

    def insert(self, table: str, row: dict[str, Any]) -> None:
        """Insert a new row; DuplicateKey if its primary key exists."""
        t, rows = self._writable(table)
        clean = t.check_row(row)
        key = self._core._own_checked_key(t, t.key_of(clean))
        self._guard_key(t, key, write=True)
        if key in rows:
            raise DuplicateKey(f"table {table!r}: duplicate primary key {key!r}", table=table, key=repr(key))
        self._write(t.name, rows, key, clean, INSERT)

    def update(self, table: str, key: Any, changes: dict[str, Any]) -> dict[str, Any]:
        """Change some columns of an existing row; KeyNotFound if it is missing."""
        t, rows = self._writable(table)
        key = self._core._own_key(t, key)
        self._guard_key(t, key, write=True)
        old = rows.get(key)
        if old is None:
            raise KeyNotFound(f"table {table!r}: no row with key {key!r} to update", table=table, key=repr(key))
        new = {**old, **t.check_changes(changes)}
        self._write(t.name, rows, key, new, UPDATE)
        return t.copy_row(new)

    def upsert(self, table: str, row: dict[str, Any]) -> None:
        """Insert the row, or replace the row with the same primary key."""
        t, rows = self._writable(table)
        clean = t.check_row(row)
        key = self._core._own_checked_key(t, t.key_of(clean))
        self._guard_key(t, key, write=True)
        self._write(t.name, rows, key, clean, UPDATE if key in rows else INSERT)

    def delete(self, table: str, key: Any) -> None:
        """Delete an existing row; KeyNotFound if it is missing."""
        t, rows = self._writable(table)
        key = self._core._own_key(t, key)
        self._guard_key(t, key, write=True)
        if key not in rows:
            raise KeyNotFound(f"table {table!r}: no row with key {key!r} to delete", table=table, key=repr(key))
        self._write(t.name, rows, key, None, DELETE)

    def abort(self, reason: str = "aborted by procedure") -> NoReturn:
        """Roll the transaction back; the caller gets UserAbort(reason)."""
        raise UserAbort(str(reason), reason=str(reason))

    # -- internals ----------------------------------------------------------------

    def _writable(self, table: str) -> tuple[Table, dict]:
        if self._ended:
            raise ReadOnlyViolation(f"table {table!r}: this transaction has ended; its context cannot write", table=table)
        t, rows = self._core._table(table)
        if self._read_only:
            raise ReadOnlyViolation(f"table {table!r}: this transaction is read-only", table=table)
        if t.replicated and self._mp is None:
            raise ReadOnlyViolation(
                f"table {table!r} is replicated: only a multi-partition procedure can write it "
                "(tx.run_all(fragment) in @procedure(multi_partition=True)), so every copy changes together",
                table=table,
            )
        return t, rows

    def _guard_key(self, t: Table, key: Any, write: bool) -> None:
        """Lock the key (MP fragment) or check no open MP txn holds it (SP transaction)."""
        locks = self._core.mp.locks
        if self._mp is not None:
            conflict = locks.lock_key(self._mp.txn, self._mp.priority, t.name, key, write)
            if conflict is not None:
                raise LockWait(conflict)
        elif locks:
            holder = locks.sp_blocker(t.name, key, write)
            if holder is not None:
                raise Blocked(holder)

    def _guard_table(self, t: Table) -> None:
        locks = self._core.mp.locks
        if self._mp is not None:
            conflict = locks.lock_table(self._mp.txn, self._mp.priority, t.name)
            if conflict is not None:
                raise LockWait(conflict)
        elif locks:
            holder = locks.sp_table_blocker(t.name)
            if holder is not None:
                raise Blocked(holder)

    def _write(self, table: str, rows: dict, key: Any, row: dict | None, op: str) -> None:
        self._undo.append((table, rows, key, rows.get(key)))
        if row is None:
            del rows[key]
        else:
            rows[key] = row
        self._redo.append(RedoRecord(self._txn_id, op, table, key, row))

    def _rollback(self, redo_mark: int) -> None:
        for _table, rows, key, old in reversed(self._undo[self._undo_mark:]):
            if old is None:
                rows.pop(key, None)
            else:
                rows[key] = old
        del self._undo[self._undo_mark:]
        del self._redo[redo_mark:]


class PartitionCore:
    """One partition's state and its serial transaction executor."""

    def __init__(self, schema: Schema, partition_id: int, partitions: int,
                 batch_txns_max: int = BATCH_TXNS_MAX) -> None:
        if not (0 <= partition_id < partitions):
            raise ValueError(f"partition {partition_id} outside 0..{partitions - 1}")
        self.schema = schema
        self.partition_id = partition_id
        self.partitions = partitions
        self.batch_txns_max = batch_txns_max
        self.tables: dict[str, dict[Any, dict[str, Any]]] = {name: {} for name in schema.tables}
        self.txn_seq = 0
        self.committed = 0
        self.aborted = 0   # user aborts
        self.failed = 0    # every other error
        self.fragments = 0  # fragments of multi-partition txns run here (not counted as transactions)
        self.requests: OrderedDict[str, bytes] = OrderedDict()  # request id -> pickled outcome
        self.mp = Participant(self)  # open / prepared MP txns, their locks, recorded decisions
        self._batch_undo: list | None = None  # undo of the batch being executed (see BatchOutcome)
        self._homes: dict[Any, int] = {}  # partition value -> partition (see _partition_of)

    # -- execution ----------------------------------------------------------------

    def execute_batch(self, calls: list[tuple[str, tuple]]) -> BatchOutcome:
        """Run ``(procedure name, args)`` transactions in order, each atomically."""
        if len(calls) > self.batch_txns_max:
            raise BatchTooLarge(
                f"batch of {len(calls)} transactions exceeds the limit of {self.batch_txns_max}",
                size=len(calls), limit=self.batch_txns_max,
            )
        out = BatchOutcome(results=[None] * len(calls), errors={})
        counters = (self.committed, self.aborted, self.failed)
        self._batch_undo = []
        try:
            for i, call in enumerate(calls):
                try:
                    name, args = call
                except (TypeError, ValueError):
                    out.errors[i] = InvalidArguments(f"call {i} is not a (procedure, args) pair: {call!r}", index=i)
                    self.failed += 1
                    continue
                try:
                    result = self.execute(name, args, out.redo)
                except Blocked as blocked:
                    self._undo_batch(counters)
                    return BatchOutcome([None] * len(calls), {}, [], blocked_at=i, blocked_by=blocked.txn)
                if isinstance(result, _Failure):
                    out.errors[i] = result.error
                else:
                    out.results[i] = result
            return out
        finally:
            self._batch_undo = None

    def _undo_batch(self, counters: tuple[int, int, int]) -> None:
        """Roll back every transaction the batch ran so far (it is run again later)."""
        for _table, rows, key, old in reversed(self._batch_undo or []):
            if old is None:
                rows.pop(key, None)
            else:
                rows[key] = old
        self.committed, self.aborted, self.failed = counters

    def execute(self, name: str, args: Any, redo: list[RedoRecord]) -> Any:
        """Run one transaction; its redo goes to ``redo``; a failure is returned as _Failure."""
        try:
            proc = self.schema.procedures.get(name) if isinstance(name, str) else None
            if proc is None:
                raise UnknownProcedure(
                    f"unknown procedure {name!r}; known: {sorted(self.schema.procedures)}", procedure=str(name)
                )
            if proc.multi_partition:
                raise InvalidArguments(
                    f"procedure {name!r} is multi-partition; a partition cannot run it on its own", procedure=name
                )
            if not isinstance(args, tuple):
                args = tuple(args) if isinstance(args, list) else (args,)
            proc.check_args(args)
            value = proc.partition_value(args)
            if self._partition_of(value) != self.partition_id:
                raise WrongPartition(
                    f"procedure {name!r}: {proc.partition_by}={value!r} "
                    f"belongs to another partition than {self.partition_id}",
                    procedure=name, partition=self.partition_id,
                )
        except OhmError as err:
            return self._count(_Failure(err))
        return self._count(self._run(proc.name, proc.func, args, redo, proc.read_only))

    def run_fragment_mp(self, txn: int, priority: int, fragment: Callable[..., Any], args: tuple,
                        now_s: float, read_only: bool = False) -> FragmentOutcome:
        """Run a fragment inside the open MP txn ``txn``, taking locks; a failed fragment is undone alone."""
        self.fragments += 1
        try:
            open_txn = self.mp.enter(txn, priority, now_s)
        except OhmError as err:
            return FragmentOutcome(error=err)
        tx = TxContext(self, txn, open_txn.redo, read_only=read_only, mp=open_txn)
        try:
            result = self._call(getattr(fragment, "__name__", "fragment"), fragment, tuple(args), tx)
        except LockWait as wait:
            return FragmentOutcome(conflict=wait.conflict, wrote=open_txn.wrote)
        if isinstance(result, _Failure):
            return FragmentOutcome(error=result.error, wrote=open_txn.wrote)
        return FragmentOutcome(result=result, wrote=open_txn.wrote)

    def _run(self, name: str, func: Callable[..., Any], args: tuple, redo: list[RedoRecord], read_only: bool) -> Any:
        """Run ``func(tx, *args)`` atomically: its result, or _Failure after a full rollback."""
        self.txn_seq += 1
        tx = TxContext(self, (self.partition_id << TXN_SEQ_BITS) | self.txn_seq, redo, read_only,
                       undo=self._batch_undo)
        return self._call(name, func, args, tx)

    def _call(self, name: str, func: Callable[..., Any], args: tuple, tx: TxContext) -> Any:
        redo = tx._redo
        mark = len(redo)
        try:
            return func(tx, *args)
        except OhmError as err:
            tx._rollback(mark)
            return _Failure(err)
        except Exception as exc:  # user code: any exception rolls back
            tx._rollback(mark)
            return _Failure(_procedure_failed(name, exc))
        except BaseException:
            tx._rollback(mark)
            raise
        finally:
            tx._ended = True

    def _count(self, outcome: Any) -> Any:
        if not isinstance(outcome, _Failure):
            self.committed += 1
        elif isinstance(outcome.error, UserAbort):
            self.aborted += 1
        else:
            self.failed += 1
        return outcome

    # -- state --------------------------------------------------------------------

    def load(self, table: str, rows: Iterable[dict[str, Any]], redo: list[RedoRecord] | None = None) -> int:
        """Bulk-insert validated rows (initial data); all or nothing; INSERT records go to ``redo``."""
        t, stored = self._table(table)
        staged: dict[Any, dict[str, Any]] = {}
        for row in rows:
            clean = t.check_row(row)
            key = self._own_key(t, t.key_of(clean))
            if key in stored or key in staged:
                raise DuplicateKey(f"table {table!r}: duplicate primary key {key!r} in loaded data", table=table, key=repr(key))
            staged[key] = clean
        stored.update(staged)
        if redo is not None:
            redo.extend(RedoRecord(0, INSERT, table, key, row) for key, row in staged.items())
        return len(staged)

    def restore(self, rows_by_table: dict[str, list[dict[str, Any]]]) -> None:
        """Replace all state with these rows (a snapshot being loaded)."""
        for name, t in self.schema.tables.items():
            self.tables[name] = {t.key_of(r): r for r in rows_by_table.get(name, [])}

    def state_copy(self) -> dict[str, list[dict[str, Any]]]:
        """A consistent copy of the committed rows, cheap: stored rows are never mutated in place.

        Writes of open MP txns are left out (their before-images stand in).
        """
        return self.mp.clean_tables({name: list(rows.values()) for name, rows in self.tables.items()})

    def kept_entries(self) -> list[tuple[str, bytes]]:
        """What a snapshot or a rebuilt replica keeps besides rows: request outcomes and the 2PC state."""
        return [*self.requests.items(), (TXN_STATE_ID, self.mp.state())]

    def restore_entries(self, entries: Iterable[tuple[str, bytes]]) -> None:
        """Take back what ``kept_entries`` gave (a snapshot being loaded, a rebuild)."""
        self.requests.clear()
        for key, value in entries:
            if key == TXN_STATE_ID:
                self.mp.restore(value)
            else:
                self.remember(key, value)

    def apply_redo(self, records: Iterable[RedoRecord]) -> None:
        """Apply redo records produced by a leader (follower / recovery path); the records' rows are
        stored as they are, so they must be the caller's own (freshly decoded)."""
        mask = (1 << TXN_SEQ_BITS) - 1
        tables = self.tables
        for rec in records:
            if rec.op in ROW_OPS and not is_mp_txn(rec.txn_id):  # an SP txn's row: the common case
                apply_record(tables, rec)
                self.txn_seq = max(self.txn_seq, rec.txn_id & mask)  # a promoted follower numbers on from here
            elif rec.op == REQUEST:
                self.remember(rec.key, rec.row["outcome"])
            elif not self.mp.apply(rec):  # 2PC markers and MP txns' rows go to the participant
                raise ValueError(f"unknown redo op {rec.op!r} in transaction {rec.txn_id}")

    def remember(self, request_id: str, outcome: bytes) -> None:
        """Keep a request's outcome for retries (bounded: the oldest are forgotten)."""
        self.requests[request_id] = outcome
        self.requests.move_to_end(request_id)
        while len(self.requests) > REQUESTS_KEPT_MAX:
            self.requests.popitem(last=False)

    def recall(self, request_id: str) -> bytes | None:
        return self.requests.get(request_id)

    def row_counts(self) -> dict[str, int]:
        return {name: len(rows) for name, rows in self.tables.items()}

    def counters(self) -> dict[str, int]:
        return {"committed": self.committed, "aborted": self.aborted, "failed": self.failed}

    # -- internals ----------------------------------------------------------------

    def _table(self, name: str) -> tuple[Table, dict]:
        try:
            return self.schema.tables[name], self.tables[name]
        except (KeyError, TypeError):
            raise SchemaViolation(f"unknown table {name!r}; tables are {sorted(self.tables)}", table=repr(name)) from None

    def _own_key(self, t: Table, key: Any) -> Any:
        """Validate ``key`` and check it lives on this partition."""
        return self._own_checked_key(t, t.check_key(key))

    def _own_checked_key(self, t: Table, key: Any) -> Any:
        """``key`` (already validated), once checked to live on this partition."""
        if not t.replicated:
            value = t.partition_value_of_key(key)
            if self._partition_of(value) != self.partition_id:
                raise WrongPartition(
                    f"table {t.name!r}: {t.partition_by}={value!r} lives on another partition than {self.partition_id}; "
                    "a single-partition procedure may only touch its own partition's rows",
                    table=t.name, key=repr(key), partition=self.partition_id,
                )
        return key

    def _partition_of(self, value: Any) -> int:
        """``partition_of(value)``, remembered for ints and strs (equal ones hash alike: a txn
        touches its partition value several times, and hashing it costs more than a lookup)."""
        if type(value) is not int and type(value) is not str:
            return partition_of(value, self.partitions)
        p = self._homes.get(value)
        if p is None:
            if len(self._homes) >= HOMES_KEPT_MAX:
                self._homes.clear()
            p = self._homes[value] = partition_of(value, self.partitions)
        return p


class _Failure:
    """A failed transaction's error, distinguishable from any procedure result."""

    __slots__ = ("error",)

    def __init__(self, error: OhmError) -> None:
        self.error = error


def is_failure(value: Any) -> bool:
    return isinstance(value, _Failure)


def _procedure_failed(name: str, exc: Exception) -> ProcedureFailed:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-TRACEBACK_CHARS_MAX:]
    return ProcedureFailed(
        f"procedure {name!r} raised {type(exc).__name__}: {exc}",
        procedure=name, exception=type(exc).__name__, traceback=tb,
    )
