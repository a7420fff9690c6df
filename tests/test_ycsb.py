"""YCSB workload: the zipfian generators against YCSB's own numbers, the mixes, the procedure
on in-process partition cores, and the checkers against stand-in databases.  No Ray.

The known answers below come from YCSB's Java code (``ZipfianGenerator.nextLong``,
``ScrambledZipfianGenerator.nextValue``, ``Utils.fnvhash64``) run with the same
uniform draws.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.errors import InvalidArguments, Timeout, UserAbort
from actors.partition_core import PartitionCore, is_failure
from actors.routing import partition_of
from workloads import ycsb
from workloads.history import FAIL, OK, UNKNOWN, History, Op
from workloads.workload import EVIDENCE_MAX

PARTITIONS = 4
RECORDS = 500
FIELD = 24

# --- known answers from YCSB's Java code -------------------------------------------------------------

# The first 40 draws of random.Random(42), then some chosen ones.
KNOWN_U = [u for u in itertools.islice(iter(random.Random(42).random, None), 40)] + \
    [0.0, 0.03, 0.04, 0.05, 0.0999, 0.5, 0.999999, 0.9999999999]
KNOWN_ZIPF_1000 = [
    64, 0, 3, 2, 136, 86, 444, 0, 12, 0, 2, 23, 0, 2, 70, 31, 2, 44, 237, 0, 231, 101, 6, 1, 725, 6, 0, 0, 317,
    49, 233, 129, 29, 817, 8, 33, 276, 55, 353, 40, 0, 0, 0, 0, 0, 22, 999, 999,
]
KNOWN_SCRAMBLED_10000 = [
    1406, 7211, 6685, 8605, 5300, 9300, 3356, 6769, 8390, 7211, 4144, 4919, 7211, 965, 4183, 6530, 1079, 6520,
    3070, 7211, 1234, 6717, 5411, 7425, 6144, 6825, 7360, 7360, 5194, 7358, 9391, 9109, 2579, 3442, 1263, 181,
    6273, 9311, 3650, 6155, 7211, 7211, 6620, 6620, 5587, 260, 6089, 7570,
]
KNOWN_FNV = {
    0: 6284781860667377211, 1: 8517097267634966620, 2: 1820151046732198393, 255: 8064062821143829734,
    256: 2056600594528442646, 12345678901: 5686546334140306951, -1: 8289690350564177859,
    2**63 - 1: 8289549613075766851, -2**63: 6284922598155788219,
}


class FixedDraws:
    """A stand-in ``random.Random`` whose ``random()`` returns the given draws."""

    def __init__(self, draws: list[float]) -> None:
        self._draws = iter(draws)

    def random(self) -> float:
        return next(self._draws)


def test_zeta_matches_ycsb_and_is_fast():
    assert ycsb.zeta(1_000, 0.99) == 7.728953217284729
    assert ycsb.zeta(2, 0.99) == 1.0 + 1.0 / 2 ** 0.99
    started = time.perf_counter()
    assert ycsb.zeta.__wrapped__(1_000_000, 0.99) == 15.391849746037371
    assert time.perf_counter() - started < 5.0  # ~0.15 s; the bound only catches a gross slowdown
    ycsb.zeta(1_000, 0.99)
    assert ycsb.zeta.cache_info().hits >= 1


def test_zipfian_matches_ycsb_known_answers():
    gen = ycsb.ZipfianGenerator(1_000, FixedDraws(KNOWN_U))
    assert [gen.next() for _ in KNOWN_U] == KNOWN_ZIPF_1000


def test_scrambled_zipfian_matches_ycsb_known_answers():
    gen = ycsb.ScrambledZipfianGenerator(10_000, FixedDraws(KNOWN_U))
    assert [gen.next() for _ in KNOWN_U] == KNOWN_SCRAMBLED_10000


def _fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    return h


def test_fnvhash64_is_ycsbs_fnv1a_of_the_little_endian_bytes():
    assert _fnv1a64(b"a") == 0xAF63DC4C8601EC8C  # the published FNV-1a 64 test vector
    for value, expected in KNOWN_FNV.items():
        assert ycsb.fnvhash64(value) == expected
        h = _fnv1a64((value % 2**64).to_bytes(8, "little"))
        assert expected == (h if h < 2**63 else 2**64 - h)


# --- distribution ------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(items=st.integers(1, 3_000), theta=st.floats(0.05, 0.99), seed=st.integers(0, 2**32))
def test_zipfian_values_stay_in_range(items, theta, seed):
    rng = random.Random(seed)
    gen = ycsb.ZipfianGenerator(items, rng, theta)
    scrambled = ycsb.ScrambledZipfianGenerator(items, rng)
    for _ in range(200):
        assert 0 <= gen.next() < items
        assert 0 <= scrambled.next() < items


def test_zipfian_rejects_bad_parameters():
    for items, theta in ((0, 0.99), (10, 0.0), (10, 1.0), (10, 1.5)):
        with pytest.raises(ValueError):
            ycsb.ZipfianGenerator(items, random.Random(1), theta)
    with pytest.raises(ValueError):
        ycsb.ScrambledZipfianGenerator(0, random.Random(1))


def test_zipfian_skew_matches_theory():
    n, draws = 1_000, 100_000
    gen = ycsb.ZipfianGenerator(n, random.Random(5))
    counts = Counter(gen.next() for _ in range(draws))
    zetan = ycsb.zeta(n, ycsb.ZIPFIAN_CONSTANT)
    for item in (0, 1):  # Gray et al.'s generator gives these two their exact probabilities
        p = 1.0 / (item + 1) ** ycsb.ZIPFIAN_CONSTANT / zetan
        sigma = (p * (1 - p) / draws) ** 0.5
        assert abs(counts[item] / draws - p) < 5 * sigma, (item, counts[item] / draws, p)
    assert counts[0] / draws > 0.12  # the hottest key takes about an eighth of the load
    assert counts[0] > counts[1] > counts[9] > counts[99] > 0
    assert [k for k, _ in counts.most_common(3)] == [0, 1, 2]


def test_scrambled_zipfian_spreads_hot_keys_over_partitions():
    records, draws = 1_000, 100_000
    scrambled = ycsb.ScrambledZipfianGenerator(records, random.Random(5))
    counts = Counter(scrambled.next() for _ in range(draws))
    top = [k for k, _ in counts.most_common(10)]
    assert top[0] == ycsb.fnvhash64(0) % records  # the zipfian item 0
    p = 1.0 / ycsb.SCRAMBLED_ZETAN
    assert counts[top[0]] / draws > p - 5 * (p * (1 - p) / draws) ** 0.5
    assert max(top) - min(top) > 100 and sorted(top) != list(range(min(top), min(top) + 10))
    assert len({partition_of(k, PARTITIONS) for k in top}) >= 3
    gen = ycsb.ZipfianGenerator(records, random.Random(5))
    plain = Counter(gen.next() for _ in range(draws))
    assert sorted(k for k, _ in plain.most_common(10)) == list(range(10))


# --- the client ----------------------------------------------------------------------------------------


def test_same_seed_gives_the_same_operations():
    wl = ycsb.YcsbWorkload("a", RECORDS, FIELD)
    a = [wl.client(2, random.Random(9)).next_batch(300) for _ in range(2)]
    b = wl.client(2, random.Random(9))
    assert a[0] == a[1] == b.next_batch(300)
    assert wl.client(2, random.Random(10)).next_batch(300) != a[0]


@pytest.mark.parametrize("mix, shares, tolerance", [
    ("a", {"read": 0.5, "update": 0.5}, 0.02),
    ("b", {"read": 0.95, "update": 0.05}, 0.01),
    ("c", {"read": 1.0}, 0.0),
    ("F", {"read": 0.5, "rmw": 0.5}, 0.02),
])
def test_mix_proportions(mix, shares, tolerance):
    f, ops = ycsb.YcsbWorkload(mix, RECORDS, FIELD).client(0, random.Random(3)).next_batch(20_000)
    assert f == ycsb.PROCEDURE and len(ops) == 20_000
    counts = Counter(kind for _, kind, _ in ops)
    assert set(counts) == set(shares)
    for kind, share in shares.items():
        assert abs(counts[kind] / len(ops) - share) <= tolerance, (kind, counts[kind] / len(ops))
    assert all(0 <= key < RECORDS for key, _, _ in ops)
    assert all(value == "" for _, kind, value in ops if kind == "read")


def test_write_values_are_unique_and_padded():
    wl = ycsb.YcsbWorkload("a", RECORDS, FIELD)
    values = [v for p in range(3) for _, kind, v in wl.client(p, random.Random(p)).next_batch(2_000)[1]
              if kind != "read"]
    assert len(values) == len(set(values)) > 2_000
    assert all(len(v) == FIELD for v in values)
    assert ycsb.write_value(12, 34, 4) == "12:34:"  # never cut to the field length
    initial = {ycsb.initial_value(k, FIELD) for k in range(RECORDS)}
    assert len(initial) == RECORDS and not initial & set(values)


@pytest.mark.parametrize("bad", ["d", "", "workloada", None, 1])
def test_bad_mix_is_refused_naming_it_and_the_choices(bad):
    with pytest.raises(ValueError, match=r"unknown YCSB mix .*choose one of a, b, c, f") as err:
        ycsb.YcsbWorkload(bad)
    assert repr(bad) in str(err.value)


def test_workload_parameters_are_checked():
    assert ycsb.YcsbWorkload(" B ").mix == "b"
    with pytest.raises(ValueError, match="records"):
        ycsb.YcsbWorkload("a", 0)
    with pytest.raises(ValueError, match="field length"):
        ycsb.YcsbWorkload("a", 10, 0)


def test_schema_and_initial_data():
    wl = ycsb.YcsbWorkload("f", 50, FIELD)
    assert wl.name == "ycsb"
    proc = wl.schema().procedures["ycsb"]
    assert proc.partition_by == "key" and not proc.multi_partition and not proc.read_only
    assert list(wl.schema().tables) == ["usertable"]
    rows = wl.initial_data()["usertable"]
    assert [r["key"] for r in rows] == list(range(50))
    assert all(r["version"] == 0 and r["rmw"] == 0 and len(r["field0"]) == FIELD for r in rows)
    assert len(ycsb.YcsbWorkload().initial_data()["usertable"][0]["field0"]) == ycsb.FIELD_LENGTH_DEFAULT


# --- the procedure on partition cores ---------------------------------------------------------------------


def _cores(records: int = RECORDS, partitions: int = PARTITIONS) -> list[PartitionCore]:
    cores = [PartitionCore(ycsb.schema(), p, partitions) for p in range(partitions)]
    rows = ycsb.initial_data(records, FIELD)["usertable"]
    for p, core in enumerate(cores):
        core.load("usertable", [r for r in rows if partition_of(r["key"], partitions) == p])
    return cores


class CoreDb:
    """``Cluster.call_many`` over in-process cores: results, or error objects, in order."""

    def __init__(self, cores: list[PartitionCore]) -> None:
        self.cores = cores
        self.batches: list[int] = []

    def call(self, name: str, *args):
        out = self.cores[partition_of(args[0], len(self.cores))].execute(name, args, [])
        return out.error if is_failure(out) else out

    def call_many(self, name: str, args_list):
        args_list = [tuple(a) for a in args_list]
        self.batches.append(len(args_list))
        return [self.call(name, *args) for args in args_list]

    def row(self, key: int) -> dict:
        return self.cores[partition_of(key, len(self.cores))].tables["usertable"][key]

    def set(self, key: int, **changes) -> None:
        self.row(key).update(changes)


def test_read_update_rmw_and_their_counters():
    db = CoreDb(_cores())
    init = ycsb.initial_value(7, FIELD)
    assert db.call("ycsb", 7, "read", "") == (init, 0, 0)
    assert db.call("ycsb", 7, "update", "u1") == 1
    assert db.call("ycsb", 7, "read", "") == ("u1", 1, 0)
    assert db.call("ycsb", 7, "rmw", "r1") == ("u1", 2, 1)
    assert db.call("ycsb", 7, "rmw", "r2") == ("r1", 3, 2)
    assert db.call("ycsb", 7, "update", "u2") == 2 + 2
    assert db.row(7) == {"key": 7, "field0": "u2", "version": 4, "rmw": 2}
    assert db.call("ycsb", 8, "read", "")[1:] == (0, 0)  # its neighbour untouched


def test_insert_creates_a_record_and_refuses_an_existing_key():
    db = CoreDb(_cores())
    assert db.call("ycsb", RECORDS + 3, "insert", "new") == 1
    assert db.call("ycsb", RECORDS + 3, "read", "") == ("new", 1, 0)
    err = db.call("ycsb", 3, "insert", "dup")
    assert isinstance(err, UserAbort) and err.message.startswith(ycsb.RECORD_EXISTS) and "key 3" in err.message
    assert db.row(3)["field0"] == ycsb.initial_value(3, FIELD)


@pytest.mark.parametrize("kind", ["read", "update", "rmw"])
def test_missing_record_aborts_naming_the_key(kind):
    db = CoreDb(_cores())
    err = db.call("ycsb", RECORDS + 1, kind, "v")
    assert isinstance(err, UserAbort) and err.message == f"{ycsb.NO_RECORD} {RECORDS + 1}"
    assert all(RECORDS + 1 not in core.tables["usertable"] for core in db.cores)


def test_unknown_kind_and_bad_arguments_abort():
    db = CoreDb(_cores())
    err = db.call("ycsb", 1, "scan", "")
    assert isinstance(err, UserAbort) and ycsb.UNKNOWN_KIND in err.message and "'scan'" in err.message
    assert isinstance(db.call("ycsb", 1, "update", 5), InvalidArguments)
    assert isinstance(db.call("ycsb", "1", "read", ""), InvalidArguments)
    assert db.row(1)["version"] == 0


def test_mixed_batch_runs_in_one_call_per_partition():
    core = _cores(partitions=1)[0]
    out = core.execute_batch([("ycsb", (4, "read", "")), ("ycsb", (4, "update", "x")),
                              ("ycsb", (4, "rmw", "y")), ("ycsb", (RECORDS + 9, "read", "")),
                              ("ycsb", (4, "read", ""))])
    assert out.results[:3] == [(ycsb.initial_value(4, FIELD), 0, 0), 1, ("x", 2, 1)]
    assert isinstance(out.errors[3], UserAbort)
    assert out.results[4] == ("y", 2, 1)


# --- the checkers ---------------------------------------------------------------------------------------------


class DictDb:
    """A stand-in ``db`` answering reads from {key: (field0, version, rmw)}."""

    def __init__(self, records: dict[int, tuple[str, int, int]]) -> None:
        self.records = records
        self.batches: list[int] = []

    def call_many(self, name: str, args_list):
        args_list = list(args_list)
        assert name == "ycsb" and all(kind == "read" for _, kind, _ in args_list)
        self.batches.append(len(args_list))
        return [self._read(key) for key, _, _ in args_list]

    def _read(self, key: int):
        record = self.records.get(key)
        return UserAbort(f"{ycsb.NO_RECORD} {key}", reason=f"{ycsb.NO_RECORD} {key}") if record is None else record


_ids = itertools.count()


def _op(key: int, kind: str, value: str, type_: str = OK, start: float = 0.0, end: float = 1.0) -> Op:
    op = Op(next(_ids), 0, "ycsb", (key, kind, value), start)
    op.type, op.complete_s = type_, end
    if type_ != OK:
        op.error = "USER_ABORT: no record" if type_ == FAIL else "TIMEOUT"
    return op


def _init(key: int) -> str:
    return ycsb.initial_value(key, FIELD)


def _check(records: dict[int, tuple[str, int, int]], ops: list[Op], loaded: int = RECORDS):
    return ycsb.YcsbWorkload("a", loaded, FIELD).check(DictDb(records), ops)


def _verdicts_ok(verdicts) -> dict[str, bool]:
    return {name: v.ok for name, v in verdicts.items()}


def _simulate(db, wl: ycsb.YcsbWorkload, clients: int = 3, batches: int = 15, n: int = 40) -> list[Op]:
    """Clients' batches run on ``db`` in turn, recorded as the runner records them."""
    ticks = itertools.count()
    history = History(clock=lambda: float(next(ticks)))
    gens = [wl.client(p, random.Random(100 + p)) for p in range(clients)]
    for _ in range(batches):
        for p, gen in enumerate(gens):
            f, args = gen.next_batch(n)
            ops = history.invoke_many(p, f, args)
            history.complete_many(ops, db.call_many(f, args))
    return history.ops()


