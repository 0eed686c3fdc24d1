"""The exits section's per-group statistics (one packed sort) against polars' own group_by
quantiles on the same durations: the answers the stored summaries held before."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xvtrace.analysis import summary


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


@settings(max_examples=200, deadline=None)
@given(
    groups=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 3), st.integers(0, 90)), min_size=1, max_size=6
    ),
    rows=st.lists(st.tuples(st.integers(0, 5), st.integers(-1, 5000)), max_size=300),
    huge=st.booleans(),
)
def test_packed_statistics_equal_polars_quantiles(groups, rows, huge):
    """Every group: count, total, mean (half to even), nearest-rank percentiles and unmatched
    exits, as polars computes them; `huge` puts a duration past the packed bits (the
    two-column sort)."""
    keys = [(d << 48) | (v << 32) | r for d, v, r in groups]
    key = np.array([keys[g % len(keys)] for g, _ in rows], np.uint64)
    dur = np.array([d for _, d in rows], np.int64)
    if huge and len(dur):
        dur[0] = 1 << summary.DUR_BITS
    ours = summary._by_key(key, dur)
    assert ours.equals(reference(key, dur).select(ours.columns).cast(ours.schema))


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


@settings(max_examples=200, deadline=None)
@given(
    wakes=st.lists(st.tuples(st.integers(0, 4), st.integers(-(2**62), 2**62)), max_size=40),
    queries=st.lists(st.tuples(st.integers(0, 5), st.integers(-(2**62), 2**62)), max_size=40),
)
def test_first_wake_is_each_vcpus_next_wake(wakes, queries):
    """The wake-up that ends an exit (summary.first_wake) against a brute-force search, with
    times anywhere in int64's range (a composite key it once used overflowed)."""
    wakes = sorted(wakes)
    wk = np.array([k for k, _ in wakes], np.uint64)
    wts = np.array([t for _, t in wakes], np.int64)
    vk = np.array([k for k, _ in queries], np.uint64)
    ts = np.array([t for _, t in queries], np.int64)
    got = summary.first_wake(vk, ts, (wk, wts))
    for i, (k, t) in enumerate(queries):
        later = [w for kk, w in wakes if kk == k and w >= t]
        assert got[i] == (min(later) if later else -1)
