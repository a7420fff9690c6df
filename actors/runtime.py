"""The one module that calls Ray: connect, spawn, find, call, kill, nodes.

Design note
-----------
Every ``ray.*`` call in ohmdb lives here, so protocol code stays testable
without Ray and tests can swap this module.  What it does:

* ``connect`` attaches to a Ray cluster at ``address``, or starts a local
  instance when none is given (the embedded default).
* ``spawn`` creates a named, detached actor in the fixed ``NAMESPACE`` (so any
  driver or the CLI can find it), with an explicit small CPU request and a
  ``control`` concurrency group for heartbeats and status, so those never
  queue behind a long transaction; the default group runs one call at a time
  unless ``max_concurrency`` makes it a pool.  A class may declare more groups
  (``CONCURRENCY_GROUPS``: name -> threads) and put a method in one with
  ``in_group``.
* Packed calls: each public method ``m`` of a spawned class has a packed
  form ``packed_m`` that takes the arguments as one blob and returns the
  result as one (cloudpickle, as Ray itself would pickle them); ``submit``
  calls it and packs, ``get`` / ``on_done`` / ``get_async`` unpack.  Ray
  serializes a list of tuples element by element (msgpack with a pickled
  extension per tuple): on this machine a call carrying 250 small tuples
  cost 1.4 ms of CPU on each side, packed 0.65 ms; an empty call 0.7 ms,
  packed 0.55 ms.  The class's own methods are unchanged (its own calls and
  tests use them); methods named ``_...`` have no packed form.  Every call
  to an ohmdb actor goes through ``submit``.
* ``on_done`` hands a ref's outcome to a callback without blocking a thread
  (a threaded actor's way to collect answers it does not wait for).
* ``tune_gc`` raises the youngest garbage-collector generation's threshold
  in an actor process: a replica allocates several tracked objects per
  transaction, and at CPython's default (700) it collects every few hundred
  transactions, each older collection also walking every table's dict
  (measured: voter ~14% more throughput).  Reference cycles are rare there
  (an aborted procedure's exception and its frames); they are still collected.
* ``submit``/``get``/``call`` turn Ray's failures into typed errors:
  ``Timeout`` when no answer came in time, ``ActorDied`` when the actor is gone;
  a typed error raised inside an actor method comes back as itself.
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
import signal
import time
from typing import Any, Iterable

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.errors import ActorDied, OhmError, Timeout

NAMESPACE = "ohmdb"
CONTROL_GROUP = "control"
#: Threads in each actor's control group (heartbeats, status).
CONTROL_THREADS = 2
#: CPU request of every ohmdb actor: small, so a 2-core machine hosts many.
ACTOR_CPUS = 0.0
#: Poll interval while waiting for a killed actor's name to be released.
NAME_POLL_S = 0.05
#: How long a signal sent through a task on another node may take.
SIGNAL_TIMEOUT_S = 10.0

#: Name prefix of a remote method's packed form (see "Packed calls").
PACKED_PREFIX = "packed_"
#: Garbage-collector thresholds in actor processes (``tune_gc``): youngest generation (allocations), then
#: collections of the younger generation between collections of the next (CPython's defaults).
GC_YOUNG_ALLOCATIONS = 50_000
GC_MIDDLE_EVERY = 10
GC_OLD_EVERY = 10

log = logging.getLogger("ohmdb.runtime")
_remote_classes: dict[type, Any] = {}


def tune_gc() -> None:
    """Collect garbage less often in this (actor) process: see the design note."""
    gc.set_threshold(GC_YOUNG_ALLOCATIONS, GC_MIDDLE_EVERY, GC_OLD_EVERY)


# --- connection -------------------------------------------------------------------


def connect(address: str | None = None, **init_kwargs: Any) -> str:
    """Attach to Ray (start a local instance when ``address`` is None); return its GCS address."""
    if not ray.is_initialized():
        if address is None:
            # "local": always a new instance. Plain None would attach to whatever RAY_ADDRESS or the
            # last `ray start` (ray_current_cluster) points at, even a cluster that is gone.
            address = "local"
            init_kwargs.setdefault("include_dashboard", False)
        init_kwargs.setdefault("log_to_driver", os.environ.get("OHMDB_LOG_TO_DRIVER", "0") == "1")
        ray.init(address=address, **init_kwargs)
    return ray.get_runtime_context().gcs_address


def is_connected() -> bool:
    return ray.is_initialized()


def disconnect() -> None:
    """Detach this driver (and stop the local instance if this driver started it)."""
    if ray.is_initialized():
        ray.shutdown()


# --- actors ------------------------------------------------------------------------


def _remote_class(cls: type) -> Any:
    if cls not in _remote_classes:
        groups = {CONTROL_GROUP: CONTROL_THREADS, **getattr(cls, "CONCURRENCY_GROUPS", {})}
        _remote_classes[cls] = ray.remote(concurrency_groups=groups)(_packing_class(cls))
    return _remote_classes[cls]


def _packing_class(cls: type) -> type:
    """A subclass of ``cls`` with, for each public method ``m``, a method ``PACKED_PREFIX + m`` that takes
    its arguments as one packed blob and returns its result packed (see "Packed calls" in the design
    note).  ``m`` itself stays as it is: the class's own calls of it are not packed."""
    wrapped = {}
    for name, member in inspect.getmembers(cls, inspect.isfunction):
        if name.startswith("_") or isinstance(inspect.getattr_static(cls, name), (staticmethod, classmethod)):
            continue
        wrapped[PACKED_PREFIX + name] = _packing_method(member)
    sub = type(cls.__name__, (cls,), wrapped)
    sub.__qualname__, sub.__module__, sub.__doc__ = cls.__qualname__, cls.__module__, cls.__doc__
    return sub


