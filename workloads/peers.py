"""Peer baselines: the same workloads on Redis and on PostgreSQL, side by side with ohmdb.

Design note
-----------
The benchmark prints these figures next to ohmdb's so a reader can place them.
Each peer starts its own throw-away servers in a temporary directory, drives
them with client threads for a fixed time, checks an invariant, stops every
process it started (terminate, then kill the process group after a bounded
wait -- also on errors: ``Servers`` is a context manager) and removes the
directory.  Every wait is bounded (the ``*_S`` / ``*_MS`` constants of each
module).  Server stdout/stderr go to log files in the temporary directory; a
server that fails to start raises ``PeerError`` with the tail of its log.

This module is the public façade; the code lives in three modules, each with
its own design note:

* ``workloads.peer_servers`` -- what both peers share: ``Servers`` (temp dir
  and processes), readiness waits, the client threads (``drive``), the tally
  and the latency percentiles;
* ``workloads.peer_redis`` -- **Redis voter**: VoltDB's voter as one Lua
  script on a primary + replica (AOF fsync always, ``WAIT 1`` per batch);
* ``workloads.peer_postgres`` -- **PostgreSQL bank**: cross-server transfers
  by two-phase commit over two servers (run as an unprivileged user when we
  are root).

Public API: ``run_redis_voter``, ``run_postgres_bank`` (each returns a report
dict; ``pids`` and ``temp_dir`` say what was started and removed, for tests),
``require_redis`` / ``require_postgres`` (raise ``PeerUnavailable`` naming the
missing binary or driver and how to install it), ``PeerError``,
``PeerUnavailable``.
"""

from __future__ import annotations

from workloads.peer_postgres import require_postgres, run_postgres_bank
from workloads.peer_redis import require_redis, run_redis_voter
from workloads.peer_servers import PeerError, PeerUnavailable

__all__ = ["PeerError", "PeerUnavailable", "run_redis_voter", "run_postgres_bank", "require_redis",
           "require_postgres"]
