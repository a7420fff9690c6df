"""What both peers share: throw-away server processes, client threads and the figures.

Design note
-----------
A peer (``workloads.peer_redis``, ``workloads.peer_postgres``) starts its
servers through a ``Servers``: it owns a temporary directory and every process
started in it, and is a context manager -- on exit, also on errors, it stops
each process (terminate, then kill the process group after a bounded wait;
``SERVER_STOP_TIMEOUT_S``), last started first, then removes the directory.
Each process leads its own session (``start_new_session``), so killing its
group kills its children too.  Server stdout/stderr go to log files in the
temporary directory; a server that fails to start (``wait_ready``) or a setup
tool that fails (``Servers.run_tools``) raises ``PeerError`` with the tail of
its log (``LOG_TAIL_BYTES``).  Every wait is bounded (the ``*_S`` constants
below).  With a ``RunAs`` the directory and the processes belong to that user
(set in the child before exec, so the process we track *is* the server).

``drive`` runs the client threads: each connects (``setup``), all start
together behind a barrier whose action starts the clock, run ``loop`` until the
deadline and ``teardown``; a thread's exception is recorded in its ``Tally``
(``failure``), never raised in the thread, and threads still running
``CLIENT_GRACE_S`` past the deadline are reported, not waited for.

Percentiles are computed here (``latency_percentiles``: per transaction, nearest rank)
rather than imported from ``workloads.bench``, which would pull in Ray.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import ModuleType
from typing import IO, Any, Callable

INSTALL_DRIVERS = "pip install -e '.[peers]'"

#: Bytes of a server log quoted in an error.
LOG_TAIL_BYTES = 4_000
#: Poll interval of every readiness wait.
POLL_INTERVAL_S = 0.05
#: A server must answer within this after it is started.
SERVER_START_TIMEOUT_S = 30.0
#: A stopping server gets this long before its process group is killed.
SERVER_STOP_TIMEOUT_S = 10.0
#: Client threads get this long past the run's duration to finish their last call.
CLIENT_GRACE_S = 30.0


class PeerError(RuntimeError):
    """A peer's servers failed to start, run or stop."""


class PeerUnavailable(PeerError):
    """A peer cannot run here: a server binary or a Python driver is missing."""


# --- processes -----------------------------------------------------------------------------


@dataclass
class _Proc:
    name: str
    proc: subprocess.Popen
    log_path: str
    log: IO[bytes]
    stop_signal: int


@dataclass
class RunAs:
    user: str
    uid: int
    gid: int


class Servers:
    """Owns a temp dir and the processes started in it; on exit stops them all and removes the dir.

    The dir is made under ``parent`` (default: the system's temp dir); with ``run_as`` it is chowned
    to that user and the processes run as that user.
    """

    def __init__(self, prefix: str, run_as: RunAs | None = None, parent: str | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix=prefix, dir=parent)
        self.run_as = run_as
        self.procs: list[_Proc] = []
        if run_as:
            try:
                os.chown(self.dir, run_as.uid, run_as.gid)
            except BaseException:
                shutil.rmtree(self.dir, ignore_errors=True)
                raise

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in self.procs]

    def subdir(self, name: str) -> str:
        path = os.path.join(self.dir, name)
        os.makedirs(path, exist_ok=True)
        if self.run_as:
            os.chown(path, self.run_as.uid, self.run_as.gid)
        return path

    def spawn(self, name: str, argv: list[str], stop_signal: int = signal.SIGTERM) -> _Proc:
        log_path = os.path.join(self.dir, f"{name}.log")
        log = open(log_path, "ab")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=self.dir, env=_child_env(), start_new_session=True, **self._user_kw())
        except BaseException:
            log.close()
            raise
        entry = _Proc(name, proc, log_path, log, stop_signal)
        self.procs.append(entry)
        return entry

    def run_tools(self, tools: list[tuple[str, list[str]]], timeout_s: float) -> None:
        """Run setup commands concurrently to completion (bounded); PeerError with the output of a failure."""
        entries = [self.spawn(name, argv) for name, argv in tools]
        deadline = time.monotonic() + timeout_s
        for entry in entries:
            try:
                rc = entry.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise PeerError(f"{entry.name} did not finish within {timeout_s:.0f} s"
                                f"{_log_tail(entry.log_path)}") from None
            if rc != 0:
                raise PeerError(f"{entry.name} exited with {rc}{_log_tail(entry.log_path)}")

    def close(self) -> None:
        """Stop every process (last started first), then remove the dir; the first failure is re-raised."""
        failures: list[BaseException] = []
        for entry in reversed(self.procs):
            try:
                _stop(entry)
            except BaseException as e:  # noqa: BLE001 -- keep stopping the others
                failures.append(e)
        shutil.rmtree(self.dir, ignore_errors=True)
        if failures:
            raise PeerError(f"could not stop every server process: {failures[0]!r}") from failures[0]

    def _user_kw(self) -> dict[str, Any]:
        if self.run_as is None:
            return {}
        return {"user": self.run_as.uid, "group": self.run_as.gid, "extra_groups": []}


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _stop(entry: _Proc) -> None:
    """Signal, wait (bounded), then kill the whole process group; always close the log."""
    proc = entry.proc
    try:
        if proc.poll() is None:
            _signal(proc, entry.stop_signal, group=False)
            try:
                proc.wait(timeout=SERVER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL, group=True)  # the leader is unreaped: its pgid is still ours
                proc.wait(timeout=SERVER_STOP_TIMEOUT_S)
    finally:
        entry.log.close()


