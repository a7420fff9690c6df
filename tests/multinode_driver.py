"""Multi-node behaviour on one machine (ray.cluster_utils.Cluster), run in its own process by test_multinode.

Prints one JSON line: where the replicas were placed, and what happened when the node holding
partition 0's leader was removed under a write load.
"""

from __future__ import annotations

import json
import sys
import time

from ray.cluster_utils import Cluster as RayCluster

from actors import Cluster, runtime
from tests import bank


def main() -> None:
    nodes = RayCluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [nodes.add_node(num_cpus=1) for _ in range(2)]
    nodes.wait_for_nodes()
    runtime.connect(nodes.address)
    db = Cluster.create(bank.schema(), partitions=2, k=1, name="multinode", durability="off")
    db.call_many("open_account", [(i, f"o{i}", 0) for i in range(10)])
    status = db.status()
    placement = {p: sorted(r["node_id"] for r in status["replicas"] if r["partition"] == p) for p in range(2)}
    worker_ids = {w.node_id: w for w in workers}
    leader0 = next(r for r in status["replicas"] if r["role"] == "leader" and r["node_id"] in worker_ids)
    victim = worker_ids[leader0["node_id"]]
    part = leader0["partition"]
    acked = 0
    outcome = {"placement": placement, "leader_on_worker": victim is not None}
    if victim is not None:
        nodes.remove_node(victim, allow_graceful=False)
        started = time.monotonic()
        seq, errors, failed_over = 0, [], None
        while time.monotonic() - started < 120:
            seq += 1
            out = db.call_many("credit", [(i, seq * 100 + i, 1) for i in range(10)])
            acked += sum(1 for o in out if isinstance(o, int))
            errors += [o.code for o in out if not isinstance(o, int)]
            if failed_over is None and db.status()["leaders"][part] != leader0["actor_name"]:
                failed_over = round(time.monotonic() - started, 3)
            if failed_over is not None and all(isinstance(o, int) for o in out):
                break
        outcome["failed_over_s"] = failed_over
        outcome["errors"] = errors
        after = db.status()
        outcome["leaders"] = after["leaders"]
        outcome["total"] = db.call("total_balance")
        outcome["acked"] = acked
        wait_s = time.monotonic()
        while time.monotonic() - wait_s < 60:  # a silent node is a hang at first, a node loss once Ray agrees
            kinds = [f["kind"] for f in db.faults() if f["where"]["node"] == victim.node_id]
            if kinds and all(k == "node-loss" for k in kinds):
                break
            time.sleep(0.5)
        outcome["node_loss_confirmed_s"] = round(time.monotonic() - started, 3)
        outcome["faults"] = [{"kind": f["kind"], "node": f["where"]["node"], "state": f["state"],
                              "actors": [a["actor"] for a in f["where"]["actors"]], "durations": f["durations"]}
                             for f in db.faults()]
        outcome["victim_node"] = victim.node_id
        outcome["minority"] = _minority(nodes, db, [w for w in workers if w is not victim], victim.node_id)
    print(json.dumps(outcome))
    db.shutdown()
    runtime.disconnect()
    nodes.shutdown()


def _minority(nodes: RayCluster, db: Cluster, left: list, removed: str) -> dict:
    """Grow to three nodes again, then lose two at once: this side is a minority and stops writing.

    First wait until the membership is exactly those three: with the removed node still counted, losing
    two of four is "exactly half", decided by which side holds the lowest node id.
    """
    added = nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    deadline = time.monotonic() + 90  # the membership changes once the node set held still 5 s
    while added.node_id not in (members := db.status()["members"]) or removed in members:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the membership never became the three live nodes: {members}")
        time.sleep(0.2)
    for node in [*left, added]:
        nodes.remove_node(node, allow_graceful=False)
    started = time.monotonic()
    codes: list[str] = []
    attempt = 0
    while time.monotonic() - started < 60:
        attempt += 1
        out = db.call_many("credit", [(i, 10**6 + attempt * 10 + i, 1) for i in range(10)], timeout_s=10)
        codes = [getattr(o, "code", "ok") for o in out]
        if "CLUSTER_MINORITY" in codes:
            break
        time.sleep(0.2)
    status = db.status()
    return {"codes": sorted(set(codes)), "halted": status["halted"], "after_s": round(time.monotonic() - started, 3),
            "replicas": [(r["actor_name"], r["role"], r["state"], r["node_id"][:6]) for r in status["replicas"]],
            "faults": [(f["kind"], f["signal"], f["state"], [a["actor"] for a in f["where"]["actors"]])
                       for f in db.faults()], "added": added.node_id[:6], "left": [w.node_id[:6] for w in left]}


if __name__ == "__main__":
    sys.exit(main())
