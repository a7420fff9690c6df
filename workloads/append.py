"""List-append: Jepsen Elle's transactional workload, and its two checkers.

Design note
-----------
*What.*  One table, ``lists`` (key -> list of ints, an Arrow ``list<int64>``
column, which round-trips through the redo log and snapshots unchanged).
Transactions are short lists of micro-ops on a few hot keys:
``["append", k, v]`` adds ``v`` to the end of key ``k``'s list (creating the
row), ``["r", k, None]`` reads the whole list.  Appended values are unique per
key, so every read shows the order of every append before it -- which lets
``workloads.append_check`` (Elle) infer the write-write, write-read and
read-write dependencies between transactions and find cycles (G0, G1c, G2),
aborted and intermediate reads (G1a, G1b) -- anomalies a serializable database
must never show.

*How it runs.*  ``txn(mops)`` is a multi-partition procedure: it validates the
micro-ops, groups them by partition keeping their order (``split_by_partition``),
runs one ``apply_mops`` fragment per partition in a single
``tx.run_many(..., last=True)`` round (each partition prepares as it runs its
fragment; one partition is a one-entry round, the same path), and returns the
micro-ops in their original order with the reads filled in (``merge_results``).
``read_all(keys)`` is a consistent read-only read of many lists, used by the
checker.

*The generator.*  Each client draws 1..``mops_max`` micro-ops per transaction,
a read with probability ``read_fraction``, on one of ``keys`` active key slots.
Values are ``process * VALUE_PROCESS_STRIDE + seq`` (``seq`` = 1, 2, ... per
client): unique per key across all clients with no coordination.  Keys rotate,
as Elle's do, so lists stay short: slot ``s`` holds key ``g * keys + s`` in
generation ``g = (txns + s * epoch // keys) // epoch``, where ``txns`` counts the
transactions this client has generated and ``epoch`` is the number of
transactions in which one client appends about ``KEY_APPENDS_PER_CLIENT`` values
to a key.  A pure function of the client's own count -- deterministic per
(process, rng) -- yet shared by convention: clients run at about the same rate,
so they are on the same generation of a slot most of the time (contention is
the point).  Slots are staggered, so keys retire one at a time.  (Clients that
drift far apart in a very long run contend less; nothing becomes wrong.)

*Checking* (``check``), after the load: one final ``read_all`` of every key the
history appended to, added to the history as an ok transaction of process -1.

* ``elle`` -- ``append_check.check`` on the history (``to_elle``: ok ->
  ``ok`` with the returned reads, fail -> ``fail``, unknown -> ``info``).
* ``acknowledged_appends`` -- in that final read, every value of an ok
  transaction is in its key's list exactly once, of an unknown one at most
  once, of a failed one never, and no value appears that nobody appended.

Both need a fresh database: values of an earlier run would look like garbage.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, Iterable, Sequence

import pyarrow as pa

from actors.routing import partition_of
from actors.schema import Schema, Table, procedure
from workloads import append_check
from workloads.history import FAIL, OK, UNKNOWN, Op
from workloads.workload import EVIDENCE_MAX, Verdict

APPEND, READ = append_check.APPEND, append_check.READ
TXN, READ_ALL = "txn", "read_all"
TABLE = "lists"
BAD_TXN = "bad txn"

#: Active key slots (hot keys) at a time.
KEYS_DEFAULT = 12
#: Micro-ops per generated transaction, at most.
MOPS_MAX_DEFAULT = 4
#: Micro-ops ``txn`` accepts in one transaction, at most.
TXN_MOPS_MAX = 1_000
#: Values one client appends to one key, expected, before the key retires.
KEY_APPENDS_PER_CLIENT = 8
#: Appended value = process * this + the client's sequence number (values per client, at most, minus 1).
VALUE_PROCESS_STRIDE = 1_000_000_000
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

lists = Table(
    TABLE,
    pa.schema([pa.field("key", pa.int64(), nullable=False),
               pa.field("vals", pa.list_(pa.int64()), nullable=False)]),
    primary_key="key", partition_by="key",
)


# --- fragments (module level: pickled to the partitions) ------------------------------


def apply_mops(ftx, mops: list) -> list:
    """Run one partition's micro-ops in order; the micro-ops with reads filled in.

    Each key's list is read once and written once (an upsert at the end), so a
    transaction appending to a key several times leaves one redo record for it.
    """
    current: dict[int, list[int]] = {}
    dirty: list[int] = []
    out: list[list] = []
    for kind, key, value in mops:
        if key not in current:
            row = ftx.get(TABLE, key)
            current[key] = [] if row is None else list(row["vals"])
        if kind == APPEND:
            current[key].append(value)
            if key not in dirty:
                dirty.append(key)
            out.append([APPEND, key, value])
        elif kind == READ:
            out.append([READ, key, list(current[key])])
        else:
            ftx.abort(f"{BAD_TXN}: micro-op kind {kind!r} is not {APPEND!r} or {READ!r}")
    for key in dirty:
        ftx.upsert(TABLE, {"key": key, "vals": current[key]})
    return out


def read_lists(ftx, keys: list) -> list:
    """The lists of ``keys`` on this partition, in order (empty for a missing row)."""
    out = []
    for key in keys:
        row = ftx.get(TABLE, key)
        out.append([] if row is None else list(row["vals"]))
    return out


FRAGMENTS = (apply_mops, read_lists)


# --- pure helpers of the procedures ---------------------------------------------------


def _is_int64(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and INT64_MIN <= v <= INT64_MAX


def _bad_mop(i: int, mop: Any) -> str | None:
    if not isinstance(mop, (list, tuple)) or len(mop) != 3:
        return f"micro-op {i} {mop!r} is not a 3-item list or tuple"
    kind, key, value = mop
    if kind not in (APPEND, READ):
        return f"micro-op {i} {mop!r}: kind {kind!r} is not {APPEND!r} or {READ!r}"
    if not _is_int64(key):
        return f"micro-op {i} {mop!r}: key {key!r} is not an int64"
    if kind == APPEND and not _is_int64(value):
        return f"micro-op {i} {mop!r}: appended value {value!r} is not an int64"
    if kind == READ and value is not None:
        return f"micro-op {i} {mop!r}: a read's value must be None, got {value!r}"
    return None


def validate_mops(mops: Sequence[Any]) -> str | None:
    """Why ``mops`` is not a valid transaction (prefixed with BAD_TXN), or None."""
    if not mops:
        return f"{BAD_TXN}: no micro-ops"
    if len(mops) > TXN_MOPS_MAX:
        return f"{BAD_TXN}: {len(mops)} micro-ops, at most {TXN_MOPS_MAX}"
    for i, mop in enumerate(mops):
        bad = _bad_mop(i, mop)
        if bad:
            return f"{BAD_TXN}: {bad}"
    return None


Group = tuple[list[int], list[tuple]]  # (positions in the transaction, micro-ops): one partition's share


def split_by_partition(mops: Sequence[Sequence[Any]], partitions: int) -> list[Group]:
    """Micro-ops grouped by partition, in order within each; groups in order of first appearance."""
    groups: dict[int, Group] = {}
    for i, mop in enumerate(mops):
        kind, key, value = mop
        positions, part = groups.setdefault(partition_of(key, partitions), ([], []))
        positions.append(i)
        part.append((kind, key, value))
    return list(groups.values())


def merge_results(groups: list[Group], results: Sequence[Sequence[Any]]) -> list[list]:
    """Each group's completed micro-ops put back at their positions: the transaction's order."""
    n = sum(len(positions) for positions, _ in groups)
    out: list[Any] = [None] * n
    for (positions, mops), done in zip(groups, results, strict=True):
        if len(done) != len(mops):
            raise ValueError(f"{len(mops)} micro-ops sent to a partition, {len(done)} answered")
        for i, mop in zip(positions, done):
            out[i] = list(mop)
    return out


def group_keys(keys: Iterable[int], partitions: int) -> list[list[int]]:
    """Distinct keys grouped by partition (for one read fragment each)."""
    groups: dict[int, list[int]] = {}
    for key in dict.fromkeys(keys):
        groups.setdefault(partition_of(key, partitions), []).append(key)
    return list(groups.values())


# --- procedures ------------------------------------------------------------------------


@procedure(multi_partition=True)
def txn(tx, mops: list) -> list:
    """Run the micro-ops as one transaction; them in order, with every read's list filled in."""
    bad = validate_mops(mops)
    if bad:
        tx.abort(bad)
    groups = split_by_partition(mops, tx.partitions)
    # The only round of fragments: each partition prepares as it runs its fragment (one round trip fewer).
    results = tx.run_many([(part[0][1], apply_mops, (part,)) for _, part in groups], last=True)
    return merge_results(groups, results)


