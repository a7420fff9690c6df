"""The coordinator actor: runs multi-partition procedures and drives two-phase commit.

Design note
-----------
A thin shell around ``CoordinatorCore`` (the 2PC state machine): the core
decides, this actor moves messages.  Its parts:

* ``execute(calls, attempt)`` -- a client's batch of MP transactions; each
  procedure runs in a greenlet on the hub thread (``actors.hub``; up to
  ``MP_RUNS_AT_ONCE`` at once) so a batch runs concurrently without a thread
  per transaction; phases 1 and 2 run on callbacks once the procedure has
  returned, and the core's Reply completes the txn.  The procedure gets an
  ``MPContext``: ``tx.run`` / ``run_many`` / ``run_all``
  send fragments to partition leaders inside the open transaction;
  ``run_many(..., last=True)`` marks the last round, whose partitions prepare
  as they run their fragment (their YES votes are kept and handed to the
  core when it asks for PREPARE: one round trip fewer).
* One ``_Link`` per partition batches every 2PC step bound for that
  partition (fragments, PREPARE, decisions, aborts) into ``mp_ops`` calls,
  one in flight per lane (a fast lane for fragments, a log lane for steps
  that wait for durability): what queues during a call goes in the next, so
  the batch grows with the load at ~1-2 ms per actor call.
* Wait-die: a fragment that meets an older txn's lock restarts its txn (same
  priority, so it ages); one that meets a younger txn's lock waits at the
  partition (``mp_fragment_wait``, on a thread of its own: the hub never
  blocks).  A restart first waits (bounded) until the txns of ours whose
  locks it met have replied -- a consistent scan holds a whole table until it
  ends, and dying on it again and again only burns rounds -- else it backs
  off exponentially.  A leader change (dead, fenced, not leader) also
  restarts the txn: its RUNNING state was not logged.
* Recovery at start, in logged phases: ``routing`` -> ``ask-leaders`` (every
  leader aborts RUNNING txns of older incarnations and lists its PREPARED
  ones) -> ``ask-holders`` (the recorded outcome of each) -> ``resolve``
  (``core.recover``: carry the recorded outcome out, or record abort) ->
  ``serving``.  Calls wait for it.
* A retry (``attempt > 0``) first asks every leader whether the request id
  has a recorded commit (the holder logs the reply with the decision), so a
  retried transaction never applies twice.
* ``inject_crash(point)``: test hook; the process exits at that point of the
  next transaction that reaches it (``CRASH_POINTS``).

Txn ids carry ``MP_TXN_BIT`` and grow with wall-clock microseconds, so a
restarted coordinator's ids are above every id its predecessor used.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import threading
import time
from typing import Any, Callable, Iterable

from actors import runtime
from actors.config import UNAVAILABLE_RECHECK_S, ClusterConfig
from actors.coordinator_core import (
    ABORT, COMMIT, CoordinatorCore, InDoubt, LogDecision, Release, Reply, SendAbort, SendDecision, SendPrepare,
)
from actors.errors import (
    ActorDied, CoordinatorUnavailable, InvalidArguments, LockConflict, NotLeader, OhmError, OutcomeUnknown,
    PartitionUnavailable, ProcedureFailed, StaleEpoch, Timeout, TxnAborted, UnknownProcedure, UserAbort, invariant,
)
from actors.hub import Gather, Hub
from actors.participant import MP_TXN_BIT
from actors.routing import partition_of
from actors.schema import Schema
from recovery.cluster_map import supervisor_name

log = logging.getLogger("ohmdb.coordinator")

#: MP procedures running at once on the hub (each a greenlet holding one open transaction); more wait their turn.
MP_RUNS_AT_ONCE = 512
#: Ray calls the coordinator accepts at once (each a client's batch).
COORDINATOR_CALLS_MAX = 32
#: 2PC steps sent to one partition in one call, and calls in flight per lane (see ``_Lane``).
LINK_OPS_PER_CALL_MAX = 512
FAST_LANE_CALLS_IN_FLIGHT = 1
LOG_LANE_CALLS_IN_FLIGHT = 1
#: Steps waiting per partition before senders block (bounded queue).
LINK_QUEUE_MAX = 20_000
#: Wait-die head start of read-only MP txns (txn ids count microseconds).
READ_ONLY_HEAD_START_US = 200_000
#: Times a txn restarts after wait-die or a leader change before it fails with TxnAborted.
MP_RESTARTS_MAX = 30
RESTART_BACKOFF_S = 0.002
#: Longest wait of a restart for the txns whose locks it met to end (``_back_off``).
RESTART_WAIT_MAX_S = 0.5
RESTART_BACKOFF_DOUBLINGS_MAX = 6
#: Times an abort or a decision step is re-sent after a routing refresh when it failed.
STEP_RESENDS_MAX = 3
#: Interval of the core's clock tick (timeouts, re-sends).
TICK_S = 0.05
#: Recovery: rounds of asking every leader, and the pause between rounds.
RECOVERY_ROUNDS_MAX = 60
RECOVERY_RETRY_S = 0.5
#: Where ``inject_crash`` can kill the process.
CRASH_POINTS = ("before-prepare", "after-some-prepares", "after-decision", "after-some-commits")


class _Restart(BaseException):
    """The txn must start again (lock conflict, leader change); BaseException so user code cannot swallow it."""

    def __init__(self, error: OhmError) -> None:
        super().__init__(error)
        self.error = error


def _restartable(err: OhmError) -> bool:
    return isinstance(err, (LockConflict, NotLeader, StaleEpoch, ActorDied, PartitionUnavailable))


class _Run:
    """One MP transaction of a client's batch, across its tries (restarts keep the first priority)."""

    def __init__(self, proc: Any, args: tuple, request_id: str | None, attempt: int,
                 deliver: Callable[[Any], None]) -> None:
        self.proc = proc
        self.args = args
        self.request_id = request_id
        self.attempt = attempt
        self.deliver = deliver
        self.priority: int | None = None
        self.restarts = 0
        self.again = False
        self.met: tuple[int, ...] = ()  # txns whose locks made the last try restart
        self.ended_s = 0.0


