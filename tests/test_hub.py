"""The hub: procedures as greenlets on one thread, their waits, timers and admission (no Ray)."""

from __future__ import annotations

import threading
import time

from actors import hub as hub_mod
from actors.hub import Gather, Hub

WAIT_S = 10.0  # generous: these tests check behaviour, never speed


def _run_all(hub: Hub, fns: list, timeout_s: float = WAIT_S) -> list:
    """Spawn every fn on the hub; their results (or exceptions) once all have returned."""
    out: list = [None] * len(fns)
    done = threading.Semaphore(0)

    def wrap(k: int, fn) -> None:
        try:
            out[k] = fn()
        except BaseException as exc:  # noqa: B036 - the test wants to see it
            out[k] = exc
        finally:
            done.release()

    for k, fn in enumerate(fns):
        hub.spawn(wrap, k, fn)
    for _ in fns:
        assert done.acquire(timeout=timeout_s), "a hub function never returned"
    return out


def test_waiting_procedures_share_one_thread_and_resume_with_their_answers():
    hub = Hub("t-hub", runs_max=64)
    gathers = [Gather(2) for _ in range(20)]
    threads: set[int] = set()

    def proc(g: Gather, k: int):
        threads.add(threading.get_ident())
        assert g.wait(WAIT_S)
        return (k, g.answers)

    def deliver_later():  # answers come from another thread, last gather first
        time.sleep(0.05)
        for k, g in reversed(list(enumerate(gathers))):
            g.slot(1)(f"b{k}")
            g.slot(0)(f"a{k}")

    threading.Thread(target=deliver_later, daemon=True).start()
    results = _run_all(hub, [lambda g=g, k=k: proc(g, k) for k, g in enumerate(gathers)])
    assert results == [(k, [f"a{k}", f"b{k}"]) for k in range(20)]
    assert len(threads) == 1 and threading.get_ident() not in threads


def test_an_unanswered_wait_ends_at_its_timeout_and_a_late_answer_changes_nothing():
    hub = Hub("t-hub", runs_max=4)
    g = Gather(2)
    g.slot(0)("first")
    started = time.monotonic()
    [done] = _run_all(hub, [lambda: g.wait(0.05)])
    assert done is False and time.monotonic() - started >= 0.05
    assert g.answers == ["first", None]
    g.slot(1)("late")  # nobody waits any more: no second resumption, no error
    assert _run_all(hub, [lambda: "still serving"]) == ["still serving"]


def test_a_wait_already_answered_does_not_switch():
    hub = Hub("t-hub", runs_max=4)
    g = Gather(1)
    g.slot(0)("x")
    assert _run_all(hub, [lambda: (g.wait(0.0), g.answers)]) == [(True, ["x"])]
    assert Gather(0).wait(0.0) is True


def test_a_wait_outside_the_hub_is_a_plain_event_wait():
    g = Gather(1)
    threading.Timer(0.02, lambda: g.slot(0)("y")).start()
    assert g.wait(WAIT_S) is True and g.answers == ["y"]
    assert Gather(1).wait(0.01) is False
    assert Hub.current() is None


def test_admission_runs_at_most_runs_max_at_once_in_order():
    hub = Hub("t-hub", runs_max=2)
    gathers = [Gather(1) for _ in range(5)]
    started: list[int] = []

    def proc(k: int):
        started.append(k)
        assert gathers[k].wait(WAIT_S)
        return k

    def release():
        for k in range(5):
            deadline = time.monotonic() + WAIT_S
            while k not in started and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(0.02)  # room for a third to start, were admission broken
            assert len(started) <= k + 2, f"{started} started while only {k} ended"
            gathers[k].slot(0)(k)

    errors: list = []
    t = threading.Thread(target=lambda: _safe(release, errors), daemon=True)
    t.start()
    assert _run_all(hub, [lambda k=k: proc(k) for k in range(5)]) == [0, 1, 2, 3, 4]
    t.join(WAIT_S)
    assert not errors and started == [0, 1, 2, 3, 4]


def _safe(fn, errors: list) -> None:
    try:
        fn()
    except BaseException as exc:  # noqa: B036
        errors.append(exc)


def test_sleep_lets_others_run():
    hub = Hub("t-hub", runs_max=8)
    order: list[str] = []

    def sleeper():
        hub.sleep(0.05)
        order.append("sleeper")

    def quick():
        order.append("quick")

    _run_all(hub, [sleeper, quick])
    assert order == ["quick", "sleeper"]


def test_an_error_in_a_procedure_reaches_its_caller_and_the_hub_goes_on():
    hub = Hub("t-hub", runs_max=8)

    def boom():
        raise ValueError("bad fragment")

    out = _run_all(hub, [boom, lambda: 7])
    assert isinstance(out[0], ValueError) and out[1] == 7


