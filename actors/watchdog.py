"""The watchdog actor: watches the supervisor, which watches it back.

Design note
-----------
Ray restarts a supervisor whose process died, but a supervisor that hangs
(SIGSTOP, a deadlock) looks alive to Ray forever.  The watchdog is a tiny
detached actor on the supervisor's node running the same ``Watcher`` with one
target, the supervisor, and a timeout ``WATCHDOG_TIMEOUT_SCALE`` times the
replicas' (a supervisor restart is disruptive; the data plane goes on without
it meanwhile).  On a fault it leaves a note in Ray's key-value store (what it
saw and when, for the restarted supervisor's fault report), SIGKILLs a hung
supervisor's process so Ray restarts it, and waits until the supervisor
answers again before watching anew.  The supervisor watches the watchdog and
respawns it when it fails.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from actors import runtime
from actors.config import ClusterConfig
from actors.errors import OhmError
from actors.watch import FaultEvent, Target, WatchSettings, Watcher
from recovery.cluster_map import supervisor_name
from recovery.faults import CRASH

log = logging.getLogger("ohmdb.watchdog")

#: The supervisor's silence timeout is this many times a replica's.
WATCHDOG_TIMEOUT_SCALE = 4.0
WATCHDOG_NOTE_KEY = "cluster:{cluster}:watchdog-note"
#: Pause between pings while waiting for a restarted supervisor.
RESTART_POLL_S = 0.2


def watchdog_name(cluster: str) -> str:
    return f"{cluster}:watchdog"


class Watchdog:
    def __init__(self, config: dict[str, Any]) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        self.config = ClusterConfig(**config)
        self.identity = runtime.own_identity()
        self.name = supervisor_name(self.config.name)
        self.supervisor = runtime.find(self.name)
        self.supervisor_identity: dict[str, Any] = {}
        self.restarts_caused = 0
        self.watcher = Watcher(WatchSettings.from_config(self.config, WATCHDOG_TIMEOUT_SCALE), self._targets,
                               self._on_fault, name="ohmdb-watchdog")
        # Watch only once the supervisor has answered: it may still be starting (or resuming) right now.
        threading.Thread(target=self._begin, name="ohmdb-watchdog-begin", daemon=True).start()

    def _begin(self) -> None:
        self._await_supervisor()
        self.watcher.start()

    def _targets(self) -> dict[str, Target]:
        if self.supervisor is None:
            return {}
        ident = self.supervisor_identity
        return {self.name: Target(self.name, self.supervisor, "supervisor", None, ident.get("node_id"), ident.get("pid"))}

    def ping(self) -> dict[str, Any]:
        return dict(self.identity)

    def process_state(self, pid: int) -> str | None:
        """What this node's process table says of ``pid``: running, stopped or gone."""
        return runtime.process_state(self.identity["node_id"], pid)

    def _on_fault(self, event: FaultEvent) -> None:
        """Note what we saw, make sure a hung supervisor dies (Ray restarts it), wait for it, watch again."""
        pid, node = self.supervisor_identity.get("pid"), self.supervisor_identity.get("node_id")
        process = runtime.process_state(node, pid)
        kind = CRASH if process == "gone" else event.kind  # silent because Ray is restarting a dead process
        note = {"kind": kind, "signal": f"watchdog-{event.signal}", "detected_at": event.detected_at,
                "fault_at": event.fault_at, "pid": pid, "process": process}
        runtime.kv_put(WATCHDOG_NOTE_KEY.format(cluster=self.config.name), json.dumps(note).encode())
        if kind != CRASH:
            log.error("supervisor silent for %s: killing pid %s so Ray restarts it", event.detail, note["pid"])
            runtime.kill_process(self.supervisor_identity.get("node_id"), note["pid"])
        self.restarts_caused += 1
        self._await_supervisor()
        self.watcher.rearm(self.name, time.time())

    def _await_supervisor(self) -> None:
        deadline = time.monotonic() + self.config.spawn_timeout_s
        while time.monotonic() < deadline:
            try:
                answer = runtime.call(self.supervisor, "ping", control=True, timeout_s=self.config.spawn_timeout_s)
            except OhmError:
                time.sleep(RESTART_POLL_S)
                continue
            self.supervisor_identity = answer
            return
        log.error("the supervisor did not come back within %s s", self.config.spawn_timeout_s)

    def last_heard(self) -> float | None:
        """When the supervisor last answered (for a restarted supervisor's report)."""
        return self.watcher.last_heard(self.name)


def probe_name(cluster: str, node_id: str) -> str:
    return f"{cluster}:probe:{node_id[:16]}"


class NodeProbe:
    """A tiny actor on each node, watched by the supervisor: a node is reachable while its probe answers.

    Nodes that hold no replica are watched too, so the minority rule counts every node by our own
    heartbeats instead of waiting for Ray's node health check.
    """

    def __init__(self) -> None:
        self.identity = runtime.own_identity()

    def ping(self) -> dict[str, Any]:
        return dict(self.identity)

    def process_state(self, pid: int) -> str | None:
        """What this node's process table says of ``pid``: running, stopped or gone."""
        return runtime.process_state(self.identity["node_id"], pid)
