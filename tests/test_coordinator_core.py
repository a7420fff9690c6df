"""Unit tests of the 2PC coordinator core (no Ray), and a seeded simulator.

The simulator runs one coordinator core against participant models over a
message network that delays, reorders and drops, and crashes the coordinator
and participant leaders at random.  A participant's PREPARE records and the
holder's DECISION table survive a leader crash (k-safety); its uncommitted,
unprepared work does not.  Every seed is checked for atomicity (one outcome per
transaction), validity (commit only after every writer's YES), liveness (no
transaction left prepared once the faults stop) and honest client replies.  A
failure names its seed; ``run_sim(seed)`` replays it exactly.
"""

from __future__ import annotations

import heapq
import itertools
import pickle
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

from actors.coordinator_core import (
    ABORT, COMMIT, DECISION_ATTEMPTS_MAX, OPEN_TXNS_MAX, CoordinatorCore, InDoubt,
    LogDecision, Release, Reply, SendAbort, SendDecision, SendPrepare,
)
from actors.errors import (
    CoordinatorBusy, InvalidConfig, InvariantViolation, OutcomeUnknown, ProcedureFailed, TxnAborted,
)

PREPARE_S = 5.0
RETRY_S = 1.0


def core() -> CoordinatorCore:
    return CoordinatorCore(prepare_timeout_s=PREPARE_S, decision_retry_s=RETRY_S)


def run_fragments(c: CoordinatorCore, txn: str, writes: dict[int, bool], now: float = 0.0) -> None:
    """Begin ``txn`` and run one successful fragment per partition (``writes[p]``: it wrote)."""
    assert c.begin(txn, f"req-{txn}", now) == []
    for p, wrote in writes.items():
        assert c.fragment_done(txn, p, ok=True, wrote=wrote) == []


def prepared(writes: dict[int, bool], txn: str = "t1") -> CoordinatorCore:
    """A core with ``txn`` PREPARING after its procedure returned "res"."""
    c = core()
    run_fragments(c, txn, writes)
    c.procedure_done(txn, True, "res", 0.0)
    return c


def deciding(writes: dict[int, bool], txn: str = "t1") -> CoordinatorCore:
    """A core with ``txn`` DECIDING (every writer voted YES) and its LogDecision issued."""
    c = prepared(writes, txn)
    for p in sorted(p for p, w in writes.items() if w):
        c.vote(txn, p, True, 0.1)
    assert c.status() == {txn: "DECIDING"}
    return c


# --- phase 0 and 1 -----------------------------------------------------------------------


def test_read_only_txn_releases_and_commits_without_phase_two():
    c = core()
    run_fragments(c, "t1", {2: False, 1: False})
    assert c.status() == {"t1": "RUNNING"}
    assert c.procedure_done("t1", True, 42, 0.0) == [Release("t1", (1, 2)), Reply("t1", True, 42)]
    assert c.status() == {}


def test_single_writer_commits_through_its_own_decision_record():
    c = core()
    run_fragments(c, "t1", {1: True, 2: False})
    assert c.procedure_done("t1", True, "res", 0.0) == [Release("t1", (2,)), SendPrepare("t1", (1,))]
    assert c.status() == {"t1": "PREPARING"}
    assert c.vote("t1", 1, True, 0.5) == [LogDecision("t1", 1, COMMIT, (1,), "req-t1", "res")]
    # The holder is the only writer: no SendDecision, nothing to acknowledge.
    assert c.decision_logged("t1", COMMIT, 0.6) == [Reply("t1", True, "res")]
    assert c.status() == {}


