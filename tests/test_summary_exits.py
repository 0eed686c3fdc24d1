"""The exits section: its per-group statistics (from a histogram of durations) against polars' own
group_by quantiles on the same durations (the answers the stored summaries held before),
and the exit pairing against its rules applied record by record."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xvtrace import api
from xvtrace.analysis import exit_pairs, summary, xen_fold
from xvtrace.parsers.xentrace import write_frame


def reference(key: np.ndarray, dur: np.ndarray) -> pl.DataFrame:
    df = pl.DataFrame({"key": key, "dur": pl.Series(dur).set(pl.Series(dur < 0), None)})
    return (
        df.with_columns(
            (pl.col("key") // (1 << 48)).cast(pl.Int32).alias("dom"),
            (pl.col("key") // (1 << 32) % (1 << 16)).cast(pl.Int32).alias("vcpu"),
            (pl.col("key") % (1 << 32)).alias("reason"),
        )
        .group_by("dom", "vcpu", "reason")
        .agg(
            pl.len().alias("count"),
            pl.col("dur").sum().alias("total_ns"),
            pl.col("dur").mean().round(0).cast(pl.Int64).alias("mean_ns"),
            *[pl.col("dur").quantile(q / 100, "nearest").alias(f"p{q}_ns") for q in (5, 50, 95)],
            pl.col("dur").null_count().alias("unmatched"),
        )
        .sort("dom", "vcpu", "reason")
    )


@settings(max_examples=100, deadline=None)
@given(
    groups=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 3), st.integers(0, 90)), min_size=1, max_size=6
    ),
    rows=st.lists(st.tuples(st.integers(0, 5), st.integers(-1, 5000)), max_size=300),
    huge=st.booleans(),
)
def test_packed_statistics_equal_polars_quantiles(groups, rows, huge):
    """Every group: count, total, mean (half to even), nearest-rank percentiles and unmatched
    exits, as polars computes them; `huge` puts a duration of days among them."""
    keys = [(d << 48) | (v << 32) | r for d, v, r in groups]
    key = np.array([keys[g % len(keys)] for g, _ in rows], np.uint64)
    dur = np.array([d for _, d in rows], np.int64)
    if huge and len(dur):
        dur[0] = 1 << 50
    ours = summary._by_key(key, dur)
    assert ours.equals(reference(key, dur).select(ours.columns).cast(ours.schema))


@settings(max_examples=100, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 3), st.integers(-1, 50), st.integers(1, 4)), max_size=60)
)
def test_a_histogram_gives_the_statistics_of_its_exits(rows):
    """The fold keeps each (key, duration)'s count, not each exit: the statistics of the
    counts are those of the exits written out one by one."""
    key = np.array([k for k, _, _ in rows], np.uint64)
    dur = np.array([d for _, d, _ in rows], np.int64)
    count = np.array([c for _, _, c in rows], np.int64)
    whole = summary._by_key(np.repeat(key, count), np.repeat(dur, count))
    assert summary._by_key(key, dur, count).equals(whole)


def test_the_fold_keeps_a_histogram_of_exits_not_each_exit():
    """The summary's fold of a capture with many exits of few durations holds a row per
    distinct (key, handler, io, duration), not per exit."""
    exits = xen_fold.Exits(times=False)
    n = 10_000
    ts = np.arange(2 * n, dtype=np.int64)
    role = np.tile(np.array([exit_pairs.EXIT, exit_pairs.ENTRY], np.uint8), n)
    zeros = np.zeros(2 * n, np.uint32)
    exits.add([ts, role, np.zeros(2 * n, np.uint64), zeros + 30, zeros], last=True)
    got = exits.result()  # a row per part of the pairing at most (the last instant waits)
    assert len(got["count"]) <= 2 and got["count"].sum() == n and set(got["dur"]) == {1}


def test_a_group_with_only_unmatched_exits_has_no_times():
    ours = summary._by_key(np.array([7, 7, 9], np.uint64), np.array([-1, -1, 40], np.int64))
    assert ours["count"].to_list() == [2, 1] and ours["unmatched"].to_list() == [2, 0]
    assert ours["total_ns"].to_list() == [0, 40]
    assert ours["mean_ns"].to_list() == [None, 40] and ours["p50_ns"].to_list() == [None, 40.0]


@pytest.mark.parametrize("null", ["dom", "vcpu", "reason"])
def test_unknown_ids_come_back_as_nulls(null):
    """A vCPU not known yet at the trace's start is a null dom and vcpu, as before."""
    parts = {"dom": 1, "vcpu": 0, "reason": 12, null: None}
    fill = {"dom": summary.NULL_ID, "vcpu": summary.NULL_ID, "reason": summary.NULL_REASON}
    d, v, r = (fill[c] if parts[c] is None else parts[c] for c in ("dom", "vcpu", "reason"))
    out = summary._by_key(np.array([(d << 48) | (v << 32) | r], np.uint64), np.array([5]))
    assert out.row(0, named=True) | {"count": 1} == {**out.row(0, named=True), **parts}


