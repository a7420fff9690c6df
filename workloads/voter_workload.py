"""Voter under the benchmark harness: the call stream, a consistent-read mix, and its checkers.

Design note
-----------
Clients send ``vote`` batches; one batch in ``RESULTS_EVERY`` is a single
``results`` read (a consistent multi-partition read through the coordinator).
The checkers, run after the load:

* ``acknowledged_votes`` -- every phone that appears in the history is read
  back (``votes_of``): each acknowledged vote is stored under the vote number it
  was acknowledged with, for the contestant it named; the phone holds no more
  votes than were acknowledged plus those of unknown outcome (nothing applied
  twice), and no fewer than were acknowledged (nothing lost).
* ``results`` -- the final ``results`` read: each contestant's count lies
  between its acknowledged votes and those plus its unknown-outcome votes.
* ``results_reads`` -- every ``results`` read during the run was monotonic
  per contestant (a later read never shows fewer votes than an earlier one
  that completed before it was invoked).

The ceiling (the procedure in a loop on in-process cores) is the throughput
baseline, measured in the same run (``workloads.bench.measure_ceiling``).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Any, Sequence

from workloads import voter
from workloads.history import OK, UNKNOWN, Op
from workloads.workload import EVIDENCE_MAX, Verdict

#: One client batch in this many is a single consistent ``results`` read.
RESULTS_EVERY = 20
#: Phones read back per ``votes_of`` batch by the checker.
CHECK_BATCH = 1_000


class _Client:
    def __init__(self, rng: random.Random, contestants: int, max_votes: int) -> None:
        self.gen = voter.VoterGenerator(rng, contestants, max_votes)
        self.batches = 0

    def next_batch(self, n: int) -> tuple[str, list[Sequence[Any]]]:
        self.batches += 1
        if self.batches % RESULTS_EVERY == 0:
            return "results", [()]
        return "vote", self.gen.next_batch(n)


class VoterWorkload:
    name = "voter"

    def __init__(self, contestants: int = voter.CONTESTANTS_DEFAULT, max_votes: int = voter.MAX_VOTES_DEFAULT) -> None:
        if not 1 <= contestants <= len(voter.CONTESTANT_NAMES):
            raise ValueError(f"--contestants must be in 1..{len(voter.CONTESTANT_NAMES)}, got {contestants}")
        if max_votes < 1:
            raise ValueError(f"--max-votes must be at least 1, got {max_votes}")
        self.contestants, self.max_votes = contestants, max_votes

    def schema(self):
        return voter.schema()

    def initial_data(self) -> dict[str, list[dict[str, Any]]]:
        return voter.initial_data(self.contestants)

    def client(self, process: int, rng: random.Random) -> _Client:
        return _Client(rng, self.contestants, self.max_votes)

    def ceiling(self, cfg: Any) -> dict[str, Any]:
        from workloads.bench import BenchConfig, measure_ceiling

        bench_cfg = BenchConfig(partitions=cfg.partitions, clients=cfg.clients, seed=cfg.seed,
                                contestants=self.contestants, max_votes=self.max_votes,
                                transactions=cfg.transactions)
        return measure_ceiling(bench_cfg)

    def check(self, db: Any, ops: list[Op]) -> dict[str, Verdict]:
        votes = [op for op in ops if op.f == "vote"]
        final = db.call("results")
        return {
            "acknowledged_votes": check_phones(votes, _read_phones(db, votes)),
            "results": check_results(votes, final),
            "results_reads": check_reads([op for op in ops if op.f == "results" and op.type == OK]),
        }


def _read_phones(db: Any, votes: list[Op]) -> dict[int, list[tuple[int, int]]]:
    phones = sorted({op.value[0] for op in votes})
    stored: dict[int, list[tuple[int, int]]] = {}
    for i in range(0, len(phones), CHECK_BATCH):
        chunk = phones[i:i + CHECK_BATCH]
        for phone, got in zip(chunk, db.call_many("votes_of", [(p,) for p in chunk])):
            if isinstance(got, BaseException):
                raise got
            stored[phone] = [tuple(v) for v in got]
    return stored


def check_phones(votes: list[Op], stored: dict[int, list[tuple[int, int]]]) -> Verdict:
    """Acknowledged votes present under their numbers; no more than acknowledged + unknown."""
    by_phone: dict[int, list[Op]] = defaultdict(list)
    for op in votes:
        by_phone[op.value[0]].append(op)
    problems: list[str] = []
    for phone, phone_ops in by_phone.items():
        problems += _phone_problems(phone, phone_ops, dict(stored.get(phone, [])))
    acked = sum(1 for op in votes if op.type == OK)
    detail = f"{acked:,} acknowledged votes on {len(by_phone):,} phones read back"
    if problems:
        detail = f"{len(problems)} problem(s): {problems[0]}; {detail}"
    return Verdict(not problems, detail, {"problems": problems[:EVIDENCE_MAX]} if problems else {})


def _phone_problems(phone: int, ops: list[Op], stored: dict[int, int]) -> list[str]:
    out = []
    ok = [op for op in ops if op.type == OK]
    unknown = sum(1 for op in ops if op.type == UNKNOWN)
    for op in ok:
        if stored.get(op.result) != op.value[1]:
            out.append(f"phone {phone}: acknowledged vote {op.result} for contestant {op.value[1]} is stored as "
                       f"{stored.get(op.result, 'missing')}")
    if len(stored) > len(ok) + unknown:
        out.append(f"phone {phone} holds {len(stored)} votes; only {len(ok)} acknowledged and {unknown} unknown")
    numbers = Counter(op.result for op in ok)
    out += [f"phone {phone}: vote number {n} acknowledged {c} times" for n, c in numbers.items() if c > 1]
    return out


def check_results(votes: list[Op], final: list[tuple[int, str, int]]) -> Verdict:
    """Each contestant's final count within [acknowledged, acknowledged + unknown]."""
    ok, unknown = Counter(), Counter()
    for op in votes:
        if op.type == OK:
            ok[op.value[1]] += 1
        elif op.type == UNKNOWN:
            unknown[op.value[1]] += 1
    counted = {number: n for number, _name, n in final}
    problems = [f"contestant {c}: {counted.get(c, 0)} votes counted, {ok[c]} acknowledged, {unknown[c]} unknown"
                for c in set(ok) | set(counted)
                if not ok[c] <= counted.get(c, 0) <= ok[c] + unknown[c]]
    detail = f"results() counts {sum(counted.values()):,} votes; {sum(ok.values()):,} acknowledged, " \
             f"{sum(unknown.values()):,} unknown"
    if problems:
        detail = f"{problems[0]}; {detail}"
    return Verdict(not problems, detail, {"problems": problems[:EVIDENCE_MAX]} if problems else {})


def check_reads(reads: list[Op]) -> Verdict:
    """Counts never go back: a read invoked after another completed shows at least its counts."""
    reads = sorted(reads, key=lambda op: op.invoke_s)
    problems = []
    done = sorted(reads, key=lambda op: op.complete_s)
    for later in reads:
        before = [op for op in done if op.complete_s < later.invoke_s]
        if not before:
            continue
        prev = {n: c for n, _name, c in before[-1].result}
        now = {n: c for n, _name, c in later.result}
        shrunk = [n for n, c in prev.items() if now.get(n, 0) < c]
        if shrunk:
            problems.append(f"read at {later.invoke_s:.3f}s shows fewer votes for contestant(s) {shrunk} than the "
                            f"read completed at {before[-1].complete_s:.3f}s")
    detail = f"{len(reads)} consistent results() reads during the run"
    if problems:
        detail = f"{problems[0]}; {detail}"
    return Verdict(not problems, detail, {"problems": problems[:EVIDENCE_MAX]} if problems else {})

