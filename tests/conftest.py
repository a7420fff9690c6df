"""Shared fixtures: one local Ray instance for the whole test session.

Unit tests of the pure cores never touch it; integration tests ask for
``ray_address`` (directly or through a cluster fixture).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_address():
    from actors import runtime

    address = runtime.connect(None, num_cpus=2)
    yield address
    runtime.disconnect()


@pytest.fixture(scope="session")
def subprocess_env(ray_address):
    """Environment for child drivers that attach to the session's Ray instance."""
    env = dict(os.environ)
    env["RAY_ADDRESS"] = ray_address
    return env
