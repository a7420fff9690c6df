"""``ohmdb bench voter|bank|ycsb|append``: the workload harness on the command line.

Design note
-----------
One set of options for every workload (cluster shape, load, ``--faults``,
``--seed``, ``--out``), plus each workload's own.  Defaults differ per
workload (``DEFAULTS``): voter is a throughput run of 200,000 votes in big
batches, the others run for a time in small batches.  While a run goes on a
progress bar shows transactions, rate and faults; at the end a summary table,
the faults with their detection and recovery times, and every checker's
verdict.  Exit 1 when a checker fails.  ``--peer`` runs a peer system with the
same driver and prints both figures side by side (``workloads.peers``).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from workloads.fault_spec import PAUSE_S_MAX

#: Per-workload defaults: partitions, clients, batch, and transactions or duration.
DEFAULTS: dict[str, dict[str, Any]] = {
    "voter": {"partitions": 2, "clients": 4, "batch": 500, "transactions": 200_000},
    "bank": {"partitions": 4, "clients": 8, "batch": 10, "duration": 10.0},
    "ycsb": {"partitions": 2, "clients": 4, "batch": 100, "duration": 10.0},
    "append": {"partitions": 2, "clients": 4, "batch": 1, "duration": 10.0},
}

FAULTS_HELP = (
    "fault schedule, comma-separated ACTION[:TARGET]@WHEN[:DURATION] items: ACTION kill | pause | node; "
    "TARGET leader | follower | coordinator | supervisor, optionally with a partition, leader[p1]; "
    "WHEN 10s | every=5s | random=2s..8s; DURATION (pause only, at most "
    f"{PAUSE_S_MAX:g}s) e.g. 2s. Example: \"kill:leader@every=5s,pause:follower@10s:2s,node@20s\" "
    "(node needs --nodes 2 or more). See README, 'Fault schedules'."
)


def add_parsers(wl: Any) -> None:
    """The four workload subcommands under ``ohmdb bench``."""
    v = wl.add_parser("voter", help="VoltDB's voter workload", description="Run VoltDB's voter workload.")
    _common(v, "voter")
    v.add_argument("--contestants", type=int, default=6, help="contestants, 1..12 (default 6)")
    v.add_argument("--max-votes", type=int, default=2, help="votes allowed per phone number (default 2)")
    v.add_argument("--peer", choices=["redis"], help="also run the same voter logic on redis (AOF always + "
                   "one replica with WAIT) and print both throughputs and their ratio")
    b = wl.add_parser("bank", help="transfers between accounts, local and cross-partition (2PC)",
                      description="Move money between accounts; check that none is created, lost or negative.")
    _common(b, "bank")
    b.add_argument("--accounts", type=int, default=10_000, help="accounts (default 10000)")
    b.add_argument("--cross", type=float, default=0.5, help="fraction of cross-partition transfer batches (default 0.5)")
    b.add_argument("--total-every", type=int, default=None, metavar="N",
                   help="one batch in N of each client is a consistent total read (default 10; 0: none during "
                        "the run, only the final check); --peer postgres runs the same reads")
    b.add_argument("--compare", action="store_true", help="instead: a single-partition phase and a multi-partition "
                   "phase side by side, reporting the cost of a 2PC transfer (no faults)")
    b.add_argument("--peer", choices=["postgres"], help="also run cross-partition transfers on two PostgreSQL "
                   "servers with PREPARE TRANSACTION / COMMIT PREPARED and print both side by side")
    y = wl.add_parser("ycsb", help="YCSB core workloads A, B, C, F with zipfian keys",
                      description="Run a YCSB core workload (A: 50/50 read/update, B: 95/5, C: read only, "
                                  "F: 50/50 read/read-modify-write), zipfian keys.")
    _common(y, "ycsb")
    y.add_argument("--mix", default="a", help="workload a, b, c or f (default a)")
    y.add_argument("--records", type=int, default=10_000, help="records loaded (default 10000)")
    a = wl.add_parser("append", help="list-append transactions checked for isolation anomalies (Elle)",
                      description="Run list-append transactions over a few hot keys and check the history "
                                  "for G0, G1a, G1b, G1c and G2 anomalies.")
    _common(a, "append")
    a.add_argument("--keys", type=int, default=12, help="active keys at a time (default 12)")
    a.add_argument("--mops-max", type=int, default=4, help="micro-operations per transaction, at most (default 4)")


def _common(p: argparse.ArgumentParser, workload: str) -> None:
    d = DEFAULTS[workload]
    p.add_argument("--partitions", type=int, default=d["partitions"], help=f"partitions (default {d['partitions']})")
    p.add_argument("--k", type=int, default=1, help="replicas per partition beyond the leader (default 1)")
    p.add_argument("--nodes", type=int, default=1, help="Ray nodes started on this machine (default 1)")
    p.add_argument("--durability", choices=["sync", "async", "off"], default="sync",
                   help="sync: fsync before acknowledging (default); async: fsync in the background; off: memory only")
    p.add_argument("--clients", type=int, default=d["clients"], help=f"client threads (default {d['clients']})")
    p.add_argument("--batch", type=int, default=d["batch"], help=f"transactions per call (default {d['batch']})")
    p.add_argument("--rate", type=float, help="open loop: transactions per second over all clients "
                   "(default: closed loop, as fast as answers come)")
    amount = p.add_mutually_exclusive_group()
    default_amount = (f"{d['transactions']} transactions" if "transactions" in d else f"{d['duration']:g} s")
    amount.add_argument("--duration", type=float, metavar="SECONDS", help=f"run for this long (default {default_amount})")
    amount.add_argument("--transactions", type=int, metavar="N", help="run this many transactions")
    p.add_argument("--faults", default="", metavar="SPEC", help=FAULTS_HELP)
    p.add_argument("--seed", type=int, default=1, help="seed of the calls and the fault schedule (default 1)")
    p.add_argument("--out", metavar="DIR", help="write report.json, history.jsonl and timeline.png here")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON here")
    p.add_argument("--address", help="Ray cluster address ('auto' for a running local one); default: start one")
    p.add_argument("--data-dir", metavar="DIR", help="keep the database here (default: a temporary directory)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _amount(args: argparse.Namespace) -> tuple[float | None, int | None]:
    if args.duration is None and args.transactions is None:
        d = DEFAULTS[args.workload]
        return d.get("duration"), d.get("transactions")
    return args.duration, args.transactions


def make_workload(args: argparse.Namespace) -> Any:
    if args.workload == "voter":
        from workloads.voter_workload import VoterWorkload
        return VoterWorkload(args.contestants, args.max_votes)
    if args.workload == "bank":
        from workloads.bank_workload import TOTAL_EVERY, BankWorkload
        if args.total_every is None:
            args.total_every = TOTAL_EVERY
        return BankWorkload(args.accounts, cross_fraction=args.cross, partitions=args.partitions,
                            total_every=args.total_every)
    if args.workload == "ycsb":
        from workloads.ycsb import YcsbWorkload
        return YcsbWorkload(args.mix, args.records)
    from workloads.append import AppendWorkload
    return AppendWorkload(keys=args.keys, mops_max=args.mops_max)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    names = {"voter": ("contestants", "max_votes"), "bank": ("accounts", "cross", "total_every"), "ycsb": ("mix", "records"),
             "append": ("keys", "mops_max")}[args.workload]
    return {n: getattr(args, n) for n in names}


def run(args: argparse.Namespace, out: Console, console: Console) -> int:
    from workloads import runner
    from workloads.bench import write_report

    duration, transactions = _amount(args)
    wl = make_workload(args)
    cfg = runner.RunConfig(
        workload=args.workload, partitions=args.partitions, k=args.k, nodes=args.nodes, durability=args.durability,
        clients=args.clients, batch=args.batch, rate=args.rate, duration_s=duration, transactions=transactions,
        faults=args.faults, seed=args.seed, out=args.out, address=args.address, data_dir=args.data_dir,
        options=_options(args)).validate()
    with _Progress(args, cfg, console) as hooks:
        report = runner.run(cfg, wl, hooks)
    peer = getattr(args, "peer", None)
    if peer:
        report["peer"] = _run_peer(peer, cfg, args, console)
        theirs = report["peer"].get("throughput_tps")
        report["peer_ratio"] = round(_ours_for_peer(report)[0] / theirs, 3) if theirs else None
    print_report(report, out)
    if args.json:
        write_report(report, args.json)
        console.print(f"report written to {args.json}")
    if args.out:
        if peer:
            write_report(report, os.path.join(args.out, "report.json"))
        console.print(f"report.json, history.jsonl and timeline.png written to {args.out}")
    return 0 if report["ok"] else 1


class _Progress:
    """A rich progress bar fed by the runner's hooks."""

    def __init__(self, args: argparse.Namespace, cfg: Any, console: Console) -> None:
        from workloads.runner import Hooks

        self.cfg = cfg
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                            TimeElapsedColumn(), console=console, disable=args.quiet, transient=True)
        self.task = self.bar.add_task(args.workload, total=cfg.transactions or cfg.duration_s, info="")
        self.hooks = Hooks(on_phase=lambda msg: self.bar.update(self.task, description=msg),
                           on_tick=self._tick, on_fault=self._fault)
        self.faults = 0

    def __enter__(self) -> Any:
        self.bar.__enter__()
        return self.hooks

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def _tick(self, s: dict[str, Any]) -> None:
        rate = s["done"] / s["elapsed_s"] if s["elapsed_s"] else 0.0
        done = s["done"] if self.cfg.transactions else min(s["elapsed_s"], self.cfg.duration_s or 0.0)
        info = f"{s['done']:,} txns  {rate:,.0f}/s  unknown {s['unknown']:,}  faults {s['faults']}"
        self.bar.update(self.task, completed=done, info=info)

    def _fault(self, fault: Any) -> None:
        what = f"skipped: {fault.skipped}" if fault.skipped else (fault.actor or fault.node_id)
        self.bar.console.print(f"  {fault.injected_s or fault.planned_s:7.2f}s  {fault.label}: {what}",
                               markup=False, highlight=False)


