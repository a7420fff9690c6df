"""The cluster map: which replica of which partition runs where, and who leads.

Design note
-----------
The supervisor owns the one authoritative ``ClusterMap``; clients hold copies
tagged with ``version`` and refresh them when routing fails.  The map is plain
data (no handles, no Ray), serialisable to a dict so it can be persisted and
reloaded, and placement is a pure function of the partition count, the replica
count and the node list: replicas of one partition go to distinct nodes when
there are enough nodes, and partitions spread round-robin.  The supervisor's
fault decisions that only read the map live here too: whether a restarted
supervisor may keep a partition's configuration (``consistent``), whether a
failing replica is the last one serving, which partitions are back at k+1, and
which nodes to avoid for a replacement (``trusted_nodes``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

LEADER = "leader"
FOLLOWER = "follower"

STARTING = "starting"
SERVING = "serving"
DEAD = "dead"
#: The supervisor's answer to a leader reporting a follower the map holds no live member of that name.
NOT_A_MEMBER = "not-a-member"


def supervisor_name(cluster: str) -> str:
    return f"{cluster}:supervisor"


def replica_name(cluster: str, partition: int, replica: int, generation: int = 0) -> str:
    """Actor name of a replica; a replacement gets the next generation (``...:r1.g2``)."""
    base = f"{cluster}:p{partition}:r{replica}"
    return base if generation == 0 else f"{base}.g{generation}"


@dataclass
class ReplicaInfo:
    partition: int
    replica: int
    actor_name: str
    role: str
    epoch: int = 1
    node_id: str | None = None
    pid: int | None = None
    state: str = STARTING
    generation: int = 0


@dataclass
class ClusterMap:
    name: str
    partitions: int
    k: int = 0
    version: int = 1
    replicas: list[ReplicaInfo] = field(default_factory=list)

    @classmethod
    def plan(cls, name: str, partitions: int, k: int, nodes: list[str]) -> "ClusterMap":
        """Initial placement: replica 0 of each partition leads."""
        if not nodes:
            raise ValueError("cannot place replicas: no alive nodes")
        replicas = []
        for p in range(partitions):
            for r in range(k + 1):
                node = nodes[(p + r) % len(nodes)]
                replicas.append(ReplicaInfo(p, r, replica_name(name, p, r), LEADER if r == 0 else FOLLOWER, node_id=node))
        return cls(name=name, partitions=partitions, k=k, replicas=replicas)

    def leader(self, partition: int) -> ReplicaInfo:
        for rep in self.replicas:
            if rep.partition == partition and rep.role == LEADER:
                return rep
        raise KeyError(f"partition {partition} has no leader")

    def of_partition(self, partition: int) -> list[ReplicaInfo]:
        return [r for r in self.replicas if r.partition == partition]

    def replacement_node(self, partition: int, alive: list[str]) -> str | None:
        """A live node holding no other live replica of ``partition`` if there is one, else any live node."""
        busy = {r.node_id for r in self.of_partition(partition) if r.state != DEAD}
        free = [n for n in alive if n not in busy]
        return (free or alive or [None])[0]

    def serving_besides(self, partition: int, names: set[str]) -> bool:
        """Does ``partition`` keep a serving replica if the replicas named ``names`` go?"""
        return any(r.state == SERVING and r.actor_name not in names for r in self.of_partition(partition))

    def fully_replicated(self) -> set[int]:
        """Partitions with all k+1 replicas serving."""
        return {p for p in range(self.partitions)
                if sum(1 for r in self.of_partition(p) if r.state == SERVING) == self.k + 1}

    def consistent(self, partition: int, leader_named: dict[str, str | None]) -> bool:
        """After a supervisor restart: may ``partition``'s configuration be kept as the replicas report it?

        Yes when exactly one serving replica leads, in the newest epoch any of
        them knows, and every other serving replica follows it in that epoch
        (``leader_named``: whom each replica says it follows).  A partition
        with no serving replica has nothing to elect from (it stays unavailable).
        """
        reps = [r for r in self.of_partition(partition) if r.state == SERVING]
        if not reps:
            return True
        newest = max(r.epoch for r in reps)
        leaders = [r for r in reps if r.role == LEADER]
        if len(leaders) != 1 or leaders[0].epoch != newest:
            return False
        lead = leaders[0]
        return all(r.role == FOLLOWER and r.epoch == newest and leader_named.get(r.actor_name) == lead.actor_name
                   for r in reps if r is not lead)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClusterMap":
        data = dict(data)
        data["replicas"] = [ReplicaInfo(**r) for r in data.get("replicas", [])]
        return cls(**data)


def trusted_nodes(alive: list[str], suspected_at: dict[str, float], now: float, window_s: float) -> list[str]:
    """Live nodes where no replica went silent within ``window_s`` (all live nodes if none is left)."""
    trusted = [n for n in alive if now - suspected_at.get(n, now - window_s) >= window_s]
    return trusted or alive
