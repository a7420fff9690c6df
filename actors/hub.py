"""Waiting without a thread per transaction: a hub thread running procedures as greenlets.

Design note
-----------
The coordinator runs every multi-partition procedure on one ``Hub`` thread,
each in a greenlet of its own.  A procedure waits for its fragments' answers
with ``Gather.wait``: in a hub greenlet that switches back to the hub, which
runs something else meanwhile; the thread that delivers the last answer (a
lane's) queues the greenlet's resumption on the hub.  Elsewhere ``Gather.wait``
is a plain event wait.  So a transaction costs a greenlet switch where it used
to cost a worker thread's wake-up, and a busy hub takes many resumptions per
wake-up.  Measured here against the pool of worker threads it replaced (two
partitions, k=1, sync; 8 client threads each calling ``call_many("transfer",
...)`` with 50 cross-partition transfers, 12 s, old and new alternately, 4
pairs): 1,989 -> 2,217 transfers/s on average (+11%), coordinator CPU 7.1-7.2
-> 6.6-6.7 s per run.

The hub's rules: code running on it must not block (it would hold up every
procedure), so waits go through ``suspend`` and ``sleep``, and a call that
blocks runs on a thread of its own; every wait has a timer, so no greenlet is
left suspended for ever.  The hub admits at most ``runs_max`` procedures at
once; later ones wait in a queue bounded by the calls that brought them.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from typing import Any, Callable

import greenlet

log = logging.getLogger("ohmdb.hub")

#: Cancelled timers the hub keeps in its heap before it rebuilds it without them.
TIMERS_CANCELLED_MAX = 1024


class Gather:
    """Answers to several steps sent at once (a ``run_many``): one wait for all of them.

    A procedure's greenlet waits by switching back to its hub, which resumes it
    once the last answer is in or at the timeout (whichever comes first); any
    other thread waits on ``done``.
    """

    def __init__(self, n: int) -> None:
        self.answers: list[Any] = [None] * n
        self.left = n
        self.lock = threading.Lock()
        self.done = threading.Event()
        self._waiter: tuple[Hub, Any] | None = None  # (hub, greenlet) switched out until done
        if n == 0:
            self.done.set()

    def slot(self, k: int) -> Callable[[Any], None]:
        def deliver(answer: Any) -> None:
            self.answers[k] = answer
            with self.lock:
                self.left -= 1
                last = self.left == 0
            if last:
                self.done.set()
                self._resume(True)
        return deliver

    def wait(self, timeout_s: float) -> bool:
        """True once every answer is in, False at the timeout."""
        hub = Hub.current()
        if hub is None:
            return self.done.wait(timeout_s)
        with self.lock:
            if self.left == 0:
                return True
            self._waiter = (hub, greenlet.getcurrent())
        timer = hub.call_later(timeout_s, lambda: self._resume(False))
        done = hub.suspend()
        hub.cancel(timer)
        return done

    def _resume(self, done: bool) -> None:
        with self.lock:
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter[0].resume(waiter[1], done)


class Hub:
    """One thread that runs functions (MP procedures), each in a greenlet of its own.

    A function that waits (``Gather.wait``, ``sleep``) switches back to the
    hub; whoever ends the wait, on any thread, queues the greenlet's
    resumption here, and the hub runs whatever is queued in one go.  At most
    ``runs_max`` functions are begun and not yet returned; later ones wait in
    ``_waiting`` (bounded by the coordinator's calls at once times their batch
    size).  Code running in the hub must never block.
    """

    _local = threading.local()

    def __init__(self, name: str, runs_max: int) -> None:
        self.runs_max = runs_max
        self._cond = threading.Condition()
        self._ready: collections.deque = collections.deque()  # callables to run on the hub, in order
        self._timers: list[list[Any]] = []  # heap of [deadline, seq, callable or None when cancelled]
        self._cancelled = 0
        self._seq = itertools.count()
        self._waiting: collections.deque = collections.deque()  # (fn, args) not yet admitted
        self._running = 0
        self._main: Any = None
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    @classmethod
    def current(cls) -> "Hub | None":
        """The hub whose procedure greenlet is running now, or None (another thread, or the hub's loop)."""
        hub = getattr(cls._local, "hub", None)
        return hub if hub is not None and greenlet.getcurrent() is not hub._main else None

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in a greenlet of its own on the hub (from any thread)."""
        self.call_soon(lambda: self._admit(fn, args))

    def call_soon(self, fn: Callable[[], None]) -> None:
        with self._cond:
            self._ready.append(fn)
            if len(self._ready) == 1:
                self._cond.notify()

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> list[Any]:
        """Run ``fn`` on the hub after ``delay_s``; the timer, for ``cancel``."""
        timer = [time.monotonic() + delay_s, next(self._seq), fn]
        with self._cond:
            heapq.heappush(self._timers, timer)
            if self._timers[0] is timer:
                self._cond.notify()
        return timer

    def cancel(self, timer: list[Any]) -> None:
        """Drop a timer; the heap is rebuilt when cancelled ones are most of it (bounded memory)."""
        with self._cond:
            if timer[2] is None:
                return
            timer[2] = None
            self._cancelled += 1
            if self._cancelled > TIMERS_CANCELLED_MAX and 2 * self._cancelled > len(self._timers):
                self._timers = [t for t in self._timers if t[2] is not None]
                heapq.heapify(self._timers)
                self._cancelled = 0

    def resume(self, glet: Any, value: Any) -> None:
        self.call_soon(lambda: glet.switch(value))

    def suspend(self) -> Any:
        """In a procedure greenlet: give the hub back; returns the value ``resume`` passes."""
        return self._main.switch()

    def sleep(self, seconds: float) -> None:
        glet = greenlet.getcurrent()
        self.call_later(seconds, lambda: glet.switch(None))
        self.suspend()

    def _admit(self, fn: Callable[..., Any], args: tuple) -> None:
        if self._running >= self.runs_max:
            self._waiting.append((fn, args))
            return
        self._running += 1
        greenlet.greenlet(self._run_one, parent=self._main).switch(fn, args)

    def _run_one(self, fn: Callable[..., Any], args: tuple) -> None:
        try:
            fn(*args)
        finally:
            self._running -= 1
            if self._waiting:
                self.call_soon(lambda nxt=self._waiting.popleft(): self._admit(*nxt))

    def _loop(self) -> None:
        self._local.hub = self
        self._main = greenlet.getcurrent()
        while True:
            with self._cond:
                while not self._ready and not self._due():
                    timeout = self._timers[0][0] - time.monotonic() if self._timers else None
                    self._cond.wait(timeout)
                batch, self._ready = self._ready, collections.deque()
            for fn in batch:
                try:
                    fn()
                except BaseException:  # a procedure's own errors are caught in it; this is a bug
                    log.exception("hub step failed")

    def _due(self) -> bool:
        """Move the timers that are due to the ready queue (the condition held)."""
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            timer = heapq.heappop(self._timers)
            fn, timer[2] = timer[2], None  # fired: a later cancel finds it done
            if fn is None:
                self._cancelled -= 1
            else:
                self._ready.append(fn)
        return bool(self._ready)
