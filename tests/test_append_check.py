"""workloads.append_check: the Elle-style list-append checker (pure Python, no Ray)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workloads.append_check import HistoryError, Op, Report, check


def A(key, value):
    return ("append", key, value)


def R(key, values):
    return ("r", key, values)


def ok(op_id, *mops):
    return Op(op_id, op_id, "ok", list(mops))


def fail(op_id, *mops):
    return Op(op_id, op_id, "fail", list(mops))


def info(op_id, *mops):
    return Op(op_id, op_id, "info", list(mops))


def only(report: Report, name: str) -> list[dict]:
    """The findings of ``name``, asserting no other anomaly class was reported."""
    assert not report.valid
    assert set(report.anomalies) == {name}, report.anomalies
    return report.anomalies[name]


# --------------------------------------------------------------------------- each anomaly


def test_g0_write_cycle():
    history = [ok(1, A("x", 1), A("y", 1)), ok(2, A("x", 2), A("y", 2)),
               ok(3, R("x", [1, 2])), ok(4, R("y", [2, 1]))]
    [finding] = only(check(history), "G0")
    assert finding["cycle"] == [1, 2, 1]
    assert finding["edges"] == ["ww", "ww"]
    assert "T2 appended 2 to key 'x' right after T1's 1" in finding["explanation"]


def test_g0_three_transactions():
    history = [ok(1, A("x", 1), A("z", 1)), ok(2, A("x", 2), A("y", 2)), ok(3, A("y", 3), A("z", 3)),
               ok(4, R("x", [1, 2]), R("y", [2, 3]), R("z", [3, 1]))]
    [finding] = only(check(history), "G0")
    assert finding["cycle"] == [1, 2, 3, 1]
    assert finding["edges"] == ["ww", "ww", "ww"]


def test_g0_through_an_observed_info_op():
    history = [info(1, A("x", 1), A("y", 1)), ok(2, A("x", 2), A("y", 2)),
               ok(3, R("x", [1, 2]), R("y", [2, 1]))]
    report = check(history)
    assert only(report, "G0")[0]["cycle"] == [1, 2, 1]
    assert report.counts["nodes"] == 3


def test_g1a_aborted_read():
    history = [fail(1, A("x", 1)), ok(2, R("x", [1]))]
    [finding] = only(check(history), "G1a")
    assert finding["ops"] == [1, 2]
    assert finding["key"] == "x" and finding["value"] == 1


def test_g1b_intermediate_read():
    history = [ok(1, A("x", 1), A("x", 2)), ok(2, R("x", [1])), ok(3, R("x", [1, 2]))]
    anomalies = check(history).anomalies
    [finding] = anomalies["G1b"]
    assert finding["ops"] == [1, 2]
    assert finding["value"] == 1
    # Seeing half of T1 is also a dependency cycle: T1 -wr-> T2 (read 1) -rw-> T1 (missed 2).
    assert set(anomalies) == {"G1b", "G2"}
    assert [(f["cycle"], f["edges"]) for f in anomalies["G2"]] == [([1, 2, 1], ["wr", "rw"])]


def test_reading_own_intermediate_append_is_fine():
    history = [ok(1, A("x", 1), R("x", [1]), A("x", 2)), ok(2, R("x", [1, 2]))]
    assert check(history).valid


def test_g1c_circular_information_flow():
    history = [ok(1, A("x", 1), R("y", [1])), ok(2, A("y", 1), R("x", [1]))]
    [finding] = only(check(history), "G1c")
    assert finding["cycle"] == [1, 2, 1]
    assert finding["edges"] == ["wr", "wr"]


def test_g1c_mixed_ww_and_wr():
    # T1 -ww-> T2 on x; T2 -wr-> T1 on y (T1 read T2's append to y).
    history = [ok(1, A("x", 1), R("y", [5])), ok(2, A("x", 2), A("y", 5)), ok(3, R("x", [1, 2]))]
    findings = check(history).anomalies
    [finding] = findings["G1c"]
    assert finding["cycle"] == [1, 2, 1]
    assert sorted(finding["edges"]) == ["wr", "ww"]
    assert "G0" not in findings


def test_g2_g_single_read_skew():
    # T2 sees T1's append to y but not its append to x.
    history = [ok(1, A("x", 1), A("y", 1)), ok(2, R("x", []), R("y", [1])), ok(3, R("x", [1]))]
    [finding] = only(check(history), "G2")
    assert finding["cycle"] == [1, 2, 1]
    assert finding["edges"] == ["wr", "rw"]
    assert finding["note"].startswith("G-single")


def test_g2_g_single_three_transactions():
    # T1 -wr-> T2 (x) -wr-> T3 (y) -rw-> T1 (T3 read z empty, T1 appended z's first value).
    history = [ok(1, A("x", 1), A("z", 1)), ok(2, R("x", [1]), A("y", 1)), ok(3, R("y", [1]), R("z", [])),
               ok(4, R("z", [1]))]
    report = check(history)
    [finding] = only(report, "G2")
    assert finding["cycle"] == [1, 2, 3, 1]
    assert finding["edges"] == ["wr", "wr", "rw"]
    assert finding["note"].startswith("G-single")
    assert "T3 read key 'z' empty and T1 appended the next value 1" in finding["explanation"]
    assert report.summary() == "invalid: G2 x1"


def test_g2_write_skew():
    history = [ok(1, R("x", []), R("y", []), A("x", 1)), ok(2, R("x", []), R("y", []), A("y", 1)),
               ok(3, R("x", [1]), R("y", [1]))]
    [finding] = only(check(history), "G2")
    assert finding["cycle"] == [1, 2, 1]
    assert finding["edges"] == ["rw", "rw"]
    assert finding["note"].startswith("G2-item")


def test_incompatible_order():
    history = [ok(1, A("x", 1)), ok(2, A("x", 2)), ok(3, R("x", [1, 2])), ok(4, R("x", [2, 1]))]
    [finding] = only(check(history), "incompatible-order")
    assert sorted(finding["ops"]) == [3, 4]
    assert finding["key"] == "x"


def test_incompatible_order_gives_no_ww_or_rw_edges():
    history = [ok(1, A("x", 1)), ok(2, A("x", 2)), ok(3, R("x", [1])), ok(4, R("x", [2]))]
    report = check(history)
    assert set(report.anomalies) == {"incompatible-order"}
    assert report.counts["ww"] == 0 and report.counts["rw"] == 0 and report.counts["wr"] == 2


def test_garbage_and_duplicate_elements():
    history = [ok(1, A("x", 1)), ok(2, R("x", [1, 1])), ok(3, R("y", [7]))]
    report = check(history)
    assert report.anomalies["duplicate-elements"][0]["ops"] == [2]
    assert report.anomalies["garbage-read"][0]["ops"] == [3]


def test_one_cycle_per_component():
    g0 = [ok(1, A("x", 1), A("y", 1)), ok(2, A("x", 2), A("y", 2)), ok(3, R("x", [1, 2]), R("y", [2, 1]))]
    g0_again = [ok(11, A("a", 1), A("b", 1)), ok(12, A("a", 2), A("b", 2)), ok(13, R("a", [1, 2]), R("b", [2, 1]))]
    cycles = [f["cycle"] for f in only(check(g0 + g0_again), "G0")]
    assert cycles == [[1, 2, 1], [11, 12, 11]]


# --------------------------------------------------------------------------- valid histories


def test_empty_history_is_valid():
    report = check([])
    assert report.valid and report.anomalies == {} and report.summary() == "valid"


def test_serial_history_is_valid_and_counted():
    history = [ok(1, A("x", 1), R("x", [1])), ok(2, R("x", [1]), A("x", 2), A("y", 1)),
               ok(3, R("x", [1, 2]), R("y", [1]))]
    report = check(history)
    assert report.valid, report.anomalies
    assert report.counts == {"ops": 3, "ok": 3, "fail": 0, "info": 0, "keys": 2, "nodes": 3,
                             "ww": 1, "wr": 2, "rw": 0}


def test_unobserved_fail_and_info_ops_are_ignored():
    history = [
        ok(1, A("x", 1)),
        fail(2, A("x", 99), R("x", None)),         # aborted, never seen
        info(3, A("x", 3)),                        # maybe committed, never seen
        info(4, A("x", 4), R("y", None)),          # committed: its append was observed
        ok(5, R("x", [1, 4]), A("x", 5), R("x", [1, 4, 5])),  # sees its own append
        ok(6, R("x", [1, 4, 5]), R("y", [])),
    ]
    report = check(history)
    assert report.valid, report.anomalies
    assert report.counts["nodes"] == 4  # 1, 4, 5, 6
    assert report.counts["fail"] == 1 and report.counts["info"] == 2


def test_concurrent_reads_of_older_versions_are_valid():
    # T3 and T4 run concurrently with T2; T3 serializes before T2, T4 after it.
    history = [ok(1, A("x", 1)), ok(3, R("x", [1]), R("y", [])), ok(2, A("x", 2), A("y", 2)),
               ok(4, R("x", [1, 2]), R("y", [2]))]
    assert check(history).valid


# --------------------------------------------------------------------------- malformed histories


@pytest.mark.parametrize("history, message", [
    ([ok(1, A("x", 1)), ok(2, A("x", 1))], "appended to key 'x' by op 1 and again by op 2"),
    ([ok(1, A("x", 1)), ok(1, A("y", 1))], "op id 1 appears twice"),
    ([Op(1, 0, "maybe", [])], "type 'maybe'"),
    ([ok(1, ("write", "x", 1))], "is not ('append', key, value)"),
    ([ok(1, ("r", "x"))], "is not ('append', key, value)"),
    ([ok(1, R("x", None))], "expected the observed list"),
])
def test_malformed_history_raises(history, message):
    with pytest.raises(HistoryError) as exc:
        check(history)
    assert message in str(exc.value)


# --------------------------------------------------------------------------- generated serial histories


@st.composite
def serial_histories(draw) -> list[Op]:
    """Random transactions run one at a time on a dict of lists, then shuffled; ends with a full read."""
    keys = ["a", "b", "c"][:draw(st.integers(1, 3))]
    state: dict[str, list[int]] = {k: [] for k in keys}
    next_value = iter(range(1, 10_000))
    history = []
    for op_id in range(1, draw(st.integers(1, 12)) + 1):
        kind = draw(st.sampled_from(["ok"] * 6 + ["fail", "info-applied", "info-lost"]))
        applied = kind in ("ok", "info-applied")
        scratch = {k: list(v) for k, v in state.items()}
        mops = []
        for _ in range(draw(st.integers(1, 4))):
            key = draw(st.sampled_from(keys))
            if draw(st.booleans()):
                value = next(next_value)
                scratch[key].append(value)
                mops.append(A(key, value))
            else:
                mops.append(R(key, list(scratch[key]) if kind == "ok" else None))
        if applied:
            state = scratch
        history.append(Op(op_id, op_id % 3, kind.split("-")[0], mops))
    history.append(ok(len(history) + 1, *(R(k, list(state[k])) for k in keys)))
    random.Random(draw(st.integers(0, 2**32))).shuffle(history)
    return history


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(serial_histories())
def test_serial_histories_are_valid(history):
    report = check(history)
    assert report.valid, report.anomalies


def _corruptible(history: list[Op]) -> list[tuple[int, int]]:
    """(op index, mop index) of ok reads of at least two values, other than the final full read."""
    final = max(op.id for op in history)
    return [(i, j) for i, op in enumerate(history) if op.type == "ok" and op.id != final
            for j, m in enumerate(op.mops) if m[0] == "r" and len(m[2]) >= 2]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(serial_histories(), st.data())
def test_corrupted_read_is_invalid(history, data):
    spots = _corruptible(history)
    if not spots:
        # Too small to corrupt; force one: a key with two appends, read once, then read in full.
        history = [ok(901, A("k", 1), A("k", 2)), ok(902, R("k", [1, 2])), ok(903, R("k", [1, 2]))]
        spots = [(1, 0)]
    i, j = data.draw(st.sampled_from(spots))
    _, key, values = history[i].mops[j]
    corrupted = list(values)
    if len(values) >= 3 and data.draw(st.booleans()):
        del corrupted[data.draw(st.integers(1, len(values) - 2))]  # drop a middle element
    else:
        at = data.draw(st.integers(0, len(values) - 2))  # swap two neighbours
        corrupted[at], corrupted[at + 1] = corrupted[at + 1], corrupted[at]
    history[i].mops[j] = R(key, corrupted)
    report = check(history)
    assert not report.valid
    assert "incompatible-order" in report.anomalies
