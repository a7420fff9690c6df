"""The two-phase-commit coordinator core: events in, actions out; no Ray, no clock.

Design note
-----------
Presumed abort, with the decision stored in a participant's k-safe log.  A
multi-partition transaction is RUNNING while its procedure calls fragments on
partitions; a partition that changed data is a *writer*, the others are
read-only and are released without a phase 2.  When the procedure returns, the
writers are sent PREPARE (state PREPARING, bounded by ``prepare_timeout_s``).
Every writer must vote YES: one NO or one missing vote aborts.  An abort is
never logged (presumed abort): the transaction is forgotten at once and a
participant left prepared resolves itself through the holder (below).

A commit is made durable *before* anyone hears it: ``LogDecision`` asks the
*holder* -- the lowest-numbered writer, ``holder_of(writers)`` -- to write a
DECISION record into its replicated log (state DECIDING).  The holder keeps the
first outcome written for a txn and answers every later request with it
(first writer wins), so a participant in doubt or a recovering coordinator can
record "abort" first and a late "commit" then loses.  Whatever the holder
answers is the outcome: ``SendDecision`` goes to the other writers (the
holder's record is its own commit or abort) and is sent again every
``decision_retry_s`` until each has acknowledged (state DECIDED); then the
txn is forgotten.  A restarted coordinator calls ``recover`` with the prepared
but unfinished txns found at the partition leaders: a recorded outcome is
carried out, an unrecorded one is logged as "abort" (first writer wins).

Every method returns the actions for the actor shell to carry out, in order;
time comes in as ``now_s``.  What the participants must do for this to be live:
a PREPARE record names the writers (``SendPrepare.partitions``) and the holder;
an abort for an unknown txn leaves a tombstone (a later PREPARE votes NO); a
participant prepared for too long asks the holder to record "abort" (first
writer wins) and applies the answer, since a lost SendAbort is never re-sent.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable, Union

from actors.errors import CoordinatorBusy, InvalidConfig, OutcomeUnknown, TxnAborted, invariant

COMMIT = "commit"
ABORT = "abort"
OUTCOMES = (COMMIT, ABORT)

#: Time writers have to vote after PREPARE is sent; a missing vote aborts.
PREPARE_TIMEOUT_S = 5.0
#: Interval between re-sends of LogDecision (unanswered) and SendDecision (unacknowledged).
DECISION_RETRY_S = 1.0
#: LogDecision attempts before the client is told the outcome is unknown (retries go on).
DECISION_ATTEMPTS_MAX = 3
#: Transactions begun and not yet finished; ``begin`` beyond it raises CoordinatorBusy.
OPEN_TXNS_MAX = 10_000
#: Outcomes of finished transactions remembered to check late events against.
FINISHED_KEPT_MAX = 10_000


# --- actions -----------------------------------------------------------------------


def holder_of(writers: Iterable[int]) -> int:
    """The partition whose log holds a transaction's decision: its lowest-numbered writer."""
    return min(writers)


@dataclass(frozen=True)
class SendPrepare:
    """Ask each writer to log PREPARE (with the writer list and holder) and vote."""

    txn: str
    partitions: tuple[int, ...]

    @property
    def holder(self) -> int:
        return holder_of(self.partitions)


@dataclass(frozen=True)
class SendAbort:
    """Tell these partitions to roll the transaction back (not logged: presumed abort)."""

    txn: str
    partitions: tuple[int, ...]


@dataclass(frozen=True)
class Release:
    """Read-only participants (or all of a read-only txn): end the txn, keep nothing."""

    txn: str
    partitions: tuple[int, ...]


@dataclass(frozen=True)
class LogDecision:
    """Ask the holder's leader to record ``outcome`` unless one is recorded; answer the recorded one."""

    txn: str
    holder: int
    outcome: str
    participants: tuple[int, ...]
    request_id: str | None
    result: Any


@dataclass(frozen=True)
class SendDecision:
    """Tell these writers the recorded outcome; each logs COMMIT/ABORT, releases and acknowledges."""

    txn: str
    outcome: str
    partitions: tuple[int, ...]


@dataclass(frozen=True)
class Reply:
    """Answer the client: committed True/False, or None when the outcome is not known yet."""

    txn: str
    committed: bool | None
    result: Any


Action = Union[SendPrepare, SendAbort, Release, LogDecision, SendDecision, Reply]


