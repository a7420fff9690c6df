"""The Arrow redo log, snapshots and recovery, on real files (no Ray)."""

from __future__ import annotations

import datetime as _dt
import os
import random
import shutil

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.partition_core import PartitionCore
from actors.schema import Schema, Table
from recovery.log_format import CorruptBatch, LogCodec, from_wire, to_wire
from recovery.redo import DELETE, INSERT, REQUEST, UPDATE, RedoRecord
from recovery.replay import LOG_DIR, SNAPSHOT_DIR, RecoveryFailed, recover_replica
from recovery.segments import QUARANTINE_DIR, LogWriteFailed, SegmentWriter, list_segments, read_log
from recovery.snapshots import list_snapshots, prune_snapshots, write_snapshot
from tests import bank

SCHEMA = bank.schema()


def _records(txn: int, rng: random.Random) -> list[RedoRecord]:
    """A few redo records of one transaction over accounts/entries."""
    acct = rng.randrange(20)
    out = [RedoRecord(txn, rng.choice([INSERT, UPDATE]), "accounts", acct,
                      {"id": acct, "owner": f"o{acct}", "balance": rng.randrange(1000)})]
    if rng.random() < 0.5:
        out.append(RedoRecord(txn, INSERT, "entries", (acct, txn), {"account": acct, "seq": txn, "amount": txn, "small": 1}))
    if rng.random() < 0.2:
        out.append(RedoRecord(txn, DELETE, "accounts", rng.randrange(20), None))
    return out


def _write_log(directory: str, batches: int, seed: int = 1, segment_bytes_max: int = 1 << 30,
               next_lsn: int = 1) -> list[list[RedoRecord]]:
    codec = LogCodec(SCHEMA)
    writer = SegmentWriter(os.path.join(directory, LOG_DIR), codec, next_lsn, segment_bytes_max)
    rng = random.Random(seed)
    written = []
    for b in range(batches):
        recs = [r for t in range(3) for r in _records(b * 10 + t + 1, rng)]
        batch, meta = codec.encode(recs, writer.next_lsn, epoch=1)
        writer.append(batch, meta)
        writer.flush()
        written.append(recs)
    writer.close()
    return written


def _state_after(batches: list[list[RedoRecord]]) -> dict:
    core = PartitionCore(SCHEMA, 0, 1)
    for recs in batches:
        core.apply_redo(recs)
    return core.tables


def _recover(directory: str) -> tuple[PartitionCore, object]:
    core = PartitionCore(SCHEMA, 0, 1)
    report = recover_replica(directory, core, LogCodec(SCHEMA))
    return core, report


def test_round_trip_through_segments(tmp_path):
    written = _write_log(str(tmp_path), 30, segment_bytes_max=4096)
    assert len(list_segments(str(tmp_path / LOG_DIR))) > 1  # rotation happened
    core, report = _recover(str(tmp_path))
    assert core.tables == _state_after(written)
    assert report.records_replayed == sum(map(len, written)) and report.cut == []
    assert report.next_lsn == sum(map(len, written)) + 1


def test_segments_are_plain_arrow_streams(tmp_path):
    written = _write_log(str(tmp_path), 5)
    (_, path), = list_segments(str(tmp_path / LOG_DIR))
    with open(path, "rb") as f:
        table = pa.ipc.open_stream(f).read_all()   # stock pyarrow, no ohmdb reader
    assert table.num_rows == sum(map(len, written))
    assert table.column("lsn").to_pylist() == list(range(1, table.num_rows + 1))
    first = written[0][0]
    assert table.column("op")[0].as_py() == first.op and table.column("table")[0].as_py() == "accounts"
    assert table.column("accounts")[0].as_py() == first.row


