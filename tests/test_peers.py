"""Peer baselines: short Redis and PostgreSQL runs (skipped when a server or driver is missing)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

import pytest

from workloads import peer_postgres, peer_redis, peer_servers, peers


def _skip_unless(run_check) -> None:
    try:
        run_check()
    except peers.PeerUnavailable as e:
        pytest.skip(f"peer not installed here: {e}")


def _pgid_of(pid_dir: str) -> int | None:
    try:
        with open(f"/proc/{pid_dir}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[2])  # fields after "(comm)": state, ppid, pgrp


def _assert_gone(result: dict) -> None:
    """Every process started (each led its own process group) is gone, children included; temp dir removed."""
    pids = set(result["pids"])
    assert pids
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    leftovers = [p for p in os.listdir("/proc") if p.isdigit() and _pgid_of(p) in pids]
    assert leftovers == [], f"processes left in the servers' process groups: {leftovers}"
    assert not os.path.exists(result["temp_dir"])


def test_redis_voter_short_run():
    _skip_unless(peers.require_redis)
    result = peers.run_redis_voter(clients=2, batch=20, duration_s=1.5, seed=1, contestants=6, max_votes=2)
    assert result["check"]["ok"], result["check"]["detail"]
    assert result["committed"] > 0 and result["rejected"] > 0  # about one call in 100 names no contestant
    assert result["throughput_tps"] > 0 and result["latency_ms"]["p99"] >= result["latency_ms"]["p50"] > 0
    assert result["peer"] == "redis" and result["version"]
    _assert_gone(result)


def test_postgres_bank_short_run():
    _skip_unless(peers.require_postgres)
    result = peers.run_postgres_bank(clients=2, duration_s=1.5, accounts=200, seed=1, total_every=4)
    assert result["check"]["ok"], result["check"]["detail"]
    assert result["committed"] > 0 and result["errors"] == 0
    assert result["reads"] > 0 and f"on {result['reads']} reads" in result["check"]["detail"]
    assert result["throughput_tps"] > 0 and result["latency_ms"]["p99"] >= result["latency_ms"]["p50"] > 0
    assert result["peer"] == "postgres" and result["version"]
    _assert_gone(result)


def test_redis_server_that_fails_to_start_reports_its_log_and_cleans_up(monkeypatch):
    _skip_unless(peers.require_redis)
    made: list[peer_servers.Servers] = []
    real_init = peer_servers.Servers.__init__

    def recording_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        made.append(self)

    def bad_conf(data_dir: str, port: int, primary_port: int | None) -> str:
        path = os.path.join(data_dir, "redis.conf")
        with open(path, "w") as f:
            f.write(f"port {port}\nno-such-directive yes\n")
        return path

    monkeypatch.setattr(peer_servers.Servers, "__init__", recording_init)
    monkeypatch.setattr(peer_redis, "_redis_conf", bad_conf)
    with pytest.raises(peers.PeerError, match="no-such-directive"):
        peers.run_redis_voter(clients=1, batch=1, duration_s=0.1, seed=1, contestants=6, max_votes=2)
    assert made and not os.path.exists(made[0].dir)
    assert all(p.proc.returncode is not None for p in made[0].procs)


def test_unavailable_messages_name_what_is_missing(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *_a, **_k: None)
    monkeypatch.setattr(peer_postgres, "PG_BIN_DIR_PATTERNS", ())
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis -> ImportError
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(peers.PeerUnavailable) as redis_err:
        peers.run_redis_voter(clients=1, batch=1, duration_s=0.1, seed=1, contestants=6, max_votes=2)
    message = str(redis_err.value)
    assert "redis-server" in message and "apt-get install redis-server" in message
    assert "redis-py" in message and "pip install -e '.[peers]'" in message
    with pytest.raises(peers.PeerUnavailable) as pg_err:
        peers.run_postgres_bank(clients=1, duration_s=0.1, accounts=10, seed=1)
    message = str(pg_err.value)
    assert "postgres" in message and "initdb" in message and "apt-get install postgresql" in message
    assert "psycopg" in message and "pip install -e '.[peers]'" in message


def test_only_the_binary_missing_is_named(monkeypatch):
    if importlib.util.find_spec("redis") is None:
        pytest.skip("redis-py is not installed: cannot show a message naming only the binary")
    monkeypatch.setattr(shutil, "which", lambda *_a, **_k: None)
    with pytest.raises(peers.PeerUnavailable) as err:
        peers.require_redis()
    assert "redis-server" in str(err.value) and "redis-py" not in str(err.value)


def test_latency_percentiles_weight_each_batch_by_its_size():
    figures = peer_servers.latency_percentiles([(1.0, 98), (50.0, 1), (100.0, 1)])
    assert figures == {"p50": 1.0, "p95": 1.0, "p99": 50.0, "max": 100.0}
    assert peer_servers.latency_percentiles([]) == {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}


def test_voter_check_names_each_disagreement():
    tally = peer_servers.Tally(committed=5)
    tally.per_contestant.update({1: 3, 2: 2})
    good = {"totals": {1: 3, 2: 2}, "phones": 4, "votes": 5, "mismatched": 0, "over": 0}
    assert peer_redis._summary_problems("primary", good, tally, 2) == []
    bad = {"totals": {1: 3, 2: 1}, "phones": 4, "votes": 6, "mismatched": 1, "over": 1}
    problems = " ".join(peer_redis._summary_problems("replica", bad, tally, 2))
    for text in ("totals count 4", "per-contestant", "voters count 6", "over the limit", "vote records differ"):
        assert text in problems


def test_a_missing_driver_is_named_with_how_to_install_it():
    missing: list[str] = []
    assert peer_servers.import_driver("ohmdb_no_such_driver", "a driver", "pkg>=1", missing) is None
    assert missing == ["the Python driver a driver (module `ohmdb_no_such_driver`) is not installed "
                       "(install it: `pip install -e '.[peers]'` or `pip install 'pkg>=1'`)"]
    assert peer_servers.import_driver("json", "json", "-", missing) is not None and len(missing) == 1


def test_a_postgres_total_read_off_the_invariant_is_named():
    assert peer_postgres._read_problems(200 * peer_postgres.BALANCE_INITIAL, 200, 0, 200) == []
    problems = peer_postgres._read_problems(200 * peer_postgres.BALANCE_INITIAL - 7, 199, 1, 200)
    assert problems == [f"total is {200 * peer_postgres.BALANCE_INITIAL - 7}, expected "
                        f"{200 * peer_postgres.BALANCE_INITIAL} (off by -7)", "199 accounts, expected 200",
                        "1 negative balances"]