@pytest.mark.parametrize("mix", ["a", "b", "c", "f"])
def test_a_correct_run_passes(mix):
    db = CoreDb(_cores())
    wl = ycsb.YcsbWorkload(mix, RECORDS, FIELD)
    ops = _simulate(db, wl)
    inserts = [(RECORDS + 1, "insert", "i1"), (RECORDS + 2, "insert", "i2"), (2, "insert", "dup")]
    history = History(clock=lambda: 10_000.0)
    history.complete_many(history.invoke_many(0, "ycsb", inserts), db.call_many("ycsb", inserts))
    ops += history.ops()
    assert Counter(op.type for op in ops)[FAIL] == 1  # the duplicate insert
    verdicts = wl.check(db, ops)
    assert _verdicts_ok(verdicts) == {"acknowledged_writes": True, "applied_once": True}, verdicts
    written = {op.value[0] for op in ops if op.value[1] != "read"}
    assert "lost" not in verdicts["acknowledged_writes"].evidence
    assert f"{len(written):,} written keys" in verdicts["acknowledged_writes"].detail


def test_a_lost_acknowledged_write_fails_naming_the_key():
    db = CoreDb(_cores())
    wl = ycsb.YcsbWorkload("a", RECORDS, FIELD)
    ops = _simulate(db, wl)
    key = next(op.value[0] for op in ops if op.value[1] == "update" and op.type == OK)
    db.set(key, field0=_init(key))  # the record forgot every write
    verdict = wl.check(db, ops)["acknowledged_writes"]
    assert not verdict.ok and f"key {key}:" in verdict.detail and "initial value" in verdict.detail
    (lost,) = verdict.evidence["lost"]
    assert lost["key"] == key and lost["found"] == _init(key).rstrip(ycsb.PAD)
    assert lost["expected_count"] >= 1 and len(lost["expected"]) <= ycsb.CANDIDATES_LISTED


