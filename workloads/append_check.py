"""Elle-style list-append history checker: infer dependencies, find isolation anomalies.

Design note
-----------
After Kingsbury & Alvaro, "Elle: Inferring Isolation Anomalies from
Experimental Database Histories" (VLDB 2020), list-append workload.  Each key
holds a list; transactions append values (unique per key) and read whole
lists.  A read therefore shows the order of every version before it:

* the **version order** of a key is its longest ok read; every other read must
  be a prefix of it, else the key has an ``incompatible-order`` finding and
  gives no ww/rw edges.  Appends never read are not ordered.
* **ww** T1->T2: T2's value directly follows T1's in a key's version order;
* **wr** T1->T2: T2 read a list whose last value T1 appended;
* **rw** T1->T2: T1 read a list ending at v (or empty) and T2 appended the
  value right after v.

A transaction's own appends at the end of a list it read are stripped first:
what it observed *from others* is the rest.  Graph nodes are ok transactions
plus info transactions with an observed append (those committed).  Cycles are
looked for per strongly connected component by BFS restricted to the edge
kinds the anomaly allows, through one forced edge of the kind it needs -- a
short representative cycle per component, never an enumeration.  (A G1b read
also closes a wr+rw cycle with the writer it saw half of, so it shows under G2
too.)

Also reported, because silence would be wrong: ``garbage-read`` (a read value
nobody appended) and ``duplicate-elements`` (a value twice in one read).
Real-time order (``invoke_s``/``complete_s``) is not used: this checks
serializability, not strict serializability.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable

import networkx as nx

OK, FAIL, INFO = "ok", "fail", "info"
OP_TYPES = (OK, FAIL, INFO)
APPEND, READ = "append", "r"
WW, WR, RW = "ww", "wr", "rw"
EDGE_KINDS = (WW, WR, RW)  # also the preference order when labelling a cycle's edges

#: Forced edges tried per strongly connected component per anomaly class.
CYCLE_SEARCH_EDGES_MAX = 64


class HistoryError(ValueError):
    """The history itself is malformed (not an anomaly of the database)."""


@dataclass
class Op:
    """One completed operation (transaction) of the history; keys and values must be hashable."""

    id: int
    process: int
    type: str  # "ok" committed, "fail" known aborted, "info" unknown outcome
    mops: list[tuple]  # ("append", key, value) | ("r", key, list_or_None)
    invoke_s: float = 0.0
    complete_s: float = 0.0


@dataclass
class Report:
    """The checker's verdict; ``anomalies`` holds only the classes found."""

    valid: bool
    anomalies: dict[str, list[dict]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: valid, or the anomaly classes with how many findings each."""
        if self.valid:
            return "valid"
        return "invalid: " + ", ".join(f"{name} x{len(f)}" for name, f in sorted(self.anomalies.items()))


@dataclass(frozen=True)
class _Write:
    op: int
    last: bool  # the op's final append to this key


@dataclass(frozen=True)
class _Read:
    op: int
    key: Hashable
    values: tuple  # the whole observed list
    seen: tuple  # values minus the reader's own trailing appends


# --------------------------------------------------------------------------- validation


def _validate(history: list[Op]) -> None:
    ids: set[int] = set()
    for op in history:
        if op.type not in OP_TYPES:
            raise HistoryError(f"op {op.id}: type {op.type!r} is not one of {OP_TYPES}")
        if op.id in ids:
            raise HistoryError(f"op id {op.id} appears twice in the history")
        ids.add(op.id)
        for mop in op.mops:
            _validate_mop(op, mop)


def _validate_mop(op: Op, mop: Any) -> None:
    if not isinstance(mop, (tuple, list)) or len(mop) != 3 or mop[0] not in (APPEND, READ):
        raise HistoryError(f"op {op.id}: micro-op {mop!r} is not ('append', key, value) or ('r', key, list)")
    if mop[0] == READ and op.type == OK and not isinstance(mop[2], (list, tuple)):
        raise HistoryError(f"op {op.id}: ok read of key {mop[1]!r} holds {mop[2]!r}, expected the observed list")


def _index_writes(history: list[Op]) -> dict[tuple, _Write]:
    """(key, value) -> who appended it; raises HistoryError on a value appended twice."""
    writes: dict[tuple, _Write] = {}
    for op in history:
        appends = [(m[1], m[2]) for m in op.mops if m[0] == APPEND]
        final = {key: value for key, value in appends}
        for key, value in appends:
            if (key, value) in writes:
                raise HistoryError(
                    f"value {value!r} appended to key {key!r} by op {writes[key, value].op} and again by op "
                    f"{op.id}: appended values must be unique per key")
            writes[key, value] = _Write(op.id, final[key] == value)
    return writes


def _ok_reads(history: list[Op], writes: dict[tuple, _Write]) -> list[_Read]:
    reads = []
    for op in history:
        if op.type != OK:
            continue
        for kind, key, values in op.mops:
            if kind == READ:
                values = tuple(values)
                seen = list(values)
                while seen and _writer(writes, key, seen[-1]) == op.id:
                    seen.pop()
                reads.append(_Read(op.id, key, values, tuple(seen)))
    return reads


def _writer(writes: dict[tuple, _Write], key: Hashable, value: Any) -> int | None:
    w = writes.get((key, value))
    return None if w is None else w.op


# --------------------------------------------------------------------------- non-cycle anomalies


def _appended_values(history: list[Op], types: tuple[str, ...]) -> dict[Hashable, set]:
    """key -> the values appended to it by ops of the given types (for C-speed set tests on reads)."""
    out: dict[Hashable, set] = {}
    for op in history:
        if op.type in types:
            for m in op.mops:
                if m[0] == APPEND:
                    out.setdefault(m[1], set()).add(m[2])
    return out


def _aborted_reads(reads: list[_Read], writes: dict[tuple, _Write], failed: dict[Hashable, set]) -> list[dict]:
    """G1a: an ok read observed a value appended by a failed op (one finding per writer/reader/key)."""
    found: dict[tuple, dict] = {}
    for r in reads:
        hits = failed.get(r.key)
        if not hits or hits.isdisjoint(r.values):
            continue
        for v in (v for v in r.values if v in hits):
            w = writes[r.key, v].op
            if (w, r.op, r.key) not in found:
                found[w, r.op, r.key] = {
                    "ops": [w, r.op], "key": r.key, "value": v,
                    "explanation": f"T{r.op} read key {r.key!r} and saw {v!r}, appended by failed T{w}"}
    return list(found.values())


def _intermediate_reads(reads: list[_Read], writes: dict[tuple, _Write]) -> list[dict]:
    """G1b: an ok read ends (ignoring its own appends) at another txn's non-final append to the key."""
    found = []
    for r in reads:
        if not r.seen:
            continue
        w = writes.get((r.key, r.seen[-1]))
        if w is not None and not w.last and w.op != r.op:
            found.append({
                "ops": [w.op, r.op], "key": r.key, "value": r.seen[-1],
                "explanation": f"T{r.op} read key {r.key!r} ending in {r.seen[-1]!r}, which T{w.op} followed "
                               f"with another append to the same key (an intermediate state)"})
    return found


def _garbage_reads(reads: list[_Read], appended: dict[Hashable, set]) -> list[dict]:
    """An ok read holds a value that no op in the history appended."""
    found = []
    for r in reads:
        known = appended.get(r.key, set())
        if known.issuperset(r.values):
            continue
        for v in r.values:
            if v not in known:
                found.append({"ops": [r.op], "key": r.key, "value": v,
                              "explanation": f"T{r.op} read {v!r} in key {r.key!r}, which no op appended"})
    return found


def _duplicate_elements(reads: list[_Read]) -> list[dict]:
    found = []
    for r in reads:
        if len(set(r.values)) == len(r.values):
            continue
        dups = sorted((v for v, n in Counter(r.values).items() if n > 1), key=repr)
        found.append({"ops": [r.op], "key": r.key, "values": dups,
                      "explanation": f"T{r.op} read key {r.key!r} holding {dups!r} more than once"})
    return found


def _version_orders(reads: list[_Read]) -> tuple[dict[Hashable, tuple], list[dict]]:
    """Per key, the longest read if every read is a prefix of it; else incompatible-order findings."""
    by_key: dict[Hashable, list[_Read]] = {}
    for r in reads:
        by_key.setdefault(r.key, []).append(r)
    orders, found = {}, []
    for key, key_reads in by_key.items():
        longest = max(key_reads, key=lambda r: len(r.values))  # first of equal length: deterministic
        bad = {}
        for r in key_reads:
            if longest.values[:len(r.values)] != r.values:
                bad.setdefault(r.values, r)
        for r in bad.values():
            found.append({
                "ops": [longest.op, r.op], "key": key, "reads": [list(longest.values), list(r.values)],
                "explanation": f"T{longest.op} read key {key!r} as {list(longest.values)!r} and T{r.op} as "
                               f"{list(r.values)!r}: neither is a prefix of the other, so no version order"})
        if not bad and len(set(longest.values)) == len(longest.values):
            orders[key] = longest.values
    return orders, found


# --------------------------------------------------------------------------- dependency graph


def _nodes(history: list[Op], reads: list[_Read], writes: dict[tuple, _Write]) -> set[int]:
    """ok ops, plus info ops with an append some ok read observed."""
    nodes = {op.id for op in history if op.type == OK}
    info = _appended_values(history, (INFO,))
    for r in reads:
        hits = info.get(r.key)
        if hits and not hits.isdisjoint(r.values):
            nodes.update(writes[r.key, v].op for v in hits.intersection(r.values))
    return nodes


def _add_edge(g: nx.DiGraph, a: int | None, b: int | None, kind: str, why: str) -> None:
    if a is None or b is None or a == b or a not in g or b not in g:
        return
    if not g.has_edge(a, b):
        g.add_edge(a, b, why={})
    g[a][b]["why"].setdefault(kind, why)


def _build_graph(nodes: set[int], reads: list[_Read], writes: dict[tuple, _Write],
                 orders: dict[Hashable, tuple]) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from(sorted(nodes))
    for key, order in orders.items():
        for v1, v2 in zip(order, order[1:]):
            a, b = _writer(writes, key, v1), _writer(writes, key, v2)
            _add_edge(g, a, b, WW, f"T{b} appended {v2!r} to key {key!r} right after T{a}'s {v1!r}")
    for r in reads:
        _add_read_edges(g, r, writes, orders.get(r.key))
    return g


def _add_read_edges(g: nx.DiGraph, r: _Read, writes: dict[tuple, _Write], order: tuple | None) -> None:
    if r.seen:
        w = _writer(writes, r.key, r.seen[-1])
        _add_edge(g, w, r.op, WR, f"T{r.op} read key {r.key!r} ending in T{w}'s append {r.seen[-1]!r}")
    if order is not None and len(r.seen) < len(order):
        nxt = order[len(r.seen)]
        w = _writer(writes, r.key, nxt)
        state = f"ending in {r.seen[-1]!r}" if r.seen else "empty"
        _add_edge(g, r.op, w, RW, f"T{r.op} read key {r.key!r} {state} and T{w} appended the next value {nxt!r}")


def _edge_counts(g: nx.DiGraph) -> dict[str, int]:
    counts = Counter(kind for _, _, why in g.edges(data="why") for kind in why)
    return {kind: counts.get(kind, 0) for kind in EDGE_KINDS}


# --------------------------------------------------------------------------- cycles


def _restricted(g: nx.DiGraph, kinds: Iterable[str], nodes: Iterable[int] | None = None) -> nx.DiGraph:
    """A plain copy of g (or of its ``nodes``) with only the edges having one of ``kinds``.

    A copy, not a filtered view: BFS over nested networkx views is ~20x slower.
    """
    kinds = set(kinds)
    src = g if nodes is None else g.subgraph(nodes)
    h = nx.DiGraph()
    h.add_nodes_from(src)
    h.add_edges_from((a, b) for a, b, why in src.edges(data="why") if not kinds.isdisjoint(why))
    return h


def _cycle_through(g: nx.DiGraph, h: nx.DiGraph, edge: tuple[int, int], forced: str,
                   allowed: tuple[str, ...]) -> list[tuple[int, int, str]] | None:
    """Shortest cycle starting with ``edge`` (labelled ``forced``) back through h, g restricted to ``allowed``."""
    a, b = edge
    try:
        path = nx.shortest_path(h, b, a)
    except nx.NetworkXNoPath:
        return None
    steps = [(a, b, forced)]
    for u, v in zip(path, path[1:]):
        steps.append((u, v, next(k for k in EDGE_KINDS if k in allowed and k in g[u][v]["why"])))
    return steps


def _shortest_cycle(g: nx.DiGraph, scc: set[int], forced: str, allowed: tuple[str, ...],
                    edges: list[tuple[int, int]] | None = None) -> list[tuple[int, int, str]] | None:
    """The shortest cycle through one of the first CYCLE_SEARCH_EDGES_MAX ``forced`` edges in scc."""
    if edges is None:
        edges = sorted((a, b) for a, b, why in g.subgraph(scc).edges(data="why") if forced in why)
    if not edges:
        return None
    h = _restricted(g, allowed, scc)
    best = None
    for edge in edges[:CYCLE_SEARCH_EDGES_MAX]:
        steps = _cycle_through(g, h, edge, forced, allowed)
        if steps is not None and (best is None or len(steps) < len(best)):
            best = steps
        if best is not None and len(best) == 2:
            break
    return best


def _finding(g: nx.DiGraph, steps: list[tuple[int, int, str]]) -> dict:
    """A cycle finding, rotated to start at its smallest transaction id."""
    start = min(range(len(steps)), key=lambda i: steps[i][0])
    steps = steps[start:] + steps[:start]
    cycle = [a for a, _, _ in steps] + [steps[0][0]]
    why = "; ".join(f"T{a} -{k}-> T{b}: {g[a][b]['why'][k]}" for a, b, k in steps)
    return {"cycle": cycle, "edges": [k for _, _, k in steps], "explanation": why}


def _sccs(g: nx.DiGraph) -> list[set[int]]:
    return sorted((c for c in nx.strongly_connected_components(g) if len(c) > 1), key=min)


def _cycle_anomalies(g: nx.DiGraph) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {"G0": [], "G1c": [], "G2": []}
    for big in _sccs(g):  # every cycle lies in one component of the whole graph
        sub = g.subgraph(big)
        for name, forced, allowed in (("G0", WW, (WW,)), ("G1c", WR, (WW, WR))):
            for scc in _sccs(_restricted(sub, allowed)):
                steps = _shortest_cycle(sub, scc, forced, allowed)
                if steps is not None:  # None: a ww-only component has no G1c cycle
                    found[name].append(_finding(sub, steps))
        found["G2"].extend(_g2_finding(sub, big))
    return {name: f for name, f in found.items() if f}


def _single_rw_candidates(g: nx.DiGraph, scc: set[int]) -> list[tuple[int, int]]:
    """rw edges a->b of scc that may close a cycle through ww/wr edges alone, likeliest first.

    That needs a ww/wr path b -> a, so b's component must not come after a's in a
    topological order of the ww/wr condensation: a cheap filter that keeps the
    bounded search off the (usually many) rw edges that cannot.  The edges that
    jump furthest back in that order are tried first.
    """
    cond = nx.condensation(_restricted(g, (WW, WR), scc))
    order = {c: i for i, c in enumerate(nx.topological_sort(cond))}
    rank = {n: order[c] for n, c in cond.graph["mapping"].items()}
    edges = [(a, b) for a, b, why in g.subgraph(scc).edges(data="why") if RW in why and rank[b] <= rank[a]]
    return sorted(edges, key=lambda e: (rank[e[1]] - rank[e[0]], e))


def _g2_finding(g: nx.DiGraph, scc: set[int]) -> list[dict]:
    """Prefer a cycle with a single rw edge (G-single); else any cycle through an rw edge."""
    candidates = _single_rw_candidates(g, scc)
    steps = _shortest_cycle(g, scc, RW, (WW, WR), candidates)
    note = "G-single: exactly one rw (anti-dependency) edge"
    if steps is None:
        steps = _shortest_cycle(g, scc, RW, EDGE_KINDS)
        note = "G2-item: more than one rw edge on the cycle" + (
            "" if len(candidates) <= CYCLE_SEARCH_EDGES_MAX else
            f" (no single-rw cycle through the {CYCLE_SEARCH_EDGES_MAX} likeliest rw edges; one may exist)")
    if steps is None:
        return []
    return [{**_finding(g, steps), "note": note}]


# --------------------------------------------------------------------------- entry point


def check(history: list[Op]) -> Report:
    """Check a list-append history; raises HistoryError if the history is malformed."""
    _validate(history)
    writes = _index_writes(history)
    reads = _ok_reads(history, writes)
    orders, incompatible = _version_orders(reads)
    anomalies = {
        "G1a": _aborted_reads(reads, writes, _appended_values(history, (FAIL,))),
        "G1b": _intermediate_reads(reads, writes),
        "incompatible-order": incompatible,
        "garbage-read": _garbage_reads(reads, _appended_values(history, OP_TYPES)),
        "duplicate-elements": _duplicate_elements(reads),
    }
    g = _build_graph(_nodes(history, reads, writes), reads, writes, orders)
    anomalies.update(_cycle_anomalies(g))
    anomalies = {name: f for name, f in anomalies.items() if f}
    types = Counter(op.type for op in history)
    counts = {"ops": len(history), **{t: types.get(t, 0) for t in OP_TYPES},
              "keys": len({m[1] for op in history for m in op.mops}), "nodes": g.number_of_nodes(),
              **_edge_counts(g)}
    return Report(valid=not anomalies, anomalies=anomalies, counts=counts)
