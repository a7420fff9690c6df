"""List-append workload: fragments on in-process partition cores, the txn grouping, input
validation, the generator, the Elle mapping and both checkers.  No Ray.

Multi-partition procedures run here through ``FakeMP``: every fragment goes through
``PartitionCore.run_fragment_mp`` (real locks and undo) inside one MP txn id, then every
partition touched prepares and commits -- or aborts when the procedure failed.  Arguments
and results are pickled on the way, as Ray does (tuples stay tuples, lists stay lists).
"""

from __future__ import annotations

import inspect
import itertools
import pickle
import random
from collections import Counter, defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.errors import OhmError, UserAbort
from actors.participant import MP_TXN_BIT
from actors.partition_core import PartitionCore
from actors.routing import partition_of
from actors.schema import Schema
from recovery.log_format import LogCodec
from recovery.redo import INSERT, UPDATE, RedoRecord
from workloads import append, append_check
from workloads.history import FAIL, OK, UNKNOWN, History, Op
from workloads.workload import EVIDENCE_MAX

PARTITIONS = 3
CORE_SCHEMA = Schema(tables=[append.lists])
_txn_ids = itertools.count(1)


def _cores(partitions: int = PARTITIONS) -> list[PartitionCore]:
    return [PartitionCore(CORE_SCHEMA, p, partitions) for p in range(partitions)]


def _stored(cores: list[PartitionCore], key: int) -> list[int] | None:
    row = cores[partition_of(key, len(cores))].tables[append.TABLE].get(key)
    return None if row is None else row["vals"]


def _keys_on(partition: int, n: int, partitions: int = PARTITIONS) -> list[int]:
    return [k for k in range(10_000) if partition_of(k, partitions) == partition][:n]


class FakeMP:
    """The ``tx`` of a multi-partition procedure, its fragments run in one MP txn on in-process cores."""

    def __init__(self, cores: list[PartitionCore], read_only: bool) -> None:
        self.cores, self.partitions, self.read_only = cores, len(cores), read_only
        self.txn = MP_TXN_BIT | next(_txn_ids)
        self.touched: set[int] = set()
        self.rounds: list[tuple[list[int], bool]] = []  # (partitions, last) per round

    def run(self, key, fragment, *args):
        return self.run_many([(key, fragment, args)])[0]

    def run_many(self, calls, last: bool = False):
        calls = list(calls)
        parts = [partition_of(key, self.partitions) for key, _, _ in calls]
        assert len(set(parts)) == len(parts), "two fragments of one round on one partition"
        self.rounds.append((parts, last))
        out = []
        for p, (_, fragment, args) in zip(parts, calls):
            self.touched.add(p)
            args = pickle.loads(pickle.dumps(tuple(args)))
            done = self.cores[p].run_fragment_mp(self.txn, self.txn, fragment, args, now_s=0.0,
                                                 read_only=self.read_only)
            assert done.conflict is None
            if done.error is not None:
                raise done.error
            out.append(pickle.loads(pickle.dumps(done.result)))
        return out

    def run_all(self, fragment, *args):
        return self.run_many([(_keys_on(p, 1, self.partitions)[0], fragment, args) for p in range(self.partitions)])

    def abort(self, reason: str = "aborted by procedure"):
        raise UserAbort(str(reason), reason=str(reason))

    def finish(self, ok: bool) -> list[RedoRecord]:
        """Commit (or release, read-only) every partition touched, or abort them; the records logged."""
        records: list[RedoRecord] = []
        participants = tuple(sorted(self.touched))
        for p in participants:
            mp = self.cores[p].mp
            if not ok:
                mp.abort(self.txn)
            elif self.read_only:
                mp.release(self.txn)
            else:
                yes, logged, why = mp.prepare(self.txn, participants, participants[0], 0.0)
                assert yes, why
                records += logged + mp.commit(self.txn)
        return records


