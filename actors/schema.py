"""Tables, stored procedures and the schema that binds them.

Design note
-----------
A ``Table`` is an Arrow schema plus a primary key and either a partition column
(which must be part of the primary key, as in VoltDB, so a key alone tells its
partition) or ``replicated=True`` (a copy on every partition).  Rows are plain
dicts; a key is the primary-key value, a tuple for a composite key.

Values are checked against the Arrow type of their column by small per-column
checker functions built once per table (the hot path of every write); a value
of the wrong type is a ``SchemaViolation`` naming table, column and value.
Integral values are accepted for float columns and stored as ``float``.

A ``Procedure`` wraps a Python function ``f(tx, *args)``.  Its signature gives
the argument count and, through simple annotations (``int``, ``str``,
``float``, ``bool``, ``bytes``, ``list``, ``dict``, ``tuple``, ``X | None``),
the argument types checked before the body runs.  ``partition_by`` names the
argument that routes a single-partition procedure.  ``multi_partition=True``
procedures run on the coordinator and reach partitions through ``tx.run`` /
``tx.run_many`` / ``tx.run_all`` inside one serializable transaction
(two-phase commit); ``read_only=True`` ones are consistent reads.
"""

from __future__ import annotations

import copy
import datetime as _dt
import decimal
import inspect
import keyword
import operator
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import pyarrow as pa

from actors.errors import InvalidArguments, InvalidConfig, SchemaViolation

Checker = Callable[[Any], Any]  # returns the normalized value or raises _Bad


class _Bad(Exception):
    """Internal: a value does not fit a column type (turned into SchemaViolation)."""


# --- value checkers per Arrow type ----------------------------------------------


def _int_checker(t: pa.DataType) -> Checker:
    bits = t.bit_width
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if pa.types.is_signed_integer(t) else (0, (1 << bits) - 1)

    def check(v: Any) -> Any:
        if type(v) is int:  # the common case: no conversion
            if lo <= v <= hi:
                return v
        elif isinstance(v, int) and not isinstance(v, bool):
            if lo <= v <= hi:
                return int(v)
        else:
            raise _Bad(f"expected an integer for {t}")
        raise _Bad(f"out of range for {t} [{lo}, {hi}]")

    return check


def _float_checker(t: pa.DataType) -> Checker:
    def check(v: Any) -> Any:
        if type(v) is float:
            return v
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        raise _Bad(f"expected a number for {t}")

    return check


def _instance_checker(kinds: tuple[type, ...], what: str, exclude: tuple[type, ...] = ()) -> Checker:
    def check(v: Any) -> Any:
        if isinstance(v, kinds) and not isinstance(v, exclude):
            return v
        raise _Bad(f"expected {what}")

    return check


def _generic_checker(t: pa.DataType) -> Checker:
    """pyarrow decides (decimals' precision and scale, nested types, ...).

    Nested values (lists, structs, maps) are stored as deep copies, so a
    procedure that keeps a reference cannot change storage behind undo/redo.
    """
    nested = is_nested(t)
    if pa.types.is_decimal(t):
        plain: tuple[type, ...] = (decimal.Decimal,)
    else:
        plain = ()

    def check(v: Any) -> Any:
        if plain and not isinstance(v, plain):
            raise _Bad(f"expected a decimal.Decimal for {t}")
        try:
            pa.scalar(v, type=t)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            raise _Bad(f"not convertible to {t}: {exc}") from None
        return copy.deepcopy(v) if nested else v

    return check


def is_nested(t: pa.DataType) -> bool:
    return pa.types.is_nested(t)


def checker_for(t: pa.DataType) -> Checker:
    """A fast checker for the common Arrow types, pyarrow itself for the rest."""
    if pa.types.is_integer(t):
        return _int_checker(t)
    if pa.types.is_floating(t):
        return _float_checker(t)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _instance_checker((str,), "a str")
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return _instance_checker((bytes,), "bytes")
    if pa.types.is_boolean(t):
        return _instance_checker((bool,), "a bool")
    if pa.types.is_timestamp(t):
        return _instance_checker((_dt.datetime,), "a datetime.datetime")
    if pa.types.is_date(t):
        return _instance_checker((_dt.date,), "a datetime.date", exclude=(_dt.datetime,))
    return _generic_checker(t)


def _check_name(kind: str, name: Any) -> None:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise InvalidConfig(f"{kind} name {name!r} is not a valid identifier", name=repr(name))


# --- tables ---------------------------------------------------------------------


