"""What the benchmark runner needs from a workload, and the shape of a checker's verdict.

Design note
-----------
The runner (``workloads.runner``) is workload-agnostic.  A workload gives it

* ``schema()`` and ``initial_data()`` to create the cluster;
* ``client(process, rng)`` -- one generator per client thread, seeded by the
  runner: ``next_batch(n)`` returns ``(procedure, [args, ...])``, one
  ``call_many`` batch of one procedure (``n`` is the batch size asked for; a
  workload may return fewer, e.g. one consistent read);
* ``check(db, ops)`` -- run once the load has stopped and the faults have
  healed: read what it needs from the cluster (reads go through the leaders)
  and judge the history (``workloads.history.Op`` list, every op completed).
  It returns ``{check_name: Verdict}``; any verdict not ok fails the run.

A generator sees no Ray and no clock; a checker sees the cluster only through
``db.call`` / ``db.call_many``.  Both are testable without Ray (checkers with a
stand-in ``db`` whose ``call`` answers from a dict).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from actors.schema import Schema
from workloads.history import Op


@dataclass
class Verdict:
    """One checker's result: ``ok``, a one-line ``detail``, and the evidence (bounded lists)."""

    ok: bool
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, **({"evidence": self.evidence} if self.evidence else {})}


#: Examples a verdict lists of one kind of finding (the count is always complete).
EVIDENCE_MAX = 20


class ClientGen(Protocol):
    def next_batch(self, n: int) -> tuple[str, list[Sequence[Any]]]:
        """The next batch: (procedure name, argument tuples)."""


class Workload(Protocol):
    name: str

    def schema(self) -> Schema: ...

    def initial_data(self) -> dict[str, list[dict[str, Any]]]: ...

    def client(self, process: int, rng: random.Random) -> ClientGen: ...

    def check(self, db: Any, ops: list[Op]) -> dict[str, Verdict]: ...