def test_several_writers_commit_after_every_yes_and_the_holder_record():
    c = core()
    run_fragments(c, "t1", {3: True, 1: True, 2: True, 0: False})
    actions = c.procedure_done("t1", True, "res", 0.0)
    assert actions == [Release("t1", (0,)), SendPrepare("t1", (1, 2, 3))]
    assert actions[1].holder == 1
    assert c.vote("t1", 3, True, 0.1) == []
    assert c.vote("t1", 1, True, 0.2) == []
    assert c.vote("t1", 2, True, 0.3) == [LogDecision("t1", 1, COMMIT, (1, 2, 3), "req-t1", "res")]
    assert c.decision_logged("t1", COMMIT, 0.4) == [SendDecision("t1", COMMIT, (2, 3)), Reply("t1", True, "res")]
    assert c.status() == {"t1": "DECIDED"}
    assert c.decision_acked("t1", 3) == []
    assert c.status() == {"t1": "DECIDED"}
    c.decision_acked("t1", 2)
    assert c.status() == {}


def test_a_no_vote_aborts_without_logging():
    c = prepared({1: True, 2: True, 3: True})
    c.vote("t1", 1, True, 0.1)
    actions = c.vote("t1", 2, False, 0.2)
    assert actions[0] == SendAbort("t1", (1, 2, 3))
    reply = actions[1]
    assert (reply.txn, reply.committed) == ("t1", False)
    assert isinstance(reply.result, TxnAborted) and "partition 2 voted no" in reply.result.message
    assert c.status() == {}
    assert c.vote("t1", 3, True, 0.3) == []  # late vote: ignored


def test_a_missing_vote_aborts_at_the_deadline():
    c = prepared({1: True, 2: True})
    c.vote("t1", 1, True, 1.0)
    assert c.tick(PREPARE_S - 0.01) == []
    actions = c.tick(PREPARE_S)
    assert actions[0] == SendAbort("t1", (1, 2))
    assert actions[1].committed is False
    assert "no vote from partitions [2] within 5.0 s" in actions[1].result.message
    assert c.status() == {}
    assert c.vote("t1", 2, True, PREPARE_S + 1) == []


def test_procedure_error_aborts_every_touched_partition_with_its_error():
    c = core()
    run_fragments(c, "t1", {1: True, 2: False})
    error = ProcedureFailed("boom", procedure="p")
    assert c.procedure_done("t1", False, error, 0.0) == [SendAbort("t1", (1, 2)), Reply("t1", False, error)]
    assert c.status() == {}


def test_a_failed_fragment_aborts_even_if_the_procedure_returned():
    c = core()
    c.begin("t1", None, 0.0)
    c.fragment_done("t1", 1, ok=True, wrote=True)
    c.fragment_done("t1", 2, ok=False, wrote=False)
    actions = c.procedure_done("t1", True, "res", 0.0)
    assert actions[0] == SendAbort("t1", (1, 2))
    assert actions[1].committed is False and actions[1].result.details["partitions"] == [2]


def test_procedure_that_touched_nothing_just_replies():
    c = core()
    c.begin("t1", None, 0.0)
    assert c.procedure_done("t1", True, 7, 0.0) == [Reply("t1", True, 7)]


# --- phase 2 -------------------------------------------------------------------------


def test_first_writer_wins_abort_at_the_holder():
    c = deciding({1: True, 2: True})
    actions = c.decision_logged("t1", ABORT, 0.5)
    assert actions[0] == SendDecision("t1", ABORT, (2,))
    assert actions[1].committed is False and "recorded first at partition 1" in actions[1].result.message
    assert c.status() == {"t1": "DECIDED"}
    c.decision_acked("t1", 2)
    assert c.status() == {}


def test_decision_failed_reissues_log_decision_then_reports_unknown_and_retries_on_tick():
    c = deciding({1: True, 2: True})
    log = LogDecision("t1", 1, COMMIT, (1, 2), "req-t1", "res")
    for attempt in range(2, DECISION_ATTEMPTS_MAX + 1):
        assert c.decision_failed("t1", 1.0 + attempt) == [log]
    actions = c.decision_failed("t1", 10.0)
    assert len(actions) == 1 and actions[0].committed is None
    assert isinstance(actions[0].result, OutcomeUnknown) and actions[0].result.not_applied is False
    assert c.status() == {"t1": "DECIDING"}
    assert c.tick(10.0 + RETRY_S / 2) == []
    assert c.tick(10.0 + RETRY_S) == [log]  # no second Reply
    # The client already heard "unknown": the decision is carried out without another reply.
    assert c.decision_logged("t1", COMMIT, 12.0) == [SendDecision("t1", COMMIT, (2,))]


