"""Recovery of one replica's state from its directory: newest valid snapshot, then the log.

Design note
-----------
Recovery runs in explicit phases, each logged with its duration, so a stuck
or failed recovery says where it was:

1. ``snapshot`` -- try snapshots newest first; an invalid one is reported and
   skipped (the next older one plus a longer log takes its place).
2. ``replay`` -- read the log in LSN order, validating every batch; apply each
   record whose LSN is above the snapshot's (so replaying twice changes
   nothing); stop at the first torn or corrupt batch and move the rest aside.
3. ``verify`` -- the log must continue the snapshot without a gap; a gap means
   acknowledged data is missing and recovery refuses to serve a guess.

The same code serves a cold restart and (later) a replica rebuilt from a peer's
snapshot and log tail.  It knows nothing of Ray.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from actors.errors import OhmError
from actors.partition_core import PartitionCore
from recovery.log_format import LogCodec
from recovery.segments import read_log
from recovery.snapshots import SnapshotInvalid, list_snapshots, load_snapshot

log = logging.getLogger("ohmdb.recovery")

LOG_DIR = "log"
SNAPSHOT_DIR = "snapshots"


class RecoveryFailed(OhmError):
    """The data on disk cannot be recovered without losing acknowledged data."""

    code = "RECOVERY_FAILED"


@dataclass
class RecoveryReport:
    directory: str
    snapshot_lsn: int = 0
    snapshot: str | None = None
    snapshots_skipped: list[dict[str, str]] = field(default_factory=list)
    log_batches: int = 0
    records_replayed: int = 0
    records_skipped: int = 0
    last_lsn: int = 0
    last_epoch: int = 0
    cut: list[dict[str, Any]] = field(default_factory=list)
    phases: list[dict[str, Any]] = field(default_factory=list)

    @property
    def next_lsn(self) -> int:
        return self.last_lsn + 1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "next_lsn": self.next_lsn}


def recover_replica(directory: str, core: PartitionCore, codec: LogCodec, repair: bool = True) -> RecoveryReport:
    """Load ``core`` from ``directory``; what was found, replayed and cut."""
    report = RecoveryReport(directory=directory)
    _phase(report, "snapshot", lambda: _load_newest_snapshot(directory, core, report))
    _phase(report, "replay", lambda: _replay(directory, core, codec, report, repair))
    log.info("recovered %s: snapshot lsn %d, %d records replayed, next lsn %d, %d cut",
             directory, report.snapshot_lsn, report.records_replayed, report.next_lsn, len(report.cut))
    return report


def _phase(report: RecoveryReport, name: str, action) -> None:
    started = time.perf_counter()
    log.info("recovery phase=%s dir=%s", name, report.directory)
    try:
        action()
    finally:
        report.phases.append({"phase": name, "seconds": round(time.perf_counter() - started, 6)})


def _load_newest_snapshot(directory: str, core: PartitionCore, report: RecoveryReport) -> None:
    for lsn, path in reversed(list_snapshots(os.path.join(directory, SNAPSHOT_DIR))):
        try:
            snap = load_snapshot(path, core.schema)
        except SnapshotInvalid as exc:
            report.snapshots_skipped.append({"snapshot": os.path.basename(path), "reason": str(exc)})
            log.warning("skipping snapshot %s: %s", path, exc)
            continue
        core.restore(snap.rows)
        core.restore_entries(snap.requests)
        report.snapshot_lsn = report.last_lsn = snap.lsn
        report.last_epoch = snap.epoch
        report.snapshot = os.path.basename(path)
        return


def _replay(directory: str, core: PartitionCore, codec: LogCodec, report: RecoveryReport, repair: bool) -> None:
    base = report.snapshot_lsn

    def on_batch(batch: pa.RecordBatch, first: int, epoch: int) -> None:
        last = first + batch.num_rows - 1
        if last <= base:
            report.records_skipped += batch.num_rows
            return
        if first > report.last_lsn + 1:
            raise RecoveryFailed(
                f"{directory}: the log jumps from lsn {report.last_lsn} to {first}; "
                "records in between are missing (no snapshot covers them)",
                directory=directory, expected_lsn=report.last_lsn + 1, found_lsn=first,
            )
        for offset, rec in enumerate(codec.decode(batch)):
            if first + offset <= base:
                report.records_skipped += 1
                continue
            core.apply_redo([rec])
            report.records_replayed += 1
        report.log_batches += 1
        report.last_lsn = last
        report.last_epoch = epoch

    scan = read_log(os.path.join(directory, LOG_DIR), codec, on_batch, repair=repair)
    report.cut = scan.cut
