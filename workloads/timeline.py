"""Per-second timeline, run summary and fault-annotated chart of a benchmark history.

Design note
-----------
A run's ``Op`` records (``workloads.history``) are bucketed by *completion*
time into whole seconds ``0 .. ceil(duration_s) - 1``; an op completing after
the end (or before 0) is folded into the last (first) second, so nothing is
lost.  Ops still of type ``invoke`` never completed and are ignored.  One pass
over the ops fills per-second counters and latency lists; each second's list is
then sorted once for its percentiles, so two million ops take a couple of
seconds of pure Python.

A row's latency percentiles cover every op *completed* in that second whatever
its type (a slow timeout is exactly what a fault looks like).  Percentiles are
nearest-rank: the smallest value with at least p% of the values at or below it.
``throughput`` is ok ops per second of the bucket's width (1 s, except a final
partial second when ``duration_s`` is not whole).

``plot`` draws two panels on one time axis -- throughput above, latency below
-- and marks every fault in both: a vertical line at injection (labelled in the
top panel), a shaded span from detection to recovery (to the right edge when it
never recovered), and a hatched span for a pause's own length.  matplotlib is
imported inside ``plot`` with the Agg backend, so the rest of the module needs
no display and no plotting library.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable, Sequence

from workloads.history import FAIL, INVOKE, OK, UNKNOWN, Op

#: Completion types counted per second, in row order.
COUNTED = (OK, FAIL, UNKNOWN)
#: Error codes listed by name in a summary; the rest are summed in ``errors_other``.
ERRORS_TOP = 10
#: Error key for a fail / unknown op that carries no code.
NO_CODE = "(no code)"
#: Milliseconds per second.
MS_PER_S = 1000.0
#: Guard against float noise when turning p * n / 100 into a rank.
RANK_EPSILON = 1e-9

#: Chart geometry: figure size (inches) and resolution (dots per inch).
FIG_WIDTH_IN = 12.0
FIG_HEIGHT_IN = 6.0
FIG_DPI = 110
#: Latency axis goes logarithmic when max / min of the plotted latencies exceeds this.
LOG_SCALE_RATIO = 50.0
#: Chart colours (matplotlib names) and alphas.
COLOR_OK = "tab:blue"
COLOR_FAIL = "tab:red"
COLOR_UNKNOWN = "tab:purple"
COLOR_P99 = "tab:green"
COLOR_P50 = "darkgreen"
COLOR_FAULT = "black"
COLOR_OUTAGE = "tab:orange"
COLOR_UNRECOVERED = "tab:red"
COLOR_PAUSE = "dimgray"
ALPHA_OUTAGE = 0.22
ALPHA_GRID = 0.3
#: Line widths (points): main series, secondary series (fail/s, unknown/s, p50), fault injection.
LINE_MAIN_PT = 1.8
LINE_THIN_PT = 1.0
LINE_FAULT_PT = 1.1
#: Fault label font size (points) and its offset right of / below the injection line's top (points).
FAULT_LABEL_PT = 8
FAULT_LABEL_OFFSET_PT = 3
#: Legend labels of the fault marks, one legend entry per kind.
KIND_INJECTED = "fault injected"
KIND_RECOVERED = "detected → recovered"
KIND_UNRECOVERED = "detected, not recovered"
KIND_PAUSE = "pause"
NO_LEGEND = "_nolegend_"


# ---------------------------------------------------------------------------
# numbers


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank p-th percentile (0 < p <= 100) of ascending values; None when empty."""
    n = len(sorted_values)
    if n == 0:
        return None
    rank = math.ceil(p * n / 100 - RANK_EPSILON)
    return sorted_values[min(max(rank, 1), n) - 1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * MS_PER_S


def _bucket_count(duration_s: float) -> int:
    return max(0, math.ceil(duration_s))


def per_second(ops: Iterable[Op], duration_s: float) -> list[dict[str, Any]]:
    """One row per whole second of the run: counts, ok throughput and latency (ms) of ops completed in it."""
    n = _bucket_count(duration_s)
    if n == 0:
        return []
    last = n - 1
    counts = {kind: [0] * n for kind in COUNTED}
    latencies: list[list[float]] = [[] for _ in range(n)]
    for op in ops:
        done = op.complete_s
        if op.type == INVOKE or done is None:
            continue
        i = int(done) if done >= 0 else 0
        if i > last:
            i = last
        counts[op.type][i] += 1
        latencies[i].append(done - op.invoke_s)
    return [_row(t, counts, latencies[t], min(1.0, duration_s - t)) for t in range(n)]


def _row(t: int, counts: dict[str, list[int]], lat: list[float], width_s: float) -> dict[str, Any]:
    lat.sort()
    ok = counts[OK][t]
    return {
        "t": t,
        "ok": ok,
        "fail": counts[FAIL][t],
        "unknown": counts[UNKNOWN][t],
        "throughput": ok / width_s,
        "p50_ms": _ms(percentile(lat, 50)),
        "p99_ms": _ms(percentile(lat, 99)),
        "max_ms": _ms(lat[-1] if lat else None),
    }


def summary(ops: Iterable[Op], duration_s: float) -> dict[str, Any]:
    """Whole-run totals: counts, ok throughput, latency percentiles (ms) of completed ops, errors by code."""
    counts = {kind: 0 for kind in (INVOKE, *COUNTED)}
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    for op in ops:
        counts[op.type] += 1
        if op.type == INVOKE or op.complete_s is None:
            continue
        latencies.append(op.complete_s - op.invoke_s)
        if op.type != OK:
            errors[op.error or NO_CODE] += 1
    latencies.sort()
    top = errors.most_common(ERRORS_TOP)
    return {
        "duration_s": duration_s,
        "ok": counts[OK],
        "fail": counts[FAIL],
        "unknown": counts[UNKNOWN],
        "open": counts[INVOKE],
        "throughput": counts[OK] / duration_s if duration_s > 0 else 0.0,
        "p50_ms": _ms(percentile(latencies, 50)),
        "p95_ms": _ms(percentile(latencies, 95)),
        "p99_ms": _ms(percentile(latencies, 99)),
        "max_ms": _ms(latencies[-1] if latencies else None),
        "errors": dict(top),
        "errors_other": sum(errors.values()) - sum(n for _, n in top),
    }


# ---------------------------------------------------------------------------
# chart


def _series(rows: Sequence[dict[str, Any]], key: str) -> list[float]:
    """A row column as floats, None -> NaN (a gap in the line)."""
    return [math.nan if r.get(key) is None else float(r[key]) for r in rows]


def _fault_end_s(fault: dict[str, Any]) -> float:
    ends = [fault["injected_s"], fault.get("detected_s"), fault.get("recovered_s")]
    if fault.get("pause_s"):
        ends.append(fault["injected_s"] + fault["pause_s"])
    return max(e for e in ends if e is not None)


def _x_end(rows: Sequence[dict[str, Any]], faults: Sequence[dict[str, Any]]) -> float:
    ends = [float(len(rows))] + [_fault_end_s(f) for f in faults]
    return max(max(ends), 1.0)


def _plot_throughput(ax: Any, rows: Sequence[dict[str, Any]], x: list[float]) -> None:
    ax.plot(x, _series(rows, "throughput"), color=COLOR_OK, linewidth=LINE_MAIN_PT, label="ok/s")
    for key, color in (("fail", COLOR_FAIL), ("unknown", COLOR_UNKNOWN)):
        if any(r.get(key) for r in rows):
            ax.plot(x, _series(rows, key), color=color, linewidth=LINE_THIN_PT, label=f"{key}/s")
    ax.set_ylabel("throughput (ops/s)")
    ax.set_ylim(0, max(ax.get_ylim()[1], 1.0))  # an idle run still gets a sane axis


def _plot_latency(ax: Any, rows: Sequence[dict[str, Any]], x: list[float]) -> None:
    p99, p50 = _series(rows, "p99_ms"), _series(rows, "p50_ms")
    ax.plot(x, p99, color=COLOR_P99, linewidth=LINE_MAIN_PT, label="p99")
    ax.plot(x, p50, color=COLOR_P50, linewidth=LINE_THIN_PT, linestyle="--", label="p50")
    positive = [v for v in p99 + p50 if v > 0]  # NaN compares false
    if positive and max(positive) / min(positive) > LOG_SCALE_RATIO:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, max(ax.get_ylim()[1], 1.0))
    ax.set_ylabel("latency (ms)")


