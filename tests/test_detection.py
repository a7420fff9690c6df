"""Pure cores of fault handling, without Ray: the detector, the minority rule, reports and their stores,
and the cluster map's fault decisions."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings, strategies as st

from actors.config import ClusterConfig
from actors.errors import InvalidConfig
from recovery.cluster_map import DEAD, FOLLOWER, LEADER, SERVING, STARTING, ClusterMap, ReplicaInfo, trusted_nodes
from recovery.detector import (
    GONE, PHI, PROBE_SLOW, RUNNING, STOPPED, TIMEOUT, HeartbeatDetector, node_went_quiet, silence_confirmed,
)
from recovery.faults import CRASH, HANG, RECOVERED, FaultBook, latest
from recovery.membership import Membership, verdict
from recovery.supervisor_store import DirStore, KVStore, StoreCorrupt


def _fed(mode: str, gaps: list[float], **kw) -> tuple[HeartbeatDetector, float]:
    det = HeartbeatDetector(mode, 0.1, kw.pop("floor", 0.25), kw.pop("ceiling", 2.0), **kw)
    now = 0.0
    det.heartbeat(now)
    for gap in gaps:
        now += gap
        det.heartbeat(now)
    return det, now


# --- detector --------------------------------------------------------------------------------


def test_regular_heartbeats_give_the_floor_and_a_silence_past_it_is_suspected():
    det, now = _fed(PHI, [0.1] * 50)
    assert det.timeout_s() == pytest.approx(0.25)
    assert not det.suspect(now + 0.24)
    assert det.suspect(now + 0.26)
    assert det.phi(now + 0.05) < 1 < 8 < det.phi(now + 0.3)


def test_jittery_heartbeats_raise_the_timeout_so_a_busy_actor_is_not_suspected():
    rng = random.Random(7)
    gaps = [0.1 + rng.choice([0.0, 0.0, 0.3, 0.6]) for _ in range(100)]  # late answers under load
    det, now = _fed(PHI, gaps)
    assert det.timeout_s() > max(gaps)
    assert not det.suspect(now + max(gaps))


def test_the_ceiling_bounds_the_timeout_however_noisy():
    det, now = _fed(PHI, [0.1, 5.0] * 20)
    assert det.timeout_s() == pytest.approx(2.0)
    assert det.suspect(now + 2.01)


def test_timeout_mode_is_a_fixed_silence():
    det, now = _fed(TIMEOUT, [0.1, 1.5] * 10, floor=0.3)
    assert det.timeout_s() == pytest.approx(0.3)
    assert det.suspect(now + 0.31) and not det.suspect(now + 0.29)


def test_an_actor_that_never_answers_is_suspected_from_when_watching_began():
    det = HeartbeatDetector(PHI, 0.1, 0.25, 2.0, start_s=100.0)
    assert not det.suspect(100.2)
    assert det.suspect(100.3)


def test_a_status_reading_the_detector_while_heartbeats_arrive_never_fails():
    """The supervisor's status thread reads timeouts while the watch thread appends heartbeats."""
    import threading
    import time

    det = HeartbeatDetector(PHI, 0.1, 0.25, 2.0)
    stop = threading.Event()

    def beat() -> None:
        now = 0.0
        while not stop.is_set():
            now += 0.1
            det.heartbeat(now)

    writer = threading.Thread(target=beat, daemon=True)
    writer.start()
    reads, deadline = 0, time.monotonic() + 1.0
    try:
        while time.monotonic() < deadline:  # the old generator over the live deque failed ~1 read in 500
            det.timeout_s()
            det.phi(0.0)
            reads += 1
    finally:
        stop.set()
        writer.join()
    assert reads > 1000 and len(det.gaps) == 100


def test_bad_detector_settings_are_refused():
    with pytest.raises(ValueError, match="mode"):
        HeartbeatDetector("gut-feeling", 0.1, 0.25, 2.0)
    with pytest.raises(ValueError, match="timeout_min_s <= timeout_max_s"):
        HeartbeatDetector(PHI, 0.1, 3.0, 2.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.01, 1.0), min_size=1, max_size=150), st.floats(0.0, 5.0))