def run_mp(cores: list[PartitionCore], proc, *args, tx_out: list | None = None):
    """The procedure's result (as the client gets it), or its error after every fragment was undone."""
    args = pickle.loads(pickle.dumps(args))
    proc.check_args(args)
    tx = FakeMP(cores, proc.read_only)
    if tx_out is not None:
        tx_out.append(tx)
    try:
        result = proc.func(tx, *args)
    except OhmError as err:
        tx.finish(ok=False)
        return err
    tx.finish(ok=True)
    return pickle.loads(pickle.dumps(result))


class CoresDB:
    """A stand-in for ``Cluster``: the append procedures on in-process cores."""

    PROCEDURES = {"txn": append.txn, "read_all": append.read_all}

    def __init__(self, cores: list[PartitionCore]) -> None:
        self.cores = cores
        self.calls: Counter = Counter()

    def call(self, name: str, *args):
        self.calls[name] += 1
        out = run_mp(self.cores, self.PROCEDURES[name], *args)
        if isinstance(out, OhmError):
            raise out
        return out

    def call_many(self, name: str, args_list):
        self.calls[name] += len(args_list)
        return [run_mp(self.cores, self.PROCEDURES[name], *a) for a in args_list]


class DictDB:
    """A stand-in whose ``read_all`` answers from a dict of final lists."""

    def __init__(self, lists: dict[int, list[int]]) -> None:
        self.lists = lists
        self.calls: list[tuple] = []

    def call(self, name: str, *args):
        self.calls.append((name, *args))
        assert name == "read_all"
        (keys,) = args
        return {k: list(self.lists[k]) for k in keys if k in self.lists}


# --- the table and the fragments ---------------------------------------------------------


def test_list_column_round_trips_through_the_redo_log():
    codec = LogCodec(CORE_SCHEMA)
    records = [RedoRecord(1, INSERT, "lists", 1, {"key": 1, "vals": []}),
               RedoRecord(1, UPDATE, "lists", 2, {"key": 2, "vals": [3, 7 * append.VALUE_PROCESS_STRIDE + 1]})]
    batch, _meta = codec.encode(records, 0, 1)
    assert codec.decode(batch) == records


def test_fragments_are_module_level_functions():
    for fragment in append.FRAGMENTS:
        assert inspect.isfunction(fragment) and fragment.__qualname__ == fragment.__name__
        assert pickle.loads(pickle.dumps(fragment)) is fragment


def _fragment(core: PartitionCore, fragment, *args, read_only: bool = False):
    txn = MP_TXN_BIT | next(_txn_ids)
    return txn, core.run_fragment_mp(txn, txn, fragment, args, now_s=0.0, read_only=read_only)


def test_apply_mops_runs_in_order_and_writes_each_key_once():
    core = _cores(1)[0]
    mops = [("r", 1, None), ("append", 1, 10), ("r", 1, None), ("append", 1, 11), ("append", 2, 20),
            ("r", 2, None), ("r", 3, None)]
    txn, done = _fragment(core, append.apply_mops, mops)
    assert done.error is None
    assert done.result == [["r", 1, []], ["append", 1, 10], ["r", 1, [10]], ["append", 1, 11],
                           ["append", 2, 20], ["r", 2, [20]], ["r", 3, []]]
    yes, logged, _ = core.mp.prepare(txn, (0,), 0, 0.0)
    assert yes and [(r.op, r.key) for r in logged[1:]] == [(INSERT, 1), (INSERT, 2)]
    core.mp.commit(txn)
    assert _stored([core], 1) == [10, 11] and _stored([core], 2) == [20] and _stored([core], 3) is None
    txn, done = _fragment(core, append.apply_mops, [["append", 1, 12], ["r", 1, None]])
    assert done.result == [["append", 1, 12], ["r", 1, [10, 11, 12]]]
    _, logged, _ = core.mp.prepare(txn, (0,), 0, 0.0)
    assert [(r.op, r.key, r.row["vals"]) for r in logged[1:]] == [(UPDATE, 1, [10, 11, 12])]


