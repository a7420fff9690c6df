"""The client handle: routing by partition key, batching, typed outcomes.

Design note
-----------
``Cluster`` is what a driver script holds.  ``create`` spawns a supervisor
(which spawns the partition replicas) and loads initial data; ``connect``
attaches to a running cluster by name.  A call is routed by its procedure's
``partition_by`` argument (``stable_hash(value) % partitions``); ``call_many``
groups a batch by partition and sends one actor call per partition, so Ray's
~1 ms per call is paid once per group, not per transaction.  Results come back
in input order, a failed transaction as its typed error object in its place.

Ray runs one caller's calls to one actor in submission order, so futures from
``call_async`` complete in submission order per partition.

Multi-partition procedures go to the coordinator actor, one call per batch,
each transaction with its own request id.  When the coordinator dies or an
outcome is unknown, the same request ids are sent again (``attempt`` + 1): the
coordinator answers a request it still runs with that run's outcome and one
whose commit a holder recorded with the recorded reply, so nothing applies
twice.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
import uuid
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa

from actors import runtime
from actors.config import UNAVAILABLE_RECHECK_S, ClusterConfig, validate_cluster_name
from actors.coordinator import MP_RUNS_AT_ONCE, coordinator_name
from actors.errors import (
    ActorDied, BatchTooLarge, ClusterExists, ClusterNotFound, CoordinatorUnavailable, InvalidArguments, InvalidConfig,
    LogWriteFailed, NotLeader, OhmError, OutcomeUnknown, PartitionUnavailable, StaleEpoch, Timeout,
    UnknownProcedure,
)
from actors.routing import partition_of
from actors.schema import Procedure, Schema
from actors.supervisor import Supervisor
from actors.watchdog import watchdog_name
from recovery.catalog import check_compatible, read_catalog, write_catalog
from recovery.cluster_map import supervisor_name

_OUR_PACKAGES = ("actors", "recovery", "workloads")


class BatchFuture:
    """The pending outcome of one ``call_many_async``: one actor call per partition."""

    def __init__(self, cluster: "Cluster", size: int, groups: list[tuple[int, list[int], Any]],
                 errors: dict[int, OhmError], timeout_s: float, procedure: str | None = None,
                 args: list[tuple] | None = None) -> None:
        self._cluster = cluster
        self._procedure = procedure
        self._args = args or []
        self._size = size
        self._groups = groups          # (partition, input indices, object ref, calls, request id)
        self._errors = errors          # input index -> error known before sending
        self._timeout_s = timeout_s
        self._value: list[Any] | None = None

    def result(self, timeout_s: float | None = None) -> list[Any]:
        """Each transaction's result, or its typed error object, in input order.

        Transactions refused with NOT_LEADER never ran: they are sent again to
        the current leader (after a routing refresh), a bounded number of times.
        """
        value = self._result_once(timeout_s)
        for _ in range(NOT_LEADER_RETRIES):
            again = [i for i, v in enumerate(value) if isinstance(v, NotLeader)]
            if not again or self._procedure is None:
                break
            self._cluster._refresh_routing()
            retried = self._cluster.call_many_async(self._procedure, [self._args[i] for i in again], timeout_s).result()
            for i, v in zip(again, retried):
                value[i] = v
        return value

    def _result_once(self, timeout_s: float | None) -> list[Any]:
        if self._value is None:
            deadline_s = self._timeout_s if timeout_s is None else timeout_s
            answers = runtime.get_each([g[2] for g in self._groups], deadline_s, what="execute_batch")
            answers = self._retry_dead_leaders(answers, deadline_s)
            out: list[Any] = [None] * self._size
            for index, err in self._errors.items():
                out[index] = err
            for (partition, indices, *_), answer in zip(self._groups, answers):
                self._fill(out, partition, indices, answer)
            self._value = out
        return self._value

    def _retry_dead_leaders(self, answers: list[Any], deadline_s: float) -> list[Any]:
        """Re-send the batches of a leader that died, was fenced or lost its log, with their request ids,
        to the promoted follower.

        The new leader returns the first outcome of a batch the old one had
        replicated, and executes one it never saw: each batch applies once.
        """
        for _ in range(DEAD_LEADER_RETRIES):
            dead = [k for k, a in enumerate(answers)
                    if isinstance(a, ActorDied) or (isinstance(a, tuple) and isinstance(a[2], LogWriteFailed))]
            fenced = [k for k, a in enumerate(answers) if isinstance(a, tuple) and isinstance(a[2], StaleEpoch)]
            if not dead and not fenced:
                break
            for partition in {self._groups[k][0] for k in dead}:
                self._cluster._leader_failed(partition)
            if fenced:  # that leader was replaced: the map already names the new one
                self._cluster._refresh_routing()
            dead += fenced
            resent: dict[int, Any] = {}
            for k in dead:
                partition, _, _, calls, request_id = self._groups[k]
                try:
                    resent[k] = self._cluster._submit(partition, "execute_batch", calls, request_id)
                except PartitionUnavailable as err:
                    answers[k] = err
            for k, answer in zip(resent, runtime.get_each(list(resent.values()), deadline_s, what="execute_batch")):
                answers[k] = answer
        return answers

    def _fill(self, out: list[Any], partition: int, indices: list[int], answer: Any) -> None:
        if isinstance(answer, OhmError):
            err = answer
            if isinstance(answer, ActorDied):
                err = PartitionUnavailable(
                    f"partition {partition}: its leaders kept dying; the outcome of these transactions is unknown",
                    partition=partition, cause=answer.message,
                )
            for i in indices:
                out[i] = err
            return
        results, errors, batch_error = answer
        if batch_error is not None:
            for i in indices:
                out[i] = batch_error
            return
        for j, i in enumerate(indices):
            out[i] = errors[j] if j in errors else results[j]


class TxnFuture:
    """The pending outcome of one ``call_async``."""

    def __init__(self, batch: BatchFuture) -> None:
        self._batch = batch

    def result(self, timeout_s: float | None = None) -> Any:
        """The transaction's result; raises its typed error."""
        value = self._batch.result(timeout_s)[0]
        if isinstance(value, OhmError):
            raise value
        return value

    def done(self) -> bool:
        return runtime.ready([g[2] for g in self._batch._groups])