def test_suspicion_is_monotonic_in_silence_and_clamped(gaps, extra):
    det, now = _fed(PHI, gaps)
    t = det.timeout_s()
    assert 0.25 <= t <= 2.0
    assert det.suspect(now + t + 1e-6)
    assert not det.suspect(now + t - 1e-6)
    assert det.phi(now + extra) <= det.phi(now + extra + 0.1) + 1e-9


# --- config ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings_, setting", [
    ({"heartbeat_timeout_ms": 150}, "heartbeat_timeout_ms"),            # under two intervals
    ({"heartbeat_timeout_max_ms": 200}, "heartbeat_timeout_max_ms"),    # below the floor
    ({"heartbeat_timeout_max_ms": 70_000}, "heartbeat_timeout_max_ms"),  # not below call_timeout_s
    ({"detector": "vibes"}, "detector"),
    ({"phi_threshold": 0}, "phi_threshold"),
    ({"heartbeat_interval_ms": 0}, "heartbeat_interval_ms"),
])
def test_heartbeat_settings_are_validated_together(settings_, setting):
    with pytest.raises(InvalidConfig) as err:
        ClusterConfig(**settings_).validate()
    assert err.value.details["setting"] == setting


def test_default_heartbeat_settings_are_valid():
    cfg = ClusterConfig().validate()
    assert (cfg.heartbeat_interval_ms, cfg.heartbeat_timeout_ms, cfg.detector) == (100, 250, PHI)


# --- the minority rule ------------------------------------------------------------------------------


def test_a_majority_goes_on_a_minority_stops_and_half_needs_the_lowest_id():
    five = {"a", "b", "c", "d", "e"}
    assert verdict(five, {"a", "b", "c"}).viable
    assert not verdict(five, {"d", "e"}).viable
    four = {"a", "b", "c", "d"}
    assert verdict(four, {"a", "d"}).viable           # holds "a", the lowest
    stop = verdict(four, {"b", "c"})
    assert not stop.viable and "lowest node id" in stop.reason
    assert not verdict(four, {"b", "c", "x", "y"}).viable  # newcomers do not count


def test_two_losses_found_apart_within_the_settle_time_count_as_one():
    m = Membership({"a", "b", "c"}, settle_s=5.0)
    m.observe({"a", "b", "c"}, now=0.0)
    assert m.observe({"a", "b"}, now=10.0) is None          # c lost: 2 of 3
    stop = m.observe({"a"}, now=11.0)                        # b lost one second later: 1 of 3, not 1 of 2
    assert stop is not None and not stop.viable and "only 1 of 3" in stop.reason
    m2 = Membership({"a", "b", "c"}, settle_s=5.0)
    m2.observe({"a", "b"}, now=10.0)
    m2.observe({"a", "b"}, now=16.0)                         # held still: the membership is now {a, b}
    assert m2.members == {"a", "b"}


def test_membership_moves_forward_only_while_viable():
    m = Membership({"a", "b", "c"})
    assert m.observe({"a", "b"}) is None and m.members == {"a", "b"}  # 2 of 3: still viable, no change
    assert m.observe({"a", "b"}) is None
    changed = m.observe({"b"})                                          # 1 of 2, without "a": stop
    assert changed is not None and not changed.viable and m.members == {"a", "b"}
    back = m.observe({"a", "b"})
    assert back is not None and back.viable


# --- reports and stores ---------------------------------------------------------------------------------


class _MemStore:
    def __init__(self) -> None:
        self.lines: list[dict] = []

    def save_report(self, report: dict) -> None:
        self.lines.append(json.loads(json.dumps(report)))

    def reports(self) -> list[dict]:
        return latest(self.lines)


