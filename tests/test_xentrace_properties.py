"""Hypothesis properties of the xentrace decoder and writer."""

from __future__ import annotations

import numpy as np
import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from xvtrace.parsers.errors import ParseError
from xvtrace.parsers.xentrace import CPU_CHANGE_HEADER, decode_file, encode_windows

# Arbitrary records: any id of a Xen trace class except CPU_CHANGE, 0..7 payload words, TSC or not.
record = st.tuples(
    st.integers(0, 3),  # cpu
    st.builds(
        lambda cls, low: cls << 16 | low,
        st.sampled_from([0x001, 0x002, 0x004, 0x008, 0x010, 0x020, 0x040, 0x080, 0x800]),
        st.integers(0, 0xFFFF),
    ).filter(lambda c: c != 0x0001F003),
    st.integers(0, 7),  # nargs
    st.booleans(),  # has TSC
    st.integers(1, 5000),  # TSC step
    st.lists(st.integers(0, 2**32 - 1), min_size=7, max_size=7),
)


def build(records):
    n = len(records)
    cpu = np.array([r[0] for r in records], np.int64)
    code = np.array([r[1] for r in records], np.uint32)
    nargs = np.array([r[2] for r in records], np.int64)
    has = np.array([r[3] for r in records], bool)
    has[np.unique(cpu, return_index=True)[1]] = True  # each pCPU's first record has a TSC
    steps = np.array([r[4] for r in records], np.uint64) * has
    tsc = np.zeros(n, np.uint64)
    for c in np.unique(cpu):
        m = cpu == c
        tsc[m] = np.uint64(10**9) + np.cumsum(steps[m])
    args = np.array([r[5] for r in records], np.uint32).reshape(n, 7)
    args[np.arange(7)[None, :] >= nargs[:, None]] = 0
    return cpu, tsc, has, code, args, nargs


@given(st.lists(record, min_size=1, max_size=200), st.integers(64, 4096), st.integers(1, 20000))
def test_writer_decoder_round_trip(tmp_path_factory, records, window_bytes, round_cycles):
    cpu, tsc, has, code, args, nargs = build(records)
    words = encode_windows(
        cpu, tsc, has, code, args, nargs, round_cycles=round_cycles, window_bytes=window_bytes
    )
    path = tmp_path_factory.mktemp("rt") / "t.bin"
    path.write_bytes(words.astype("<u4").tobytes())
    df, stats = decode_file(path, cpu_khz=1_000_000, chunk_bytes=4096)
    assert stats.decoded == len(records)
    assert not stats.problems
    got = df.sort("cpu", maintain_order=True)
    order = np.argsort(cpu, kind="stable")
    assert got["cpu"].to_numpy().tolist() == cpu[order].tolist()
    assert got["code"].to_numpy().tolist() == code[order].tolist()
    assert got["ts_raw"].to_numpy().tolist() == tsc[order].tolist()
    assert got["has_ts"].to_numpy().tolist() == has[order].tolist()
    assert got["nargs"].to_numpy().tolist() == nargs[order].tolist()
    for i in range(7):
        assert got[f"arg{i}"].fill_null(0).to_numpy().tolist() == args[order, i].tolist()
    assert df["ts_ns"].is_sorted()


@given(st.binary(max_size=600), st.booleans())
def test_arbitrary_bytes_only_raise_parse_error(tmp_path_factory, data, with_header):
    if with_header:  # get past the sniffer so the walker sees the garbage
        data = np.array([CPU_CHANGE_HEADER, 0, len(data) & ~3], "<u4").tobytes() + data
    path = tmp_path_factory.mktemp("fz") / "t.bin"
    path.write_bytes(data)
    try:
        df, stats = decode_file(path, cpu_khz=1000, chunk_bytes=4096)
    except ParseError as e:
        assert e.offset == 0
        assert str(path) in str(e)
        return
    total = len(data)
    accounted = int(
        df.select(
            (4 + 8 * pl.col("has_ts").cast(pl.Int64) + 4 * pl.col("nargs").cast(pl.Int64)).sum()
        ).item()
        or 0
    )
    # every byte is either a decoded record, framing, or reported as skipped
    assert accounted + stats.skipped_bytes <= total


@given(st.lists(record, min_size=2, max_size=120), st.data())
def test_split_at_window_boundaries_gives_same_table(tmp_path_factory, records, data):
    cpu, tsc, has, code, args, nargs = build(records)
    words = encode_windows(cpu, tsc, has, code, args, nargs, round_cycles=500, window_bytes=128)
    # window starts, from the framing
    heads, p = [], 0
    while p < len(words):
        heads.append(p)
        p += 3 + int(words[p + 2]) // 4
    cut = data.draw(st.sampled_from(heads))
    d = tmp_path_factory.mktemp("sp")
    whole = d / "whole.bin"
    whole.write_bytes(words.astype("<u4").tobytes())
    ref, _ = decode_file(whole, cpu_khz=1000)
    # same table whatever chunk size makes the decoder stop at that boundary
    got, _ = decode_file(whole, cpu_khz=1000, chunk_bytes=max(4096, cut * 4))
    assert got.equals(ref)
    if cut:
        first, second = d / "a.bin", d / "b.bin"
        first.write_bytes(words[:cut].astype("<u4").tobytes())
        second.write_bytes(words[cut:].astype("<u4").tobytes())
        a, _ = decode_file(first, cpu_khz=1000, tsc_origin=int(ref["ts_raw"].min()))
        b, _ = decode_file(second, cpu_khz=1000, tsc_origin=int(ref["ts_raw"].min()))
        # records that carry their own TSC decode identically in either part
        both = pl.concat([a, b]).filter(pl.col("has_ts")).sort("ts_raw", "cpu", "code", "arg0")
        expect = ref.filter(pl.col("has_ts")).sort("ts_raw", "cpu", "code", "arg0")
        local = ["src_file", "src_offset", "dom", "vcpu"]  # provenance and context differ per part
        assert both.drop(local).equals(expect.drop(local))


@given(st.lists(record, min_size=1, max_size=150), st.randoms(use_true_random=False), st.data())
def test_writing_listed_rows_is_writing_them_gathered(records, rnd, data):
    """`order` names the rows to write where they lie: the same words as the gathered rows,
    for rows shuffled and followed by others that are not written."""
    cols = build(records)
    n = len(records)
    extra = data.draw(st.integers(0, 20))
    q = list(range(n))
    rnd.shuffle(q)  # stored row j is record q[j]
    stored = [np.concatenate([c[q], c[: min(extra, n)]]) for c in cols]
    where = np.argsort(q)  # record i is stored row where[i]
    want = encode_windows(*cols, round_cycles=700, window_bytes=256)
    got = encode_windows(*stored, round_cycles=700, window_bytes=256, order=where)
    assert got.tolist() == want.tolist()
