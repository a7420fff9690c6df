"""ohmdb: a partitioned, replicated, transactional in-memory database on Ray actors.

Public API::

    from actors import Cluster, Schema, Table, procedure
    from actors.errors import OhmError

Names are loaded on first use, so ``import actors.errors`` (or any pure core
module) does not import the client and Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BatchFuture": "actors.client", "Cluster": "actors.client", "TxnFuture": "actors.client",
    "Procedure": "actors.schema", "Schema": "actors.schema", "Table": "actors.schema", "procedure": "actors.schema",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'actors' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