class _MPFuture(BatchFuture):
    """The pending outcome of a batch of multi-partition transactions (one coordinator call)."""

    def __init__(self, cluster: "Cluster", calls: list[tuple[str, tuple, str]], ref: Any, timeout_s: float) -> None:
        self._cluster = cluster
        self._calls = calls
        self._groups = [(None, None, ref)]
        self._timeout_s = timeout_s
        self._value: list[Any] | None = None
        self._procedure = None

    def result(self, timeout_s: float | None = None) -> list[Any]:
        if self._value is None:
            self._value = self._cluster._mp_outcomes(self._calls, self._groups[0][2],
                                                     self._timeout_s if timeout_s is None else timeout_s)
        return self._value


def _unknown(value: Any, request_id: str) -> Any:
    """A still-unknown MP outcome as OutcomeUnknown naming its request id (a retry with it resolves it)."""
    if isinstance(value, (ActorDied, Timeout, CoordinatorUnavailable)):
        return OutcomeUnknown(f"the outcome of request {request_id} is unknown ({value.code}: {value.message}); "
                              "call again with request_id= this id to learn it", request_id=request_id,
                              cause=value.code)
    return value


class Cluster:
    """A handle on one ohmdb cluster: create or connect, then call procedures."""

    def __init__(self, config: ClusterConfig, schema: Schema, supervisor: Any) -> None:
        self.config = config
        self.schema = schema
        self._supervisor = supervisor
        self._leaders: list[Any] = []
        self._map_version = 0
        self._refreshed_at = 0.0  # monotonic time of the last routing adopted
        self._client_id = uuid.uuid4().hex
        self._seq = [0] * config.partitions
        self._submit_lock = threading.Lock()
        self._requests = itertools.count()
        self._mp_handle: Any = None
        self._refresh_routing()

    def _recheck_unavailable(self) -> None:
        """Ask the routing again when it names no leader for some partition (at most every
        ``UNAVAILABLE_RECHECK_S``): it may have been read during an election, and the partition serves again."""
        if None in self._leaders and time.monotonic() - self._refreshed_at >= UNAVAILABLE_RECHECK_S:
            try:  # no waiting for a supervisor being restarted: the call fails fast as before
                self._set_routing(runtime.call(self._supervisor, "routing", timeout_s=self.config.control_timeout_s))
            except OhmError:
                pass

    def _submit(self, partition: int, method: str, *args: Any) -> Any:
        """Send a call to a partition leader, numbered so the replica runs our calls in order."""
        self._recheck_unavailable()
        with self._submit_lock:
            leader = self._leaders[partition]
            if leader is None:
                raise PartitionUnavailable(
                    f"partition {partition} has no live replica; it serves again once recovered from disk",
                    partition=partition)
            seq = self._seq[partition]
            self._seq[partition] = seq + 1
            return runtime.submit(leader, method, self._client_id, seq, *args)

    def _set_routing(self, routing: dict[str, Any]) -> None:
        """Adopt a routing; calls to a partition's new leader are numbered from 0 again."""
        with self._submit_lock:
            self._refreshed_at = time.monotonic()
            old = [runtime.actor_id(h) for h in self._leaders]
            self._leaders, self._map_version = routing["leaders"], routing["version"]
            for p, handle in enumerate(self._leaders):
                if p >= len(old) or runtime.actor_id(handle) != old[p]:
                    self._seq[p] = 0

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        schema: Schema,
        partitions: int = 4,
        name: str = "ohmdb",
        *,
        k: int = 1,
        initial_data: Mapping[str, pa.Table | Sequence[Mapping[str, Any]]] | None = None,
        data_dir: str | None = None,
        durability: str | None = None,
        address: str | None = None,
        **settings: Any,
    ) -> "Cluster":
        """Start a cluster named ``name`` (Ray is started locally when not connected).

        With ``data_dir`` the database is durable (``durability="sync"`` by
        default; ``"async"`` or ``"off"``); if ``data_dir`` already holds a
        database of this schema it is recovered and ``initial_data`` is not
        loaded again.  ``settings`` are further ``ClusterConfig`` fields
        (``batch_txns_max``, ``call_timeout_s``, ``flush_interval_ms``, ...).
        """
        if not isinstance(schema, Schema):
            raise InvalidConfig(f"Cluster.create needs a Schema, got {type(schema).__name__}")
        known = set(ClusterConfig.__dataclass_fields__) - {"name", "partitions", "k", "data_dir", "durability"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise InvalidConfig(f"unknown Cluster.create setting(s) {unknown}; known: {sorted(known)}")
        if data_dir is not None:
            data_dir = os.path.abspath(os.path.expanduser(data_dir))
        config = ClusterConfig(name=name, partitions=partitions, k=k, data_dir=data_dir, durability=durability,
                               **{k: v for k, v in settings.items() if v is not None}).validate()
        data = _check_initial_data(schema, initial_data or {})
        if data_dir is not None and _open_data_dir(data_dir, config, schema):
            data = {}  # recovering: the tables already hold their data
        runtime.connect(address)
        _ship_procedures_by_value(schema)
        try:
            # On the creating driver's node (the head, usually): a worker node's loss must not take it along.
            # Ray restarts it whenever its process dies (SUPERVISOR_RESTARTS_MAX); it reloads its map then.
            sup = runtime.spawn(Supervisor, supervisor_name(name), config.to_dict(), schema,
                                max_restarts=SUPERVISOR_RESTARTS_MAX, node_id=runtime.own_node_id())
        except ValueError:
            raise ClusterExists(
                f"a cluster named {name!r} is running; Cluster.connect({name!r}) to use it or shut it down first",
                name=name,
            ) from None
        try:
            runtime.call(sup, "start", timeout_s=config.spawn_timeout_s)
            db = cls(config, schema, sup)
            for table, rows in data.items():
                db._load(table, rows)
        except BaseException:
            _destroy(sup, name)
            raise
        return db

    @classmethod
    def connect(cls, name: str = "ohmdb", *, address: str | None = "auto") -> "Cluster":
        """Attach to a running cluster (``address='auto'`` finds the local Ray cluster)."""
        validate_cluster_name(name)
        try:
            runtime.connect(address)
        except ConnectionError as exc:
            raise ClusterNotFound(f"no Ray cluster to connect to at {address!r}: {exc}", name=name) from None
        sup = runtime.find(supervisor_name(name))
        if sup is None:
            running = sorted({n.split(":")[0] for n in runtime.list_names() if n.endswith(":supervisor")})
            raise ClusterNotFound(f"no ohmdb cluster named {name!r}; running: {running or 'none'}", name=name)
        config, schema = runtime.call(sup, "describe", timeout_s=CONNECT_TIMEOUT_S)
        return cls(ClusterConfig(**config), schema, sup)

    def shutdown(self) -> None:
        """Stop every actor of this cluster; its in-memory data is gone."""
        _destroy(self._supervisor, self.name)
        self._leaders = []

    # -- calls -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def partitions(self) -> int:
        return self.config.partitions

    def call(self, procedure: str, *args: Any, timeout_s: float | None = None, request_id: str | None = None) -> Any:
        """Run one transaction; its result, or raise its typed ``OhmError``.

        ``request_id``: name the request yourself, so that after an
        ``OutcomeUnknown`` (or a crash of this driver) calling again with the
        same id returns the first outcome instead of running it twice.
        """
        value = self.call_many_async(procedure, [args], timeout_s, request_id=request_id).result()[0]
        if isinstance(value, OhmError):
            raise value
        return value

    def call_many(self, procedure: str, args_list: Iterable[Sequence[Any]], timeout_s: float | None = None) -> list[Any]:
        """Run many transactions of one procedure; results or error objects in input order."""
        return self.call_many_async(procedure, args_list, timeout_s).result()

    def call_async(self, procedure: str, *args: Any) -> TxnFuture:
        """Start one transaction; ``.result()`` gives its result or raises its error."""
        return TxnFuture(self.call_many_async(procedure, [args]))

    def call_many_async(self, procedure: str, args_list: Iterable[Sequence[Any]],
                        timeout_s: float | None = None, request_id: str | None = None) -> BatchFuture:
        """Start a batch: one actor call per partition it touches."""
        proc = self._procedure(procedure)
        batch = [tuple(a) if isinstance(a, (list, tuple)) else (a,) for a in args_list]
        if len(batch) > self.config.batch_txns_max:
            raise BatchTooLarge(
                f"batch of {len(batch)} transactions exceeds the limit of {self.config.batch_txns_max}",
                size=len(batch), limit=self.config.batch_txns_max,
            )
        timeout = self.config.call_timeout_s if timeout_s is None else timeout_s
        if proc.multi_partition:
            ids = [request_id] if request_id is not None and len(batch) == 1 else \
                [f"{self._client_id}:m{next(self._requests)}" for _ in batch]
            calls = [(proc.name, args, rid) for args, rid in zip(batch, ids)]
            # A caller's own request id may be a retry: the coordinator looks for its recorded outcome first.
            first_attempt = 1 if request_id is not None else 0
            return _MPFuture(self, calls, self._submit_mp(calls, first_attempt), timeout)
        self._recheck_unavailable()
        by_partition: dict[int, list[int]] = {}
        errors: dict[int, OhmError] = {}
        for i, args in enumerate(batch):
            try:
                p = partition_of(proc.partition_value(args), self.partitions)
            except OhmError as err:
                errors[i] = err
                continue
            if self._leaders[p] is None:
                errors[i] = PartitionUnavailable(
                    f"partition {p} has no live replica; it serves again once recovered from disk", partition=p)
                continue
            by_partition.setdefault(p, []).append(i)
        groups = []
        for p, idx in by_partition.items():
            calls = [(proc.name, batch[i]) for i in idx]
            rid = request_id if request_id is not None and len(batch) == 1 else f"{self._client_id}:{next(self._requests)}"
            groups.append((p, idx, self._submit(p, "execute_batch", calls, rid), calls, rid))
        return BatchFuture(self, len(batch), groups, errors, timeout, proc.name, batch)

    def snapshot(self) -> list[dict[str, Any]]:
        """Snapshot every partition now; their manifests (LSN, row counts, checksums)."""
        refs = [runtime.submit(leader, "snapshot") for leader in self._leaders]
        out = []
        for p, answer in enumerate(runtime.get_each(refs, self.config.call_timeout_s, what="snapshot")):
            if isinstance(answer, OhmError):
                raise answer
            out.append({"partition": p, **answer})
        return out

    def load(self, table: str, rows: pa.Table | Sequence[Mapping[str, Any]]) -> int:
        """Bulk-insert rows into a partitioned table (all rows validated first)."""
        t = self.schema.tables.get(table)
        if t is not None and t.replicated:
            raise InvalidArguments(f"table {table!r} is replicated: load it through Cluster.create(initial_data=...)", table=table)
        clean = _check_initial_data(self.schema, {table: rows})
        return self._load(table, clean[table])

    # -- inspection -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Partitions, replicas (role, epoch, node, pid, counts, heartbeat health), leaders, nodes, totals."""
        return self._ask_supervisor("status")

    def faults(self) -> list[dict[str, Any]]:
        """Every fault report of this cluster (and of earlier runs on the same data_dir), oldest first.

        Each: id, kind, signal, detected_at, fault_at, where, impact, actions,
        state, available_at, recovered_at, durations (detection_s,
        availability_s, redundancy_s).
        """
        return self._ask_supervisor("faults")

    def _ask_supervisor(self, method: str, *args: Any) -> Any:
        """Call the supervisor; while Ray restarts it (it died), wait and ask again, up to a bound."""
        deadline = time.monotonic() + SUPERVISOR_RESTART_WAIT_S
        while True:
            try:
                return runtime.call(self._supervisor, method, *args, timeout_s=self.config.call_timeout_s)
            except ActorDied:
                if time.monotonic() > deadline:
                    raise
                time.sleep(SUPERVISOR_RETRY_S)

    # -- internals ------------------------------------------------------------------

    def _procedure(self, name: str) -> Procedure:
        proc = self.schema.procedures.get(name) if isinstance(name, str) else None
        if proc is None:
            raise UnknownProcedure(f"unknown procedure {name!r}; known: {sorted(self.schema.procedures)}", procedure=str(name))
        return proc

    # -- multi-partition transactions (the coordinator) ------------------------------------

    def _coordinator(self, wait: bool = False) -> Any:
        """The coordinator's handle; with ``wait``, a live one (the supervisor replaces a dead one)."""
        deadline = time.monotonic() + COORDINATOR_WAIT_S
        while True:
            handle = runtime.find(coordinator_name(self.name))
            if handle is not None and not wait:
                return handle
            if handle is not None:
                try:
                    runtime.call(handle, "ping", control=True, timeout_s=self.config.control_timeout_s)
                    return handle
                except OhmError:
                    pass
            if time.monotonic() > deadline:
                raise CoordinatorUnavailable(f"cluster {self.name!r}: no live coordinator after "
                                             f"{COORDINATOR_WAIT_S} s", name=self.name)
            time.sleep(SUPERVISOR_RETRY_S)

    def _submit_mp(self, calls: list[tuple[str, tuple, str]], attempt: int) -> Any:
        if self._mp_handle is None or attempt > 0:
            self._mp_handle = self._coordinator(wait=attempt > 0)
        return runtime.submit(self._mp_handle, "execute", calls, attempt)

    def _mp_outcomes(self, calls: list[tuple[str, tuple, str]], ref: Any, timeout_s: float) -> list[Any]:
        """Each MP transaction's outcome; unknown ones are asked again with their request ids."""
        out: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(1, MP_RESENDS_MAX + 2):
            # The coordinator runs MP_RUNS_AT_ONCE of a batch at once: a big batch gets the time of its rounds.
            wait_s = timeout_s * (3 + len(todo) // MP_RUNS_AT_ONCE)
            answer = runtime.get_each([ref], wait_s, "execute")[0]
            for j, i in enumerate(todo):
                out[i] = answer if isinstance(answer, OhmError) else answer[j]
            todo = [i for i in todo if isinstance(out[i], (OutcomeUnknown, ActorDied, Timeout, CoordinatorUnavailable))]
            if not todo or attempt > MP_RESENDS_MAX:
                break
            time.sleep(MP_RESEND_PAUSE_S)
            try:
                ref = self._submit_mp([calls[i] for i in todo], attempt)
            except CoordinatorUnavailable as err:
                for i in todo:
                    out[i] = err
                break
        return [_unknown(out[i], calls[i][2]) for i in range(len(calls))]

    def _leader_failed(self, partition: int) -> None:
        """Tell the supervisor our leader died; it fences and promotes; take the new routing."""
        try:
            routing = self._ask_supervisor("leader_failed", partition, self._map_version)
        except OhmError:
            return
        self._set_routing(routing)

    def _refresh_routing(self) -> None:
        self._set_routing(self._ask_supervisor("routing"))

    def _load(self, table: str, rows: list[dict[str, Any]]) -> int:
        t = self.schema.tables[table]
        if t.replicated:
            groups = {p: rows for p in range(self.partitions)}
        else:
            groups = {}
            for row in rows:
                groups.setdefault(partition_of(row[t.partition_by], self.partitions), []).append(row)
        refs = [self._submit(p, "load", table, part) for p, part in groups.items()]
        loaded = 0
        for answer in runtime.get_each(refs, self.config.call_timeout_s, what="load"):
            if isinstance(answer, OhmError):
                raise answer
            n, err = answer
            if err is not None:
                raise err
            loaded += n
        return len(rows) if t.replicated else loaded


CONNECT_TIMEOUT_S = 30.0
#: Times unknown MP outcomes are asked again (same request ids), the pause before each, and how long to
#: wait for a live coordinator.
MP_RESENDS_MAX = 5
MP_RESEND_PAUSE_S = 0.2
COORDINATOR_WAIT_S = 60.0
#: Times a batch refused with NOT_LEADER (never executed) is re-sent after a routing refresh.
NOT_LEADER_RETRIES = 3
#: Times a batch whose leader died is re-sent (same request id) to the promoted follower.
DEAD_LEADER_RETRIES = 3
#: Restarts Ray grants a supervisor whose process died (-1: without limit).
SUPERVISOR_RESTARTS_MAX = -1
#: How long a call to a dead supervisor is retried while Ray restarts it.
SUPERVISOR_RESTART_WAIT_S = 60.0
SUPERVISOR_RETRY_S = 0.2


def _open_data_dir(data_dir: str, config: ClusterConfig, schema: Schema) -> bool:
    """Check or create the catalog; True when ``data_dir`` already holds this database."""
    catalog = read_catalog(data_dir)
    if catalog is None:
        if os.path.isdir(data_dir) and any(not n.startswith(".") for n in os.listdir(data_dir)):
            raise InvalidConfig(f"data_dir {data_dir} is not empty and holds no ohmdb catalog", setting="data_dir")
        write_catalog(data_dir, config.name, config.partitions, config.k + 1, schema)
        return False
    check_compatible(catalog, config.partitions, config.k + 1, schema, data_dir)
    return True


def _check_initial_data(schema: Schema, data: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Validate every row before anything is sent (a bad row names itself)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for table, rows in data.items():
        t = schema.tables.get(table)
        if t is None:
            raise InvalidArguments(f"initial data for unknown table {table!r}; tables are {sorted(schema.tables)}", table=repr(table))
        if isinstance(rows, pa.Table):
            rows = rows.to_pylist()
        clean = [t.check_row(r) for r in rows]
        keys = [t.key_of(r) for r in clean]
        if len(set(keys)) != len(keys):
            seen: set = set()
            dup = next(k for k in keys if k in seen or seen.add(k))
            raise InvalidArguments(f"initial data for {table!r} repeats primary key {dup!r}", table=table, key=repr(dup))
        out[table] = clean
    return out


def _ship_procedures_by_value(schema: Schema) -> None:
    """Procedures from a driver's own modules travel by value, not by import."""
    modules = set()
    for proc in schema.procedures.values():
        mod_name = getattr(proc.func, "__module__", None) or "__main__"
        if mod_name == "__main__" or mod_name.split(".")[0] in _OUR_PACKAGES:
            continue
        module = sys.modules.get(mod_name)
        if module is not None:
            modules.add(module)
    runtime.register_by_value(modules)


def _destroy(supervisor: Any, name: str) -> None:
    try:
        runtime.call(supervisor, "shutdown", timeout_s=CONNECT_TIMEOUT_S)
    except OhmError:
        pass
    runtime.kill(supervisor)
    for other in [watchdog_name(name), coordinator_name(name), *runtime.list_names(f"{name}:probe:")]:  # normally gone
        runtime.kill(runtime.find(other))
    runtime.wait_gone(supervisor_name(name), CONNECT_TIMEOUT_S)