def _packing_method(method: Any) -> Any:
    if inspect.iscoroutinefunction(method):
        async def run(self: Any, packed: bytes) -> bytes:
            return _pack(await method(self, *_unpack(packed)))
    else:
        def run(self: Any, packed: bytes) -> bytes:
            return _pack(method(self, *_unpack(packed)))
    # Ray reads a method's options from its ``__ray_*__`` attributes (ray.method): carry those over,
    # nothing else: a ``__wrapped__`` (functools.wraps) or a ``__signature__`` (Ray's tracing sets one
    # on methods it loads) would make Ray check calls against the unpacked signature.
    run.__dict__.update({k: v for k, v in method.__dict__.items() if k.startswith("__ray_")})
    run.__name__ = PACKED_PREFIX + method.__name__
    run.__qualname__ = method.__qualname__.rsplit(".", 1)[0] + "." + run.__name__
    run.__doc__ = method.__doc__
    return run


def _pack(value: Any) -> bytes:
    return ray.cloudpickle.dumps(value, protocol=5)


def _unpack(data: bytes) -> Any:
    return ray.cloudpickle.loads(data)


def in_group(group: str) -> Any:
    """Decorator: the method runs in concurrency group ``group`` (declared in ``CONCURRENCY_GROUPS``)."""
    return ray.method(concurrency_group=group)


def spawn(cls: type, name: str, *args: Any, node_id: str | None = None, max_restarts: int = 0,
          max_concurrency: int | None = None) -> Any:
    """Create the named, detached actor ``cls(*args)``; return its handle.

    Raises ValueError when an actor of that name exists.
    """
    options: dict[str, Any] = dict(
        name=name, namespace=NAMESPACE, lifetime="detached", num_cpus=ACTOR_CPUS,
        max_restarts=max_restarts, max_task_retries=0,
    )
    if max_concurrency is not None:  # a threaded actor: this many calls at once in its default group
        options["max_concurrency"] = max_concurrency
    if node_id is not None:
        # Strict: replicas of one partition must not share a node because a scheduler preferred it.
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False,
                                                                        _fail_on_unavailable=True)
    return _remote_class(cls).options(**options).remote(*args)


def find(name: str) -> Any | None:
    """The handle of the named actor, or None."""
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None


def list_names(prefix: str = "") -> list[str]:
    """Names of live named actors in the ohmdb namespace that start with ``prefix``."""
    found = ray.util.list_named_actors(all_namespaces=True)
    return sorted(a["name"] for a in found if a.get("namespace") == NAMESPACE and a["name"].startswith(prefix))


def actor_id(handle: Any) -> str | None:
    """A stable identity of the actor behind a handle (None for no handle)."""
    return None if handle is None else handle._actor_id.hex()


def kill(handle: Any) -> None:
    """Kill an actor for good (no restart); a dead actor (or no handle) is not an error."""
    if handle is None:
        return
    try:
        ray.kill(handle, no_restart=True)
    except (ValueError, RayActorError):
        pass


def _sigkill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)  # works on a stopped (SIGSTOP) process too: it never runs again
        return True
    except (ProcessLookupError, PermissionError):
        return False


