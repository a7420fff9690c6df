"""Multi-node on one machine: replicas on distinct Ray nodes; removing a node fails its leaders over
(reported as a node loss); losing two of three nodes at once stops writes (the minority rule).

Runs ``tests.multinode_driver`` in its own process: it starts its own ``ray.cluster_utils.Cluster``
(a head and two worker nodes), separate from the session's Ray instance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_replicas_on_distinct_nodes_and_node_removal_fails_over():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "tests.multinode_driver"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    outcome = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    print(json.dumps(outcome, indent=1))
    for partition, nodes in outcome["placement"].items():
        assert len(set(nodes)) == 2, f"partition {partition}: both replicas on one node"
    assert outcome["leader_on_worker"]
    assert outcome["failed_over_s"] is not None and outcome["errors"] == []
    assert outcome["total"] == outcome["acked"]  # every acknowledged credit, each applied once
    lost = [f for f in outcome["faults"] if f["node"] == outcome["victim_node"]]
    assert lost and lost[0]["kind"] == "node-loss", outcome["faults"]
    assert outcome["failed_over_s"] < 5, "heartbeats, not Ray's node health check, found the lost node"
    minority = outcome["minority"]
    assert "CLUSTER_MINORITY" in minority["codes"], minority
    assert "fewer than half" in minority["halted"]
