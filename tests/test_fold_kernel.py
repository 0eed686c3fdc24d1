"""The summary's compiled fold (xvtrace.analysis.fold_kernel, fold_program, count_map,
parsers.field_table) against the polars queries it replaced (tests/summary_reference.py):
the same tables, rows and exit histogram from real captures and from arbitrary records,
through each of its drivers (decoded frames, the file's records, the table's slices), with
maps small enough to grow on every few keys."""

from __future__ import annotations

import lzma
from collections import Counter

import numpy as np
import polars as pl
import pytest
import summary_reference as reference
from helpers import ARM64, FIXTURES, X86_PV
from hypothesis import given, settings
from hypothesis import strategies as st

from xvtrace.analysis import count_map, exit_pairs, fold_program, summary, xen_fold
from xvtrace.parsers import fields
from xvtrace.parsers import xen_events as xe
from xvtrace.parsers.field_table import FieldTable, read
from xvtrace.parsers.schema import EVENT_SCHEMA
from xvtrace.parsers.xentrace import XentraceDecoder, write_frame
from xvtrace.testing.synth import hvm_records

KHZ = 2_400_000


@pytest.fixture(autouse=True)
def tiny_maps(monkeypatch):
    """Maps of 4 entries: every capture grows them many times over."""
    monkeypatch.setattr(count_map, "FIRST_CAPACITY", 4)


def assert_same_fold(ours, theirs) -> None:
    for name, want in theirs.tables.items():
        got = ours.tables[name]
        assert got.schema == want.schema, name
        assert got.sort(got.columns, nulls_last=True).equals(
            want.sort(want.columns, nulls_last=True)
        ), name
    for name, want in theirs.rows.items():
        assert ours.rows[name].equals(want), name
    hist = [pl.DataFrame(f.exits).group_by("key", "handler", "io", "dur").agg(pl.col("count").sum())
            .sort(pl.all()) for f in (ours, theirs)]  # fmt: skip
    assert hist[0].equals(hist[1])
    assert_same_runstates(ours)


def assert_same_runstates(folded) -> None:
    """The runstate sections, computed on arrays, as the reference's query computed them."""
    assert summary.runstates(folded).equals(reference.runstates(folded))
    columns = ("sdom", "svcpu", "ts_ns", "end_ns", "state", "entered_by", "dur")
    want = reference.runstate_intervals(folded).select(columns)
    assert summary.runstate_intervals(folded).equals(want)


def every_driver(path, tmp_path):
    """The fold of the xentrace file at `path` from its decoded frames, its records and a
    bundle's table, and the reference's from the frames."""
    frames = list(XentraceDecoder(path, cpu_khz=KHZ, chunk_bytes=1 << 14).frames())
    table = tmp_path / "events.parquet"
    pl.concat(frames).write_parquet(table, row_group_size=1000)
    return (
        summary.fold(frames),
        summary.fold_file(XentraceDecoder(path, cpu_khz=KHZ, chunk_bytes=1 << 14)),
        summary.fold(pl.scan_parquet(table)),
    ), reference.fold(pl.concat(frames))


def _plain(tmp_path, trace):
    if trace.suffix == ".xz":
        plain = tmp_path / "xentrace.bin"
        plain.write_bytes(lzma.decompress(trace.read_bytes()))
        return plain
    return trace


@pytest.mark.parametrize(
    "trace",
    [X86_PV / "trace.bin", ARM64 / "trace.bin",
     FIXTURES / "xen" / "hvm-epam-smp" / "raw" / "xentrace.bin.xz",
     FIXTURES / "xen" / "hvm-suse-grant" / "raw" / "xentrace.bin.xz"],
    ids=["x86-pv", "arm64-pvh", "hvm-epam-smp", "hvm-suse-grant"],
)  # fmt: skip
def test_real_captures_fold_as_the_queries_did(trace, tmp_path, monkeypatch):
    """PV hypercalls and events, an Arm guest, an HVM guest of two vCPUs with its MMIO
    and interrupts, one with grant operations: every table, row and exit the same."""
    monkeypatch.setattr(summary, "CHUNK_ROWS", 5000)  # the table read in slices
    drivers, want = every_driver(_plain(tmp_path, trace), tmp_path)
    assert sum(len(t) for t in want.tables.values()) > 10
    for got in drivers:
        assert_same_fold(got, want)


