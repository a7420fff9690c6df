"""Table / Schema / procedure definitions: InvalidConfig naming the problem, and check_args."""

from typing import Any, Optional, Union

import pyarrow as pa
import pytest

from actors.errors import InvalidArguments, InvalidConfig
from actors.schema import Procedure, Schema, Table, procedure

COLS = pa.schema([("region", pa.string()), ("id", pa.int64()), ("val", pa.int64())])


def good_table(name: str = "t") -> Table:
    return Table(name, COLS, ["region", "id"], partition_by="region")


@procedure(partition_by="id")
def good_proc(tx, id: int):
    return id


# --- tables ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, fragments, details", [
    pytest.param(dict(primary_key="id", partition_by="val"),
                 ["partition column 'val' must be part of the primary key"], {"column": "val"},
                 id="partition-column-not-in-pk"),
    pytest.param(dict(primary_key=["region", "nope"], partition_by="region"),
                 ["primary-key column 'nope' is not in the schema"], {"column": "nope"}, id="unknown-pk-column"),
    pytest.param(dict(primary_key="id", partition_by="id", replicated=True),
                 ["replicated table has no partition column"], {}, id="replicated-with-partition-by"),
    pytest.param(dict(primary_key="id"), ["give partition_by=COLUMN or replicated=True"], {},
                 id="neither-partitioned-nor-replicated"),
    pytest.param(dict(primary_key=[], partition_by="id"), ["primary_key must name at least one column"], {},
                 id="empty-pk"),
    pytest.param(dict(primary_key=["id", "id"], partition_by="id"), ["repeats a column"], {}, id="repeated-pk"),
    pytest.param(dict(primary_key="id", partition_by="nope"), ["partition column 'nope'"], {"column": "nope"},
                 id="unknown-partition-column"),
])
def test_table_definition_errors(kwargs, fragments, details):
    with pytest.raises(InvalidConfig) as info:
        Table("t", COLS, **kwargs)
    err = info.value
    assert err.code == "INVALID_CONFIG"
    assert "table 't'" in err.message
    for fragment in fragments:
        assert fragment in err.message, err.message
    assert err.details["table"] == "t"
    for k, v in details.items():
        assert err.details[k] == v


def test_table_schema_must_be_arrow_and_columns_unique():
    with pytest.raises(InvalidConfig, match="must be a pyarrow.Schema, got dict"):
        Table("t", {"id": pa.int64()}, "id", partition_by="id")
    dup = pa.schema([("id", pa.int64()), ("id", pa.string())])
    with pytest.raises(InvalidConfig, match="duplicate column names"):
        Table("t", dup, "id", partition_by="id")


@pytest.mark.parametrize("name", ["", "1t", "has space", "class", None, 3])
def test_table_name_must_be_an_identifier(name):
    with pytest.raises(InvalidConfig, match="not a valid identifier"):
        Table(name, COLS, "id", partition_by="id")


def test_valid_tables():
    t = good_table()
    assert t.primary_key == ("region", "id") and t.partition_by == "region" and not t.replicated
    r = Table("r", COLS, "id", replicated=True)
    assert r.replicated and r.partition_by is None and r.primary_key == ("id",)
    # the partition column may be any column of a composite key
    assert Table("u", COLS, ["region", "id"], partition_by="id").partition_value_of_key(("eu", 5)) == 5
    assert t.partition_value_of_key(("eu", 5)) == "eu"


# --- schema -----------------------------------------------------------------------------


def test_schema_rejects_duplicate_table_names():
    with pytest.raises(InvalidConfig, match="duplicate table name 't'") as info:
        Schema([good_table("t"), good_table("u"), good_table("t")])
    assert info.value.details == {"table": "t"}


def test_schema_rejects_duplicate_procedure_names():
    @procedure(partition_by="id", name="good_proc")
    def another(tx, id: int):
        return -id

    with pytest.raises(InvalidConfig, match="duplicate procedure name 'good_proc'") as info:
        Schema([good_table()], [good_proc, another])
    assert info.value.details == {"procedure": "good_proc"}


def test_schema_accepts_multi_partition_writes_and_reads():
    @procedure(multi_partition=True)
    def writer(tx):
        pass

    @procedure(multi_partition=True, read_only=True)
    def reader(tx):
        pass

    assert writer.multi_partition and not writer.read_only
    assert reader.multi_partition and reader.read_only
    assert list(Schema([good_table()], [writer, reader]).procedures) == ["writer", "reader"]


