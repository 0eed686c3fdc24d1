"""Decoder behaviour on real captures and on files made by the writer."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from helpers import ARM64, ARM_KHZ, X86_KHZ, X86_PV
from hypothesis import given
from hypothesis import strategies as st

from xvtrace.parsers import xen_events as xe
from xvtrace.parsers.schema import EVENT_SCHEMA
from xvtrace.parsers.xentrace import (
    CPU_CHANGE_HEADER,
    XentraceDecoder,
    decode_file,
    encode_windows,
    write_frame,
)
from xvtrace.parsers.xentrace_scan import tsc_to_ns
from xvtrace.testing.synth import hvm_records

RAW_COLS = ["cpu", "ts_raw", "has_ts", "code", "nargs", *[f"arg{i}" for i in range(7)]]


def raw_view(df: pl.DataFrame) -> pl.DataFrame:
    """Rows as the writer takes them, per pCPU in order (args beyond nargs as 0)."""
    return df.select(
        "cpu",
        "ts_raw",
        "has_ts",
        "code",
        "nargs",
        *[pl.col(f"arg{i}").fill_null(0) for i in range(7)],
    ).sort("cpu", maintain_order=True)


def test_real_x86_capture_decodes_every_record():
    df, stats = decode_file(X86_PV / "trace.bin", cpu_khz=X86_KHZ)
    # metadata.json of the capture: 273539 records including 210 CPU_CHANGE framing records
    assert len(df) == 273539 - 210
    assert stats.skipped_bytes == 0
    assert not stats.problems
    assert df.schema == pl.Schema(EVENT_SCHEMA)
    assert df["ts_ns"].is_sorted()
    assert df.filter(pl.col("event") == "unknown").height == 0
    assert df["ts_raw"].min() == 119430854252
    assert df["ts_raw"].max() == 157448238612
    per_cpu = df.group_by("cpu").agg(
        (4 + 8 * pl.col("has_ts").cast(pl.Int64) + 4 * pl.col("nargs").cast(pl.Int64)).sum()
    )
    windows_bytes = {
        0: 2187112,
        1: 3372564,
    }  # per_cpu_bytes in metadata.json (incl. 12-byte headers)
    for cpu, nbytes in per_cpu.iter_rows():
        assert nbytes < windows_bytes[cpu]


def test_real_arm64_capture_has_no_vm_exits():
    df, stats = decode_file(ARM64 / "trace.bin", cpu_khz=ARM_KHZ)
    assert len(df) == 48037 - 127  # metadata.json records, minus 127 CPU_CHANGE framing records
    assert stats.skipped_bytes == 0
    assert df.filter(pl.col("event").cast(pl.String).str.starts_with("hvm.")).height == 0
    span = (df["ts_raw"].max() - df["ts_raw"].min()) / 62_500_000
    assert span == pytest.approx(10.380380336, rel=1e-6)
    assert df["ts_ns"].max() - df["ts_ns"].min() == pytest.approx(10.380380336e9, abs=20)


@pytest.mark.parametrize("chunk_bytes", [8 << 20, 4096])
def test_writer_round_trip_keeps_every_field(tmp_path, chunk_bytes):
    """Whole, and read 4 KiB at a time (records held back for a later chunk, lost-record
    marks among them, counted once)."""
    src = hvm_records(3000, seed=3, ncpu=3, lost_every=5)
    path = tmp_path / "t.bin"
    write_frame(path, src, round_cycles=200_000, window_bytes=4096)
    out, stats = decode_file(path, cpu_khz=2_400_000, chunk_bytes=chunk_bytes)
    assert stats.decoded == len(src)
    assert stats.lost == int(src.filter(pl.col("code") == xe.TRC_LOST_RECORDS)["arg0"].sum())
    assert raw_view(out).equals(raw_view(src))


def test_writing_to_an_open_file_a_slice_at_a_time_gives_the_same_bytes(tmp_path, monkeypatch):
    import io

    from xvtrace.parsers import xentrace

    src = hvm_records(3000, seed=7)
    path = tmp_path / "t.bin"
    size = write_frame(path, src, round_cycles=200_000, window_bytes=4096)
    monkeypatch.setattr(xentrace, "WRITE_SLICE", 1000)  # not a multiple of a record's words
    out = io.BytesIO()
    assert write_frame(out, src, round_cycles=200_000, window_bytes=4096) == size
    assert out.getvalue() == path.read_bytes() and size > 10 * 1000


def test_chunk_size_does_not_change_the_table(tmp_path):
    src = hvm_records(5000, seed=4, ncpu=3)
    path = tmp_path / "t.bin"
    write_frame(path, src, round_cycles=100_000, window_bytes=2048)
    whole, _ = decode_file(path, cpu_khz=2_000_000)
    for chunk in (4096, 5000, 65536):
        part, _ = decode_file(path, cpu_khz=2_000_000, chunk_bytes=chunk)
        assert part.equals(whole), chunk


def test_records_without_tsc_inherit_across_windows(tmp_path):
    # window 1 (cpu0): VMEXIT with TSC; window 2 (cpu0): IOMEM without TSC -> same TSC
    words = np.array(
        [CPU_CHANGE_HEADER, 0, 24, 0x80000000 | 3 << 28 | xe.TRC_HVM_VMEXIT64, 1000, 0, 48, 0x1234, 0,
         CPU_CHANGE_HEADER, 0, 12, 2 << 28 | 0x00082217, 0xFEB00000, 7],
        dtype="<u4",
    )  # fmt: skip
    path = tmp_path / "t.bin"
    path.write_bytes(words.tobytes())
    df, _ = decode_file(path, cpu_khz=1_000_000)
    assert df["ts_raw"].to_list() == [1000, 1000]
    assert df["has_ts"].to_list() == [True, False]
    assert df["event"].to_list() == ["hvm.vmexit", "hvm.mmio_write"]
    assert df["addr"].to_list() == [None, 0xFEB00000]
    assert df["src_offset"].to_list() == [12, 48]


@pytest.mark.parametrize("base", [2**53 + 12345, 2**63 - 10**6])
def test_tscs_of_a_host_up_for_weeks_are_kept_exactly(tmp_path, base):
    """A TSC past 2**53 (35 days at 3 GHz) has no exact double: kept as the integer it is,
    inherited by the records without one, and timed exactly."""
    words = np.array(
        [CPU_CHANGE_HEADER, 0, 36,
         0x80000000 | xe.TRC_HVM_VMEXIT64, base & 0xFFFFFFFF, base >> 32,
         0x80000000 | xe.TRC_HVM_VMEXIT64, (base + 1001) & 0xFFFFFFFF, (base + 1001) >> 32,
         2 << 28 | 0x00082217, 0xFEB00000, 7],
        dtype="<u4",
    )  # fmt: skip
    path = tmp_path / "t.bin"
    path.write_bytes(words.tobytes())
    df, _ = decode_file(path, cpu_khz=3_000_000, tsc_origin=base - 7)
    assert df["ts_raw"].to_list() == [base, base + 1001, base + 1001]
    later = 1008 * 10**6 // 3_000_000
    assert df["ts_ns"].to_list() == [7 * 10**6 // 3_000_000, later, later]


def test_merge_orders_cpus_by_time_and_attributes_vcpus(tmp_path):
    rs = xe.TRC_SCHED_RUNSTATE_CHANGE
    words = np.array(
        [CPU_CHANGE_HEADER, 1, 16, 0x80000000 | 1 << 28 | rs | 1 << 8, 50, 0, (3 << 16) | 1,
         CPU_CHANGE_HEADER, 0, 16, 0x80000000 | 1 << 28 | rs | 1 << 8, 40, 0, (2 << 16) | 0,
         CPU_CHANGE_HEADER, 1, 12, 0x80000000 | xe.TRC_HVM_VMENTRY, 60, 0],
        dtype="<u4",
    )  # fmt: skip
    path = tmp_path / "t.bin"
    path.write_bytes(words.tobytes())
    df, _ = decode_file(path, cpu_khz=1000)
    assert df["ts_raw"].to_list() == [40, 50, 60]
    assert df["cpu"].to_list() == [0, 1, 1]
    # the VMENTRY on cpu1 runs in d3v1's context, set by the runnable->running change
    assert df.row(2, named=True)["dom"] == 3
    assert df.row(2, named=True)["vcpu"] == 1
    assert df["ts_ns"].to_list() == [0, 10_000, 20_000]


def test_tsc_to_ns_is_exact_for_large_spans():
    khz = 2_445_425
    assert tsc_to_ns(np.uint64(10**15 + 7), np.uint64(7), khz) == (10**15 * 10**6) // khz


@given(
    tsc=st.integers(0, 2**64 - 1),
    origin=st.integers(0, 2**64 - 1),
    khz=st.one_of(st.integers(1, 10_000_000), st.sampled_from([62_500, 2_445_425, 8_388_607])),
)
def test_tsc_to_ns_matches_exact_integer_arithmetic(tsc, origin, khz):
    dt = (tsc - origin + 2**63) % 2**64 - 2**63  # the signed wrapping difference
    if abs(dt * 10**6 // khz) >= 2**63 - 10**7:
        return  # beyond an Int64 of ns (292 years): not representable by the schema
    assert tsc_to_ns(np.uint64(tsc), np.uint64(origin), khz) == dt * 10**6 // khz


def test_unknown_ids_keep_raw_words_and_are_counted(tmp_path):
    words = np.array(
        [CPU_CHANGE_HEADER, 0, 20, 0x80000000 | 2 << 28 | 0x00089999, 5, 0, 0xAA, 0xBB], "<u4"
    )
    path = tmp_path / "t.bin"
    path.write_bytes(words.tobytes())
    df, _ = decode_file(path, cpu_khz=1000)
    row = df.row(0, named=True)
    assert row["event"] == "unknown"
    assert row["code"] == 0x00089999
    assert (row["nargs"], row["arg0"], row["arg1"], row["arg2"]) == (2, 0xAA, 0xBB, 0)


def test_guest_markers_are_named(tmp_path):
    words = np.array([CPU_CHANGE_HEADER, 0, 8, 1 << 28 | 0x0800F123, 42], "<u4")
    path = tmp_path / "t.bin"
    path.write_bytes(words.tobytes())
    df, _ = decode_file(path, cpu_khz=1000)
    assert df["event"].to_list() == ["guest.marker"]
    assert df["arg0"].to_list() == [42]


def test_wrap_records_are_kept_but_counted(tmp_path):
    words = np.array(
        [CPU_CHANGE_HEADER, 0, 28, 0x80000000 | xe.TRC_HVM_VMENTRY, 9, 0,
         3 << 28 | xe.TRC_TRACE_WRAP_BUFFER, 0xDEAD, 0xBEEF, 0xF00D],
        "<u4",
    )  # fmt: skip
    path = tmp_path / "t.bin"
    path.write_bytes(words.tobytes())
    dec = XentraceDecoder(path, cpu_khz=1000)
    df = pl.concat(list(dec.frames()))
    assert df["event"].to_list() == ["hvm.vmentry", "gen.wrap_buffer"]
    assert dec.stats.extra["wrap_buffer"] == 1


def test_encode_windows_splits_at_window_bytes():
    n = 100
    out = encode_windows(
        np.zeros(n, np.int64), np.arange(n, dtype=np.uint64), np.ones(n, bool),
        np.full(n, xe.TRC_HVM_VMENTRY, np.uint32), np.zeros((n, 7), np.uint32), np.zeros(n, np.int64),
        round_cycles=10**9, window_bytes=240,
    )  # fmt: skip
    # 100 records x 12 bytes in windows of at most 240 bytes -> 5 windows
    assert int(np.count_nonzero(out == CPU_CHANGE_HEADER)) == 5
    assert len(out) == 100 * 3 + 5 * 3


def test_catalogue_covers_every_trace_class():
    classes = {s.cls for s in xe.SPECS.values()}
    assert {"gen", "sched", "dom0op", "hvm", "mem", "pv", "shadow", "hw"} <= classes
    assert xe.event_name(0x00021021) == "sched.runstate_change"
    assert xe.event_name(0x0040F10E) == "shadow.resync_full"
    assert xe.exit_reason_name(1024, "svm") == "VMEXIT_NPF"
    assert xe.exit_reason_name(48, "vmx") == "EPT_VIOLATION"
    assert xe.hypercall_name(39) == "argo_op"
    assert xe.hypercall_name(41) == "dm_op"


def test_continue_running_names_the_pcpus_vcpu(tmp_path):
    """A pCPU's first scheduling record is often `continue_running` (running -> running):
    the records after it run in that vCPU's context, as xenalyze takes it; before it the
    vCPU is unknown."""
    words = np.array(
        [CPU_CHANGE_HEADER, 0, 40, 0x80000000 | xe.TRC_HVM_VMENTRY, 10, 0,
         0x80000000 | 1 << 28 | 0x00021002, 20, 0, (5 << 16) | 2,
         0x80000000 | xe.TRC_HVM_VMENTRY, 30, 0],
        dtype="<u4",
    )  # fmt: skip
    path = tmp_path / "t.bin"
    path.write_bytes(words.tobytes())
    df, _ = decode_file(path, cpu_khz=1000)
    assert df["event"].cast(str).to_list()[1] == "sched.continue_running"
    assert df["dom"].to_list() == [None, None, 5]
    assert df["vcpu"].to_list() == [None, None, 2]


@pytest.mark.parametrize("chunk_bytes", [1 << 12, 1 << 14])
def test_records_handed_over_after_later_ones_are_counted_out_of_order(tmp_path, chunk_bytes):
    """A capture whose second half went back in time (two traces appended): each record
    handed over with a TSC below that of the last one handed over before is counted, as
    many as a count over every chunk's TSCs finds."""
    rows = hvm_records(300, seed=1, ncpu=2)
    path = tmp_path / "t.bin"
    with path.open("wb") as fh:
        write_frame(fh, rows.with_columns(pl.col("ts_raw") + 10**9), round_cycles=2_400_000)
        write_frame(fh, rows, round_cycles=2_400_000)
    dec = XentraceDecoder(path, cpu_khz=2_400_000, chunk_bytes=chunk_bytes)
    want, last = 0, None
    for _, index, order, *_ in dec.records():
        tsc = index.tsc[order]
        want += 0 if last is None else int(np.count_nonzero(tsc < last))
        last = tsc[-1] if len(tsc) else last
    assert want > 0 and dec.stats.extra["out_of_order"] == want


