"""The partition replica actor: a thin threaded shell around the core and its redo log.

Design note
-----------
``PartitionReplica`` is what ``runtime.spawn`` turns into a Ray actor.  It owns
a ``PartitionCore`` and a ``RedoLog`` and does no protocol work itself:

1. ``Sequencer.turn`` puts a client's calls in the order it sent them.
2. The core runs the batch holding the replica's lock, so one batch at a time.
3. The batch's redo records are encoded and written to the log at once.
4. ``log.wait_durable(...)`` -- in ``sync`` mode the call returns only after an
   fsync covered everything written so far (including what this batch read),
   and batches written during one fsync share the next (group commit).

Threads, not asyncio: measured by ``ohmdb bench floor`` here, a call to a
threaded Ray actor costs about 40% less CPU in the actor than one to an
async actor, and a chain of three calls has about 40% less latency.  Every method runs holding
``_mu`` (the ``_locked`` decorator) -- the one lock of the replica's state --
and releases it only to wait (``_unlocked``: a turn, durability, acks, a
lock an MP txn holds, a call to another actor).  So, as with an event loop,
state changes only between waits.  Calls are spread over concurrency groups
so no kind of call can starve another: clients' batches (default), a
coordinator's 2PC steps (``steps``), batches from the leader (``log``), the
supervisor's configuration calls (``admin``), heartbeats (``control``).
Followers' answers arrive through ``runtime.on_done`` on a queue that one
thread drains into the ack tracker.

Start-up with a data directory recovers the replica (snapshot + log replay,
``recovery.replay``) before it serves.  When the log written since the last
snapshot passes ``snapshot_log_bytes``, the replica copies its state (a list
of row references -- rows are never mutated in place) and a background thread
writes the snapshot and truncates the log.  ``ping``/``status`` run in the
control group and only read counters.

Wire format of ``execute_batch``: in ``(client, seq, [(procedure, args), ...])``,
out ``(results, errors, batch_error)``; ``errors`` maps a batch index to its
typed error; ``batch_error`` is set when the batch as a whole failed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import queue
import shutil
import threading
import time
import uuid
from typing import Any

import pyarrow as pa

from actors import runtime
from actors.errors import (
    ClusterMinority, InvalidArguments, LockConflict, LogWriteFailed, NotLeader, OhmError, StaleEpoch, Timeout,
)
from actors.locks import WAIT as LOCK_WAIT
from actors.participant import OUTCOME_ABORT, OUTCOME_COMMIT
from actors.partition_core import BatchOutcome, PartitionCore
from actors.schema import Schema
from actors.sequencer import Sequencer
from recovery import segments
from recovery.catalog import replica_dir
from recovery.cluster_map import FOLLOWER, LEADER, NOT_A_MEMBER, supervisor_name
from recovery.replication import ACCEPT, STALE, WAIT, AckTracker, follower_verdict
from recovery.group_commit import OFF, RedoLog
from recovery.log_format import CorruptBatch, LogCodec, batch_crc, from_wire, to_wire
from recovery.redo import REQUEST, RedoRecord
from recovery.replay import LOG_DIR, SNAPSHOT_DIR, RecoveryReport, recover_replica
from recovery.snapshots import prune_snapshots, write_snapshot

log = logging.getLogger("ohmdb.partition")

#: How long a transaction or fragment waits for an MP txn's lock before it gives up.
LOCK_WAIT_S = 5.0
#: Interval of the leader's check for MP txns its coordinator left behind (``mp_settle_after_s``).
MP_CHECK_INTERVAL_S = 0.5
#: Threads of the default group: clients' batches and loads (a batch waiting for durability holds one).
REPLICA_THREADS = 64
#: Concurrency groups and their threads: a coordinator's 2PC steps (they never wait for a lock, so
#: they cannot queue behind batches that wait for them), batches shipped by the leader, and the
#: supervisor's configuration calls.
STEPS_GROUP, LOG_GROUP, ADMIN_GROUP = "steps", "log", "admin"
STEPS_THREADS, LOG_THREADS, ADMIN_THREADS = 8, 32, 4


def _locked(method: Any) -> Any:
    """The method runs holding the replica's lock (its waits release it)."""
    @functools.wraps(method)
    def run(self: "PartitionReplica", *args: Any, **kwargs: Any) -> Any:
        with self._mu:
            return method(self, *args, **kwargs)
    return run


