"""Carry out a fault schedule against a running cluster, then find each fault's report.

Design note
-----------
The plan comes from ``workloads.fault_spec.schedule`` (pure, seeded).  The
injector runs it in one thread, in time order, interleaved with the SIGCONTs
that end pauses:

* ``kill:ROLE`` -- SIGKILL the process of a serving leader or follower (of the
  named partition, or one picked by the seeded rng), of the coordinator, or of
  the supervisor;
* ``pause:ROLE`` -- SIGSTOP it, SIGCONT after the given duration;
* ``node`` -- remove a worker node of the local multi-node Ray cluster
  (``--nodes``), picked by the rng.

A target is resolved at injection time from the cluster's status (leaders move
under faults).  When there is nothing to hit -- no serving follower left, no
worker node left -- the fault is recorded as ``skipped`` with the reason.
Signals go through ``runtime.signal_process`` (directly on this node, through
a pinned task on another).

After the run ``match_reports`` pairs every injected fault with the
supervisor's fault report about that actor (by name, and pid: a coordinator or
supervisor keeps its name across incarnations) or node, detected at or after
the injection, and derives detection / availability / recovery durations from
the injection time.  ``verdict`` is the checker: every kill and node removal
must have a recovered report; a pause must when it lasted at least the
detector's ceiling, and may go unseen when shorter.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from actors import runtime
from actors.coordinator import coordinator_name
from workloads.fault_spec import KILL, NODE, PAUSE, PlannedFault
from workloads.workload import EVIDENCE_MAX, Verdict

log = logging.getLogger("ohmdb.injector")

#: A report detected this long before the injection time (clock skew, rounding) still matches.
MATCH_SLACK_S = 1.0
#: Longest the injector thread sleeps before looking at its stop flag again.
INJECTOR_POLL_S = 0.5


@dataclass
class Injected:
    """One fault as carried out (times are seconds since the run started, and wall time)."""

    label: str
    action: str
    role: str | None
    partition: int | None
    planned_s: float
    injected_s: float | None = None
    injected_at: float | None = None  # wall clock, to compare with fault reports
    actor: str | None = None
    pid: int | None = None
    node_id: str | None = None
    pause_s: float | None = None
    resumed_s: float | None = None
    skipped: str | None = None  # why nothing was hit
    report: dict[str, Any] | None = None  # filled by match_reports

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _label(p: PlannedFault) -> str:
    if p.action == NODE:
        return "remove node"
    where = "" if p.partition is None else f" p{p.partition}"
    return f"{p.action} {p.target}{where}"


class Injector:
    """Runs a plan in a thread; ``heal`` resumes whatever is still paused."""

    def __init__(self, db: Any, plan: list[PlannedFault], rng: random.Random, now: Callable[[], float],
                 nodes: runtime.LocalNodes | None = None,
                 on_fault: Callable[[Injected], None] | None = None) -> None:
        self.db, self.plan, self.rng, self.now, self.nodes = db, plan, rng, now, nodes
        self.on_fault = on_fault or (lambda _f: None)
        self.injected: list[Injected] = []
        self._paused: list[Injected] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-injector", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop injecting (pauses in progress are left to ``heal``)."""
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            for planned in self.plan:
                if not self._sleep_until(planned.at_s):
                    return
                fault = self._inject(planned)
                self.injected.append(fault)
                self.on_fault(fault)
            self._sleep_until(float("inf"))
        except BaseException as exc:  # noqa: BLE001 -- reported by the runner, never lost
            log.exception("fault injector failed")
            self.error = exc

    def _sleep_until(self, at_s: float) -> bool:
        """Resume due pauses while waiting; False when stopped."""
        while not self._stop.is_set():
            self._resume_due()
            if self.now() >= at_s:
                return True
            next_s = min([at_s] + [f.injected_s + f.pause_s for f in self._paused])
            self._stop.wait(min(max(0.0, next_s - self.now()), INJECTOR_POLL_S))
        return False

    def _resume_due(self) -> None:
        for fault in [f for f in self._paused if f.injected_s + f.pause_s <= self.now()]:
            self._resume(fault)

    def _resume(self, fault: Injected) -> None:
        runtime.signal_process(fault.node_id, fault.pid, signal.SIGCONT)
        fault.resumed_s = self.now()
        self._paused.remove(fault)

    def heal(self) -> None:
        """SIGCONT every process still paused (the run is over)."""
        for fault in list(self._paused):
            self._resume(fault)

    # -- one fault -------------------------------------------------------------------------------

    def _inject(self, planned: PlannedFault) -> Injected:
        fault = Injected(_label(planned), planned.action, planned.target, planned.partition, planned.at_s)
        if planned.action == NODE:
            self._remove_node(fault)
            return fault
        target = self._resolve(planned)
        if isinstance(target, str):
            fault.skipped = target
            return fault
        fault.actor, fault.pid, fault.node_id = target["actor"], target["pid"], target["node_id"]
        fault.partition = target.get("partition", fault.partition)
        sig = signal.SIGKILL if planned.action == KILL else signal.SIGSTOP
        fault.injected_at, fault.injected_s = time.time(), self.now()
        if not runtime.signal_process(fault.node_id, fault.pid, sig):
            fault.skipped = f"process {fault.pid} of {fault.actor} was already gone"
        elif planned.action == PAUSE:
            fault.pause_s = planned.duration_s
            self._paused.append(fault)
        log.warning("fault %s: %s pid=%s at %.3fs", fault.label, fault.actor, fault.pid, fault.injected_s)
        return fault

    def _resolve(self, planned: PlannedFault) -> dict[str, Any] | str:
        """The target's actor, pid and node; or why there is none."""
        status = self.db.status()
        if planned.target in ("coordinator", "supervisor"):
            entry = status.get(planned.target) or {}
            if entry.get("pid") is None:
                return f"no live {planned.target} ({entry.get('error', 'no pid in status')})"
            name = coordinator_name(self.db.name) if planned.target == "coordinator" else entry["actor_name"]
            return {"actor": name, "pid": entry["pid"], "node_id": entry.get("node_id")}
        candidates = [r for r in status["replicas"] if r["role"] == planned.target and r["state"] == "serving"
                      and r.get("pid") is not None and (planned.partition is None or r["partition"] == planned.partition)]
        if not candidates:
            where = "" if planned.partition is None else f" of partition {planned.partition}"
            return f"no serving {planned.target}{where}"
        r = self.rng.choice(sorted(candidates, key=lambda r: r["actor_name"]))
        return {"actor": r["actor_name"], "pid": r["pid"], "node_id": r["node_id"], "partition": r["partition"]}

    def _remove_node(self, fault: Injected) -> None:
        workers = self.nodes.worker_ids() if self.nodes is not None else []
        if not workers:
            fault.skipped = "no worker node left to remove" if self.nodes else "node faults need --nodes 2 or more"
            return
        fault.node_id = self.rng.choice(workers)
        fault.injected_at, fault.injected_s = time.time(), self.now()
        self.nodes.remove(fault.node_id)
        log.warning("fault %s: node %s at %.3fs", fault.label, fault.node_id, fault.injected_s)