def test_lost_write_evidence_names_candidates_and_found():
    ops = [_op(5, "update", "0:1:", OK, 0, 1)]
    verdicts = _check({5: (_init(5), 1, 0)}, ops)
    assert _verdicts_ok(verdicts) == {"acknowledged_writes": False, "applied_once": True}
    assert verdicts["acknowledged_writes"].evidence["lost"] == [{
        "key": 5, "found": "init:5:", "expected": ["0:1:"], "expected_count": 1,
        "why": "still the initial value after 1 acknowledged write(s)"}]


def test_a_double_applied_rmw_fails_applied_once():
    ops = [_op(3, "rmw", "0:1:", OK, 0, 1), _op(3, "update", "0:2:", OK, 2, 3)]
    verdicts = _check({3: ("0:2:", 4, 2)}, ops)
    assert _verdicts_ok(verdicts) == {"acknowledged_writes": True, "applied_once": False}
    found = {(v["counter"], v["found"], v["min"], v["max"]) for v in verdicts["applied_once"].evidence["violations"]}
    assert found == {("version", 4, 2, 2), ("rmw", 2, 1, 1)}
    assert "key 3" in verdicts["applied_once"].detail


def test_a_lost_rmw_fails_applied_once():
    ops = [_op(3, "rmw", "0:1:", OK, 0, 1), _op(3, "rmw", "0:2:", OK, 2, 3)]
    verdicts = _check({3: ("0:2:", 1, 1)}, ops)
    assert _verdicts_ok(verdicts) == {"acknowledged_writes": True, "applied_once": False}


