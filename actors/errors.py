"""Typed errors: every expected failure a caller can act on.

Design note
-----------
Two kinds of failure exist in ohmdb (ARCHITECTURE.md, "Shape of the code"):

* expected operating errors -- bad input, a user abort, a dead actor, a timeout --
  become instances of an ``OhmError`` subclass.  Each class has a stable ``code``
  (``"UNKNOWN_PROCEDURE"``, ``"NOT_LEADER"``, ...) and a ``details`` dict naming
  what is wrong (procedure, table, column, value).  They cross Ray process
  boundaries by pickling, so every class keeps the ``(message, **details)``
  constructor that ``Exception`` pickling relies on.
* broken invariants raise ``InvariantViolation`` through ``invariant()``, which,
  unlike ``assert``, survives ``python -O``.

In ``Cluster.call_many`` results a failed transaction appears as its error
object in its place; ``Cluster.call`` raises it.
"""

from __future__ import annotations

from typing import Any


class OhmError(Exception):
    """Base of every typed ohmdb error."""

    code = "OHM_ERROR"
    #: True when the transaction certainly did not take effect (safe to retry
    #: without a request id).  False when the outcome may be unknown.
    not_applied = True

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.details))

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and other.message == self.message  # type: ignore[attr-defined]
            and other.details == self.details  # type: ignore[attr-defined]
        )

    def __hash__(self) -> int:
        return hash((type(self), self.message))

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


def _rebuild(cls: type, message: str, details: dict[str, Any]) -> OhmError:
    return cls(message, **details)


# --- bad input -------------------------------------------------------------


class InvalidConfig(OhmError):
    """A cluster, table or procedure definition is inconsistent."""

    code = "INVALID_CONFIG"


class UnknownProcedure(OhmError):
    code = "UNKNOWN_PROCEDURE"


class InvalidArguments(OhmError):
    """Wrong number or type of procedure arguments."""

    code = "INVALID_ARGUMENTS"


class SchemaViolation(OhmError):
    """Unknown table, missing or unknown column, or a value of the wrong type."""

    code = "SCHEMA_VIOLATION"


class DuplicateKey(OhmError):
    code = "DUPLICATE_KEY"


class KeyNotFound(OhmError):
    code = "KEY_NOT_FOUND"


class ReadOnlyViolation(OhmError):
    """A write to a replicated table, or from a read-only context."""

    code = "READ_ONLY"


class WrongPartition(OhmError):
    """A procedure touched a key that lives on another partition."""

    code = "WRONG_PARTITION"


class BatchTooLarge(OhmError):
    code = "BATCH_TOO_LARGE"


# --- transaction outcomes --------------------------------------------------


class UserAbort(OhmError):
    """The procedure called ``tx.abort(reason)``; the transaction rolled back."""

    code = "USER_ABORT"


class ProcedureFailed(OhmError):
    """The procedure raised; the transaction rolled back."""

    code = "PROCEDURE_FAILED"


# --- cluster and routing ---------------------------------------------------


class ClusterNotFound(OhmError):
    code = "CLUSTER_NOT_FOUND"


class ClusterExists(OhmError):
    code = "CLUSTER_EXISTS"


class NotLeader(OhmError):
    code = "NOT_LEADER"


class StaleEpoch(OhmError):
    code = "STALE_EPOCH"


class ActorDied(OhmError):
    """The actor that was asked is gone; what it had finished is unknown."""

    code = "ACTOR_DIED"
    not_applied = False


class PartitionUnavailable(OhmError):
    """No replica of the partition can take the transaction right now."""

    code = "PARTITION_UNAVAILABLE"
    not_applied = False


class ClusterMinority(OhmError):
    """This side of the cluster reaches fewer than half of the nodes it last saw: writes stop (never run)."""

    code = "CLUSTER_MINORITY"


class CoordinatorBusy(OhmError):
    """Too many multi-partition transactions are open; try again later (nothing ran)."""

    code = "COORDINATOR_BUSY"


class TxnAborted(OhmError):
    """The coordinator decided abort: a failed fragment, a NO or missing vote, or an abort recorded first."""

    code = "TXN_ABORTED"


class LockConflict(OhmError):
    """A fragment needed a lock held by an older MP transaction (wait-die: the younger dies) or waited too long."""

    code = "LOCK_CONFLICT"


class CoordinatorUnavailable(OhmError):
    """The coordinator is down or recovering and did not come back in time (nothing was run by this call)."""

    code = "COORDINATOR_UNAVAILABLE"
    not_applied = False


class OutcomeUnknown(OhmError):
    """A multi-partition decision could not be logged yet: it will be, but its outcome is not known now."""

    code = "OUTCOME_UNKNOWN"
    not_applied = False


class LogWriteFailed(OhmError):
    """The replica could not make the batch durable (disk full, I/O error).

    The replica stops acknowledging anything; the outcome of this batch is unknown.
    """

    code = "LOG_WRITE_FAILED"
    not_applied = False


class Timeout(OhmError):
    """No answer in time: the transaction may or may not have taken effect."""

    code = "TIMEOUT"
    not_applied = False


# --- invariants ------------------------------------------------------------


class InvariantViolation(AssertionError):
    """A broken internal invariant: a bug, never an operating condition."""


def invariant(condition: bool, message: str) -> None:
    """``assert`` that survives ``python -O``."""
    if not condition:
        raise InvariantViolation(message)


ALL_ERRORS: tuple[type[OhmError], ...] = tuple(
    cls for cls in list(globals().values())
    if isinstance(cls, type) and issubclass(cls, OhmError)
)
