"""Cluster configuration: named limits, validated as a whole when a cluster is made.

Design note
-----------
Every limit has a name with its unit last.  ``ClusterConfig.validate`` checks
the settings together (not one by one at first use) and raises one
``InvalidConfig`` naming the bad setting and why.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from actors.errors import InvalidConfig
from actors.partition_core import BATCH_TXNS_MAX

PARTITIONS_MAX = 1024
CLUSTER_NAME_CHARS_MAX = 64
#: How long a client waits for a batch before reporting TIMEOUT (outcome unknown).
CALL_TIMEOUT_S = 60.0
#: How long control calls (ping, status) may take before the replica counts as unreachable.
CONTROL_TIMEOUT_S = 5.0
#: How long the supervisor waits for a new actor to answer its first ping.
SPAWN_TIMEOUT_S = 120.0

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class ClusterConfig:
    name: str = "ohmdb"
    partitions: int = 4
    batch_txns_max: int = BATCH_TXNS_MAX
    call_timeout_s: float = CALL_TIMEOUT_S
    control_timeout_s: float = CONTROL_TIMEOUT_S
    spawn_timeout_s: float = SPAWN_TIMEOUT_S

    def validate(self) -> "ClusterConfig":
        validate_cluster_name(self.name)
        _positive_int("partitions", self.partitions, PARTITIONS_MAX)
        _positive_int("batch_txns_max", self.batch_txns_max, 1_000_000)
        for field in ("call_timeout_s", "control_timeout_s", "spawn_timeout_s"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise InvalidConfig(f"{field} must be a positive number of seconds, got {value!r}", setting=field)
        if self.control_timeout_s > self.call_timeout_s:
            raise InvalidConfig(
                f"control_timeout_s ({self.control_timeout_s}) must not exceed call_timeout_s ({self.call_timeout_s})",
                setting="control_timeout_s",
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _positive_int(field: str, value: Any, maximum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not (1 <= value <= maximum):
        raise InvalidConfig(f"{field} must be an integer in 1..{maximum}, got {value!r}", setting=field)


def validate_cluster_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or len(name) > CLUSTER_NAME_CHARS_MAX:
        raise InvalidConfig(
            f"cluster name {name!r} must be 1..{CLUSTER_NAME_CHARS_MAX} characters of letters, digits, '_', '.', '-'",
            setting="name",
        )
    return name
