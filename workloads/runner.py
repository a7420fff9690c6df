"""The benchmark harness: a workload, a load, a fault schedule, a history, checkers, a report.

Design note
-----------
``run(cfg, workload)`` goes through explicit phases (each announced through
``on_phase``):

1. **cluster** -- a local Ray instance (or ``--nodes N`` nodes on this machine,
   or ``--address``), then ``Cluster.create`` with the workload's schema and data.
2. **load** -- ``clients`` threads.  Closed loop (default): send a batch, wait
   for it, send the next.  Open loop (``rate``, transactions/s over all
   clients): batches leave on a fixed schedule whether or not earlier ones
   answered; an op's invoke time is its *scheduled* time, so queueing shows in
   its latency (no coordinated omission).  At most ``OPEN_LOOP_PENDING_MAX``
   batches per client are in flight; past that the client falls behind and
   says so (``late_batches``).  Every transaction is an op in the history.
3. **faults** -- the injector thread carries out the seeded schedule.
4. **heal** -- the load stops, paused processes are continued, then the run
   waits (bounded) for the cluster to be whole again: k+1 serving replicas per
   partition, a ready coordinator, and a closed report for every fault.
5. **check** -- the workload's checkers, plus the faults checker; any verdict
   not ok makes the run not ok (the CLI exits 1).
6. **report** -- figures, per-second timeline, faults with their durations,
   verdicts; ``out`` gets ``report.json``, ``history.jsonl`` and ``timeline.png``.

The runner never asserts a speed; it prints and writes figures.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from actors import runtime
from actors.client import Cluster
from actors.errors import OhmError
from workloads import fault_spec, injector, timeline
from workloads.bench import validate_load, write_report
from workloads.history import History, Op, write_jsonl
from workloads.workload import Verdict, Workload

log = logging.getLogger("ohmdb.runner")

WORKLOADS = ("voter", "bank", "ycsb", "append")
#: Batches one open-loop client may have in flight before it falls behind.
OPEN_LOOP_PENDING_MAX = 64
#: Longest wait, after the load, for the cluster to be whole and every fault report closed.
HEAL_TIMEOUT_S = 120.0
#: Poll interval while healing.
HEAL_POLL_S = 0.5
#: Longest the client threads together may take to finish their last batches after the load stops;
#: a client still waiting then means the cluster stopped answering (its ops end as unknown).
CLIENT_JOIN_S = 30.0
#: How often progress is reported.
PROGRESS_REFRESH_S = 0.25


@dataclass
class RunConfig:
    workload: str = "voter"
    partitions: int = 2
    k: int = 1
    nodes: int = 1
    durability: str = "sync"
    clients: int = 4
    batch: int = 100
    rate: float | None = None          # open loop: transactions per second over all clients
    duration_s: float | None = 10.0
    transactions: int | None = None    # alternatively: stop after this many (closed loop only)
    faults: str = ""
    seed: int = 1
    out: str | None = None
    address: str | None = None
    data_dir: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # workload options, for the report

    def validate(self) -> "RunConfig":
        """Check the configuration as a whole; ValueError naming what is wrong."""
        if self.workload not in WORKLOADS:
            raise ValueError(f"unknown workload {self.workload!r}; available: {', '.join(WORKLOADS)}")
        validate_load(self.partitions, self.clients, self.batch, self.durability, self.duration_s, self.transactions)
        if self.nodes < 1:
            raise ValueError("--nodes must be at least 1")
        if self.k < 0:
            raise ValueError("--k must be at least 0")
        if self.rate is not None and (self.rate <= 0 or self.transactions is not None):
            raise ValueError("--rate must be positive and goes with --duration (an open loop runs for a time)")
        if self.nodes > 1 and self.address is not None:
            raise ValueError("--nodes starts a multi-node cluster on this machine; it cannot go with --address")
        items = fault_spec.parse_faults(self.faults)  # raises FaultSpecError naming the bad item
        if items and self.duration_s is None:
            raise ValueError("--faults needs --duration (faults are scheduled in time)")
        if any(i.action == fault_spec.NODE for i in items) and self.nodes < 2:
            raise ValueError("node faults remove a Ray node: give --nodes 2 or more")
        return self


# --- load ----------------------------------------------------------------------------------------


@dataclass
class LoadState:
    stop: threading.Event = field(default_factory=threading.Event)
    late_batches: int = 0
    stuck: int = 0  # client threads still waiting for an answer CLIENT_JOIN_S after the end
    errors: list[BaseException] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _client_rng(cfg: RunConfig, process: int) -> random.Random:
    return random.Random(cfg.seed * 1_000_003 + process)


def _quota(cfg: RunConfig, process: int) -> int | None:
    if cfg.transactions is None:
        return None
    return cfg.transactions // cfg.clients + (1 if process < cfg.transactions % cfg.clients else 0)


def _outcomes(future_or_call: Callable[[], list[Any]], n: int) -> list[Any]:
    """A batch's outcomes; an error raised for the whole batch stands for each of its transactions."""
    try:
        return future_or_call()
    except OhmError as exc:
        return [exc] * n