def test_schema_rejects_non_tables_undecorated_procedures_and_no_tables():
    with pytest.raises(InvalidConfig, match="must be Table objects, got str"):
        Schema(["t"])

    def plain(tx, id):
        pass

    with pytest.raises(InvalidConfig, match="must be decorated with @procedure, got 'plain'"):
        Schema([good_table()], [plain])
    with pytest.raises(InvalidConfig, match="at least one table"):
        Schema([], [good_proc])


def test_valid_schema():
    s = Schema([good_table("a"), Table("b", COLS, "id", replicated=True)], [good_proc])
    assert list(s.tables) == ["a", "b"] and list(s.procedures) == ["good_proc"]


# --- procedure definitions --------------------------------------------------------------


def _definition_error(make) -> InvalidConfig:
    with pytest.raises(InvalidConfig) as info:
        make()
    return info.value


def test_procedure_without_partition_by():
    def f(tx, id):
        pass

    err = _definition_error(lambda: procedure(f))
    assert "procedure 'f'" in err.message and "give partition_by=ARGUMENT" in err.message
    err = _definition_error(lambda: procedure()(f))
    assert "give partition_by=ARGUMENT" in err.message
    assert err.details == {"procedure": "f"}


def test_partition_by_must_be_a_parameter():
    def f(tx, id, val):
        pass

    err = _definition_error(lambda: procedure(partition_by="user")(f))
    assert "partition_by='user' is not one of its parameters ['id', 'val']" in err.message
    # the transaction context is not a parameter that can route
    err = _definition_error(lambda: procedure(partition_by="tx")(f))
    assert "partition_by='tx' is not one of its parameters" in err.message


@pytest.mark.parametrize("src, bad", [
    ("def f(tx, id, *args): pass", "args"),
    ("def f(tx, id, **kwargs): pass", "kwargs"),
    ("def f(tx, id, *, flag=False): pass", "flag"),
])
def test_parameters_must_be_positional(src, bad):
    scope: dict[str, Any] = {}
    exec(src, scope)
    err = _definition_error(lambda: procedure(partition_by="id")(scope["f"]))
    assert f"parameter {bad!r} must be positional" in err.message


def test_routing_parameter_may_not_have_a_default():
    def f(tx, id=0):
        pass

    err = _definition_error(lambda: procedure(partition_by="id")(f))
    assert "the routing parameter 'id' may not have a default" in err.message

    def g(tx, id, extra=0):   # a default elsewhere is fine
        pass

    assert procedure(partition_by="id")(g).required == 1


def test_first_parameter_must_be_the_transaction_context():
    def no_params():
        pass

    def star_only(*args):
        pass

    for f in (no_params, star_only):
        err = _definition_error(lambda: procedure(multi_partition=True, read_only=True)(f))
        assert "first parameter must be the transaction context" in err.message


def test_multi_partition_with_partition_by():
    def f(tx, id):
        pass

    err = _definition_error(lambda: procedure(multi_partition=True, read_only=True, partition_by="id")(f))
    assert "multi-partition procedure has no partition_by" in err.message


@pytest.mark.parametrize("name", ["has-dash", "1st", "def"])
def test_procedure_name_must_be_an_identifier(name):
    def f(tx, id):
        pass

    err = _definition_error(lambda: procedure(partition_by="id", name=name)(f))
    assert "not a valid identifier" in err.message


def test_procedure_metadata():
    @procedure(partition_by="region", read_only=True)
    def lookup(tx, id: int, region: str, limit: int = 10):
        return (id, region, limit)

    assert isinstance(lookup, Procedure)
    assert lookup.name == "lookup" and lookup.params == ("id", "region", "limit")
    assert lookup.required == 2 and lookup.partition_index == 1 and lookup.read_only
    assert lookup.partition_value((5, "eu")) == "eu"
    assert lookup(None, 5, "eu") == (5, "eu", 10)    # still callable as the function


# --- Procedure.check_args ----------------------------------------------------------------


@procedure(partition_by="k")
def typed_args(tx, k: int, opt: Optional[int], union_none: int | None, s: str, f: float, b: bool, raw, any_: Any,
               by: bytes, lst: list, dct: dict[str, int], tup: tuple, either: Union[str, bytes], last: str | None = None):
    pass


