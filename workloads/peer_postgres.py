"""The PostgreSQL peer: cross-server bank transfers by two-phase commit.

Design note
-----------
``run_postgres_bank`` starts two servers (``initdb -A trust``; ``fsync``,
``synchronous_commit`` on; ``max_prepared_transactions`` >= 2 * clients) in a
``workloads.peer_servers.Servers`` (stopped and removed at the end, also on
errors), each holding the accounts of one partition of
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
``lock_timeout`` is a safety net.  ``throughput_tps`` is transfers answered
(committed or refused) per second; latency covers committed and refused transfers.  Check: the total over
both servers is unchanged, every account is present, none is negative and no
prepared transaction is left in doubt.

With ``total_every`` = N > 0, one operation in N of each client is a consistent
total read instead of a transfer, as ohmdb's bank workload runs them (its
``--total-every``): ``LOCK TABLE accounts IN SHARE MODE`` on server 0, then on
server 1 (the transfers' order, so no distributed deadlock), the sums, then both
read transactions end.  A SHARE lock waits for every transfer holding or having
prepared a row change there, so the two sums are one consistent cut; each read
is checked like the final one.  Reads are counted apart from the transfers
(``reads``) and are not in the latency figures.

PostgreSQL refuses to run as root.  When this process is root the servers (and
``initdb``) run as an unprivileged user -- ``$OHMDB_PEERS_PG_USER``, else
``postgres`` if that account exists, else ``nobody`` -- by ``subprocess``'s
``user=`` / ``group=`` / ``extra_groups=[]`` (set in the child before exec, so
the process we track *is* the server: no ``su``/``runuser`` wrapper in
between).  The temporary directory is chowned to that user and placed under a
directory every user can traverse.  Clients connect over loopback TCP.

``require_postgres`` raises ``PeerUnavailable`` naming the missing binaries or
driver and how to install them.
"""

from __future__ import annotations

import glob
import os
import pwd
import random
import re
import shutil
import signal
import stat
import tempfile
import time
from types import ModuleType
from typing import Any, Callable

from workloads import bank
from workloads.peer_servers import (
    SERVER_START_TIMEOUT_S,
    PeerError,
    PeerUnavailable,
    RunAs,
    Servers,
    Tally,
    drive,
    free_ports,
    import_driver,
    latency_percentiles,
    quietly,
    wait_ready,
)

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
INSTALL_POSTGRES = "apt-get install postgresql"

DEBIT_SQL = "UPDATE accounts SET balance = balance - %s WHERE id = %s AND balance >= %s"
CREDIT_SQL = "UPDATE accounts SET balance = balance + %s WHERE id = %s"
CREATE_ACCOUNTS_SQL = "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0))"
SUMMARY_SQL = "SELECT coalesce(sum(balance), 0), count(*), count(*) FILTER (WHERE balance < 0) FROM accounts"
LOCK_SHARE_SQL = "LOCK TABLE accounts IN SHARE MODE"
#: Bad total reads kept in the check's detail (all are counted).
READ_PROBLEMS_KEPT_MAX = 5

#: initdb of one data directory.
INITDB_TIMEOUT_S = 120.0
#: PostgreSQL connect timeout (whole seconds, libpq).
PG_CONNECT_TIMEOUT_S = 5
#: Per-statement lock wait; breaks any lock wait that would otherwise hang.
PG_LOCK_TIMEOUT_MS = 5_000
#: Per-statement time limit.
PG_STATEMENT_TIMEOUT_MS = 30_000


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
    psycopg = import_driver("psycopg", "psycopg 3", "psycopg[binary]>=3.1", missing)
    if missing:
        raise PeerUnavailable("postgres peer unavailable: " + "; ".join(missing))
    return bin_dir, psycopg


def _pg_run_as() -> RunAs | None:
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
            return RunAs(name, entry.pw_uid, entry.pw_gid)
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


