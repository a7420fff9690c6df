"""Per-client ordering of calls on an async actor.

Design note
-----------
Ray runs a synchronous actor's calls from one caller in submission order, but
not an async actor's.  A partition replica is async (so it can execute batch
n+1 while batch n's fsync runs), so ordering is ours: every client numbers its
calls to a partition 0, 1, 2, ... and ``Sequencer.turn(client, seq)`` waits
until every earlier call of that client has started.  Execution itself has no
``await``, so calls run one at a time in the order this gives.

The table of clients is bounded (least recently used are forgotten); a wait is
bounded by ``wait_s``, after which the call goes ahead and the gap is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

CLIENTS_MAX = 65_536

log = logging.getLogger("ohmdb.sequencer")


class Sequencer:
    def __init__(self, wait_s: float, clients_max: int = CLIENTS_MAX) -> None:
        self.wait_s = wait_s
        self.clients_max = clients_max
        self._next: OrderedDict[str, int] = OrderedDict()
        self._waiting: dict[tuple[str, int], asyncio.Future] = {}
        self.gaps = 0

    async def turn(self, client: str, seq: int, hold: bool = False) -> None:
        """Wait until ``seq`` is ``client``'s next call, then mark it started.

        With ``hold`` the client's next call waits until ``done(client, seq)``
        (a call that may itself wait, yet must finish executing before the next).
        """
        expected = self._next.get(client, 0)
        if seq > expected:
            future = asyncio.get_running_loop().create_future()
            self._waiting[(client, seq)] = future
            try:
                await asyncio.wait_for(future, timeout=self.wait_s)
            except asyncio.TimeoutError:
                self.gaps += 1
                log.warning("client %s: call %d waited %.1f s for call %d; going ahead",
                            client, seq, self.wait_s, self._next.get(client, 0))
            finally:
                self._waiting.pop((client, seq), None)
        if not hold:
            self._started(client, seq)

    def done(self, client: str, seq: int) -> None:
        """A held call finished executing: the client's next call may start."""
        self._started(client, seq)

    def _started(self, client: str, seq: int) -> None:
        self._next[client] = max(self._next.get(client, 0), seq + 1)
        self._next.move_to_end(client)
        while len(self._next) > self.clients_max:
            self._next.popitem(last=False)
        waiter = self._waiting.get((client, seq + 1))
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