def test_an_unanswered_log_decision_is_resent_on_tick():
    c = deciding({1: True, 2: True})
    log = LogDecision("t1", 1, COMMIT, (1, 2), "req-t1", "res")
    assert c.tick(0.1 + RETRY_S / 2) == []
    assert c.tick(0.1 + RETRY_S) == [log]
    assert c.decision_logged("t1", COMMIT, 2.0)[-1] == Reply("t1", True, "res")
    assert c.decision_logged("t1", COMMIT, 2.1) == []  # the duplicate answer


def test_decision_is_resent_on_tick_until_every_writer_acknowledged():
    c = deciding({1: True, 2: True, 3: True})
    c.decision_logged("t1", COMMIT, 1.0)
    assert c.tick(1.5) == []
    assert c.tick(2.0) == [SendDecision("t1", COMMIT, (2, 3))]
    c.decision_acked("t1", 3)
    assert c.tick(2.5) == []
    assert c.tick(3.0) == [SendDecision("t1", COMMIT, (2,))]
    c.decision_acked("t1", 2)
    assert c.status() == {}
    assert c.tick(10.0) == []
    assert c.decision_acked("t1", 2) == []  # duplicate acknowledgement


def test_an_acknowledgement_before_the_holder_answers_counts():
    c = deciding({1: True, 2: True})
    c.decision_acked("t1", 2)  # a previous incarnation's SendDecision reached it
    assert c.decision_logged("t1", COMMIT, 1.0) == [Reply("t1", True, "res")]
    assert c.status() == {}


# --- recovery ------------------------------------------------------------------------


def test_recovery_carries_out_a_recorded_commit_without_replying():
    c = core()
    actions = c.recover({"t9": InDoubt("t9", [3, 1, 2], 1, COMMIT)}, 0.0)
    assert actions == [SendDecision("t9", COMMIT, (2, 3))]
    assert c.status() == {"t9": "DECIDED"}
    assert c.tick(RETRY_S) == [SendDecision("t9", COMMIT, (2, 3))]
    c.decision_acked("t9", 2)
    c.decision_acked("t9", 3)
    assert c.status() == {}


def test_recovery_carries_out_a_recorded_abort():
    c = core()
    assert c.recover({"t9": InDoubt("t9", [1, 2], 1, ABORT)}, 0.0) == [SendDecision("t9", ABORT, (2,))]


def test_recovery_of_a_holder_only_txn_finishes_at_once():
    c = core()
    assert c.recover({"t9": InDoubt("t9", [4], 4, COMMIT)}, 0.0) == []
    assert c.status() == {}


@pytest.mark.parametrize("recorded", [ABORT, COMMIT])
def test_recovery_with_nothing_recorded_logs_abort_first_writer_wins(recorded):
    c = core()
    actions = c.recover({"t9": InDoubt("t9", [2, 1], 1, None)}, 0.0)
    assert actions == [LogDecision("t9", 1, ABORT, (1, 2), None, None)]
    assert c.status() == {"t9": "DECIDING"}
    # The holder answers what it recorded first: the abort, or a commit that got there before it.
    assert c.decision_logged("t9", recorded, 0.5) == [SendDecision("t9", recorded, (2,))]


def test_recovery_skips_txns_this_incarnation_already_drives():
    c = deciding({1: True, 2: True})
    assert c.recover({"t1": InDoubt("t1", [1, 2], 1, None)}, 1.0) == []
    assert c.status() == {"t1": "DECIDING"}


def test_recovery_rejects_an_inconsistent_record():
    with pytest.raises(InvariantViolation):
        core().recover({"t9": InDoubt("t9", [1, 2], 2, None)}, 0.0)
    with pytest.raises(InvariantViolation):
        core().recover({"t9": InDoubt("t9", [1, 2], 1, "maybe")}, 0.0)


# --- limits and invariants -------------------------------------------------------------