class MPContext:
    """The ``tx`` of a multi-partition procedure."""

    def __init__(self, coordinator: "Coordinator", txn: int, priority: int, read_only: bool) -> None:
        self._c = coordinator
        self.txn_id = txn
        self._priority = priority
        self._read_only = read_only
        self._touched: set[int] = set()
        self._last_done = False

    @property
    def partitions(self) -> int:
        return self._c.config.partitions

    def run(self, partition_key: Any, fragment: Callable[..., Any], *args: Any) -> Any:
        """Run ``fragment(ftx, *args)`` on the partition owning ``partition_key``, inside this txn."""
        return self._run([(partition_of(partition_key, self.partitions), fragment, args)])[0]

    def run_many(self, calls: Iterable[tuple[Any, Callable[..., Any], tuple]], last: bool = False) -> list[Any]:
        """Run several ``(partition_key, fragment, args)`` at once; results in order.

        ``last=True``: this is the transaction's last round of fragments; each
        partition prepares (logs PREPARE and votes) right after its fragment,
        which saves a round trip.  No fragment may run after it.
        """
        return self._run([(partition_of(key, self.partitions), f, tuple(a)) for key, f, a in calls], last)

    def run_all(self, fragment: Callable[..., Any], *args: Any) -> list[Any]:
        """Run ``fragment(ftx, *args)`` on every partition; results indexed by partition."""
        return self._run([(p, fragment, args) for p in range(self.partitions)])

    def abort(self, reason: str = "aborted by procedure") -> None:
        raise UserAbort(str(reason), reason=str(reason))

    def _run(self, parts: list[tuple[int, Callable[..., Any], tuple]], last: bool = False) -> list[Any]:
        if self._last_done:
            raise InvalidArguments(f"txn {self.txn_id}: a fragment after the last round (run_many(last=True))")
        steps = self._steps(parts, last and not self._read_only)
        self._last_done = last
        gather = Gather(len(parts))
        for k, ((p, _, _), step) in enumerate(zip(parts, steps)):
            self._c._links[p].post(step, gather.slot(k))
        if not gather.wait(self._c.config.call_timeout_s):
            timeout = Timeout(f"txn {self.txn_id}: fragments unanswered after {self._c.config.call_timeout_s} s")
            gather.answers = [a if a is not None else timeout for a in gather.answers]
        results, first_error = [], None
        for (p, _, _), step, answer in zip(parts, steps, gather.answers):
            if isinstance(answer, tuple) and answer[0] == "wait":
                answer = self._c._fragment_wait(p, step)
            ok, value = _fragment_result(answer)
            if ok and len(answer) > 2 and answer[2]:  # ("ok", result, yes): prepared with its last fragment
                self._c._early_votes.setdefault(self.txn_id, set()).add(p)
            # Every partition a writing txn touched prepares (its PREPARE's durability covers what the
            # fragment read there); only read-only txns release partitions without phase 2.
            self._c._fragment_done(self.txn_id, p, ok, wrote=not self._read_only)
            if not ok and first_error is None:
                first_error = value
            results.append(value)
        if first_error is not None:
            if _restartable(first_error):
                raise _Restart(first_error)
            raise first_error
        return results


    def _steps(self, parts: list[tuple[int, Callable[..., Any], tuple]], prepare: bool) -> list[tuple]:
        """The fragment steps; in a last round each partition's final one carries (participants, holder)."""
        self._touched.update(p for p, _, _ in parts)
        participants = tuple(sorted(self._touched))
        final = {p: k for k, (p, _, _) in enumerate(parts)}
        return [("fragment", self.txn_id, self._priority, f, tuple(a), self._read_only,
                 (participants, min(participants)) if prepare and final[p] == k else None, prepare)
                for k, (p, f, a) in enumerate(parts)]