def test_apply_mops_reads_are_copies_and_a_bad_kind_writes_nothing():
    core = _cores(1)[0]
    txn, done = _fragment(core, append.apply_mops, [("append", 5, 1), ("r", 5, None)])
    done.result[1][2].append(99)  # the caller's copy
    core.mp.prepare(txn, (0,), 0, 0.0)
    core.mp.commit(txn)
    assert _stored([core], 5) == [1]
    txn, done = _fragment(core, append.apply_mops, [("append", 5, 2), ("w", 5, 3)])
    assert isinstance(done.error, UserAbort) and "'w'" in done.error.message
    core.mp.abort(txn)
    assert _stored([core], 5) == [1]


def test_read_lists_fragment():
    core = _cores(1)[0]
    core.load("lists", [{"key": 1, "vals": [4, 5]}])
    _, done = _fragment(core, append.read_lists, [2, 1], read_only=True)
    assert done.result == [[], [4, 5]]


# --- grouping by partition ------------------------------------------------------------------

MOP = st.one_of(st.tuples(st.just("append"), st.integers(0, 50), st.integers(0, 10**6)),
                st.tuples(st.just("r"), st.integers(0, 50), st.none()))


@settings(max_examples=100, deadline=None)
@given(mops=st.lists(MOP, min_size=1, max_size=20), partitions=st.integers(1, 6))
def test_split_keeps_order_per_partition_and_merge_restores_the_transaction(mops, partitions):
    groups = append.split_by_partition(mops, partitions)
    assert sorted(i for positions, _ in groups for i in positions) == list(range(len(mops)))
    firsts = [positions[0] for positions, _ in groups]
    assert firsts == sorted(firsts)
    seen_parts = []
    for positions, part in groups:
        assert positions == sorted(positions)
        assert part == [tuple(mops[i]) for i in positions]
        parts = {partition_of(key, partitions) for _, key, _ in part}
        assert len(parts) == 1
        seen_parts += parts
    assert len(seen_parts) == len(set(seen_parts))
    assert append.merge_results(groups, [part for _, part in groups]) == [list(m) for m in mops]


def test_merge_refuses_a_short_answer():
    groups = append.split_by_partition([("append", 1, 1), ("r", 1, None)], 1)
    with pytest.raises(ValueError, match="2 micro-ops sent to a partition, 1 answered"):
        append.merge_results(groups, [[["append", 1, 1]]])
    with pytest.raises(ValueError):
        append.merge_results(groups, [])


def test_group_keys_dedups_and_groups():
    groups = append.group_keys([3, 1, 3, 2, 1], 2)
    assert sorted(k for g in groups for k in g) == [1, 2, 3]
    assert all(len({partition_of(k, 2) for k in g}) == 1 for g in groups)


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("mops, message", [
    ([], "no micro-ops"),
    ([("append", 1)], "micro-op 0 ('append', 1) is not a 3-item list or tuple"),
    ([("r", 1, None), "abc"], "micro-op 1 'abc' is not a 3-item list or tuple"),
    ([["w", 1, 2]], "micro-op 0 ['w', 1, 2]: kind 'w' is not 'append' or 'r'"),
    ([["append", "k", 2]], "micro-op 0 ['append', 'k', 2]: key 'k' is not an int64"),
    ([["append", True, 2]], "key True is not an int64"),
    ([["append", 1, 1 << 63]], f"appended value {1 << 63} is not an int64"),
    ([["append", 1, 2.0]], "appended value 2.0 is not an int64"),
    ([["r", 1, []]], "micro-op 0 ['r', 1, []]: a read's value must be None, got []"),
    ([("r", 1, None)] * (append.TXN_MOPS_MAX + 1), f"at most {append.TXN_MOPS_MAX}"),
])
def test_validate_mops_names_the_bad_micro_op(mops, message):
    bad = append.validate_mops(mops)
    assert bad is not None and bad.startswith(append.BAD_TXN) and message in bad


def test_validate_mops_accepts_lists_and_tuples():
    assert append.validate_mops([("append", 1, 2), ["r", -5, None], ["append", 1, -(1 << 63)]]) is None