def test_a_report_measures_detection_availability_and_redundancy_from_the_fault():
    book = FaultBook(_MemStore(), run="r1")
    rep = book.new(HANG, "heartbeat-silence", detected_at=10.25, fault_at=10.0,
                   where={"node": "n1", "actors": []}, partitions=[3], partitions_unavailable=[3])
    rep.act(10.3, "promote", replica="x")
    rep.mark_available(10.4)
    assert rep.id == "F-r1-0001" and [r.id for r in book.touching(3)] == [rep.id]
    rep.mark_recovered(12.0)
    book.save(rep)
    d = rep.to_dict()
    assert d["durations"] == {"detection_s": 0.25, "availability_s": pytest.approx(0.4), "redundancy_s": 2.0}
    assert d["impact"]["unavailable_s"] == pytest.approx(0.4)
    assert d["state"] == RECOVERED and rep.id not in book.open
    assert [a["action"] for a in d["actions"]] == ["detected", "promote"]


def test_open_reports_survive_a_restart_of_the_book(tmp_path):
    store = DirStore(str(tmp_path))
    book = FaultBook(store, run="r1")
    a = book.new(CRASH, "ray-actor-died", 5.0, 4.9, {"node": "n", "actors": []}, partitions=[0])
    b = book.new(CRASH, "ray-actor-died", 6.0, None, {"node": "n", "actors": []}, partitions=[1])
    b.mark_recovered(7.0)
    book.save(b)
    again = FaultBook(DirStore(str(tmp_path)), run="r2")
    assert list(again.open) == [a.id]
    assert [r["id"] for r in store.reports()] == [a.id, b.id]
    assert store.reports()[1]["state"] == RECOVERED


def test_unknown_fault_kinds_are_refused():
    with pytest.raises(ValueError, match="unknown fault kind"):
        FaultBook(_MemStore(), "r").new("gremlins", "s", 1.0, None, {})


def test_the_directory_store_skips_a_torn_line_and_refuses_a_garbage_map(tmp_path):
    store = DirStore(str(tmp_path))
    store.save_map({"name": "c", "replicas": [], "version": 3})
    assert store.load_map()["version"] == 3
    store.save_report({"id": "F-1", "detected_at": 1.0})
    with open(store.faults_path, "a") as f:
        f.write('{"id": "F-2", "detec')  # a crash mid-append
    assert [r["id"] for r in store.reports()] == ["F-1"]
    with open(store.map_path, "w") as f:
        f.write("not json{")
    with pytest.raises(StoreCorrupt, match="map.json"):
        store.load_map()
    with open(store.map_path, "w") as f:
        f.write('{"some": "thing"}')
    with pytest.raises(StoreCorrupt, match="does not hold a cluster map"):
        store.load_map()


def test_the_key_value_store_round_trips_and_clears():
    kv: dict[str, bytes] = {}
    store = KVStore("cluster:x", kv.get, kv.__setitem__)
    assert store.load_map() is None and store.reports() == []
    store.save_map({"name": "x", "replicas": [{"partition": 0}]})
    store.save_report({"id": "F-1", "detected_at": 2.0, "state": "open"})
    store.save_report({"id": "F-1", "detected_at": 2.0, "state": "recovered"})
    assert store.load_map()["name"] == "x"
    assert [r["state"] for r in store.reports()] == ["recovered"]
    store.clear()
    assert store.load_map() is None and store.reports() == []
    kv["cluster:x:map"] = b"\xff\xfe"
    with pytest.raises(StoreCorrupt, match="cluster:x:map"):
        store.load_map()


# --- the cluster map's fault decisions --------------------------------------------------------------


def _map_of(*reps: tuple[str, str, int, str]) -> ClusterMap:
    """One partition, k = len(reps) - 1; each replica (name, role, epoch, state)."""
    return ClusterMap("c", 1, k=len(reps) - 1, replicas=[
        ReplicaInfo(0, i, name, role, epoch=epoch, state=state) for i, (name, role, epoch, state) in enumerate(reps)])