def _fragment_result(answer: Any) -> tuple[bool, Any]:
    """(ok, result or error) of a fragment's answer."""
    if isinstance(answer, OhmError):
        return False, answer
    if answer[0] in ("ok", "err"):
        return answer[0] == "ok", answer[1]
    return False, InvalidArguments(f"unexpected fragment answer {answer!r}")


_in_lane = threading.local()


class _Lane:
    """Batches steps bound for one partition into ``mp_ops`` calls, one call in flight.

    Two lanes per partition: ``fast`` (fragments of writing txns, lookups: no
    log record, no durability wait) and ``log`` (PREPARE, decisions, releases,
    fragments of read-only txns: answered once durable), so fragments never
    queue behind a replication round.
    """

    def __init__(self, coordinator: "Coordinator", partition: int, name: str, calls_in_flight: int) -> None:
        self.c = coordinator
        self.partition = partition
        self.queue: collections.deque = collections.deque()
        self.cond = threading.Condition()
        self.stats = {"calls": 0, "ops": 0, "call_s": 0.0}
        for k in range(calls_in_flight):  # each sender has one call in flight
            threading.Thread(target=self._loop, name=f"lane-{name}-{partition}-{k}", daemon=True).start()

    def post(self, op: tuple, deliver: Callable[[Any], None] | None) -> None:
        """Queue ``op``; ``deliver(answer)`` runs on the lane's thread (keep it short, never blocking)."""
        with self.cond:
            # Bounded for outside callers; a lane's own callbacks never wait (that could deadlock).
            while len(self.queue) >= LINK_QUEUE_MAX and not getattr(_in_lane, "yes", False):
                self.cond.wait()
            self.queue.append((op, deliver))
            self.cond.notify()

    def _loop(self) -> None:
        _in_lane.yes = True
        while True:
            with self.cond:
                while not self.queue:
                    self.cond.wait()
                batch = [self.queue.popleft() for _ in range(min(len(self.queue), LINK_OPS_PER_CALL_MAX))]
                self.cond.notify_all()
            self._call(batch)

    def _call(self, batch: list[tuple[tuple, Callable[[Any], None] | None]]) -> None:
        t0 = time.perf_counter()
        try:
            answer = self.c._call_leader(self.partition, "mp_ops", [op for op, _ in batch])
        except BaseException as exc:  # never leave a waiter hanging
            answer = OutcomeUnknown(f"partition {self.partition}: {exc!r}")
        self.stats["calls"] += 1
        self.stats["ops"] += len(batch)
        self.stats["call_s"] += time.perf_counter() - t0
        for k, (_, deliver) in enumerate(batch):
            if deliver is None:
                continue
            try:
                deliver(answer if isinstance(answer, OhmError) else answer[k])
            except Exception:
                log.exception("delivering the answer to %s from partition %d failed", batch[k][0][0], self.partition)