def test_writer_refuses_a_gap_and_stays_failed_after_an_fsync_error(tmp_path):
    codec = LogCodec(SCHEMA)

    def full_disk_fsync(fd):
        raise OSError(28, "No space left on device")

    writer = SegmentWriter(str(tmp_path), codec, 1, fsync=full_disk_fsync)
    batch, meta = codec.encode(_records(1, random.Random(1)), 5, epoch=1)
    with pytest.raises(LogWriteFailed, match="expects 1"):
        writer.append(batch, meta)
    batch, meta = codec.encode(_records(1, random.Random(1)), 1, epoch=1)
    writer.append(batch, meta)
    with pytest.raises(LogWriteFailed, match="No space left"):
        writer.flush()
    assert writer.flushed_lsn == 0
    batch, meta = codec.encode(_records(2, random.Random(2)), writer.next_lsn, epoch=1)
    with pytest.raises(LogWriteFailed, match="failed since an earlier error"):
        writer.append(batch, meta)
    with pytest.raises(LogWriteFailed):
        writer.flush()


@pytest.mark.parametrize("seed", range(12))
def test_torn_tail_at_a_random_offset_keeps_a_valid_prefix(tmp_path, seed):
    written = _write_log(str(tmp_path), 12, seed=seed)
    (_, path), = list_segments(str(tmp_path / LOG_DIR))
    size = os.path.getsize(path)
    cut_at = random.Random(seed).randrange(1, size)
    with open(path, "r+b") as f:
        f.truncate(cut_at)
    core, report = _recover(str(tmp_path))
    kept = report.log_batches
    assert core.tables == _state_after(written[:kept])
    assert kept < len(written) or cut_at >= size - 8
    if kept < len(written):
        assert report.cut and os.listdir(tmp_path / LOG_DIR / QUARANTINE_DIR)
    # Recovery again finds the same state and nothing more to cut; appending continues the LSNs.
    core2, report2 = _recover(str(tmp_path))
    assert core2.tables == core.tables and report2.cut == []
    more = _write_log(str(tmp_path), 2, seed=99, next_lsn=report2.next_lsn)
    core3, report3 = _recover(str(tmp_path))
    assert core3.tables == _state_after(written[:kept] + more) and report3.cut == []


@pytest.mark.parametrize("seed", range(40))
def test_a_flipped_byte_is_detected_and_never_applied(tmp_path, seed):
    written = _write_log(str(tmp_path), 10, seed=seed)
    (_, path), = list_segments(str(tmp_path / LOG_DIR))
    rng = random.Random(1000 + seed)
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
        f.seek(0)
        f.write(data)
    core, report = _recover(str(tmp_path))
    kept = report.log_batches
    # Whatever was kept is exactly a prefix of what was written: nothing garbled got in.
    assert core.tables == _state_after(written[:kept])
    if kept < len(written):
        assert report.cut


