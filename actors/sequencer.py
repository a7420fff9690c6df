"""Per-client ordering of calls on a threaded actor.

Design note
-----------
Ray starts a threaded actor's calls from one caller in submission order, but
with more than one thread they run side by side and may reach the actor's
lock in any order.  So ordering is ours: every client numbers its calls to a
partition 0, 1, 2, ... and ``Sequencer.turn(client, seq)`` waits until every
earlier call of that client has started.  The replica runs a batch holding its
lock, so calls execute one at a time in the order this gives.

The caller holds ``lock`` (the replica's) around ``turn`` and ``done``; a wait
releases it.  The table of clients is bounded (least recently used are
forgotten); a wait is bounded by ``wait_s``, after which the call goes ahead
and the gap is logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any

CLIENTS_MAX = 65_536

log = logging.getLogger("ohmdb.sequencer")


class Sequencer:
    def __init__(self, lock: Any, wait_s: float, clients_max: int = CLIENTS_MAX) -> None:
        self.lock = lock
        self.wait_s = wait_s
        self.clients_max = clients_max
        self._next: OrderedDict[str, int] = OrderedDict()
        self._waiting: dict[tuple[str, int], threading.Condition] = {}
        self.gaps = 0

    def turn(self, client: str, seq: int, hold: bool = False) -> None:
        """Wait until ``seq`` is ``client``'s next call, then mark it started (the caller holds ``lock``).

        With ``hold`` the client's next call waits until ``done(client, seq)``
        (a call that may itself wait, yet must finish executing before the next).
        """
        if seq > self._next.get(client, 0):
            self._wait_for(client, seq)
        if not hold:
            self._started(client, seq)

    def _wait_for(self, client: str, seq: int) -> None:
        ready = threading.Condition(self.lock)
        self._waiting[(client, seq)] = ready
        deadline = time.monotonic() + self.wait_s
        try:
            while seq > self._next.get(client, 0):
                left = deadline - time.monotonic()
                if left <= 0:
                    self.gaps += 1
                    log.warning("client %s: call %d waited %.1f s for call %d; going ahead",
                                client, seq, self.wait_s, self._next.get(client, 0))
                    return
                ready.wait(left)
        finally:
            self._waiting.pop((client, seq), None)

    def done(self, client: str, seq: int) -> None:
        """A held call finished executing: the client's next call may start."""
        self._started(client, seq)

    def _started(self, client: str, seq: int) -> None:
        self._next[client] = max(self._next.get(client, 0), seq + 1)
        self._next.move_to_end(client)
        while len(self._next) > self.clients_max:
            self._next.popitem(last=False)
        waiter = self._waiting.get((client, seq + 1))
        if waiter is not None:
            waiter.notify()