# --- after the run ------------------------------------------------------------------------------


def _about(report: dict[str, Any], fault: Injected) -> bool:
    if fault.action == NODE:
        return report["where"].get("node") == fault.node_id
    return any(a.get("actor") == fault.actor and (a.get("pid") in (None, fault.pid))
               for a in report["where"].get("actors", []))


def match_reports(injected: list[Injected], reports: list[dict[str, Any]]) -> None:
    """Attach to each injected fault the first report about its target detected after it."""
    for fault in injected:
        if fault.injected_at is None:
            continue
        found = [r for r in reports if r["detected_at"] >= fault.injected_at - MATCH_SLACK_S and _about(r, fault)]
        if not found:
            fault.report = None
            continue
        r = min(found, key=lambda r: r["detected_at"])

        def since(t: float | None, r: dict[str, Any] = r) -> float | None:
            return None if t is None else round(t - fault.injected_at, 4)

        fault.report = {"id": r["id"], "kind": r["kind"], "state": r["state"],
                        "detection_s": since(r["detected_at"]), "availability_s": since(r.get("available_at")),
                        "recovery_s": since(r.get("recovered_at"))}


def all_settled(injected: list[Injected]) -> bool:
    """Every fault that must be reported has a recovered report."""
    return all(_problem(f, float("inf")) is None for f in injected)


def _problem(fault: Injected, detect_ceiling_s: float) -> str | None:
    if fault.skipped or fault.injected_at is None:
        return None
    if fault.report is None:
        if fault.action == PAUSE and (fault.pause_s or 0.0) < detect_ceiling_s:
            return None  # shorter than the detector's ceiling: may rightly go unseen
        return f"{fault.label} ({fault.actor or fault.node_id}) at {fault.injected_s:.2f}s has no fault report"
    if fault.report["recovery_s"] is None:
        return (f"{fault.label} ({fault.actor or fault.node_id}): report {fault.report['id']} is "
                f"{fault.report['state']}, not recovered")
    return None


def verdict(injected: list[Injected], detect_ceiling_s: float) -> Verdict:
    """The faults checker: reported and recovered, with durations."""
    problems = [p for p in (_problem(f, detect_ceiling_s) for f in injected) if p]
    hit = [f for f in injected if not f.skipped]
    reported = [f for f in hit if f.report is not None]
    detail = (f"{len(hit)} injected ({len(injected) - len(hit)} skipped), {len(reported)} reported, "
              f"{sum(1 for f in reported if f.report['recovery_s'] is not None)} recovered")
    if problems:
        detail += f"; {len(problems)} problem(s): {problems[0]}"
    return Verdict(not problems, detail, {"problems": problems[:EVIDENCE_MAX]} if problems else {})
