"""cluster.yaml is a valid `ray up` config for Ray's local (on-premise) provider.

Nothing here starts Ray or opens a connection: the config is checked the way
`ray up` checks it before it touches any node (``prepare_config``, the node
provider's resource fill-out, then ``validate_config`` against the
``ray-schema.json`` shipped inside the ray package), plus ohmdb's own rules.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from packaging.requirements import Requirement
from ray.autoscaler._private.providers import _get_node_provider_cls
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "cluster.yaml"
SCHEMA_PATH = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
LOCAL_NODE_TYPE = "local.cluster.node"  # the single node type prepare_local() creates


def load_raw() -> dict[str, Any]:
    with CLUSTER_YAML.open() as f:
        config = yaml.safe_load(f)
    assert isinstance(config, dict), "cluster.yaml must be a mapping"
    return config


def ray_up_checks(config: dict[str, Any]) -> dict[str, Any]:
    """The offline part of `ray up` (``commands._bootstrap_config`` minus its cache
    file and the provider bootstrap): prepare, fill out resources, validate."""
    prepared = prepare_config(copy.deepcopy(config))
    prepared = _get_node_provider_cls(prepared["provider"]).fillout_available_node_types_resources(prepared)
    validate_config(prepared)
    return prepared


def commands(config: dict[str, Any], key: str) -> list[list[str]]:
    """Each command of ``config[key]`` split into shell words (``a; b`` -> two)."""
    out = []
    for line in config.get(key, []):
        for part in line.split(";"):
            if part.strip():
                out.append(shlex.split(part))
    return out


def flag_value(words: list[str], flag: str) -> str | None:
    for i, word in enumerate(words):
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
        if word == flag and i + 1 < len(words):
            return words[i + 1]
    return None


def is_ray_start(words: list[str]) -> bool:
    return words[:2] == ["ray", "start"]


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return load_raw()


@pytest.fixture(scope="module")
def prepared(raw: dict[str, Any]) -> dict[str, Any]:
    return ray_up_checks(raw)


# -- Ray's own validation --------------------------------------------------------------


def test_ray_up_accepts_the_config(prepared: dict[str, Any]) -> None:
    # prepare_local() turned the head/worker IPs into its single node type.
    assert prepared["head_node_type"] == LOCAL_NODE_TYPE
    assert LOCAL_NODE_TYPE in prepared["available_node_types"]


def test_prepared_config_matches_packaged_schema(prepared: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.validate(prepared, schema)  # raises jsonschema.ValidationError


def test_raw_config_uses_only_schema_keys(raw: dict[str, Any]) -> None:
    # The schema forbids unknown top-level keys; `min_workers` is the one
    # on-premise key that prepare_local() consumes before validation.
    schema = json.loads(SCHEMA_PATH.read_text())
    allowed = set(schema["properties"]) | {"min_workers"}
    assert set(raw) <= allowed, f"unknown keys: {sorted(set(raw) - allowed)}"
    assert set(schema["required"]) <= set(raw)


@pytest.mark.parametrize(
    "mutation",
    [
        pytest.param(lambda c: c.update(no_such_option=True), id="unknown-top-level-key"),
        pytest.param(lambda c: c.update(max_workers="two"), id="max_workers-not-int"),
        pytest.param(lambda c: c.update(head_start_ray_commands="ray start --head"), id="commands-not-list"),
        pytest.param(lambda c: c["auth"].update(ssh_user=["ubuntu"]), id="ssh_user-not-string"),
        pytest.param(lambda c: c["provider"].pop("type"), id="provider-without-type"),
        pytest.param(lambda c: c["available_node_types"][LOCAL_NODE_TYPE].pop("resources"), id="node-type-without-resources"),
    ],
)
def test_validate_config_rejects_broken_configs(prepared: dict[str, Any], mutation) -> None:
    # Ray's validator is not a rubber stamp: break the config `ray up` would
    # validate in one place and validate_config() must refuse it.
    broken = copy.deepcopy(prepared)
    mutation(broken)
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)


@pytest.mark.parametrize(
    "mutation",
    [
        pytest.param(lambda c: c.update(no_such_option=True), id="unknown-top-level-key"),
        pytest.param(lambda c: c.update(idle_timeout_minutes="five"), id="idle_timeout-not-number"),
        pytest.param(lambda c: c["auth"].update(ssh_user=["ubuntu"]), id="ssh_user-not-string"),
    ],
)
def test_ray_up_checks_reject_broken_cluster_yaml(raw: dict[str, Any], mutation) -> None:
    # The same end to end: a broken cluster.yaml fails the `ray up` checks.
    broken = copy.deepcopy(raw)
    mutation(broken)
    with pytest.raises(jsonschema.ValidationError):
        ray_up_checks(broken)


def test_prepare_caps_workers_at_the_listed_ips(prepared: dict[str, Any], raw: dict[str, Any]) -> None:
    node_type = prepared["available_node_types"][LOCAL_NODE_TYPE]
    n = len(raw["provider"]["worker_ips"])
    assert node_type["min_workers"] == n
    assert node_type["max_workers"] == n
    assert prepared["max_workers"] == n


# -- ohmdb's rules ---------------------------------------------------------------------


def test_cluster_identity(raw: dict[str, Any]) -> None:
    assert raw["cluster_name"] == "ohmdb"
    assert raw["provider"]["type"] == "local"
    assert isinstance(raw["auth"]["ssh_user"], str) and raw["auth"]["ssh_user"]


def test_addresses_are_distinct_ips(raw: dict[str, Any]) -> None:
    provider = raw["provider"]
    head = ipaddress.ip_address(provider["head_ip"])
    workers = [ipaddress.ip_address(ip) for ip in provider["worker_ips"]]
    assert workers, "list at least one worker"
    assert len(set(workers)) == len(workers), "duplicate worker IP"
    assert head not in workers, "the head is not also a worker"


def test_worker_count_fits_min_max(raw: dict[str, Any]) -> None:
    n = len(raw["provider"]["worker_ips"])
    assert isinstance(raw["min_workers"], int) and isinstance(raw["max_workers"], int)
    assert 0 <= raw["min_workers"] <= raw["max_workers"]
    # cluster.yaml promises both equal the number of worker IPs.
    assert raw["min_workers"] == raw["max_workers"] == n


def test_dashboard_bound_to_loopback(raw: dict[str, Any]) -> None:
    head_cmds = commands(raw, "head_start_ray_commands")
    starts = [w for w in head_cmds if is_ray_start(w)]
    assert len(starts) == 1, head_cmds
    start = starts[0]
    assert "--head" in start
    assert flag_value(start, "--dashboard-host") == "127.0.0.1"
    assert flag_value(start, "--port") == "6379"
    assert flag_value(start, "--autoscaling-config") == "~/ray_bootstrap_config.yaml"
    # `ray stop` comes first so a rerun of `ray up` restarts cleanly.
    assert head_cmds.index(["ray", "stop"]) < head_cmds.index(start)


def test_workers_join_the_head(raw: dict[str, Any]) -> None:
    worker_cmds = commands(raw, "worker_start_ray_commands")
    starts = [w for w in worker_cmds if is_ray_start(w)]
    assert len(starts) == 1, worker_cmds
    start = starts[0]
    assert "--head" not in start
    head_port = flag_value(next(w for w in commands(raw, "head_start_ray_commands") if is_ray_start(w)), "--port")
    assert flag_value(start, "--address") == f"$RAY_HEAD_IP:{head_port}"
    assert worker_cmds.index(["ray", "stop"]) < worker_cmds.index(start)


def test_setup_installs_the_project_on_every_node(raw: dict[str, Any], prepared: dict[str, Any]) -> None:
    mounts = raw["file_mounts"]
    # The copied directory is this project (relative paths are taken from the
    # directory `ray up` runs in: the repository root).
    remote = next(r for r, local in mounts.items() if (ROOT / local).resolve() == ROOT)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^name\s*=\s*"ohmdb"', pyproject, re.M)

    installs = [w for w in commands(raw, "setup_commands") if w[:2] == ["pip", "install"]]
    assert ["pip", "install", "-e", remote] in installs, installs
    # `setup_commands` reach both the head and the workers after prepare_config().
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any(f"pip install -e {remote}" in c for c in prepared[key]), key


def test_setup_installs_the_local_ray_version(raw: dict[str, Any]) -> None:
    # Every node and the machine running `ray up` must run the same Ray.
    reqs = [
        Requirement(word)
        for w in commands(raw, "setup_commands")
        if w[:2] == ["pip", "install"]
        for word in w[2:]
        if not word.startswith("-") and not word.startswith("~") and "/" not in word
    ]
    ray_reqs = [r for r in reqs if r.name == "ray"]
    assert len(ray_reqs) == 1, reqs
    assert "default" in ray_reqs[0].extras, "the autoscaler and `ray up` need ray[default]"
    assert ray_reqs[0].specifier.contains(ray.__version__), (ray_reqs[0], ray.__version__)
    assert any(r.name == "pyarrow" for r in reqs)

