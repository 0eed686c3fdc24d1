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


def reference_walk(words: list[int]) -> tuple[list[int], list[tuple[str, int, int]]]:
    """The framing rules of trace.h and xentrace.c, walked plainly a word at a time: the
    byte offsets of the records a decoder must keep, in file order, and the places it must
    report (kind, byte offset, bytes skipped). A window header is CPU_CHANGE, a pCPU below
    4096, a size in whole words and another header (or the file's end) where it says it
    ends; a record is of one Xen trace class, not CPU_CHANGE, and inside its window."""
    end = len(words)

    def header(q):
        if q + 3 > end or words[q] != CPU_CHANGE_HEADER:
            return False
        cpu = words[q + 1] - (1 << 32) if words[q + 1] >> 31 else words[q + 1]
        nxt = q + 3 + words[q + 2] // 4
        return (
            0 <= cpu < 4096
            and words[q + 2] % 4 == 0
            and (nxt >= end or words[nxt] == CPU_CHANGE_HEADER)
        )

    records, problems, p = [], [], 0
    while p < end:
        if not header(p):
            q = p + 1
            while q < end and not header(q):
                q += 1
            problems.append(("resync" if q < end else "garbage", 4 * p, 4 * (q - p)))
            p = q
            continue
        declared = p + 3 + words[p + 2] // 4
        r, stop, kind = p + 3, min(declared, end), None
        while r < stop:
            ev = words[r] & 0x0FFFFFFF
            cls = ev >> 16 & 0xFFF
            if cls == 0 or cls & (cls - 1) or ev == 0x0001F003:
                kind = "bad-record"
                break
            size = 1 + 2 * (words[r] >> 31) + (words[r] >> 28 & 7)
            if r + size > stop:
                kind = "overrun"
                break
            records.append(4 * r)
            r += size
        if kind is None and declared > end:
            kind = "truncated"
        if kind:
            problems.append((kind, 4 * r, 4 * (stop - r)))
        p = declared
    return records, problems


@given(st.lists(record, min_size=1, max_size=150), st.data())
def test_the_decoder_keeps_and_reports_what_the_framing_rules_say(tmp_path_factory, records, data):
    """Valid windows with words overwritten and the file cut: the records kept and the
    problems reported (kind, offset, bytes skipped) are the plain walk's, whatever the chunk
    size (the decoder sizes its columns by the records before and grows them)."""
    cpu, tsc, has, code, args, nargs = build(records)
    words = encode_windows(cpu, tsc, has, code, args, nargs, round_cycles=500, window_bytes=256)
    words = words.astype(np.uint32)
    for _ in range(data.draw(st.integers(0, 4))):
        at = data.draw(st.integers(0, len(words) - 1))
        words[at] = data.draw(st.sampled_from([0, 0x0001F003, 0x70020001, 0xF0020001, 1 << 31]))
    words = words[: data.draw(st.integers(1, len(words)))]
    path = tmp_path_factory.mktemp("rw") / "t.bin"
    path.write_bytes(words.astype("<u4").tobytes())
    offsets, problems = reference_walk(words.tolist())
    try:
        df, stats = decode_file(
            path, cpu_khz=1000, chunk_bytes=data.draw(st.sampled_from([4096, 1 << 20]))
        )
    except ParseError as e:  # a file whose first words are no window header
        assert e.offset == 0 and problems[0][1] == 0
        return
    assert sorted(df["src_offset"].to_list()) == offsets
    assert [(p.kind, p.offset, p.skipped_bytes) for p in stats.problems] == problems
