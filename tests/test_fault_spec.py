"""workloads.fault_spec: parsing the fault schedule spec and expanding it into a plan (pure Python)."""

from __future__ import annotations

import random

import pytest

from workloads.fault_spec import (
    EVERY_S_MIN,
    PAUSE_S_MAX,
    FaultItem,
    FaultSpecError,
    PlannedFault,
    parse_faults,
    schedule,
)


def item(action, target=None, partition=None, at_s=None, every_s=None, random_s=None, duration_s=None, *, text):
    return FaultItem(action, target, partition, at_s, every_s, random_s, duration_s, text)


# --------------------------------------------------------------------------- parsing: good specs


def test_documented_examples_parse():
    assert parse_faults("kill:leader@every=5s,pause:follower@10s:2s,node@20s") == [
        item("kill", "leader", every_s=5.0, text="kill:leader@every=5s"),
        item("pause", "follower", at_s=10.0, duration_s=2.0, text="pause:follower@10s:2s"),
        item("node", at_s=20.0, text="node@20s"),
    ]
    assert parse_faults("kill:supervisor@3s") == [item("kill", "supervisor", at_s=3.0, text="kill:supervisor@3s")]
    assert parse_faults("pause:leader[1]@random=1s..3s:500ms") == [
        item("pause", "leader", 1, random_s=(1.0, 3.0), duration_s=0.5, text="pause:leader[1]@random=1s..3s:500ms"),
    ]


@pytest.mark.parametrize("spec, expected", [
    ("kill:coordinator@500ms", item("kill", "coordinator", at_s=0.5, text="kill:coordinator@500ms")),
    ("kill:follower[p2]@1.5s", item("kill", "follower", 2, at_s=1.5, text="kill:follower[p2]@1.5s")),
    ("kill:leader[0]@.5s", item("kill", "leader", 0, at_s=0.5, text="kill:leader[0]@.5s")),
    ("node@every=500ms", item("node", every_s=0.5, text="node@every=500ms")),
    ("node@random=2s..2s", item("node", random_s=(2.0, 2.0), text="node@random=2s..2s")),
    ("pause:supervisor@1s:60s", item("pause", "supervisor", at_s=1.0, duration_s=60.0,
                                     text="pause:supervisor@1s:60s")),
])
def test_single_items_parse(spec, expected):
    assert parse_faults(spec) == [expected]


@pytest.mark.parametrize("spec", [None, "", "   "])
def test_no_spec_means_no_faults(spec):
    assert parse_faults(spec) == []


def test_whitespace_around_items_is_ignored():
    assert [i.text for i in parse_faults(" kill:leader@1s , node@2s ")] == ["kill:leader@1s", "node@2s"]


# --------------------------------------------------------------------------- parsing: bad specs