def test_a_grant_for_a_domain_past_the_id_range_is_counted_for_none(tmp_path):
    """A damaged grant record whose domain word is past 2**31 (its Int32 cast raised, and
    `summary` of two damaged Arm traces exited with an internal error): counted, for no
    domain."""
    rows = pl.DataFrame({
        "cpu": [0, 0, 0], "ts_raw": [10**9, 10**9 + 100, 10**9 + 200], "has_ts": [True] * 3,
        "code": [0x0010F001] * 3, "nargs": [1] * 3, "arg0": [0xFFFFFFF0, 7, 0xFFFFFFF0],
        **{f"arg{i}": [0] * 3 for i in range(1, 7)},
    }).with_columns(pl.col("cpu").cast(pl.Int16), pl.col("nargs").cast(pl.UInt8),
                    pl.col("code").cast(pl.UInt32))  # fmt: skip
    path = tmp_path / "t.bin"
    write_frame(path, rows, round_cycles=2_000)
    drivers, want = every_driver(path, tmp_path)
    for got in drivers:
        assert_same_fold(got, want)
        grants = got.tables["grants"].sort("for_dom", nulls_last=True)
        assert grants.select("for_dom", "count").rows() == [(7, 1), (None, 2)]


def test_a_row_without_a_time_leaves_its_groups_times_alone():
    """A frame row whose time is null (its column reaches the kernel as a float NaN): its
    group's first and last times are the other rows', as a one-row-at-a-time add gave
    them (the group's run took its first row's time as it came)."""
    from xvtrace.analysis import xen_fold

    rows = {"ts_ns": [None, 100, 200], "cpu": [0] * 3, "dom": [1] * 3, "vcpu": [0] * 3,
            "code": [0x00081002] * 3, "nargs": [2] * 3, "has_ts": [True] * 3,
            **{f"arg{i}": [1] * 3 for i in range(7)}, "addr": [None] * 3}  # fmt: skip
    f = xen_fold.Fold()
    f.add_frame(pl.DataFrame(rows).select(pl.col(c).cast(EVENT_SCHEMA[c]) for c in rows))
    groups = f.result().tables["groups"]
    assert groups.select("records", "first_ns", "last_ns").rows() == [(3, 100, 200)]


CODES = sorted(xe.SPECS)


@st.composite
def records(draw) -> pl.DataFrame:
    """Records of any catalogued event (and unknown and guest ids), any payload, on a few
    pCPUs, some without a TSC: short records lack the fields they would carry."""
    n = draw(st.integers(1, 300))
    pick = st.one_of(st.sampled_from(CODES), st.sampled_from([0x0008F123, 0x0800F001, 0x0002F00F]))
    code = draw(st.lists(pick, min_size=n, max_size=n))
    word = st.integers(0, 2**32 - 1) | st.sampled_from([0, 1, 2, 0x10001, 0x7FFF0000])
    rows = {
        "cpu": draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)),
        "ts_raw": np.cumsum(draw(st.lists(st.integers(0, 3000), min_size=n, max_size=n))) + 10**9,
        "has_ts": draw(st.lists(st.booleans(), min_size=n, max_size=n)),
        "code": code,
        "nargs": draw(st.lists(st.integers(0, 7), min_size=n, max_size=n)),
        **{f"arg{i}": draw(st.lists(word, min_size=n, max_size=n)) for i in range(7)},
    }
    df = pl.DataFrame(rows).with_columns(pl.col("cpu").cast(pl.Int16), pl.col("nargs").cast(pl.UInt8),
                                         pl.col("code").cast(pl.UInt32))  # fmt: skip
    # (every pCPU's first record has its TSC: a record before any is dated by the decoder)
    first = pl.col("ts_raw") == pl.col("ts_raw").min().over("cpu")
    return df.with_columns(pl.col("has_ts") | first)


@settings(max_examples=40, deadline=None)
@given(rows=records())
def test_arbitrary_records_fold_as_the_queries_did(rows, tmp_path_factory):
    path = tmp_path_factory.mktemp("fold") / "t.bin"
    write_frame(path, rows, round_cycles=2_000)
    drivers, want = every_driver(path, path.parent)
    for got in drivers:
        assert_same_fold(got, want)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16), ncpu=st.integers(1, 4), lost=st.sampled_from([0, 3, 7]))