@pytest.mark.parametrize("chunk_bytes", [1 << 12, 1 << 14])
@pytest.mark.parametrize("trace", ["appended", "lossy", "x86-pv", "arm64"])
def test_records_handed_over_in_file_order_are_counted_as_in_time_order(
    tmp_path, chunk_bytes, trace
):  # fmt: skip
    """records(ordered=False) hands over every record once, each chunk's as they lie in
    the file, and counts what records() counts: records, losses, wrap-buffer fillers,
    records out of order (by the TSC up to which each chunk says every record is there),
    the first and last TSC. (Which rows fall due when: the fold's tests.)"""
    path = tmp_path / "t.bin"
    if trace in ("appended", "lossy"):
        lossy = trace == "lossy"
        rows = hvm_records(300, seed=1, ncpu=3 if lossy else 2, lost_every=1 if lossy else 0)
        with path.open("wb") as fh:
            if trace == "appended":
                later = rows.with_columns(pl.col("ts_raw") + 10**9)
                write_frame(fh, later, round_cycles=2_400_000)
            write_frame(fh, rows, round_cycles=2_400_000)
    else:
        path = (X86_PV if trace == "x86-pv" else ARM64) / "trace.bin"
    ordered = XentraceDecoder(path, cpu_khz=2_400_000, chunk_bytes=chunk_bytes)
    in_time = [(index.word[order], index.tsc[order]) for _, index, order, *_ in ordered.records()]
    unordered = XentraceDecoder(path, cpu_khz=2_400_000, chunk_bytes=chunk_bytes)
    chunks = [(index.word, index.tsc, due) for _, index, _, _, due in unordered.records(False)]
    assert trace != "appended" or ordered.stats.extra["out_of_order"] > 0
    assert trace != "lossy" or ordered.stats.lost > 0
    assert unordered.stats.as_dict() == ordered.stats.as_dict()
    assert unordered.describe() == ordered.describe()
    # each record once, the last chunk's with every record due
    words = np.concatenate([w for w, _, _ in chunks])
    assert np.array_equal(np.sort(words), np.sort(np.concatenate([w for w, _ in in_time])))
    assert [due is None for _, _, due in chunks] == [False] * (len(chunks) - 1) + [True]
