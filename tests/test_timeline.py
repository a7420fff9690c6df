"""The per-second timeline, run summary and fault chart of a history (pure: no Ray)."""

from __future__ import annotations

import struct

import pytest

from workloads.history import FAIL, INVOKE, OK, UNKNOWN, Op
from workloads.timeline import ERRORS_TOP, NO_CODE, per_second, percentile, plot, summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_MIN_BYTES = 10 * 1024


def op(invoke_s: float, complete_s: float | None, kind: str = OK, error: str | None = None) -> Op:
    """An op; ids are irrelevant to the timeline."""
    return Op(0, 0, "f", None, invoke_s, kind, complete_s, None, error)


def rows_by_t(rows):
    return {r["t"]: r for r in rows}


# ---------------------------------------------------------------------------
# percentile


def test_percentile_is_nearest_rank():
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == 2.0
    assert percentile(values, 51) == 3.0
    assert percentile(values, 99) == 4.0
    assert percentile(values, 100) == 4.0
    assert percentile([7.0], 1) == 7.0
    assert percentile([], 50) is None
    hundred = [float(v) for v in range(1, 101)]
    assert (percentile(hundred, 50), percentile(hundred, 95), percentile(hundred, 99)) == (50.0, 95.0, 99.0)


# ---------------------------------------------------------------------------
# per_second


def test_per_second_buckets_by_completion_time_and_counts_types():
    ops = [
        op(0.0, 0.1),
        op(0.5, 0.9),
        op(0.9, 1.2, FAIL, "LOCK_CONFLICT"),  # invoked in second 0, completed in second 1
        op(1.0, 1.5, UNKNOWN, "TIMEOUT"),
        op(2.0, 2.0),  # exactly on a boundary: second 2
    ]
    rows = per_second(ops, 3)
    assert [r["t"] for r in rows] == [0, 1, 2]
    counts = [(r["ok"], r["fail"], r["unknown"]) for r in rows]
    assert counts == [(2, 0, 0), (0, 1, 1), (1, 0, 0)]
    assert [r["throughput"] for r in rows] == [2.0, 0.0, 1.0]


def test_per_second_latency_percentiles_cover_every_completed_type():
    # second 0: 100 ops with latencies 1..100 ms, of which the slowest ten failed or were unknown
    ops = []
    for ms in range(1, 101):
        kind = OK if ms <= 90 else (FAIL if ms % 2 else UNKNOWN)
        ops.append(op(0.0, ms / 1000, kind))
    (row,) = per_second(ops, 1)
    assert (row["ok"], row["fail"], row["unknown"]) == (90, 5, 5)
    assert row["p50_ms"] == pytest.approx(50.0)
    assert row["p99_ms"] == pytest.approx(99.0)
    assert row["max_ms"] == pytest.approx(100.0)


def test_per_second_seconds_without_completions_have_no_latency():
    rows = per_second([op(0.0, 0.25), op(2.1, 2.6)], 4)
    quiet = rows_by_t(rows)[1]
    assert (quiet["ok"], quiet["fail"], quiet["unknown"], quiet["throughput"]) == (0, 0, 0, 0.0)
    assert quiet["p50_ms"] is None and quiet["p99_ms"] is None and quiet["max_ms"] is None
    assert rows_by_t(rows)[0]["p50_ms"] == pytest.approx(250.0)
    assert rows_by_t(rows)[2]["max_ms"] == pytest.approx(500.0)
    assert rows_by_t(rows)[3]["max_ms"] is None


def test_ops_completing_after_the_end_fall_into_the_last_second():
    ops = [op(9.5, 9.7), op(9.8, 10.4, UNKNOWN, "OPEN_AT_END"), op(9.9, 25.0)]
    rows = per_second(ops, 10)
    assert len(rows) == 10
    last = rows[-1]
    assert (last["t"], last["ok"], last["unknown"]) == (9, 2, 1)
    assert last["max_ms"] == pytest.approx(15100.0)
    assert sum(r["ok"] + r["unknown"] for r in rows) == 3


def test_ops_completing_before_zero_fall_into_the_first_second():
    rows = per_second([op(-1.0, -0.5)], 2)
    assert rows[0]["ok"] == 1 and rows[0]["max_ms"] == pytest.approx(500.0)


def test_invoke_ops_are_ignored():
    ops = [op(0.1, None, INVOKE), op(0.2, 0.3), op(1.5, None, INVOKE)]
    rows = per_second(ops, 2)
    assert [(r["ok"], r["fail"], r["unknown"]) for r in rows] == [(1, 0, 0), (0, 0, 0)]
    assert rows[0]["p99_ms"] == pytest.approx(100.0)


def test_fractional_duration_gets_a_partial_last_second():
    rows = per_second([op(2.0, 2.1), op(2.2, 2.3)], 2.5)
    assert [r["t"] for r in rows] == [0, 1, 2]
    assert rows[2]["ok"] == 2 and rows[2]["throughput"] == pytest.approx(4.0)


def test_zero_duration_has_no_rows():
    assert per_second([op(0.0, 0.1)], 0) == []
    assert per_second([], 3) == [
        {"t": t, "ok": 0, "fail": 0, "unknown": 0, "throughput": 0.0, "p50_ms": None, "p99_ms": None, "max_ms": None}
        for t in range(3)
    ]


