"""Failure detection from heartbeats: phi-accrual (or a plain timeout), pure and clocked from outside.

Design note
-----------
The supervisor pings every actor it watches each ``heartbeat_interval_ms`` and
feeds each answer's arrival time to that actor's ``HeartbeatDetector``.  The
detector never reads a clock: every method takes ``now_s``, so the tests drive
it with made-up times and never sleep.

``phi`` mode (Hayashibara et al., "The phi accrual failure detector", 2004;
Akka's variant): the gaps between answers are modelled as a normal
distribution fitted over the last ``WINDOW_HEARTBEATS`` gaps; phi(t) =
-log10(P(gap > t)).  An actor is suspected once phi passes the threshold
(Cassandra's default is 8).  Because the threshold is fixed, the suspicion
time is simply ``mean + z * std`` with ``z`` from the normal quantile; it is
clamped to ``[timeout_min_s, timeout_max_s]``: the floor keeps a run of very
regular heartbeats from making the detector trigger-happy, the ceiling bounds
how long a real hang can go unseen however noisy the history.  A busy replica
whose answers come late raises its own std and therefore its own timeout
(no flapping under load).  ``timeout`` mode suspects after a fixed silence.

``node_went_quiet`` tells the loss of a whole node from one hung process.

``silence_confirmed`` decides when a suspected silence becomes a hang.  Before
the ceiling it takes the process table of the actor's node: a process that
runs (busy), or whose node's probe is too slow to say (a loaded machine
explains the silence as well), gets until the ceiling; a stopped or gone one
is a hang at once, and so is one nobody can ask about (no probe on its node,
or the probe's call failed: the node is most likely gone, and Ray's own
health check takes far longer to say so).  A false hang costs a failover, a
late one a partition's writes until the ceiling.

Silence is measured from the last answer; before the first answer it is
measured from when watching began (``start``), so an actor that never answers
is still found.
"""

from __future__ import annotations

import math
from collections import deque
from statistics import NormalDist

PHI = "phi"
TIMEOUT = "timeout"
MODES = (PHI, TIMEOUT)

#: Gaps remembered per watched actor.
WINDOW_HEARTBEATS = 100
#: What the process table of a silent actor's node says of its process (``silence_confirmed``; None: nobody
#: could be asked).
RUNNING = "running"
STOPPED = "stopped"
GONE = "gone"
#: The node's probe did not answer in time.
PROBE_SLOW = "probe-slow"

#: Smallest standard deviation assumed for the gaps (keeps a too-regular history from over-trusting).
STD_MIN_S = 0.02


class HeartbeatDetector:
    """Suspicion of one watched actor, from the times its heartbeats were answered."""

    def __init__(self, mode: str, interval_s: float, timeout_min_s: float, timeout_max_s: float,
                 phi_threshold: float = 8.0, start_s: float = 0.0) -> None:
        if mode not in MODES:
            raise ValueError(f"detector mode must be one of {MODES}, got {mode!r}")
        if not 0 < timeout_min_s <= timeout_max_s:
            raise ValueError(f"need 0 < timeout_min_s <= timeout_max_s, got {timeout_min_s}, {timeout_max_s}")
        self.mode = mode
        self.interval_s = interval_s
        self.timeout_min_s = timeout_min_s
        self.timeout_max_s = timeout_max_s
        self.phi_threshold = phi_threshold
        self._z = NormalDist().inv_cdf(1.0 - 10.0 ** -phi_threshold)
        self.gaps: deque[float] = deque(maxlen=WINDOW_HEARTBEATS)
        self.last_s: float | None = None
        self.start_s = start_s

    def heartbeat(self, now_s: float) -> None:
        """An answer arrived at ``now_s``."""
        if self.last_s is not None and now_s > self.last_s:
            self.gaps.append(now_s - self.last_s)
        self.last_s = now_s if self.last_s is None else max(self.last_s, now_s)

    def silence_s(self, now_s: float) -> float:
        return now_s - (self.last_s if self.last_s is not None else self.start_s)

    def _fit(self) -> tuple[float, float]:
        gaps = tuple(self.gaps)  # one copy (atomic): a status call reads while the watch thread appends
        if not gaps:
            return self.interval_s, STD_MIN_S
        mean = sum(gaps) / len(gaps)
        var = sum((g - mean) ** 2 for g in gaps) / len(gaps)
        return mean, max(math.sqrt(var), STD_MIN_S)

    def timeout_s(self) -> float:
        """Silence after which the actor is suspected (already clamped)."""
        if self.mode == TIMEOUT:
            return self.timeout_min_s
        mean, std = self._fit()
        return min(max(mean + self._z * std, self.timeout_min_s), self.timeout_max_s)

    def phi(self, now_s: float) -> float:
        """Suspicion level: -log10 of the chance that an answer still comes this late (capped at 99)."""
        mean, std = self._fit()
        tail = 1.0 - NormalDist(mean, std).cdf(self.silence_s(now_s))
        return 99.0 if tail <= 1e-99 else -math.log10(tail)

    def suspect(self, now_s: float) -> bool:
        return self.silence_s(now_s) > self.timeout_s()


def node_went_quiet(suspects_last_s: list[float | None], neighbours_last_s: list[float | None],
                    margin_s: float) -> bool:
    """Is a silence the loss of a whole node rather than of one process?

    A node dies at one moment: none of the watched actors on it (at least two in
    all) answered later than ``margin_s`` after the suspects' last answer.  A
    single hung process leaves its neighbours answering.  Arguments are the last
    answer times of the suspected actors and of every actor on that node
    (suspects included; None: never answered).
    """
    if len(neighbours_last_s) < 2:
        return False
    since = max(t or 0.0 for t in suspects_last_s) + margin_s
    return all((t or 0.0) <= since for t in neighbours_last_s)


def silence_confirmed(process_state: str | None, silence_s: float, ceiling_s: float) -> bool:
    """Is a suspected actor's silence a hang now?  ``process_state``: ``RUNNING``, ``PROBE_SLOW``, ``STOPPED``,
    ``GONE`` or None (nobody to ask); see the design note."""
    return silence_s >= ceiling_s or process_state not in (RUNNING, PROBE_SLOW)
