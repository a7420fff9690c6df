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
from recovery.detector import MODES as DETECTOR_MODES, PHI
from recovery.group_commit import FLUSH_INTERVAL_MS, MODES, OFF, SYNC
from recovery.segments import SEGMENT_BYTES_MAX

PARTITIONS_MAX = 1024
K_MAX = 4
CLUSTER_NAME_CHARS_MAX = 64
#: How long a client waits for a batch before reporting TIMEOUT (outcome unknown).
CALL_TIMEOUT_S = 60.0
#: How long control calls (ping, status) may take before the replica counts as unreachable.
CONTROL_TIMEOUT_S = 5.0
#: Log written since the last snapshot that triggers a new one.
SNAPSHOT_LOG_BYTES = 256 * 1024 * 1024
#: How long the supervisor waits for a new actor to answer its first ping.
SPAWN_TIMEOUT_S = 120.0
#: A cached routing naming no leader for a partition (read during an election) is asked again after
#: this long, by clients and the coordinator alike: not on every call.
UNAVAILABLE_RECHECK_S = 0.1

#: How often the supervisor pings every replica (and the coordinator).
HEARTBEAT_INTERVAL_MS = 100
#: Silence after which a watched actor is suspected: the fixed timeout in "timeout" mode, the floor in "phi" mode.
HEARTBEAT_TIMEOUT_MS = 250
#: Ceiling of the phi-accrual timeout: however noisy the history, a hang is found within this.
HEARTBEAT_TIMEOUT_MAX_MS = 2000
#: Phi at which an actor is suspected (Cassandra's default).
PHI_THRESHOLD = 8.0
#: A timeout must cover at least this many heartbeat intervals (one late answer is not a fault).
HEARTBEAT_INTERVALS_MIN = 2