def test_a_restarted_supervisor_keeps_only_a_configuration_with_one_leader_in_the_newest_epoch():
    m = _map_of(("a", LEADER, 3, SERVING), ("b", FOLLOWER, 3, SERVING), ("c", FOLLOWER, 2, DEAD))
    assert m.consistent(0, {"a": "a", "b": "a"})
    assert not m.consistent(0, {"a": "a", "b": None})          # b was fenced, never configured
    fenced = _map_of(("a", LEADER, 3, SERVING), ("b", FOLLOWER, 4, SERVING))
    assert not fenced.consistent(0, {"a": "a", "b": None})     # died between fence and promote
    two = _map_of(("a", LEADER, 3, SERVING), ("b", LEADER, 4, SERVING))
    assert not two.consistent(0, {"a": "a", "b": "b"})
    assert _map_of(("a", LEADER, 3, DEAD)).consistent(0, {})  # nothing to elect from


def test_last_replicas_and_full_redundancy():
    m = _map_of(("a", LEADER, 1, SERVING), ("b", FOLLOWER, 1, STARTING))
    assert not m.serving_besides(0, {"a"}) and m.serving_besides(0, {"b"})
    assert m.fully_replicated() == set()
    m.replicas[1].state = SERVING
    assert m.fully_replicated() == {0}


def test_placement_avoids_nodes_suspected_lately_unless_none_is_left():
    assert trusted_nodes(["n1", "n2"], {"n1": 95.0}, now=100.0, window_s=30.0) == ["n2"]
    assert trusted_nodes(["n1", "n2"], {"n1": 60.0}, now=100.0, window_s=30.0) == ["n1", "n2"]
    assert trusted_nodes(["n1"], {"n1": 99.0}, now=100.0, window_s=30.0) == ["n1"]


def test_a_whole_node_went_quiet_only_if_none_of_its_actors_answered_since():
    margin = 0.15
    assert node_went_quiet([10.0], [10.0, 10.1], margin)                 # the neighbour stopped too
    assert not node_went_quiet([10.0], [10.0, 10.4], margin)             # the neighbour answers on: one hang
    assert not node_went_quiet([10.0], [10.0], margin)                   # alone on its node: cannot tell
    assert node_went_quiet([10.0], [10.0, None], margin)                 # a neighbour that never answered


@pytest.mark.parametrize("state", [RUNNING, PROBE_SLOW])
def test_a_busy_process_or_a_slow_probe_gets_until_the_ceiling(state):
    assert not silence_confirmed(state, 0.3, 2.0)
    assert not silence_confirmed(state, 1.99, 2.0)
    assert silence_confirmed(state, 2.0, 2.0)


@pytest.mark.parametrize("state", [STOPPED, GONE, None])
def test_a_stopped_or_gone_process_or_one_nobody_can_ask_about_is_a_hang_at_once(state):
    # None: no probe on its node, or its call failed -- on a removed node, the fast way to learn of it
    assert silence_confirmed(state, 0.3, 2.0)


def test_a_watch_step_after_rearm_skips_the_dropped_detector_instead_of_failing():
    """``rearm`` (a held actor answered again) drops the actor's detector in the middle of a watch step;
    the step's suspicion pass must skip it (it is watched afresh next step), not raise KeyError."""
    from actors.watch import Target, Watcher, WatchSettings

    now = [100.0]
    events: list = []
    watcher = Watcher(WatchSettings(TIMEOUT, 0.1, 0.25, 2.0, 8.0), targets=dict, on_fault=events.append,
                      clock=lambda: now[0])
    targets = {name: Target(name, handle=None, role="leader", node_id=f"node-{name}") for name in ("a", "b")}
    for name in targets:
        watcher.detectors[name] = HeartbeatDetector(TIMEOUT, 0.1, 0.25, 2.0, 8.0, start_s=now[0])
    watcher.rearm("a", now[0])
    now[0] += 5.0  # both silent long past any timeout
    watcher._suspect(targets, now[0])
    assert [e.names for e in events] == [["b"]]