NO_TIME = int(exit_pairs.NO_TIME)
ROLES = (exit_pairs.EXIT, exit_pairs.ENTRY, exit_pairs.NPF, exit_pairs.MMIO,
         exit_pairs.IO_READ, exit_pairs.IO_WRITE)  # fmt: skip


def paired_by_hand(rows, wakes):
    """Each exit as the pairing's rules say, record by record: (vcpu, reason, ts, end,
    handler, io), from `rows` (vcpu, role, ts, port) in time order and each vCPU's wakes."""
    out = []
    for i, (v, role, ts, reason) in enumerate(rows):
        if role != exit_pairs.EXIT:
            continue
        w = min((t for t in wakes.get(v, []) if t >= ts), default=NO_TIME)
        handler, io, closer = exit_pairs.NO_HANDLER, exit_pairs.NO_IO, None
        for v2, role2, ts2, port in rows[i + 1 :]:
            if v2 != v:
                continue
            if role2 in (exit_pairs.EXIT, exit_pairs.ENTRY):
                closer = (role2, ts2)
                break
            if w != NO_TIME and ts2 >= w:  # the exit ended at the wake-up: not its record
                continue
            if role2 == exit_pairs.MMIO:
                handler = exit_pairs.MMIO_HANDLER
            elif role2 == exit_pairs.NPF and handler == exit_pairs.NO_HANDLER:
                handler = exit_pairs.NPF_HANDLER
            elif role2 in (exit_pairs.IO_READ, exit_pairs.IO_WRITE) and io == exit_pairs.NO_IO:
                io = (role2 == exit_pairs.IO_WRITE) << 16 | port
        if closer is not None and closer[0] == exit_pairs.ENTRY:
            end = w if w != NO_TIME and w < closer[1] else closer[1]
        else:
            limit = closer[1] if closer is not None else 2**63
            end = w if w != NO_TIME and w < limit else NO_TIME
        if end == NO_TIME:
            handler, io = exit_pairs.NO_HANDLER, exit_pairs.NO_IO
        out.append((v, reason, ts, end, handler, int(io)))
    return sorted(out)


@settings(max_examples=100, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 2), st.sampled_from(ROLES), st.integers(0, 2), st.integers(0, 7)),
        max_size=60,
    ),
    wakes=st.lists(st.tuples(st.integers(0, 2), st.integers(-60, 80)), max_size=12),  # ties too
    placing=st.randoms(use_true_random=False),
    cuts=st.lists(st.integers(0, 75), max_size=8),
)
def test_exit_pairing_follows_its_rules_across_chunks(steps, wakes, placing, cuts):
    """The compiled pairing (xen_fold.Exits) against the rules applied record by record: an
    exit ends at its vCPU's next entry or earlier wake-up, at that wake-up if another exit
    or the end comes first, or not at all; handler records count only while it is open;
    the same however the records are cut into chunks, and wherever a wake-up stands among
    the records of its instant (which a stream cannot look ahead for)."""
    ts = np.cumsum([dt for _, _, dt, _ in steps]).astype(np.int64) - 50  # some before 0
    rows = [(v, role, int(t), port) for (v, role, _, port), t in zip(steps, ts, strict=True)]
    by_vcpu: dict[int, list[int]] = {}
    for v, t in sorted(wakes):
        by_vcpu.setdefault(v, []).append(t)
    # the stream: the records and the wake-ups in time order, a wake-up anywhere among the
    # records of its instant
    stream = [(t, placing.uniform(-1, len(rows)), v, exit_pairs.WAKE, 0) for v, t in wakes]
    stream += [(t, i, v, role, port) for i, (v, role, t, port) in enumerate(rows)]
    stream.sort(key=lambda r: (r[0], r[1]))
    cols = [np.array([r[k] for r in stream], dtype) for k, dtype in
            ((0, np.int64), (3, np.uint8), (2, np.uint64), (4, np.uint32), (4, np.uint16))]  # fmt: skip
    bounds = sorted({0, len(stream), *[min(c, len(stream)) for c in cuts]})
    exits = xen_fold.Exits()
    for a, b in itertools.pairwise(bounds):
        exits.add([c[a:b] for c in cols])
    got = exits.result()
    got = sorted(zip(*[got[k].tolist() for k in exit_pairs.OUT], strict=True))
    # key: the vCPU << 32 | reason (the exit's port stands in for its reason)
    want = [((v << 32) | reason, t, end - t if end != NO_TIME else -1, h, io) for
            v, reason, t, end, h, io in paired_by_hand(rows, by_vcpu)]  # fmt: skip
    assert got == sorted(want)