def _closed_loop(db: Cluster, cfg: RunConfig, wl: Workload, process: int, history: History,
                 state: LoadState, stop_at: float | None) -> None:
    gen = wl.client(process, _client_rng(cfg, process))
    remaining = _quota(cfg, process)
    while not state.stop.is_set() and (remaining is None or remaining > 0):
        if stop_at is not None and history.now() >= stop_at:
            return
        f, args = gen.next_batch(cfg.batch if remaining is None else min(cfg.batch, remaining))
        ops = history.invoke_many(process, f, args)
        outcomes = _outcomes(lambda: db.call_many(f, args), len(args))
        history.complete_many(ops, outcomes)
        if remaining is not None:
            remaining -= len(args)


def _open_loop(db: Cluster, cfg: RunConfig, wl: Workload, process: int, history: History,
               state: LoadState, stop_at: float) -> None:
    gen = wl.client(process, _client_rng(cfg, process))
    interval_s = cfg.batch * cfg.clients / cfg.rate
    pending: queue.Queue = queue.Queue(maxsize=OPEN_LOOP_PENDING_MAX)
    completer = threading.Thread(target=_complete_pending, args=(pending, history), daemon=True,
                                 name=f"client-{process}-completer")
    completer.start()
    due = history.now() + interval_s * process / cfg.clients  # spread the clients' schedules
    try:
        while not state.stop.is_set() and due < stop_at:
            if history.now() < due:
                state.stop.wait(due - history.now())
                continue
            if history.now() - due > interval_s:
                with state.lock:
                    state.late_batches += 1
            f, args = gen.next_batch(cfg.batch)
            ops = history.invoke_many(process, f, args, at=due)
            try:
                future: Any = db.call_many_async(f, args)
            except OhmError as exc:
                future = exc
            pending.put((ops, future, len(args)))  # blocks when too many are in flight: the client falls behind
            due += interval_s
    finally:
        pending.put(None)
        completer.join()


def _complete_pending(pending: queue.Queue, history: History) -> None:
    while (item := pending.get()) is not None:
        ops, future, n = item
        if isinstance(future, OhmError):
            history.complete_many(ops, [future] * n)
        else:
            history.complete_many(ops, _outcomes(future.result, n))


def run_load(db: Cluster, cfg: RunConfig, wl: Workload, history: History,
             on_tick: Callable[[], None] | None = None) -> tuple[LoadState, float]:
    """Run the clients to the end of the run; (state, elapsed seconds)."""
    state = LoadState()
    start = history.now()
    stop_at = None if cfg.duration_s is None else start + cfg.duration_s

    def guarded(process: int) -> None:
        try:
            if cfg.rate is None:
                _closed_loop(db, cfg, wl, process, history, state, stop_at)
            else:
                _open_loop(db, cfg, wl, process, history, state, stop_at)
        except BaseException as exc:  # noqa: BLE001 -- surfaced after the run
            log.exception("client %d failed", process)
            state.errors.append(exc)
            state.stop.set()

    threads = [threading.Thread(target=guarded, args=(p,), name=f"client-{p}", daemon=True) for p in range(cfg.clients)]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(PROGRESS_REFRESH_S)
            if on_tick is not None:
                on_tick()
    except KeyboardInterrupt:
        state.stop.set()
    state.stop.set()
    deadline = time.monotonic() + CLIENT_JOIN_S
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    state.stuck = sum(1 for t in threads if t.is_alive())
    return state, history.now() - start