class Table:
    """A table: Arrow schema, primary key, and partition column or replication."""

    def __init__(
        self,
        name: str,
        schema: pa.Schema,
        primary_key: str | Iterable[str],
        partition_by: str | None = None,
        replicated: bool = False,
    ) -> None:
        _check_name("table", name)
        if not isinstance(schema, pa.Schema):
            raise InvalidConfig(f"table {name!r}: schema must be a pyarrow.Schema, got {type(schema).__name__}", table=name)
        pk = [primary_key] if isinstance(primary_key, str) else list(primary_key)
        columns = list(schema.names)
        if len(set(columns)) != len(columns):
            raise InvalidConfig(f"table {name!r}: duplicate column names in {columns}", table=name)
        if not pk:
            raise InvalidConfig(f"table {name!r}: primary_key must name at least one column", table=name)
        for col in pk:
            if col not in columns:
                raise InvalidConfig(f"table {name!r}: primary-key column {col!r} is not in the schema {columns}", table=name, column=col)
        if len(set(pk)) != len(pk):
            raise InvalidConfig(f"table {name!r}: primary key {pk} repeats a column", table=name)
        if replicated and partition_by is not None:
            raise InvalidConfig(f"table {name!r}: a replicated table has no partition column", table=name)
        if not replicated:
            if partition_by is None:
                raise InvalidConfig(f"table {name!r}: give partition_by=COLUMN or replicated=True", table=name)
            if partition_by not in pk:
                raise InvalidConfig(
                    f"table {name!r}: partition column {partition_by!r} must be part of the primary key {pk}",
                    table=name, column=partition_by,
                )
        self.name = name
        self.schema = schema
        self.primary_key: tuple[str, ...] = tuple(pk)
        self.partition_by = partition_by
        self.replicated = bool(replicated)
        self.columns: tuple[str, ...] = tuple(columns)
        self._column_set = frozenset(columns)
        self._checkers: dict[str, Checker] = {f.name: checker_for(f.type) for f in schema}
        self._nullable: dict[str, bool] = {f.name: (f.nullable and f.name not in pk) for f in schema}
        self._nested = frozenset(f.name for f in schema if is_nested(f.type))
        self._pk_index = {col: i for i, col in enumerate(self.primary_key)}
        self._partition_pos = None if partition_by is None else self._pk_index[partition_by]
        # Per-column (name, checker, nullable) in schema order: check_row's loop without lookups.
        self._row_plan = tuple((c, self._checkers[c], self._nullable[c]) for c in columns)
        self._key_plan = tuple((c, self._checkers[c]) for c in self.primary_key)
        self._key_getter = operator.itemgetter(*self.primary_key)

    def __repr__(self) -> str:
        how = "replicated" if self.replicated else f"partition_by={self.partition_by!r}"
        return f"Table({self.name!r}, pk={list(self.primary_key)}, {how})"

    # -- values ---------------------------------------------------------------

    def check_value(self, column: str, value: Any) -> Any:
        if value is None:
            if self._nullable[column]:
                return None
            raise SchemaViolation(
                f"table {self.name!r}: column {column!r} may not be null",
                table=self.name, column=column, value=None,
            )
        try:
            return self._checkers[column](value)
        except _Bad as bad:
            raise SchemaViolation(
                f"table {self.name!r}: column {column!r} got {value!r} ({type(value).__name__}): {bad}",
                table=self.name, column=column, value=repr(value),
            ) from None

    def check_row(self, row: Any) -> dict[str, Any]:
        """A validated, normalized copy of a full row."""
        if type(row) is not dict and not isinstance(row, Mapping):
            raise SchemaViolation(f"table {self.name!r}: a row must be a dict, got {type(row).__name__}", table=self.name)
        if row.keys() != self._column_set:
            self._explain_columns(row.keys(), full=True)
        clean = {}
        for col, check, nullable in self._row_plan:  # check_value inlined; it explains a bad value
            value = row[col]
            if value is None:
                clean[col] = None if nullable else self.check_value(col, value)
                continue
            try:
                clean[col] = check(value)
            except _Bad:
                self.check_value(col, value)
                raise
        return clean

    def check_changes(self, changes: Any) -> dict[str, Any]:
        """A validated copy of a partial row for update (no primary-key columns)."""
        if type(changes) is not dict and not isinstance(changes, Mapping):
            raise SchemaViolation(f"table {self.name!r}: changes must be a dict, got {type(changes).__name__}", table=self.name)
        if not changes.keys() <= self._column_set:
            self._explain_columns(changes.keys(), full=False)
        for col in self.primary_key:
            if col in changes:
                raise SchemaViolation(
                    f"table {self.name!r}: update may not change primary-key column {col!r}; delete and insert instead",
                    table=self.name, column=col,
                )
        return {col: self.check_value(col, v) for col, v in changes.items()}

    def _explain_columns(self, given: Iterable[str], full: bool) -> None:
        given = set(given)
        unknown = sorted(map(str, given - self._column_set))
        if unknown:
            raise SchemaViolation(
                f"table {self.name!r}: unknown column(s) {unknown}; columns are {list(self.columns)}",
                table=self.name, column=unknown[0],
            )
        missing = [c for c in self.columns if c not in given]
        if full and missing:
            raise SchemaViolation(
                f"table {self.name!r}: missing column(s) {missing} (give None for a nullable column)",
                table=self.name, column=missing[0],
            )

    def copy_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A copy safe to hand to user code (nested values copied too)."""
        if not self._nested:
            return dict(row)
        return {c: copy.deepcopy(v) if c in self._nested else v for c, v in row.items()}

    # -- keys -----------------------------------------------------------------

    def key_of(self, row: Mapping[str, Any]) -> Any:
        return self._key_getter(row)  # the value of a one-column key, else a tuple

    def check_key(self, key: Any) -> Any:
        """A validated, normalized key (scalar, or tuple for a composite key)."""
        pk = self.primary_key
        if len(pk) == 1:
            if key is not None:  # the common case inlined; _check_key_part explains a bad key
                try:
                    return self._key_plan[0][1](key)
                except _Bad:
                    pass
            return self._check_key_part(pk[0], key)
        if not isinstance(key, tuple) or len(key) != len(pk):
            raise SchemaViolation(
                f"table {self.name!r}: key must be a tuple of {len(pk)} values {list(pk)}, got {key!r}",
                table=self.name, value=repr(key),
            )
        parts = []
        for (col, check), value in zip(self._key_plan, key):
            try:
                parts.append(check(value) if value is not None else self._check_key_part(col, value))
            except _Bad:
                self.check_value(col, value)
                raise
        return tuple(parts)

    def _check_key_part(self, column: str, value: Any) -> Any:
        if value is None:
            raise SchemaViolation(f"table {self.name!r}: key column {column!r} may not be None", table=self.name, column=column)
        return self.check_value(column, value)

    def partition_value_of_key(self, key: Any) -> Any:
        """The partition-column value inside a (normalized) key."""
        if self._partition_pos is None:
            raise SchemaViolation(f"table {self.name!r} is replicated; it has no partition column", table=self.name)
        return key if len(self.primary_key) == 1 else key[self._partition_pos]


# --- procedures -----------------------------------------------------------------

_SIMPLE_TYPES: dict[Any, tuple[type, ...]] = {
    int: (int,), float: (int, float), str: (str,), bool: (bool,), bytes: (bytes,),
    list: (list,), dict: (dict,), tuple: (tuple,),
}


def _arg_checker(annotation: Any) -> tuple[tuple[type, ...], bool] | None:
    """(accepted types, none_ok) for a simple annotation, None when unchecked."""
    if annotation in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[annotation], False
    origin = typing.get_origin(annotation)
    if origin in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[origin], False
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        none_ok = len(members) < len(typing.get_args(annotation))
        kinds: list[type] = []
        for m in members:
            sub = _arg_checker(m)
            if sub is None:
                return None
            kinds.extend(sub[0])
        return tuple(kinds), none_ok
    return None


def _type_hints(f: Callable[..., Any]) -> dict[str, Any]:
    """Annotations resolved to objects; one that cannot be resolved is left out (unchecked)."""
    try:
        return typing.get_type_hints(f)
    except Exception:
        pass
    hints = {}
    for name, value in getattr(f, "__annotations__", {}).items():
        if isinstance(value, str):
            try:
                value = eval(value, getattr(f, "__globals__", {}))  # what get_type_hints does, one by one
            except Exception:
                continue
        hints[name] = value
    return hints


@dataclass(frozen=True)
class Procedure:
    """A stored procedure: a function ``f(tx, *args)`` registered by name."""

    func: Callable[..., Any]
    name: str
    partition_by: str | None = None
    multi_partition: bool = False
    read_only: bool = False
    params: tuple[str, ...] = ()
    required: int = 0
    partition_index: int | None = None
    arg_types: tuple[tuple[tuple[type, ...], bool] | None, ...] = field(default=(), repr=False)

    def __call__(self, tx: Any, *args: Any) -> Any:
        return self.func(tx, *args)

    def check_args(self, args: tuple) -> None:
        """Raise InvalidArguments unless ``args`` fit the signature and annotations."""
        n = len(args)
        if not (self.required <= n <= len(self.params)):
            want = str(self.required) if self.required == len(self.params) else f"{self.required}..{len(self.params)}"
            raise InvalidArguments(
                f"procedure {self.name!r} takes {want} argument(s) {list(self.params)}, got {n}",
                procedure=self.name, expected=want, got=n,
            )
        for name, spec, value in zip(self.params, self.arg_types, args):
            if spec is None:
                continue
            kinds, none_ok = spec
            if value is None and none_ok:
                continue
            if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
                continue
            raise InvalidArguments(
                f"procedure {self.name!r}: argument {name!r} must be {' or '.join(k.__name__ for k in kinds)}"
                f"{' or None' if none_ok else ''}, got {value!r} ({type(value).__name__})",
                procedure=self.name, argument=name, value=repr(value),
            )

    def partition_value(self, args: tuple) -> Any:
        """The routing argument of a single-partition procedure."""
        if self.partition_index is None:
            raise InvalidArguments(f"procedure {self.name!r} is multi-partition; it has no routing argument", procedure=self.name)
        if self.partition_index >= len(args):
            self.check_args(args)  # raises: the routing argument is required
        return args[self.partition_index]


def procedure(
    func: Callable[..., Any] | None = None,
    *,
    partition_by: str | None = None,
    multi_partition: bool = False,
    read_only: bool = False,
    name: str | None = None,
) -> Any:
    """Register ``func(tx, *args)`` as a stored procedure.

    ``@procedure(partition_by="arg")`` routes each call to the partition owning
    that argument's value.  ``@procedure(multi_partition=True)`` runs on the
    coordinator: fragments run on partitions through ``tx.run(key, fragment,
    *args)`` / ``tx.run_many([...])`` / ``tx.run_all(fragment, *args)`` inside
    one transaction, committed by two-phase commit (``read_only=True``: a
    consistent read, no commit round).
    """

    def wrap(f: Callable[..., Any]) -> Procedure:
        pname = f.__name__ if name is None else name
        _check_name("procedure", pname)
        sig = inspect.signature(f)
        ps = list(sig.parameters.values())
        if not ps or ps[0].kind not in (ps[0].POSITIONAL_ONLY, ps[0].POSITIONAL_OR_KEYWORD):
            raise InvalidConfig(f"procedure {pname!r}: the first parameter must be the transaction context", procedure=pname)
        rest = ps[1:]
        for p in rest:
            if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                raise InvalidConfig(f"procedure {pname!r}: parameter {p.name!r} must be positional (no *args/**kwargs)", procedure=pname)
        params = tuple(p.name for p in rest)
        required = sum(1 for p in rest if p.default is p.empty)
        hints = _type_hints(f)
        arg_types = tuple(_arg_checker(hints.get(p)) if p in hints else None for p in params)
        if multi_partition and partition_by is not None:
            raise InvalidConfig(f"procedure {pname!r}: a multi-partition procedure has no partition_by", procedure=pname)
        if not multi_partition:
            if partition_by is None:
                raise InvalidConfig(
                    f"procedure {pname!r}: give partition_by=ARGUMENT (single-partition) or multi_partition=True",
                    procedure=pname,
                )
            if partition_by not in params:
                raise InvalidConfig(
                    f"procedure {pname!r}: partition_by={partition_by!r} is not one of its parameters {list(params)}",
                    procedure=pname,
                )
            if sig.parameters[partition_by].default is not inspect.Parameter.empty:
                raise InvalidConfig(
                    f"procedure {pname!r}: the routing parameter {partition_by!r} may not have a default",
                    procedure=pname,
                )
        return Procedure(
            func=f, name=pname, partition_by=partition_by, multi_partition=multi_partition,
            read_only=read_only, params=params, required=required,
            partition_index=None if partition_by is None else params.index(partition_by),
            arg_types=arg_types,
        )

    return wrap(func) if func is not None else wrap


# --- schema -----------------------------------------------------------------------


class Schema:
    """The tables and procedures of one database, validated as a whole."""

    def __init__(self, tables: Iterable[Table], procedures: Iterable[Procedure] = ()) -> None:
        self.tables: dict[str, Table] = {}
        for t in tables:
            if not isinstance(t, Table):
                raise InvalidConfig(f"Schema tables must be Table objects, got {type(t).__name__}")
            if t.name in self.tables:
                raise InvalidConfig(f"duplicate table name {t.name!r}", table=t.name)
            self.tables[t.name] = t
        self.procedures: dict[str, Procedure] = {}
        for p in procedures:
            if not isinstance(p, Procedure):
                raise InvalidConfig(
                    f"Schema procedures must be decorated with @procedure, got {getattr(p, '__name__', type(p).__name__)!r}"
                )
            if p.name in self.procedures:
                raise InvalidConfig(f"duplicate procedure name {p.name!r}", procedure=p.name)
            self.procedures[p.name] = p
        if not self.tables:
            raise InvalidConfig("a schema needs at least one table")

    def __repr__(self) -> str:
        return f"Schema(tables={list(self.tables)}, procedures={list(self.procedures)})"