def test_exits_of_vcpus_not_known_yet_pair_on_their_own_pcpu(tmp_path):
    """Before a pCPU's first scheduling record its vCPU is unknown: each such exit pairs with
    its own pCPU's entry, not with another pCPU's (all unknown vCPUs are one group in the
    table, not one pairing stream)."""
    rows = [(0, 1000, 0x00081002, 2, 30), (1, 2000, 0x00081002, 2, 30),
            (0, 2500, 0x00081001, 0, 0), (1, 9000, 0x00081001, 0, 0)]  # fmt: skip
    df = pl.DataFrame(
        [(c, t, True, code, n, a) + (0,) * 6 for c, t, code, n, a in rows],
        schema=["cpu", "ts_raw", "has_ts", "code", "nargs", *[f"arg{i}" for i in range(7)]],
        orient="row",
    )
    path = tmp_path / "unknown.bin"
    write_frame(path, df, round_cycles=1_000_000)
    sections = api.summarize(path, cpu_khz=1_000_000, hvm_vendor="vmx").sections
    (row,) = sections["exits"].filter(pl.col("dom").is_null()).iter_rows(named=True)
    assert (row["count"], row["unmatched"], row["total_ns"]) == (2, 0, 1500 + 7000)


@pytest.mark.parametrize("cut", [None, 2, 3])
def test_a_wake_up_after_a_cut_still_takes_its_whole_instant(cut):
    """A handler record and its vCPU's wake-up at one instant, cut apart into two chunks:
    the exit still ends at the wake-up and the handler record is not the exit's (a stream
    holds a chunk's last instant back until it has all of it)."""
    e, w = exit_pairs.EXIT, exit_pairs.WAKE
    rows = [(0, e, 0, 7), (1, exit_pairs.NPF, 0, 0), (5, exit_pairs.MMIO, 0, 0), (5, w, 0, 0),
            (9, exit_pairs.ENTRY, 0, 0)]  # fmt: skip
    cols = [np.array([r[k] for r in rows], t) for k, t in
            ((0, np.int64), (1, np.uint8), (2, np.uint64), (3, np.uint32), (3, np.uint16))]  # fmt: skip
    exits = xen_fold.Exits()
    for a, b in [(0, len(rows))] if cut is None else [(0, cut), (cut, len(rows))]:
        exits.add([c[a:b] for c in cols])
    got = exits.result()
    assert got["dur"].tolist() == [5]  # to the wake-up, not the entry
    assert got["handler"].tolist() == [exit_pairs.NPF_HANDLER]  # mmio came with the wake-up
    assert got["key"].tolist() == [7]


def test_records_out_of_time_order_are_paired_where_they_stand():
    """A record whose TSC stepped back (the decoder counts it out of order) is taken where it
    stands in the stream: every exit still comes out once, however the chunks are cut."""
    e, n = exit_pairs.EXIT, exit_pairs.ENTRY
    rows = [(5, e), (9, n), (3, e), (4, n), (4, e), (12, n), (1, e), (1, e)]
    cols = [np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.uint8),
            np.zeros(len(rows), np.uint64), np.zeros(len(rows), np.uint32),
            np.zeros(len(rows), np.uint16)]  # fmt: skip
    for cut in range(len(rows) + 1):
        exits = xen_fold.Exits()
        for a, b in [(0, cut), (cut, len(rows))]:
            exits.add([c[a:b] for c in cols])
        got = exits.result()
        assert sorted(got["ts"].tolist()) == [1, 1, 3, 4, 5], cut
        assert sorted(got["dur"].tolist()) == [-1, -1, 1, 4, 8], cut