def _start_postgres(servers: Servers, bin_dir: str, psycopg: ModuleType, clients: int) -> list[int]:
    """Two initialised, running servers; their ports."""
    ports = free_ports(2)
    names = [f"pg{i}" for i in range(2)]
    datas = [os.path.join(servers.subdir(name), "data") for name in names]
    servers.run_tools([(f"{name}-initdb", [os.path.join(bin_dir, "initdb"), "-D", data, "-A", "trust",
                                           "-U", PG_SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync"])
                       for name, data in zip(names, datas)], INITDB_TIMEOUT_S)
    for name, data, port in zip(names, datas, ports):
        argv = _pg_server_argv(bin_dir, data, servers.subdir(f"{name}/sock"), port, clients)
        entry = servers.spawn(name, argv, stop_signal=signal.SIGINT)  # SIGINT: fast shutdown
        wait_ready(entry, lambda port=port: _pg_answers(psycopg, port), SERVER_START_TIMEOUT_S, "connection")
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


def _total(conns: list[Any]) -> tuple[int, int, int]:
    """(sum, accounts, negative balances) over both servers as one consistent cut (SHARE locks, in order)."""
    try:
        parts = []
        for conn in conns:
            conn.execute(LOCK_SHARE_SQL)
            parts.append(conn.execute(SUMMARY_SQL).fetchone())
        return sum(int(p[0]) for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts)
    finally:
        for conn in conns:
            quietly(conn.rollback)


def _read_problems(total: int, rows: int, negative: int, accounts: int) -> list[str]:
    expected = accounts * BALANCE_INITIAL
    problems = []
    if total != expected:
        problems.append(f"total is {total}, expected {expected} (off by {total - expected:+d})")
    if rows != accounts:
        problems.append(f"{rows} accounts, expected {accounts}")
    if negative:
        problems.append(f"{negative} negative balances")
    return problems


def _rollback_all(conns: list[Any]) -> None:
    for conn in conns:
        quietly(conn.tpc_rollback)


def _bank_loop(psycopg: ModuleType, ports: list[int], place: dict[int, int], accounts: int,
               seed: int, total_every: int) -> tuple[Callable[[int], Any], Callable[[Any, int, float, Tally], None],
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

    def loop(state: Any, client: int, deadline: float, tally: Tally) -> None:
        conns, load = state
        seq = 0
        while time.perf_counter() < deadline:
            seq += 1
            t0 = time.perf_counter()
            reading = bool(total_every) and seq % total_every == 0
            try:
                if reading:
                    found = _total(conns)
                else:
                    ok = _transfer(conns, place, f"ohmdb-peer-{client}-{seq}", *load.next_cross())
            except psycopg.Error as e:
                tally.errors += 1
                tally.reasons[type(e).__name__] += 1
                if any(conn.closed for conn in conns):
                    raise
                continue
            if reading:
                tally.reads += 1
                tally.read_problems += [f"read {tally.reads} of client {client}: {p}"
                                        for p in _read_problems(*found, accounts)]
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


def _bank_check(psycopg: ModuleType, ports: list[int], accounts: int, tally: Tally) -> dict[str, Any]:
    total = rows = negative = in_doubt = 0
    for port in ports:
        with psycopg.connect(**_pg_conninfo(port)) as conn:
            part_total, part_rows, part_negative = conn.execute(SUMMARY_SQL).fetchone()
            in_doubt += conn.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone()[0]
        total, rows, negative = total + int(part_total), rows + part_rows, negative + part_negative
    problems = _read_problems(total, rows, negative, accounts)
    if tally.read_problems:
        problems.append(f"{len(tally.read_problems)} bad total reads during the run: "
                        + "; ".join(tally.read_problems[:READ_PROBLEMS_KEPT_MAX]))
    if in_doubt:
        problems.append(f"{in_doubt} prepared transactions left in doubt")
    if tally.failure:
        problems.append(tally.failure)
    detail = (f"total {total} over both servers unchanged on {tally.reads} reads during the run and at the end; "
              f"{rows} accounts, none negative, none in doubt" if not problems else "; ".join(problems))
    return {"ok": not problems, "detail": detail}


def run_postgres_bank(clients: int, duration_s: float, accounts: int = bank.ACCOUNTS_DEFAULT,
                      seed: int = 1, total_every: int = 0) -> dict[str, Any]:
    """Cross-server bank transfers by two-phase commit over two PostgreSQL servers (with one consistent
    total read in ``total_every`` operations of each client, if > 0); the figures."""
    if clients < 1 or duration_s <= 0 or total_every < 0:
        raise ValueError(f"need clients >= 1, duration_s > 0 and total_every >= 0; got {clients}, {duration_s}, "
                         f"{total_every}")
    groups = bank.accounts_by_partition(accounts, 2)
    bank.BankLoad(random.Random(0), accounts, 2).next_cross()  # validates accounts (a cross pair exists)
    bin_dir, psycopg = require_postgres()
    run_as = _pg_run_as()
    place = {account: p for p, group in enumerate(groups) for account in group}
    parent = _traversable_temp_parent(run_as.uid) if run_as else None
    with Servers("ohmdb-peer-pg-", run_as, parent) as servers:
        ports = _start_postgres(servers, bin_dir, psycopg, clients)
        versions = [_load_accounts(psycopg, port, ids) for port, ids in zip(ports, groups)]
        tally, elapsed = drive(clients, duration_s, *_bank_loop(psycopg, ports, place, accounts, seed, total_every))
        check = _bank_check(psycopg, ports, accounts, tally)
        pids, temp_dir = servers.pids, servers.dir
    return {
        "peer": "postgres", "version": versions[0],
        # transfers answered (committed or refused), as ohmdb's transfer rate counts them
        "throughput_tps": round((tally.committed + tally.rejected) / elapsed, 1) if elapsed > 0 else 0.0,
        "committed": tally.committed, "refused": tally.rejected, "reads": tally.reads, "errors": tally.errors,
        "error_kinds": dict(tally.reasons), "duration_s": round(elapsed, 3),
        "latency_ms": latency_percentiles(tally.batches),
        "config": {"clients": clients, "duration_s": duration_s, "accounts": accounts, "seed": seed, "servers": 2,
                   "total_every": total_every,
                   "balance_initial": BALANCE_INITIAL, "fsync": "on", "synchronous_commit": "on",
                   "max_prepared_transactions": max(2 * clients, 2), "isolation": "read committed",
                   "commit": "two-phase (PREPARE TRANSACTION / COMMIT PREPARED)",
                   "run_as": run_as.user if run_as else None, "driver": f"psycopg {psycopg.__version__}"},
        "check": check, "pids": pids, "temp_dir": temp_dir,
    }
