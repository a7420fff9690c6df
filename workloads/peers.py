"""Peer baselines: the same workloads on Redis and on PostgreSQL, side by side with ohmdb.

Design note
-----------
The benchmark prints these figures next to ohmdb's so a reader can place them.
Each peer starts its own throw-away servers in a temporary directory, drives
them with client threads for a fixed time, checks an invariant, stops every
process it started (terminate, then kill the process group after a bounded
wait -- also on errors: ``_Servers`` is a context manager) and removes the
directory.  Every wait is bounded (the ``*_S`` / ``*_MS`` constants below).
Server stdout/stderr go to log files in the temporary directory; a server that
fails to start raises ``PeerError`` with the tail of its log.

Public API: ``run_redis_voter``, ``run_postgres_bank`` (each returns a report
dict; ``pids`` and ``temp_dir`` say what was started and removed, for tests),
``require_redis`` / ``require_postgres`` (raise ``PeerUnavailable`` naming the
missing binary or driver and how to install it), ``PeerError``,
``PeerUnavailable``.

**Redis voter** (``run_redis_voter``).  A primary (``appendonly yes``,
``appendfsync always``) and one replica (``replicaof``; same persistence
settings) on free loopback ports.  VoltDB's voter procedure, as in
``workloads.voter.vote``, is one Lua script (``SCRIPT LOAD`` then ``EVALSHA``;
a script runs atomically, like a single-partition procedure):

* ``contestants`` (hash: number -> name), ``area_code_state`` (hash: area code
  -> state) -- loaded before the run;
* ``voters`` (hash: phone -> votes cast), ``votes:<phone>`` (hash: vote number
  -> ``"<state>:<contestant>"``, i.e. the ``votes`` table keyed by (phone,
  vote number)), ``totals`` (hash: contestant -> accepted votes).

The script returns the phone's vote count (accepted), ``-1`` (unknown
contestant) or ``-2`` (over the vote limit); rejected calls write nothing.
Each client thread has one connection and sends a pipeline of ``batch``
``EVALSHA`` calls followed by ``WAIT 1 <timeout>``: a batch is acknowledged
once the replica has processed it.  (``WAIT`` counts replicas that received and
applied the writes; requiring their fsync needs ``WAITAOF``, Redis >= 7.2.)  A
transaction's latency is its batch's round trip; ``throughput_tps`` counts all
calls (accepted + rejected), as ohmdb's voter benchmark does.  The call stream
is ``workloads.voter.VoterGenerator`` seeded exactly as the ohmdb benchmark
seeds it, so both systems see the same arguments.  Check, on the primary and
again on the replica (a read-only script walks ``voters``): ``totals`` equals
the accepted votes the clients saw (overall and per contestant), ``voters``
sums to the same, every phone has as many vote records as its count and none
is over the limit; and every batch was acknowledged by the replica.  Before the clock starts a
write must be acknowledged by the replica (after a diskless full sync the
primary streams writes only after the replica's first once-a-second ACK).

**PostgreSQL bank** (``run_postgres_bank``).  Two servers (``initdb -A
trust``; ``fsync``, ``synchronous_commit`` on; ``max_prepared_transactions`` >=
2 * clients), each holding the accounts of one partition of
``workloads.bank.accounts_by_partition(accounts, 2)`` (the placement ohmdb
uses), balance ``BALANCE_INITIAL`` each.  A transfer from
``workloads.bank.BankLoad.next_cross()`` (always across the two servers) is a
two-phase commit with psycopg 3's TPC API: ``tpc_begin`` on both, the
conditional debit (``... AND balance >= amount``; no row updated = refused) and
the credit, ``tpc_prepare`` on both, ``tpc_commit`` on both; a refusal or any
error before the decision rolls both back.  The statements always run on
server 0 first, then server 1: with one row per server per transaction, no
transaction waits on server 0 while holding a lock on server 1, so no
distributed deadlock (which neither server could detect) can form;
``lock_timeout`` is a safety net.  ``throughput_tps`` is committed transfers per
second; latency covers committed and refused transfers.  Check: the total over
both servers is unchanged, every account is present, none is negative and no
prepared transaction is left in doubt.

PostgreSQL refuses to run as root.  When this process is root the servers (and
``initdb``) run as an unprivileged user -- ``$OHMDB_PEERS_PG_USER``, else
``postgres`` if that account exists, else ``nobody`` -- by ``subprocess``'s
``user=`` / ``group=`` / ``extra_groups=[]`` (set in the child before exec, so
the process we track *is* the server: no ``su``/``runuser`` wrapper in
between).  The temporary directory is chowned to that user and placed under a
directory every user can traverse.  Clients connect over loopback TCP.

Percentiles are computed here (per transaction, nearest rank) rather than
imported from ``workloads.bench``, which would pull in Ray.
"""