@pytest.mark.parametrize("spec, fragment", [
    # unknown names
    ("explode:leader@1s", "fault 1 'explode:leader@1s': unknown action 'explode'"),
    ("kill:janitor@1s", "unknown target 'janitor'"),
    ("KILL:leader@1s", "unknown action 'KILL'"),
    # missing / extra parts
    ("kill@1s", "kill needs a target"),
    ("kill:@1s", "kill needs a target"),
    ("kill:leader", "expected exactly one '@'"),
    ("kill:leader@1s@2s", "expected exactly one '@'"),
    ("kill:leader@", "bad time ''"),
    ("node:leader@1s", "node takes no target"),
    ("kill:leader@1s:2s", "only pause takes a duration"),
    ("node@1s:2s", "only pause takes a duration"),
    ("kill:leader@every=5s,pause:follower@10s",
     "fault 2 'pause:follower@10s': pause needs a duration, e.g. pause:follower@10s:2s"),
    ("pause:leader@1s:2s:3s", "too many ':' parts"),
    ("kill:leader[x]@1s", "bad target 'leader[x]'"),
    ("kill:supervisor[1]@1s", "partition selector only applies to leader or follower"),
    # bad numbers
    ("kill:leader@10", "bad time '10'"),
    ("kill:leader@10m", "bad time '10m'"),
    ("kill:leader@ten s", "bad time 'ten s'"),
    ("kill:leader@1e3s", "bad time '1e3s'"),
    ("kill:leader@every=s", "bad every 's'"),
    ("kill:leader@random=1s-3s", "bad random range '1s-3s'"),
    ("kill:leader@random=1s..", "bad random high ''"),
    # non-positive times and durations
    ("kill:leader@0s", "time '0s' must be positive"),
    ("kill:leader@-1s", "time '-1s' must be positive"),
    ("pause:leader@1s:0ms", "duration '0ms' must be positive"),
    ("node@random=0s..1s", "random low '0s' must be positive"),
    # limits
    (f"kill:leader@every={EVERY_S_MIN / 2:g}s", "below the minimum period"),
    ("kill:leader@every=100ms", "below the minimum period"),
    ("node@random=100ms..1s", "below the minimum gap"),
    ("node@random=8s..2s", "has low 8s above high 2s"),
    (f"pause:leader@1s:{PAUSE_S_MAX + 1:g}s", "longer than the maximum"),
    # empty items
    ("kill:leader@1s,,node@2s", "fault 2 '': empty item"),
    ("kill:leader@1s,", "fault 2 '': empty item"),
    (",", "fault 1 '': empty item"),
])
def test_bad_specs_raise_naming_the_bad_part(spec, fragment):
    with pytest.raises(FaultSpecError) as exc:
        parse_faults(spec)
    assert fragment in str(exc.value)
    assert isinstance(exc.value, ValueError)


# --------------------------------------------------------------------------- schedule


def test_fixed_times_within_the_run():
    items = parse_faults("node@20s,pause:follower@10s:2s,kill:leader[3]@30s")
    assert schedule(items, 25.0, random.Random(0)) == [
        PlannedFault(10.0, "pause", "follower", None, 2.0, "pause:follower@10s:2s"),
        PlannedFault(20.0, "node", None, None, None, "node@20s"),
    ]


def test_every_repeats_until_the_end():
    plan = schedule(parse_faults("kill:leader[1]@every=5s"), 20.0, random.Random(0))
    assert [p.at_s for p in plan] == [5.0, 10.0, 15.0]  # 20s is the end of the run, not in it
    assert all(p.partition == 1 and p.action == "kill" for p in plan)


def test_every_has_no_float_drift():
    plan = schedule(parse_faults("node@every=0.7s"), 70.0, random.Random(0))
    assert len(plan) == 99
    assert plan[-1].at_s == pytest.approx(69.3)


def test_random_is_seeded_bounded_and_sorted():
    items = parse_faults("pause:leader@random=1s..3s:500ms,kill:follower@every=4s,node@7s")
    plan = schedule(items, 60.0, random.Random(42))
    assert plan == schedule(items, 60.0, random.Random(42))
    assert plan != schedule(items, 60.0, random.Random(43))
    assert [p.at_s for p in plan] == sorted(p.at_s for p in plan)
    assert all(0 < p.at_s < 60.0 for p in plan)
    pauses = [p.at_s for p in plan if p.action == "pause"]
    gaps = [b - a for a, b in zip([0.0] + pauses, pauses)]
    assert all(1.0 <= g <= 3.0 for g in gaps)
    assert 60.0 / 3.0 - 1 <= len(pauses) <= 60.0 / 1.0
    assert all(p.partition is None and p.duration_s == 0.5 for p in plan if p.action == "pause")


def test_schedule_uses_only_the_given_rng():
    items = parse_faults("node@random=1s..2s")
    random.seed(1)
    first = schedule(items, 30.0, random.Random(7))
    random.seed(2)
    assert schedule(items, 30.0, random.Random(7)) == first


def test_schedule_of_nothing_and_bad_duration():
    assert schedule([], 10.0, random.Random(0)) == []
    with pytest.raises(ValueError, match="run duration must be positive"):
        schedule(parse_faults("node@1s"), 0.0, random.Random(0))