# --- heal ----------------------------------------------------------------------------------------


def _whole(db: Cluster, k: int) -> bool:
    """k+1 serving replicas in every partition and a ready coordinator."""
    try:
        status = db.status()
    except OhmError:
        return False
    serving: dict[int, int] = {}
    for r in status["replicas"]:
        if r["state"] == "serving":
            serving[r["partition"]] = serving.get(r["partition"], 0) + 1
    whole = all(serving.get(p, 0) >= k + 1 for p in range(status["partitions"]))
    return whole and bool((status.get("coordinator") or {}).get("ready"))


def heal(db: Cluster, cfg: RunConfig, inj: injector.Injector | None, deadline_s: float = HEAL_TIMEOUT_S) -> dict[str, Any]:
    """Continue paused processes; wait for the cluster to be whole and the fault reports closed."""
    started = time.monotonic()
    if inj is not None:
        inj.heal()
    whole = settled = False
    while time.monotonic() - started < deadline_s:
        whole = _whole(db, cfg.k)
        if inj is not None and inj.injected:
            injector.match_reports(inj.injected, _reports(db))
            settled = injector.all_settled(inj.injected)
        else:
            settled = True
        if whole and settled:
            break
        time.sleep(HEAL_POLL_S)
    return {"whole": whole, "reports_settled": settled, "seconds": round(time.monotonic() - started, 3)}


def _reports(db: Cluster) -> list[dict[str, Any]]:
    try:
        return db.faults()
    except OhmError:
        return []


# --- the whole run -------------------------------------------------------------------------------


@dataclass
class Hooks:
    """What the CLI shows while a run goes on; every hook optional."""

    on_phase: Callable[[str], None] = lambda _m: None
    on_tick: Callable[[dict[str, Any]], None] = lambda _s: None
    on_fault: Callable[[injector.Injected], None] = lambda _f: None


def run(cfg: RunConfig, wl: Workload, hooks: Hooks | None = None) -> dict[str, Any]:
    """Cluster, load with faults, heal, checks; the report dict (also written to ``cfg.out``)."""
    cfg.validate()
    hooks = hooks or Hooks()
    ceiling = getattr(wl, "ceiling", None)
    ceiling_figures = None
    if ceiling is not None:
        hooks.on_phase("measuring the in-process ceiling")
        ceiling_figures = ceiling(cfg)
    hooks.on_phase("starting the cluster")
    if cfg.nodes > 1 and runtime.is_connected():
        raise ValueError("--nodes starts its own Ray cluster; this process is already attached to one")
    nodes = runtime.LocalNodes(cfg.nodes) if cfg.nodes > 1 else None
    temp_dir = None
    data_dir = cfg.data_dir
    if data_dir is None and cfg.durability != "off":
        temp_dir = data_dir = tempfile.mkdtemp(prefix=f"ohmdb-{cfg.workload}-")
    try:
        runtime.connect(nodes.address if nodes is not None else cfg.address)
        name = f"{cfg.workload}-{os.getpid()}-{int(time.time())}"
        db = Cluster.create(wl.schema(), partitions=cfg.partitions, k=cfg.k, name=name, data_dir=data_dir,
                            durability=cfg.durability, initial_data=wl.initial_data())
        try:
            report, ops = _drive(db, cfg, wl, nodes, hooks)
        finally:
            db.shutdown()
    finally:
        if nodes is not None:
            nodes.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
    if ceiling_figures is not None:
        report["ceiling"] = ceiling_figures
        report["ceiling_tps"] = round(ceiling_figures["tps"], 1)
        report["ratio_to_ceiling"] = (round(report["throughput_tps"] / ceiling_figures["tps"], 3)
                                      if ceiling_figures["tps"] else None)
    if cfg.out:
        hooks.on_phase(f"writing {cfg.out}")
        _write_outputs(report, ops, cfg.out)
    return report