GOOD = dict(k=1, opt=None, union_none=None, s="s", f=1.5, b=True, raw=object(), any_=[1], by=b"x", lst=[1],
            dct={"a": 1}, tup=(1,), either="x")


def call_args(**overrides) -> tuple:
    return tuple({**GOOD, **overrides}.values())


@pytest.mark.parametrize("overrides", [
    {}, dict(opt=3), dict(union_none=-4), dict(f=2), dict(b=False), dict(raw=None), dict(raw=[1, {2}]),
    dict(any_=None), dict(either=b"bytes"), dict(dct={}), dict(k=2**80),
])
def test_check_args_accepts(overrides):
    typed_args.check_args(call_args(**overrides))


def test_check_args_accepts_the_optional_trailing_argument():
    typed_args.check_args(call_args() + ("tail",))
    typed_args.check_args(call_args() + (None,))


@pytest.mark.parametrize("overrides, argument, fragment", [
    (dict(k="1"), "k", "must be int, got '1' (str)"),
    (dict(k=True), "k", "must be int"),
    (dict(k=None), "k", "must be int, got None"),
    (dict(k=1.0), "k", "must be int"),
    (dict(opt="3"), "opt", "must be int or None"),
    (dict(opt=False), "opt", "must be int or None"),
    (dict(union_none=2.5), "union_none", "must be int or None"),
    (dict(s=None), "s", "must be str,"),
    (dict(s=b"s"), "s", "must be str"),
    (dict(f="1.5"), "f", "must be int or float"),
    (dict(f=True), "f", "must be int or float"),
    (dict(b=1), "b", "must be bool"),
    (dict(by="x"), "by", "must be bytes"),
    (dict(lst=(1,)), "lst", "must be list"),
    (dict(dct=[("a", 1)]), "dct", "must be dict"),
    (dict(tup=[1]), "tup", "must be tuple"),
    (dict(either=1), "either", "must be str or bytes"),
    (dict(either=None), "either", "must be str or bytes"),
])
def test_check_args_rejects(overrides, argument, fragment):
    with pytest.raises(InvalidArguments) as info:
        typed_args.check_args(call_args(**overrides))
    assert info.value.details["argument"] == argument
    assert info.value.details["procedure"] == "typed_args"
    assert f"argument {argument!r} {fragment}" in info.value.message


def test_check_args_rejects_a_wrong_last_optional():
    with pytest.raises(InvalidArguments, match="argument 'last' must be str or None"):
        typed_args.check_args(call_args() + (5,))


@pytest.mark.parametrize("n", [0, 1, 12, 15, 20])
def test_check_args_counts(n):
    with pytest.raises(InvalidArguments) as info:
        typed_args.check_args(tuple(GOOD.values())[:n] + (None,) * max(0, n - len(GOOD)))
    assert info.value.details["got"] == n
    assert info.value.details["expected"] == "13..14"
    assert f"got {n}" in info.value.message


def test_check_args_exact_count_message():
    with pytest.raises(InvalidArguments, match=r"takes 1 argument\(s\) \['id'\], got 2") as info:
        good_proc.check_args((1, 2))
    assert info.value.details["expected"] == "1"


def test_unannotated_parameters_are_unchecked():
    @procedure(partition_by="a")
    def loose(tx, a, b, c=None):
        pass

    assert loose.arg_types == (None, None, None)
    for args in [(1, "x"), ("k", None, object()), ((1, 2), [3], {4: 5}), (None, None)]:
        loose.check_args(args)
    with pytest.raises(InvalidArguments):
        loose.check_args((1,))


def test_unresolvable_annotation_leaves_arguments_unchecked():
    @procedure(partition_by="a")
    def fwd(tx, a: "NoSuchType", b: int):  # noqa: F821
        pass

    fwd.check_args(("anything", 2))   # the unresolvable annotation leaves its argument unchecked
    with pytest.raises(InvalidArguments, match="'b' must be int"):
        fwd.check_args(("anything", "not an int"))   # the others are still checked


def test_an_empty_procedure_name_is_refused():
    with pytest.raises(InvalidConfig, match="procedure name ''"):
        procedure(lambda tx, k: None, partition_by="k", name="")
