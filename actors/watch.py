"""The heartbeat loop: pings every watched actor and turns silence or death into fault events.

Design note
-----------
A ``Watcher`` is a thread inside the supervisor (and the watchdog).  Every
``heartbeat_interval_ms`` it sends each watched actor a ``ping`` on the
actor's control concurrency group (never queued behind a transaction), keeps
at most one ping outstanding per actor, and feeds each answer's arrival time
to that actor's ``recovery.detector.HeartbeatDetector``.  It reports:

* ``crash``   -- a ping failed because Ray says the actor died;
* ``hang``    -- the detector suspects the actor (no answer for too long);
* ``node-loss`` -- every watched actor on one node (two or more) went quiet
  together when one of them is suspected, or Ray lists the actor's node as dead;
* ``log-write-failure`` -- the actor answers but says its redo log failed.

Before a silence becomes a ``hang`` the owner may ``confirm`` it (the
supervisor asks the process table on the actor's node: a process that is
running, only slow, gets until the timeout ceiling).  An actor is reported
once; it stays out of the watch until the supervisor
stops listing it.  If the loop itself was held up (a paused supervisor
process), every detector forgives the gap instead of blaming the actors.
Only the decisions of the detector are timing logic; this module moves pings.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from actors import runtime
from actors.errors import ActorDied
from recovery.detector import HeartbeatDetector, node_went_quiet
from recovery.faults import CRASH, HANG, LOG_WRITE_FAILURE, NODE_LOSS

log = logging.getLogger("ohmdb.watch")

#: How often the watcher asks Ray which nodes are alive.
NODE_CHECK_INTERVAL_S = 0.5
#: When one actor is suspected and no other actor on its node answered later than this many
#: intervals after the suspect's last answer, the node is lost (not one hung process).
NODE_QUIET_INTERVALS = 1.5


@dataclass
class Target:
    """One watched actor."""

    name: str
    handle: Any
    role: str
    partition: int | None = None
    node_id: str | None = None
    pid: int | None = None


@dataclass
class FaultEvent:
    kind: str
    signal: str
    names: list[str]
    node_id: str | None
    detected_at: float
    fault_at: float | None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WatchSettings:
    mode: str
    interval_s: float
    timeout_min_s: float
    timeout_max_s: float
    phi_threshold: float

    @classmethod
    def from_config(cls, cfg: Any, scale: float = 1.0) -> "WatchSettings":
        return cls(cfg.detector, cfg.heartbeat_interval_ms / 1000, scale * cfg.heartbeat_timeout_ms / 1000,
                   max(scale * cfg.heartbeat_timeout_ms, cfg.heartbeat_timeout_max_ms) / 1000, cfg.phi_threshold)


class Watcher:
    def __init__(self, settings: WatchSettings, targets: Callable[[], dict[str, Target]],
                 on_fault: Callable[[FaultEvent], None], on_nodes: Callable[[set[str]], None] | None = None,
                 clock: Callable[[], float] = time.time, name: str = "ohmdb-watch",
                 confirm: Callable[[Target, float], bool] | None = None) -> None:
        self.settings = settings
        self._targets = targets
        self._on_fault = on_fault
        self._on_nodes = on_nodes
        self._confirm = confirm
        self._clock = clock
        self._name = name
        self.detectors: dict[str, HeartbeatDetector] = {}
        self.last_reply: dict[str, dict[str, Any]] = {}
        self._reported: set[str] = set()
        self._held: dict[str, Callable[[], None]] = {}  # reported, kept in place: pinged until they answer
        self._outstanding: dict[Any, str] = {}
        self._next_ping: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_loop: float | None = None
        self._last_node_check = 0.0
        self.pings_sent = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def rearm(self, name: str, now: float) -> None:
        """Watch ``name`` again from ``now`` (after it was reported and recovered under the same name)."""
        self._reported.discard(name)
        self.detectors.pop(name, None)
        self._next_ping[name] = now

    def hold(self, name: str, on_answer: Callable[[], None]) -> None:
        """Keep pinging a reported actor that was left in place; call ``on_answer`` once it answers again."""
        self._held[name] = on_answer

    def last_heard(self, name: str) -> float | None:
        det = self.detectors.get(name)
        return None if det is None else det.last_s

    def health(self, now: float) -> dict[str, dict[str, Any]]:
        return {name: {"silence_s": round(d.silence_s(now), 3), "phi": round(d.phi(now), 2),
                       "timeout_s": round(d.timeout_s(), 3), "suspected": name in self._reported}
                for name, d in list(self.detectors.items())}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:  # the watch must go on; a bug is logged, not fatal
                log.exception("watch step failed")
                time.sleep(self.settings.interval_s)

    def _step(self) -> None:
        tick = self.settings.interval_s / 2
        started = self._clock()
        if self._last_loop is not None and started - self._last_loop > self.settings.timeout_min_s:
            for det in list(self.detectors.values()):  # we were held up, not them
                det.last_s = started if det.last_s is not None else None
                det.start_s = started
        self._last_loop = started
        targets = self._targets()
        self._forget(targets)
        self._send_pings(targets, started)
        done = runtime.poll(list(self._outstanding), tick)
        now = self._clock()
        self._collect(done, targets, now)
        self._suspect(targets, now)
        if now - self._last_node_check >= NODE_CHECK_INTERVAL_S:
            self._last_node_check = now
            self._check_nodes(targets, now)
        rest = started + tick - self._clock()
        if rest > 0:
            self._stop.wait(rest)

    def _forget(self, targets: dict[str, Target]) -> None:
        # copies first (list() is atomic): the supervisor's threads ``hold`` and ``rearm`` meanwhile
        for name in [n for n in list(self.detectors) if n not in targets]:
            self.detectors.pop(name, None)
            self.last_reply.pop(name, None)
            self._next_ping.pop(name, None)
        self._reported &= set(targets)
        for name in [n for n in list(self._held) if n not in targets]:
            del self._held[name]
        for ref, name in list(self._outstanding.items()):
            if name not in targets:
                del self._outstanding[ref]

    def _send_pings(self, targets: dict[str, Target], now: float) -> None:
        waiting = set(self._outstanding.values())
        s = self.settings
        for name, t in targets.items():
            if name not in self.detectors:
                self.detectors[name] = HeartbeatDetector(s.mode, s.interval_s, s.timeout_min_s, s.timeout_max_s,
                                                         s.phi_threshold, start_s=now)
            if name in waiting or (name in self._reported and name not in self._held) \
                    or now < self._next_ping.get(name, 0.0):
                continue
            self._outstanding[runtime.submit(t.handle, "ping", control=True)] = name
            self._next_ping[name] = now + s.interval_s
            self.pings_sent += 1

    def _collect(self, done: list[Any], targets: dict[str, Target], now: float) -> None:
        for ref in done:
            name = self._outstanding.pop(ref, None)
            if name is None or name not in targets:
                continue
            if name in self._held:
                self._answered_again(name, ref, now)
                continue
            if name in self._reported:
                continue
            answer = runtime.outcome(ref, what=f"ping {name}")
            if isinstance(answer, ActorDied):
                self._emit(CRASH, "ray-actor-died", [targets[name]], now)
            elif isinstance(answer, dict):
                self.detectors[name].heartbeat(now)
                self.last_reply[name] = answer
                if answer.get("log_failed"):
                    self._emit(LOG_WRITE_FAILURE, "heartbeat-log-failed", [targets[name]], now)

    def _answered_again(self, name: str, ref: Any, now: float) -> None:
        if not isinstance(runtime.outcome(ref, what=f"ping {name}"), dict):
            return
        on_answer = self._held.pop(name)
        self.rearm(name, now)
        on_answer()

    def _suspect(self, targets: dict[str, Target], now: float) -> None:
        silent = []
        for name, t in targets.items():
            det = self.detectors.get(name)  # None: ``rearm`` just dropped it; the next step watches it afresh
            if name in self._reported or det is None or not det.suspect(now):
                continue
            if self._confirm is None or self._confirm(t, det.silence_s(now)):
                silent.append(t)
        by_node: dict[str | None, list[Target]] = {}
        for t in silent:
            by_node.setdefault(t.node_id, []).append(t)
        margin_s = NODE_QUIET_INTERVALS * self.settings.interval_s
        for node, group in by_node.items():
            on_node = [t for t in targets.values() if t.node_id == node and t.name not in self._reported]
            whole_node = node is not None and node_went_quiet([self.last_heard(t.name) for t in group],
                                                              [self.last_heard(t.name) for t in on_node], margin_s)
            self._emit(NODE_LOSS if whole_node else HANG, "heartbeat-silence", on_node if whole_node else group, now)

    def _check_nodes(self, targets: dict[str, Target], now: float) -> None:
        alive = {n["node_id"] for n in runtime.alive_nodes()}
        if self._on_nodes is not None:
            self._on_nodes(alive)
        lost: dict[str, list[Target]] = {}
        for t in targets.values():
            if t.node_id is not None and t.node_id not in alive and t.name not in self._reported:
                lost.setdefault(t.node_id, []).append(t)
        for group in lost.values():
            self._emit(NODE_LOSS, "ray-node-dead", group, now)

    def _emit(self, kind: str, signal: str, group: list[Target], now: float) -> None:
        heard = [self.last_heard(t.name) for t in group]
        known = [h for h in heard if h is not None]
        event = FaultEvent(kind, signal, [t.name for t in group], group[0].node_id, now,
                           min(known) if known else None,
                           {"silence_s": {t.name: round(self.detectors[t.name].silence_s(now), 3) for t in group
                                          if t.name in self.detectors}})
        self._reported.update(event.names)
        log.warning("fault kind=%s signal=%s actors=%s", kind, signal, event.names)
        self._on_fault(event)