# --- the procedures -----------------------------------------------------------------------------


def test_procedures_and_schema():
    assert append.txn.multi_partition and not append.txn.read_only and append.txn.params == ("mops",)
    assert append.read_all.multi_partition and append.read_all.read_only
    s = append.schema()
    assert set(s.procedures) == {"txn", "read_all"} and s.tables["lists"].partition_by == "key"
    assert append.AppendWorkload().initial_data() == {"lists": []}


def test_txn_spans_partitions_in_one_last_round_and_answers_in_order():
    cores = _cores()
    a, b, c = (_keys_on(p, 1)[0] for p in range(PARTITIONS))
    a2 = _keys_on(0, 2)[1]
    mops = [["append", b, 1], ["r", a, None], ["append", a, 2], ["append", c, 3], ["r", b, None],
            ["append", a2, 4], ["r", a, None]]
    txs: list = []
    out = run_mp(cores, append.txn, mops, tx_out=txs)
    assert out == [["append", b, 1], ["r", a, []], ["append", a, 2], ["append", c, 3], ["r", b, [1]],
                   ["append", a2, 4], ["r", a, [2]]]
    [(parts, last)] = txs[0].rounds
    assert last and sorted(parts) == list(range(PARTITIONS))
    assert (_stored(cores, a), _stored(cores, a2), _stored(cores, b), _stored(cores, c)) == ([2], [4], [1], [3])
    out = run_mp(cores, append.txn, [("append", a, 5), ("r", a, None)], tx_out=txs)
    assert out == [["append", a, 5], ["r", a, [2, 5]]]
    assert txs[1].rounds == [([0], True)]  # one partition: a one-entry last round


def test_txn_on_one_partition_cluster():
    cores = _cores(1)
    assert run_mp(cores, append.txn, [("append", 1, 1), ("append", 2, 2), ("r", 1, None)]) == \
        [["append", 1, 1], ["append", 2, 2], ["r", 1, [1]]]


def test_txn_refuses_bad_input_and_writes_nothing():
    cores = _cores()
    err = run_mp(cores, append.txn, [("append", 1, 1), ("append", 2, "x")])
    assert isinstance(err, UserAbort)
    assert err.message == "bad txn: micro-op 1 ('append', 2, 'x'): appended value 'x' is not an int64"
    assert _stored(cores, 1) is None
    assert isinstance(run_mp(cores, append.txn, []), UserAbort)
    with pytest.raises(OhmError):
        run_mp(cores, append.txn, ("append", 1, 1))  # not a list: refused by the argument check


def test_read_all_is_one_read_only_round():
    cores = _cores()
    keys = list(range(12))
    for k in keys[:6]:
        run_mp(cores, append.txn, [("append", k, k + 100)])
    txs: list = []
    got = run_mp(cores, append.read_all, keys + [3], tx_out=txs)
    assert got == {k: ([k + 100] if k < 6 else []) for k in keys}
    [(parts, last)] = txs[0].rounds
    assert not last and sorted(parts) == list(range(PARTITIONS))
    assert run_mp(cores, append.read_all, [], tx_out=txs) == {} and txs[1].rounds == []
    assert isinstance(run_mp(cores, append.read_all, ["k"]), UserAbort)


# --- the generator ------------------------------------------------------------------------------


def _generate(process: int, seed: int, batches: int, n: int = 10, **kw) -> list[list[list]]:
    client = append.AppendWorkload(**kw).client(process, random.Random(seed))
    out = []
    for _ in range(batches):
        name, args = client.next_batch(n)
        assert name == "txn" and len(args) == n
        out += [a[0] for a in args]
    return out


def test_generated_transactions_are_valid_and_values_unique_across_clients():
    seen: dict[int, set[int]] = defaultdict(set)
    for process in range(4):
        values = []
        for mops in _generate(process, seed=7, batches=50):
            assert append.validate_mops(mops) is None and 1 <= len(mops) <= append.MOPS_MAX_DEFAULT
            for kind, key, value in mops:
                if kind == "append":
                    assert type(value) is int and value // append.VALUE_PROCESS_STRIDE == process
                    assert value not in seen[key]
                    seen[key].add(value)
                    values.append(value)
        assert values == sorted(values) and values[0] == process * append.VALUE_PROCESS_STRIDE + 1