def test_a_shipped_batch_round_trips_and_damage_on_the_wire_is_refused():
    codec = LogCodec(SCHEMA)
    records = _records(7, random.Random(3)) + _records(8, random.Random(4))
    batch, meta = codec.encode(records, 41, epoch=2)
    wire = to_wire(batch)
    assert isinstance(wire, bytes)
    back = from_wire(wire, codec.arrow_schema, meta)
    assert back.equals(batch) and codec.decode(back) == records
    flipped = bytearray(wire)
    flipped[len(wire) // 2] ^= 0x10
    bad = {
        "a flipped bit": (bytes(flipped), meta),
        "a cut message": (wire[: len(wire) // 3], meta),
        "garbage": (b"not arrow at all", meta),
        "no metadata": (wire, None),
        "a wrong record count": (wire, {**meta, b"records": b"99"}),
        "not bytes": (batch, meta),
    }
    for what, (data, m) in bad.items():
        with pytest.raises(CorruptBatch):
            from_wire(data, codec.arrow_schema, m)
            pytest.fail(f"{what} was accepted")


def _with_cell(batch: pa.RecordBatch, column: str, row: int, value) -> pa.RecordBatch:
    """``batch`` with one cell replaced (a well-formed batch whose records do not make sense)."""
    values = batch.column(column).to_pylist()
    values[row] = value
    arrays = [pa.array(values, type=batch.schema.field(column).type) if name == column else batch.column(name)
              for name in batch.schema.names]
    return pa.RecordBatch.from_arrays(arrays, schema=batch.schema)


def test_decode_takes_each_record_from_its_own_column_and_names_a_record_that_makes_no_sense():
    codec = LogCodec(SCHEMA)
    request = RedoRecord(0, REQUEST, "", "req-1", {"outcome": b"\x00pickled"})
    records = _records(7, random.Random(3)) + [request] + _records(8, random.Random(5))
    batch, _ = codec.encode(records, 41, epoch=2)
    assert codec.decode(batch) == records
    data_row = 0
    request_row = records.index(request)
    nonsense = {
        "unknown table 'nope'": (_with_cell(batch, "table", data_row, "nope"), data_row),
        "op 'BOGUS'": (_with_cell(batch, "op", data_row, "BOGUS"), data_row),
        "no row image for table 'accounts'": (_with_cell(batch, "accounts", data_row, None), data_row),
        "REQUEST without its request column": (_with_cell(batch, "request", request_row, None), request_row),
        "PREPARE without its request column \\(table 'accounts'\\)":
            (_with_cell(batch, "op", data_row, "PREPARE"), data_row),
    }
    for message, (bad, row) in nonsense.items():
        with pytest.raises(CorruptBatch, match=f"record lsn={41 + row}: .*{message}"):
            codec.decode(bad)


def test_snapshot_then_log_and_fallback_to_an_older_snapshot(tmp_path):
    written = _write_log(str(tmp_path), 10)
    lsns, total = [], 0
    for recs in written:
        total += len(recs)
        lsns.append(total)
    snap_dir = str(tmp_path / SNAPSHOT_DIR)
    for upto in (4, 7):
        state = _state_after(written[:upto])
        write_snapshot(snap_dir, SCHEMA, lsns[upto - 1], 1, {n: list(r.values()) for n, r in state.items()})
    expected = _state_after(written)
    core, report = _recover(str(tmp_path))
    assert core.tables == expected and report.snapshot_lsn == lsns[6]
    assert report.records_replayed == total - lsns[6]
    # Corrupt the newest snapshot: the older one plus a longer log gives the same state.
    newest = list_snapshots(snap_dir)[-1][1]
    with open(os.path.join(newest, "accounts.arrow"), "r+b") as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0x5A
        f.seek(0)
        f.write(data)
    core, report = _recover(str(tmp_path))
    assert core.tables == expected and report.snapshot_lsn == lsns[3] and report.snapshots_skipped
    # Delete it: same again.
    shutil.rmtree(newest)
    core, report = _recover(str(tmp_path))
    assert core.tables == expected and report.snapshot_lsn == lsns[3]


def test_replay_is_idempotent_by_lsn(tmp_path):
    written = _write_log(str(tmp_path), 6)
    state = _state_after(written)
    write_snapshot(str(tmp_path / SNAPSHOT_DIR), SCHEMA, sum(map(len, written)), 1,
                   {n: list(r.values()) for n, r in state.items()})
    core, report = _recover(str(tmp_path))
    assert core.tables == state and report.records_replayed == 0 and report.records_skipped > 0
    core2, _ = _recover(str(tmp_path))
    assert core2.tables == state


def test_a_log_gap_after_the_snapshot_refuses_to_guess(tmp_path):
    _write_log(str(tmp_path), 3)
    segs = list_segments(str(tmp_path / LOG_DIR))
    _write_log(str(tmp_path), 3, seed=5, next_lsn=100)
    os.remove(segs[0][1])  # records 1..n are gone, and no snapshot covers them
    with pytest.raises(RecoveryFailed, match="jumps from lsn 0 to 100"):
        _recover(str(tmp_path))


def test_prune_keeps_the_newest_snapshots(tmp_path):
    for lsn in (3, 5, 9):
        write_snapshot(str(tmp_path), SCHEMA, lsn, 1, {})
    assert prune_snapshots(str(tmp_path), keep=2) == 5
    assert [lsn for lsn, _ in list_snapshots(str(tmp_path))] == [5, 9]


def test_read_log_without_repair_reports_but_moves_nothing(tmp_path):
    _write_log(str(tmp_path), 4)
    (_, path), = list_segments(str(tmp_path / LOG_DIR))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 3)
    before = os.path.getsize(path)
    scan = read_log(str(tmp_path / LOG_DIR), LogCodec(SCHEMA), lambda *a: None, repair=False)
    assert scan.cut and os.path.getsize(path) == before
    assert not os.path.exists(tmp_path / LOG_DIR / QUARANTINE_DIR)


# --- every common Arrow type survives the log and a snapshot -------------------------------------

TYPED = Table("typed", pa.schema([
    pa.field("id", pa.int64(), nullable=False),
    ("i8", pa.int8()), ("u32", pa.uint32()), ("f32", pa.float32()), ("f64", pa.float64()),
    ("s", pa.string()), ("b", pa.binary()), ("flag", pa.bool_()),
    ("ts", pa.timestamp("us")), ("day", pa.date32()), ("money", pa.decimal128(12, 2)),
    ("tags", pa.list_(pa.int64())), ("point", pa.struct([("x", pa.int32()), ("y", pa.int32())])),
]), primary_key="id", partition_by="id")
TYPED_SCHEMA = Schema([TYPED])

_rows = st.fixed_dictionaries({
    "id": st.integers(0, 50),
    "i8": st.none() | st.integers(-128, 127),
    "u32": st.none() | st.integers(0, 2**32 - 1),
    "f32": st.none() | st.sampled_from([0.0, 1.5, -2.25, 1e10]),  # exactly representable in float32
    "f64": st.none() | st.floats(allow_nan=False, width=64),
    "s": st.none() | st.text(max_size=8),
    "b": st.none() | st.binary(max_size=8),
    "flag": st.none() | st.booleans(),
    "ts": st.none() | st.datetimes(min_value=_dt.datetime(1970, 1, 1), max_value=_dt.datetime(2200, 1, 1)),
    "day": st.none() | st.dates(min_value=_dt.date(1, 1, 1), max_value=_dt.date(9999, 12, 31)),
    "money": st.none() | st.decimals(min_value=-10**9, max_value=10**9, places=2, allow_nan=False, allow_infinity=False),
    "tags": st.none() | st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3),
    "point": st.none() | st.fixed_dictionaries({"x": st.integers(-5, 5), "y": st.integers(-5, 5)}),
})


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.lists(st.tuples(st.sampled_from([INSERT, UPDATE, DELETE]), _rows), min_size=1, max_size=12))
def test_every_common_type_round_trips_through_log_and_snapshot(tmp_path_factory, ops):
    directory = str(tmp_path_factory.mktemp("typed"))
    codec = LogCodec(TYPED_SCHEMA)
    clean = [(op, TYPED.check_row(row)) for op, row in ops]
    records = [RedoRecord(i, op, "typed", row["id"], None if op == DELETE else row) for i, (op, row) in enumerate(clean)]
    writer = SegmentWriter(os.path.join(directory, LOG_DIR), codec, 1)
    half = len(records) // 2
    for part, first in ((records[:half], 1), (records[half:], half + 1)):
        if part:
            batch, meta = codec.encode(part, first, epoch=1)
            writer.append(batch, meta)
    writer.flush()
    writer.close()
    expected = PartitionCore(TYPED_SCHEMA, 0, 1)
    expected.apply_redo(records)
    got = PartitionCore(TYPED_SCHEMA, 0, 1)
    recover_replica(directory, got, codec)
    assert got.tables == expected.tables
    write_snapshot(os.path.join(directory, SNAPSHOT_DIR), TYPED_SCHEMA, len(records), 1, expected.state_copy())
    shutil.rmtree(os.path.join(directory, LOG_DIR))
    again = PartitionCore(TYPED_SCHEMA, 0, 1)
    report = recover_replica(directory, again, codec)
    assert report.snapshot_lsn == len(records) and again.tables == expected.tables