from __future__ import annotations

import glob
import os
import pwd
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import ModuleType
from typing import IO, Any, Callable

from workloads import bank, voter

#: Where postgres/initdb are looked for after PATH (globs; newest version first).
PG_BIN_DIR_PATTERNS: tuple[str, ...] = ("/usr/local/bin", "/usr/lib/postgresql/*/bin")
#: Environment variable naming the user the PostgreSQL servers run as when we are root.
PG_USER_ENV = "OHMDB_PEERS_PG_USER"
#: Users tried, in order, when we are root and PG_USER_ENV is unset.
PG_USER_CANDIDATES = ("postgres", "nobody")
#: Directories tried for the PostgreSQL temp dir when the default one is not traversable by its user.
PG_TEMP_PARENTS = ("/tmp", "/var/tmp")
PG_SUPERUSER = "postgres"
BALANCE_INITIAL = bank.BALANCE_DEFAULT
#: Two-phase transaction ids: psycopg Xid format id.
XID_FORMAT_ID = 0x0D8
INSTALL_REDIS = "apt-get install redis-server"
INSTALL_POSTGRES = "apt-get install postgresql"
INSTALL_DRIVERS = "pip install -e '.[peers]'"

K_CONTESTANTS = "contestants"
K_AREA_CODES = "area_code_state"
K_VOTERS = "voters"
K_TOTALS = "totals"
K_WARMUP = "peer:warmup"
VOTES_PREFIX = "votes:"
REJECT_INVALID_CONTESTANT = -1
REJECT_OVER_LIMIT = -2

VOTE_LUA = """
-- KEYS: contestants, area_code_state, voters, votes:<phone>, totals
-- ARGV: phone_number, contestant_number, max_votes
local phone, contestant, max_votes = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('HEXISTS', KEYS[1], contestant) == 0 then
  return -1
end
local cast = tonumber(redis.call('HGET', KEYS[3], phone) or '0')
if cast >= max_votes then
  return -2
end
local area = tostring(math.floor(tonumber(phone) / 10000000))
local state = redis.call('HGET', KEYS[2], area) or ''
cast = cast + 1
redis.call('HSET', KEYS[3], phone, cast)
redis.call('HSET', KEYS[4], cast, state .. ':' .. contestant)
redis.call('HINCRBY', KEYS[5], contestant, 1)
return cast
"""

SUMMARY_LUA = """#!lua flags=no-writes
-- KEYS: voters; ARGV: votes key prefix, max_votes.  Returns {phones, votes, mismatched records, over limit}.
local voters = redis.call('HGETALL', KEYS[1])
local phones, votes, mismatched, over = 0, 0, 0, 0
for i = 1, #voters, 2 do
  local cast = tonumber(voters[i + 1])
  phones = phones + 1
  votes = votes + cast
  if cast > tonumber(ARGV[2]) then over = over + 1 end
  if redis.call('HLEN', ARGV[1] .. voters[i]) ~= cast then mismatched = mismatched + 1 end
end
return {phones, votes, mismatched, over}
"""

DEBIT_SQL = "UPDATE accounts SET balance = balance - %s WHERE id = %s AND balance >= %s"
CREDIT_SQL = "UPDATE accounts SET balance = balance + %s WHERE id = %s"
CREATE_ACCOUNTS_SQL = "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0))"
SUMMARY_SQL = "SELECT coalesce(sum(balance), 0), count(*), count(*) FILTER (WHERE balance < 0) FROM accounts"