def test_hvm_traces_with_losses_fold_as_the_queries_did(seed, ncpu, lost, tmp_path_factory):
    """Exits, entries, handler records, wake-ups and lost records over several pCPUs:
    the exit pairing's rows, cut into chunks anywhere, pair as the queries' did."""
    path = tmp_path_factory.mktemp("hvm") / "t.bin"
    write_frame(path, hvm_records(2000, seed=seed, ncpu=ncpu, lost_every=lost),
                round_cycles=2_400_000)  # fmt: skip
    drivers, want = every_driver(path, path.parent)
    assert want.exits["count"].sum() > 1000
    for got in drivers:
        assert_same_fold(got, want)


def test_records_before_any_tsc_fold_as_their_frames(tmp_path):
    """A file whose first 1500 records carry no TSC, read 4 KiB at a time: the chunks
    handed over before the origin is known are timed as their frames are (the origin a
    chunk is handed over with, not the one the decoder found since, ahead on its thread)."""
    rows = hvm_records(4000, seed=1, ncpu=2)
    rows = rows.with_columns(pl.when(pl.int_range(pl.len()) < 1500).then(False)
                             .otherwise(pl.col("has_ts")).alias("has_ts"))  # fmt: skip
    path = tmp_path / "t.bin"
    write_frame(path, rows, round_cycles=2_400_000)
    frames = list(XentraceDecoder(path, cpu_khz=KHZ, chunk_bytes=4096).frames())
    want = reference.fold(pl.concat(frames))
    for _ in range(3):
        got = summary.fold_file(XentraceDecoder(path, cpu_khz=KHZ, chunk_bytes=4096))
        assert_same_fold(got, want)


def test_records_whose_times_wrap_fold_as_their_frames(tmp_path):
    """A run of records 2^61 cycles ahead of the rest (a corrupt clock), timed at 1000 kHz:
    their times in ns pass int64's range and wrap, so a record's time does not grow with
    its TSC. The chunks holding them are paired sorted whole, as the decoder's time order
    has them, and the fold equals its frames'."""
    rows = hvm_records(3000, seed=2, ncpu=2)
    ahead = (pl.int_range(pl.len()) >= 1200) & (pl.int_range(pl.len()) < 1300)
    rows = rows.with_columns(pl.when(ahead).then(pl.col("ts_raw") + 2**61).otherwise("ts_raw"))
    path = tmp_path / "t.bin"
    write_frame(path, rows, round_cycles=2_400_000)
    frames = list(XentraceDecoder(path, cpu_khz=1000, chunk_bytes=4096).frames())
    want = reference.fold(pl.concat(frames))
    got = summary.fold_file(XentraceDecoder(path, cpu_khz=1000, chunk_bytes=4096))
    assert_same_fold(got, want)


@settings(max_examples=100, deadline=None)
@given(
    code=st.sampled_from(sorted({c for c, s in xe.SPECS.items()
                                 if any(s.name == e for p in fold_program.SLOTS.values() for e, _ in p)})),
    nargs=st.integers(0, 7),
    words=st.lists(st.integers(0, 2**32 - 1), min_size=7, max_size=7),
)  # fmt: skip
def test_field_slots_read_what_the_expressions_read(code, nargs, words):
    """Every slot of the fold's field table, on any record of its events: the value (or
    its absence) of the coalesce of fields.xen it stands for."""
    table = FieldTable.build(fold_program.SLOTS)
    row = {"event": xe.SPECS[code].name, "code": code, "nargs": nargs,
           **{f"arg{i}": w for i, w in enumerate(words)}}  # fmt: skip
    df = pl.DataFrame([row], schema={"event": EVENT_SCHEMA["event"], "code": pl.UInt32,
                                     "nargs": pl.UInt8, **{f"arg{i}": pl.UInt64 for i in range(7)}})  # fmt: skip
    a = np.array(words, np.uint64)
    for s, (slot, pairs) in enumerate(fold_program.SLOTS.items()):
        want = df.select(pl.coalesce(*[fields.xen(e, f) for e, f in pairs])).item()
        value, present = read(table.layouts, table.rows.get(code, 0), s, code, nargs, a)
        assert (int(value) if present else None) == want, slot


@settings(max_examples=50, deadline=None)
@given(keys=st.lists(st.tuples(st.integers(-3, 3), st.integers(-(2**63), 2**63 - 1),
                               st.sampled_from([0, -1, 2**62])), max_size=400))  # fmt: skip