def process_state(node_id: str | None, pid: int | None) -> str | None:
    """'running', 'stopped' (SIGSTOP), 'gone', or None when unknown (another node, or no pid)."""
    if pid is None or node_id is None or node_id != own_node_id():
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return "gone"
    except OSError:
        return None
    return {"T": "stopped", "t": "stopped", "Z": "gone", "X": "gone"}.get(state, "running")


def kill_process(node_id: str | None, pid: int | None) -> None:
    """SIGKILL an actor's process by pid on its node, so a hung (stopped) process cannot wake and act.

    ``ray.kill`` fails the actor's calls at once but leaves a stopped process
    alive until it is continued, and it then finishes what it was running.
    On this node the signal is sent directly; on another node by a small task
    pinned there (not waited for).
    """
    if pid is None or node_id is None:
        return
    if node_id == own_node_id():
        _sigkill(pid)
        return
    task = ray.remote(num_cpus=0, max_retries=0)(_sigkill).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False))
    task.remote(pid)


def _signal(pid: int, signum: int) -> bool:
    try:
        os.kill(pid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def signal_process(node_id: str | None, pid: int, signum: int) -> bool:
    """Send ``signum`` to ``pid`` on its node (fault injection): directly here, by a pinned task elsewhere.

    True when the signal was delivered (on another node: when the task says so).
    """
    if node_id is None or node_id == own_node_id():
        return _signal(pid, signum)
    task = ray.remote(num_cpus=0, max_retries=0)(_signal).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False))
    try:
        return bool(ray.get(task.remote(pid, signum), timeout=SIGNAL_TIMEOUT_S))
    except (GetTimeoutError, RayActorError, RayTaskError):
        return False


class LocalNodes:
    """A multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``): a head and workers.

    For tests and benchmarks of node loss; ``connect(nodes.address)`` attaches to it.
    """

    def __init__(self, nodes: int, cpus_per_node: int = 1) -> None:
        from ray.cluster_utils import Cluster as RayCluster

        if nodes < 1:
            raise ValueError(f"nodes must be at least 1, got {nodes}")
        self._cluster = RayCluster(initialize_head=True, head_node_args={"num_cpus": cpus_per_node})
        self._workers = {}
        for _ in range(nodes - 1):
            node = self._cluster.add_node(num_cpus=cpus_per_node)
            self._workers[node.node_id] = node
        self._cluster.wait_for_nodes()
        self.address = self._cluster.address

    def worker_ids(self) -> list[str]:
        """Node ids of the workers still in the cluster (the head is never removed)."""
        return sorted(self._workers)

    def remove(self, node_id: str) -> None:
        """Remove a worker node abruptly (its processes are killed)."""
        node = self._workers.pop(node_id)
        self._cluster.remove_node(node, allow_graceful=False)

    def shutdown(self) -> None:
        disconnect()
        self._cluster.shutdown()


def restart(handle: Any) -> None:
    """Kill an actor's process and let Ray restart it (it must have restarts left)."""
    try:
        ray.kill(handle, no_restart=False)
    except (ValueError, RayActorError):
        pass


def was_restarted() -> bool:
    """Inside an actor: True when Ray restarted it after its process died."""
    return bool(ray.get_runtime_context().was_current_actor_reconstructed)