FAST_STEPS = ("recall", "recorded", "release")


class _Link:
    """A partition's two lanes."""

    def __init__(self, coordinator: "Coordinator", partition: int) -> None:
        self.fast = _Lane(coordinator, partition, "fast", FAST_LANE_CALLS_IN_FLIGHT)
        self.log = _Lane(coordinator, partition, "log", LOG_LANE_CALLS_IN_FLIGHT)

    def post(self, op: tuple, deliver: Callable[[Any], None] | None) -> None:
        fast = (op[0] in FAST_STEPS or (op[0] == "fragment" and not op[5] and not op[7])
                or (op[0] == "decide" and op[2] == ABORT))  # aborts free locks: never behind a replication
        (self.fast if fast else self.log).post(op, deliver)

    def ask(self, op: tuple, timeout_s: float) -> Any:
        g = Gather(1)
        self.post(op, g.slot(0))
        if not g.wait(timeout_s):
            return Timeout(f"{op[0]}: no answer within {timeout_s} s")
        return g.answers[0]

    def stats(self) -> dict[str, Any]:
        return {"fast": dict(self.fast.stats), "log": dict(self.log.stats)}


class Coordinator:
    def __init__(self, config: dict[str, Any], schema: Schema) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        runtime.tune_gc()
        self.config = ClusterConfig(**config)
        self.schema = schema
        self.identity = runtime.own_identity()
        self.started_at = time.time()
        self.core = CoordinatorCore()
        self._lock = threading.RLock()
        self._runs: dict[int, _Run] = {}  # txn -> the run waiting for its Reply
        self._end_waiters: dict[int, list[Callable[[Any], None]]] = {}  # txn -> restarts waiting for its end
        self._early_votes: dict[int, set[int]] = {}  # txn -> partitions that prepared with their last fragment
        self._inflight: dict[str, list[Callable[[Any], None]]] = {}  # request id -> who waits for its outcome
        self._last_us = 0
        self._first_txn = self._next_txn()
        self._routing_lock = threading.Lock()
        self._leaders: list[Any] = []
        self._version = 0
        self._refreshed_at = 0.0  # monotonic time of the last routing answer
        self._crash_at: str | None = None
        self.ready = threading.Event()
        self.recovery: dict[str, Any] = {"phases": []}
        self.counts = collections.Counter()
        self.timing = collections.Counter()  # seconds summed over txns: procedure (fragments), commit (2PC)
        self._hub = Hub("mp-hub", MP_RUNS_AT_ONCE)
        self._links = [_Link(self, p) for p in range(self.config.partitions)]
        threading.Thread(target=self._recover, name="mp-recover", daemon=True).start()
        threading.Thread(target=self._tick_loop, name="mp-tick", daemon=True).start()

    # -- calls from clients -------------------------------------------------------------

    def execute(self, calls: list[tuple[str, tuple, str | None]], attempt: int = 0) -> list[Any]:
        """Run a batch of MP transactions concurrently; each result or typed error, in order."""
        if not self.ready.wait(self.config.call_timeout_s):
            err = CoordinatorUnavailable(f"coordinator still recovering after {self.config.call_timeout_s} s "
                                         f"(phases so far: {self.recovery['phases']})")
            return [err] * len(calls)
        gather = Gather(len(calls))
        for k, (name, args, request_id) in enumerate(calls):
            self._start(name, tuple(args), request_id, attempt, gather.slot(k))
        wait_s = self.config.call_timeout_s * (2 + len(calls) // MP_RUNS_AT_ONCE)
        if not gather.done.wait(wait_s):
            unknown = OutcomeUnknown(f"no outcome within {wait_s} s; retry with the same request ids")
            return [a if a is not None else unknown for a in gather.answers]
        return gather.answers

    def _start(self, name: str, args: tuple, request_id: str | None, attempt: int,
               deliver: Callable[[Any], None]) -> None:
        proc = self.schema.procedures.get(name) if isinstance(name, str) else None
        if proc is None or not proc.multi_partition:
            deliver(UnknownProcedure(f"no multi-partition procedure {name!r}", procedure=str(name)))
            return
        try:
            proc.check_args(args)
        except OhmError as err:
            deliver(err)
            return
        run = _Run(proc, args, request_id, attempt, deliver)
        if request_id is not None:
            with self._lock:
                others = self._inflight.get(request_id)
                if others is not None:  # the same request runs now (a client's retry): share its outcome
                    others.append(deliver)
                    return
                self._inflight[request_id] = [deliver]
            run.deliver = lambda outcome, rid=request_id: self._finish_request(rid, outcome)
        self._hub.spawn(self._attempt, run)

    def _finish_request(self, request_id: str, outcome: Any) -> None:
        with self._lock:
            waiting = self._inflight.pop(request_id, [])
        for deliver in waiting:
            deliver(outcome)

    def _attempt(self, run: "_Run") -> None:
        """One try of a txn in a hub greenlet: run the procedure, hand its end to the core, return.

        Phases 1 and 2 go on after it returns; the core's Reply completes the txn (``_on_reply``)
        or starts the next try.
        """
        try:
            if run.attempt > 0 and run.request_id is not None and run.restarts == 0:
                found = self._recall(run.request_id)
                if found is not None:
                    run.deliver(found[1])
                    return
            if run.restarts:
                self._back_off(run)
            self._run_procedure(run)
        except _Unknown as unknown:
            run.deliver(OutcomeUnknown(f"request {run.request_id}: cannot tell whether its first try committed "
                                       f"({unknown.err.code}); retry with the same request id",
                                       request_id=run.request_id))
        except BaseException as exc:  # never leave the caller waiting
            log.exception("txn of %s failed in the coordinator", run.proc.name)
            run.deliver(OutcomeUnknown(f"{run.proc.name}: coordinator error {exc!r}"))

    def _back_off(self, run: "_Run") -> None:
        """Before a restart: wait until the txns of ours whose locks it met have ended (bounded), so it
        does not die again on the same locks -- a consistent scan holds a whole table until it ends --
        then a short random pause; if none of them is ours, an exponential, randomized pause."""
        gather = None
        with self._lock:
            live = [txn for txn in run.met if txn in self._runs]
            if live:
                gather = Gather(len(live))
                for k, txn in enumerate(live):
                    self._end_waiters.setdefault(txn, []).append(gather.slot(k))
        if gather is not None:
            self.counts["restart_waits"] += 1
            gather.wait(RESTART_WAIT_MAX_S)
            self._hub.sleep(RESTART_BACKOFF_S * random.random())
            return
        self._hub.sleep(RESTART_BACKOFF_S * (2 ** min(run.restarts, RESTART_BACKOFF_DOUBLINGS_MAX)) * random.random())

    def _run_procedure(self, run: "_Run") -> None:
        txn = self._next_txn()
        # A read-only txn counts as older than it is (a head start): a consistent scan gets through under a
        # steady write load without starving the writers (each scan costs the writers it meets a restart).
        run.priority = run.priority or (txn - READ_ONLY_HEAD_START_US if run.proc.read_only else txn)
        run.again = False
        self._runs[txn] = run
        t0 = time.perf_counter()
        with self._lock:
            self.core.begin(txn, run.request_id, time.monotonic())
        try:
            ok, result = True, run.proc.func(MPContext(self, txn, run.priority, run.proc.read_only), *run.args)
        except _Restart as restart:
            ok, result, run.again = False, restart.error, True
        except OhmError as err:
            ok, result = False, err
        except Exception as exc:
            ok, result = False, ProcedureFailed(f"procedure {run.proc.name!r} raised {type(exc).__name__}: {exc}",
                                                procedure=run.proc.name, exception=type(exc).__name__)
        self.timing["procedure_s"] += time.perf_counter() - t0
        run.ended_s = time.perf_counter()
        with self._lock:
            actions = self.core.procedure_done(txn, ok, result, time.monotonic())
        self._carry_out(actions)

    def _on_reply(self, reply: Reply) -> None:
        self._early_votes.pop(reply.txn, None)
        with self._lock:
            run = self._runs.pop(reply.txn, None)
            waiters = self._end_waiters.pop(reply.txn, ())
        for ended in waiters:  # restarts that wait for this txn to end (``_back_off``)
            ended(reply.txn)
        if run is None:
            return  # a txn a previous incarnation began (recovered): nobody waits for it here
        self.timing["commit_s"] += time.perf_counter() - run.ended_s
        self.timing["txns"] += 1
        if run.again:
            run.restarts += 1
            self.counts["restarts"] += 1
            holders = reply.result.details.get("holders") if isinstance(reply.result, LockConflict) else None
            run.met = tuple(holders or ())
            if run.restarts < MP_RESTARTS_MAX:
                self._hub.spawn(self._attempt, run)
                return
            run.deliver(TxnAborted(f"{run.proc.name}: restarted {MP_RESTARTS_MAX} times (lock conflicts or "
                                   f"leader changes); last: {reply.result.message}", procedure=run.proc.name))
            return
        kind = {True: "committed", False: "aborted", None: "unknown"}[reply.committed]
        self.counts[kind] += 1
        run.deliver(reply.result)

    # -- fragments ------------------------------------------------------------------------

    def _fragment_wait(self, p: int, step: tuple) -> Any:
        """Run a fragment that waits at the partition for a younger txn's lock: the call blocks (up to
        the partition's lock wait), so it runs on a thread of its own while the procedure waits."""
        self.counts["lock_waits"] += 1
        g = Gather(1)

        def wait_there() -> None:
            try:
                answer = self._call_leader(p, "mp_fragment_wait", step)
            except Exception as exc:  # never leave the procedure waiting for the timeout
                answer = OutcomeUnknown(f"txn {step[1]}: lock wait at partition {p} failed: {exc!r}")
            g.slot(0)(answer)

        threading.Thread(target=wait_there, name="mp-lock-wait", daemon=True).start()
        if not g.wait(self.config.call_timeout_s * 2):
            return Timeout(f"txn {step[1]}: partition {p} did not answer a lock wait")
        return g.answers[0]

    def _fragment_done(self, txn: int, p: int, ok: bool, wrote: bool) -> None:
        with self._lock:
            self.core.fragment_done(txn, p, ok, wrote)

    # -- carrying out the core's actions ----------------------------------------------------

    def _carry_out(self, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, Reply):
                self._on_reply(action)
            elif isinstance(action, SendPrepare):
                self._checkpoint("before-prepare")
                self._send_prepare(action)
            elif isinstance(action, (SendAbort, Release)):
                kind = "decide" if isinstance(action, SendAbort) else "release"
                for p in action.partitions:
                    step = ("decide", action.txn, ABORT) if kind == "decide" else ("release", action.txn)
                    self._send_step(p, step, None, resends=STEP_RESENDS_MAX)
            elif isinstance(action, LogDecision):
                self._log_decision(action)
            elif isinstance(action, SendDecision):
                self._send_decision(action)
            else:
                invariant(False, f"unknown coordinator action {action!r}")

    def _send_prepare(self, a: SendPrepare) -> None:
        first = a.partitions[0]
        early = self._early_votes.pop(a.txn, set())
        for p in a.partitions:
            if self._crash_at == "after-some-prepares" and p != first:
                continue
            if p in early:  # it prepared with its last fragment (run_many(last=True)) and voted yes
                self._on_vote(a.txn, p, ("vote", True, ""))
                continue
            self._send_step(p, ("prepare", a.txn, a.partitions, a.holder),
                            lambda ans, p=p: self._on_vote(a.txn, p, ans))

    def _on_vote(self, txn: int, p: int, answer: Any) -> None:
        self._checkpoint("after-some-prepares")
        yes = isinstance(answer, tuple) and answer[0] == "vote" and answer[1]
        if not yes:
            log.info("txn %d: partition %d votes no: %s", txn, p, answer[2] if isinstance(answer, tuple) else answer)
        with self._lock:
            actions = self.core.vote(txn, p, yes, time.monotonic())
        self._carry_out(actions)

    def _log_decision(self, a: LogDecision) -> None:
        reply = runtime.dumps(a.result) if a.outcome == COMMIT and a.request_id is not None else None
        step = ("log_decision", a.txn, a.outcome, a.participants, a.request_id, reply)
        self._send_step(a.holder, step, lambda ans: self._on_logged(a.txn, ans))

    def _on_logged(self, txn: int, answer: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if isinstance(answer, tuple) and answer[0] == "recorded" and answer[1] in (COMMIT, ABORT):
                actions = self.core.decision_logged(txn, answer[1], now)
            else:
                actions = self.core.decision_failed(txn, now)
        self._checkpoint("after-decision")
        self._carry_out(actions)

    def _send_decision(self, a: SendDecision) -> None:
        targets = a.partitions[:1] if self._crash_at == "after-some-commits" else a.partitions
        for p in targets:
            self._send_step(p, ("decide", a.txn, a.outcome), lambda ans, p=p: self._on_acked(a.txn, p, ans))

    def _on_acked(self, txn: int, p: int, answer: Any) -> None:
        if isinstance(answer, tuple) and answer[0] == "done":
            with self._lock:
                self.core.decision_acked(txn, p)
            self._checkpoint("after-some-commits")

    def _send_step(self, p: int, step: tuple, callback: Callable[[Any], None] | None, resends: int = 0) -> None:
        def deliver(answer: Any) -> None:
            if isinstance(answer, OhmError) and resends > 0:  # the leader changed: the lane re-routes
                self._send_step(p, step, callback, resends - 1)
            elif callback is not None:
                callback(answer)

        self._links[p].post(step, deliver)

    def _tick_loop(self) -> None:
        while True:
            time.sleep(TICK_S)
            if not self.ready.is_set():
                continue
            try:
                with self._lock:
                    actions = self.core.tick(time.monotonic())
                self._carry_out(actions)
            except Exception:
                log.exception("coordinator tick failed")

    # -- partition leaders ---------------------------------------------------------------------

    def _call_leader(self, p: int, method: str, *args: Any) -> Any:
        """Call partition ``p``'s leader; a leader change comes back as a typed error (after a routing refresh)."""
        leader = self._leader(p)
        if leader is None:
            return PartitionUnavailable(f"partition {p} has no live replica", partition=p)
        try:
            answer = runtime.call(leader, method, *args, timeout_s=self.config.call_timeout_s)
        except OhmError as err:
            answer = err
        if isinstance(answer, ActorDied):
            self._refresh_routing(leader_failed=p)
        elif isinstance(answer, (NotLeader, StaleEpoch)):
            self._refresh_routing()
        return answer

    def _leader(self, p: int) -> Any:
        """Partition ``p``'s leader handle; a routing naming none is asked again (at most every
        ``UNAVAILABLE_RECHECK_S``): it may have been read during an election, and the partition serves again."""
        leaders = self._leaders
        if not leaders or (leaders[p] is None and time.monotonic() - self._refreshed_at >= UNAVAILABLE_RECHECK_S):
            self._refresh_routing()
            leaders = self._leaders
        return leaders[p] if leaders else None

    def _refresh_routing(self, leader_failed: int | None = None) -> None:
        supervisor = runtime.find(supervisor_name(self.config.name))
        if supervisor is None:
            return
        try:
            if leader_failed is not None:
                routing = runtime.call(supervisor, "leader_failed", leader_failed, self._version,
                                       timeout_s=self.config.call_timeout_s)
            else:
                routing = runtime.call(supervisor, "routing", timeout_s=self.config.call_timeout_s)
        except OhmError as err:
            log.warning("routing refresh failed: %s", err)
            return
        with self._routing_lock:
            self._refreshed_at = time.monotonic()
            if routing["version"] >= self._version:
                self._leaders, self._version = list(routing["leaders"]), routing["version"]

    # -- recovery --------------------------------------------------------------------------

    def _recover(self) -> None:
        started = time.perf_counter()
        try:
            self._phase("routing", self._refresh_routing)
            found = self._phase("ask-leaders", self._ask_leaders)
            recorded = self._phase("ask-holders", lambda: self._ask_holders(found))
            in_doubt = {txn: InDoubt(txn, sorted(parts), holder, recorded.get(txn))
                        for txn, (parts, holder) in found.items()}
            with self._lock:
                actions = self._phase("resolve", lambda: self.core.recover(in_doubt, time.monotonic()))
            self._carry_out(actions)
            self.recovery["in_doubt"] = len(in_doubt)
            self.recovery["recorded"] = sum(1 for d in in_doubt.values() if d.recorded)
        except Exception as exc:
            log.exception("coordinator recovery failed")
            self.recovery["error"] = repr(exc)
        self.recovery["seconds"] = round(time.perf_counter() - started, 4)
        log.info("phase=serving in_doubt=%s after %.3f s", self.recovery.get("in_doubt"), self.recovery["seconds"])
        self.ready.set()

    def _phase(self, name: str, step: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        log.info("phase=%s", name)
        try:
            return step()
        finally:
            self.recovery["phases"].append({"phase": name, "seconds": round(time.perf_counter() - t0, 4)})

    def _ask_leaders(self) -> dict[int, tuple[set[int], int]]:
        """Every leader aborts RUNNING txns of older incarnations and lists its PREPARED ones."""
        found: dict[int, tuple[set[int], int]] = {}
        pending = set(range(self.config.partitions))
        for _ in range(RECOVERY_ROUNDS_MAX):
            for p in sorted(pending):
                answer = self._call_leader(p, "mp_recover", self._first_txn)
                if isinstance(answer, OhmError):
                    continue
                pending.discard(p)
                for txn, parts, holder in answer["in_doubt"]:
                    found.setdefault(txn, (set(parts), holder))
            if not pending:
                return found
            time.sleep(RECOVERY_RETRY_S)
        raise CoordinatorUnavailable(f"partitions {sorted(pending)} did not answer recovery")

    def _ask_holders(self, found: dict[int, tuple[set[int], int]]) -> dict[int, str]:
        recorded: dict[int, str] = {}
        by_holder: dict[int, list[int]] = {}
        for txn, (_, holder) in found.items():
            by_holder.setdefault(holder, []).append(txn)
        for holder, txns in by_holder.items():
            for _ in range(RECOVERY_ROUNDS_MAX):
                answer = self._call_leader(holder, "mp_ops", [("recorded", t) for t in txns])
                if not isinstance(answer, OhmError):
                    break
                time.sleep(RECOVERY_RETRY_S)
            else:
                raise CoordinatorUnavailable(f"holder partition {holder} did not answer recovery")
            recorded.update({t: a[1] for t, a in zip(txns, answer) if a[1] is not None})
        return recorded

    def _recall(self, request_id: str) -> tuple[bool, Any] | None:
        """A retried request: (True, result) if a holder recorded its commit, else None (not applied)."""
        for p in range(self.config.partitions):
            answer = self._links[p].ask(("recall", request_id), self.config.call_timeout_s)
            if isinstance(answer, OhmError):
                raise _Unknown(answer)
            if answer[1] is not None:
                self.counts["recalled"] += 1
                return True, runtime.loads(answer[1])
        return None

    # -- inspection and test hooks -------------------------------------------------------------

    def _next_txn(self) -> int:
        with self._lock:
            self._last_us = max(self._last_us + 1, time.time_ns() // 1000)
            return MP_TXN_BIT | self._last_us

    def ping(self) -> dict[str, Any]:
        return {**self.identity, "ready": self.ready.is_set()}

    def status(self) -> dict[str, Any]:
        with self._lock:
            open_txns = self.core.status()
        return {**self.identity, "ready": self.ready.is_set(), "uptime_s": round(time.time() - self.started_at, 3),
                "open": len(open_txns), "states": dict(collections.Counter(open_txns.values())),
                "counts": dict(self.counts), "recovery": self.recovery, "timing": dict(self.timing),
                "links": [link.stats() for link in self._links]}

    def inject_crash(self, point: str | None) -> bool:
        """Test hook: the process exits the next time a transaction reaches ``point``."""
        if point is not None and point not in CRASH_POINTS:
            raise ValueError(f"unknown crash point {point!r}; known: {CRASH_POINTS}")
        self._crash_at = point
        return True

    def _checkpoint(self, point: str) -> None:
        if self._crash_at == point:
            log.error("crash point %s reached: exiting (injected)", point)
            os._exit(19)


class _Unknown(Exception):
    def __init__(self, err: OhmError) -> None:
        super().__init__(err)
        self.err = err


def coordinator_name(cluster: str) -> str:
    return f"{cluster}:coordinator"
