"""Replication rules: what a follower accepts, when a leader may acknowledge, who takes over.

Design note
-----------
Pure decisions, no Ray, no asyncio:

* ``follower_verdict`` -- a follower accepts a batch only from the current or a
  newer epoch (an older one is STALE_EPOCH: a fenced leader cannot write) and
  only in LSN order (a batch that starts past its next LSN waits; one it
  already holds is acknowledged again without being applied twice).
* ``AckTracker`` -- the leader acknowledges a transaction only when every
  replica in the current configuration holds it durably.  Followers apply
  batches in LSN order, so a follower's highest acknowledged LSN covers
  everything before it; the replicated LSN is the minimum over the followers
  in the configuration (and the leader's own durable LSN).
* ``choose_leader`` -- on failover the live follower with the highest durable
  LSN is promoted (ties: lowest replica number, so every run picks the same).
"""

from __future__ import annotations

from dataclasses import dataclass, field

ACCEPT = "accept"
DUPLICATE = "duplicate"
WAIT = "wait"
STALE = "stale-epoch"


def follower_verdict(my_epoch: int, next_lsn: int, msg_epoch: int, first_lsn: int, records: int) -> str:
    """What a follower does with a batch ``first_lsn .. first_lsn+records-1`` from ``msg_epoch``."""
    if msg_epoch < my_epoch:
        return STALE
    if first_lsn + records <= next_lsn:
        return DUPLICATE
    if first_lsn > next_lsn:
        return WAIT
    if first_lsn < next_lsn:
        # Overlaps what we hold: only possible with a broken leader.
        raise ValueError(f"batch {first_lsn}+{records} overlaps the log at {next_lsn}")
    return ACCEPT


@dataclass
class AckTracker:
    """Highest LSN each follower has durably acknowledged."""

    acked: dict[str, int] = field(default_factory=dict)

    def configure(self, followers: list[str], start_lsn: int) -> None:
        """The followers in the configuration now; new ones start at ``start_lsn``."""
        self.acked = {f: self.acked.get(f, start_lsn) for f in followers}

    def ack(self, follower: str, lsn: int) -> None:
        if follower in self.acked:
            self.acked[follower] = max(self.acked[follower], lsn)

    def replicated_lsn(self, leader_durable_lsn: int) -> int:
        """Every LSN up to this one is durable on every replica of the configuration."""
        return min([leader_durable_lsn, *self.acked.values()])


def choose_leader(candidates: dict[int, int]) -> int | None:
    """Replica number with the highest durable LSN among ``{replica: durable_lsn}``."""
    if not candidates:
        return None
    return min(candidates, key=lambda r: (-candidates[r], r))