@pytest.mark.parametrize("applied", [True, False])
def test_an_unknown_write_may_or_may_not_have_applied(applied):
    ops = [_op(4, "update", "0:1:", OK, 0, 1), _op(4, "rmw", "0:2:", UNKNOWN, 2, 3)]
    record = ("0:2:", 2, 1) if applied else ("0:1:", 1, 0)
    assert _verdicts_ok(_check({4: record}, ops)) == {"acknowledged_writes": True, "applied_once": True}
    only_unknown = [_op(6, "update", "0:3:", UNKNOWN, 0, 1)]
    record = ("0:3:", 1, 0) if applied else (_init(6), 0, 0)
    assert _verdicts_ok(_check({6: record}, only_unknown)) == {"acknowledged_writes": True, "applied_once": True}


def test_an_unknown_write_may_apply_after_a_later_acknowledged_one():
    ops = [_op(4, "update", "0:1:", UNKNOWN, 0, 1), _op(4, "update", "1:1:", OK, 5, 6)]
    assert _verdicts_ok(_check({4: ("0:1:", 2, 0)}, ops)) == {"acknowledged_writes": True, "applied_once": True}


def test_a_value_superseded_in_real_time_fails():
    ops = [_op(9, "update", "0:1:", OK, 0, 1), _op(9, "update", "1:1:", OK, 2, 3)]
    verdict = _check({9: ("0:1:", 2, 0)}, ops)["acknowledged_writes"]
    assert not verdict.ok
    (lost,) = verdict.evidence["lost"]
    assert lost["key"] == 9 and lost["found"] == "0:1:" and lost["expected"] == ["1:1:"]
    assert "superseded by write '1:1:' invoked at 2.000s" in lost["why"]


