"""YCSB core workloads A, B, C and F: zipfian reads and writes, and what the writes left behind.

Design note
-----------
After Cooper et al., "Benchmarking Cloud Serving Systems with YCSB" (SoCC
2010).  One table, ``usertable`` (key -> field0, version, rmw), partitioned by
key, loaded with records ``0..records-1``: field0 a deterministic string of
``field_length`` characters, version 0, rmw 0.

One single-partition procedure, ``ycsb(key, kind, value)``, so a batch that
mixes kinds is one ``call_many``:

* ``read``   -- returns (field0, version, rmw);
* ``update`` -- field0 = value, version + 1; returns the new version;
* ``insert`` -- a new record (version 1, rmw 0); aborts on an existing key;
* ``rmw``    -- read-modify-write: field0 = value, version + 1, rmw + 1;
  returns (old field0, new version, new rmw).

A missing record and an unknown kind abort (``tx.abort``), naming them.

The mixes are YCSB's: A 50% read / 50% update, B 95/5, C read only, F 50%
read / 50% read-modify-write; the kind is drawn first, then the key, as in
YCSB's ``CoreWorkload``.  Keys follow YCSB's ``zipfian`` request distribution,
its ``ScrambledZipfianGenerator``: Gray et al.'s generator ("Quickly
generating billion-record synthetic databases", SIGMOD 1994; theta 0.99) over
YCSB's 10^10-item space with YCSB's precomputed zeta, each item hashed with
YCSB's ``fnvhash64`` (FNV-1a 64 over its 8 little-endian bytes) mod
``records`` -- so the hot keys are spread over the partitions, not clustered at
0, 1, 2...  ``ZipfianGenerator`` (unscrambled; zeta computed once per (items,
theta) and cached) is the same algorithm over ``items``.  Everything draws from
a passed-in ``random.Random``.

Every write's value is unique, ``"{process}:{seq}:"`` padded to the field
length (never cut), so a final value names the write that left it.

Checks, once the load has stopped (every key any write named is read back with
``ycsb(key, "read", "")``, ``READBACK_BATCH_MAX`` keys per ``call_many``):

* ``acknowledged_writes`` -- a key's final field0 is the value of an ok or
  unknown write to it, or its initial value when no write to it was
  acknowledged; and never the value of an acknowledged write W1 superseded in
  real time -- an acknowledged write W2 invoked after W1 completed was applied
  after it.  An unknown write has no known completion (it may apply late), so
  it is never superseded.  A failed write's value is never allowed.
* ``applied_once`` -- every write bumps ``version`` once and every rmw bumps
  ``rmw`` once, so per key: acknowledged <= counter <= acknowledged + unknown.
  Failed writes count towards neither bound.
"""

from __future__ import annotations

import functools
import math
import random
from collections import defaultdict
from typing import Any, Sequence

import pyarrow as pa

from actors.errors import UserAbort
from actors.schema import Schema, Table, procedure
from workloads.history import FAIL, OK, Op
from workloads.workload import EVIDENCE_MAX, Verdict

TABLE = "usertable"
PROCEDURE = "ycsb"
RECORDS_DEFAULT = 10_000
#: Characters of a record's field0.
FIELD_LENGTH_DEFAULT = 100
#: Gray et al.'s zipfian constant (theta), YCSB's default.
ZIPFIAN_CONSTANT = 0.99
#: YCSB's ScrambledZipfianGenerator draws items 0..SCRAMBLED_ITEM_COUNT (inclusive) ...
SCRAMBLED_ITEM_COUNT = 10_000_000_000
#: ... with zeta(SCRAMBLED_ITEM_COUNT, 0.99) precomputed (YCSB's ZETAN).
SCRAMBLED_ZETAN = 26.46902820178302
FNV_OFFSET_BASIS_64 = 0xCBF29CE484222325
FNV_PRIME_64 = 1_099_511_628_211
#: Keys the checker reads back per ``call_many`` (calls).
READBACK_BATCH_MAX = 1_000
#: Allowed final values a lost-write finding lists (the count is complete).
CANDIDATES_LISTED = 5
#: Pads a value to the field length.
PAD = "."

