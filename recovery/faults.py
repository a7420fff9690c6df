"""Fault reports: one record per fault, from detection to full redundancy; pure data plus a book.

Design note
-----------
A ``FaultReport`` says what failed (``kind``), how it was noticed
(``signal``), where (node, and each actor with its partition and role), what
it did (``impact``: partitions without a leader and for how long,
transactions in doubt), what the supervisor did about it (``actions``, each
with its time) and the three durations users ask for:

* ``detection_s``  -- fault to detected.  The fault time is not observable; we
  use the last moment the actor was known well (its last heartbeat answer), so
  this is an upper bound on the real detection delay;
* ``availability_s`` -- fault to writes accepted again on every partition it
  touched (a new leader published, or the lost follower dropped);
* ``redundancy_s`` -- fault to every touched partition back at k+1 replicas.

``FaultBook`` numbers reports, keeps the open ones, and writes every change to
a store (``recovery.supervisor_store``) as a whole record, so the latest
version of each report survives a supervisor restart.  It takes times as
arguments and never reads a clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

# kinds
CRASH = "crash"                        # the process died (Ray reported the actor dead)
HANG = "hang"                          # alive per Ray but silent (SIGSTOP, deadlock, unreachable)
NODE_LOSS = "node-loss"                # a Ray node with its actors is gone
LOG_WRITE_FAILURE = "log-write-failure"  # the replica's redo log cannot be written (disk full, I/O error)
CORRUPT_LOG = "corrupt-log"            # recovery found a torn or corrupt log or snapshot and cut it
COORDINATOR_FAILURE = "coordinator-failure"
SUPERVISOR_RESTART = "supervisor-restart"
KINDS = (CRASH, HANG, NODE_LOSS, LOG_WRITE_FAILURE, CORRUPT_LOG, COORDINATOR_FAILURE, SUPERVISOR_RESTART)

# states
OPEN = "open"                  # still being handled
AVAILABLE = "available"        # writes accepted again; redundancy not yet back
RECOVERED = "recovered"        # back at k+1 replicas (or nothing more to do)
UNRECOVERED = "unrecovered"    # the supervisor gave up (e.g. no live replica): see the last action

#: Reports kept by the in-memory store (the directory store keeps all).
REPORTS_KEPT_MAX = 10_000
#: Recent reports (open or closed) a book keeps at hand, e.g. to reclassify a hang as a node loss.
RECENT_REPORTS_MAX = 100


class ReportStore(Protocol):
    def save_report(self, report: dict[str, Any]) -> None: ...
    def reports(self) -> list[dict[str, Any]]: ...


@dataclass
class FaultReport:
    id: str
    kind: str
    signal: str
    detected_at: float
    fault_at: float
    where: dict[str, Any]
    impact: dict[str, Any] = field(default_factory=dict)
    actions: list[dict[str, Any]] = field(default_factory=list)
    state: str = OPEN
    available_at: float | None = None
    recovered_at: float | None = None
    durations: dict[str, float | None] = field(default_factory=dict)
    run: str = ""

    def act(self, at: float, action: str, **detail: Any) -> None:
        self.actions.append({"at": round(at, 6), "action": action, **detail})

    def mark_available(self, at: float) -> None:
        if self.available_at is None:
            self.available_at = at
            if self.state == OPEN:
                self.state = AVAILABLE
        self._durations()

    def mark_recovered(self, at: float) -> None:
        self.mark_available(at)
        if self.recovered_at is None:
            self.recovered_at = at
        self.state = RECOVERED
        self._durations()

    def mark_unrecovered(self, at: float, why: str, action: str = "gave-up") -> None:
        self.act(at, action, reason=why)
        self.state = UNRECOVERED

    def _durations(self) -> None:
        def since(t: float | None) -> float | None:
            return None if t is None else round(t - self.fault_at, 6)
        self.durations = {"detection_s": round(self.detected_at - self.fault_at, 6),
                          "availability_s": since(self.available_at), "redundancy_s": since(self.recovered_at)}
        partitions = self.impact.get("partitions_unavailable") or []
        if partitions and self.available_at is not None:
            self.impact["unavailable_s"] = since(self.available_at)

    def to_dict(self) -> dict[str, Any]:
        self._durations()
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FaultReport":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class FaultBook:
    """Creates, updates and persists reports; the open ones are kept in memory."""

    def __init__(self, store: ReportStore, run: str, resume: bool = True) -> None:
        self.store = store
        self.run = run
        self.open: dict[str, FaultReport] = {}
        self._recent: deque[FaultReport] = deque(maxlen=RECENT_REPORTS_MAX)
        self._made = 0  # reports numbered within the run (the run id is the caller's: no randomness here)
        for data in store.reports() if resume else []:  # after a restart: reports still open are picked up again
            if data.get("state") in (OPEN, AVAILABLE):
                rep = FaultReport.from_dict(data)
                self.open[rep.id] = rep

    def new(self, kind: str, signal: str, detected_at: float, fault_at: float | None,
            where: dict[str, Any], **impact: Any) -> FaultReport:
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        self._made += 1
        rep = FaultReport(id=f"F-{self.run}-{self._made:04d}", kind=kind, signal=signal, detected_at=detected_at,
                          fault_at=min(fault_at if fault_at is not None else detected_at, detected_at),
                          where=where, impact=dict(impact), run=self.run)
        rep.act(detected_at, "detected", signal=signal)
        self.open[rep.id] = rep
        self._recent.append(rep)
        self.save(rep)
        return rep

    def save(self, rep: FaultReport) -> None:
        self.store.save_report(rep.to_dict())
        if rep.state in (RECOVERED, UNRECOVERED):
            self.open.pop(rep.id, None)

    def recent(self) -> list[FaultReport]:
        return list(self._recent)

    def touching(self, partition: int) -> list[FaultReport]:
        """Open reports that involve ``partition``."""
        return [r for r in self.open.values() if partition in r.impact.get("partitions", [])]


def latest(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last version of each report, in order of detection."""
    by_id: dict[str, dict[str, Any]] = {}
    for rec in records:
        by_id[rec["id"]] = rec
    return sorted(by_id.values(), key=lambda r: (r.get("detected_at", 0.0), r["id"]))