def test_cancelled_timers_do_not_pile_up(monkeypatch):
    monkeypatch.setattr(hub_mod, "TIMERS_CANCELLED_MAX", 16)
    hub = Hub("t-hub", runs_max=512)
    gathers = [Gather(1) for _ in range(300)]

    def proc(g: Gather):
        return g.wait(3600.0)  # each wait sets an hour-long timer, cancelled when answered

    def deliver():
        time.sleep(0.05)
        for g in gathers:
            g.slot(0)("ok")

    threading.Thread(target=deliver, daemon=True).start()
    assert _run_all(hub, [lambda g=g: proc(g) for g in gathers]) == [True] * 300
    assert len(hub._timers) <= 2 * 16 + 2


def _bare_coordinator(hub: Hub):
    """The parts of a Coordinator that restart back-off uses, without Ray (no __init__)."""
    import collections

    from actors.coordinator import Coordinator

    c = Coordinator.__new__(Coordinator)
    c._lock = threading.RLock()
    c._runs, c._end_waiters, c._early_votes = {}, {}, {}
    c._hub = hub
    c.counts, c.timing = collections.Counter(), collections.Counter()
    return c


class _FakeRun:
    def __init__(self, met=()):
        self.met, self.again, self.restarts, self.ended_s = tuple(met), False, 1, 0.0
        self.delivered: list = []

    def deliver(self, outcome) -> None:
        self.delivered.append(outcome)


def test_a_restart_waits_until_the_txn_whose_lock_it_met_has_ended():
    from actors.coordinator_core import Reply

    hub = Hub("t-hub", runs_max=8)
    c = _bare_coordinator(hub)
    scan = _FakeRun()
    c._runs[7] = scan
    events: list[str] = []

    def restart():
        c._back_off(_FakeRun(met=(7, 99)))  # 99: not ours (already ended): nothing to wait for
        events.append("restarted")

    def end_scan():
        deadline = time.monotonic() + WAIT_S
        while not c._end_waiters.get(7) and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)  # the restart must still be waiting
        events.append("scan ended")
        c._on_reply(Reply(7, True, "total"))

    threading.Thread(target=end_scan, daemon=True).start()
    _run_all(hub, [restart])
    assert events == ["scan ended", "restarted"]
    assert scan.delivered == ["total"] and c.counts["restart_waits"] == 1 and not c._end_waiters


def test_a_restart_that_met_no_txn_of_ours_only_pauses():
    hub = Hub("t-hub", runs_max=8)
    c = _bare_coordinator(hub)
    started = time.monotonic()
    _run_all(hub, [lambda: c._back_off(_FakeRun(met=(5,)))])
    assert time.monotonic() - started < WAIT_S and c.counts["restart_waits"] == 0 and not c._end_waiters


def test_a_lock_wait_runs_off_the_hub_and_a_failure_comes_back_at_once():
    import types

    from actors.errors import OutcomeUnknown

    hub = Hub("t-hub", runs_max=8)
    c = _bare_coordinator(hub)
    c.config = types.SimpleNamespace(call_timeout_s=WAIT_S)
    seen_on: list[int] = []

    def failing_call(p, method, step):
        seen_on.append(threading.get_ident())
        raise RuntimeError("ray went away")

    c._call_leader = failing_call
    ticks: list[int] = []

    def ticker():  # the hub keeps serving while the lock wait runs elsewhere
        for _ in range(3):
            hub.sleep(0.01)
            ticks.append(threading.get_ident())

    started = time.monotonic()
    answer, _ = _run_all(hub, [lambda: c._fragment_wait(1, ("fragment", 42)), ticker])
    assert isinstance(answer, OutcomeUnknown) and "ray went away" in answer.message
    assert time.monotonic() - started < WAIT_S and len(ticks) == 3
    assert seen_on and seen_on[0] not in ticks and c.counts["lock_waits"] == 1  # not on the hub thread


def test_a_routing_naming_no_leader_is_asked_again_but_not_on_every_call():
    """A routing read during an election may name no leader; the partition serves again once promoted."""
    from actors import coordinator

    c = _bare_coordinator(Hub("t-hub", runs_max=8))
    c._leaders, c._refreshed_at = [None, "leader-1"], 0.0
    asked: list[int] = []

    def refresh(leader_failed=None):
        asked.append(1)
        c._leaders, c._refreshed_at = [None if len(asked) == 1 else "leader-0b", "leader-1"], time.monotonic()

    c._refresh_routing = refresh
    assert c._leader(0) is None and len(asked) == 1  # still electing
    assert c._leader(0) is None and len(asked) == 1  # asked again only after UNAVAILABLE_RECHECK_S
    assert c._leader(1) == "leader-1" and len(asked) == 1
    time.sleep(coordinator.UNAVAILABLE_RECHECK_S)
    assert c._leader(0) == "leader-0b" and len(asked) == 2