@procedure(multi_partition=True, read_only=True)
def read_all(tx, keys: list) -> dict:
    """{key: list} of every key asked for (empty list when missing): one consistent read."""
    bad = [k for k in keys if not _is_int64(k)]
    if bad:
        tx.abort(f"{BAD_TXN}: key {bad[0]!r} is not an int64")
    groups = group_keys(keys, tx.partitions)
    if not groups:
        return {}
    results = tx.run_many([(group[0], read_lists, (group,)) for group in groups])
    return {key: vals for group, got in zip(groups, results) for key, vals in zip(group, got)}


def schema() -> Schema:
    return Schema(tables=[lists], procedures=[txn, read_all])


# --- the generator ---------------------------------------------------------------------


def epoch_txns(keys: int, mops_max: int, read_fraction: float) -> int:
    """Transactions after which a client has appended ~KEY_APPENDS_PER_CLIENT values to each key."""
    appends_per_txn = (1 + mops_max) / 2 * (1 - read_fraction)
    return max(1, round(KEY_APPENDS_PER_CLIENT * keys / appends_per_txn))


class AppendClient:
    """One client's transactions: ``next_batch(n)`` -> ("txn", [(mops,), ...])."""

    def __init__(self, process: int, rng: random.Random, keys: int, mops_max: int, read_fraction: float) -> None:
        if process < 0:
            raise ValueError(f"process must be >= 0 (it prefixes the appended values), got {process}")
        self.process, self.rng = process, rng
        self.keys, self.mops_max, self.read_fraction = keys, mops_max, read_fraction
        self.epoch = epoch_txns(keys, mops_max, read_fraction)
        self.txns = 0  # transactions generated so far (drives key rotation)
        self.seq = 0  # values appended so far

    def key_of(self, slot: int) -> int:
        """The key slot ``slot`` holds now (see the module note: staggered generations)."""
        generation = (self.txns + slot * self.epoch // self.keys) // self.epoch
        return generation * self.keys + slot

    def _value(self) -> int:
        self.seq += 1
        if self.seq >= VALUE_PROCESS_STRIDE:
            raise RuntimeError(f"client {self.process} appended {VALUE_PROCESS_STRIDE - 1:,} values: "
                               f"its values would collide with client {self.process + 1}'s")
        return self.process * VALUE_PROCESS_STRIDE + self.seq

    def next_txn(self) -> list[list]:
        rng = self.rng
        mops: list[list] = []
        for _ in range(rng.randint(1, self.mops_max)):
            key = self.key_of(rng.randrange(self.keys))
            mops.append([READ, key, None] if rng.random() < self.read_fraction else [APPEND, key, self._value()])
        self.txns += 1
        return mops

    def next_batch(self, n: int) -> tuple[str, list[Sequence[Any]]]:
        return TXN, [(self.next_txn(),) for _ in range(n)]


class AppendWorkload:
    name = "append"

    def __init__(self, keys: int = KEYS_DEFAULT, mops_max: int = MOPS_MAX_DEFAULT, read_fraction: float = 0.5) -> None:
        if keys < 1:
            raise ValueError(f"--keys must be at least 1, got {keys}")
        if not 1 <= mops_max <= TXN_MOPS_MAX:
            raise ValueError(f"--mops-max must be in 1..{TXN_MOPS_MAX}, got {mops_max}")
        if not 0.0 <= read_fraction < 1.0:
            raise ValueError(f"read_fraction must be in [0, 1) (a transaction must append sometimes), "
                             f"got {read_fraction}")
        self.keys, self.mops_max, self.read_fraction = keys, mops_max, read_fraction

    def schema(self) -> Schema:
        return schema()

    def initial_data(self) -> dict[str, list[dict[str, Any]]]:
        return {TABLE: []}

    def client(self, process: int, rng: random.Random) -> AppendClient:
        return AppendClient(process, rng, self.keys, self.mops_max, self.read_fraction)

    def check(self, db: Any, ops: list[Op]) -> dict[str, Verdict]:
        txns = [op for op in ops if op.f == TXN]
        final = read_final(db, appended_keys(txns))
        return {"elle": check_elle(txns, final), "acknowledged_appends": check_acknowledged(txns, final)}


# --- the history -----------------------------------------------------------------------


def _mops_of(op: Op) -> list:
    try:
        (mops,) = op.value
        if validate_mops(mops) is None:
            return list(mops)
    except (TypeError, ValueError):
        pass
    raise append_check.HistoryError(f"op {op.id}: arguments {op.value!r} are not (micro-ops,)")


def _invoked(op: Op) -> list[tuple]:
    """The micro-ops as invoked, reads unknown (None)."""
    return [(kind, key, None if kind == READ else value) for kind, key, value in _mops_of(op)]


def _completed(op: Op, invoked: list[tuple]) -> list[tuple]:
    """An ok op's micro-ops from its result, which must match what was invoked."""
    result = op.result
    if not isinstance(result, (list, tuple)) or len(result) != len(invoked):
        raise append_check.HistoryError(f"op {op.id}: result {result!r} does not answer micro-ops {invoked!r}")
    out = []
    for want, got in zip(invoked, result):
        kind, key, value = want
        ok = isinstance(got, (list, tuple)) and len(got) == 3 and got[0] == kind and got[1] == key and (
            isinstance(got[2], (list, tuple)) if kind == READ else got[2] == value)
        if not ok:
            raise append_check.HistoryError(f"op {op.id}: result micro-op {got!r} does not answer {list(want)!r}")
        out.append((kind, key, list(got[2]) if kind == READ else value))
    return out


def to_elle(ops: Iterable[Op]) -> list[append_check.Op]:
    """The ``txn`` ops as Elle's: ok with the reads returned, fail, or info (unknown); others skipped."""
    out = []
    for op in ops:
        if op.f != TXN:
            continue
        invoked = _invoked(op)
        if op.type == OK:
            kind, mops = append_check.OK, _completed(op, invoked)
        elif op.type == FAIL:
            kind, mops = append_check.FAIL, invoked
        else:  # unknown (or still open): it may have committed
            kind, mops = append_check.INFO, invoked
        done = op.invoke_s if op.complete_s is None else op.complete_s
        out.append(append_check.Op(op.id, op.process, kind, mops, op.invoke_s, done))
    return out


def appended_keys(txns: Iterable[Op]) -> list[int]:
    """Every key some ``txn`` op tried to append to, sorted."""
    keys: set[int] = set()
    for op in txns:
        try:
            keys.update(key for kind, key, _ in _mops_of(op) if kind == APPEND)
        except append_check.HistoryError:
            continue  # malformed: reported by check_elle
    return sorted(keys)


def read_final(db: Any, keys: list[int]) -> dict[int, list[int]]:
    """{key: final list} of every key, through one ``read_all``."""
    if not keys:
        return {}
    got = db.call(READ_ALL, keys)
    return {key: list(got.get(key, [])) for key in keys}


def final_read_op(txns: list[Op], final: dict[int, list[int]]) -> append_check.Op:
    """The final read as an ok transaction of process -1, after every other op."""
    next_id = max((op.id for op in txns), default=-1) + 1
    at = max((op.complete_s or op.invoke_s for op in txns), default=0.0) + 1.0
    return append_check.Op(next_id, -1, append_check.OK, [(READ, k, list(v)) for k, v in sorted(final.items())],
                           at, at)


# --- checkers --------------------------------------------------------------------------


def check_elle(txns: list[Op], final: dict[int, list[int]]) -> Verdict:
    """Elle's list-append checker over the history plus the final read."""
    try:
        history = to_elle(txns) + [final_read_op(txns, final)]
        report = append_check.check(history)
    except append_check.HistoryError as exc:
        return Verdict(False, f"malformed history: {exc}")
    evidence: dict[str, Any] = {"counts": report.counts}
    if report.anomalies:
        evidence["anomalies"] = {name: found[:EVIDENCE_MAX] for name, found in report.anomalies.items()}
        evidence["anomaly_counts"] = {name: len(found) for name, found in report.anomalies.items()}
    c = report.counts
    detail = (f"{report.summary()}: {c['ok']:,} ok, {c['fail']:,} failed, {c['info']:,} unknown transactions "
              f"(with the final read) on {c['keys']:,} keys")
    return Verdict(report.valid, detail, evidence)


Writers = dict[tuple[int, int], tuple[str, int]]  # (key, value) -> (op type, op id) of its append


def _writers(txns: list[Op]) -> Writers:
    """(key, value) -> (op type, op id) of its append; ok wins over unknown over fail (should one repeat)."""
    rank = {OK: 0, UNKNOWN: 1, FAIL: 2}
    out: dict[tuple[int, int], tuple[str, int]] = {}
    for op in txns:
        try:
            mops = _mops_of(op)
        except append_check.HistoryError:
            continue
        kind = op.type if op.type in rank else UNKNOWN
        for m_kind, key, value in mops:
            if m_kind == APPEND:
                prev = out.get((key, value))
                if prev is None or rank[kind] < rank[prev[0]]:
                    out[key, value] = (kind, op.id)
    return out


def _final_problems(final: dict[int, list[int]], writers: Writers) -> dict[str, list[str]]:
    problems: dict[str, list[str]] = {"lost": [], "duplicated": [], "failed_present": [], "unexpected": []}
    counts = {key: Counter(vals) for key, vals in final.items()}
    for key, seen in counts.items():
        for value, n in seen.items():
            writer = writers.get((key, value))
            if writer is None:
                problems["unexpected"].append(f"key {key}: {value} is in the final list; nobody appended it")
            elif writer[0] == FAIL:
                problems["failed_present"].append(f"key {key}: {value} of failed op {writer[1]} is in the final list")
            if n > 1:
                problems["duplicated"].append(f"key {key}: {value} is in the final list {n} times")
    for (key, value), (kind, op_id) in writers.items():
        if kind == OK and not counts.get(key, Counter())[value]:
            problems["lost"].append(f"key {key}: acknowledged append {value} of op {op_id} is missing")
    return problems


def check_acknowledged(txns: list[Op], final: dict[int, list[int]]) -> Verdict:
    """Acknowledged appends exactly once, unknown at most once, failed never, nothing else."""
    writers = _writers(txns)
    problems = _final_problems(final, writers)
    kinds = Counter(kind for kind, _ in writers.values())
    present = sum(1 for (key, value), (kind, _) in writers.items() if kind == UNKNOWN and value in final.get(key, ()))
    detail = (f"{kinds[OK]:,} acknowledged, {kinds[UNKNOWN]:,} unknown ({present:,} present), {kinds[FAIL]:,} failed "
              f"appends against a final read of {len(final):,} keys; "
              + ", ".join(f"{name} {len(found)}" for name, found in problems.items()))
    found = {name: f[:EVIDENCE_MAX] for name, f in problems.items() if f}
    if found:
        first = next(iter(found.values()))[0]
        detail = f"{sum(len(f) for f in problems.values())} problem(s): {first}; {detail}"
    return Verdict(not found, detail, found)
