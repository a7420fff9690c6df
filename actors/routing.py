"""Stable hashing of partition values: the same partition in every process and run.

Design note
-----------
Python's ``hash()`` is salted per process for ``str``/``bytes``, so it can never
route rows (ARCHITECTURE.md).  ``stable_hash`` is a pure function of the value:

* ``int`` (and ``bool``, and anything with ``__index__`` such as numpy ints):
  the SplitMix64 finalizer over the value reduced to 64 bits -- fast, well mixed.
* ``str``: BLAKE2b-64 of the UTF-8 bytes; ``bytes``: BLAKE2b-64 of the bytes.
* ``float``: an integral float hashes like the equal int (``7.0`` routes with
  ``7``); other floats hash their IEEE-754 bytes.
* ``tuple``: a fold of the element hashes.

The value types are part of the routing contract: changing this file moves rows.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

from actors.errors import InvalidArguments

_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    x &= _MASK64
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _digest64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def stable_hash(value: Any) -> int:
    """A 64-bit hash of ``value`` that is identical in every process."""
    if isinstance(value, int):
        if -(1 << 63) <= value < (1 << 64):
            return _mix64(value)
        return _digest64(value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True))
    if isinstance(value, str):
        return _digest64(value.encode("utf-8"))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _digest64(bytes(value))
    if isinstance(value, float):
        if value.is_integer():
            return stable_hash(int(value))
        return _digest64(struct.pack("<d", value))
    if isinstance(value, tuple):
        h = 0x6A09E667F3BCC908
        for item in value:
            h = _mix64(h ^ stable_hash(item))
        return h
    if hasattr(value, "__index__"):
        return stable_hash(value.__index__())
    raise InvalidArguments(
        f"cannot route by a value of type {type(value).__name__}: {value!r} "
        "(partition values must be int, str, bytes, float or a tuple of them)",
        value=repr(value), type=type(value).__name__,
    )


def partition_of(value: Any, partitions: int) -> int:
    """The partition (0..partitions-1) that owns rows with this partition value."""
    return stable_hash(value) % partitions