_MASK64 = (1 << 64) - 1

READ, UPDATE, INSERT, RMW = "read", "update", "insert", "rmw"
KINDS = (READ, UPDATE, INSERT, RMW)
WRITES = (UPDATE, INSERT, RMW)

#: Each mix's (kind, proportion), in YCSB's order of operations.
MIXES: dict[str, tuple[tuple[str, float], ...]] = {
    "a": ((READ, 0.5), (UPDATE, 0.5)),
    "b": ((READ, 0.95), (UPDATE, 0.05)),
    "c": ((READ, 1.0),),
    "f": ((READ, 0.5), (RMW, 0.5)),
}

NO_RECORD = "no record"
RECORD_EXISTS = "record exists"
UNKNOWN_KIND = "unknown operation kind"

usertable = Table(
    TABLE,
    pa.schema([
        pa.field("key", pa.int64(), nullable=False),
        pa.field("field0", pa.string(), nullable=False),
        pa.field("version", pa.int64(), nullable=False),
        pa.field("rmw", pa.int64(), nullable=False),
    ]),
    primary_key="key", partition_by="key",
)


# --- the procedure -------------------------------------------------------------------------------


def _record(tx, key: int) -> dict[str, Any]:
    row = tx.get(TABLE, key)
    if row is None:
        tx.abort(f"{NO_RECORD} {key}")
    return row


def _read(tx, key: int, value: str) -> tuple[str, int, int]:
    row = _record(tx, key)
    return row["field0"], row["version"], row["rmw"]


def _update(tx, key: int, value: str) -> int:
    version = _record(tx, key)["version"] + 1
    tx.update(TABLE, key, {"field0": value, "version": version})
    return version


def _insert(tx, key: int, value: str) -> int:
    if tx.get(TABLE, key) is not None:
        tx.abort(f"{RECORD_EXISTS}: key {key} is already in {TABLE}")
    tx.insert(TABLE, {"key": key, "field0": value, "version": 1, "rmw": 0})
    return 1


def _rmw(tx, key: int, value: str) -> tuple[str, int, int]:
    row = _record(tx, key)
    version, rmw = row["version"] + 1, row["rmw"] + 1
    tx.update(TABLE, key, {"field0": value, "version": version, "rmw": rmw})
    return row["field0"], version, rmw


_HANDLERS = {READ: _read, UPDATE: _update, INSERT: _insert, RMW: _rmw}


@procedure(partition_by="key")
def ycsb(tx, key: int, kind: str, value: str) -> Any:
    """One YCSB operation on one record; see the module's design note for each kind."""
    handler = _HANDLERS.get(kind)
    if handler is None:
        tx.abort(f"{UNKNOWN_KIND} {kind!r}; kinds are {', '.join(KINDS)}")
    return handler(tx, key, value)


def schema() -> Schema:
    return Schema(tables=[usertable], procedures=[ycsb])


def initial_value(key: int, field_length: int = FIELD_LENGTH_DEFAULT) -> str:
    """A loaded record's field0: distinct from every written value (those start with a digit)."""
    return f"init:{key}:".ljust(field_length, PAD)


def write_value(process: int, seq: int, field_length: int = FIELD_LENGTH_DEFAULT) -> str:
    """The value of a client's ``seq``-th write: unique over a run's writes."""
    return f"{process}:{seq}:".ljust(field_length, PAD)


def initial_data(records: int = RECORDS_DEFAULT,
                 field_length: int = FIELD_LENGTH_DEFAULT) -> dict[str, list[dict[str, Any]]]:
    """Records ``0..records-1`` at version 0."""
    rows = [{"key": k, "field0": initial_value(k, field_length), "version": 0, "rmw": 0} for k in range(records)]
    return {TABLE: rows}


