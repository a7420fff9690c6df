"""A driver that writes credits to a durable cluster until it is killed (used by test_durability).

Usage: python -m tests.crash_writer DATA_DIR ACKS_PATH SEED

It starts its own local Ray instance, so the test can kill every process of
it.  Each acknowledged transaction is appended to ACKS_PATH (fsynced) as
"account seq amount" after call_many returns it as committed.
"""

from __future__ import annotations

import os
import random
import sys

from actors import Cluster, runtime
from tests import bank

ACCOUNTS = 40
PARTITIONS = 2


def main() -> None:
    data_dir, acks_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    runtime.connect(None, num_cpus=2)
    db = Cluster.create(bank.schema(), partitions=PARTITIONS, name="crash-writer", data_dir=data_dir, durability="sync")
    db.call_many("open_account", [(i, f"o{i}", 0) for i in range(ACCOUNTS)])
    seq = 0
    with open(acks_path, "a") as acks:
        acks.write("# opened\n")
        while True:
            batch = []
            for _ in range(rng.randrange(1, 60)):
                seq += 1
                batch.append((rng.randrange(ACCOUNTS), seq, rng.randrange(1, 100)))
            outcomes = db.call_many("credit", batch)
            lines = [f"{a} {s} {m}\n" for (a, s, m), out in zip(batch, outcomes) if isinstance(out, int)]
            acks.writelines(lines)
            acks.flush()
            os.fsync(acks.fileno())


if __name__ == "__main__":
    main()