@dataclass(frozen=True)
class InDoubt:
    """A prepared, unfinished txn found at the partition leaders, for ``recover``."""

    txn: str
    participants: list[int]
    holder: int
    recorded: str | None


# --- transaction records -------------------------------------------------------------


class TxnState(Enum):
    RUNNING = "running"      # the procedure is calling fragments
    PREPARING = "preparing"  # PREPARE sent, collecting votes
    DECIDING = "deciding"    # LogDecision sent, waiting for the holder's answer
    DECIDED = "decided"      # outcome recorded, waiting for every writer's acknowledgement


@dataclass
class _Txn:
    txn: str
    request_id: str | None
    state: TxnState
    touched: set[int] = field(default_factory=set)
    writers: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    yes: set[int] = field(default_factory=set)
    acked: set[int] = field(default_factory=set)
    result: Any = None
    started_s: float = 0.0
    deadline_s: float = 0.0
    asked: str | None = None
    recorded: str | None = None
    attempts: int = 0
    replied: bool = False
    recovered: bool = False

    @property
    def holder(self) -> int:
        return holder_of(self.writers)


def _sorted(partitions: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted(partitions))


# --- the core ----------------------------------------------------------------------


class CoordinatorCore:
    """The 2PC state machine of one coordinator incarnation."""

    def __init__(self, prepare_timeout_s: float = PREPARE_TIMEOUT_S,
                 decision_retry_s: float = DECISION_RETRY_S) -> None:
        if not prepare_timeout_s > 0 or not decision_retry_s > 0:
            raise InvalidConfig("coordinator timeouts must be positive",
                                prepare_timeout_s=prepare_timeout_s, decision_retry_s=decision_retry_s)
        self.prepare_timeout_s = prepare_timeout_s
        self.decision_retry_s = decision_retry_s
        self._txns: dict[str, _Txn] = {}
        self._finished: OrderedDict[str, str] = OrderedDict()

    # -- inspection ---------------------------------------------------------------

    def status(self) -> dict[str, str]:
        """Open transactions and their state names (finished ones are absent)."""
        return {txn: t.state.name for txn, t in self._txns.items()}

    # -- phase 0: the procedure runs ------------------------------------------------

    def begin(self, txn: str, request_id: str | None, now_s: float) -> list[Action]:
        """A multi-partition procedure starts; CoordinatorBusy when too many are open."""
        invariant(txn not in self._txns and txn not in self._finished, f"txn {txn!r} begun twice")
        if len(self._txns) >= OPEN_TXNS_MAX:
            raise CoordinatorBusy(f"{len(self._txns)} multi-partition transactions open (limit {OPEN_TXNS_MAX})",
                                  open=len(self._txns), limit=OPEN_TXNS_MAX)
        self._txns[txn] = _Txn(txn, request_id, TxnState.RUNNING, started_s=now_s)
        return []

    def fragment_done(self, txn: str, partition: int, ok: bool, wrote: bool) -> list[Action]:
        """A fragment ran on ``partition`` (``ok=False``: it failed; ``wrote``: it changed data)."""
        t = self._expect(txn, TxnState.RUNNING, "fragment_done")
        t.touched.add(partition)
        if wrote:
            t.writers.add(partition)
        if not ok:
            t.failed.add(partition)
        return []

    def procedure_done(self, txn: str, ok: bool, result: Any, now_s: float) -> list[Action]:
        """The procedure returned ``result`` (ok) or raised the error ``result`` (not ok)."""
        t = self._expect(txn, TxnState.RUNNING, "procedure_done")
        if not ok or t.failed:
            return self._abort_running(t, result if not ok else self._fragment_error(t))
        t.result = result
        release = [Release(txn, _sorted(t.touched - t.writers))] if t.touched - t.writers else []
        if not t.writers:
            self._forget(t, COMMIT)
            return release + [self._reply(t, True, result)]
        t.state = TxnState.PREPARING
        t.deadline_s = now_s + self.prepare_timeout_s
        return release + [SendPrepare(txn, _sorted(t.writers))]

    def _fragment_error(self, t: _Txn) -> TxnAborted:
        failed = sorted(t.failed)
        return TxnAborted(f"txn {t.txn}: fragment failed on partitions {failed}", txn=t.txn, partitions=failed)

    def _abort_running(self, t: _Txn, error: Any) -> list[Action]:
        self._forget(t, ABORT)
        touched = [SendAbort(t.txn, _sorted(t.touched))] if t.touched else []
        return touched + [self._reply(t, False, error)]

    # -- phase 1: votes --------------------------------------------------------------

    def vote(self, txn: str, partition: int, yes: bool, now_s: float) -> list[Action]:
        """A writer logged PREPARE and voted; late or unknown votes are ignored."""
        t = self._txns.get(txn)
        if t is None or t.state is not TxnState.PREPARING:
            return []
        invariant(partition in t.writers, f"txn {txn}: vote from partition {partition}, not a writer")
        if not yes:
            return self._abort_prepared(t, TxnAborted(
                f"txn {txn}: partition {partition} voted no", txn=txn, partition=partition))
        t.yes.add(partition)
        if t.yes != t.writers:
            return []
        return self._log_decision(t, COMMIT, now_s)

    def _abort_prepared(self, t: _Txn, error: TxnAborted) -> list[Action]:
        self._forget(t, ABORT)
        return [SendAbort(t.txn, _sorted(t.writers)), self._reply(t, False, error)]

    def _prepare_timed_out(self, t: _Txn) -> list[Action]:
        missing = sorted(t.writers - t.yes)
        return self._abort_prepared(t, TxnAborted(
            f"txn {t.txn}: no vote from partitions {missing} within {self.prepare_timeout_s} s",
            txn=t.txn, partitions=missing))

    # -- phase 2: the decision ---------------------------------------------------------

    def _log_decision(self, t: _Txn, outcome: str, now_s: float) -> list[Action]:
        invariant(outcome == ABORT or t.yes == t.writers,
                  f"txn {t.txn}: commit asked without a YES from every writer")
        t.state = TxnState.DECIDING
        t.asked = outcome
        t.attempts = 1
        t.deadline_s = now_s + self.decision_retry_s
        return [self._log_action(t)]

    def _log_action(self, t: _Txn) -> LogDecision:
        return LogDecision(t.txn, t.holder, t.asked or ABORT, _sorted(t.writers), t.request_id, t.result)

    def decision_logged(self, txn: str, outcome: str, now_s: float) -> list[Action]:
        """The holder answered: ``outcome`` is durably recorded for ``txn`` (first writer wins)."""
        invariant(outcome in OUTCOMES, f"txn {txn}: unknown outcome {outcome!r}")
        t = self._txns.get(txn)
        if t is None:
            previous = self._finished.get(txn, outcome)
            invariant(previous == outcome, f"txn {txn}: holder answered {outcome} after {previous}")
            return []
        if t.state is TxnState.DECIDED:
            invariant(t.recorded == outcome, f"txn {txn}: holder answered {outcome} after {t.recorded}")
            return []
        invariant(t.state is TxnState.DECIDING, f"txn {txn}: decision logged in state {t.state.name}")
        return self._decided(t, outcome, now_s)

    def decision_failed(self, txn: str, now_s: float) -> list[Action]:
        """The holder's leader died or timed out while logging: the outcome is unknown; ask again."""
        t = self._txns.get(txn)
        if t is None or t.state is not TxnState.DECIDING:
            return []
        actions = self._maybe_give_up(t)
        t.deadline_s = now_s + self.decision_retry_s
        if t.attempts >= DECISION_ATTEMPTS_MAX:
            return actions  # keep DECIDING; tick asks again
        t.attempts += 1
        return actions + [self._log_action(t)]

    def _retry_log(self, t: _Txn, now_s: float) -> list[Action]:
        actions = self._maybe_give_up(t)
        t.attempts += 1
        t.deadline_s = now_s + self.decision_retry_s
        return actions + [self._log_action(t)]

    def _maybe_give_up(self, t: _Txn) -> list[Action]:
        if t.replied or t.attempts < DECISION_ATTEMPTS_MAX:
            return []
        return [self._reply(t, None, OutcomeUnknown(
            f"txn {t.txn}: decision not yet logged at partition {t.holder} after {t.attempts} attempts;"
            " it will be: ask again with the request id",
            txn=t.txn, holder=t.holder, request_id=t.request_id))]

    def _decided(self, t: _Txn, outcome: str, now_s: float) -> list[Action]:
        previous = self._finished.get(t.txn, outcome)
        invariant(t.recorded in (None, outcome) and previous == outcome,
                  f"txn {t.txn}: two decisions, {t.recorded or previous} and {outcome}")
        t.recorded = outcome
        t.state = TxnState.DECIDED
        t.deadline_s = now_s + self.decision_retry_s
        targets = self._unacked(t)
        actions: list[Action] = [self._decision_action(t, targets)] if targets else []
        actions += self._reply_outcome(t)
        if not targets:
            self._forget(t, outcome)
        return actions

    def _decision_action(self, t: _Txn, targets: tuple[int, ...]) -> SendDecision:
        if t.recorded == COMMIT:
            self._check_commit(t)
        return SendDecision(t.txn, t.recorded or ABORT, targets)

    def _reply_outcome(self, t: _Txn) -> list[Action]:
        if t.replied:
            return []
        if t.recorded == COMMIT:
            self._check_commit(t)
            return [self._reply(t, True, t.result)]
        return [self._reply(t, False, TxnAborted(
            f"txn {t.txn}: abort recorded first at partition {t.holder}"
            " (by a participant in doubt or a recovering coordinator)",
            txn=t.txn, holder=t.holder))]

    def _check_commit(self, t: _Txn) -> None:
        invariant(t.recorded == COMMIT and (t.recovered or t.yes == t.writers),
                  f"txn {t.txn}: commit without every writer's YES and the holder's record")

    def decision_acked(self, txn: str, partition: int) -> list[Action]:
        """A writer logged the outcome and released; the txn is forgotten once all have."""
        t = self._txns.get(txn)
        if t is None:
            return []
        invariant(partition in t.writers, f"txn {txn}: acknowledgement from partition {partition}, not a writer")
        t.acked.add(partition)
        if t.state is TxnState.DECIDED and not self._unacked(t):
            self._forget(t, t.recorded or ABORT)
        return []

    def _unacked(self, t: _Txn) -> tuple[int, ...]:
        return _sorted(t.writers - t.acked - {t.holder})

    # -- time ------------------------------------------------------------------------

    def tick(self, now_s: float) -> list[Action]:
        """Abort PREPARING txns past their deadline; re-send unanswered LogDecision and unacked SendDecision."""
        actions: list[Action] = []
        for t in list(self._txns.values()):
            if t.state is TxnState.RUNNING or now_s < t.deadline_s:
                continue
            if t.state is TxnState.PREPARING:
                actions += self._prepare_timed_out(t)
            elif t.state is TxnState.DECIDING:
                actions += self._retry_log(t, now_s)
            else:
                t.deadline_s = now_s + self.decision_retry_s
                actions.append(self._decision_action(t, self._unacked(t)))
        return actions

    # -- recovery --------------------------------------------------------------------

    def recover(self, in_doubt: dict[str, InDoubt], now_s: float) -> list[Action]:
        """Finish txns a previous incarnation left prepared: carry out the recorded outcome or log abort."""
        actions: list[Action] = []
        for txn, d in in_doubt.items():
            invariant(txn == d.txn and d.participants and d.holder == holder_of(d.participants),
                      f"in-doubt record {txn!r} is inconsistent: {d}")
            invariant(d.recorded in (None, *OUTCOMES), f"txn {txn}: unknown recorded outcome {d.recorded!r}")
            if txn in self._txns:
                continue  # this incarnation already drives it
            t = _Txn(txn, None, TxnState.DECIDING, touched=set(d.participants), writers=set(d.participants),
                     replied=True, recovered=True)
            self._txns[txn] = t
            if d.recorded is None:
                actions += self._log_decision(t, ABORT, now_s)
            else:
                actions += self._decided(t, d.recorded, now_s)
        return actions

    # -- helpers ---------------------------------------------------------------------

    def _expect(self, txn: str, state: TxnState, event: str) -> _Txn:
        t = self._txns.get(txn)
        invariant(t is not None and t.state is state,
                  f"{event} for txn {txn!r} in state {t.state.name if t else 'unknown'}, expected {state.name}")
        return t  # type: ignore[return-value]

    def _reply(self, t: _Txn, committed: bool | None, result: Any) -> Reply:
        invariant(not t.replied, f"txn {t.txn}: second reply")
        t.replied = True
        return Reply(t.txn, committed, result)

    def _forget(self, t: _Txn, outcome: str) -> None:
        previous = self._finished.get(t.txn, outcome)
        invariant(previous == outcome, f"txn {t.txn}: two decisions, {previous} and {outcome}")
        del self._txns[t.txn]
        self._finished[t.txn] = outcome
        while len(self._finished) > FINISHED_KEPT_MAX:
            self._finished.popitem(last=False)
