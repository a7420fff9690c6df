"""The supervisor actor: owns the cluster map, finds faults, recovers from them, reports each one.

Design note
-----------
One detached, named supervisor per cluster (``<name>:supervisor``), restarted
by Ray when its process dies.  It is the only writer of the ``ClusterMap``,
and every change of the map is persisted (``recovery.supervisor_store``:
``data_dir/supervisor/map.json``, or Ray's key-value store without a data
directory) before anyone acts on it.

Detection: a ``Watcher`` thread pings every serving replica and the watchdog
(``actors.watchdog``, which in turn watches this actor); clients that see a
dead leader and leaders that lose a follower report too.  Every fault event
goes through ``_handle`` (under the map lock): a report is opened
(``recovery.faults``), then per partition touched

* a lost leader: kill it for good (SIGKILL by pid as well, so a paused process
  cannot wake and act), fence every live replica into epoch + 1, promote the
  one holding the most log (it first repairs the others), publish;
* a lost follower: kill it and drop it from the leader's configuration;

and a background replacement respawns each lost replica on a live node (not
one under suspicion) and has the leader rebuild it while writes go on.  The
report records each action with its time, when writes were accepted again and
when the partition was back at k+1 replicas.

Restart: when Ray restarts this actor, it reloads the map, finds every actor by
name and asks its state, keeps a partition's configuration only if exactly one
live leader holds the newest epoch and every live follower follows it, and
otherwise elects again in a newer epoch -- so a supervisor killed in the
middle of a recovery never leaves two leaders.

Viability: a partition with no live replica answers PARTITION_UNAVAILABLE; if
Ray reaches fewer than half of the nodes last seen (exactly half: without the
lowest node id), every leader halts with CLUSTER_MINORITY until enough return.
Every phase is logged as ``phase=...``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import threading
import time
import uuid
from typing import Any, Sequence

from actors import runtime
from actors.config import ClusterConfig
from actors.errors import ActorDied, OhmError, Timeout
from actors.partition_actor import REPLICA_THREADS, PartitionReplica
from actors.schema import Schema
from actors.watch import FaultEvent, Target, WatchSettings, Watcher
from actors.coordinator_keeper import CoordinatorKeeper
from actors.watchdog import WATCHDOG_NOTE_KEY, NodeProbe, Watchdog, probe_name, watchdog_name
from recovery.cluster_map import (
    DEAD, FOLLOWER, LEADER, NOT_A_MEMBER, SERVING, STARTING, ClusterMap, ReplicaInfo, replica_name, trusted_nodes,
)
from recovery.detector import PROBE_SLOW, silence_confirmed
from recovery.faults import (
    CORRUPT_LOG, CRASH, HANG, LOG_WRITE_FAILURE, NODE_LOSS, SUPERVISOR_RESTART, UNRECOVERED, FaultBook, FaultReport,
)
from recovery.membership import Membership
from recovery.replication import choose_leader
from recovery.supervisor_store import DirStore, KVStore

log = logging.getLogger("ohmdb.supervisor")

#: Attempts to replace one lost replica before waiting for the next fault.
REPLACE_ATTEMPTS_MAX = 5
#: Pause between two attempts.
REPLACE_RETRY_S = 0.5
#: Fault events waiting to be handled; the watcher reports each actor once, so this is never near full.
FAULT_QUEUE_MAX = 1024
#: A node where a replica was found silent is not used for replacements for this long.
SUSPECT_NODE_S = 30.0
#: The reachable nodes must hold still this long before they become the membership (losses found
#: a few heartbeats apart count as one event for the minority rule).
MEMBERSHIP_SETTLE_S = 5.0
#: A node whose probe was lost gets a new probe (if Ray still lists it) only after this long.
PROBE_RESPAWN_S = 10.0
#: A hang or crash on a node that Ray reports dead within this long after its detection was that
#: node's loss (Ray's own node health check may take a minute to declare a node dead).
NODE_LOSS_RECLASSIFY_S = 180.0
#: How long the supervisor asks a node's probe about a process before it counts as unknown.
PROCESS_STATE_TIMEOUT_S = 0.2
#: Where ``inject_crash`` can stop a recovery.
CRASH_PHASES = ("fenced", "promoted", "respawned")
#: A watchdog note older than this does not explain a restart.
WATCHDOG_NOTE_S = 120.0


class Supervisor:
    def __init__(self, config: dict[str, Any], schema: Schema) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        self.config = ClusterConfig(**config).validate()
        self.schema = schema
        self.map: ClusterMap | None = None
        self.handles: dict[str, Any] = {}
        self._lock = threading.RLock()         # the map: actor methods, recovery and replacement threads
        self._replacing: set[tuple[int, int]] = set()
        self.rebuilds: list[dict[str, Any]] = []
        self.started_at = time.time()
        self.identity = runtime.own_identity()
        self.store = _open_store(self.config)
        self.restarted = runtime.was_restarted()
        if isinstance(self.store, KVStore) and not self.restarted:
            self.store.clear()  # a new memory-only cluster: nothing of an earlier one of that name
        self.book = FaultBook(self.store, run=uuid.uuid4().hex[:8], resume=self.restarted)
        self.membership: Membership | None = None
        self.halted: str | None = None
        self._suspect_nodes: dict[str, float] = {}   # a replica went silent there: not for placements a while
        self._unreachable: dict[str, float] = {}     # its probe was lost: not counted by the minority rule
        self.probes: dict[str, tuple[str, Any, dict[str, Any]]] = {}  # node -> (name, handle, identity)
        self._probes_starting: set[str] = set()
        self._kept: set[str] = set()  # failing last replicas left in place (reported once)
        self._faults: queue.Queue[FaultEvent] = queue.Queue(maxsize=FAULT_QUEUE_MAX)
        self.watchdog: Any = None
        self.coordinator = CoordinatorKeeper(self.config, schema)
        self.watcher: Watcher | None = None
        self._crash_at: str | None = None      # test hook: die at this recovery phase
        if self.restarted:
            self._resume()

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        """Spawn every replica, wait until each answers, choose leaders; then watch. Returns the map."""
        cfg = self.config
        nodes = [n["node_id"] for n in runtime.alive_nodes()]
        self.map = ClusterMap.plan(cfg.name, cfg.partitions, k=cfg.k, nodes=nodes)
        log.info("phase=spawn cluster=%s partitions=%d nodes=%d", cfg.name, cfg.partitions, len(nodes))
        for rep in self.map.replicas:
            self.handles[rep.actor_name] = self._spawn_replica(rep, fresh=False)
        log.info("phase=await-ready cluster=%s", cfg.name)
        refs = [runtime.submit(self.handles[r.actor_name], "status", control=True) for r in self.map.replicas]
        held: dict[str, tuple[int, int]] = {}
        for rep, answer in zip(self.map.replicas, runtime.get_each(refs, cfg.spawn_timeout_s, what="replica start")):
            if isinstance(answer, OhmError):
                raise answer
            rep.node_id, rep.pid, rep.state = answer["node_id"], answer["pid"], SERVING
            recovered = answer["recovery"] or {}
            held[rep.actor_name] = (recovered.get("last_epoch", 0), answer["written_lsn"])
            self._report_corrupt_log(rep, recovered)
        log.info("phase=configure cluster=%s k=%d", cfg.name, cfg.k)
        for p in range(self.map.partitions):
            self._configure_partition(p, held)
        with self._lock:
            self._publish()
        log.info("phase=coordinator cluster=%s", cfg.name)
        self.coordinator.ensure()
        self._start_watching(set(nodes))
        log.info("phase=serving cluster=%s", cfg.name)
        return self.map.to_dict()

    def _spawn_replica(self, rep: ReplicaInfo, fresh: bool) -> Any:
        cfg = self.config
        return runtime.spawn(PartitionReplica, rep.actor_name, cfg.name, self.schema, rep.partition, cfg.partitions,
                             rep.replica, rep.epoch, cfg.replica_settings(), fresh, node_id=rep.node_id,
                             max_concurrency=REPLICA_THREADS)

    def _report_corrupt_log(self, rep: ReplicaInfo, recovered: dict[str, Any]) -> None:
        """Recovery cut a torn/corrupt log or skipped a bad snapshot: that is a fault to report."""
        if not recovered.get("cut") and not recovered.get("snapshots_skipped"):
            return
        now = time.time()
        report = self.book.new(CORRUPT_LOG, "recovery", now, None, _where([rep]), partitions=[rep.partition],
                               cut=recovered.get("cut"), snapshots_skipped=recovered.get("snapshots_skipped"))
        report.act(now, "cut-log", last_lsn=recovered.get("last_lsn"), replica=rep.actor_name)
        report.mark_recovered(now)
        self.book.save(report)

    def _configure_partition(self, partition: int, held: dict[str, tuple[int, int]]) -> None:
        """Cold start: the replica whose log is newest (last epoch, then LSN) leads a new epoch.

        Followers holding exactly the same (epoch, LSN) -- within one epoch one
        leader wrote one sequence, so their logs are equal -- join at once; any
        other is rebuilt from the leader (its old files are moved aside).
        """
        m = self._map()
        reps = m.of_partition(partition)
        best = max(reps, key=lambda r: (*held[r.actor_name], -r.replica))
        epoch = max(e for e, _ in (held[r.actor_name] for r in reps)) + 1
        for r in reps:
            r.role, r.epoch = (LEADER if r is best else FOLLOWER), epoch
        in_sync = [r for r in reps if r is not best and held[r.actor_name] == held[best.actor_name]]
        behind = [r for r in reps if r is not best and r not in in_sync]
        for rep in in_sync:
            self._configure(rep.actor_name, epoch, FOLLOWER, best.actor_name, {})
        self._configure(best.actor_name, epoch, LEADER, best.actor_name,
                        {r.actor_name: (self.handles[r.actor_name], held[r.actor_name][1]) for r in in_sync})
        for rep in behind:
            log.info("phase=rebuild partition=%d replica=%s held=%s leader=%s", partition, rep.actor_name,
                     held[rep.actor_name], held[best.actor_name])
            self._rebuild(best, rep)

    def _rebuild(self, leader: Any, rep: Any) -> dict[str, Any]:
        answer = runtime.call(self.handles[leader.actor_name], "add_follower", rep.actor_name,
                              self.handles[rep.actor_name], timeout_s=self.config.spawn_timeout_s)
        if "error" in answer:
            raise answer["error"]
        return answer

    def _configure(self, actor_name: str, epoch: int, role: str, leader: str, followers: dict[str, Any]) -> None:
        answer = runtime.call(self.handles[actor_name], "configure", epoch, role, leader, followers,
                              timeout_s=self.config.call_timeout_s)
        if "error" in answer:
            raise answer["error"]

    def _publish(self) -> None:
        """A new map version, persisted before anyone is told of it."""
        m = self._map()
        m.version += 1
        self.store.save_map({**m.to_dict(), "supervisor_pid": self.identity["pid"]})  # for a restart's report

    # -- watching --------------------------------------------------------------------------------

    def _start_watching(self, nodes: set[str]) -> None:
        self.membership = Membership(nodes, settle_s=MEMBERSHIP_SETTLE_S)
        self._spawn_watchdog()
        self.watcher = Watcher(WatchSettings.from_config(self.config), self._targets, self._enqueue,
                               self._on_nodes, name="ohmdb-supervisor-watch", confirm=self._confirm_silence)
        self.watcher.start()
        threading.Thread(target=self._recovery_loop, name="ohmdb-recovery", daemon=True).start()

    def _spawn_watchdog(self) -> None:
        name = watchdog_name(self.config.name)
        old = runtime.find(name)
        if old is not None:
            runtime.kill(old)
            runtime.wait_gone(name, self.config.control_timeout_s)
        self.watchdog = runtime.spawn(Watchdog, name, self.config.to_dict(), node_id=runtime.own_node_id())
        self._watchdog_identity = runtime.call(self.watchdog, "ping", control=True, timeout_s=self.config.spawn_timeout_s)

    def _targets(self) -> dict[str, Target]:
        m = self.map  # no lock: a copy of the list is consistent enough, and a failover must not stall pings
        if m is None:
            return {}
        out = {r.actor_name: Target(r.actor_name, self.handles[r.actor_name], r.role, r.partition, r.node_id, r.pid)
               for r in list(m.replicas) if r.state == SERVING and r.actor_name in self.handles}
        for node, (name, handle, ident) in list(self.probes.items()):
            out[name] = Target(name, handle, "probe", None, node, ident["pid"])
        if self.watchdog is not None:
            ident = self._watchdog_identity
            name = watchdog_name(self.config.name)
            out[name] = Target(name, self.watchdog, "watchdog", None, ident["node_id"], ident["pid"])
        coordinator = self.coordinator.target()
        if coordinator is not None:
            out[coordinator.name] = coordinator
        return out

    def _enqueue(self, event: FaultEvent) -> None:
        try:
            self._faults.put_nowait(event)
        except queue.Full:
            log.error("fault queue full (%d); dropped %s of %s", FAULT_QUEUE_MAX, event.kind, event.names)

    def _recovery_loop(self) -> None:
        while True:
            event = self._faults.get()
            try:
                self._handle(event)
            except Exception:
                log.exception("handling %s of %s failed", event.kind, event.names)

    def ping(self) -> dict[str, Any]:
        return {**self.identity, "restarted": self.restarted}

    def inject_crash(self, phase: str | None) -> bool:
        """Test hook: the supervisor process dies the next time a recovery reaches ``phase``
        (one of ``CRASH_PHASES``), as if killed exactly there."""
        if phase is not None and phase not in CRASH_PHASES:
            raise ValueError(f"unknown phase {phase!r}; known: {CRASH_PHASES}")
        self._crash_at = phase
        return True

    def _checkpoint(self, phase: str) -> None:
        if self._crash_at == phase:
            log.error("phase=%s: dying here (injected)", phase)
            os._exit(17)

    # -- fault handling ------------------------------------------------------------------------------

    def _handle(self, event: FaultEvent) -> FaultReport | None:
        """Open a report for the event and recover every actor it names; returns the report."""
        if event.kind in (HANG, NODE_LOSS) and event.node_id is not None:
            self._suspect_nodes[event.node_id] = event.detected_at
        if watchdog_name(self.config.name) in event.names:
            return self._replace_watchdog(event)
        if self.coordinator.name in event.names:
            return self.coordinator.replace(event, self.book)
        probes = [n for n in event.names if n.startswith(f"{self.config.name}:probe:")]
        if probes:
            self._probes_lost(event, probes)
            if len(probes) == len(event.names):
                return None
        with self._lock:
            m = self._map()
            reps = [r for r in m.replicas if r.actor_name in event.names and r.state != DEAD
                    and r.actor_name not in self._kept]
            if not reps:
                return None  # already handled (another signal was first)
            partitions = sorted({r.partition for r in reps})
            kind = self._localize(event, reps)
            report = self.book.new(kind, event.signal, event.detected_at, event.fault_at, _where(reps),
                                   partitions=partitions,
                                   partitions_unavailable=sorted({r.partition for r in reps if r.role == LEADER}),
                                   **event.detail)
            for p in partitions:
                lost = [r for r in reps if r.partition == p]
                if kind in (HANG, LOG_WRITE_FAILURE) and not m.serving_besides(p, {r.actor_name for r in lost}):
                    self._keep(lost, report, kind)
                    continue
                if any(r.role == LEADER for r in lost):
                    self._leader_lost(p, lost, report)
                else:
                    self._followers_lost(p, lost, report)
            if report.state != UNRECOVERED:
                report.mark_available(time.time())
            self.book.save(report)
        for p in partitions:
            self._replace_dead(p)
        self._check_redundant()
        return report

    def _process_state(self, node_id: str | None, pid: int | None) -> str | None:
        """running / stopped / gone from the actor's node (directly here, else through its probe); ``PROBE_SLOW``
        when the probe did not answer in time (a loaded machine), None when it cannot be asked."""
        if node_id is None or pid is None:
            return None
        if node_id == self.identity["node_id"]:
            return runtime.process_state(node_id, pid)
        probe = self.probes.get(node_id)
        if probe is None:
            return None
        try:
            return runtime.call(probe[1], "process_state", pid, control=True, timeout_s=PROCESS_STATE_TIMEOUT_S)
        except Timeout:
            return PROBE_SLOW
        except OhmError:
            return None

    def _confirm_silence(self, target: Target, silence_s: float) -> bool:
        """A silence is a hang at the timeout ceiling, or before it on what the process table of the actor's
        node says (``silence_confirmed``); a probe's silence only marks its node unreachable (the minority
        rule), at the ceiling."""
        ceiling_s = self.config.heartbeat_timeout_max_ms / 1000
        if target.role == "probe" or silence_s >= ceiling_s:
            return silence_s >= ceiling_s
        return silence_confirmed(self._process_state(target.node_id, target.pid), silence_s, ceiling_s)

    def _localize(self, event: FaultEvent, reps: list[ReplicaInfo]) -> str:
        """Refine a silence with what the process table says (on this node): stopped, running, or gone."""
        if event.kind != HANG:
            return event.kind
        states = {r.actor_name: self._process_state(r.node_id, r.pid) for r in reps}
        event.detail["process"] = states
        return CRASH if all(s == "gone" for s in states.values()) else HANG

    def _keep(self, lost: list[ReplicaInfo], report: FaultReport, kind: str) -> None:
        """Leave the partition's failing last replicas in place; a hung one that answers again closes the report."""
        self._kept.update(r.actor_name for r in lost)
        report.mark_unrecovered(time.time(), f"partition {lost[0].partition}: no other replica to take over; the "
                                             "failing one is kept (killing it could only lose data)", action="kept")
        if kind != HANG or self.watcher is None:
            return

        def answered(names: tuple[str, ...] = tuple(r.actor_name for r in lost)) -> None:
            self._kept.difference_update(names)
            report.act(time.time(), "answered-again")
            report.mark_recovered(time.time())
            self.book.save(report)

        for rep in lost:
            self.watcher.hold(rep.actor_name, answered)

    def _kill(self, rep: ReplicaInfo, report: FaultReport | None) -> None:
        """Kill for good; SIGKILL the process too when its node is alive (a paused process never wakes)."""
        rep.state = DEAD
        runtime.kill(self.handles.get(rep.actor_name))
        if report is None or report.kind != NODE_LOSS:
            runtime.kill_process(rep.node_id, rep.pid)
        if report is not None:
            report.act(time.time(), "kill", replica=rep.actor_name, pid=rep.pid)

    def _leader_lost(self, partition: int, lost: list[ReplicaInfo], report: FaultReport) -> None:
        """Replace a lost leader: fence the others first, then kill the lost ones for good, then promote.

        A leader that is only silent or lost its log (not gone) is killed only once another replica
        answered the fence: if none can take over (say the others sit on a node being lost at the same
        time), the failing leader is kept, since killing it could only lose data.
        """
        old_lsn = self._last_written(lost)
        gone = report.kind not in (HANG, LOG_WRITE_FAILURE)
        new = self._elect(partition, report, replacing=lost, kill_if_alone=gone)
        if new is not None and old_lsn is not None:
            report.impact["records_not_replicated"] = max(0, old_lsn - new[1])

    def _last_written(self, reps: list[ReplicaInfo]) -> int | None:
        replies = [self.watcher.last_reply.get(r.actor_name) if self.watcher else None for r in reps]
        lsns = [a["written_lsn"] for a in replies if a]
        return max(lsns) if lsns else None

    def _elect(self, partition: int, report: FaultReport | None, replacing: Sequence[ReplicaInfo] = (),
               kill_if_alone: bool = True) -> tuple[ReplicaInfo, int] | None:
        """Fence every live replica into a new epoch, promote the most advanced one, publish.

        Phases (each logged): fence (epoch + 1 on every live replica but the
        ``replacing`` ones, which stops them accepting an old leader), kill the
        ``replacing`` ones (unless no other replica answered and not
        ``kill_if_alone``: then they are kept and nothing is promoted), choose
        (highest LSN held), promote (the new leader first sends the others what
        they miss), publish.
        """
        m = self._map()
        epoch = max(r.epoch for r in m.of_partition(partition)) + 1
        log.warning("phase=fence partition=%d epoch=%d", partition, epoch)
        names = {r.actor_name for r in replacing}
        candidates = [r for r in m.of_partition(partition) if r.state == SERVING and r.actor_name not in names]
        refs = [runtime.submit(self.handles[r.actor_name], "fence", epoch) for r in candidates]
        held: dict[int, int] = {}
        for rep, answer in zip(candidates, runtime.get_each(refs, self.config.control_timeout_s, what="fence")):
            if isinstance(answer, OhmError):
                self._kill(rep, report)
                continue
            rep.epoch, rep.role = max(epoch, answer["epoch"]), FOLLOWER
            held[rep.replica] = answer["written_lsn"]
        _act(report, "fence", epoch=epoch, replicas=sorted(r.actor_name for r in candidates if r.replica in held))
        if replacing and not held and not kill_if_alone and report is not None:
            log.error("phase=keep partition=%d: no other replica answered the fence", partition)
            self._keep(list(replacing), report, report.kind)
            return None
        for rep in replacing:
            self._kill(rep, report)
            rep.role = FOLLOWER
        self._checkpoint("fenced")
        chosen = choose_leader(held)
        if chosen is None:
            self._publish()
            log.error("phase=unavailable partition=%d: no live replica", partition)
            if report is not None:
                report.mark_unrecovered(time.time(), f"partition {partition} has no live replica: PARTITION_UNAVAILABLE "
                                                     "until it is restarted from disk")
            return None
        new = next(r for r in candidates if r.replica == chosen)
        log.warning("phase=promote partition=%d replica=%s lsn=%d", partition, new.actor_name, held[chosen])
        followers = {r.actor_name: (self.handles[r.actor_name], held[r.replica])
                     for r in candidates if r.replica in held and r.replica != chosen}
        answer = runtime.call(self.handles[new.actor_name], "promote", epoch, new.actor_name, followers,
                              timeout_s=self.config.call_timeout_s)
        if "error" in answer:
            raise answer["error"]
        new.role = LEADER
        self._checkpoint("promoted")
        for r in candidates:
            if r.replica != chosen and r.actor_name not in answer["followers"] and r.state == SERVING:
                self._kill(r, report)
        for r in candidates:
            if r.actor_name in answer["followers"]:
                self._configure(r.actor_name, epoch, FOLLOWER, new.actor_name, {})
        if self.halted is not None:
            runtime.call(self.handles[new.actor_name], "halt", self.halted, control=True,
                         timeout_s=self.config.control_timeout_s)
        self._publish()
        _act(report, "promote", replica=new.actor_name, lsn=held[chosen], epoch=epoch)
        log.warning("phase=published partition=%d leader=%s epoch=%d version=%d", partition, new.actor_name, epoch, m.version)
        return new, held[chosen]

    def _followers_lost(self, partition: int, lost: list[ReplicaInfo], report: FaultReport | None) -> None:
        """Kill lost followers and take them out of the leader's configuration so acknowledgements go on."""
        m = self._map()
        for rep in lost:
            log.warning("phase=drop-follower partition=%d replica=%s", partition, rep.actor_name)
            self._kill(rep, report)
        leaders = [r for r in m.of_partition(partition) if r.role == LEADER and r.state == SERVING]
        if leaders:
            leader = leaders[0]
            live = [r for r in m.of_partition(partition) if r.role == FOLLOWER and r.state == SERVING]
            self._configure(leader.actor_name, leader.epoch, LEADER, leader.actor_name,
                            {r.actor_name: (self.handles[r.actor_name], 0) for r in live})
            _act(report, "drop-follower", leader=leader.actor_name, followers=[r.actor_name for r in live])
        self._publish()

    # -- reports from clients and leaders ------------------------------------------------------------

    def leader_failed(self, partition: int, version_seen: int) -> dict[str, Any]:
        """A client found the partition's leader dead or its log failed: recover if not done yet; the routing."""
        with self._lock:
            m = self._map()
            lead = [r for r in m.of_partition(partition) if r.role == LEADER and r.state == SERVING]
            if not lead or m.version > version_seen:
                return self._routing()
            name = lead[0].actor_name
            alive = runtime.get_each([runtime.submit(self.handles[name], "ping", control=True)],
                                     self.config.control_timeout_s, what="ping")[0]
            if isinstance(alive, ActorDied):
                kind, signal = CRASH, "client-saw-death"
            elif isinstance(alive, dict) and alive.get("log_failed"):
                kind, signal = LOG_WRITE_FAILURE, "client-saw-log-failure"
            else:
                return self._routing()  # the client saw an older leader; this one answers
        self._handle(FaultEvent(kind, signal, [name], lead[0].node_id, time.time(), self._heard(name)))
        return self.routing()

    def follower_failed(self, partition: int, actor_name: str, epoch: int, code: str = "ACTOR_DIED") -> str | None:
        """A leader could not replicate to a follower: that follower is taken out and replaced.

        ``NOT_A_MEMBER`` when the map holds no live follower of that name (a rebuild an earlier
        incarnation of this supervisor started and this one killed, or one already replaced): the
        leader drops it from its configuration instead of waiting for it.
        """
        kind = LOG_WRITE_FAILURE if code == "LOG_WRITE_FAILED" else CRASH
        with self._lock:
            m = self._map()
            rep = next((r for r in m.of_partition(partition) if r.actor_name == actor_name), None)
            if rep is None or rep.state == DEAD:
                current = any(r.role == LEADER and r.state == SERVING and r.epoch == epoch for r in m.of_partition(partition))
                return NOT_A_MEMBER if current else None
            if rep.role != FOLLOWER:
                return None
        report = self._handle(FaultEvent(kind, f"leader-saw-{code.lower()}", [actor_name], rep.node_id, time.time(),
                                         self._heard(actor_name)))
        return None if report is None else "replacing"

    def _heard(self, name: str) -> float | None:
        return self.watcher.last_heard(name) if self.watcher else None

    def routing(self) -> dict[str, Any]:
        """Leader handles by partition (None: no live replica), with the map version they belong to."""
        with self._lock:
            return self._routing()

    def _routing(self) -> dict[str, Any]:
        m = self._map()
        leaders = []
        for p in range(m.partitions):
            lead = [r for r in m.of_partition(p) if r.role == LEADER and r.state == SERVING]
            leaders.append(self.handles[lead[0].actor_name] if lead else None)
        return {"version": m.version, "leaders": leaders}

    # -- replacement: back to k+1 replicas ------------------------------------------------------------

    def _replace_dead(self, partition: int, attempt: int = 1) -> None:
        """Start one background replacement per dead replica of the partition (if it has a leader)."""
        with self._lock:
            m = self._map()
            if not any(r.role == LEADER and r.state == SERVING for r in m.of_partition(partition)):
                return
            for rep in m.of_partition(partition):
                if rep.state == DEAD and (partition, rep.replica) not in self._replacing:
                    self._replacing.add((partition, rep.replica))
                    threading.Thread(target=self._replace, args=(partition, rep.replica, attempt), daemon=True,
                                     name=f"replace-p{partition}-r{rep.replica}").start()

    def _placement_nodes(self) -> list[str]:
        """Live nodes, without those where a replica went silent lately (unless no other is left)."""
        alive = [n["node_id"] for n in runtime.alive_nodes()]
        return trusted_nodes(alive, self._suspect_nodes, time.time(), SUSPECT_NODE_S)

    def _replace(self, partition: int, replica: int, attempt: int) -> None:
        started = time.time()
        retry = False
        try:
            with self._lock:
                m = self._map()
                old = next(r for r in m.of_partition(partition) if r.replica == replica)
                leader = m.leader(partition)
                node = m.replacement_node(partition, self._placement_nodes())
                new = ReplicaInfo(partition, replica, replica_name(m.name, partition, replica, old.generation + 1),
                                  FOLLOWER, epoch=leader.epoch, node_id=node, generation=old.generation + 1)
                m.replicas[m.replicas.index(old)] = new
                self.handles[new.actor_name] = self._spawn_replica(new, fresh=True)
                self._publish()
                self._act_on_partition(partition, "respawn", replica=new.actor_name, node=node)
            log.warning("phase=respawn partition=%d replica=%s node=%s", partition, new.actor_name, node)
            self._checkpoint("respawned")
            answer = runtime.call(self.handles[new.actor_name], "status", control=True, timeout_s=self.config.spawn_timeout_s)
            new.node_id, new.pid = answer["node_id"], answer["pid"]
            log.warning("phase=rebuild partition=%d replica=%s from=%s", partition, new.actor_name, leader.actor_name)
            result = self._rebuild(leader, new)
            with self._lock:
                current = [r for r in self._map().of_partition(partition) if r.role == LEADER and r.state == SERVING]
                if not current or current[0] is not leader or new.state != STARTING:
                    raise RuntimeError(f"the leader changed while {new.actor_name} was rebuilt from {leader.actor_name}")
                new.state = SERVING
                self._publish()
                self._act_on_partition(partition, "rebuilt", replica=new.actor_name, rows=result["rows"],
                                       seconds=round(result["seconds"], 3))
            self.rebuilds.append({"partition": partition, "replica": new.actor_name, **result,
                                  "total_s": round(time.time() - started, 3)})
            log.warning("phase=redundant partition=%d replica=%s rows=%d seconds=%.3f",
                        partition, new.actor_name, result["rows"], result["seconds"])
        except Exception as exc:  # the leader changed or died meanwhile: try again, a bounded number of times
            log.error("replacement of p%d r%d failed (attempt %d): %s", partition, replica, attempt, exc)
            with self._lock:
                rep = next((r for r in self._map().of_partition(partition) if r.replica == replica), None)
                if rep is not None and rep.state != SERVING:
                    self._kill(rep, None)
            retry = attempt < REPLACE_ATTEMPTS_MAX
        finally:
            with self._lock:
                self._replacing.discard((partition, replica))
        if retry:
            time.sleep(REPLACE_RETRY_S)
            self._replace_dead(partition, attempt + 1)
        self._check_redundant()

    def _act_on_partition(self, partition: int, action: str, **detail: Any) -> None:
        now = time.time()
        for report in self.book.touching(partition):
            report.act(now, action, **detail)
            self.book.save(report)

    def _check_redundant(self) -> None:
        """Close every open report whose partitions are all back at k+1 serving replicas."""
        with self._lock:
            full = self._map().fully_replicated()
            now = time.time()
            for report in list(self.book.open.values()):
                if report.state != UNRECOVERED and set(report.impact.get("partitions", [])) <= full:
                    report.mark_recovered(now)
                    self.book.save(report)

    # -- the watchdog ---------------------------------------------------------------------------------

    def _replace_watchdog(self, event: FaultEvent) -> FaultReport:
        ident = self._watchdog_identity
        where = {"node": ident["node_id"], "actors": [{"actor": watchdog_name(self.config.name), "role": "watchdog",
                                                       "partition": None, "pid": ident["pid"]}]}
        report = self.book.new(event.kind, event.signal, event.detected_at, event.fault_at, where, partitions=[])
        runtime.kill(self.watchdog)
        runtime.kill_process(ident["node_id"], ident["pid"])
        self._spawn_watchdog()
        report.act(time.time(), "respawn", replica=watchdog_name(self.config.name))
        report.mark_recovered(time.time())
        self.book.save(report)
        return report

    # -- node probes --------------------------------------------------------------------------------

    def _ensure_probes(self, alive: set[str]) -> None:
        now = time.time()
        for node in list(self.probes):
            # Ray says the node is gone (so is its probe), or a silent probe never answered again: replace it
            if node not in alive or now - self._unreachable.get(node, now) >= PROBE_RESPAWN_S:
                gone = self.probes.pop(node, None)
                if gone is not None:
                    runtime.kill(gone[1])
        for node in alive:
            recently_lost = now - self._unreachable.get(node, -PROBE_RESPAWN_S) < PROBE_RESPAWN_S
            if node not in self.probes and node not in self._probes_starting and not recently_lost:
                self._probes_starting.add(node)
                threading.Thread(target=self._start_probe, args=(node,), daemon=True,
                                 name=f"probe-{node[:8]}").start()

    def _start_probe(self, node: str) -> None:
        """Spawn a probe on ``node``; it is watched once it has answered (a slow start is not a fault)."""
        name = probe_name(self.config.name, node)
        try:
            old = runtime.find(name)
            if old is not None:
                runtime.kill(old)
                runtime.wait_gone(name, self.config.control_timeout_s)
            handle = runtime.spawn(NodeProbe, name, node_id=node)
            ident = runtime.call(handle, "ping", control=True, timeout_s=self.config.spawn_timeout_s)
            self.probes[node] = (name, handle, ident)
            self._unreachable.pop(node, None)
        except Exception as exc:  # the node is gone or full: it stays unprobed (and unreachable if it was lost)
            log.warning("probe on node %s did not start: %s", node[:12], exc)
        finally:
            self._probes_starting.discard(node)

    def _probes_lost(self, event: FaultEvent, names: list[str]) -> None:
        """A probe went silent or died: its node counts as unreachable until a probe answers there again.

        A silent probe is kept and pinged on (a loaded node answers again, and is reachable at once); a
        dead one, or a silent one that did not answer within ``PROBE_RESPAWN_S``, is replaced
        (``_ensure_probes``).
        """
        now = time.time()
        silent = event.signal == "heartbeat-silence" and self.watcher is not None
        for node, (name, handle, ident) in list(self.probes.items()):
            if name not in names:
                continue
            self._unreachable[node] = now
            self._suspect_nodes[node] = now
            if silent:
                self.watcher.hold(name, lambda node=node: self._unreachable.pop(node, None))
            else:
                del self.probes[node]
                runtime.kill(handle)
            others = [n for n in event.names if n not in names]
            if not others:  # a node holding no replica (the others report their node loss themselves)
                where = {"node": node, "actors": [{"actor": name, "role": "probe", "partition": None,
                                                   "pid": ident.get("pid")}]}
                report = self.book.new(NODE_LOSS, event.signal, event.detected_at, event.fault_at, where,
                                       partitions=[])
                report.mark_recovered(now)
                self.book.save(report)

    # -- restart -------------------------------------------------------------------------------------

    def _resume(self) -> None:
        """Ray restarted us: reload the map, re-check every actor, repair, then watch again."""
        started = time.time()
        data = self.store.load_map()
        log.warning("phase=resume-load cluster=%s map=%s", self.config.name, "found" if data else "missing")
        if data is None:
            return  # died before the first map was saved: the creating driver gives up and cleans up
        note = self._watchdog_note()
        if note.get("fault_at") is None:
            note["fault_at"] = self._last_heard_by_watchdog()
        report = self.book.new(SUPERVISOR_RESTART, note.get("signal", "ray-restart"), note.get("detected_at", started),
                               note.get("fault_at"), {"node": self.identity["node_id"], "actors": [
                                   {"actor": f"{self.config.name}:supervisor", "role": "supervisor", "partition": None,
                                    "pid": note.get("pid") or data.get("supervisor_pid")}]},
                               partitions=[], cause=note.get("kind", CRASH),
                               process=note.get("process"))
        report.act(started, "restarted", pid=self.identity["pid"], map_version=data.get("version"))
        with self._lock:
            self.map = ClusterMap.from_dict({k: v for k, v in data.items() if k != "supervisor_pid"})
            self._recheck(report)
            report.act(time.time(), "rechecked", dead=[r.actor_name for r in self.map.replicas if r.state == DEAD])
            report.impact["partitions"] = sorted({r.partition for r in self.map.replicas if r.state == DEAD})
            self._publish()
            report.mark_available(time.time())
            self.book.save(report)
        self.coordinator.ensure()
        log.warning("phase=resume-watch cluster=%s", self.config.name)
        self._start_watching({n["node_id"] for n in runtime.alive_nodes()})
        report.act(time.time(), "watching")
        self.book.save(report)
        for p in range(self.map.partitions):
            self._replace_dead(p)
        self._check_redundant()

    def _watchdog_note(self) -> dict[str, Any]:
        raw = runtime.kv_get(WATCHDOG_NOTE_KEY.format(cluster=self.config.name))
        note = json.loads(raw) if raw else {}
        return note if note and time.time() - note.get("detected_at", 0) < WATCHDOG_NOTE_S else {}

    def _last_heard_by_watchdog(self) -> float | None:
        watchdog = runtime.find(watchdog_name(self.config.name))
        if watchdog is None:
            return None
        try:
            return runtime.call(watchdog, "last_heard", control=True, timeout_s=self.config.control_timeout_s)
        except OhmError:
            return None

    def _recheck(self, report: FaultReport) -> None:
        """Ask every actor of the map; keep what is consistent, kill the rest, elect where needed."""
        m = self._map()
        for rep in m.replicas:
            handle = runtime.find(rep.actor_name) if rep.state != DEAD else None
            if handle is None:
                rep.state = DEAD
            else:
                self.handles[rep.actor_name] = handle
        live = [r for r in m.replicas if r.state != DEAD]
        refs = [runtime.submit(self.handles[r.actor_name], "status", control=True) for r in live]
        answers = dict(zip([r.actor_name for r in live],
                           runtime.get_each(refs, self.config.control_timeout_s, what="status")))
        for rep in live:
            a = answers[rep.actor_name]
            if isinstance(a, OhmError) or rep.state == STARTING:  # a rebuild the old supervisor did not finish
                self._kill(rep, report)
            else:
                rep.epoch, rep.role, rep.node_id, rep.pid = a["epoch"], a["role"], a["node_id"], a["pid"]
        for p in range(m.partitions):
            if not m.consistent(p, {name: a["leader"] for name, a in answers.items() if isinstance(a, dict)}):
                log.warning("phase=resume-elect partition=%d", p)
                self._elect(p, report)
                continue
            serving = [r for r in m.of_partition(p) if r.state == SERVING]
            lead = [r for r in serving if r.role == LEADER]
            if not lead:
                continue
            held = answers[lead[0].actor_name]["followers"]
            stray = [r for r in serving if r.role != LEADER and r.actor_name not in held]
            known = {r.actor_name for r in serving}
            extra = [name for name in held if name not in known]
            # stray: followed the leader but was never (or no longer) in its configuration; extra: in the
            # leader's configuration but killed above (a rebuild the old supervisor did not finish).
            if stray or extra:
                self._followers_lost(p, stray, report)

    # -- viability ---------------------------------------------------------------------------------

    def _on_nodes(self, alive: set[str]) -> None:
        """Called by the watcher with Ray's live nodes: reclassify hangs on lost nodes, apply the minority rule."""
        now = time.time()
        self._ensure_probes(alive)
        reachable = {n for n in alive if n not in self._unreachable}
        with self._lock:
            for report in list(self.book.recent()):
                node = report.where.get("node")
                # a silence, or a death Ray reported first (the ping failed before the node was declared dead)
                if report.kind in (HANG, CRASH) and isinstance(node, str) and node not in alive \
                        and now - report.detected_at <= NODE_LOSS_RECLASSIFY_S:
                    report.kind = NODE_LOSS
                    report.act(now, "reclassified", reason="Ray reports the node dead")
                    self.book.save(report)
            membership = self.membership
            changed = membership.observe(reachable, now) if membership is not None else None
        if changed is not None:
            self._set_halted(None if changed.viable else changed.reason)

    def _set_halted(self, reason: str | None) -> None:
        log.error("phase=%s reason=%s", "halt" if reason else "resume-writes", reason)
        self.halted = reason
        with self._lock:
            m = self._map()
            leaders = [r for r in m.replicas if r.role == LEADER and r.state == SERVING]
        self._ask_all({r.actor_name: self.handles[r.actor_name] for r in leaders}, "halt", reason)

    # -- inspection ---------------------------------------------------------------------------------

    def describe(self) -> tuple[dict[str, Any], Schema]:
        return self.config.to_dict(), self.schema

    def faults(self) -> list[dict[str, Any]]:
        return self.store.reports()

    def status(self) -> dict[str, Any]:
        """The map joined with each replica's live answer (or 'unreachable') and its heartbeat health."""
        with self._lock:  # copies: the map may change while we wait for the answers
            m = self._map()
            reps = [dataclasses.replace(r) for r in m.replicas]
            version = m.version
        health = self.watcher.health(time.time()) if self.watcher else {}
        asked = {r.actor_name: self.handles[r.actor_name] for r in reps if r.state != DEAD}
        coordinator = self.coordinator.handle
        if coordinator is not None:
            asked[self.coordinator.name] = coordinator
        answers = self._ask_all(asked, "status", health=health)
        replicas = []
        for rep in reps:
            answer = answers.get(rep.actor_name, ActorDied("removed from the configuration"))
            entry = {"partition": rep.partition, "replica": rep.replica, "actor_name": rep.actor_name,
                     "role": rep.role, "state": rep.state, "epoch": rep.epoch, "node_id": rep.node_id, "pid": rep.pid,
                     "heartbeat": health.get(rep.actor_name)}
            if isinstance(answer, OhmError):
                entry.update(health="unreachable", error=answer.code)
            else:
                entry.update(health="ok" if not answer["log_failed"] else "log-failed", **{
                    k: answer[k] for k in ("rows", "committed", "aborted", "failed", "durability", "written_lsn",
                                           "durable_lsn", "fsyncs", "batches_written", "log_failed", "leader",
                                           "followers", "snapshots_taken", "installs", "last_snapshot", "recovery",
                                           "mp_open", "mp_pending", "mp_committed", "mp_aborted")
                })
            replicas.append(entry)
        return {
            "name": self.config.name,
            "map_version": version,
            "partitions": m.partitions,
            "k": m.k,
            "replicas": replicas,
            "coordinator": _coordinator_status(answers.get(self.coordinator.name) if coordinator else None),
            "leaders": {p: next((r.actor_name for r in reps if r.partition == p and r.role == LEADER and r.state == SERVING),
                                None) for p in range(m.partitions)},
            "nodes": runtime.alive_nodes(),
            "supervisor": {"actor_name": f"{self.config.name}:supervisor", **self.identity, "restarted": self.restarted},
            "halted": self.halted,
            "members": sorted(self.membership.members) if self.membership is not None else [],
            "probes": {node: {"actor_name": name, "pid": ident.get("pid"), "reachable": node not in self._unreachable}
                       for node, (name, _, ident) in list(self.probes.items())},
            "faults_open": len(self.book.open),
            "rebuilds": list(self.rebuilds),
            "counts": _totals(replicas, {t.name for t in self.schema.tables.values() if t.replicated}),
        }

    def _ask_all(self, handles: dict[str, Any], method: str, *args: Any,
                 health: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """``method(*args)`` on every actor at once (control group); each answer or typed error, by name.

        Answers are awaited up to the control timeout, except those of actors already silent past their
        heartbeat timeout (on a lost node, say): taken if in by then, else a Timeout.  So a status call,
        or a halt from the watch thread, never waits on a silent actor.
        """
        if health is None:
            health = self.watcher.health(time.time()) if self.watcher else {}
        refs = {name: runtime.submit(handle, method, *args, control=True) for name, handle in handles.items()}
        silent = {name for name in refs if name in health and health[name]["silence_s"] > health[name]["timeout_s"]}
        out: dict[str, Any] = {}
        for names, timeout_s in (([n for n in refs if n not in silent], self.config.control_timeout_s),
                                 ([n for n in refs if n in silent], 0.0)):
            out.update(zip(names, runtime.get_each([refs[n] for n in names], timeout_s, what=method)))
        return out

    def shutdown(self) -> int:
        """Stop watching, flush every replica's log, then kill it; the caller then kills this actor."""
        if self.watcher is not None:
            self.watcher.stop()
        if self.watchdog is not None:
            runtime.kill(self.watchdog)
        self.coordinator.kill()
        for _, handle, _ in list(self.probes.values()):
            runtime.kill(handle)
        m = self._map()
        refs = [runtime.submit(self.handles[r.actor_name], "close") for r in m.replicas if r.state != DEAD]
        runtime.get_each(refs, self.config.call_timeout_s, what="close")  # a dead replica has nothing to flush
        for rep in m.replicas:
            runtime.kill(self.handles.get(rep.actor_name))
            rep.state = DEAD
        if isinstance(self.store, KVStore):
            self.store.clear()
        return len(m.replicas)

    def _map(self) -> ClusterMap:
        if self.map is None:
            raise RuntimeError("supervisor not started")
        return self.map


def _open_store(cfg: ClusterConfig) -> DirStore | KVStore:
    if cfg.data_dir:
        return DirStore(cfg.data_dir)
    return KVStore(f"cluster:{cfg.name}", runtime.kv_get, runtime.kv_put)


def _where(reps: list[ReplicaInfo]) -> dict[str, Any]:
    nodes = sorted({r.node_id for r in reps if r.node_id})
    return {"node": nodes[0] if len(nodes) == 1 else nodes,
            "actors": [{"actor": r.actor_name, "partition": r.partition, "role": r.role, "pid": r.pid} for r in reps]}


def _act(report: FaultReport | None, action: str, **detail: Any) -> None:
    if report is not None:
        report.act(time.time(), action, **detail)


def _totals(replicas: list[dict[str, Any]], replicated: set[str]) -> dict[str, Any]:
    """Sums over serving leaders; a replicated table counts one copy."""
    leaders = [r for r in replicas if r["role"] == "leader" and "rows" in r]
    rows: dict[str, int] = {}
    for r in leaders:
        for table, n in r["rows"].items():
            rows[table] = n if table in replicated else rows.get(table, 0) + n
    return {
        "committed": sum(r["committed"] for r in leaders),
        "aborted": sum(r["aborted"] for r in leaders),
        "failed": sum(r["failed"] for r in leaders),
        "rows": rows,
        "replicas_ok": sum(1 for r in replicas if r["health"] == "ok"),
        "replicas_total": len(replicas),
    }


def _coordinator_status(answer: Any) -> dict[str, Any] | None:
    if answer is None:
        return None
    return {"error": answer.message[:200]} if isinstance(answer, OhmError) else answer