def _legend_once(kind: str, seen: set[str] | None) -> str:
    """``kind`` the first time it is seen, else a label the legend skips; None: never in the legend."""
    if seen is None or kind in seen:
        return NO_LEGEND
    seen.add(kind)
    return kind


def _mark_fault(ax: Any, fault: dict[str, Any], x_end: float, seen: set[str] | None) -> None:
    """A fault's marks on one panel: injection line, detection-to-recovery span (to ``x_end`` when it
    never recovered; none when never detected), hatched pause.  Legend labels only with ``seen``."""
    inj, det, rec, pause = fault["injected_s"], fault.get("detected_s"), fault.get("recovered_s"), fault.get("pause_s")
    ax.axvline(inj, color=COLOR_FAULT, linewidth=LINE_FAULT_PT, label=_legend_once(KIND_INJECTED, seen))
    if det is not None:
        recovered = (KIND_RECOVERED, rec, COLOR_OUTAGE)
        kind, end, color = recovered if rec is not None else (KIND_UNRECOVERED, x_end, COLOR_UNRECOVERED)
        ax.axvspan(det, end, color=color, alpha=ALPHA_OUTAGE, linewidth=0, label=_legend_once(kind, seen))
    if pause:
        ax.axvspan(inj, inj + pause, facecolor="none", edgecolor=COLOR_PAUSE, hatch="///", linewidth=0,
                   label=_legend_once(KIND_PAUSE, seen))