def test_concurrent_acknowledged_writes_may_land_in_either_order():
    ops = [_op(9, "update", "0:1:", OK, 0, 2), _op(9, "update", "1:1:", OK, 1, 3)]
    for final in ("0:1:", "1:1:"):
        assert _check({9: (final, 2, 0)}, ops)["acknowledged_writes"].ok


def test_a_failed_write_that_applied_fails():
    ops = [_op(2, "update", "0:1:", FAIL, 0, 1)]
    verdicts = _check({2: ("0:1:", 1, 0)}, ops)
    assert _verdicts_ok(verdicts) == {"acknowledged_writes": False, "applied_once": False}
    assert "reported failed" in verdicts["acknowledged_writes"].evidence["lost"][0]["why"]
    assert _verdicts_ok(_check({2: (_init(2), 0, 0)}, ops)) == {"acknowledged_writes": True, "applied_once": True}


def test_unexplained_and_missing_values_fail():
    ops = [_op(1, "update", "0:1:", OK, 0, 1)]
    lost = _check({1: ("9:9:", 1, 0)}, ops)["acknowledged_writes"].evidence["lost"][0]
    assert lost["why"] == "a value no write to this key wrote"
    verdicts = _check({}, ops)
    assert _verdicts_ok(verdicts) == {"acknowledged_writes": False, "applied_once": False}
    assert verdicts["acknowledged_writes"].evidence["lost"][0]["found"] == "<no record>"