def test_generator_is_deterministic_per_seed_and_honours_the_read_fraction():
    assert _generate(2, 5, 20) == _generate(2, 5, 20)
    assert _generate(2, 5, 20) != _generate(2, 6, 20)
    kinds = Counter(m[0] for mops in _generate(0, 1, 100, read_fraction=0.25) for m in mops)
    assert 0.2 < kinds["r"] / sum(kinds.values()) < 0.3
    assert {m[0] for mops in _generate(0, 1, 20, read_fraction=0.0) for m in mops} == {"append"}
    assert max(len(m) for m in _generate(0, 1, 20, mops_max=1)) == 1


def test_keys_rotate_staggered_and_are_shared_between_clients():
    keys, wl = 6, append.AppendWorkload(keys=6)
    a, b = wl.client(0, random.Random(1)), wl.client(3, random.Random(2))
    epoch = a.epoch
    assert epoch == append.epoch_txns(6, append.MOPS_MAX_DEFAULT, 0.5)
    assert epoch == round(append.KEY_APPENDS_PER_CLIENT * 6 / 1.25)  # 1.25 appends per transaction
    history = []
    for t in range(3 * epoch):
        a.txns = b.txns = t
        active = [a.key_of(s) for s in range(keys)]
        assert active == [b.key_of(s) for s in range(keys)]  # same count, same keys: contention
        assert len(set(active)) == keys and all(k % keys == s for s, k in enumerate(active))
        history.append(active)
    assert history[0] == list(range(keys))
    changes = [t for t in range(1, len(history)) if history[t] != history[t - 1]]
    assert all(sum(x != y for x, y in zip(history[t], history[t - 1])) == 1 for t in changes)  # one at a time
    for s in range(keys):
        slot_keys = [h[s] for h in history]
        runs = [len(list(g)) for _, g in itertools.groupby(slot_keys)]
        assert all(r == epoch for r in runs[1:-1]) and slot_keys == sorted(slot_keys)


def test_lists_stay_short():
    per_key: Counter = Counter()
    for process in range(4):
        for mops in _generate(process, 3, batches=100):
            per_key.update(key for kind, key, _ in mops if kind == "append")
    assert len(per_key) > 12  # keys retired
    assert max(per_key.values()) < 4 * 4 * append.KEY_APPENDS_PER_CLIENT


def test_workload_and_client_reject_bad_arguments():
    for kw in ({"keys": 0}, {"mops_max": 0}, {"mops_max": append.TXN_MOPS_MAX + 1}, {"read_fraction": 1.0},
               {"read_fraction": -0.1}):
        with pytest.raises(ValueError):
            append.AppendWorkload(**kw)
    with pytest.raises(ValueError):
        append.AppendWorkload().client(-1, random.Random(0))


def test_client_refuses_to_reuse_another_clients_values():
    client = append.AppendWorkload().client(0, random.Random(0))
    client.seq = append.VALUE_PROCESS_STRIDE - 2
    client._value()
    with pytest.raises(RuntimeError, match="collide"):
        client._value()


# --- the history mapping ----------------------------------------------------------------------------


def _op(op_id, type_, mops, result=None, f="txn", process=0, t=1.0):
    return Op(op_id, process, f, (mops,), float(op_id), type_, float(op_id) + t, result)


def test_to_elle_maps_ok_fail_unknown_and_skips_other_ops():
    mops = [["append", 1, 5], ["r", 1, None]]
    ops = [_op(0, OK, mops, [["append", 1, 5], ["r", 1, [5]]]), _op(1, FAIL, mops), _op(2, UNKNOWN, mops),
           _op(3, OK, [[1]], {1: [5]}, f="read_all")]
    out = append.to_elle(ops)
    assert [(o.id, o.type) for o in out] == [(0, "ok"), (1, "fail"), (2, "info")]
    assert out[0].mops == [("append", 1, 5), ("r", 1, [5])]
    assert out[1].mops == out[2].mops == [("append", 1, 5), ("r", 1, None)]
    assert (out[0].invoke_s, out[0].complete_s, out[0].process) == (0.0, 1.0, 0)


