"""The ``ohmdb`` command line: benchmarks, cluster status, shutdown.

Design note
-----------
A thin layer over the client and the benchmark runner: parse arguments, show
progress and tables with ``rich``, write JSON.  Exit codes: 0 on success, 1
when a benchmark check fails, 2 on bad usage or a typed ohmdb error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table as RichTable

from actors import cli_bench
from actors.errors import OhmError

console = Console(stderr=True)
#: Width of tables written to a pipe or file (a terminal uses its own width).
PIPE_COLUMNS = 220
out = Console(width=None if sys.stdout.isatty() else PIPE_COLUMNS)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ohmdb", description="ohmdb: a transactional in-memory database on Ray actors.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = sub.add_parser("bench", help="run a workload benchmark", description="Run a workload benchmark.")
    wl = bench.add_subparsers(dest="workload", required=True, metavar="WORKLOAD")
    cli_bench.add_parsers(wl)

    rp = wl.add_parser("replication", help="cost of k=1, failover time, rebuild rate (side by side)",
                       description="Voter at k=0 and k=1 with the same calls (throughput ratio); then a k=1 cluster "
                                   "under load: leader kills (time until writes are acknowledged again) and a "
                                   "follower kill (rebuild rows/s, throughput during the rebuild vs before).")
    rp.add_argument("--partitions", type=int, default=2, help="partitions (default 2)")
    rp.add_argument("--transactions", type=int, default=100_000, help="voter transactions per k (default 100000)")
    rp.add_argument("--kills", type=int, default=5, help="leader kills to time (default 5)")
    rp.add_argument("--rebuild-rows", type=int, default=200_000, help="votes loaded before the rebuild (default 200000)")
    _run_args(rp)

    fb = wl.add_parser("faults", help="detection, availability and redundancy times over many injected faults",
                       description="Inject faults one at a time into a k=1 voter cluster under load (SIGKILL of a "
                                   "leader, SIGSTOP of a leader, SIGKILL of a follower, SIGKILL and SIGSTOP of the "
                                   "coordinator) and print the distributions of detection, availability and "
                                   "full-redundancy (for the coordinator: its successor recovered) times; then time "
                                   "full redundancy of a partition holding --big-rows votes.")
    fb.add_argument("--partitions", type=int, default=2, help="partitions (default 2)")
    fb.add_argument("--faults", type=int, default=20, help="faults of each kind (default 20)")
    fb.add_argument("--big-rows", type=int, default=1_000_000, help="votes loaded into the rebuilt partition (about twice as many rows; "
                    "default 1000000; 0 skips)")
    _run_args(fb)

    fp = wl.add_parser("floor", help="what Ray and Python cost here before ohmdb does any work",
                       description="Measure the platform floors every ohmdb figure sits on, in one run: the p50 "
                                   "latency of call chains through 1-4 empty actors (threaded and async), the latency "
                                   "floors of a write they imply, the CPU a pipelined call costs, the procedure ceilings "
                                   "of voter and bank on one in-process core (bare, and with k=1's least work: log "
                                   "encode, decode, apply on a follower core), and ohmdb's own transfer latency "
                                   "beside them.")
    fp.add_argument("--calls", type=int, default=300, help="timed calls per chain depth (default 300)")
    fp.add_argument("--no-cluster", action="store_true", help="skip ohmdb's own transfer latencies (a 4-partition "
                    "k=1 cluster measured beside the floors)")
    _run_args(fp, durability=False)

    st = sub.add_parser("status", help="show a running cluster's map", description="Show a running cluster's map.")
    st.add_argument("--name", default="ohmdb", help="cluster name (default ohmdb)")
    st.add_argument("--address", default="auto", help="Ray cluster address (default auto)")
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")

    lg = sub.add_parser("log", help="read redo logs", description="Read a database's redo logs.")
    lsub = lg.add_subparsers(dest="log_command", required=True, metavar="SUBCOMMAND")
    dump = lsub.add_parser("dump", help="print log records for audit",
                           description="Print redo records (lsn, epoch, txn, op, table, row) from the segment files. "
                                       "Reads only: a torn or corrupt tail is reported, not moved.")
    dump.add_argument("--data-dir", required=True, help="the database's data directory")
    dump.add_argument("--partition", type=int, help="only this partition")
    dump.add_argument("--from-lsn", type=int, default=1, help="only records at or after this LSN")
    dump.add_argument("--json", action="store_true", help="one JSON object per line")

    rc = sub.add_parser("recover", help="recover a data directory and report",
                        description="Recover every replica in a data directory in this process (no Ray): load the "
                                    "newest valid snapshot, replay the log, move a torn or corrupt tail aside, and "
                                    "print what was found. Cluster.create(schema, data_dir=DIR) then serves it.")
    rc.add_argument("--data-dir", required=True, help="the database's data directory")
    rc.add_argument("--json", action="store_true", help="print JSON instead of a table")

    fl = sub.add_parser("faults", help="list fault reports",
                        description="List a cluster's fault reports: kind, where, durations, actions. "
                                    "From a running cluster (--name), or from a data directory (--data-dir).")
    fl.add_argument("--name", default="ohmdb", help="cluster name (default ohmdb)")
    fl.add_argument("--address", default="auto", help="Ray cluster address (default auto)")
    fl.add_argument("--data-dir", help="read the reports kept in this data directory (no running cluster needed)")
    fl.add_argument("--json", action="store_true", help="print JSON (one list) instead of a table")
    fl.add_argument("--actions", action="store_true", help="also list each report's actions with their times")

    sd = sub.add_parser("shutdown", help="stop a running cluster", description="Stop every actor of a running cluster.")
    sd.add_argument("--name", default="ohmdb", help="cluster name (default ohmdb)")
    sd.add_argument("--address", default="auto", help="Ray cluster address (default auto)")
    return p


def _run_args(p: argparse.ArgumentParser, durability: bool = True) -> None:
    """Options every fault/replication/floor benchmark takes (the floor has no durability to choose)."""
    if durability:
        p.add_argument("--durability", choices=["sync", "async", "off"], default="sync", help="default sync")
    p.add_argument("--seed", type=int, default=1, help="seed (default 1)")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON here")
    p.add_argument("--address", help="Ray cluster address; default: start one")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "bench":
            return _bench(args)
        if args.command == "status":
            return _status(args)
        if args.command == "shutdown":
            return _shutdown(args)
        if args.command == "faults":
            return _faults(args)
        if args.command == "log":
            return _log_dump(args)
        if args.command == "recover":
            return _recover(args)
    except (OhmError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)  # plain: no wrapping, no markup in messages
        return 2
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0
    return 2


# --- bench --------------------------------------------------------------------------------


def _bench(args: argparse.Namespace) -> int:
    if args.workload == "replication":
        return _bench_replication(args)
    if args.workload == "faults":
        return _bench_faults(args)
    if args.workload == "bank" and args.compare:
        return _bench_bank(args)
    if args.workload == "floor":
        return _bench_floor(args)
    return cli_bench.run(args, out, console)


def _bench_floor(args: argparse.Namespace) -> int:
    from actors import runtime
    from workloads import floor
    from workloads.bench import write_report

    if not 10 <= args.calls <= 100_000:
        raise ValueError(f"--calls must be 10..100000, got {args.calls}")
    started_here = not runtime.is_connected()
    runtime.connect(args.address)
    try:
        with console.status("measuring call chains and procedure ceilings"):
            report = floor.run(calls=args.calls, seed=args.seed, with_cluster=not args.no_cluster)
    finally:
        if started_here:
            runtime.disconnect()
    _print_floor(report)
    if args.json:
        write_report(report, args.json)
    return 0


def _print_floor(report: dict[str, Any]) -> None:
    chains = RichTable(title="call chain through empty actors, p50 ms")
    chains.add_column("depth", justify="right")
    for kind in ("threaded", "async"):
        chains.add_column(kind, justify="right")
    for depth in report["chain_p50_ms"]["threaded"]:
        chains.add_row(str(depth), *(f"{report['chain_p50_ms'][k][depth]:.2f}" for k in ("threaded", "async")))
    out.print(chains)
    f = report["floors_ms"]
    t = RichTable(title="latency floors of a write with empty actors, ms")
    t.add_column("measure")
    t.add_column("threaded actors", justify="right")
    t.add_column("async actors", justify="right")
    for label, key in (("SP write, replicated (client -> leader -> follower)", "sp_replicated"),
                       ("MP, decision implied by the PREPAREs (client -> coord -> leader -> follower)",
                        "mp_implicit_decision"),
                       ("MP, decision logged at a holder before the reply", "mp_logged_decision")):
        t.add_row(label, f"{f[key + '_threaded_ms']:.2f}", f"{f[key + '_async_ms']:.2f}")
    out.print(t)
    cost = RichTable(title="pipelined calls to an empty actor")
    for col in ("actor", "calls/s", "actor CPU us/call", "caller CPU us/call"):
        cost.add_column(col, justify="left" if col == "actor" else "right")
    for kind, c in report["call_cost"].items():
        cost.add_row(kind, f"{c['calls_s']:,.0f}", f"{c['actor_cpu_us']:,.0f}", f"{c['driver_cpu_us']:,.0f}")
    out.print(cost)
    mine = report["ohmdb_p50_ms"]
    if mine is not None:
        out.print(f"ohmdb, one client, 4 partitions, k=1, sync: single-partition transfer p50 "
                  f"{mine['sp_transfer_ms']:.2f} ms ({mine['sp_transfer_ms'] / f['sp_replicated_threaded_ms']:.2f}x its "
                  f"floor); cross-partition transfer p50 {mine['mp_transfer_ms']:.2f} ms "
                  f"({mine['mp_transfer_ms'] / f['mp_logged_decision_threaded_ms']:.2f}x its floor; ohmdb's actors "
                  "are threaded)")
    c = RichTable(title=f"procedure ceilings (one core; this machine has {report['cpus']})")
    for col in ("workload", "procedure", "bare txn/s", "k=1 least work txn/s", f"k=1 bound on {report['cpus']} cores"):
        c.add_column(col, justify="right" if "txn" in col or "bound" in col else "left")
    for name, ceil in report["ceilings"].items():
        c.add_row(name, ceil["procedure"], f"{ceil['bare_txn_s']:,.0f}", f"{ceil['k1_txn_s']:,.0f}",
                  f"{report['k1_bound_txn_s'][name]:,.0f}")
    out.print(c)


def _bench_faults(args: argparse.Namespace) -> int:
    from workloads import fault_bench
    from workloads.bench import write_report

    if args.faults < 1 or args.partitions < 1 or args.big_rows < 0:
        raise ValueError("--faults and --partitions must be at least 1, --big-rows at least 0")
    with console.status("starting") as spinner:
        done = [0]

        def on_fault(sample: dict[str, Any]) -> None:
            done[0] += 1
            spinner.update(f"fault {done[0]}: {sample}")

        report = fault_bench.run(args.partitions, args.faults, args.big_rows, args.seed, args.durability, args.address,
                                 on_phase=lambda msg: spinner.update(msg), on_fault=on_fault)
    t = RichTable(title=f"ohmdb bench faults ({args.faults} of each kind, k=1, {args.durability})")
    for col in ("fault", "reported as", "detected (ms)", "writes acked again (ms)",
                "k+1 replicas again / coordinator ready (ms)"):
        t.add_column(col)
    for kind, r in report["faults"].items():
        t.add_row(kind, ", ".join(r["reported_as"]), *(_dist(r[f"{m}_s"]) for m in ("detected", "available", "redundant")))
    out.print(t)
    out.print("cells: median \\[min-p90-max] over n faults")
    big = report.get("big_rebuild")
    if big:
        out.print(f"full redundancy of a {big['rows']:,}-row partition after a follower kill: {big['redundant_s']} s "
                  f"(copy and catch-up {big['copy_and_catch_up_s']:.2f} s)")
    if args.json:
        write_report(report, args.json)
    return 0


def _dist(d: dict[str, Any]) -> str:
    if not d.get("n"):
        return "-"
    ms = {k: d[k] * 1000 for k in ("min", "median", "p90", "max")}
    return f"{ms['median']:.0f} [{ms['min']:.0f}-{ms['p90']:.0f}-{ms['max']:.0f}] n={d['n']}"


def _bench_replication(args: argparse.Namespace) -> int:
    from workloads import replication_bench
    from workloads.bench import BenchConfig, write_report

    cfg = BenchConfig(partitions=args.partitions, transactions=args.transactions, durability=args.durability,
                      seed=args.seed, address=args.address).validate()
    with console.status("starting") as spinner:
        report = replication_bench.run(cfg, kills=args.kills, rebuild_rows=args.rebuild_rows,
                                       on_phase=lambda msg: spinner.update(msg))
    t = RichTable(title="ohmdb bench replication")
    t.add_column("measure")
    t.add_column("value", justify="right")
    k = report["k_cost"]
    t.add_row("voter throughput k=0 / k=1", f"{k['k0']['throughput_tps']:,.0f} / {k['k1']['throughput_tps']:,.0f} txn/s")
    t.add_row("ratio k=1 to k=0", str(k["ratio_k1_to_k0"]))
    f = report["failover"]
    t.add_row("leader kill -> writes acknowledged again", f"median {f['median_s']} s over {f['kills']}: {f['seconds']}")
    r = report["rebuild"]
    t.add_row("rebuild", f"{r['rows']:,} rows in {r['copy_and_catch_up_s']:.3f} s = {r['rows_per_s']:,} rows/s")
    t.add_row("throughput before / during rebuild",
              f"{r['throughput_before_tps']:,} / {r['throughput_during_tps']:,} txn/s (ratio {r['ratio_during_to_before']})")
    out.print(t)
    if args.json:
        write_report(report, args.json)
    return 0 if k["k0"]["ok"] and k["k1"]["ok"] else 1


def _bench_bank(args: argparse.Namespace) -> int:
    import os

    from workloads.bank_bench import BankBenchConfig, run
    from workloads.bench import write_report

    cfg = BankBenchConfig(partitions=args.partitions, k=args.k, clients=args.clients, batch=args.batch,
                          duration_s=args.duration or 5.0, accounts=args.accounts, durability=args.durability,
                          seed=args.seed, address=args.address).validate()
    with console.status("starting") as spinner:
        report = run(cfg, on_phase=lambda msg: spinner.update(msg))
    t = RichTable(title=f"ohmdb bench bank ({cfg.partitions} partitions, k={cfg.k}, {cfg.durability}, "
                        f"{cfg.clients} clients, batch {cfg.batch}, {cfg.accounts:,} accounts)")
    for col in ("phase", "procedure", "txn/s", "committed", "refused", "aborted", "unknown", "other",
                "p50 / p95 / p99 / max ms"):
        t.add_column(col, justify="left" if col in ("phase", "procedure") else "right")
    for key, ph in report["phases"].items():
        lat = ph["latency_ms"]
        t.add_row(key, ph["procedure"], f"{ph['throughput_tps']:,.0f}",
                  *(f"{ph[kind]:,}" for kind in ("committed", "refused", "aborted", "unknown", "other")),
                  f"{lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f} / {lat['max']:.1f}")
    out.print(t)
    ratio = report["mp_cost_ratio"]
    out.print(f"mp cost: sp/mp throughput {ratio['throughput_sp_to_mp']}, mp/sp p50 latency "
              f"{ratio['p50_latency_mp_to_sp']}  ({report['latency_note']})")
    for key, ph in report["phases"].items():
        if ph["error_codes"]:
            out.print(f"{key} errors: {ph['error_codes']} e.g. {ph['error_samples'][:2]}", markup=False)
    inv = report["checks"]["invariant"]
    verdict = "[green]ok[/green]" if inv["ok"] else "[red]FAILED[/red]"
    out.print(f"invariant (total unchanged, no negative balance): {verdict} over {inv['reads']} reads"
              f"{'' if inv['final_read'] else ' (the final read failed)'}; read errors {inv['read_errors'] or 'none'}")
    for v in inv["violations"]:
        out.print(f"  {v}", markup=False)
    if args.json:
        write_report(report, args.json)
    if args.out:
        path = os.path.join(args.out, "report.json")
        write_report(report, path)
        console.print(f"report written to {path}")
    return 0 if inv["ok"] else 1


# --- status / shutdown -------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    from actors.client import Cluster

    db = Cluster.connect(args.name, address=args.address)
    status = db.status()
    if args.json:
        out.print_json(json.dumps(status, default=str))
        return 0
    t = RichTable(title=f"cluster {status['name']} (map version {status['map_version']}, k={status['k']})")
    for col in ("partition", "replica", "role", "state", "epoch", "health", "heartbeat", "lsn (written/durable)",
                "actor", "node", "pid", "rows", "committed", "aborted", "failed"):
        t.add_column(col)
    for r in status["replicas"]:
        rows = ", ".join(f"{k}={v}" for k, v in r.get("rows", {}).items())
        lsn = f"{r['written_lsn']}/{r['durable_lsn']}" if "written_lsn" in r else ""
        hb = r.get("heartbeat")
        beat = "" if not hb else f"{hb['silence_s'] * 1000:.0f}ms phi={hb['phi']:.1f}"
        t.add_row(str(r["partition"]), str(r["replica"]), r["role"], r["state"], str(r["epoch"]), r["health"], beat,
                  lsn, r["actor_name"], (r["node_id"] or "?")[:12], str(r["pid"]), rows, str(r.get("committed", "")),
                  str(r.get("aborted", "")), str(r.get("failed", "")))
    out.print(t)
    counts = status["counts"]
    out.print(f"nodes: {len(status['nodes'])}  replicas ok: {counts['replicas_ok']}/{counts['replicas_total']}  "
              f"committed: {counts['committed']}  rows: {counts['rows']}  open faults: {status['faults_open']}")
    coordinator = status.get("coordinator") or {}
    if "pid" in coordinator:
        done = ", ".join(f"{k}: {v}" for k, v in sorted(coordinator.get("counts", {}).items()))
        out.print(f"coordinator: pid {coordinator['pid']}  {'ready' if coordinator['ready'] else 'recovering'}  "
                  f"open txns: {coordinator['open']}  {done}")
    elif coordinator:
        out.print(f"[bold red]coordinator:[/] {coordinator.get('error', 'unknown')}")
    if status.get("halted"):
        out.print(f"[bold red]writes halted:[/] {status['halted']}")
    return 0


def _faults(args: argparse.Namespace) -> int:
    if args.data_dir:
        from recovery.supervisor_store import DirStore

        reports = DirStore(args.data_dir).reports()
    else:
        from actors.client import Cluster

        reports = Cluster.connect(args.name, address=args.address).faults()
    if args.json:
        out.print_json(json.dumps(reports, default=str))
        return 0
    t = RichTable(title=f"{len(reports)} fault report(s)")
    for col in ("id", "kind", "signal", "detected", "where", "partitions", "state", "detection", "available",
                "redundant"):
        t.add_column(col)
    for r in reports:
        d = r.get("durations", {})
        actors = ", ".join(f"{a['actor']} ({a['role']})" for a in r["where"].get("actors", []))
        t.add_row(r["id"], r["kind"], r["signal"], time.strftime("%H:%M:%S", time.localtime(r["detected_at"])), actors,
                  ",".join(map(str, r.get("impact", {}).get("partitions", []))), r["state"],
                  _ms(d.get("detection_s")), _ms(d.get("availability_s")), _ms(d.get("redundancy_s")))
    out.print(t)
    if args.actions:
        for r in reports:
            out.print(f"{r['id']} {r['kind']}:")
            for a in r["actions"]:
                detail = ", ".join(f"{k}={v}" for k, v in a.items() if k not in ("at", "action"))
                out.print(f"  +{(a['at'] - r['fault_at']) * 1000:8.1f} ms  {a['action']}  {detail}")
    return 0


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1000:.0f} ms"


def _shutdown(args: argparse.Namespace) -> int:
    from actors.client import Cluster

    Cluster.connect(args.name, address=args.address).shutdown()
    console.print(f"cluster {args.name!r} stopped")
    return 0


# --- log dump / recover -------------------------------------------------------------------------


def _open_catalog(data_dir: str) -> tuple[dict[str, Any], Any]:
    from actors.errors import InvalidConfig
    from recovery.catalog import read_catalog, schema_from_catalog

    catalog = read_catalog(data_dir)
    if catalog is None:
        raise InvalidConfig(f"{data_dir} holds no ohmdb database (no catalog.json)", path=data_dir)
    return catalog, schema_from_catalog(catalog)


def _log_dump(args: argparse.Namespace) -> int:
    import os

    from recovery.catalog import replica_dir
    from recovery.log_format import LogCodec
    from recovery.replay import LOG_DIR
    from recovery.segments import read_log
    from recovery.redo import CONTROL_OPS

    catalog, schema = _open_catalog(args.data_dir)
    codec = LogCodec(schema)
    partitions = range(catalog["partitions"]) if args.partition is None else [args.partition]
    for p in partitions:
        for r in range(catalog["replicas"]):
            directory = os.path.join(replica_dir(args.data_dir, p, r), LOG_DIR)

            def show(batch: Any, first: int, epoch: int, p: int = p, r: int = r) -> None:
                for offset, rec in enumerate(codec.decode(batch)):
                    lsn = first + offset
                    if lsn < args.from_lsn:
                        continue
                    row = rec.row
                    if rec.op == "REQUEST":  # a client request's pickled outcome: show its size only
                        row = {"outcome_bytes": len(rec.row["outcome"])}
                    elif rec.op in CONTROL_OPS:  # a two-phase-commit marker: its JSON payload
                        row = json.loads(rec.row["outcome"] or b"{}")
                    entry = {"partition": p, "replica": r, "lsn": lsn, "epoch": epoch, "txn_id": rec.txn_id,
                             "op": rec.op, "table": rec.table, "key": rec.key, "row": row}
                    if args.json:
                        print(json.dumps(entry, default=str))
                    else:
                        print(f"p{p} r{r} lsn={lsn} epoch={epoch} txn={rec.txn_id} {rec.op} {rec.table} "
                              f"key={rec.key!r} row={row!r}")

            scan = read_log(directory, codec, show, repair=False)
            for cut in scan.cut:
                print(f"p{p} r{r}: log ends at a bad batch: {cut['reason']}", file=sys.stderr)
    return 0


def _recover(args: argparse.Namespace) -> int:
    from actors.partition_core import PartitionCore
    from recovery.catalog import replica_dir
    from recovery.log_format import LogCodec
    from recovery.replay import RecoveryFailed, recover_replica

    catalog, schema = _open_catalog(args.data_dir)
    codec = LogCodec(schema)
    reports, failed = [], False
    for p in range(catalog["partitions"]):
        for r in range(catalog["replicas"]):
            core = PartitionCore(schema, p, catalog["partitions"])
            try:
                report = recover_replica(replica_dir(args.data_dir, p, r), core, codec).to_dict()
            except RecoveryFailed as err:
                failed = True
                report = {"error": str(err)}
            reports.append({"partition": p, "replica": r, "rows": core.row_counts(), **report})
    if args.json:
        out.print_json(json.dumps(reports, default=str))
        return 1 if failed else 0
    t = RichTable(title=f"recovered {args.data_dir} ({catalog['name']}, {catalog['partitions']} partitions)")
    for col in ("p", "r", "snapshot", "bad snaps", "replayed", "next lsn", "cut", "rows"):
        t.add_column(col)
    for rep in reports:
        if "error" in rep:
            t.add_row(str(rep["partition"]), str(rep["replica"]), "[red]FAILED[/red]", "", "", "", rep["error"], "")
            continue
        cut = "; ".join(c["reason"] for c in rep["cut"]) or "-"
        t.add_row(str(rep["partition"]), str(rep["replica"]), str(rep["snapshot_lsn"]), str(len(rep["snapshots_skipped"])),
                  str(rep["records_replayed"]), str(rep["next_lsn"]), cut,
                  " ".join(f"{k}={v}" for k, v in rep["rows"].items()))
    out.print(t)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
