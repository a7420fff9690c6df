"""The cluster map: which replica of which partition runs where, and who leads.

Design note
-----------
The supervisor owns the one authoritative ``ClusterMap``; clients hold copies
tagged with ``version`` and refresh them when routing fails.  The map is plain
data (no handles, no Ray), serialisable to a dict so it can be persisted and
reloaded, and placement is a pure function of the partition count, the replica
count and the node list: replicas of one partition go to distinct nodes when
there are enough nodes, and partitions spread round-robin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

LEADER = "leader"
FOLLOWER = "follower"

STARTING = "starting"
SERVING = "serving"
DEAD = "dead"


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClusterMap":
        data = dict(data)
        data["replicas"] = [ReplicaInfo(**r) for r in data.get("replicas", [])]
        return cls(**data)
