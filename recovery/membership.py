"""Viability of the cluster after node losses: VoltDB's partition-detection rule, pure.

Design note
-----------
The supervisor remembers the nodes it last saw as members.  When some
disappear it asks ``verdict(previous, reachable)``:

* more than half of the previous members still reachable: go on, and the
  reachable set becomes the new membership (losses one at a time never stop a
  cluster that keeps a majority at each step);
* fewer than half: stop taking writes -- this side may be the minority of a
  split, and serving would risk two sides accepting different writes;
* exactly half: only the side that still holds the lowest node id of the
  previous membership goes on (a tie-break both sides compute alike).

Nodes that were not members (joined since) do not count towards survival.
The membership only moves forward while the cluster is viable; a stopped
cluster resumes when enough of its last membership is reachable again.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    viable: bool
    reason: str
    survivors: frozenset[str]


def verdict(previous: set[str] | frozenset[str], reachable: set[str] | frozenset[str]) -> Verdict:
    """May the side that reaches ``reachable`` go on, given the membership ``previous``?"""
    if not previous:
        return Verdict(True, "no previous membership", frozenset(reachable))
    survivors = frozenset(previous) & frozenset(reachable)
    n, total = len(survivors), len(previous)
    if 2 * n > total:
        return Verdict(True, f"{n} of {total} nodes reachable (a majority)", survivors)
    if 2 * n == total:
        lowest = min(previous)
        if lowest in survivors:
            return Verdict(True, f"{n} of {total} nodes reachable (exactly half, holding the lowest node id)", survivors)
        return Verdict(False, f"{n} of {total} nodes reachable: exactly half, and the other side holds the lowest "
                              f"node id {lowest[:12]}; writes stop until more nodes are reachable", survivors)
    return Verdict(False, f"only {n} of {total} nodes reachable (fewer than half of the membership last seen); "
                          "writes stop until more nodes are reachable", survivors)


class Membership:
    """The nodes last seen as members, moved forward only while the cluster is viable.

    Losses are not all seen at the same instant (two nodes cut off together are found a
    heartbeat or two apart), so the membership moves forward only once the reachable set has
    held still for ``settle_s``; until then verdicts compare against the membership before
    the change, and two losses close together count as one.
    """

    def __init__(self, nodes: set[str], settle_s: float = 0.0) -> None:
        self.members: frozenset[str] = frozenset(nodes)
        self.settle_s = settle_s
        self.viable = True
        self.reason = f"{len(nodes)} nodes"
        self._seen: frozenset[str] = self.members
        self._seen_since = 0.0

    def observe(self, reachable: set[str], now: float = 0.0) -> Verdict | None:
        """Feed the reachable nodes; returns the verdict when viability changed, else None."""
        reachable = frozenset(reachable)
        if reachable != self._seen:
            self._seen, self._seen_since = reachable, now
        v = verdict(self.members, reachable)
        changed = v.viable != self.viable
        self.viable, self.reason = v.viable, v.reason
        if v.viable and now - self._seen_since >= self.settle_s:
            self.members = reachable
        return v if changed else None