@pytest.mark.parametrize("result", [None, [["append", 1, 5]], [["append", 1, 6], ["r", 1, [5]]],
                                    [["append", 1, 5], ["r", 2, [5]]], [["append", 1, 5], ["r", 1, None]]])
def test_to_elle_refuses_a_result_that_does_not_answer_the_invocation(result):
    with pytest.raises(append_check.HistoryError, match="op 0"):
        append.to_elle([_op(0, OK, [["append", 1, 5], ["r", 1, None]], result)])


def test_final_read_op_comes_after_everything():
    ops = [_op(4, OK, [["append", 1, 5]], [["append", 1, 5]], t=10.0), _op(2, FAIL, [["append", 2, 6]])]
    final = append.final_read_op(ops, {2: [], 1: [5]})
    assert (final.id, final.process, final.type) == (5, -1, "ok")
    assert final.invoke_s == final.complete_s == 15.0
    assert final.mops == [("r", 1, [5]), ("r", 2, [])]


# --- the checkers -------------------------------------------------------------------------------------


def _run_clean(partitions: int = PARTITIONS, clients: int = 3, batches: int = 30, n: int = 5):
    """A serial run of the generator against in-process cores: the history and the db."""
    db = CoresDB(_cores(partitions))
    wl = append.AppendWorkload(keys=4)
    history = History(clock=itertools.count().__next__)
    gens = [wl.client(p, random.Random(p)) for p in range(clients)]
    for _ in range(batches):
        for process, gen in enumerate(gens):
            name, args = gen.next_batch(n)
            ops = history.invoke_many(process, name, args)
            history.complete_many(ops, db.call_many(name, args))
    return wl, db, history.ops()


def test_a_clean_run_passes_both_checks():
    wl, db, ops = _run_clean()
    assert all(op.type == OK for op in ops)
    before = db.calls["read_all"]
    verdicts = wl.check(db, ops)
    assert db.calls["read_all"] == before + 1
    assert verdicts["elle"].ok, verdicts["elle"].to_dict()
    assert verdicts["elle"].detail.startswith("valid: ")
    assert verdicts["elle"].evidence["counts"]["ok"] == len(ops) + 1
    assert verdicts["acknowledged_appends"].ok, verdicts["acknowledged_appends"].to_dict()
    assert "lost 0, duplicated 0" in verdicts["acknowledged_appends"].detail


def _corrupt(db: CoresDB, ops: list[Op], change) -> int:
    """Change one stored list that holds at least two values: change(list) -> list; its key."""
    key = next(k for k in append.appended_keys(ops) if len(_stored(db.cores, k) or []) >= 2)
    core = db.cores[partition_of(key, len(db.cores))]
    core.tables["lists"][key]["vals"] = change(list(core.tables["lists"][key]["vals"]))
    return key


def test_a_lost_acknowledged_append_fails():
    wl, db, ops = _run_clean()
    key = _corrupt(db, ops, lambda vals: vals[:-1])
    verdict = wl.check(db, ops)["acknowledged_appends"]
    assert not verdict.ok and list(verdict.evidence) == ["lost"]
    assert verdict.evidence["lost"][0].startswith(f"key {key}: acknowledged append")


def test_a_duplicated_value_fails_both_checks():
    wl, db, ops = _run_clean()
    key = _corrupt(db, ops, lambda vals: vals + [vals[0]])
    verdicts = wl.check(db, ops)
    assert not verdicts["acknowledged_appends"].ok
    first = _stored(db.cores, key)[0]
    duplicated = verdicts["acknowledged_appends"].evidence["duplicated"]
    assert duplicated == [f"key {key}: {first} is in the final list 2 times"]
    assert not verdicts["elle"].ok and "duplicate-elements" in verdicts["elle"].evidence["anomalies"]


