"""The platform-floor arithmetic and the in-process procedure ceilings (no Ray)."""

from __future__ import annotations

import pytest

from actors.errors import InvariantViolation
from workloads import floor


def test_floors_are_the_chains_a_transaction_must_cross():
    threaded = {1: 1.0, 2: 2.5, 3: 4.0, 4: 6.0}
    asynchronous = {1: 1.5, 2: 4.0, 3: 7.0, 4: 11.0}
    f = floor.floors(threaded, asynchronous)
    assert f["sp_replicated_threaded_ms"] == 2.5 and f["sp_replicated_async_ms"] == 4.0
    assert f["mp_implicit_decision_threaded_ms"] == 4.0 and f["mp_implicit_decision_async_ms"] == 7.0
    # the logged decision adds coordinator -> holder -> follower: depth 3 without the client's own hop
    assert f["mp_logged_decision_threaded_ms"] == 4.0 + 3.0 and f["mp_logged_decision_async_ms"] == 7.0 + 5.5


@pytest.mark.parametrize("name, procedure", [("voter", "vote"), ("bank", "transfer_local")])
def test_procedure_ceilings_run_the_procedure_and_replicate_it(name, procedure):
    c = floor.procedure_ceilings(name, seed=3, transactions=800, rounds=2)
    assert c["procedure"] == procedure and c["transactions"] == 800 and c["rounds"] == 2
    assert c["bare_txn_s"] > 0 and c["k1_txn_s"] > 0


def test_a_follower_core_that_differs_from_its_leader_fails_the_ceiling(monkeypatch):
    """The replicated ceiling checks that the follower core really applied what the leader wrote."""
    monkeypatch.setattr(floor.LogCodec, "decode", lambda self, batch: [])
    with pytest.raises(InvariantViolation, match="the follower core must hold what the leader wrote"):
        floor.procedure_ceilings("bank", transactions=200, rounds=1)


def test_an_unknown_workload_has_no_ceiling():
    with pytest.raises(ValueError, match="no procedure ceiling for workload 'ycsb'"):
        floor.procedure_ceilings("ycsb", transactions=10)
