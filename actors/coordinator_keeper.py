"""The supervisor's care of the coordinator actor: spawn, watch target, replace, report.

Design note
-----------
The coordinator holds no state that is not also in the partition logs (the
decisions live at the holders, prepared txns at the participants), so
recovering it is simple: kill the old process for good (SIGKILL by pid too,
so a paused one cannot wake and act), spawn a new one under the same name and
let it recover (``Coordinator._recover``).  The fault report is of kind
``coordinator-failure``; its ``cause`` says crash or hang.  It is available
once the new coordinator answers and recovered once it says it is ready.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from actors import runtime
from actors.coordinator import COORDINATOR_CALLS_MAX, Coordinator, coordinator_name
from actors.watch import FaultEvent, Target
from recovery.faults import COORDINATOR_FAILURE, FaultBook

log = logging.getLogger("ohmdb.supervisor")

#: How long a new coordinator has to finish its recovery before the report says so.
COORDINATOR_READY_WAIT_S = 60.0
COORDINATOR_READY_POLL_S = 0.05
#: Attempts at spawning a successor before the report says the supervisor gave up.
SPAWN_ATTEMPTS_MAX = 3


class CoordinatorKeeper:
    def __init__(self, config: Any, schema: Any) -> None:
        self.config = config
        self.schema = schema
        self.name = coordinator_name(config.name)
        self.handle: Any = None
        self.identity: dict[str, Any] | None = None

    def ensure(self) -> None:
        """Adopt a live coordinator of this name (a supervisor restart), else spawn one."""
        handle = runtime.find(self.name)
        if handle is not None:
            try:
                self.identity = runtime.call(handle, "ping", control=True, timeout_s=self.config.control_timeout_s)
                self.handle = handle
                return
            except Exception as exc:
                log.warning("coordinator found but silent (%s): replacing it", exc)
                runtime.kill(handle)
                runtime.wait_gone(self.name, self.config.control_timeout_s)
        self.spawn()

    def spawn(self) -> None:
        self.handle = runtime.spawn(Coordinator, self.name, self.config.to_dict(), self.schema,
                                    node_id=runtime.own_node_id(), max_concurrency=COORDINATOR_CALLS_MAX)
        self.identity = runtime.call(self.handle, "ping", control=True, timeout_s=self.config.spawn_timeout_s)

    def target(self) -> Target | None:
        if self.handle is None or self.identity is None:
            return None
        return Target(self.name, self.handle, "coordinator", None, self.identity["node_id"], self.identity["pid"])

    def replace(self, event: FaultEvent, book: FaultBook) -> Any:
        """The coordinator crashed or hung: kill it for good, spawn and await a new one; the report."""
        old = self.identity or {}
        where = {"node": old.get("node_id"), "actors": [{"actor": self.name, "role": "coordinator",
                                                         "partition": None, "pid": old.get("pid")}]}
        report = book.new(COORDINATOR_FAILURE, event.signal, event.detected_at, event.fault_at, where,
                          partitions=[], cause=event.kind, **event.detail)
        runtime.kill(self.handle)
        runtime.kill_process(old.get("node_id"), old.get("pid"))
        report.act(time.time(), "kill", replica=self.name)
        self.handle = self.identity = None
        if not self._respawn():
            report.mark_unrecovered(time.time(), f"no new coordinator after {SPAWN_ATTEMPTS_MAX} spawn attempts")
            book.save(report)
            return report
        report.act(time.time(), "respawn", replica=self.name, pid=self.identity["pid"])
        report.mark_available(time.time())
        book.save(report)
        status = self._await_ready()
        report.act(time.time(), "recovered-txns", **status)
        if status.get("ready"):
            report.mark_recovered(time.time())
        else:
            report.mark_unrecovered(time.time(), f"the new coordinator did not finish recovery: {status.get('error')}")
        book.save(report)
        return report

    def _respawn(self) -> bool:
        """Spawn the successor once Ray has freed the old one's name; a few attempts."""
        for attempt in range(1, SPAWN_ATTEMPTS_MAX + 1):
            runtime.wait_gone(self.name, self.config.control_timeout_s)
            try:
                self.spawn()
                return True
            except Exception as exc:  # the name still taken, or the spawn timed out: try again
                log.warning("coordinator respawn attempt %d failed: %s", attempt, exc)
                runtime.kill(runtime.find(self.name))
        return False

    def _await_ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + COORDINATOR_READY_WAIT_S
        while time.monotonic() < deadline:
            try:
                status = runtime.call(self.handle, "status", control=True, timeout_s=self.config.control_timeout_s)
            except Exception as exc:
                return {"ready": False, "error": str(exc)[:200]}
            if status["ready"]:
                rec = status["recovery"]
                return {"ready": True, "in_doubt": rec.get("in_doubt"), "recorded": rec.get("recorded"),
                        "seconds": rec.get("seconds"), "error": rec.get("error")}
            time.sleep(COORDINATOR_READY_POLL_S)
        return {"ready": False, "error": f"not ready after {COORDINATOR_READY_WAIT_S} s"}

    def kill(self) -> None:
        runtime.kill(self.handle)
        self.handle = None