def _drive(db: Cluster, cfg: RunConfig, wl: Workload, nodes: runtime.LocalNodes | None,
           hooks: Hooks) -> tuple[dict[str, Any], list[Op]]:
    history = History()
    started_at = time.time()
    plan = fault_spec.schedule(fault_spec.parse_faults(cfg.faults), cfg.duration_s, random.Random(cfg.seed)) \
        if cfg.faults else []
    inj = injector.Injector(db, plan, random.Random(cfg.seed + 1), history.now, nodes, hooks.on_fault) if plan else None
    hooks.on_phase(f"running {cfg.workload}" + (f" with {len(plan)} fault(s)" if plan else ""))
    if inj is not None:
        inj.start()
    try:
        state, elapsed = run_load(db, cfg, wl, history, lambda: hooks.on_tick(_tick(history, cfg, inj)))
    finally:
        if inj is not None:
            inj.stop()
    hooks.on_phase("healing: waiting for the cluster to be whole and every fault report closed")
    healed = heal(db, cfg, inj)
    open_at_end = history.close()
    hooks.on_phase("checking")
    ops = history.ops()
    checks = _checks(db, wl, ops, history, inj)
    status = db.status()
    report = _report(cfg, db, ops, elapsed, started_at, state, healed, open_at_end, checks, inj, status, history)
    return report, ops


def _tick(history: History, cfg: RunConfig, inj: injector.Injector | None) -> dict[str, Any]:
    counts = history.counts()
    return {"elapsed_s": history.now(), "duration_s": cfg.duration_s, "transactions": cfg.transactions,
            "ok": counts["ok"], "fail": counts["fail"], "unknown": counts["unknown"],
            "done": counts["ok"] + counts["fail"] + counts["unknown"],
            "faults": len(inj.injected) if inj else 0}


def _checks(db: Cluster, wl: Workload, ops: list[Op], history: History,
            inj: injector.Injector | None) -> dict[str, Verdict]:
    checks: dict[str, Verdict] = {}
    if history.truncated:
        checks["history_complete"] = Verdict(False, f"the history stopped storing after {len(ops):,} ops "
                                                    f"({history.dropped:,} dropped): the checkers saw part of the run")
    try:
        checks.update(wl.check(db, ops))
    except OhmError as exc:
        checks["workload_check"] = Verdict(False, f"the final reads failed: {exc}")
    if inj is not None:
        if inj.error is not None:
            checks["fault_injection"] = Verdict(False, f"the injector failed: {inj.error!r}")
        injector.match_reports(inj.injected, _reports(db))
        checks["faults"] = injector.verdict(inj.injected, db.config.heartbeat_timeout_max_ms / 1000.0)
    return checks