#: A multi-partition txn silent this long at a participant is settled there: a RUNNING one (no vote
#: given) is aborted, a PREPARED one asks its holder to record abort (first writer wins) and obeys it.
#: Normally the coordinator (or its successor, after recovery) settles every txn long before.
MP_SETTLE_AFTER_S = 15.0
MP_SETTLE_AFTER_MIN_S = 0.5

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class ClusterConfig:
    name: str = "ohmdb"
    partitions: int = 4
    k: int = 1                             # replicas per partition beyond the leader (k-safety)
    batch_txns_max: int = BATCH_TXNS_MAX
    call_timeout_s: float = CALL_TIMEOUT_S
    control_timeout_s: float = CONTROL_TIMEOUT_S
    spawn_timeout_s: float = SPAWN_TIMEOUT_S
    data_dir: str | None = None
    durability: str | None = None          # None: "sync" with a data_dir, "off" without
    flush_interval_ms: int = FLUSH_INTERVAL_MS
    snapshot_log_bytes: int = SNAPSHOT_LOG_BYTES
    segment_bytes_max: int = SEGMENT_BYTES_MAX
    detector: str = PHI                    # "phi" (phi-accrual) or "timeout" (fixed)
    heartbeat_interval_ms: int = HEARTBEAT_INTERVAL_MS
    heartbeat_timeout_ms: int = HEARTBEAT_TIMEOUT_MS
    heartbeat_timeout_max_ms: int = HEARTBEAT_TIMEOUT_MAX_MS
    phi_threshold: float = PHI_THRESHOLD
    mp_settle_after_s: float = MP_SETTLE_AFTER_S

    @property
    def durability_mode(self) -> str:
        if self.durability is not None:
            return self.durability
        return SYNC if self.data_dir else OFF

    def validate(self) -> "ClusterConfig":
        validate_cluster_name(self.name)
        if self.durability is not None and self.durability not in MODES:
            raise InvalidConfig(f"durability must be one of {list(MODES)}, got {self.durability!r}", setting="durability")
        if self.durability_mode != OFF and not self.data_dir:
            raise InvalidConfig(
                f"durability {self.durability_mode!r} needs data_dir=PATH (or durability='off' for memory only)",
                setting="data_dir",
            )
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise InvalidConfig(f"data_dir must be a path string, got {type(self.data_dir).__name__}", setting="data_dir")
        _positive_int("flush_interval_ms", self.flush_interval_ms, 60_000)
        _positive_int("segment_bytes_max", self.segment_bytes_max, 1 << 34)
        _positive_int("snapshot_log_bytes", self.snapshot_log_bytes, 1 << 40)
        if self.snapshot_log_bytes < self.segment_bytes_max:
            raise InvalidConfig(
                f"snapshot_log_bytes ({self.snapshot_log_bytes}) must be at least segment_bytes_max "
                f"({self.segment_bytes_max}), or every segment would trigger a snapshot",
                setting="snapshot_log_bytes",
            )
        _positive_int("partitions", self.partitions, PARTITIONS_MAX)
        if not isinstance(self.k, int) or isinstance(self.k, bool) or not (0 <= self.k <= K_MAX):
            raise InvalidConfig(f"k must be an integer in 0..{K_MAX}, got {self.k!r}", setting="k")
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
        self._validate_heartbeats()
        value = self.mp_settle_after_s
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= MP_SETTLE_AFTER_MIN_S:
            raise InvalidConfig(f"mp_settle_after_s must be a number of seconds >= {MP_SETTLE_AFTER_MIN_S}, "
                                f"got {value!r}", setting="mp_settle_after_s")
        return self

    def _validate_heartbeats(self) -> None:
        if self.detector not in DETECTOR_MODES:
            raise InvalidConfig(f"detector must be one of {list(DETECTOR_MODES)}, got {self.detector!r}", setting="detector")
        _positive_int("heartbeat_interval_ms", self.heartbeat_interval_ms, 60_000)
        _positive_int("heartbeat_timeout_ms", self.heartbeat_timeout_ms, 600_000)
        _positive_int("heartbeat_timeout_max_ms", self.heartbeat_timeout_max_ms, 600_000)
        least = HEARTBEAT_INTERVALS_MIN * self.heartbeat_interval_ms
        if self.heartbeat_timeout_ms < least:
            raise InvalidConfig(
                f"heartbeat_timeout_ms ({self.heartbeat_timeout_ms}) must be at least {HEARTBEAT_INTERVALS_MIN} "
                f"heartbeat intervals ({least} ms), or one late answer would count as a fault",
                setting="heartbeat_timeout_ms",
            )
        if self.heartbeat_timeout_max_ms < self.heartbeat_timeout_ms:
            raise InvalidConfig(
                f"heartbeat_timeout_max_ms ({self.heartbeat_timeout_max_ms}) must be at least heartbeat_timeout_ms "
                f"({self.heartbeat_timeout_ms})", setting="heartbeat_timeout_max_ms",
            )
        if self.heartbeat_timeout_max_ms >= self.call_timeout_s * 1000:
            raise InvalidConfig(
                f"heartbeat_timeout_max_ms ({self.heartbeat_timeout_max_ms}) must be below call_timeout_s "
                f"({self.call_timeout_s} s): a hang must be found before callers give up",
                setting="heartbeat_timeout_max_ms",
            )
        ok = isinstance(self.phi_threshold, (int, float)) and not isinstance(self.phi_threshold, bool)
        if not ok or not 1.0 <= self.phi_threshold <= 12.0:
            raise InvalidConfig(f"phi_threshold must be a number in 1..12, got {self.phi_threshold!r}", setting="phi_threshold")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replica_settings(self) -> dict[str, Any]:
        """What a partition replica needs to know, with the durability mode resolved."""
        return {
            "batch_txns_max": self.batch_txns_max, "call_timeout_s": self.call_timeout_s,
            "data_dir": self.data_dir, "durability": self.durability_mode,
            "flush_interval_ms": self.flush_interval_ms, "snapshot_log_bytes": self.snapshot_log_bytes,
            "segment_bytes_max": self.segment_bytes_max, "mp_settle_after_s": self.mp_settle_after_s,
        }


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