def test_a_count_map_counts_what_a_counter_counts(keys):
    """Keys of any bits (a count of 0 marks a free entry, never a key), many repeated,
    into a map of 4 entries that grows as it fills."""
    k = (
        [np.array(c, np.int64) for c in zip(*keys, strict=True)]
        if keys
        else [np.zeros(0, np.int64)] * 3
    )
    (m,) = count_map.fill((count_map.new(wide=False),), len(k[0]), 1,
                          lambda maps, start: count_map.tally_rows(*maps[0], *k, start))  # fmt: skip
    got = {tuple(r[:3]): r[count_map.COUNT] for r in count_map.used(m).tolist()}
    assert got == Counter(keys)


@st.composite
def exit_rows(draw):
    """Exit pairing rows as the records of a few pCPUs lie in a file: each pCPU's rows in
    TSC order, its windows interleaved with the others'; many on one instant (ts: a
    TSC / 3), a vCPU's rows from more than one pCPU (wake-ups, a migration)."""
    n = draw(st.integers(1, 300))
    ncpu = draw(st.integers(1, 3))
    cpu = np.array(draw(st.lists(st.integers(0, ncpu - 1), min_size=n, max_size=n)))
    step = np.array(draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)), np.uint64)
    tsc = np.zeros(n, np.uint64)
    for c in range(ncpu):  # each pCPU's own clock, from its own start
        mine = cpu == c
        tsc[mine] = np.cumsum(step[mine]) + np.uint64(draw(st.integers(0, 20)))
    window = draw(st.integers(1, 20))  # rows of a pCPU written together
    place = np.lexsort((np.arange(n), cpu, np.arange(n) // window))
    role = draw(st.lists(st.sampled_from([0, 0, 1, 1, 2, 3, 4, 5, 6, 6]), min_size=n, max_size=n))
    vk = draw(st.lists(st.sampled_from([1, 2, 0x10001, exit_pairs.UNKNOWN_VCPU]), min_size=n,
                       max_size=n))  # fmt: skip
    rows = {"ts": (tsc // np.uint64(3)).astype(np.int64), "role": np.array(role, np.uint8),
            "vk": np.array(vk, np.uint64), "reason": np.arange(n, dtype=np.uint32) % 3,
            "port": np.arange(n, dtype=np.uint16) % 2, "tsc": tsc}  # fmt: skip
    rows = {k: v[place] for k, v in rows.items()}  # in file order
    dues = sorted(draw(st.lists(st.integers(0, int(tsc.max()) + 1), max_size=6)))
    # the batch by which each row has been read: a later one, past a due TSC, comes out
    # of time order (the decoder counts it out of order)
    late = draw(st.lists(st.sampled_from([0, 0, 0, 0, 1, 2]), min_size=n, max_size=n))
    rows["read"] = np.minimum(np.maximum.accumulate(np.array(late)), len(dues))
    return rows, dues


NO_TSC = np.zeros(0, np.uint64)


@settings(max_examples=100, deadline=None)
@given(exit_rows())
def test_exit_rows_due_in_file_order_pair_as_in_time_order(data):
    """Exits.add_grouped, handed the rows now due in the order their records lie in the
    file (put by vCPU, Exits.grouped), closes the exits `add` closes from the same rows put in time order (the decoder's
    order: by TSC, ties in file order, each batch of due rows after the last, rows read
    late out of time order): a vCPU at a time, the instant held back at a batch's end
    joined by its rows of the next."""
    rows, dues = data
    place = np.arange(len(rows["ts"]))
    names = ("ts", "role", "vk", "reason", "port")
    ordered, unordered = xen_fold.Exits(times=False), xen_fold.Exits(times=False)
    taken = np.zeros(len(place), np.bool_)
    for batch, due in enumerate([*dues, None]):
        now = ~taken & (rows["read"] <= batch)
        now &= True if due is None else rows["tsc"] <= np.uint64(due)
        taken |= now
        at = np.flatnonzero(now)
        o = at[np.lexsort((at, rows["tsc"][at]))]
        ordered.add([rows[k][o] for k in names])
        held = (*(rows[k][at] for k in names), rows["tsc"][at], place[at])
        now, start, _, lo, hi = unordered.grouped(held, np.zeros((0, 6), np.int64), NO_TSC, 0, None)
        unordered.add_grouped(now, start, lo, hi, True)
    got, want = (pl.DataFrame(e.result()).sort(pl.all()) for e in (unordered, ordered))
    assert got.equals(want)
