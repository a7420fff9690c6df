"""The Redis peer: VoltDB's voter on a Redis primary and replica.

Design note
-----------
``run_redis_voter`` starts a primary (``appendonly yes``, ``appendfsync
always``) and one replica (``replicaof``; same persistence settings) on free
loopback ports, in a ``workloads.peer_servers.Servers`` (stopped and removed at
the end, also on errors).  VoltDB's voter procedure, as in
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

``require_redis`` raises ``PeerUnavailable`` naming the missing binary or
driver and how to install it.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from types import ModuleType
from typing import Any, Callable

from workloads import voter
from workloads.peer_servers import (
    POLL_INTERVAL_S,
    SERVER_START_TIMEOUT_S,
    PeerUnavailable,
    Servers,
    Tally,
    drive,
    free_ports,
    import_driver,
    latency_percentiles,
    wait_ready,
)

INSTALL_REDIS = "apt-get install redis-server"

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

#: The replica must be linked and in sync within this.
REPLICA_SYNC_TIMEOUT_S = 30.0
#: Socket timeout of every Redis connection (one pipelined batch must return within it).
REDIS_SOCKET_TIMEOUT_S = 30.0
#: WAIT's timeout: a batch not acknowledged by the replica by then counts as unacknowledged.
WAIT_TIMEOUT_MS = 5_000


def require_redis() -> tuple[str, ModuleType]:
    """(redis-server path, the redis module); PeerUnavailable naming everything that is missing."""
    missing = []
    server = shutil.which("redis-server")
    if server is None:
        missing.append(f"the redis-server binary is not on PATH (install it: `{INSTALL_REDIS}`)")
    redis = import_driver("redis", "redis-py", "redis>=5,<7", missing)
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


def _start_redis(servers: Servers, server_bin: str, redis: ModuleType) -> tuple[int, int]:
    """Primary and replica started and answering; (primary port, replica port)."""
    primary_port, replica_port = free_ports(2)
    roles = (("redis-primary", primary_port, None), ("redis-replica", replica_port, primary_port))
    for name, port, upstream in roles:
        conf = _redis_conf(servers.subdir(name), port, upstream)
        entry = servers.spawn(name, [server_bin, conf])
        wait_ready(entry, lambda port=port: _pings(redis, port), SERVER_START_TIMEOUT_S, "PING answer")
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


def _tally_votes(tally: Tally, calls: list[tuple[int, int, int]], replies: list[Any], latency_ms: float) -> None:
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
                      max_votes: int) -> tuple[Callable[[int], Any], Callable[[Any, int, float, Tally], None],
                                               Callable[[Any], None]]:
    def setup(client: int) -> Any:
        gen = voter.VoterGenerator(random.Random(seed * 1_000_003 + client), contestants, max_votes)
        conn = _redis_client(redis, port)
        conn.ping()
        return conn, gen

    def loop(state: Any, client: int, deadline: float, tally: Tally) -> None:
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


def _summary_problems(where: str, got: dict[str, Any], tally: Tally, max_votes: int) -> list[str]:
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


def _voter_check(primary: Any, replica: Any, tally: Tally, max_votes: int) -> dict[str, Any]:
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
    with Servers("ohmdb-peer-redis-") as servers:
        primary_port, replica_port = _start_redis(servers, server_bin, redis)
        primary, replica = _redis_client(redis, primary_port), _redis_client(redis, replica_port)
        try:
            entry = servers.procs[-1]
            wait_ready(entry, lambda: _replica_acks(redis, primary, replica), REPLICA_SYNC_TIMEOUT_S,
                        "acknowledged write from the replica")
            primary.delete(K_WARMUP)
            sha = _load_voter_data(primary, contestants)
            client_fns = _redis_voter_loop(redis, primary_port, sha, seed, batch, contestants, max_votes)
            tally, elapsed = drive(clients, duration_s, *client_fns)
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
        "transactions": done, "duration_s": round(elapsed, 3), "latency_ms": latency_percentiles(tally.batches),
        "config": {"clients": clients, "batch": batch, "duration_s": duration_s, "seed": seed,
                   "contestants": contestants, "max_votes": max_votes, "replicas": 1,
                   "appendonly": "yes", "appendfsync": "always", "wait_timeout_ms": WAIT_TIMEOUT_MS,
                   "driver": f"redis-py {redis.__version__}"},
        "check": check, "pids": pids, "temp_dir": temp_dir,
    }