def _run_peer(peer: str, cfg: Any, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    from workloads import peers

    duration = cfg.duration_s or 10.0
    try:
        with console.status(f"running the {peer} peer for {duration:g} s"):
            if peer == "redis":
                return peers.run_redis_voter(cfg.clients, cfg.batch, duration, cfg.seed, args.contestants, args.max_votes)
            return peers.run_postgres_bank(cfg.clients, duration, args.accounts, cfg.seed, args.total_every)
    except peers.PeerUnavailable as exc:
        return {"peer": peer, "unavailable": str(exc)}


# --- the summary ---------------------------------------------------------------------------------


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:,.0f}"


def print_report(report: dict[str, Any], out: Console) -> None:
    c, lat = report["config"], report["latency_ms"]
    t = RichTable(title=f"ohmdb bench {report['workload']}", show_header=False)
    t.add_column("metric")
    t.add_column("value", justify="right")
    rows = [
        ("partitions / k / nodes / durability", f"{c['partitions']} / {c['k']} / {report['cluster']['nodes']} / "
                                                f"{c['durability']}"),
        ("clients / batch / loop", f"{c['clients']} / {c['batch']} / "
                                   + (f"open at {c['rate']:,.0f} txn/s" if c["rate"] else "closed")),
        ("transactions", f"{report['transactions']:,} in {report['duration_s']:.2f} s"),
        ("committed", f"{report['committed']:,}"),
        ("aborted by the procedure", f"{report['aborted']:,} {report['abort_reasons'] or ''}"),
        ("errors (of which unknown outcome)", f"{report['errors']:,} ({report['unknown']:,}) {report['error_codes'] or ''}"),
        ("throughput", f"{report['throughput_tps']:,.0f} txn/s"),
        ("latency p50 / p95 / p99 / max", " / ".join("-" if lat[q] is None else f"{lat[q]:.1f}"
                                                     for q in ("p50", "p95", "p99", "max")) + " ms"),
    ]
    if "ceiling_tps" in report:
        rows += [("ceiling (in-process core)", f"{report['ceiling_tps']:,.0f} txn/s"),
                 ("ratio to ceiling", f"{report['ratio_to_ceiling']}")]
    if report.get("late_batches"):
        rows.append(("open loop: batches sent late", f"{report['late_batches']:,}"))
    for name, value in rows:
        t.add_row(name, value)
    out.print(t)
    if report["faults"]:
        _print_faults(report, out)
    _print_checks(report, out)
    if report.get("peer"):
        _print_peer(report, out)