def wait_gone(name: str, timeout_s: float) -> bool:
    """Wait until no actor holds ``name`` (Ray frees a killed actor's name asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while find(name) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(NAME_POLL_S)
    return True


# --- calls ---------------------------------------------------------------------------


def submit(handle: Any, method: str, *args: Any, control: bool = False) -> Any:
    """Start ``handle.method(*args)``; return its object ref."""
    m = getattr(handle, PACKED_PREFIX + method)
    if control:
        m = m.options(concurrency_group=CONTROL_GROUP)
    return m.remote(_pack(args))


def get(ref: Any, timeout_s: float | None = None, what: str = "call") -> Any:
    """Wait for one ref; typed errors for timeouts, dead actors and raised OhmErrors."""
    try:
        return _unpack(ray.get(ref, timeout=timeout_s))
    except GetTimeoutError:
        raise Timeout(f"{what}: no answer within {timeout_s} s; the outcome is unknown", timeout_s=timeout_s) from None
    except (RayTaskError, RayActorError) as exc:
        raise _typed(exc, what) from None


async def get_async(ref: Any, what: str = "call") -> Any:
    """Await one ref inside an async actor; typed errors as in ``get``."""
    try:
        return _unpack(await ref)
    except (RayTaskError, RayActorError) as exc:
        raise _typed(exc, what) from None


def on_done(ref: Any, callback: Any, what: str = "call") -> None:
    """Call ``callback(outcome)`` once ``ref`` resolves: its value, or the typed error ``get`` would raise.

    The callback runs on a Ray thread: it must be short and must not block (hand the outcome to a queue).
    """
    def resolved(future: Any) -> None:
        try:
            outcome = _unpack(future.result())
        except (RayTaskError, RayActorError) as exc:
            outcome = _typed(exc, what)
        except Exception as exc:  # e.g. the object was lost: the callee's answer never comes
            outcome = ActorDied(f"{what}: no answer ({type(exc).__name__})", cause=str(exc)[:500])
        callback(outcome)

    ref.future().add_done_callback(resolved)


def _typed(exc: Exception, what: str) -> Exception:
    """The typed error for a Ray failure: the OhmError an actor raised, or ActorDied."""
    if isinstance(exc, RayTaskError):  # raised inside the method (checked first: it may also be an actor error)
        cause = getattr(exc, "cause", None)
        return cause if isinstance(cause, OhmError) else exc
    return ActorDied(f"{what}: the actor died ({type(exc).__name__})", cause=str(exc)[:500])


def get_each(refs: list[Any], timeout_s: float | None, what: str = "call") -> list[Any]:
    """Wait for all refs up to one shared deadline; each result or its typed error."""
    if not refs:
        return []
    ready_refs, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s, fetch_local=True)
    finished = set(ready_refs)
    out: list[Any] = []
    for ref in refs:
        if ref not in finished:
            out.append(Timeout(f"{what}: no answer within {timeout_s} s; the outcome is unknown", timeout_s=timeout_s))
            continue
        try:
            out.append(get(ref, what=what))
        except OhmError as err:
            out.append(err)
    return out


def poll(refs: list[Any], timeout_s: float) -> list[Any]:
    """The refs among ``refs`` that finish within ``timeout_s`` (all of them as soon as they have)."""
    if not refs:
        return []
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s, fetch_local=True)
    return done


def outcome(ref: Any, what: str = "call") -> Any:
    """A finished ref's value, or its typed error as a value."""
    try:
        return get(ref, what=what)
    except OhmError as err:
        return err


def ready(refs: list[Any]) -> bool:
    """True when every ref has finished (successfully or not)."""
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
    return len(done) == len(refs)


def call(handle: Any, method: str, *args: Any, timeout_s: float | None = None, control: bool = False) -> Any:
    """``handle.method(*args)`` and wait for it."""
    return get(submit(handle, method, *args, control=control), timeout_s, what=method)


# --- where we are ----------------------------------------------------------------------


def alive_nodes() -> list[dict[str, Any]]:
    """Alive Ray nodes: node_id, address, is_head, CPUs."""
    nodes = []
    for n in ray.nodes():
        if n.get("Alive"):
            nodes.append({
                "node_id": n["NodeID"],
                "address": n.get("NodeManagerAddress"),
                "cpus": n.get("Resources", {}).get("CPU", 0.0),
                "is_head": bool(n.get("Resources", {}).get("node:__internal_head__")),
            })
    return sorted(nodes, key=lambda n: (not n["is_head"], n["node_id"]))


def own_node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def own_identity() -> dict[str, Any]:
    """Where the calling process runs: node id and pid."""
    return {"node_id": own_node_id(), "pid": os.getpid()}


def kv_get(key: str) -> bytes | None:
    """Read from Ray's GCS key-value store (outlives actor restarts, not the Ray cluster)."""
    from ray.experimental import internal_kv
    return internal_kv._internal_kv_get(key, namespace=NAMESPACE)


def kv_put(key: str, value: bytes) -> None:
    from ray.experimental import internal_kv
    internal_kv._internal_kv_put(key, value, overwrite=True, namespace=NAMESPACE)


def dumps(value: Any) -> bytes:
    """Serialize as Ray does (cloudpickle): what a call can return, this can store."""
    return ray.cloudpickle.dumps(value)


def loads(data: bytes) -> Any:
    return ray.cloudpickle.loads(data)


def register_by_value(modules: Iterable[Any]) -> None:
    """Ship these modules' functions by value (a driver's own procedures)."""
    for module in modules:
        try:
            ray.cloudpickle.register_pickle_by_value(module)
        except ValueError:
            pass  # already registered, or not a registrable module
