"""``actors.runtime``'s call contract on a real Ray instance: packed calls behave as plain ones.

Every ohmdb actor is reached through ``runtime.submit`` / ``call``, which call
a method's packed form (arguments and result as one blob each).  These tests
pin what callers rely on: arguments of every shape arrive intact, a method's
own calls of its public methods run unpacked, decorated methods keep their
concurrency group, async actors work, typed errors come back typed, and
``on_done`` hands over the unpacked value.
"""

from __future__ import annotations

import functools
import os
import queue
import signal
import sys
import threading
import time
import uuid

import pytest

from actors import runtime
from actors.errors import ActorDied, NotLeader
from tests.harness import wait_until

runtime.register_by_value([sys.modules[__name__]])  # the actors below are defined here, not in the package


def _logged(method):
    @functools.wraps(method)
    def run(self, *args):
        self.log.append(method.__name__)
        return method(self, *args)
    return run


class Echo:
    CONCURRENCY_GROUPS = {"slow": 1}

    def __init__(self) -> None:
        self.log: list[str] = []
        self.gate = threading.Event()

    def echo(self, *args):
        return args

    def twice(self, x: int) -> int:
        return self.once(x) + self.once(x)  # the class's own call of a public method: not packed

    def once(self, x: int) -> int:
        return x

    @runtime.in_group("slow")
    @_logged
    def blocked(self) -> str:
        self.gate.wait(30)
        return "released"

    def release(self) -> list[str]:
        self.gate.set()
        return list(self.log)

    def refuse(self):
        raise NotLeader("not the leader here", partition=3)

    def handle_of(self, handle):
        return runtime.call(handle, "once", 7)


class AsyncEcho:
    async def echo(self, *args):
        return args


@pytest.fixture
def echo(ray_address):
    handle = runtime.spawn(Echo, f"echo-{uuid.uuid4().hex[:8]}", max_concurrency=4)
    yield handle
    runtime.kill(handle)


def test_arguments_and_results_of_every_shape_round_trip(echo):
    args = (1, "two", b"\x00three", [("vote", (5, 6, 7))] * 3, {"k": (1, 2)}, None, NotLeader("x", partition=1))
    back = runtime.call(echo, "echo", *args, timeout_s=30)
    assert back[:6] == args[:6]
    assert isinstance(back[6], NotLeader) and back[6].details["partition"] == 1
    assert runtime.call(echo, "echo", timeout_s=30) == ()
    assert runtime.call(echo, "twice", 21, timeout_s=30) == 42
    assert runtime.call(echo, "handle_of", echo, timeout_s=30) == 7  # an actor handle as an argument


def test_a_decorated_method_keeps_its_concurrency_group(echo):
    blocked = runtime.submit(echo, "blocked")
    # The default group still answers while "slow" holds its only thread; so does control.
    assert runtime.call(echo, "once", 1, timeout_s=30) == 1
    assert runtime.call(echo, "once", 2, timeout_s=30, control=True) == 2
    assert runtime.call(echo, "release", timeout_s=30) == ["blocked"]
    assert runtime.get(blocked, timeout_s=30) == "released"


def test_typed_errors_and_callbacks_see_what_the_method_raised_or_returned(echo):
    with pytest.raises(NotLeader, match="not the leader here"):
        runtime.call(echo, "refuse", timeout_s=30)
    outcomes: queue.Queue = queue.Queue()
    runtime.on_done(runtime.submit(echo, "echo", "a", 1), outcomes.put)
    runtime.on_done(runtime.submit(echo, "refuse"), outcomes.put)
    got = [outcomes.get(timeout=30), outcomes.get(timeout=30)]
    assert ("a", 1) in got
    assert any(isinstance(o, NotLeader) for o in got)
    runtime.kill(echo)

    def refused_as_dead() -> bool:  # ray.kill lands asynchronously: a call sent just after may still be served
        try:
            runtime.call(echo, "once", 1, timeout_s=30)
        except ActorDied:
            return True
        return False

    wait_until(refused_as_dead, timeout_s=30, what="calls to the killed actor to fail with ActorDied")


def test_an_async_actor_takes_packed_calls(ray_address):
    handle = runtime.spawn(AsyncEcho, f"aecho-{uuid.uuid4().hex[:8]}")
    try:
        assert runtime.call(handle, "echo", [(1, 2)], "x", timeout_s=30) == ([(1, 2)], "x")
    finally:
        runtime.kill(handle)


class Child:
    def ping(self) -> int:
        return os.getpid()


class Parent:
    """On every start (Ray restarts it) replaces its named child and calls it, as the supervisor does."""

    def __init__(self, child_name: str) -> None:
        old = runtime.find(child_name)
        if old is not None:
            runtime.kill(old)
            runtime.wait_gone(child_name, 30)
        self.child = runtime.spawn(Child, child_name)
        self.child_pid = runtime.call(self.child, "ping", control=True, timeout_s=30)

    def info(self) -> tuple[int, int]:
        return os.getpid(), self.child_pid


def test_an_actor_restarted_by_ray_spawns_and_calls_actors_again(ray_address):
    """Regression: after a restart, Ray had put the loaded methods' own signatures on them, and a packed
    form that copied those attributes refused its one argument; the supervisor could not come back."""
    tag = uuid.uuid4().hex[:8]
    parent = runtime.spawn(Parent, f"parent-{tag}", f"child-{tag}", max_restarts=-1)
    try:
        pid, child_pid = runtime.call(parent, "info", timeout_s=60)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            try:
                new_pid, new_child_pid = runtime.call(parent, "info", timeout_s=30)
                break
            except ActorDied:
                assert time.monotonic() < deadline, "the parent did not come back within 60 s"
                time.sleep(0.5)
        assert new_pid != pid and new_child_pid != child_pid
    finally:
        runtime.kill(parent)
        runtime.kill(runtime.find(f"child-{tag}"))