def _print_faults(report: dict[str, Any], out: Console) -> None:
    t = RichTable(title="faults")
    for col in ("at (s)", "fault", "target", "reported as", "detected (ms)", "available (ms)", "recovered (ms)"):
        t.add_column(col, justify="left" if col in ("fault", "target", "reported as") else "right")
    for f in report["faults"]:
        r = f.get("report") or {}
        at = f["injected_s"] if f["injected_s"] is not None else f["planned_s"]
        target = f"skipped: {f['skipped']}" if f["skipped"] else (f["actor"] or f["node_id"] or "")
        kind = f"{r['kind']} ({r['state']})" if r else ("-" if f["skipped"] else "no report")
        t.add_row(f"{at:.2f}", f["label"], target, kind,
                  _ms(r.get("detection_s")), _ms(r.get("availability_s")), _ms(r.get("recovery_s")))
    out.print(t)


def _print_checks(report: dict[str, Any], out: Console) -> None:
    t = RichTable(title="checks")
    t.add_column("checker")
    t.add_column("verdict")
    t.add_column("detail")
    for name, check in report["checks"].items():
        t.add_row(name, "[green]ok[/green]" if check["ok"] else "[red]FAILED[/red]", check["detail"])
    out.print(t)


def _ours_for_peer(report: dict[str, Any]) -> tuple[float, Any, Any]:
    """ohmdb's figure that the peer's is set against: (txn/s, p50 ms, p99 ms).

    For bank, the transfers alone (the peer counts transfers; both ran the same total reads beside them);
    for voter, every transaction.
    """
    if report["workload"] != "bank":
        return report["throughput_tps"], report["latency_ms"]["p50"], report["latency_ms"]["p99"]
    from workloads.bank_workload import TRANSFERS
    transfers = [v for f, v in report.get("by_procedure", {}).items() if f in TRANSFERS]
    tps = sum(v["tps"] for v in transfers)
    if len(transfers) != 1:  # mixed local and cross transfers: their latencies are not one figure
        return tps, report["latency_ms"]["p50"], report["latency_ms"]["p99"]
    return tps, transfers[0]["p50_ms"], transfers[0]["p99_ms"]


def _print_peer(report: dict[str, Any], out: Console) -> None:
    peer = report["peer"]
    if "unavailable" in peer:
        out.print(f"peer {peer['peer']}: not run: {peer['unavailable']}", markup=False)
        return
    (ours, p50, p99), theirs = _ours_for_peer(report), peer["throughput_tps"]
    t = RichTable(title=f"side by side: ohmdb and {peer['peer']}")
    for col in ("system", "transfers/s" if report["workload"] == "bank" else "txn/s", "p50 ms", "p99 ms", "check"):
        t.add_column(col)
    t.add_row("ohmdb", f"{ours:,.0f}", f"{p50}", f"{p99}", "ok" if report["ok"] else "FAILED")
    pl = peer["latency_ms"]
    t.add_row(f"{peer['peer']} {peer.get('version', '')}", f"{theirs:,.0f}", f"{pl['p50']}", f"{pl['p99']}",
              "ok" if peer["check"]["ok"] else f"FAILED: {peer['check']['detail']}")
    out.print(t)
    out.print(f"ohmdb / {peer['peer']} throughput: {report['peer_ratio']}")