# --- key choice: YCSB's zipfian generators -------------------------------------------------------


@functools.lru_cache(maxsize=16)
def zeta(items: int, theta: float) -> float:
    """sum over i = 1..items of 1 / i**theta, added in YCSB's order (``zetastatic``)."""
    total = 0.0
    pow_ = math.pow
    for i in range(1, items + 1):
        total += 1.0 / pow_(i, theta)
    return total


class ZipfianGenerator:
    """Items ``0..items-1``, item 0 the most popular: YCSB's ZipfianGenerator (Gray et al. 1994)."""

    def __init__(self, items: int, rng: random.Random, theta: float = ZIPFIAN_CONSTANT,
                 zetan: float | None = None) -> None:
        if items < 1:
            raise ValueError(f"a zipfian generator needs at least 1 item, got {items}")
        if not 0.0 < theta < 1.0:
            raise ValueError(f"the zipfian constant must be in (0, 1), got {theta}")
        self.items, self.rng, self.theta = items, rng, theta
        self.zetan = zeta(items, theta) if zetan is None else zetan
        self.alpha = 1.0 / (1.0 - theta)
        self._second = 1.0 + math.pow(0.5, theta)
        # With 1 or 2 items every draw ends at the first two tests; eta is unused (and 0/0 for 2 items).
        self.eta = 0.0 if items <= 2 else \
            (1 - math.pow(2.0 / items, 1 - theta)) / (1 - zeta(2, theta) / self.zetan)

    def next(self) -> int:
        uz = (u := self.rng.random()) * self.zetan
        if uz < 1.0:
            return 0
        if uz < self._second:
            return 1
        # YCSB could return ``items`` if the power rounded up to 1.0; keep it in range.
        return min(self.items - 1, int(self.items * math.pow(self.eta * u - self.eta + 1, self.alpha)))


def fnvhash64(value: int) -> int:
    """YCSB's ``Utils.fnvhash64``: FNV-1a 64 over the 8 little-endian bytes, made non-negative.

    Java's ``Math.abs`` of the signed result (-2**63 stays negative in Java; here it is 2**63).
    """
    h = FNV_OFFSET_BASIS_64
    for _ in range(8):
        h = ((h ^ (value & 0xFF)) * FNV_PRIME_64) & _MASK64
        value >>= 8
    return h if h < 1 << 63 else (1 << 64) - h


class ScrambledZipfianGenerator:
    """Items ``0..items-1``, zipfian popularity with the hot items scattered: YCSB's generator."""

    def __init__(self, items: int, rng: random.Random) -> None:
        if items < 1:
            raise ValueError(f"a zipfian generator needs at least 1 item, got {items}")
        self.items = items
        self.zipf = ZipfianGenerator(SCRAMBLED_ITEM_COUNT + 1, rng, ZIPFIAN_CONSTANT, SCRAMBLED_ZETAN)

    def next(self) -> int:
        return fnvhash64(self.zipf.next()) % self.items


# --- the client ------------------------------------------------------------------------------------


def mix_of(mix: str) -> tuple[tuple[str, float], ...]:
    """The (kind, proportion) pairs of a mix name ("a", "b", "c" or "f", any case)."""
    kinds = MIXES.get(str(mix).strip().lower())
    if kinds is None:
        raise ValueError(f"unknown YCSB mix {mix!r}; choose one of {', '.join(MIXES)}")
    return kinds


