"""The operation history of a benchmark run: every call's invoke, then ok / fail / unknown.

Design note
-----------
Jepsen's model: a *process* (a client thread) invokes an operation ``f`` with a
``value``; it completes as

* ``ok``      -- it took effect (a procedure's return value is kept as ``result``);
* ``fail``    -- it certainly did not take effect: a user abort, or a typed error
  whose ``not_applied`` is true (the error ``code`` is kept);
* ``unknown`` -- it may or may not have: ``OutcomeUnknown``, ``Timeout``, a died
  actor... (Jepsen's ``info``).  An op still open at the end is unknown too.

Times are seconds since the run started, from the clock passed in (monotonic by
default), so a timeline and the fault injections share one axis.  The recorder
is thread-safe and bounded: past ``ops_max`` operations it keeps counting but
stops storing, and says so (``truncated``) -- a checker that needs every op must
then decline rather than pass.

``classify`` maps a call's outcome (value or ``OhmError``) to a completion type;
``write_jsonl`` writes the history as one event per line, invokes and
completions in time order.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from actors.errors import OhmError, UserAbort

INVOKE, OK, FAIL, UNKNOWN = "invoke", "ok", "fail", "unknown"
COMPLETIONS = (OK, FAIL, UNKNOWN)
#: The error of an op still open when the history was closed.
OPEN_AT_END = "OPEN_AT_END"
#: Operations stored before the history stops storing (and is marked truncated).
HISTORY_OPS_MAX = 2_000_000


@dataclass(slots=True)
class Op:
    """One operation: invoked at ``invoke_s``; ``type`` is ``invoke`` until it completes."""

    id: int
    process: int
    f: str
    value: Any
    invoke_s: float
    type: str = INVOKE
    complete_s: float | None = None
    result: Any = None
    error: str | None = None  # the error code (or "USER_ABORT: reason kind") of a fail / unknown

    @property
    def latency_s(self) -> float | None:
        return None if self.complete_s is None else self.complete_s - self.invoke_s


def classify(outcome: Any) -> tuple[str, Any, str | None]:
    """A call's outcome -> (type, result, error)."""
    if isinstance(outcome, UserAbort):
        return FAIL, None, f"{outcome.code}: {outcome.message}"
    if isinstance(outcome, OhmError):
        return (FAIL if outcome.not_applied else UNKNOWN), None, outcome.code
    if isinstance(outcome, BaseException):
        return UNKNOWN, None, type(outcome).__name__
    return OK, outcome, None


class History:
    """Thread-safe, bounded recorder of operations."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, ops_max: int = HISTORY_OPS_MAX) -> None:
        if ops_max < 1:
            raise ValueError(f"ops_max must be at least 1, got {ops_max}")
        self._clock = clock
        self._origin = clock()
        self._ops_max = ops_max
        self._ops: list[Op] = []
        self._counts = {t: 0 for t in (INVOKE, *COMPLETIONS)}  # stored ops by type, kept as they change
        self._lock = threading.Lock()
        self.truncated = False
        self.dropped = 0

    def now(self) -> float:
        """Seconds since the history started."""
        return self._clock() - self._origin

    def invoke(self, process: int, f: str, value: Any) -> Op | None:
        """Record an invoke; None once the history is full (the op is counted as dropped)."""
        return self.invoke_many(process, f, [value])[0]

    def invoke_many(self, process: int, f: str, values: Iterable[Any], at: float | None = None) -> list[Op | None]:
        """One batch's invokes, all at the same time: now, or ``at`` (an open loop's scheduled time)."""
        at = self.now() if at is None else at
        out: list[Op | None] = []
        with self._lock:
            for value in values:
                if len(self._ops) >= self._ops_max:
                    self.truncated = True
                    self.dropped += 1
                    out.append(None)
                    continue
                op = Op(len(self._ops), process, f, value, at)
                self._ops.append(op)
                self._counts[INVOKE] += 1
                out.append(op)
        return out

    def complete(self, op: Op | None, outcome: Any) -> None:
        self.complete_many([op], [outcome])

    def complete_many(self, ops: list[Op | None], outcomes: list[Any]) -> None:
        """Complete a batch's ops, in order, with the call's outcomes (values or errors)."""
        if len(ops) != len(outcomes):
            raise ValueError(f"{len(ops)} ops but {len(outcomes)} outcomes")
        at = self.now()
        with self._lock:
            for op, outcome in zip(ops, outcomes):
                if op is None or op.error == OPEN_AT_END:  # closed at the end of the run: stays unknown
                    continue
                if op.type != INVOKE:
                    raise ValueError(f"op {op.id} completed twice")
                op.type, op.result, op.error = classify(outcome)
                op.complete_s = at
                self._counts[INVOKE] -= 1
                self._counts[op.type] += 1

    def ops(self) -> list[Op]:
        """Every stored op; ops still open are returned as they are (type ``invoke``)."""
        with self._lock:
            return list(self._ops)

    def close(self) -> int:
        """Mark every op still open as unknown, completed now.  How many there were."""
        at = self.now()
        n = 0
        with self._lock:
            for op in self._ops:
                if op.type == INVOKE:
                    op.type, op.error, op.complete_s = UNKNOWN, OPEN_AT_END, at
                    n += 1
            self._counts[INVOKE] -= n
            self._counts[UNKNOWN] += n
        return n

    def counts(self) -> dict[str, int]:
        """Stored ops by type (cheap: the progress display asks often)."""
        with self._lock:
            return dict(self._counts)


def events(ops: Iterable[Op]) -> list[dict[str, Any]]:
    """Invoke and completion events in time order (a completion after its invoke)."""
    out: list[tuple[float, int, int, dict[str, Any]]] = []
    for op in ops:
        base = {"index": op.id, "process": op.process, "f": op.f, "value": op.value}
        out.append((op.invoke_s, 0, op.id, {**base, "type": INVOKE, "time": op.invoke_s}))
        if op.type != INVOKE:
            done = {**base, "type": op.type, "time": op.complete_s}
            if op.type == OK:
                done["result"] = op.result
            else:
                done["error"] = op.error
            out.append((op.complete_s, 1, op.id, done))
    out.sort(key=lambda e: e[:3])
    return [e[3] for e in out]


def write_jsonl(ops: Iterable[Op], path: str) -> int:
    """Write the history's events, one JSON object per line; how many lines."""
    n = 0
    with open(path, "w") as f:
        for event in events(ops):
            f.write(json.dumps(event, default=repr, separators=(",", ":")))
            f.write("\n")
            n += 1
    return n