def test_begin_beyond_the_open_limit_is_a_typed_error():
    c = core()
    for i in range(OPEN_TXNS_MAX):
        c.begin(f"t{i}", None, 0.0)
    with pytest.raises(CoordinatorBusy) as info:
        c.begin("one-more", None, 0.0)
    assert info.value.code == "COORDINATOR_BUSY" and info.value.details["limit"] == OPEN_TXNS_MAX
    assert pickle.loads(pickle.dumps(info.value)) == info.value


def test_bad_timeouts_are_rejected():
    with pytest.raises(InvalidConfig):
        CoordinatorCore(prepare_timeout_s=0.0, decision_retry_s=1.0)


def test_shell_contract_violations_raise():
    c = prepared({1: True, 2: True})
    with pytest.raises(InvariantViolation):
        c.vote("t1", 7, True, 0.1)  # not a writer
    with pytest.raises(InvariantViolation):
        c.fragment_done("t1", 1, ok=True, wrote=True)  # after procedure_done
    with pytest.raises(InvariantViolation):
        c.begin("t1", None, 0.2)  # same id twice


def test_two_different_decisions_for_one_txn_raise():
    c = deciding({1: True, 2: True})
    c.decision_logged("t1", COMMIT, 1.0)
    with pytest.raises(InvariantViolation):
        c.decision_logged("t1", ABORT, 1.1)
    c.decision_acked("t1", 2)
    with pytest.raises(InvariantViolation):
        c.decision_logged("t1", ABORT, 1.2)  # forgotten, but its outcome is remembered


# --- the simulator ----------------------------------------------------------------------

SIM_SEEDS = 1000
SIM_PARTITIONS = 4
SIM_TXNS = 5
SIM_PREPARE_TIMEOUT_S = 2.0
SIM_DECISION_RETRY_S = 0.5
SIM_COORD_TICK_S = 0.25
SIM_PART_TICK_S = 0.5
#: A participant aborts an unprepared txn on its own after this long (its coordinator went silent).
SIM_ACTIVE_TIMEOUT_S = 6.0
#: A prepared participant asks the holder to record abort (first writer wins) after this long;
#: the short one races the coordinator's own LogDecision.
SIM_IN_DOUBT_S = (1.0, 6.0)
SIM_ASK_RETRY_S = 1.0
SIM_TXN_START_MAX_S = 8.0
SIM_FAULTS_END_S = 15.0
SIM_END_S = 90.0
#: Fault profiles: (drop probability, coordinator crash per event, leader crash per event and partition).
SIM_PROFILES = [(0.0, 0.0, 0.0), (0.1, 0.0, 0.0), (0.0, 0.01, 0.003), (0.08, 0.008, 0.003), (0.15, 0.02, 0.006)]


@dataclass
class Part:
    """One partition: its leader's volatile state, and what its k-safe log keeps across a crash."""

    pid: int
    up: bool = True
    state: dict[str, str] = field(default_factory=dict)   # active/released/prepared/committed/aborted
    since: dict[str, float] = field(default_factory=dict)  # when the txn became active/prepared
    prepared: dict[str, tuple[int, ...]] = field(default_factory=dict)  # PREPARE record: the writers
    decisions: dict[str, str] = field(default_factory=dict)  # holder DECISION table, first writer wins
    voted_yes: set[str] = field(default_factory=set)
    next_ask_s: dict[str, float] = field(default_factory=dict)


@dataclass
class Plan:
    """One multi-partition procedure: fragments (partition, wrote, ok) and whether it returns."""

    txn: str
    fragments: list[tuple[int, bool, bool]]
    proc_ok: bool
    begun: bool = False
    returned: bool = False
    failed: bool = False
    touched: set[int] = field(default_factory=set)
    writers: set[int] = field(default_factory=set)