def test_values_of_failed_unknown_and_nobody():
    ops = [_op(0, OK, [["append", 1, 10]], [["append", 1, 10]]), _op(1, FAIL, [["append", 1, 11]]),
           _op(2, UNKNOWN, [["append", 1, 12]]), _op(3, UNKNOWN, [["append", 2, 13]])]
    wl = append.AppendWorkload()
    verdicts = wl.check(DictDB({1: [10, 12], 2: []}), ops)
    assert verdicts["acknowledged_appends"].ok and verdicts["elle"].ok
    assert "1 acknowledged, 2 unknown (1 present), 1 failed" in verdicts["acknowledged_appends"].detail
    bad = wl.check(DictDB({1: [10, 11, 99], 2: [13, 13]}), ops)["acknowledged_appends"]
    assert not bad.ok
    assert bad.evidence == {"duplicated": ["key 2: 13 is in the final list 2 times"],
                            "failed_present": ["key 1: 11 of failed op 1 is in the final list"],
                            "unexpected": ["key 1: 99 is in the final list; nobody appended it"]}
    assert bad.detail.startswith("3 problem(s): key 2: 13")


def test_evidence_is_bounded_and_the_detail_counts_all():
    n = EVIDENCE_MAX + 5
    ops = [_op(i, OK, [["append", i, i]], [["append", i, i]]) for i in range(n)]
    verdict = append.AppendWorkload().check(DictDB({}), ops)["acknowledged_appends"]
    assert not verdict.ok and len(verdict.evidence["lost"]) == EVIDENCE_MAX
    assert verdict.detail.startswith(f"{n} problem(s)") and f"lost {n}" in verdict.detail


def test_a_g1c_cycle_fails_elle():
    # T0 appends x and reads y holding T1's append; T1 appends y and reads x holding T0's: wr both ways.
    ops = [_op(0, OK, [["append", 1, 1], ["r", 2, None]], [["append", 1, 1], ["r", 2, [2]]]),
           _op(1, OK, [["append", 2, 2], ["r", 1, None]], [["append", 2, 2], ["r", 1, [1]]])]
    db = DictDB({1: [1], 2: [2]})
    verdicts = append.AppendWorkload().check(db, ops)
    assert db.calls == [("read_all", [1, 2])]
    elle = verdicts["elle"]
    assert not elle.ok and elle.detail.startswith("invalid: G1c x1")
    assert elle.evidence["anomalies"]["G1c"][0]["cycle"] == [0, 1, 0]
    assert elle.evidence["anomaly_counts"] == {"G1c": 1}
    assert verdicts["acknowledged_appends"].ok


def test_a_g0_cycle_seen_by_the_final_read_fails_elle():
    ops = [_op(0, OK, [["append", 1, 1], ["append", 2, 1]], [["append", 1, 1], ["append", 2, 1]]),
           _op(1, OK, [["append", 1, 2], ["append", 2, 2]], [["append", 1, 2], ["append", 2, 2]])]
    verdicts = append.AppendWorkload().check(DictDB({1: [1, 2], 2: [2, 1]}), ops)
    assert not verdicts["elle"].ok and "G0" in verdicts["elle"].evidence["anomalies"]
    assert verdicts["acknowledged_appends"].ok


def test_a_malformed_history_fails_elle_without_crashing():
    ops = [_op(0, OK, [["append", 1, 1]], "garbage")]
    verdicts = append.AppendWorkload().check(DictDB({1: [1]}), ops)
    assert not verdicts["elle"].ok and verdicts["elle"].detail.startswith("malformed history: op 0")
    assert verdicts["acknowledged_appends"].ok


def test_no_transactions_no_final_read():
    db = DictDB({})
    verdicts = append.AppendWorkload().check(db, [_op(0, OK, [[1]], {}, f="read_all")])
    assert db.calls == [] and all(v.ok for v in verdicts.values())
