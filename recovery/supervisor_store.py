"""Where the supervisor keeps what must outlive it: the cluster map and the fault reports.

Design note
-----------
Two stores with one interface (``load_map``/``save_map``/``save_report``/
``reports``/``clear``):

* ``DirStore`` -- in ``data_dir/supervisor/``: ``map.json`` replaced
  atomically (temp file, fsync, rename, fsync of the directory) and
  ``faults.jsonl``, one JSON line per version of a report (the last line of an
  id wins).  A torn last line (crash mid-append) is skipped on reading.
* ``KVStore`` -- for memory-only clusters: any ``get(key)``/``put(key, bytes)``
  pair (the supervisor passes Ray's GCS key-value store, which outlives
  actor restarts), so this module needs no Ray.

Both validate what they read: a map must name the cluster and hold replicas;
garbage is reported as ``StoreCorrupt`` naming the file or key.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable

from actors.errors import OhmError
from recovery.faults import REPORTS_KEPT_MAX, latest

SUPERVISOR_DIR = "supervisor"
MAP_FILE = "map.json"
FAULTS_FILE = "faults.jsonl"


class StoreCorrupt(OhmError):
    code = "STORE_CORRUPT"


def _check_map(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("replicas"), list) or "name" not in data:
        raise StoreCorrupt(f"{where} does not hold a cluster map", where=where)
    return data


class DirStore:
    def __init__(self, data_dir: str) -> None:
        self.directory = os.path.join(data_dir, SUPERVISOR_DIR)
        os.makedirs(self.directory, exist_ok=True)

    @property
    def map_path(self) -> str:
        return os.path.join(self.directory, MAP_FILE)

    @property
    def faults_path(self) -> str:
        return os.path.join(self.directory, FAULTS_FILE)

    def save_map(self, data: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".map-", dir=self.directory)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.map_path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def load_map(self) -> dict[str, Any] | None:
        try:
            with open(self.map_path) as f:
                text = f.read()
        except FileNotFoundError:
            return None
        try:
            return _check_map(json.loads(text), self.map_path)
        except json.JSONDecodeError as exc:
            raise StoreCorrupt(f"{self.map_path} is not valid JSON ({exc})", where=self.map_path) from None

    def save_report(self, report: dict[str, Any]) -> None:
        with open(self.faults_path, "a") as f:
            f.write(json.dumps(report) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def reports(self) -> list[dict[str, Any]]:
        try:
            with open(self.faults_path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line from a crash mid-append
            if isinstance(rec, dict) and "id" in rec:
                records.append(rec)
        return latest(records)

    def clear(self) -> None:
        for path in (self.map_path, self.faults_path):
            if os.path.exists(path):
                os.remove(path)


class KVStore:
    def __init__(self, prefix: str, get: Callable[[str], bytes | None], put: Callable[[str, bytes], None]) -> None:
        self.prefix = prefix
        self._get, self._put = get, put

    def _load(self, key: str) -> Any:
        raw = self._get(f"{self.prefix}:{key}")
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise StoreCorrupt(f"key {self.prefix}:{key} does not hold JSON", where=f"{self.prefix}:{key}") from None

    def save_map(self, data: dict[str, Any]) -> None:
        self._put(f"{self.prefix}:map", json.dumps(data).encode())

    def load_map(self) -> dict[str, Any] | None:
        data = self._load("map")
        return None if data is None else _check_map(data, f"{self.prefix}:map")

    def save_report(self, report: dict[str, Any]) -> None:
        records = latest([*self.reports(), report])[-REPORTS_KEPT_MAX:]
        self._put(f"{self.prefix}:faults", json.dumps(records).encode())

    def reports(self) -> list[dict[str, Any]]:
        return list(self._load("faults") or [])

    def clear(self) -> None:
        self._put(f"{self.prefix}:map", b"null")
        self._put(f"{self.prefix}:faults", b"[]")