class YcsbClient:
    """One client's operations, ``(key, kind, value)``: kinds from the mix, zipfian keys."""

    def __init__(self, process: int, rng: random.Random, mix: str = "a", records: int = RECORDS_DEFAULT,
                 field_length: int = FIELD_LENGTH_DEFAULT) -> None:
        self.process, self.rng, self.field_length = process, rng, field_length
        self.mix = mix_of(mix)
        self.keys = ScrambledZipfianGenerator(records, rng)
        self.writes = 0

    def next_kind(self) -> str:
        """YCSB's DiscreteGenerator: one uniform draw walked down the proportions."""
        u = self.rng.random()
        for kind, share in self.mix:
            if u < share:
                return kind
            u -= share
        return self.mix[-1][0]  # rounding left u just above the last share

    def next_op(self) -> tuple[int, str, str]:
        kind = self.next_kind()
        key = self.keys.next()
        if kind == READ:
            return key, kind, ""
        self.writes += 1
        return key, kind, write_value(self.process, self.writes, self.field_length)

    def next_batch(self, n: int) -> tuple[str, list[Sequence[Any]]]:
        return PROCEDURE, [self.next_op() for _ in range(n)]


class YcsbWorkload:
    name = "ycsb"

    def __init__(self, mix: str = "a", records: int = RECORDS_DEFAULT,
                 field_length: int = FIELD_LENGTH_DEFAULT) -> None:
        mix_of(mix)  # raises naming the bad mix
        if records < 1:
            raise ValueError(f"--records must be at least 1, got {records}")
        if field_length < 1:
            raise ValueError(f"the field length must be at least 1 character, got {field_length}")
        self.mix, self.records, self.field_length = str(mix).strip().lower(), records, field_length

    def schema(self) -> Schema:
        return schema()

    def initial_data(self) -> dict[str, list[dict[str, Any]]]:
        return initial_data(self.records, self.field_length)

    def client(self, process: int, rng: random.Random) -> YcsbClient:
        return YcsbClient(process, rng, self.mix, self.records, self.field_length)

    def check(self, db: Any, ops: list[Op]) -> dict[str, Verdict]:
        writes = writes_by_key(ops)
        final = read_back(db, sorted(writes))
        return {
            "acknowledged_writes": check_acknowledged(writes, final, self.records, self.field_length),
            "applied_once": check_applied_once(writes, final),
        }


# --- the checks ------------------------------------------------------------------------------------

Record = tuple[str, int, int]  # (field0, version, rmw)


def writes_by_key(ops: list[Op]) -> dict[int, list[Op]]:
    """Every write op of the history (ok, fail and unknown), by key."""
    out: dict[int, list[Op]] = defaultdict(list)
    for op in ops:
        if op.f == PROCEDURE and op.value[1] in WRITES:
            out[op.value[0]].append(op)
    return dict(out)


def read_back(db: Any, keys: Sequence[int]) -> dict[int, Record | None]:
    """Each key's final (field0, version, rmw), None for a missing record.  Any other error is raised."""
    out: dict[int, Record | None] = {}
    for i in range(0, len(keys), READBACK_BATCH_MAX):
        chunk = keys[i:i + READBACK_BATCH_MAX]
        for key, got in zip(chunk, db.call_many(PROCEDURE, [(k, READ, "") for k in chunk])):
            out[key] = _record_of(got)
    return out


def _record_of(got: Any) -> Record | None:
    if isinstance(got, UserAbort) and got.message.startswith(NO_RECORD):
        return None
    if isinstance(got, BaseException):
        raise got
    field0, version, rmw = got
    return field0, version, rmw


def _unknown(op: Op) -> bool:
    return op.type not in (OK, FAIL)  # an op still open counts as unknown


def allowed_values(writes: list[Op], initial: str | None) -> set[str | None]:
    """The final field0 values a key's write history allows (None: no record)."""
    acked = [w for w in writes if w.type == OK]
    latest = max((w.invoke_s for w in acked), default=-math.inf)
    allowed = {w.value[2] for w in writes if _unknown(w) or (w.type == OK and w.complete_s >= latest)}
    if not acked:
        allowed.add(initial)
    return allowed


def label(value: str | None) -> str:
    """A value without its padding, for evidence."""
    return "<no record>" if value is None else value.rstrip(PAD)


