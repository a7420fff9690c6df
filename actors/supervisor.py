"""The supervisor actor: creates the partition replicas and owns the cluster map.

Design note
-----------
One detached, named supervisor per cluster (``<name>:supervisor``).  It plans
placement with the pure ``ClusterMap.plan``, spawns every replica through
``runtime``, and from then on is the only writer of the map.  Clients ask it
for routing (leader handles tagged with the map version) and status;
``Cluster.connect`` asks it for the schema and config.

Faults reach it as reports: a client whose leader died calls
``leader_failed`` (fence, choose by ``recovery.replication.choose_leader``,
promote with repair, publish), a leader whose follower died calls
``follower_failed`` (drop it from the configuration).  Either way a background
thread then respawns the lost replica on a free node and has the leader
rebuild it while writes go on.  Every phase is logged.  Heartbeats for hung
actors, fault reports and a restartable supervisor come with the supervisor
work; the decisions stay in the pure modules.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from actors import runtime
from actors.config import ClusterConfig
from actors.errors import ActorDied, OhmError
from actors.partition_actor import PartitionReplica
from actors.schema import Schema
from recovery.cluster_map import DEAD, FOLLOWER, LEADER, SERVING, STARTING, ClusterMap, ReplicaInfo, replica_name
from recovery.replication import choose_leader

log = logging.getLogger("ohmdb.supervisor")

#: Attempts to replace one lost replica before waiting for the next fault report.
REPLACE_ATTEMPTS_MAX = 5
#: Pause between two attempts.
REPLACE_RETRY_S = 0.5


class Supervisor:
    def __init__(self, config: dict[str, Any], schema: Schema) -> None:
        self.config = ClusterConfig(**config).validate()
        self.schema = schema
        self.map: ClusterMap | None = None
        self.handles: dict[str, Any] = {}
        self._lock = threading.RLock()         # the map: actor methods and replacement threads
        self._replacing: set[tuple[int, int]] = set()
        self.rebuilds: list[dict[str, Any]] = []
        self.started_at = time.time()
        self.identity = runtime.own_identity()

    def start(self) -> dict[str, Any]:
        """Spawn every replica and wait until each answers; return the map."""
        cfg = self.config
        nodes = [n["node_id"] for n in runtime.alive_nodes()]
        self.map = ClusterMap.plan(cfg.name, cfg.partitions, k=cfg.k, nodes=nodes)
        log.info("phase=spawn cluster=%s partitions=%d nodes=%d", cfg.name, cfg.partitions, len(nodes))
        for rep in self.map.replicas:
            self.handles[rep.actor_name] = runtime.spawn(
                PartitionReplica, rep.actor_name, cfg.name, self.schema, rep.partition, cfg.partitions,
                rep.replica, rep.epoch, cfg.replica_settings(), node_id=rep.node_id,
            )
        log.info("phase=await-ready cluster=%s", cfg.name)
        refs = [runtime.submit(self.handles[r.actor_name], "status", control=True) for r in self.map.replicas]
        held: dict[str, tuple[int, int]] = {}
        for rep, answer in zip(self.map.replicas, runtime.get_each(refs, cfg.spawn_timeout_s, what="replica start")):
            if isinstance(answer, OhmError):
                raise answer
            rep.node_id, rep.pid, rep.state = answer["node_id"], answer["pid"], SERVING
            recovered = answer["recovery"] or {}
            held[rep.actor_name] = (recovered.get("last_epoch", 0), answer["written_lsn"])
        log.info("phase=configure cluster=%s k=%d", cfg.name, cfg.k)
        for p in range(self.map.partitions):
            self._configure_partition(p, held)
        log.info("phase=serving cluster=%s", cfg.name)
        return self.map.to_dict()

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

    def leader_failed(self, partition: int, version_seen: int) -> dict[str, Any]:
        with self._lock:
            routing = self._leader_failed(partition, version_seen)
        self._replace_dead(partition)
        return routing

    def _leader_failed(self, partition: int, version_seen: int) -> dict[str, Any]:
        """A client found the partition's leader dead: fence, promote the most advanced live follower.

        Phases (each logged): fence (epoch + 1 on every live follower, which
        stops them accepting the old leader), choose (highest LSN held),
        promote (the new leader first sends the others what they miss), publish.
        """
        m = self._map()
        leader = m.leader(partition) if any(r.role == LEADER for r in m.of_partition(partition)) else None
        if m.version > version_seen and leader is not None and leader.state == SERVING:
            return self._routing()
        epoch = max(r.epoch for r in m.of_partition(partition)) + 1
        log.warning("phase=fence partition=%d epoch=%d", partition, epoch)
        if leader is not None:
            leader.state, leader.role = DEAD, FOLLOWER
            runtime.kill(self.handles[leader.actor_name])  # a hung leader must not act when it wakes
        candidates = [r for r in m.of_partition(partition) if r.state == SERVING]
        refs = [runtime.submit(self.handles[r.actor_name], "fence", epoch) for r in candidates]
        held: dict[int, int] = {}
        for rep, answer in zip(candidates, runtime.get_each(refs, self.config.control_timeout_s, what="fence")):
            if isinstance(answer, OhmError):
                rep.state = DEAD
                runtime.kill(self.handles[rep.actor_name])
                continue
            rep.epoch = epoch
            held[rep.replica] = answer["written_lsn"]
        chosen = choose_leader(held)
        m.version += 1
        if chosen is None:
            log.error("phase=unavailable partition=%d: no live replica", partition)
            return self._routing()
        new = next(r for r in candidates if r.replica == chosen)
        log.warning("phase=promote partition=%d replica=%s lsn=%d", partition, new.actor_name, held[chosen])
        followers = {r.actor_name: (self.handles[r.actor_name], held[r.replica])
                     for r in candidates if r.replica in held and r.replica != chosen}
        answer = runtime.call(self.handles[new.actor_name], "promote", epoch, new.actor_name, followers,
                              timeout_s=self.config.call_timeout_s)
        if "error" in answer:
            raise answer["error"]
        new.role = LEADER
        for r in candidates:
            if r.replica != chosen and r.actor_name not in answer["followers"] and r.state == SERVING:
                r.state = DEAD
                runtime.kill(self.handles[r.actor_name])
        for r in candidates:
            if r.actor_name in answer["followers"]:
                self._configure(r.actor_name, epoch, FOLLOWER, new.actor_name, {})
        log.warning("phase=published partition=%d leader=%s epoch=%d version=%d", partition, new.actor_name, epoch, m.version)
        return self._routing()

    def follower_failed(self, partition: int, actor_name: str, epoch: int) -> bool:
        """A leader lost a follower: take it out of the configuration so acknowledgements go on."""
        with self._lock:
            dropped = self._follower_failed(partition, actor_name, epoch)
        self._replace_dead(partition)
        return dropped

    def _follower_failed(self, partition: int, actor_name: str, epoch: int) -> bool:
        m = self._map()
        rep = next((r for r in m.of_partition(partition) if r.actor_name == actor_name), None)
        if rep is None or rep.state == DEAD or rep.role != FOLLOWER:
            return False
        log.warning("phase=drop-follower partition=%d replica=%s epoch=%d", partition, actor_name, epoch)
        rep.state = DEAD
        runtime.kill(self.handles[actor_name])
        m.version += 1
        leader = m.leader(partition)
        live = [r for r in m.of_partition(partition) if r.role == FOLLOWER and r.state == SERVING]
        self._configure(leader.actor_name, leader.epoch, LEADER, leader.actor_name,
                        {r.actor_name: (self.handles[r.actor_name], 0) for r in live})
        return True

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

    def _replace(self, partition: int, replica: int, attempt: int) -> None:
        started = time.time()
        retry = False
        try:
            with self._lock:
                m = self._map()
                old = next(r for r in m.of_partition(partition) if r.replica == replica)
                leader = m.leader(partition)
                node = m.replacement_node(partition, [n["node_id"] for n in runtime.alive_nodes()])
                new = ReplicaInfo(partition, replica, replica_name(m.name, partition, replica, old.generation + 1),
                                  FOLLOWER, epoch=leader.epoch, node_id=node, generation=old.generation + 1)
                m.replicas[m.replicas.index(old)] = new
                self.handles[new.actor_name] = runtime.spawn(
                    PartitionReplica, new.actor_name, m.name, self.schema, partition, m.partitions, replica,
                    leader.epoch, self.config.replica_settings(), True, node_id=node,
                )
                m.version += 1
            log.warning("phase=respawn partition=%d replica=%s node=%s", partition, new.actor_name, node)
            answer = runtime.call(self.handles[new.actor_name], "status", control=True, timeout_s=self.config.spawn_timeout_s)
            new.node_id, new.pid = answer["node_id"], answer["pid"]
            log.warning("phase=rebuild partition=%d replica=%s from=%s", partition, new.actor_name, leader.actor_name)
            result = self._rebuild(leader, new)
            with self._lock:
                current = [r for r in self._map().of_partition(partition) if r.role == LEADER and r.state == SERVING]
                if not current or current[0] is not leader or new.state != STARTING:
                    raise RuntimeError(f"the leader changed while {new.actor_name} was rebuilt from {leader.actor_name}")
                new.state = SERVING
                self._map().version += 1
            self.rebuilds.append({"partition": partition, "replica": new.actor_name, **result,
                                  "total_s": round(time.time() - started, 3)})
            log.warning("phase=redundant partition=%d replica=%s rows=%d seconds=%.3f",
                        partition, new.actor_name, result["rows"], result["seconds"])
        except Exception as exc:  # the leader changed or died meanwhile: try again, a bounded number of times
            log.error("replacement of p%d r%d failed (attempt %d): %s", partition, replica, attempt, exc)
            with self._lock:
                rep = next((r for r in self._map().of_partition(partition) if r.replica == replica), None)
                if rep is not None and rep.state != SERVING:
                    rep.state = DEAD
                    if rep.actor_name in self.handles:
                        runtime.kill(self.handles[rep.actor_name])
            retry = attempt < REPLACE_ATTEMPTS_MAX
        finally:
            with self._lock:
                self._replacing.discard((partition, replica))
        if retry:
            time.sleep(REPLACE_RETRY_S)
            self._replace_dead(partition, attempt + 1)

    def describe(self) -> tuple[dict[str, Any], Schema]:
        return self.config.to_dict(), self.schema

    def ping(self) -> bool:
        return True

    def status(self) -> dict[str, Any]:
        """The map joined with each replica's live answer (or 'unreachable')."""
        with self._lock:
            return self._status()

    def _status(self) -> dict[str, Any]:
        m = self._map()
        refs = [runtime.submit(self.handles[r.actor_name], "status", control=True) for r in m.replicas]
        answers = runtime.get_each(refs, self.config.control_timeout_s, what="replica status")
        answers = [ActorDied("removed from the configuration") if r.state == DEAD else a
                   for r, a in zip(m.replicas, answers)]
        replicas = []
        for rep, answer in zip(m.replicas, answers):
            entry = {"partition": rep.partition, "replica": rep.replica, "actor_name": rep.actor_name,
                     "role": rep.role, "state": rep.state, "epoch": rep.epoch, "node_id": rep.node_id, "pid": rep.pid}
            if isinstance(answer, OhmError):
                entry.update(health="unreachable", error=answer.code)
            else:
                entry.update(health="ok" if not answer["log_failed"] else "log-failed", **{
                    k: answer[k] for k in ("rows", "committed", "aborted", "failed", "durability", "written_lsn",
                                           "durable_lsn", "fsyncs", "batches_written", "log_failed", "leader", "followers", "snapshots_taken", "installs",
                                           "last_snapshot", "recovery")
                })
            replicas.append(entry)
        return {
            "name": self.config.name,
            "map_version": m.version,
            "partitions": m.partitions,
            "k": m.k,
            "replicas": replicas,
            "leaders": {p: next((r.actor_name for r in m.of_partition(p) if r.role == LEADER and r.state == SERVING), None)
                        for p in range(m.partitions)},
            "nodes": runtime.alive_nodes(),
            "supervisor": {"actor_name": f"{self.config.name}:supervisor", **self.identity},
            "rebuilds": list(self.rebuilds),
            "counts": _totals(replicas, {t.name for t in self.schema.tables.values() if t.replicated}),
        }

    def shutdown(self) -> int:
        """Flush every replica's log, then kill it; the caller then kills this actor."""
        m = self._map()
        refs = [runtime.submit(self.handles[r.actor_name], "close") for r in m.replicas if r.state != DEAD]
        runtime.get_each(refs, self.config.call_timeout_s, what="close")  # a dead replica has nothing to flush
        for rep in m.replicas:
            runtime.kill(self.handles[rep.actor_name])
            rep.state = DEAD
        return len(m.replicas)

    def _map(self) -> ClusterMap:
        if self.map is None:
            raise RuntimeError("supervisor not started")
        return self.map


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