class Sim:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.drop_p, self.coord_crash_p, self.part_crash_p = self.rng.choice(SIM_PROFILES)
        self.yes_p = self.rng.choice([1.0, 0.9, 0.7])
        self.in_doubt_s = self.rng.choice(SIM_IN_DOUBT_S)
        self.now = 0.0
        self.events: list[tuple[float, int, Callable[..., None], tuple]] = []
        self.order = itertools.count()
        self.in_flight = 0
        self.parts = [Part(p) for p in range(SIM_PARTITIONS)]
        self.core: CoordinatorCore | None = self.new_core()
        self.incarnation = 0
        self.replies: dict[str, list[bool | None]] = {}
        self.plans = [self.plan(i) for i in range(SIM_TXNS)]
        self.violations: list[str] = []
        self.stats: Counter[str] = Counter()

    def new_core(self) -> CoordinatorCore:
        return CoordinatorCore(prepare_timeout_s=SIM_PREPARE_TIMEOUT_S, decision_retry_s=SIM_DECISION_RETRY_S)

    def plan(self, i: int) -> Plan:
        touched = self.rng.sample(range(SIM_PARTITIONS), self.rng.randint(1, SIM_PARTITIONS))
        fragments = [(p, self.rng.random() < 0.7, self.rng.random() < 0.95)
                     for p in touched for _ in range(self.rng.randint(1, 2))]
        return Plan(f"t{i}", fragments, proc_ok=self.rng.random() < 0.93)

    # -- event loop ----------------------------------------------------------------------

    def at(self, delay_s: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self.events, (self.now + delay_s, next(self.order), fn, args))

    def faulty(self) -> bool:
        return self.now < SIM_FAULTS_END_S

    def send(self, fn: Callable[..., None], *args: Any) -> None:
        """A message: maybe dropped, delayed (sometimes long), so reordered."""
        if self.faulty() and self.rng.random() < self.drop_p:
            self.stats["dropped"] += 1
            return
        late = self.faulty() and self.rng.random() < 0.1
        delay_s = self.rng.uniform(0.3, 4.0) if late else self.rng.uniform(0.001, 0.3)
        self.in_flight += 1
        self.at(delay_s, self.deliver, fn, args)

    def deliver(self, fn: Callable[..., None], args: tuple) -> None:
        self.in_flight -= 1
        fn(*args)

    def run(self) -> Counter[str]:
        for plan in self.plans:
            self.at(self.rng.uniform(0.0, SIM_TXN_START_MAX_S), self.start, plan)
        self.at(SIM_COORD_TICK_S, self.coord_tick)
        self.at(SIM_PART_TICK_S, self.part_tick)
        while self.events and self.now < SIM_END_S:
            self.now, _, fn, args = heapq.heappop(self.events)
            fn(*args)
            if self.faulty():
                self.maybe_crash()
            elif self.quiescent():
                break
        self.check()
        return self.stats

    def quiescent(self) -> bool:
        return (self.in_flight == 0 and self.core is not None and not self.core.status()
                and all(p.up for p in self.parts)
                and not any(st in ("active", "prepared") for p in self.parts for st in p.state.values()))

    def maybe_crash(self) -> None:
        if self.core is not None and self.rng.random() < self.coord_crash_p:
            self.crash_coord()
        for part in self.parts:
            if part.up and self.rng.random() < self.part_crash_p:
                self.crash_part(part)

    # -- the coordinator shell -------------------------------------------------------------

    def start(self, plan: Plan) -> None:
        if self.core is None:
            self.stats["refused"] += 1  # the client's call fails at once: nothing ran
            return
        self.core.begin(plan.txn, f"req-{plan.txn}", self.now)
        plan.begun = True
        self.at(self.rng.uniform(0.01, 0.1), self.step, plan, 0, self.incarnation)

    def step(self, plan: Plan, i: int, incarnation: int) -> None:
        """The procedure's i-th fragment call (synchronous), or its return."""
        if self.core is None or incarnation != self.incarnation:
            return  # the procedure died with its coordinator
        if i == len(plan.fragments):
            result = "ok" if plan.proc_ok else ProcedureFailed("raised", txn=plan.txn)
            plan.returned = True
            self.execute(self.core.procedure_done(plan.txn, plan.proc_ok, result, self.now))
            return
        p, wrote, ok = plan.fragments[i]
        plan.touched.add(p)
        if wrote:
            plan.writers.add(p)
        ran = self.run_fragment(self.parts[p], plan.txn)
        plan.failed |= not (ok and ran)
        self.execute(self.core.fragment_done(plan.txn, p, ok and ran, wrote))
        self.at(self.rng.uniform(0.01, 0.1), self.step, plan, i + 1, incarnation)

    def execute(self, actions: list) -> None:
        """Carry out the core's actions in order; the coordinator may crash before any of them."""
        inc = self.incarnation
        for a in actions:
            if self.faulty() and self.rng.random() < self.coord_crash_p * 10:
                self.crash_coord()
                return
            if isinstance(a, SendPrepare):
                for p in a.partitions:
                    self.send(self.on_prepare, p, a.txn, a.partitions, inc)
            elif isinstance(a, SendAbort):
                for p in a.partitions:
                    self.send(self.on_abort, p, a.txn)
            elif isinstance(a, Release):
                for p in a.partitions:
                    self.send(self.on_release, p, a.txn)
            elif isinstance(a, LogDecision):
                self.stats[f"log_{a.outcome}"] += 1
                self.send(self.on_log_decision, a.holder, a.txn, a.outcome, inc)
            elif isinstance(a, SendDecision):
                self.expect(a.partitions and min(a.partitions) > min(self.writers_of(a.txn)),
                            f"{a}: sent to the holder or to nobody")
                for p in a.partitions:
                    self.send(self.on_decision, p, a.txn, a.outcome, inc)
            elif isinstance(a, Reply):
                self.replies.setdefault(a.txn, []).append(a.committed)
                self.stats[f"reply_{a.committed}"] += 1
            else:
                self.expect(False, f"unknown action {a!r}")

    def writers_of(self, txn: str) -> tuple[int, ...]:
        for part in self.parts:
            if txn in part.prepared:
                return part.prepared[txn]
        return (SIM_PARTITIONS,)

    def to_coord(self, incarnation: int, event: Callable[[CoordinatorCore], list]) -> None:
        """A message to the coordinator: lost if the incarnation that asked is gone."""
        if self.core is not None and incarnation == self.incarnation:
            self.execute(event(self.core))

    def coord_tick(self) -> None:
        if self.core is not None:
            self.execute(self.core.tick(self.now))
        self.at(SIM_COORD_TICK_S, self.coord_tick)

    def crash_coord(self) -> None:
        self.stats["coordinator_crashes"] += 1
        self.core = None
        self.incarnation += 1
        self.at(self.rng.uniform(0.3, 3.0), self.restart_coord)

    def restart_coord(self) -> None:
        """A new incarnation asks the live leaders for prepared txns and what their holders recorded.

        A holder that is down or slow to answer counts as "nothing recorded": the
        recovery's LogDecision(abort) then meets whatever it did record (first writer wins).
        """
        in_doubt: dict[str, InDoubt] = {}
        for part in self.parts:
            if not part.up:
                continue
            for txn, st in part.state.items():
                if st == "prepared":
                    writers = part.prepared[txn]
                    holder = self.parts[min(writers)]
                    answered = holder.up and self.rng.random() < 0.7  # else its answer timed out
                    recorded = holder.decisions.get(txn) if answered else None
                    in_doubt[txn] = InDoubt(txn, list(writers), min(writers), recorded)
        self.stats["recovered_txns"] += len(in_doubt)
        self.core = self.new_core()
        self.execute(self.core.recover(in_doubt, self.now))

    # -- participants ------------------------------------------------------------------------

    def crash_part(self, part: Part) -> None:
        """The leader dies: unprepared work is lost; PREPARE records and decisions survive (k-safe)."""
        self.stats["leader_crashes"] += 1
        part.up = False
        for txn, st in part.state.items():
            if st == "active":
                part.state[txn] = "aborted"
        self.at(self.rng.uniform(0.2, 2.0), self.restart_part, part)

    def restart_part(self, part: Part) -> None:
        part.up = True

    def run_fragment(self, part: Part, txn: str) -> bool:
        if not part.up or part.state.get(txn) not in (None, "active"):
            return False  # dead leader, or earlier work of this txn was lost with one
        part.state[txn] = "active"
        part.since[txn] = self.now
        return True

    def on_prepare(self, p: int, txn: str, writers: tuple[int, ...], inc: int) -> None:
        part = self.parts[p]
        if not part.up:
            return
        st = part.state.get(txn)
        self.expect(st != "committed", f"p{p}: PREPARE for committed {txn}")
        yes = st == "prepared" or (st == "active" and self.rng.random() < self.yes_p)
        if yes and st == "active":
            part.state[txn], part.since[txn], part.prepared[txn] = "prepared", self.now, writers
            part.voted_yes.add(txn)
            if self.faulty() and self.rng.random() < self.part_crash_p * 20:
                self.crash_part(part)  # logged PREPARE, died before voting
                return
        elif not yes:
            part.state[txn] = "aborted"
        self.stats[f"vote_{yes}"] += 1
        self.send(self.to_coord, inc, lambda c: c.vote(txn, p, yes, self.now))

    def on_abort(self, p: int, txn: str) -> None:
        if self.parts[p].up:
            self.apply(self.parts[p], txn, ABORT)

    def on_release(self, p: int, txn: str) -> None:
        part = self.parts[p]
        st = part.state.get(txn)
        self.expect(st not in ("prepared", "committed"), f"p{p}: release of {txn} in state {st}")
        if part.up and st == "active":
            part.state[txn] = "released"

    def on_decision(self, p: int, txn: str, outcome: str, inc: int) -> None:
        if self.parts[p].up:
            self.apply(self.parts[p], txn, outcome)
            self.send(self.to_coord, inc, lambda c: c.decision_acked(txn, p))

    def on_log_decision(self, h: int, txn: str, outcome: str, inc: int) -> None:
        holder = self.parts[h]
        if not holder.up:
            if self.rng.random() < 0.5:  # the caller sees the dead actor at once
                self.send(self.to_coord, inc, lambda c: c.decision_failed(txn, self.now))
            return
        recorded = self.record(holder, txn, outcome)
        if recorded != outcome:
            self.stats[f"first_writer_{recorded}_beat_{outcome}"] += 1
        if self.faulty() and self.rng.random() < self.part_crash_p * 20:
            self.crash_part(holder)  # recorded, died before answering
            self.send(self.to_coord, inc, lambda c: c.decision_failed(txn, self.now))
            return
        self.send(self.to_coord, inc, lambda c: c.decision_logged(txn, recorded, self.now))

    def record(self, holder: Part, txn: str, outcome: str) -> str:
        """First writer wins; recording is also the holder's own commit or abort."""
        if txn not in holder.decisions:
            holder.decisions[txn] = outcome
            self.apply(holder, txn, outcome)
        return holder.decisions[txn]

    def apply(self, part: Part, txn: str, outcome: str) -> None:
        st = part.state.get(txn)
        if outcome == COMMIT:
            self.expect(st in ("prepared", "committed"), f"p{part.pid}: commit of {txn} in state {st}")
            part.state[txn] = "committed"
        else:
            self.expect(st != "committed", f"p{part.pid}: abort of committed {txn}")
            part.state[txn] = "aborted"

    def part_tick(self) -> None:
        for part in self.parts:
            if part.up:
                self.part_timeouts(part)
        self.at(SIM_PART_TICK_S, self.part_tick)

    def part_timeouts(self, part: Part) -> None:
        for txn, st in list(part.state.items()):
            waited_s = self.now - part.since.get(txn, self.now)
            if st == "active" and waited_s > SIM_ACTIVE_TIMEOUT_S:
                part.state[txn] = "aborted"
                self.stats["unilateral_aborts"] += 1
            elif st == "prepared" and waited_s > self.in_doubt_s and self.now >= part.next_ask_s.get(txn, 0.0):
                part.next_ask_s[txn] = self.now + SIM_ASK_RETRY_S
                self.stats["in_doubt_asks"] += 1
                self.send(self.on_resolve, min(part.prepared[txn]), part.pid, txn)

    def on_resolve(self, h: int, asker: int, txn: str) -> None:
        """A participant in doubt asks the holder: record abort unless something is recorded."""
        holder = self.parts[h]
        if holder.up:
            recorded = self.record(holder, txn, ABORT)
            self.send(self.on_resolved, asker, txn, recorded)

    def on_resolved(self, p: int, txn: str, recorded: str) -> None:
        part = self.parts[p]
        if part.up and part.state.get(txn) == "prepared":
            self.apply(part, txn, recorded)

    # -- checks ----------------------------------------------------------------------------

    def expect(self, condition: Any, message: str) -> None:
        if not condition:
            self.violations.append(f"t={self.now:.3f}s: {message}")

    def check(self) -> None:
        self.expect(self.quiescent(), f"not quiescent at the end: coordinator {self.core and self.core.status()}, "
                                      f"{self.in_flight} messages in flight, states {[p.state for p in self.parts]}")
        for plan in self.plans:
            if plan.begun:
                self.check_plan(plan)
        assert not self.violations, f"seed {self.seed}: " + "; ".join(self.violations[:5])

    def check_plan(self, plan: Plan) -> None:
        txn = plan.txn
        states = {p: self.parts[p].state.get(txn) for p in plan.touched}
        committed = [p for p in plan.writers if states[p] == "committed"]
        replies = self.replies.get(txn, [])
        self.expect(len(replies) <= 1, f"{txn}: {len(replies)} replies")
        if committed:
            self.expect(len(committed) == len(plan.writers), f"{txn}: partly committed: {states}")
            self.expect(all(txn in self.parts[p].voted_yes for p in plan.writers),
                        f"{txn}: committed without every writer's YES")
            self.stats["committed_writers_%d" % min(len(plan.writers), 2)] += 1
        else:
            self.expect(all(states[p] in (None, "aborted") for p in plan.writers), f"{txn}: writers {states}")
        self.expect(all(states[p] in (None, "released", "aborted") for p in plan.touched - plan.writers),
                    f"{txn}: read-only participants {states}")
        if plan.writers:
            recorded = self.parts[min(plan.writers)].decisions.get(txn)
            self.expect(recorded in (None, COMMIT if committed else ABORT), f"{txn}: holder recorded {recorded}")
        if replies and replies[0] is not None:
            read_only_ok = plan.returned and plan.proc_ok and not plan.failed
            committed_reply = bool(committed) if plan.writers else read_only_ok
            self.expect(replies[0] == committed_reply, f"{txn}: replied {replies[0]} but states {states}")