#: Bytes of a server log quoted in an error.
LOG_TAIL_BYTES = 4_000
#: Poll interval of every readiness wait.
POLL_INTERVAL_S = 0.05
#: A server must answer within this after it is started.
SERVER_START_TIMEOUT_S = 30.0
#: initdb of one data directory.
INITDB_TIMEOUT_S = 120.0
#: The replica must be linked and in sync within this.
REPLICA_SYNC_TIMEOUT_S = 30.0
#: A stopping server gets this long before its process group is killed.
SERVER_STOP_TIMEOUT_S = 10.0
#: Client threads get this long past the run's duration to finish their last call.
CLIENT_GRACE_S = 30.0
#: Socket timeout of every Redis connection (one pipelined batch must return within it).
REDIS_SOCKET_TIMEOUT_S = 30.0
#: WAIT's timeout: a batch not acknowledged by the replica by then counts as unacknowledged.
WAIT_TIMEOUT_MS = 5_000
#: PostgreSQL connect timeout (whole seconds, libpq).
PG_CONNECT_TIMEOUT_S = 5
#: Per-statement lock wait; breaks any lock wait that would otherwise hang.
PG_LOCK_TIMEOUT_MS = 5_000
#: Per-statement time limit.
PG_STATEMENT_TIMEOUT_MS = 30_000


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
class _RunAs:
    user: str
    uid: int
    gid: int


class _Servers:
    """Owns a temp dir and the processes started in it; on exit stops them all and removes the dir."""

    def __init__(self, prefix: str, run_as: _RunAs | None = None) -> None:
        parent = _traversable_temp_parent(run_as.uid) if run_as else None
        self.dir = tempfile.mkdtemp(prefix=prefix, dir=parent)
        self.run_as = run_as
        self.procs: list[_Proc] = []
        if run_as:
            try:
                os.chown(self.dir, run_as.uid, run_as.gid)
            except BaseException:
                shutil.rmtree(self.dir, ignore_errors=True)
                raise

    def __enter__(self) -> _Servers:
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


def _free_ports(n: int) -> list[int]:
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


def _wait_ready(entry: _Proc, probe: Callable[[], bool], timeout_s: float, what: str) -> None:
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


# --- shared figures --------------------------------------------------------------------------


@dataclass
class _Tally:
    committed: int = 0
    rejected: int = 0
    errors: int = 0
    reasons: Counter = field(default_factory=Counter)
    per_contestant: Counter = field(default_factory=Counter)
    batches: list[tuple[float, int]] = field(default_factory=list)  # (latency ms, transactions)
    unacked: int = 0
    failure: str | None = None

    def merge(self, other: _Tally) -> None:
        self.committed += other.committed
        self.rejected += other.rejected
        self.errors += other.errors
        self.reasons.update(other.reasons)
        self.per_contestant.update(other.per_contestant)
        self.batches.extend(other.batches)
        self.unacked += other.unacked
        self.failure = self.failure or other.failure


def _latency_ms(batches: list[tuple[float, int]]) -> dict[str, float]:
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