def _label_fault(ax: Any, fault: dict[str, Any]) -> None:
    """The fault's short name, rotated, just right of its injection line at the top of the panel."""
    ax.annotate(fault.get("label", ""), xy=(fault["injected_s"], 1.0), xycoords=("data", "axes fraction"),
                xytext=(FAULT_LABEL_OFFSET_PT, -FAULT_LABEL_OFFSET_PT), textcoords="offset points",
                rotation=90, va="top", ha="left", fontsize=FAULT_LABEL_PT,
                bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})


def _empty_note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="gray")


def _finish(top: Any, bottom: Any, x_end: float, title: str) -> None:
    """Shared x range, light grid, legends outside on the right (never over the data), titles."""
    for ax in (top, bottom):
        ax.grid(True, alpha=ALPHA_GRID)
        ax.set_xlim(0, x_end)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    bottom.set_xlabel("seconds since start")
    top.set_title(title)


def plot(timeline_rows: Sequence[dict[str, Any]], faults: Sequence[dict[str, Any]], path: str, title: str) -> str:
    """Write a PNG chart of the per-second rows with every fault marked; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(timeline_rows)
    x = [r["t"] + 0.5 for r in rows]  # a second's value sits mid-second
    x_end = _x_end(rows, faults)
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(FIG_WIDTH_IN, FIG_HEIGHT_IN), dpi=FIG_DPI)
    try:
        _plot_throughput(top, rows, x)
        _plot_latency(bottom, rows, x)
        if not rows:
            _empty_note(top, "no operations")
        elif all(r.get("p99_ms") is None for r in rows):
            _empty_note(bottom, "no completed operations")
        fault_kinds: set[str] = set()  # the fault legend lives on the top panel only
        for fault in sorted(faults, key=lambda f: f["injected_s"]):
            _mark_fault(top, fault, x_end, fault_kinds)
            _mark_fault(bottom, fault, x_end, None)
            _label_fault(top, fault)
        _finish(top, bottom, x_end, title)
        fig.tight_layout()
        fig.savefig(path, dpi=FIG_DPI)
    finally:
        plt.close(fig)
    return path