def _signal(proc: subprocess.Popen, sig: int, group: bool) -> None:
    try:
        if group:
            os.killpg(proc.pid, sig)  # start_new_session: pgid == pid
        else:
            proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _log_tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - LOG_TAIL_BYTES))
            text = f.read().decode("utf-8", "replace").strip()
    except OSError as e:
        return f" (log {path} unreadable: {e})"
    return f"; last lines of {os.path.basename(path)}:\n{text}" if text else f" ({os.path.basename(path)} is empty)"


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held together while chosen, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_ready(entry: _Proc, probe: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``probe`` until it returns True; PeerError if the process exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if entry.proc.poll() is not None:
            raise PeerError(f"{entry.name} exited with {entry.proc.returncode} before {what}"
                            f"{_log_tail(entry.log_path)}")
        if probe():
            return
        time.sleep(POLL_INTERVAL_S)
    raise PeerError(f"{entry.name}: no {what} within {timeout_s:.0f} s{_log_tail(entry.log_path)}")


def import_driver(module: str, label: str, pip_spec: str, missing: list[str]) -> ModuleType | None:
    """A peer's Python driver, or None with a line in ``missing`` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        missing.append(f"the Python driver {label} (module `{module}`) is not installed "
                       f"(install it: `{INSTALL_DRIVERS}` or `pip install '{pip_spec}'`)")
        return None


# --- shared figures --------------------------------------------------------------------------


@dataclass
class Tally:
    committed: int = 0
    rejected: int = 0
    errors: int = 0
    reasons: Counter = field(default_factory=Counter)
    per_contestant: Counter = field(default_factory=Counter)
    batches: list[tuple[float, int]] = field(default_factory=list)  # (latency ms, transactions)
    unacked: int = 0
    failure: str | None = None
    reads: int = 0  # bank: consistent total reads, and what was wrong with any of them
    read_problems: list[str] = field(default_factory=list)

    def merge(self, other: Tally) -> None:
        self.committed += other.committed
        self.rejected += other.rejected
        self.errors += other.errors
        self.reasons.update(other.reasons)
        self.per_contestant.update(other.per_contestant)
        self.batches.extend(other.batches)
        self.unacked += other.unacked
        self.failure = self.failure or other.failure
        self.reads += other.reads
        self.read_problems.extend(other.read_problems)


def latency_percentiles(batches: list[tuple[float, int]]) -> dict[str, float]:
    """p50/p95/p99/max over transactions, each batch standing for its size (nearest rank)."""
    if not batches:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(batches)
    total = sum(n for _, n in ordered)
    out = {}
    for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        seen, value = 0, ordered[-1][0]
        for latency, n in ordered:
            seen += n
            if seen >= q * total:
                value = latency
                break
        out[name] = round(value, 3)
    out["max"] = round(ordered[-1][0], 3)
    return out


def drive(clients: int, duration_s: float, setup: Callable[[int], Any],
           loop: Callable[[Any, int, float, Tally], None], teardown: Callable[[Any], None]) -> tuple[Tally, float]:
    """``clients`` threads: ``setup(i)`` (connect), start together, ``loop`` until the deadline, ``teardown``.

    Returns the merged tally and the elapsed seconds.  A thread's exception is
    recorded in the tally (``failure``), never raised in the thread.
    """
    tallies = [Tally() for _ in range(clients)]
    clock: dict[str, float] = {}

    def start_clock() -> None:  # the barrier's action: runs once, before any thread is released
        clock["start"] = time.perf_counter()
        clock["deadline"] = clock["start"] + duration_s

    barrier = threading.Barrier(clients + 1, action=start_clock)

    def body(i: int) -> None:
        state = None
        try:
            state = setup(i)
            barrier.wait(timeout=SERVER_START_TIMEOUT_S)
            loop(state, i, clock["deadline"], tallies[i])
        except threading.BrokenBarrierError:
            pass  # another client failed (recorded there) or the start timed out (recorded below)
        except BaseException as e:  # noqa: BLE001 -- reported in the result
            tallies[i].failure = f"client {i}: {type(e).__name__}: {e}"
            barrier.abort()
        finally:
            if state is not None:
                quietly(lambda: teardown(state))

    threads = [threading.Thread(target=body, args=(i,), name=f"peer-client-{i}", daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    try:
        barrier.wait(timeout=SERVER_START_TIMEOUT_S)
    except threading.BrokenBarrierError:
        clock.setdefault("start", time.perf_counter())
    _join_all(threads, time.monotonic() + SERVER_START_TIMEOUT_S + duration_s + CLIENT_GRACE_S)
    elapsed = time.perf_counter() - clock["start"]
    total = Tally()
    for t in tallies:
        total.merge(t)
    if "deadline" not in clock:
        total.failure = total.failure or f"clients not connected within {SERVER_START_TIMEOUT_S:.0f} s"
    if any(t.is_alive() for t in threads):
        total.failure = total.failure or f"client threads still running {CLIENT_GRACE_S:.0f} s past the deadline"
    return total, elapsed


def _join_all(threads: list[threading.Thread], deadline: float) -> None:
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))


def quietly(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 -- best-effort cleanup
        pass
