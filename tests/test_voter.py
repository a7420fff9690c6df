"""Voter: the procedure's rules on the pure core, and a short run through Ray."""

from __future__ import annotations

import random

import pytest

from actors import Cluster
from actors.errors import UserAbort
from actors.partition_core import PartitionCore, is_failure
from workloads import voter
from workloads.bench import BenchConfig, measure_ceiling, run_voter, weighted_percentiles


def _core() -> PartitionCore:
    core = PartitionCore(voter.schema(), 0, 1)
    for table, rows in voter.initial_data().items():
        core.load(table, rows)
    return core


def _vote(core: PartitionCore, *args):
    out = core.execute("vote", args, [])
    return out.error if is_failure(out) else out


def test_vote_counts_up_to_the_limit_then_rejects():
    core = _core()
    phone = 212 * 10_000_000 + 5
    assert _vote(core, phone, 1, 2) == 1
    assert _vote(core, phone, 3, 2) == 2
    err = _vote(core, phone, 1, 2)
    assert isinstance(err, UserAbort) and err.message.startswith(voter.OVER_VOTE_LIMIT)
    assert core.tables["voters"][phone]["votes_cast"] == 2
    assert sorted(core.tables["votes"]) == [(phone, 1), (phone, 2)]
    assert core.tables["votes"][(phone, 1)]["state"] == "NY"


def test_vote_rejects_unknown_contestant_without_a_trace():
    core = _core()
    err = _vote(core, 415 * 10_000_000 + 1, 99, 2)
    assert isinstance(err, UserAbort) and err.message.startswith(voter.INVALID_CONTESTANT)
    assert core.tables["voters"] == {} and core.tables["votes"] == {}


def test_unknown_area_code_stores_no_state():
    core = _core()
    assert _vote(core, 999 * 10_000_000 + 1, 2, 2) == 1
    assert core.tables["votes"][(999 * 10_000_000 + 1, 1)]["state"] is None


def test_generator_is_deterministic_and_mixes_outcomes():
    a = voter.VoterGenerator(random.Random(3)).next_batch(5000)
    b = voter.VoterGenerator(random.Random(3)).next_batch(5000)
    assert a == b
    contestants = [c for _, c, _ in a]
    invalid = sum(1 for c in contestants if c == voter.CONTESTANTS_DEFAULT + 1)
    assert 10 <= invalid <= 100  # about one in a hundred
    assert contestants.count(1) > contestants.count(voter.CONTESTANTS_DEFAULT)  # skewed
    assert all(phone // 10_000_000 in dict(voter.AREA_CODES) for phone, _, _ in a)


def test_initial_data_bounds():
    assert len(voter.initial_data(3)["contestants"]) == 3
    with pytest.raises(ValueError):
        voter.initial_data(0)


def test_weighted_percentiles_weigh_batches_by_size():
    batches = [(1.0, 98), (100.0, 2)]
    p50, p99 = weighted_percentiles(batches, (0.5, 0.99))
    assert p50 == 1.0 and p99 == 100.0
    assert weighted_percentiles([], (0.5,)) == [0.0]


def test_ceiling_runs_the_same_calls_on_cores():
    cfg = BenchConfig(partitions=2, clients=2, batch=10, transactions=500).validate()
    ceiling = measure_ceiling(cfg)
    assert ceiling["transactions"] == 500 and ceiling["tps"] > 0


def test_bench_config_validation():
    with pytest.raises(ValueError, match="exactly one"):
        BenchConfig(transactions=None, duration_s=None).validate()
    with pytest.raises(ValueError, match="--batch"):
        BenchConfig(batch=0).validate()


def test_results_total_matches_accepted_votes(ray_address):
    db = Cluster.create(voter.schema(), partitions=2, name="test-voter", initial_data=voter.initial_data(4))
    try:
        gen = voter.VoterGenerator(random.Random(7), contestant_count=4, phones_per_area_code=20)
        outcomes = db.call_many("vote", gen.next_batch(2000))
        accepted = [o for o in outcomes if not isinstance(o, UserAbort)]
        assert all(isinstance(o, int) for o in accepted)
        rejected = [o for o in outcomes if isinstance(o, UserAbort)]
        assert any(r.message.startswith(voter.OVER_VOTE_LIMIT) for r in rejected)
        totals = db.call("results")
        assert [n for n, _, _ in totals] != [] and sum(v for _, _, v in totals) == len(accepted)
        assert [v for _, _, v in totals] == sorted((v for _, _, v in totals), reverse=True)
    finally:
        db.shutdown()


def test_short_bench_run_reports_and_checks(ray_address):
    cfg = BenchConfig(partitions=2, clients=2, batch=100, transactions=3000, seed=5, address=ray_address)
    report = run_voter(cfg)
    assert report["ok"], report["checks"]
    assert report["transactions"] == 3000 == report["committed"] + report["aborted"] + report["errors"]
    assert report["throughput_tps"] > 0 and report["ceiling_tps"] > 0 and report["ratio_to_ceiling"] > 0
    assert set(report["latency_ms"]) >= {"p50", "p99", "max"}
    assert sum(r["votes"] for r in report["results"]) == report["committed"]
