"""ohmdb: a partitioned, replicated, transactional in-memory database on Ray actors.

Public API::

    from actors import Cluster, Schema, Table, procedure
    from actors.errors import OhmError
"""

from actors.client import BatchFuture, Cluster, TxnFuture
from actors.schema import Procedure, Schema, Table, procedure

__all__ = ["BatchFuture", "Cluster", "Procedure", "Schema", "Table", "TxnFuture", "procedure"]