class PartitionReplica:
    CONCURRENCY_GROUPS = {STEPS_GROUP: STEPS_THREADS, LOG_GROUP: LOG_THREADS, ADMIN_GROUP: ADMIN_THREADS}

    def __init__(self, cluster: str, schema: Schema, partition: int, partitions: int,
                 replica: int, epoch: int, config: dict[str, Any], fresh: bool = False) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        runtime.tune_gc()
        self.cluster = cluster
        self.replica = replica
        self.epoch = epoch
        self.role = LEADER
        self.leader_name: str | None = None
        self.halted: str | None = None  # why writes stopped (minority side), None while serving
        self.followers: dict[str, Any] = {}
        self.acks = AckTracker()
        self._mu = threading.Lock()  # the replica's state; see the design note
        self._acked = threading.Condition(self._mu)  # a follower acked, one left, or this leader was fenced
        self._lsn_moved = threading.Condition(self._mu)  # this follower's log advanced or was replaced
        self._txn_ended = threading.Condition(self._mu)  # an MP txn ended here
        self._txns_ended = 0
        self._fences = 0  # times this leader was fenced; a waiter that sees it change fails at once
        self._fence_error: OhmError | None = None
        # (follower, outcome) of shipped batches.  Bounded without a limit of its own: a batch is shipped
        # by a call that then waits for its acks, so at most (calls at once) x (followers) are in flight.
        self._answers: queue.SimpleQueue = queue.SimpleQueue()
        self._mp_timer: threading.Thread | None = None
        self.mp_timing = {"calls": 0, "run_s": 0.0, "durable_s": 0.0}
        self._drop_decisions = False  # test hook (inject_fault): decisions are lost on the way here
        self._fail_fence = False  # test hook (inject_fault): a fence fails as one that never answers
        self.config = config
        self.core = PartitionCore(schema, partition, partitions, config["batch_txns_max"])
        self.codec = LogCodec(schema)
        self.sequencer = Sequencer(self._mu, wait_s=config["call_timeout_s"])
        self.started_at = time.time()
        self.identity = runtime.own_identity()
        self.recovery: RecoveryReport | None = None
        self.snapshots_taken = 0
        self.installs = 0  # times this replica was rebuilt from a leader's copy
        self.last_snapshot: dict[str, Any] | None = None
        self._snapshot_thread: threading.Thread | None = None
        self._bytes_at_snapshot = 0
        self.directory = None if not config.get("data_dir") else replica_dir(config["data_dir"], partition, replica)
        next_lsn = 1
        if self.directory is not None and fresh:
            _move_aside(self.directory)  # a replacement: it gets the leader's state, not old files
        elif self.directory is not None:
            self.recovery = recover_replica(self.directory, self.core, self.codec)
            next_lsn = self.recovery.next_lsn
        self.log = self._open_log(next_lsn)
        threading.Thread(target=self._ack_loop, name="ohmdb-acks", daemon=True).start()

    @contextlib.contextmanager
    def _unlocked(self) -> Any:
        """Release the replica's lock for a wait (the caller holds it)."""
        self._mu.release()
        try:
            yield
        finally:
            self._mu.acquire()

    def _open_log(self, next_lsn: int) -> RedoLog:
        writer = None
        if self.config["durability"] != OFF:
            writer = segments.SegmentWriter(os.path.join(self.directory, LOG_DIR), self.codec, next_lsn,
                                            self.config["segment_bytes_max"])
        return RedoLog(self.config["durability"], self.codec, writer, next_lsn, self.config["flush_interval_ms"])

    # -- transactions (default group: ordered per client, executed one at a time) ------------

    @_locked
    def execute_batch(self, client: str, seq: int, calls: list[tuple[str, tuple]],
                      request_id: str | None = None) -> tuple[list[Any], dict[int, OhmError], OhmError | None]:
        self.sequencer.turn(client, seq, hold=True)
        try:  # the client's next batch starts once this one has executed (it may wait for a lock)
            refusal = self._refuse_unless_leader()
            if refusal is not None:
                return [], {}, refusal
            if request_id is not None:
                first = self.core.recall(request_id)
                if first is not None:  # a retry: the first outcome, never a second execution
                    results, errors = runtime.loads(first)
                    batch_error = self._settled(self.log.written_lsn, self._fences)
                    return ([], {}, batch_error) if batch_error is not None else (results, errors, None)
            try:
                out = self._execute_waiting(calls)
            except OhmError as err:
                return [], {}, err
        finally:
            self.sequencer.done(client, seq)
        if request_id is not None:
            outcome = runtime.dumps((out.results, out.errors))
            out.redo.append(RedoRecord(0, REQUEST, "", request_id, {"outcome": outcome}))
            self.core.remember(request_id, outcome)
        batch_error = self._make_durable(out.redo)
        if batch_error is not None:
            return [], {}, batch_error
        return out.results, out.errors, None

    def _execute_waiting(self, calls: list[tuple[str, tuple]]) -> BatchOutcome:
        """Run a batch; if a transaction touches a key an open MP txn holds, the core undoes the whole
        batch, and it runs again once that txn has ended (bounded by LOCK_WAIT_S: then nothing ran)."""
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            out = self.core.execute_batch(calls)
            if out.blocked_at is None:
                return out
            if not self._await_end(out.blocked_by, deadline):
                raise LockConflict(
                    f"partition {self.core.partition_id}: waited {LOCK_WAIT_S} s for multi-partition txn "
                    f"{out.blocked_by} to release a key transaction {out.blocked_at} of this batch needs; "
                    "nothing of the batch ran", partition=self.core.partition_id, txn=out.blocked_by)
            refusal = self._refuse_unless_leader()  # the configuration may have changed while we waited
            if refusal is not None:
                raise refusal

    def _await_end(self, txn: int, deadline: float) -> bool:
        """Wait until MP txn ``txn`` is no longer open here (False at the deadline)."""
        while txn in self.core.mp.open:
            if not self._await_any_end(deadline):
                return False
        return True

    def _await_any_end(self, deadline: float) -> bool:
        """Wait until some MP txn ends here (False at the deadline)."""
        seen = self._txns_ended
        while self._txns_ended == seen:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._txn_ended.wait(left)
        return True

    def _wake_lock_waiters(self) -> None:
        self._txns_ended += 1
        self._txn_ended.notify_all()

    @_locked
    def load(self, client: str, seq: int, table: str, rows: list[dict[str, Any]]) -> tuple[int, OhmError | None]:
        self.sequencer.turn(client, seq)
        refusal = self._refuse_unless_leader()
        if refusal is not None:
            return 0, refusal
        redo: list = []
        try:
            n = self.core.load(table, rows, redo)
        except OhmError as err:
            return 0, err
        err = self._make_durable(redo)
        return (0, err) if err is not None else (n, None)

    @_locked
    def snapshot(self) -> dict[str, Any]:
        """Take a snapshot now (after everything written so far); its manifest."""
        if self.directory is None:
            return {"skipped": "no data_dir: nothing to snapshot to"}
        thread = self._start_snapshot()
        with self._unlocked():
            thread.join()
        return self.last_snapshot or {}

    def _write(self, redo: list) -> None:
        """Append to the log and ship to every follower, without waiting."""
        encoded = self.log.append(redo, self.epoch)
        if encoded is not None:
            self._ship(*encoded)

    def _make_durable(self, redo: list) -> OhmError | None:
        """Write, ship to every follower, and wait until all of it is durable everywhere."""
        fences = self._fences
        try:
            self._write(redo)
        except (segments.LogWriteFailed, ValueError) as exc:
            return self._log_failed(exc)
        return self._settled(self.log.written_lsn, fences)  # this batch and everything it may have read

    def _settled(self, lsn: int, fences: int) -> OhmError | None:
        """Wait until ``lsn`` is durable here and held by every follower (``fences``: as seen before
        writing, so a fence while waiting fails the wait at once)."""
        err = self._durable_here(lsn)
        if err is not None:
            return err
        self._maybe_snapshot()
        return self._replicated(lsn, fences)

    def _durable_here(self, lsn: int) -> OhmError | None:
        """Wait, the lock released, until ``lsn`` is durable in this replica's log; a typed error if not."""
        log_ = self.log  # an install may replace the log while we wait: wait on the one written to
        try:
            with self._unlocked():
                durable = log_.wait_durable(lsn, self.config["call_timeout_s"])
        except segments.LogWriteFailed as exc:
            return self._log_failed(exc)
        if not durable:
            return Timeout(f"partition {self.core.partition_id}: lsn {lsn} was not flushed within "
                           f"{self.config['call_timeout_s']} s; the outcome is unknown",
                           partition=self.core.partition_id, lsn=lsn)
        return None

    def _refuse_unless_leader(self) -> OhmError | None:
        if self.halted is not None:
            return ClusterMinority(f"partition {self.core.partition_id}: {self.halted}", partition=self.core.partition_id)
        if self.role != LEADER:
            return NotLeader(
                f"partition {self.core.partition_id} replica {self.replica} is a {self.role}; "
                f"the leader is {self.leader_name}",
                partition=self.core.partition_id, leader=self.leader_name, epoch=self.epoch,
            )
        if self.log.failed is not None:
            return self._log_failed(self.log.failed)
        return None

    def _log_failed(self, exc: BaseException) -> LogWriteFailed:
        return LogWriteFailed(
            f"partition {self.core.partition_id} replica {self.replica}: the redo log failed ({exc}); "
            "this replica acknowledges nothing more and the outcome of this batch is unknown",
            partition=self.core.partition_id, replica=self.replica, cause=str(exc),
        )

    # -- replication: leader side ---------------------------------------------------------------

    def _ship(self, batch: Any, meta: dict[bytes, bytes]) -> None:
        """Send a written batch to every follower without waiting (pipelined); answers go to ``_ack_loop``."""
        wire = to_wire(batch)  # once for every follower
        for name, handle in self.followers.items():
            ref = runtime.submit(handle, "replicate", self.epoch, wire, meta)
            runtime.on_done(ref, functools.partial(self._answer_arrived, name), what=f"replicate to {name}")

    def _answer_arrived(self, name: str, outcome: Any) -> None:
        self._answers.put((name, outcome))  # on a Ray thread: never block there

    def _send_batch(self, handle: Any, epoch: int, batch: Any, meta: dict[bytes, bytes]) -> Any:
        """Ship one kept batch to one follower (repair, catch-up); the ref of its answer."""
        return runtime.submit(handle, "replicate", epoch, to_wire(batch), meta)

    def _ack_loop(self) -> None:
        """Take followers' answers in arrival order; a failed follower is reported on a thread of its own."""
        while True:
            name, outcome = self._answers.get()
            try:
                with self._mu:
                    failed = self._take_answer(name, outcome)
            except Exception:  # one odd answer must not stop every later ack: its waiters time out
                log.exception("answer from follower %s could not be taken: %r", name, outcome)
                continue
            if failed is not None:
                threading.Thread(target=self._report_follower_failed, args=(name, *failed),
                                 name="ohmdb-follower-failed", daemon=True).start()

    def _take_answer(self, name: str, outcome: Any) -> tuple[int, str] | None:
        """Apply one follower's answer; (epoch, error code) when the follower must be reported."""
        if isinstance(outcome, StaleEpoch):
            self._fenced(outcome)
            return None
        if isinstance(outcome, BaseException):
            code = getattr(outcome, "code", "ACTOR_DIED")
            log.warning("follower %s failed or refused a batch (%s: %s); asking the supervisor to drop it",
                        name, code, outcome)
            return self.epoch, code
        self.acks.ack(name, outcome["held_lsn"])
        self._release_acks()
        return None

    def _report_follower_failed(self, name: str, epoch: int, code: str) -> None:
        supervisor = runtime.find(supervisor_name(self.cluster))
        if supervisor is None:
            return
        try:
            verdict = runtime.get(runtime.submit(supervisor, "follower_failed", self.core.partition_id, name, epoch, code),
                                  what="follower_failed")
        except OhmError as err:
            log.error("could not report follower %s: %s", name, err)
            return
        with self._mu:
            if verdict == NOT_A_MEMBER and name in self.followers:
                log.warning("follower %s is no member of the cluster map: dropped from the configuration", name)
                self.followers.pop(name, None)
                self.acks.acked.pop(name, None)
                self._release_acks()

    def _replicated(self, lsn: int, fences: int) -> OhmError | None:
        """Wait until every follower holds ``lsn``; StaleEpoch at once if this leader is fenced meanwhile."""
        deadline = time.monotonic() + self.config["call_timeout_s"]
        while self.acks.replicated_lsn(self.log.held_lsn) < lsn:
            if self._fences != fences:
                return self._fence_error
            left = deadline - time.monotonic()
            if left <= 0:
                return Timeout(
                    f"partition {self.core.partition_id}: followers did not confirm lsn {lsn} within "
                    f"{self.config['call_timeout_s']} s; the outcome is unknown", partition=self.core.partition_id,
                )
            self._acked.wait(left)
        return None

    def _release_acks(self) -> None:
        self._acked.notify_all()

    def _fenced(self, err: OhmError) -> None:
        """A follower knows a newer epoch: stop acting as leader and fail every waiter at once."""
        log.warning("fenced out of epoch %d: %s", self.epoch, err)
        self.role = "fenced"
        self._fences += 1
        self._fence_error = StaleEpoch(f"partition {self.core.partition_id}: this leader was fenced ({err.message})",
                                       partition=self.core.partition_id)
        self._acked.notify_all()

    @runtime.in_group(ADMIN_GROUP)
    @_locked
    def configure(self, epoch: int, role: str, leader_name: str, followers: dict[str, tuple[Any, int]]) -> dict[str, Any]:
        """Take a role in configuration ``epoch``; a leader gets its followers and their durable LSNs."""
        return self._configure(epoch, role, leader_name, followers)

    def _configure(self, epoch: int, role: str, leader_name: str, followers: dict[str, tuple[Any, int]]) -> dict[str, Any]:
        if epoch < self.epoch:
            return {"error": StaleEpoch(f"configure from epoch {epoch}; this replica is at {self.epoch}", epoch=self.epoch)}
        self.epoch, self.role, self.leader_name = epoch, role, leader_name
        if role == LEADER and self.core.mp.pending:
            adopted = self.core.mp.adopt(time.monotonic())
            log.info("leader of epoch %d holds %d prepared txn(s) until their decision: %s", epoch, len(adopted), adopted)
            self._ensure_mp_timer()
        self.followers = {name: handle for name, (handle, _) in followers.items()} if role == LEADER else {}
        known = dict(self.acks.acked)
        self.acks.acked = {name: max(known.get(name, 0), lsn) for name, (_, lsn) in followers.items()} if role == LEADER else {}
        self._release_acks()
        return {"epoch": self.epoch, "role": self.role, "written_lsn": self.log.written_lsn,
                "durable_lsn": self.log.durable_lsn}

    @runtime.in_group(ADMIN_GROUP)
    @_locked
    def fence(self, epoch: int) -> dict[str, Any]:
        """Join configuration ``epoch`` as a leaderless follower: batches from older epochs are refused."""
        if self._fail_fence:
            raise Timeout("fence: no answer (injected)", timeout_s=0)
        if epoch > self.epoch:
            self.epoch = epoch
            if self.role == LEADER:
                self._fenced(StaleEpoch(f"fenced into epoch {epoch}", epoch=epoch))
            self.role, self.leader_name, self.followers = "follower", None, {}
        return {"epoch": self.epoch, "written_lsn": self.log.written_lsn, "held_lsn": self.log.held_lsn}

    @runtime.in_group(ADMIN_GROUP)
    @_locked
    def promote(self, epoch: int, name: str, followers: dict[str, tuple[Any, int]]) -> dict[str, Any]:
        """Become leader of ``epoch``: first send every follower what it misses (repair), then serve."""
        if epoch < self.epoch:
            return {"error": StaleEpoch(f"promote to epoch {epoch}; this replica is at {self.epoch}", epoch=self.epoch)}
        self.epoch = epoch
        repaired: dict[str, tuple[Any, int]] = {}
        for follower, (handle, lsn) in followers.items():
            try:
                for batch, meta in self._batches_since(lsn + 1):
                    ref = self._send_batch(handle, epoch, batch, meta)
                    with self._unlocked():
                        answer = runtime.get(ref, what=f"repair {follower}")
                    if isinstance(answer, OhmError):
                        raise answer
                    lsn = answer["held_lsn"]
            except OhmError as err:
                log.warning("repair of %s failed (%s); it leaves the configuration", follower, err.code)
                continue
            repaired[follower] = (handle, lsn)
        self._configure(epoch, LEADER, name, repaired)
        return {"epoch": self.epoch, "written_lsn": self.log.written_lsn, "followers": sorted(repaired)}

    def _batches_since(self, lsn: int) -> list[tuple[Any, dict[bytes, bytes]]]:
        """Batches holding ``lsn`` and after: from memory, else from the log on disk."""
        kept = self.log.batches_from(lsn)
        if kept is not None:
            return kept
        found: list[tuple[Any, dict[bytes, bytes]]] = []

        def collect(batch: Any, first: int, epoch: int) -> None:
            if first + batch.num_rows > lsn:
                meta = {b"first_lsn": str(first).encode(), b"epoch": str(epoch).encode(),
                        b"records": str(batch.num_rows).encode(), b"crc32": str(batch_crc(batch)).encode()}
                found.append((batch, meta))

        segments.read_log(os.path.join(self.directory, LOG_DIR), self.codec, collect, repair=False)
        if not found or int(found[0][1][b"first_lsn"]) > lsn:
            raise LogWriteFailed(f"partition {self.core.partition_id}: the log no longer reaches back to lsn {lsn}",
                                 partition=self.core.partition_id)
        return found

    # -- rebuild: a new or diverged replica gets the leader's state, then its log tail ---------------

    @runtime.in_group(ADMIN_GROUP)
    @_locked
    def add_follower(self, name: str, handle: Any) -> dict[str, Any]:
        """Bring ``name`` up to date while serving, then make it part of the configuration.

        1. copy the state at LSN L (row references: the pause is the copy);
        2. the follower installs it (a snapshot at L on its disk);
        3. send it the batches after L until it holds everything written;
        4. in the same step (the lock held in between) add it to the followers,
           so every later batch is shipped to it too.
        """
        if self.role != LEADER:
            return {"error": NotLeader(f"add_follower on a {self.role}", leader=self.leader_name)}
        started = time.perf_counter()
        lsn = self.log.written_lsn
        tables = {name_: pa.Table.from_pylist(rows, schema=self.core.schema.tables[name_].schema)
                  for name_, rows in self.core.state_copy().items()}
        requests = self.core.kept_entries()
        rows = sum(t.num_rows for t in tables.values())
        ref = runtime.submit(handle, "install", self.epoch, self.leader_name, lsn, tables, requests)
        with self._unlocked():
            answer = runtime.get(ref, what=f"install on {name}")
        if isinstance(answer, OhmError):
            return {"error": answer}
        held = answer["held_lsn"]
        rounds = 0
        while held < self.log.written_lsn:
            # Pipelined: every missing batch is sent at once (the follower orders them by LSN and
            # shares fsyncs among them), so the catch-up outruns a leader that keeps writing.
            refs = [self._send_batch(handle, self.epoch, batch, meta)
                    for batch, meta in self._batches_since(held + 1)]
            with self._unlocked():
                replies = [runtime.get(ref, what=f"catch up {name}") for ref in refs]
            for reply in replies:
                if isinstance(reply, OhmError):
                    return {"error": reply}
                held = max(held, reply["held_lsn"])
            rounds += 1
        self.followers[name] = handle           # the lock held since the loop's last check:
        self.acks.acked[name] = held            # every later batch is shipped to it
        elapsed = time.perf_counter() - started
        log.info("rebuilt %s: %d rows at lsn %d, caught up to %d in %d rounds, %.3f s", name, rows, lsn, held,
                 rounds, elapsed)
        return {"rows": rows, "snapshot_lsn": lsn, "held_lsn": held, "catch_up_rounds": rounds, "seconds": elapsed}

    @runtime.in_group(LOG_GROUP)
    @_locked
    def install(self, epoch: int, leader_name: str, lsn: int, tables: dict[str, Any],
                requests: list[tuple[str, bytes]]) -> dict[str, Any] | OhmError:
        """Replace this replica's state with a leader's copy at ``lsn`` (old files are moved aside)."""
        if epoch < self.epoch:
            return StaleEpoch(f"install from epoch {epoch}; this replica is at {self.epoch}", epoch=self.epoch)
        self.epoch, self.role, self.leader_name = epoch, FOLLOWER, leader_name
        rows = {name: table.to_pylist() for name, table in tables.items()}
        self.log.close()
        if self.directory is not None:
            _move_aside(self.directory)
            write_snapshot(os.path.join(self.directory, SNAPSHOT_DIR), self.core.schema, lsn, epoch, rows, requests)
        self.core.restore(rows)
        self.core.restore_entries(requests)
        self.log = self._open_log(lsn + 1)
        self._bytes_at_snapshot = 0
        self.installs += 1
        self._lsn_moved.notify_all()
        return {"held_lsn": self.log.held_lsn}

    # -- replication: follower side ----------------------------------------------------------------

    @runtime.in_group(LOG_GROUP)
    @_locked
    def replicate(self, epoch: int, wire: Any, meta: dict[bytes, bytes]) -> dict[str, Any] | OhmError:
        """Append and apply a leader's batch (``to_wire`` bytes) in LSN order; answer once it is durable here."""
        try:
            batch = from_wire(wire, self.codec.arrow_schema, meta)
        except CorruptBatch as exc:
            return InvalidArguments(f"partition {self.core.partition_id} replica {self.replica}: refused a "
                                    f"shipped batch: {exc}", partition=self.core.partition_id)
        first, count = int(meta[b"first_lsn"]), batch.num_rows
        verdict = follower_verdict(self.epoch, self.log.next_lsn, epoch, first, count)
        if verdict == WAIT:
            verdict = self._lsn_turn(epoch, first, count)
        if verdict == STALE:
            return StaleEpoch(f"batch from epoch {epoch}; this replica is at epoch {self.epoch}", epoch=self.epoch)
        if verdict == WAIT:
            return Timeout(f"replicate: lsn {first} still has a gap before it after waiting", lsn=first)
        self.epoch = epoch
        if verdict == ACCEPT:
            try:
                self.core.apply_redo(self.codec.decode(batch))
                self.log.append_batch(batch, meta)
            except (segments.LogWriteFailed, ValueError) as exc:
                return self._log_failed(exc)
            self._lsn_moved.notify_all()
            self._maybe_snapshot()
        err = self._durable_here(first + count - 1)
        return err if err is not None else {"held_lsn": self.log.held_lsn}

    def _lsn_turn(self, epoch: int, first: int, count: int) -> str:
        """Wait (bounded) until the batches before ``first`` are here; the verdict then."""
        deadline = time.monotonic() + self.config["call_timeout_s"]
        while True:
            verdict = follower_verdict(self.epoch, self.log.next_lsn, epoch, first, count)
            left = deadline - time.monotonic()
            if verdict != WAIT or left <= 0:
                return verdict
            self._lsn_moved.wait(left)

    # -- multi-partition transactions: the participant side of two-phase commit ---------------
    # Not ordered by the sequencer: fragments of different txns must not queue behind one that
    # waits for a lock; the coordinator sends a txn's own steps one after another.

    @runtime.in_group(STEPS_GROUP)
    @_locked
    def mp_ops(self, ops: list[tuple]) -> list[tuple] | OhmError:
        """Run a coordinator's batch of 2PC steps; answers in order, once their records are durable."""
        return self._run_steps(ops)

    def _run_steps(self, ops: list[tuple]) -> list[tuple] | OhmError:
        refusal = self._refuse_unless_leader()
        if refusal is not None:
            return refusal
        self._ensure_mp_timer()
        t0 = time.perf_counter()
        now = time.monotonic()
        records: list = []
        answers = [self._mp_op(op, now, records) for op in ops]
        if any(op[0] != "fragment" for op in ops):
            self._wake_lock_waiters()
        t1 = time.perf_counter()
        if not records and not any(op[0] == "fragment" and op[5] for op in ops):
            return answers  # fragments of writing txns: their PREPARE's durability covers what they read
        err = self._make_durable(records)
        self.mp_timing["calls"] += 1
        self.mp_timing["run_s"] += t1 - t0
        self.mp_timing["durable_s"] += time.perf_counter() - t1
        return err if err is not None else answers

    def _mp_op(self, op: tuple, now: float, records: list) -> tuple:
        kind, txn = op[0], op[1]
        mp = self.core.mp
        if kind == "fragment":
            return self._fragment_step(op, now, records)
        if kind == "prepare":
            yes, recs, why = mp.prepare(txn, tuple(op[2]), op[3], now)
            records += recs
            return ("vote", yes, why)
        if kind == "decide":
            if self._drop_decisions:
                return ("dropped",)  # test hook: as if the message were lost
            records += mp.commit(txn) if op[2] == OUTCOME_COMMIT else mp.abort(txn)
            return ("done",)
        if kind == "release":
            records += mp.release(txn)
            return ("done",)
        if kind == "log_decision":
            recorded, recs = mp.log_decision(txn, op[2], tuple(op[3]), op[4], op[5])
            records += recs
            return ("recorded", recorded)
        if kind == "recorded":
            return ("recorded", mp.recorded(txn))
        if kind == "recall":  # txn is a request id here: the reply its holder logged with a commit
            return ("recalled", self.core.recall(txn))
        return ("err", InvalidArguments(f"unknown 2PC step {kind!r}", step=repr(kind)))

    def _fragment_step(self, step: tuple, now: float, records: list) -> tuple:
        """Run a fragment; one of a last round (it names participants and holder) then prepares at once."""
        _, txn, priority, fragment, args, read_only, prepare = step[:7]
        answer = self._fragment_answer(self.core.run_fragment_mp(txn, priority, fragment, args, now, read_only), txn)
        if prepare is None or answer[0] != "ok":
            return answer
        yes, recs, _why = self.core.mp.prepare(txn, tuple(prepare[0]), prepare[1], now)
        records += recs
        return (*answer, yes)

    def _fragment_answer(self, out: Any, txn: int) -> tuple:
        if out.conflict is not None and out.conflict.verdict == LOCK_WAIT:
            return ("wait", out.conflict.holders)
        if out.conflict is not None:
            return ("err", LockConflict(
                f"txn {txn}: partition {self.core.partition_id} key held by older txn(s) "
                f"{list(out.conflict.holders)}; wait-die: the younger restarts", txn=txn,
                holders=list(out.conflict.holders)))
        if out.error is not None:
            return ("err", out.error)
        return ("ok", out.result)

    @_locked
    def mp_fragment_wait(self, step: tuple) -> tuple | OhmError:
        """Run a fragment step that must wait for younger txns' locks (wait-die: it is older): wait here, bounded."""
        txn = step[1]
        deadline = time.monotonic() + LOCK_WAIT_S
        records: list = []
        while True:
            refusal = self._refuse_unless_leader()
            if refusal is not None:
                return refusal
            answer = self._fragment_step(step, time.monotonic(), records)
            if answer[0] != "wait":
                break
            if not self._await_any_end(deadline):
                return ("err", LockConflict(f"txn {txn}: waited {LOCK_WAIT_S} s for txn(s) {list(answer[1])} on "
                                            f"partition {self.core.partition_id}", txn=txn))
        err = self._make_durable(records)
        return err if err is not None else answer

    @runtime.in_group(STEPS_GROUP)
    @_locked
    def mp_recover(self, before_txn: int) -> dict[str, Any] | OhmError:
        """A restarted coordinator: abort RUNNING txns it forgot; list the prepared ones and their outcomes."""
        refusal = self._refuse_unless_leader()
        if refusal is not None:
            return refusal
        aborted = self.core.mp.abort_running(before_txn)
        if aborted:
            self._wake_lock_waiters()
        mp = self.core.mp
        return {"aborted": aborted, "in_doubt": mp.in_doubt(), "recorded": dict(mp.decisions)}

    def _ensure_mp_timer(self) -> None:
        if self._mp_timer is None or not self._mp_timer.is_alive():
            self._mp_timer = threading.Thread(target=self._mp_timer_loop, name="ohmdb-mp-timer", daemon=True)
            self._mp_timer.start()

    def _mp_timer_loop(self) -> None:
        """Settle MP txns a coordinator left behind: abort idle RUNNING ones, resolve old PREPARED ones."""
        while True:
            time.sleep(MP_CHECK_INTERVAL_S)
            with self._mu:
                doubt = self._expire_mp()
            for t in doubt:
                try:
                    self._settle_in_doubt(t)
                except Exception as exc:  # keep the loop alive: the next round asks again
                    log.warning("in-doubt txn %d not settled yet: %s", t.txn, exc)

    def _expire_mp(self) -> list[Any]:
        """Abort idle RUNNING txns; the PREPARED ones in doubt for too long (the lock held)."""
        if self.role != LEADER or not self.core.mp.open:
            return []
        after_s = self.config["mp_settle_after_s"]
        running, doubt = self.core.mp.expired(time.monotonic(), after_s, after_s)
        for txn in running:
            log.warning("txn %d idle for %.1f s with no vote given: aborted here", txn, after_s)
            self.core.mp.abort(txn)
        if running:
            self._wake_lock_waiters()
        return doubt

    def _settle_in_doubt(self, t: Any) -> None:
        """Ask the holder to record abort (first writer wins) and carry out what it recorded (the lock not held)."""
        log.warning("txn %d prepared for over %.1f s: asking holder partition %s", t.txn,
                    self.config["mp_settle_after_s"], t.holder)
        step = ("log_decision", t.txn, OUTCOME_ABORT, t.participants, None, None)
        timeout_s = self.config["call_timeout_s"]
        if t.holder == self.core.partition_id:
            with self._mu:
                answer = self._run_steps([step])
        else:
            supervisor = runtime.find(supervisor_name(self.cluster))
            routing = runtime.call(supervisor, "routing", timeout_s=timeout_s)
            holder = routing["leaders"][t.holder]
            answer = runtime.call(holder, "mp_ops", [step], timeout_s=timeout_s)
        if isinstance(answer, OhmError):
            raise answer
        outcome = answer[0][1]
        with self._mu:
            if t.txn in self.core.mp.open:
                records = self.core.mp.commit(t.txn) if outcome == OUTCOME_COMMIT else self.core.mp.abort(t.txn)
                self._wake_lock_waiters()
                err = self._make_durable(records)
                if err is not None:
                    raise err
        log.warning("txn %d settled by its holder: %s", t.txn, outcome)

    # -- snapshots ------------------------------------------------------------------------

    def _maybe_snapshot(self) -> None:
        writer = self.log.writer
        if writer is None or self.directory is None:
            return
        if writer.bytes_written - self._bytes_at_snapshot < self.config["snapshot_log_bytes"]:
            return
        if self._snapshot_thread is not None and self._snapshot_thread.is_alive():
            return
        self._start_snapshot()

    def _start_snapshot(self) -> threading.Thread:
        if self._snapshot_thread is not None and self._snapshot_thread.is_alive():
            return self._snapshot_thread
        started = time.perf_counter()
        state = self.core.state_copy()
        requests = self.core.kept_entries()
        lsn = self.log.written_lsn
        copy_s = time.perf_counter() - started
        self._bytes_at_snapshot = self.log.writer.bytes_written if self.log.writer else 0
        self._snapshot_thread = threading.Thread(
            target=self._write_snapshot, args=(state, requests, lsn, copy_s), name="ohmdb-snapshot", daemon=True,
        )
        self._snapshot_thread.start()
        return self._snapshot_thread

    def _write_snapshot(self, state: dict[str, list[dict[str, Any]]], requests: list[tuple[str, bytes]],
                        lsn: int, copy_s: float) -> None:
        snap_dir = os.path.join(self.directory, SNAPSHOT_DIR)
        try:
            manifest = write_snapshot(snap_dir, self.core.schema, lsn, self.epoch, state, requests)
            oldest_kept = prune_snapshots(snap_dir)
            removed = self.log.writer.delete_segments_before(oldest_kept) if oldest_kept and self.log.writer else []
            self.snapshots_taken += 1
            self.last_snapshot = {**manifest, "copy_s": round(copy_s, 6), "segments_deleted": len(removed)}
            log.info("snapshot lsn=%d copy=%.4fs write=%.3fs segments deleted=%d",
                     lsn, copy_s, manifest.get("write_s", 0.0), len(removed))
        except Exception as exc:  # a failed snapshot loses nothing: the log still holds everything
            log.error("snapshot at lsn %d failed: %s", lsn, exc)
            self.last_snapshot = {"lsn": lsn, "error": str(exc)}

    @runtime.in_group(ADMIN_GROUP)
    @_locked
    def close(self) -> dict[str, Any]:
        """Flush and seal the log before a planned stop (async mode loses nothing then)."""
        thread = self._snapshot_thread
        if thread is not None:
            with self._unlocked():
                thread.join(timeout=self.config["call_timeout_s"])
        if self.log.failed is None:
            self.log.close()
        return {"durable_lsn": self.log.durable_lsn}

    # -- control group (called with ``control=True``): no lock, only reads that are safe under the GIL ---

    def ping(self) -> dict[str, Any]:
        """The heartbeat answer: cheap counters only."""
        return {"partition": self.core.partition_id, "replica": self.replica, "epoch": self.epoch, "role": self.role,
                "written_lsn": self.log.written_lsn, "log_failed": self.log.failed is not None}

    @_locked
    def digest(self) -> dict[str, Any]:
        """A fingerprint of the committed rows (open MP txns' writes left out), for replica comparisons."""
        state = self.core.state_copy()
        rows = {name: sorted(repr(sorted(r.items())) for r in table) for name, table in state.items()}
        return {"role": self.role, "rows": hashlib.sha256(repr(sorted(rows.items())).encode()).hexdigest(),
                "counts": {name: len(t) for name, t in state.items()}, "mp_open": len(self.core.mp.open),
                "mp_pending": len(self.core.mp.pending), "written_lsn": self.log.written_lsn}

    def halt(self, reason: str | None) -> bool:
        """Stop (reason given) or resume (None) taking transactions: the minority rule."""
        self.halted = reason
        return True

    def status(self) -> dict[str, Any]:
        return {
            "partition": self.core.partition_id,
            "replica": self.replica,
            "role": self.role,
            "epoch": self.epoch,
            "leader": self.leader_name,
            "followers": sorted(self.followers),
            **self.identity,
            "uptime_s": round(time.time() - self.started_at, 3),
            "rows": self.core.row_counts(),
            **self.core.counters(),
            **self.core.mp.counters(),
            "mp_timing": self.mp_timing,
            "durability": self.log.mode,
            "written_lsn": self.log.written_lsn,
            "durable_lsn": self.log.durable_lsn,
            "fsyncs": self.log.fsyncs,
            "batches_written": self.log.batches_written,
            "log_failed": None if self.log.failed is None else str(self.log.failed),
            "snapshots_taken": self.snapshots_taken,
            "installs": self.installs,
            "last_snapshot": self.last_snapshot,
            "recovery": None if self.recovery is None else self.recovery.to_dict(),
        }

    @_locked
    def inject_fault(self, kind: str) -> bool:
        """Test hook: make the next fsync fail (``kind='fsync'``), as a full disk would; or lose every
        2PC decision sent here (``kind='drop-decisions'``), so prepared txns stay in doubt; or fail every
        fence (``kind='fail-fence'``), as a replica that never answers it."""
        if kind == "drop-decisions":
            self._drop_decisions = True
            return True
        if kind == "fail-fence":
            self._fail_fence = True
            return True
        if kind != "fsync" or self.log.writer is None:
            return False

        def broken_fsync(fd: int) -> None:
            raise OSError(28, "No space left on device (injected)")

        self.log.writer._fsync = broken_fsync
        return True


def _move_aside(directory: str) -> None:
    """Keep a replaced replica's files (never delete data): rename its directory if it holds any."""
    holds_files = any(files for _, _, files in os.walk(directory)) if os.path.isdir(directory) else False
    if holds_files:
        os.rename(directory, f"{directory}.replaced-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}")
    elif os.path.isdir(directory):
        shutil.rmtree(directory)  # only empty folders
    os.makedirs(directory, exist_ok=True)
