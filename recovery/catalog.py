"""The catalog: what database a data directory holds, so it can be checked and read.

Design note
-----------
``<data_dir>/catalog.json`` records the format version, the cluster name, the
partition count, the replica count and every table (its Arrow schema as
base64 IPC bytes, primary key, partition column, replication).  It is written
once, atomically, when a database is created in an empty directory.

A later ``Cluster.create`` on the same directory recovers the database only if
the schema it is given matches the catalog (same partitions, same tables);
anything else is a typed ``InvalidConfig`` naming the difference.  The CLI
(``ohmdb recover``, ``ohmdb log dump``) rebuilds the tables from the catalog
alone -- it needs no procedures to read logs and snapshots.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pyarrow as pa

from actors.errors import InvalidConfig
from actors.schema import Schema, Table

CATALOG = "catalog.json"
CATALOG_FORMAT = 1


def replica_dir(data_dir: str, partition: int, replica: int) -> str:
    return os.path.join(data_dir, f"p{partition}", f"r{replica}")


def _table_entry(t: Table) -> dict[str, Any]:
    return {
        "name": t.name,
        "arrow_schema": base64.b64encode(t.schema.serialize().to_pybytes()).decode(),
        "primary_key": list(t.primary_key),
        "partition_by": t.partition_by,
        "replicated": t.replicated,
    }


def _table_from(entry: dict[str, Any]) -> Table:
    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(entry["arrow_schema"])))
    return Table(entry["name"], schema, entry["primary_key"], entry["partition_by"], entry["replicated"])


def read_catalog(data_dir: str) -> dict[str, Any] | None:
    path = os.path.join(data_dir, CATALOG)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            catalog = json.load(f)
        if catalog.get("format") != CATALOG_FORMAT:
            raise InvalidConfig(f"{path}: catalog format {catalog.get('format')!r}, this ohmdb reads {CATALOG_FORMAT}")
        return catalog
    except (OSError, ValueError) as exc:
        raise InvalidConfig(f"{path} is not a readable ohmdb catalog: {exc}", path=path) from None


def schema_from_catalog(catalog: dict[str, Any]) -> Schema:
    """The tables (no procedures) of a catalogued database."""
    return Schema(tables=[_table_from(e) for e in catalog["tables"]])


def write_catalog(data_dir: str, name: str, partitions: int, replicas: int, schema: Schema) -> dict[str, Any]:
    os.makedirs(data_dir, exist_ok=True)
    catalog = {
        "format": CATALOG_FORMAT, "name": name, "partitions": partitions, "replicas": replicas,
        "tables": [_table_entry(t) for t in schema.tables.values()],
    }
    tmp = os.path.join(data_dir, CATALOG + ".tmp")
    with open(tmp, "w") as f:
        json.dump(catalog, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(data_dir, CATALOG))
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return catalog


def check_compatible(catalog: dict[str, Any], partitions: int, replicas: int, schema: Schema, data_dir: str) -> None:
    """Raise InvalidConfig unless ``schema``/``partitions``/``replicas`` match the stored database."""
    if catalog["partitions"] != partitions:
        raise InvalidConfig(
            f"{data_dir} holds a database with {catalog['partitions']} partitions; asked for {partitions}",
            setting="partitions",
        )
    if catalog["replicas"] != replicas:
        raise InvalidConfig(
            f"{data_dir} holds a database with {catalog['replicas']} replicas per partition (k={catalog['replicas'] - 1}); "
            f"asked for k={replicas - 1} (changing k of a stored database is not supported yet)",
            setting="k",
        )
    stored = {e["name"]: e for e in catalog["tables"]}
    given = {t.name: _table_entry(t) for t in schema.tables.values()}
    if set(stored) != set(given):
        raise InvalidConfig(
            f"{data_dir} holds tables {sorted(stored)}; the schema has {sorted(given)}", setting="schema",
        )
    for name, entry in given.items():
        if entry != stored[name]:
            raise InvalidConfig(
                f"{data_dir}: table {name!r} differs from the stored one (columns, types, key or partitioning)",
                table=name, setting="schema",
            )