def _report(cfg: RunConfig, db: Cluster, ops: list[Op], elapsed: float, started_at: float, state: LoadState,
            healed: dict[str, Any], open_at_end: int, checks: dict[str, Verdict], inj: injector.Injector | None,
            status: dict[str, Any], history: History) -> dict[str, Any]:
    summary = timeline.summary(ops, elapsed)
    fail_codes = _codes(ops, "fail")
    user_aborts = {code: n for code, n in fail_codes.items() if code.startswith("USER_ABORT")}
    faults = [f.to_dict() for f in inj.injected] if inj else []
    if state.errors:
        checks["clients"] = Verdict(False, f"{len(state.errors)} client thread(s) failed: {state.errors[0]!r}")
    if not healed["whole"]:
        checks["healed"] = Verdict(False, f"the cluster was not back to k+1 serving replicas per partition and a "
                                          f"ready coordinator {healed['seconds']:g} s after the load stopped")
    if state.stuck:
        checks["clients_finished"] = Verdict(False, f"{state.stuck} client(s) still waiting for an answer "
                                                    f"{CLIENT_JOIN_S:g} s after the load stopped: the cluster "
                                                    f"stopped answering ({open_at_end} ops left unknown)")
    report = {
        "workload": cfg.workload,
        "config": asdict(cfg),
        "cluster": {"name": db.name, "partitions": cfg.partitions, "k": cfg.k, "nodes": len(status["nodes"]),
                    "durability": cfg.durability,
                    "fsyncs": sum(r.get("fsyncs", 0) or 0 for r in status["replicas"]),
                    "log_batches": sum(r.get("batches_written", 0) or 0 for r in status["replicas"])},
        "transactions": summary["ok"] + summary["fail"] + summary["unknown"],
        "committed": summary["ok"],
        "aborted": sum(user_aborts.values()),
        "abort_reasons": {code.split(": ", 1)[-1]: n for code, n in user_aborts.items()},
        "errors": summary["fail"] - sum(user_aborts.values()) + summary["unknown"],
        "error_codes": {**{c: n for c, n in fail_codes.items() if not c.startswith("USER_ABORT")},
                        **_codes(ops, "unknown")},
        "unknown": summary["unknown"],
        "open_at_end": open_at_end,
        "late_batches": state.late_batches,
        "duration_s": round(elapsed, 3),
        # Transactions the database answered with an outcome of their own: committed or aborted by the procedure.
        "throughput_tps": round((summary["ok"] + sum(user_aborts.values())) / elapsed, 1) if elapsed else 0.0,
        "committed_tps": round(summary["throughput"], 1),
        "latency_ms": {q: _round(summary[f"{q}_ms"]) for q in ("p50", "p95", "p99", "max")},
        "by_procedure": by_procedure(ops, elapsed),
        "faults": faults,
        "heal": healed,
        "checks": {name: v.to_dict() for name, v in checks.items()},
        "timeline": timeline.per_second(ops, elapsed),
        "started_at": started_at,
        "history": {"ops": len(ops), "truncated": history.truncated},
    }
    report["ok"] = all(v.ok for v in checks.values())
    return report


def by_procedure(ops: list[Op], elapsed: float) -> dict[str, dict[str, Any]]:
    """Per procedure: transactions answered with an outcome of their own (committed or aborted by the
    procedure), their rate, and the latency of the completed ones -- e.g. bank's transfers apart from its reads."""
    out: dict[str, dict[str, Any]] = {}
    for f in sorted({op.f for op in ops}):
        mine = [op for op in ops if op.f == f]
        s = timeline.summary(mine, elapsed)
        answered = s["ok"] + sum(1 for op in mine if op.type == "fail" and (op.error or "").startswith("USER_ABORT"))
        out[f] = {"answered": answered, "tps": round(answered / elapsed, 1) if elapsed else 0.0,
                  "p50_ms": _round(s["p50_ms"]), "p99_ms": _round(s["p99_ms"])}
    return out


def _codes(ops: list[Op], kind: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for op in ops:
        if op.type == kind:
            code = _reason(op.error or "?")
            out[code] = out.get(code, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _reason(error: str) -> str:
    """A user abort's message up to its first ':' or digit run (the reason kind, not the instance)."""
    if not error.startswith("USER_ABORT: "):
        return error
    message = error[len("USER_ABORT: "):]
    kind = message.split(":", 1)[0]
    return "USER_ABORT: " + "".join(ch for ch in kind if not ch.isdigit()).strip()


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _write_outputs(report: dict[str, Any], ops: list[Op], out: str) -> None:
    """report.json, history.jsonl and timeline.png in ``out``."""
    os.makedirs(out, exist_ok=True)
    report["files"] = {"report": "report.json", "history": "history.jsonl", "timeline": "timeline.png"}
    write_report(report, os.path.join(out, "report.json"))
    write_jsonl(ops, os.path.join(out, "history.jsonl"))
    marks = [{"label": f["label"], "injected_s": f["injected_s"], "pause_s": f["pause_s"],
              **_marks(f)} for f in report["faults"] if f["injected_s"] is not None]
    title = (f"ohmdb {report['workload']}: {report['cluster']['partitions']} partitions, k={report['cluster']['k']}, "
             f"{report['cluster']['durability']}, {report['config']['clients']} clients")
    timeline.plot(report["timeline"], marks, os.path.join(out, "timeline.png"), title)


def _marks(fault: dict[str, Any]) -> dict[str, float | None]:
    r = fault.get("report") or {}
    at = fault["injected_s"]
    return {"detected_s": None if r.get("detection_s") is None else at + r["detection_s"],
            "recovered_s": None if r.get("recovery_s") is None else at + r["recovery_s"]}