def run_sim(seed: int) -> Counter[str]:
    """One simulated run; raises AssertionError naming the seed on any violation (or core invariant)."""
    try:
        return Sim(seed).run()
    except InvariantViolation as e:
        raise AssertionError(f"seed {seed}: coordinator invariant: {e}") from e


def test_simulator_keeps_atomicity_validity_and_liveness():
    totals: Counter[str] = Counter()
    for seed in range(SIM_SEEDS):
        totals += run_sim(seed)
    # The runs must have exercised every path, or they prove little.
    for key in ("committed_writers_1", "committed_writers_2", "vote_False", "dropped", "coordinator_crashes",
                "leader_crashes", "recovered_txns", "in_doubt_asks", "unilateral_aborts", "reply_None",
                "first_writer_abort_beat_commit", "first_writer_commit_beat_abort", "log_abort"):
        assert totals[key] > 0, f"no {key} in {SIM_SEEDS} seeds: {dict(totals)}"


def test_simulator_replays_a_seed_exactly():
    assert run_sim(12345) == run_sim(12345)


@pytest.mark.parametrize("value", [0, 0.1, -1, "soon", True])
def test_mp_settle_after_s_is_validated(value):
    from actors.config import ClusterConfig
    with pytest.raises(InvalidConfig) as err:
        ClusterConfig(mp_settle_after_s=value).validate()
    assert err.value.details["setting"] == "mp_settle_after_s"
    assert ClusterConfig(mp_settle_after_s=0.5).validate().replica_settings()["mp_settle_after_s"] == 0.5