def _drive(clients: int, duration_s: float, setup: Callable[[int], Any],
           loop: Callable[[Any, int, float, _Tally], None], teardown: Callable[[Any], None]) -> tuple[_Tally, float]:
    """``clients`` threads: ``setup(i)`` (connect), start together, ``loop`` until the deadline, ``teardown``.

    Returns the merged tally and the elapsed seconds.  A thread's exception is
    recorded in the tally (``failure``), never raised in the thread.
    """
    tallies = [_Tally() for _ in range(clients)]
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
                _quietly(lambda: teardown(state))

    threads = [threading.Thread(target=body, args=(i,), name=f"peer-client-{i}", daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    try:
        barrier.wait(timeout=SERVER_START_TIMEOUT_S)
    except threading.BrokenBarrierError:
        clock.setdefault("start", time.perf_counter())
    _join_all(threads, time.monotonic() + SERVER_START_TIMEOUT_S + duration_s + CLIENT_GRACE_S)
    elapsed = time.perf_counter() - clock["start"]
    total = _Tally()
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


def _quietly(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 -- best-effort cleanup
        pass


# --- Redis voter -----------------------------------------------------------------------------


def require_redis() -> tuple[str, ModuleType]:
    """(redis-server path, the redis module); PeerUnavailable naming everything that is missing."""
    missing = []
    server = shutil.which("redis-server")
    if server is None:
        missing.append(f"the redis-server binary is not on PATH (install it: `{INSTALL_REDIS}`)")
    try:
        import redis
    except ImportError:
        redis = None
        missing.append(f"the Python driver redis-py (module `redis`) is not installed "
                       f"(install it: `{INSTALL_DRIVERS}` or `pip install 'redis>=5,<7'`)")
    if missing:
        raise PeerUnavailable("redis peer unavailable: " + "; ".join(missing))
    return server, redis


def _redis_conf(data_dir: str, port: int, primary_port: int | None) -> str:
    lines = [
        f"port {port}", "bind 127.0.0.1", "protected-mode yes", "daemonize no", 'logfile ""',
        f'dir "{data_dir}"', 'save ""', "appendonly yes", "appendfsync always",
        "repl-diskless-sync-delay 0",  # the replica's first sync starts at once (default: waits 5 s)
    ]
    if primary_port is not None:
        lines += [f"replicaof 127.0.0.1 {primary_port}", "replica-read-only yes"]
    path = os.path.join(data_dir, "redis.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _redis_client(redis: ModuleType, port: int) -> Any:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=REDIS_SOCKET_TIMEOUT_S,
                       socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S, decode_responses=True)


def _pings(redis: ModuleType, port: int) -> bool:
    try:
        conn = _redis_client(redis, port)
        try:
            return bool(conn.ping())
        finally:
            conn.close()
    except redis.RedisError:
        return False


def _start_redis(servers: _Servers, server_bin: str, redis: ModuleType) -> tuple[int, int]:
    """Primary and replica started and answering; (primary port, replica port)."""
    primary_port, replica_port = _free_ports(2)
    roles = (("redis-primary", primary_port, None), ("redis-replica", replica_port, primary_port))
    for name, port, upstream in roles:
        conf = _redis_conf(servers.subdir(name), port, upstream)
        entry = servers.spawn(name, [server_bin, conf])
        _wait_ready(entry, lambda port=port: _pings(redis, port), SERVER_START_TIMEOUT_S, "PING answer")
    return primary_port, replica_port


def _replica_acks(redis: ModuleType, primary: Any, replica: Any) -> bool:
    """The replica is linked and acknowledges a write promptly (WAIT 1 answers within a poll interval).

    After a diskless full sync the primary streams writes only after the
    replica's first ACK (sent once a second), so "online" alone is not enough.
    """
    try:
        if replica.info("replication").get("master_link_status") != "up":
            return False
        primary.incr(K_WARMUP)
        return int(primary.execute_command("WAIT", 1, int(POLL_INTERVAL_S * 1000))) >= 1
    except redis.RedisError:
        return False


def _load_voter_data(primary: Any, contestants: int) -> str:
    data = voter.initial_data(contestants)
    primary.hset(K_CONTESTANTS, mapping={r["contestant_number"]: r["contestant_name"] for r in data["contestants"]})
    primary.hset(K_AREA_CODES, mapping={r["area_code"]: r["state"] for r in data["area_code_state"]})
    return primary.script_load(VOTE_LUA)


def _vote_batch(conn: Any, sha: str, calls: list[tuple[int, int, int]]) -> tuple[list[Any], float]:
    pipe = conn.pipeline(transaction=False)
    for phone, contestant, max_votes in calls:
        pipe.evalsha(sha, 5, K_CONTESTANTS, K_AREA_CODES, K_VOTERS, f"{VOTES_PREFIX}{phone}", K_TOTALS,
                     phone, contestant, max_votes)
    pipe.execute_command("WAIT", 1, WAIT_TIMEOUT_MS)
    t0 = time.perf_counter()
    replies = pipe.execute()
    return replies, (time.perf_counter() - t0) * 1000.0


def _tally_votes(tally: _Tally, calls: list[tuple[int, int, int]], replies: list[Any], latency_ms: float) -> None:
    *outcomes, acked = replies
    for (_, contestant, _), outcome in zip(calls, outcomes):
        if outcome > 0:
            tally.committed += 1
            tally.per_contestant[contestant] += 1
        else:
            tally.rejected += 1
            tally.reasons[voter.INVALID_CONTESTANT if outcome == REJECT_INVALID_CONTESTANT
                          else voter.OVER_VOTE_LIMIT] += 1
    tally.batches.append((latency_ms, len(calls)))
    tally.unacked += int(acked) < 1


def _redis_voter_loop(redis: ModuleType, port: int, sha: str, seed: int, batch: int, contestants: int,
                      max_votes: int) -> tuple[Callable[[int], Any], Callable[[Any, int, float, _Tally], None],
                                               Callable[[Any], None]]:
    def setup(client: int) -> Any:
        gen = voter.VoterGenerator(random.Random(seed * 1_000_003 + client), contestants, max_votes)
        conn = _redis_client(redis, port)
        conn.ping()
        return conn, gen

    def loop(state: Any, client: int, deadline: float, tally: _Tally) -> None:
        conn, gen = state
        while time.perf_counter() < deadline:
            calls = gen.next_batch(batch)
            replies, latency_ms = _vote_batch(conn, sha, calls)
            _tally_votes(tally, calls, replies, latency_ms)

    def teardown(state: Any) -> None:
        state[0].close()

    return setup, loop, teardown


def _vote_summary(conn: Any, max_votes: int) -> dict[str, Any]:
    """One server's votes, read in one read-only script: totals, phones, votes, mismatched records, over limit."""
    phones, votes, mismatched, over = conn.eval_ro(SUMMARY_LUA, 1, K_VOTERS, VOTES_PREFIX, max_votes)
    totals = {int(k): int(v) for k, v in conn.hgetall(K_TOTALS).items()}
    return {"totals": totals, "phones": phones, "votes": votes, "mismatched": mismatched, "over": over}


def _summary_problems(where: str, got: dict[str, Any], tally: _Tally, max_votes: int) -> list[str]:
    problems = []
    counted = sum(got["totals"].values())
    if counted != tally.committed:
        problems.append(f"{where}: totals count {counted} votes, clients saw {tally.committed} accepted")
    if got["totals"] != dict(tally.per_contestant):
        problems.append(f"{where}: per-contestant totals {sorted(got['totals'].items())} != accepted "
                        f"{sorted(tally.per_contestant.items())}")
    if got["votes"] != tally.committed:
        problems.append(f"{where}: voters count {got['votes']} votes, expected {tally.committed}")
    if got["over"]:
        problems.append(f"{where}: {got['over']} phones over the limit of {max_votes}")
    if got["mismatched"]:
        problems.append(f"{where}: {got['mismatched']} phones whose vote records differ from their count")
    return problems


def _voter_check(primary: Any, replica: Any, tally: _Tally, max_votes: int) -> dict[str, Any]:
    acked = int(primary.execute_command("WAIT", 1, WAIT_TIMEOUT_MS))
    on_primary = _vote_summary(primary, max_votes)
    problems = _summary_problems("primary", on_primary, tally, max_votes)
    if acked < 1:
        problems.append(f"the replica did not acknowledge the final state within {WAIT_TIMEOUT_MS} ms")
    else:
        problems += _summary_problems("replica", _vote_summary(replica, max_votes), tally, max_votes)
    if tally.unacked:
        problems.append(f"{tally.unacked} batches not acknowledged by the replica within {WAIT_TIMEOUT_MS} ms")
    if tally.failure:
        problems.append(tally.failure)
    detail = (f"totals {tally.committed} == accepted votes == voters' counts == vote records, "
              f"{on_primary['phones']} phones, on primary and replica" if not problems else "; ".join(problems))
    return {"ok": not problems, "detail": detail}


def run_redis_voter(clients: int, batch: int, duration_s: float, seed: int,
                    contestants: int = voter.CONTESTANTS_DEFAULT,
                    max_votes: int = voter.MAX_VOTES_DEFAULT) -> dict[str, Any]:
    """VoltDB's voter on a Redis primary + replica (AOF fsync always, WAIT 1 per batch); the figures."""
    if clients < 1 or batch < 1 or duration_s <= 0:
        raise ValueError(f"need clients >= 1, batch >= 1, duration_s > 0; got {clients}, {batch}, {duration_s}")
    voter.initial_data(contestants)  # validates contestants
    server_bin, redis = require_redis()
    with _Servers("ohmdb-peer-redis-") as servers:
        primary_port, replica_port = _start_redis(servers, server_bin, redis)
        primary, replica = _redis_client(redis, primary_port), _redis_client(redis, replica_port)
        try:
            entry = servers.procs[-1]
            _wait_ready(entry, lambda: _replica_acks(redis, primary, replica), REPLICA_SYNC_TIMEOUT_S,
                        "acknowledged write from the replica")
            primary.delete(K_WARMUP)
            sha = _load_voter_data(primary, contestants)
            client_fns = _redis_voter_loop(redis, primary_port, sha, seed, batch, contestants, max_votes)
            tally, elapsed = _drive(clients, duration_s, *client_fns)
            check = _voter_check(primary, replica, tally, max_votes)
            version = primary.info("server")["redis_version"]
        finally:
            primary.close()
            replica.close()
        pids, temp_dir = servers.pids, servers.dir
    done = tally.committed + tally.rejected
    return {
        "peer": "redis", "version": version,
        "throughput_tps": round(done / elapsed, 1) if elapsed > 0 else 0.0,
        "committed": tally.committed, "rejected": tally.rejected, "rejected_reasons": dict(tally.reasons),
        "transactions": done, "duration_s": round(elapsed, 3), "latency_ms": _latency_ms(tally.batches),
        "config": {"clients": clients, "batch": batch, "duration_s": duration_s, "seed": seed,
                   "contestants": contestants, "max_votes": max_votes, "replicas": 1,
                   "appendonly": "yes", "appendfsync": "always", "wait_timeout_ms": WAIT_TIMEOUT_MS,
                   "driver": f"redis-py {redis.__version__}"},
        "check": check, "pids": pids, "temp_dir": temp_dir,
    }


# --- PostgreSQL bank -------------------------------------------------------------------------


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def _pg_bin_dir() -> str | None:
    """The first directory holding both ``postgres`` and ``initdb``: PATH, then PG_BIN_DIR_PATTERNS."""
    dirs = []
    found = shutil.which("postgres")
    if found:
        dirs.append(os.path.dirname(found))
    for pattern in PG_BIN_DIR_PATTERNS:
        dirs.extend(sorted(glob.glob(pattern), key=_version_key, reverse=True))
    for d in dirs:
        if all(os.access(os.path.join(d, b), os.X_OK) for b in ("postgres", "initdb")):
            return d
    return None


def require_postgres() -> tuple[str, ModuleType]:
    """(bin dir with postgres + initdb, the psycopg module); PeerUnavailable naming all that is missing."""
    missing = []
    bin_dir = _pg_bin_dir()
    if bin_dir is None:
        where = ", ".join(("PATH",) + PG_BIN_DIR_PATTERNS)
        missing.append(f"the PostgreSQL server binaries postgres and initdb are not in {where} "
                       f"(install them: `{INSTALL_POSTGRES}`)")
    try:
        import psycopg
    except ImportError:
        psycopg = None
        missing.append(f"the Python driver psycopg 3 (module `psycopg`) is not installed "
                       f"(install it: `{INSTALL_DRIVERS}` or `pip install 'psycopg[binary]>=3.1'`)")
    if missing:
        raise PeerUnavailable("postgres peer unavailable: " + "; ".join(missing))
    return bin_dir, psycopg


def _pg_run_as() -> _RunAs | None:
    """None unless we are root; then the unprivileged user the servers run as."""
    if os.geteuid() != 0:
        return None
    names = [os.environ[PG_USER_ENV]] if os.environ.get(PG_USER_ENV) else list(PG_USER_CANDIDATES)
    for name in names:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid != 0:
            return _RunAs(name, entry.pw_uid, entry.pw_gid)
    raise PeerError(f"postgres refuses to run as root and none of the users {names} exists (and is not root); "
                    f"set {PG_USER_ENV} to an unprivileged user")


def _traversable_by(path: str, uid: int) -> bool:
    path = os.path.abspath(path)
    while True:
        st = os.stat(path)
        if st.st_uid != uid and not st.st_mode & stat.S_IXOTH:
            return False
        if path == os.path.dirname(path):
            return True
        path = os.path.dirname(path)


def _traversable_temp_parent(uid: int) -> str:
    """A directory for the temp dir whose every ancestor ``uid`` can traverse."""
    for parent in (tempfile.gettempdir(),) + PG_TEMP_PARENTS:
        if os.path.isdir(parent) and _traversable_by(parent, uid):
            return parent
    raise PeerError(f"no temp directory (tried {tempfile.gettempdir()}, {', '.join(PG_TEMP_PARENTS)}) "
                    f"is reachable by uid {uid}; set TMPDIR to one")


def _pg_conninfo(port: int, options: bool = True) -> dict[str, Any]:
    kw: dict[str, Any] = {"host": "127.0.0.1", "port": port, "user": PG_SUPERUSER, "dbname": "postgres",
                          "connect_timeout": PG_CONNECT_TIMEOUT_S}
    if options:
        kw["options"] = f"-c lock_timeout={PG_LOCK_TIMEOUT_MS} -c statement_timeout={PG_STATEMENT_TIMEOUT_MS}"
    return kw


def _pg_answers(psycopg: ModuleType, port: int) -> bool:
    try:
        with psycopg.connect(**_pg_conninfo(port, options=False)) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _pg_server_argv(bin_dir: str, data: str, sock: str, port: int, clients: int) -> list[str]:
    settings = {
        "listen_addresses": "127.0.0.1", "max_prepared_transactions": max(2 * clients, 2),
        "max_connections": max(100, clients + 10), "fsync": "on", "synchronous_commit": "on",
        "logging_collector": "off",
    }
    argv = [os.path.join(bin_dir, "postgres"), "-D", data, "-p", str(port), "-k", sock]
    for k, v in settings.items():
        argv += ["-c", f"{k}={v}"]
    return argv


def _start_postgres(servers: _Servers, bin_dir: str, psycopg: ModuleType, clients: int) -> list[int]:
    """Two initialised, running servers; their ports."""
    ports = _free_ports(2)
    names = [f"pg{i}" for i in range(2)]
    datas = [os.path.join(servers.subdir(name), "data") for name in names]
    servers.run_tools([(f"{name}-initdb", [os.path.join(bin_dir, "initdb"), "-D", data, "-A", "trust",
                                           "-U", PG_SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync"])
                       for name, data in zip(names, datas)], INITDB_TIMEOUT_S)
    for name, data, port in zip(names, datas, ports):
        argv = _pg_server_argv(bin_dir, data, servers.subdir(f"{name}/sock"), port, clients)
        entry = servers.spawn(name, argv, stop_signal=signal.SIGINT)  # SIGINT: fast shutdown
        _wait_ready(entry, lambda port=port: _pg_answers(psycopg, port), SERVER_START_TIMEOUT_S, "connection")
    return ports


def _load_accounts(psycopg: ModuleType, port: int, ids: tuple[int, ...]) -> str:
    """Create and fill ``accounts`` on one server; its version."""
    with psycopg.connect(**_pg_conninfo(port)) as conn:
        conn.execute(CREATE_ACCOUNTS_SQL)
        with conn.cursor().copy("COPY accounts (id, balance) FROM STDIN") as copy:
            for account in ids:
                copy.write_row((account, BALANCE_INITIAL))
        conn.execute("ANALYZE accounts")
        conn.commit()
        return str(conn.execute("SHOW server_version").fetchone()[0])


def _transfer(conns: list[Any], place: dict[int, int], gtrid: str, src: int, dst: int, amount: int) -> bool:
    """One cross-server transfer by two-phase commit; True committed, False refused (both rolled back)."""
    statements = {place[src]: (DEBIT_SQL, (amount, src, amount)), place[dst]: (CREDIT_SQL, (amount, dst))}
    begun: list[Any] = []
    prepared = False
    try:
        for server in sorted(statements):  # server 0 first, always: no distributed deadlock
            conn = conns[server]
            conn.tpc_begin(conn.xid(XID_FORMAT_ID, gtrid, f"s{server}"))
            begun.append(conn)
            sql, params = statements[server]
            if conn.execute(sql, params).rowcount != 1:
                if server == place[src]:
                    _rollback_all(begun)
                    return False
                raise PeerError(f"account {dst} is missing on server {server}")
        for conn in begun:
            conn.tpc_prepare()
        prepared = True
        for conn in begun:
            conn.tpc_commit()
        return True
    except BaseException:
        if not prepared:  # after the decision a failed commit stays in doubt (the check reports it)
            _rollback_all(begun)
        raise


def _rollback_all(conns: list[Any]) -> None:
    for conn in conns:
        _quietly(conn.tpc_rollback)


def _bank_loop(psycopg: ModuleType, ports: list[int], place: dict[int, int], accounts: int,
               seed: int) -> tuple[Callable[[int], Any], Callable[[Any, int, float, _Tally], None],
                                   Callable[[Any], None]]:
    def setup(client: int) -> Any:
        load = bank.BankLoad(random.Random(seed * 1_000_003 + client), accounts, 2)
        conns: list[Any] = []
        try:
            for port in ports:
                conns.append(psycopg.connect(**_pg_conninfo(port)))
        except BaseException:
            for conn in conns:
                conn.close()
            raise
        return conns, load

    def loop(state: Any, client: int, deadline: float, tally: _Tally) -> None:
        conns, load = state
        seq = 0
        while time.perf_counter() < deadline:
            seq += 1
            src, dst, amount = load.next_cross()
            t0 = time.perf_counter()
            try:
                ok = _transfer(conns, place, f"ohmdb-peer-{client}-{seq}", src, dst, amount)
            except psycopg.Error as e:
                tally.errors += 1
                tally.reasons[type(e).__name__] += 1
                if any(conn.closed for conn in conns):
                    raise
                continue
            tally.batches.append(((time.perf_counter() - t0) * 1000.0, 1))
            if ok:
                tally.committed += 1
            else:
                tally.rejected += 1

    def teardown(state: Any) -> None:
        for conn in state[0]:
            conn.close()

    return setup, loop, teardown


def _bank_check(psycopg: ModuleType, ports: list[int], accounts: int, tally: _Tally) -> dict[str, Any]:
    total = rows = negative = in_doubt = 0
    for port in ports:
        with psycopg.connect(**_pg_conninfo(port)) as conn:
            part_total, part_rows, part_negative = conn.execute(SUMMARY_SQL).fetchone()
            in_doubt += conn.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone()[0]
        total, rows, negative = total + int(part_total), rows + part_rows, negative + part_negative
    expected = accounts * BALANCE_INITIAL
    problems = []
    if total != expected:
        problems.append(f"total is {total}, expected {expected} (off by {total - expected:+d})")
    if rows != accounts:
        problems.append(f"{rows} accounts, expected {accounts}")
    if negative:
        problems.append(f"{negative} negative balances")
    if in_doubt:
        problems.append(f"{in_doubt} prepared transactions left in doubt")
    if tally.failure:
        problems.append(tally.failure)
    detail = (f"total {total} over both servers unchanged; {rows} accounts, none negative, none in doubt"
              if not problems else "; ".join(problems))
    return {"ok": not problems, "detail": detail}


def run_postgres_bank(clients: int, duration_s: float, accounts: int = bank.ACCOUNTS_DEFAULT,
                      seed: int = 1) -> dict[str, Any]:
    """Cross-server bank transfers by two-phase commit over two PostgreSQL servers; the figures."""
    if clients < 1 or duration_s <= 0:
        raise ValueError(f"need clients >= 1 and duration_s > 0; got {clients}, {duration_s}")
    groups = bank.accounts_by_partition(accounts, 2)
    bank.BankLoad(random.Random(0), accounts, 2).next_cross()  # validates accounts (a cross pair exists)
    bin_dir, psycopg = require_postgres()
    run_as = _pg_run_as()
    place = {account: p for p, group in enumerate(groups) for account in group}
    with _Servers("ohmdb-peer-pg-", run_as) as servers:
        ports = _start_postgres(servers, bin_dir, psycopg, clients)
        versions = [_load_accounts(psycopg, port, ids) for port, ids in zip(ports, groups)]
        tally, elapsed = _drive(clients, duration_s, *_bank_loop(psycopg, ports, place, accounts, seed))
        check = _bank_check(psycopg, ports, accounts, tally)
        pids, temp_dir = servers.pids, servers.dir
    return {
        "peer": "postgres", "version": versions[0],
        "throughput_tps": round(tally.committed / elapsed, 1) if elapsed > 0 else 0.0,
        "committed": tally.committed, "refused": tally.rejected, "errors": tally.errors,
        "error_kinds": dict(tally.reasons), "duration_s": round(elapsed, 3),
        "latency_ms": _latency_ms(tally.batches),
        "config": {"clients": clients, "duration_s": duration_s, "accounts": accounts, "seed": seed, "servers": 2,
                   "balance_initial": BALANCE_INITIAL, "fsync": "on", "synchronous_commit": "on",
                   "max_prepared_transactions": max(2 * clients, 2), "isolation": "read committed",
                   "commit": "two-phase (PREPARE TRANSACTION / COMMIT PREPARED)",
                   "run_as": run_as.user if run_as else None, "driver": f"psycopg {psycopg.__version__}"},
        "check": check, "pids": pids, "temp_dir": temp_dir,
    }