def _why_lost(found: str | None, writes: list[Op], initial: str | None) -> str:
    acked = [w for w in writes if w.type == OK]
    if found is None:
        return f"the record is missing after {len(acked)} acknowledged write(s)"
    if found == initial:
        return f"still the initial value after {len(acked)} acknowledged write(s)"
    w = next((w for w in writes if w.value[2] == found), None)
    if w is None:
        return "a value no write to this key wrote"
    if w.type == FAIL:
        return f"the value of a write reported failed ({w.error})"
    later = max(acked, key=lambda o: o.invoke_s)
    return (f"the value of write {label(found)!r} acknowledged at {w.complete_s:.3f}s, superseded by "
            f"write {label(later.value[2])!r} invoked at {later.invoke_s:.3f}s and acknowledged")


def _lost(key: int, found: str | None, writes: list[Op], initial: str | None) -> dict[str, Any]:
    allowed = allowed_values(writes, initial)
    return {"key": key, "found": label(found), "expected": sorted(map(label, allowed))[:CANDIDATES_LISTED],
            "expected_count": len(allowed), "why": _why_lost(found, writes, initial)}


def _field0(record: Record | None) -> str | None:
    return None if record is None else record[0]


def check_acknowledged(writes: dict[int, list[Op]], final: dict[int, Record | None], records: int,
                       field_length: int = FIELD_LENGTH_DEFAULT) -> Verdict:
    """Each written key's final value is one its history allows (see ``allowed_values``)."""
    lost = []
    for key in sorted(writes):
        initial = initial_value(key, field_length) if 0 <= key < records else None
        found = _field0(final.get(key))
        if found not in allowed_values(writes[key], initial):
            lost.append(_lost(key, found, writes[key], initial))
    ops = [w for ws in writes.values() for w in ws]
    detail = (f"{len(writes):,} written keys read back; {sum(w.type == OK for w in ops):,} acknowledged and "
              f"{sum(map(_unknown, ops)):,} unknown writes")
    if lost:
        detail = f"{len(lost)} key(s) lost acknowledged writes: key {lost[0]['key']}: {lost[0]['why']}; {detail}"
    return Verdict(not lost, detail, {"lost": lost[:EVIDENCE_MAX]} if lost else {})


def _bounds(writes: list[Op], kinds: Sequence[str]) -> tuple[int, int]:
    """(acknowledged, acknowledged + unknown) writes of these kinds."""
    ok = sum(1 for w in writes if w.type == OK and w.value[1] in kinds)
    return ok, ok + sum(1 for w in writes if _unknown(w) and w.value[1] in kinds)


def _counter_problems(key: int, writes: list[Op], record: Record | None) -> list[dict[str, Any]]:
    version, rmw = (0, 0) if record is None else record[1:]
    out = []
    for counter, got, kinds in (("version", version, WRITES), ("rmw", rmw, (RMW,))):
        lo, hi = _bounds(writes, kinds)
        if not lo <= got <= hi:
            out.append({"key": key, "counter": counter, "found": got, "min": lo, "max": hi,
                        "why": f"key {key}: {counter} is {got}, expected {lo}..{hi} "
                               f"({lo} acknowledged, {hi - lo} unknown)"})
    return out


def check_applied_once(writes: dict[int, list[Op]], final: dict[int, Record | None]) -> Verdict:
    """Per key: acknowledged <= version <= acknowledged + unknown writes; the same for rmw and rmw ops."""
    problems = [p for key in sorted(writes) for p in _counter_problems(key, writes[key], final.get(key))]
    detail = f"version and rmw counters of {len(writes):,} written keys within [acknowledged, +unknown]"
    if problems:
        detail = f"{len(problems)} counter(s) off: {problems[0]['why']}; {detail}"
    return Verdict(not problems, detail, {"violations": problems[:EVIDENCE_MAX]} if problems else {})