# ---------------------------------------------------------------------------
# summary


def test_summary_counts_throughput_latency_and_errors():
    ops = [op(0.0, ms / 1000) for ms in range(1, 97)]  # 96 ok: 1..96 ms
    ops += [op(0.0, 0.097, FAIL, "LOCK_CONFLICT"), op(0.0, 0.098, FAIL, "LOCK_CONFLICT")]
    ops += [op(0.0, 0.099, UNKNOWN, "TIMEOUT"), op(0.0, 0.100, FAIL, None)]
    ops += [op(5.0, None, INVOKE)]
    s = summary(ops, 10)
    assert (s["ok"], s["fail"], s["unknown"], s["open"]) == (96, 3, 1, 1)
    assert s["throughput"] == pytest.approx(9.6)
    assert s["p50_ms"] == pytest.approx(50.0)
    assert s["p95_ms"] == pytest.approx(95.0)
    assert s["p99_ms"] == pytest.approx(99.0)
    assert s["max_ms"] == pytest.approx(100.0)
    assert s["errors"] == {"LOCK_CONFLICT": 2, "TIMEOUT": 1, NO_CODE: 1}
    assert list(s["errors"])[0] == "LOCK_CONFLICT"
    assert s["errors_other"] == 0


def test_summary_keeps_the_top_error_codes_and_sums_the_rest():
    ops = []
    for i in range(ERRORS_TOP + 3):
        ops += [op(0.0, 0.01, FAIL, f"E{i}")] * (i + 1)
    s = summary(ops, 1)
    assert len(s["errors"]) == ERRORS_TOP
    assert f"E{ERRORS_TOP + 2}" in s["errors"] and "E0" not in s["errors"]
    assert s["errors_other"] == 1 + 2 + 3  # E0, E1, E2


def test_summary_of_nothing():
    s = summary([], 0)
    assert (s["ok"], s["fail"], s["unknown"], s["open"], s["throughput"]) == (0, 0, 0, 0, 0.0)
    assert s["p50_ms"] is None and s["max_ms"] is None
    assert s["errors"] == {} and s["errors_other"] == 0


# ---------------------------------------------------------------------------
# plot


@pytest.fixture
def mpl():
    return pytest.importorskip("matplotlib")


def sample_rows(seconds: int = 60) -> list[dict]:
    ops = []
    for t in range(seconds):
        slow = 20 <= t < 22
        n = 20 if slow else 200
        for k in range(n):
            start = t + k / n
            latency = 0.3 if slow else 0.004 + 0.001 * (k % 5)
            kind = FAIL if slow and k % 4 == 0 else OK
            ops.append(op(start, start + latency, kind))
    return per_second(ops, seconds)


FAULTS = [
    {"label": "kill leader p0", "injected_s": 20.0, "detected_s": 20.3, "recovered_s": 21.5, "pause_s": None},
    {"label": "pause p1", "injected_s": 40.0, "detected_s": 40.8, "recovered_s": 42.0, "pause_s": 2.0},
    {"label": "kill leader p2", "injected_s": 50.0, "detected_s": 50.2, "recovered_s": 51.0, "pause_s": None},
]


def assert_png(path, min_bytes: int = PNG_MIN_BYTES) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > min_bytes
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (1320, 660)  # 12 x 6 inches at 110 dpi


def test_plot_writes_a_png(mpl, tmp_path):
    path = tmp_path / "timeline.png"
    assert plot(sample_rows(), FAULTS, str(path), "bank, 3 replicas") == str(path)
    assert_png(path)


def test_plot_without_faults(mpl, tmp_path):
    path = tmp_path / "nofaults.png"
    plot(sample_rows(), [], str(path), "no faults")
    assert_png(path)


def test_plot_with_no_rows(mpl, tmp_path):
    path = tmp_path / "empty.png"
    plot([], [], str(path), "empty run")
    assert_png(path)
    path2 = tmp_path / "empty_faults.png"
    plot([], FAULTS, str(path2), "empty run with faults")
    assert_png(path2)


def test_plot_with_faults_never_detected_or_recovered(mpl, tmp_path):
    faults = [
        {"label": "kill node n2", "injected_s": 5.0, "detected_s": None, "recovered_s": None, "pause_s": None},
        {"label": "partition p1", "injected_s": 12.0, "detected_s": 12.5, "recovered_s": None, "pause_s": None},
        {"label": "pause p2", "injected_s": 30.0, "detected_s": None, "recovered_s": 34.0, "pause_s": 3.0},
        {"label": "kill p3", "injected_s": 45.0},  # optional keys missing
    ]
    path = tmp_path / "nones.png"
    plot(sample_rows(), faults, str(path), "undetected faults")
    assert_png(path)


def test_plot_with_no_latency_at_all(mpl, tmp_path):
    rows = per_second([op(0.0, None, INVOKE)], 30)
    assert all(r["p99_ms"] is None for r in rows)
    path = tmp_path / "idle.png"
    plot(rows, FAULTS[:1], str(path), "idle")
    assert_png(path)
