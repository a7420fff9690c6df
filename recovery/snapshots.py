"""Snapshots: one Arrow IPC file per table plus a manifest, written atomically.

Design note
-----------
A snapshot of a partition replica at LSN ``n`` holds every row after applying
records 1..n.  It is written to ``snap-<n, 20 digits>.tmp/``: one Arrow IPC
file per table, then ``manifest.json`` (LSN, epoch, row counts, CRC-32 and size
of every file), each fsynced; the directory is then renamed to
``snap-<n>/`` and its parent fsynced.  A snapshot without a valid manifest, or
whose files do not match the manifest, does not exist for recovery: the
loader falls back to the next older one (and a longer log).

``SNAPSHOTS_KEPT`` snapshots are kept; the log is truncated only before the
oldest kept one, so falling back always finds the log it needs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import zlib
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from actors.schema import Schema
from recovery.segments import fsync_dir

SNAPSHOTS_KEPT = 2
SNAPSHOT_RE = re.compile(r"^snap-(\d{20})$")
MANIFEST = "manifest.json"
#: Remembered request outcomes (not a table; the name cannot collide with an identifier).
REQUESTS_FILE = "ohmdb-requests.arrow"
REQUESTS_SCHEMA = pa.schema([("id", pa.string()), ("outcome", pa.binary())])


def snapshot_name(lsn: int) -> str:
    return f"snap-{lsn:020d}"


def list_snapshots(directory: str) -> list[tuple[int, str]]:
    """(lsn, path) of complete-looking snapshot directories, oldest first."""
    if not os.path.isdir(directory):
        return []
    out = []
    for name in os.listdir(directory):
        m = SNAPSHOT_RE.match(name)
        if m:
            out.append((int(m.group(1)), os.path.join(directory, name)))
    return sorted(out)


def _crc_file(path: str) -> tuple[int, int]:
    crc, size = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return crc, size


def write_snapshot(directory: str, schema: Schema, lsn: int, epoch: int,
                   rows: dict[str, list[dict[str, Any]]], requests: list[tuple[str, bytes]] = ()) -> dict[str, Any]:
    """Write a snapshot of ``rows`` (table -> row dicts) taken at ``lsn``; its manifest."""
    os.makedirs(directory, exist_ok=True)
    final = os.path.join(directory, snapshot_name(lsn))
    if os.path.exists(final):
        with open(os.path.join(final, MANIFEST)) as f:
            return json.load(f)
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    started = time.perf_counter()
    files: dict[str, Any] = {}
    parts = [(name, t.schema, pa.Table.from_pylist(rows.get(name, []), schema=t.schema), f"{name}.arrow")
             for name, t in schema.tables.items()]
    parts.append(("", REQUESTS_SCHEMA, pa.Table.from_pylist([{"id": i, "outcome": o} for i, o in requests],
                                                             schema=REQUESTS_SCHEMA), REQUESTS_FILE))
    for name, table_schema, data, file_name in parts:
        path = os.path.join(tmp, file_name)
        with open(path, "wb") as raw:
            with pa.ipc.new_file(raw, table_schema) as writer:
                writer.write_table(data)
            raw.flush()
            os.fsync(raw.fileno())
        crc, size = _crc_file(path)
        entry = {"file": file_name, "rows": data.num_rows, "crc32": crc, "bytes": size}
        if name:
            files[name] = entry
        else:
            requests_entry = entry
    manifest = {"lsn": lsn, "epoch": epoch, "tables": files, "requests": requests_entry, "created_at": time.time(),
                "write_s": round(time.perf_counter() - started, 6)}
    with open(os.path.join(tmp, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)
    os.rename(tmp, final)
    fsync_dir(directory)
    return manifest


class SnapshotInvalid(Exception):
    pass


@dataclass
class LoadedSnapshot:
    lsn: int
    epoch: int
    path: str
    rows: dict[str, list[dict[str, Any]]]
    requests: list[tuple[str, bytes]]


def load_snapshot(path: str, schema: Schema) -> LoadedSnapshot:
    """Read and verify one snapshot directory; SnapshotInvalid if anything is off."""
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            manifest = json.load(f)
        rows: dict[str, list[dict[str, Any]]] = {}
        for name, table in schema.tables.items():
            rows[name] = _read_verified(path, manifest["tables"][name], table.schema).to_pylist()
        requests = [(r["id"], r["outcome"]) for r in _read_verified(path, manifest["requests"], REQUESTS_SCHEMA).to_pylist()]
        return LoadedSnapshot(int(manifest["lsn"]), int(manifest.get("epoch", 0)), path, rows, requests)
    except SnapshotInvalid:
        raise
    except (OSError, KeyError, ValueError, TypeError, pa.ArrowException) as exc:
        raise SnapshotInvalid(f"{path}: {type(exc).__name__}: {exc}") from None


def _read_verified(path: str, entry: dict[str, Any], schema: pa.Schema) -> pa.Table:
    file_path = os.path.join(path, entry["file"])
    crc, size = _crc_file(file_path)
    if (crc, size) != (entry["crc32"], entry["bytes"]):
        raise SnapshotInvalid(f"{file_path}: checksum or size differs from the manifest")
    with pa.memory_map(file_path) as source:
        data = pa.ipc.open_file(source).read_all()
    if not data.schema.equals(schema) or data.num_rows != entry["rows"]:
        raise SnapshotInvalid(f"{file_path}: schema or row count differs from the manifest")
    return data


def prune_snapshots(directory: str, keep: int = SNAPSHOTS_KEPT) -> int | None:
    """Delete all but the newest ``keep`` snapshots (and stale temp dirs); the oldest kept LSN."""
    snaps = list_snapshots(directory)
    for _, path in snaps[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        if name.endswith(".tmp"):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    kept = snaps[-keep:]
    return kept[0][0] if kept else None
