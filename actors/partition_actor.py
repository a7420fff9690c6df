"""The partition replica actor: a thin shell that moves messages to its core.

Design note
-----------
``PartitionReplica`` is what ``runtime.spawn`` turns into a Ray actor.  It owns
a ``PartitionCore`` and does nothing the core could do: it unpacks a batch,
runs it, and packs the outcome.  Transaction methods run in Ray's default
group, one call at a time in arrival order (so a caller's batches apply in the
order it sent them); ``ping`` and ``status`` run in the control group and only
read counters, so they answer while a long batch executes.

Wire format of ``execute_batch``: in ``[(procedure, args), ...]``, out
``(results, errors, batch_error)`` where ``errors`` maps a batch index to its
typed error and ``batch_error`` is set when the batch as a whole was refused.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from actors import runtime
from actors.errors import OhmError
from actors.partition_core import PartitionCore, is_failure
from actors.schema import Schema


class PartitionReplica:
    def __init__(self, cluster: str, schema: Schema, partition: int, partitions: int,
                 replica: int, epoch: int, batch_txns_max: int) -> None:
        self.cluster = cluster
        self.replica = replica
        self.epoch = epoch
        self.role = "leader"
        self.core = PartitionCore(schema, partition, partitions, batch_txns_max)
        self.started_at = time.time()
        self.identity = runtime.own_identity()

    # -- transactions (default group: serial) -----------------------------------------

    def execute_batch(self, calls: list[tuple[str, tuple]]) -> tuple[list[Any], dict[int, OhmError], OhmError | None]:
        try:
            out = self.core.execute_batch(calls)
        except OhmError as err:
            return [], {}, err
        return out.results, out.errors, None

    def run_fragment(self, fragment: Callable[..., Any], args: tuple) -> tuple[Any, OhmError | None]:
        result = self.core.run_fragment(fragment, args)
        return (None, result.error) if is_failure(result) else (result, None)

    def load(self, table: str, rows: list[dict[str, Any]]) -> tuple[int, OhmError | None]:
        try:
            return self.core.load(table, rows), None
        except OhmError as err:
            return 0, err

    # -- control group ------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        return {"partition": self.core.partition_id, "replica": self.replica, "epoch": self.epoch}

    def status(self) -> dict[str, Any]:
        return {
            "partition": self.core.partition_id,
            "replica": self.replica,
            "role": self.role,
            "epoch": self.epoch,
            **self.identity,
            "uptime_s": round(time.time() - self.started_at, 3),
            "rows": self.core.row_counts(),
            **self.core.counters(),
        }