def test_inserted_keys_start_without_a_record():
    new = RECORDS + 5
    acked = [_op(new, "insert", "0:1:", OK, 0, 1)]
    assert _verdicts_ok(_check({new: ("0:1:", 1, 0)}, acked)) == {"acknowledged_writes": True, "applied_once": True}
    assert not _check({}, acked)["acknowledged_writes"].ok
    unknown = [_op(new, "insert", "0:1:", UNKNOWN, 0, 1)]
    for records in ({}, {new: ("0:1:", 1, 0)}):
        assert _verdicts_ok(_check(records, unknown)) == {"acknowledged_writes": True, "applied_once": True}


def test_evidence_is_bounded_and_the_count_complete():
    ops = [_op(k, "update", f"0:{k}:", OK, 0, 1) for k in range(30)]
    verdicts = _check({k: (_init(k), 0, 0) for k in range(30)}, ops)
    assert verdicts["acknowledged_writes"].detail.startswith("30 key(s) lost acknowledged writes")
    assert len(verdicts["acknowledged_writes"].evidence["lost"]) == EVIDENCE_MAX
    assert verdicts["applied_once"].detail.startswith("30 counter(s) off")
    assert len(verdicts["applied_once"].evidence["violations"]) == EVIDENCE_MAX


def test_read_back_reads_every_written_key_in_bounded_batches():
    keys = range(2_500)
    ops = [_op(k, "update", f"0:{k}:", OK, k, k + 0.5) for k in keys]
    ops += [_op(k, "read", "", OK) for k in range(3_000, 3_100)]  # reads are not read back
    db = DictDb({k: (f"0:{k}:", 1, 0) for k in keys})
    verdicts = ycsb.YcsbWorkload("a", 3_000, FIELD).check(db, ops)
    assert _verdicts_ok(verdicts) == {"acknowledged_writes": True, "applied_once": True}
    assert db.batches == [1_000, 1_000, 500]
    empty = DictDb({})
    assert _verdicts_ok(ycsb.YcsbWorkload("c").check(empty, [])) == {"acknowledged_writes": True,
                                                                    "applied_once": True}
    assert empty.batches == []


def test_read_back_raises_a_failed_read():
    class Failing(DictDb):
        def _read(self, key):
            return Timeout("no answer", key=key)

    with pytest.raises(Timeout):
        ycsb.YcsbWorkload("a", RECORDS, FIELD).check(Failing({}), [_op(1, "update", "0:1:")])
