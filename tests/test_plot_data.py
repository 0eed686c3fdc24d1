"""output.plot_data, what the HTML pages draw read a slice at a time, against numpy and
polars on the whole table: the CDF's points are the sorted values at their ranks, the
envelope's bins are polars' group-by of every row, and the Gantt's window holds the row a
stable sort puts at the median, whatever the slices, nulls and ties."""

from __future__ import annotations

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from xvtrace.output import plot_data

ROWS = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", None]),  # dev
        st.one_of(st.none(), st.integers(0, 40)),  # latency: few values, so ties
        st.one_of(st.none(), st.integers(-(10**6), 10**6)),  # start
    ),
    min_size=0,
    max_size=80,
)


def _frame(rows) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "request": np.arange(len(rows), dtype=np.int64),
            "dev": [r[0] for r in rows],
            "lat": [r[1] for r in rows],
            "start": [r[2] for r in rows],
        },
        schema={"request": pl.Int64, "dev": pl.String, "lat": pl.Int64, "start": pl.Int64},
    )


@settings(max_examples=150, deadline=None)
@given(ROWS, st.integers(1, 9))
def test_cdf_points_are_the_sorted_values_at_their_ranks(rows, slice_rows):
    df = _frame(rows)
    found, top = plot_data.cdf_points(df.lazy(), ["dev"], "lat", slice_rows=slice_rows)
    expect = {}
    for (dev,), g in (
        df.filter(pl.col("lat").is_not_null()).partition_by("dev", as_dict=True).items()
    ):
        expect[dev] = np.sort(g["lat"].to_numpy())
    assert [k for (k,), _, _ in found] == sorted(expect, key=lambda k: str((k,)))
    for (dev,), values, frac in found:
        s = expect[dev]
        ranks = plot_data.cdf_ranks(len(s))
        assert ranks[0] == 0 and ranks[-1] == len(s) - 1
        np.testing.assert_array_equal(values, s[ranks])
        np.testing.assert_array_equal(frac, (ranks + 1) / len(s))
    want = max((float(np.quantile(s, 0.999)) for s in expect.values()), default=0.0)
    assert top == want


def test_cdf_ranks_are_bounded_and_end_at_the_last():
    assert len(plot_data.cdf_ranks(5_000_000)) <= plot_data.POINTS + 1
    np.testing.assert_array_equal(plot_data.cdf_ranks(3), [0, 1, 2])
    assert plot_data.cdf_ranks(4001)[-1] == 4000


@settings(max_examples=150, deadline=None)
@given(ROWS, st.integers(1, 9), st.integers(1, 7))
def test_envelope_is_polars_group_by_of_every_row(rows, slice_rows, bins):
    df = _frame(rows)
    got = plot_data.envelope(df.lazy(), "start", "lat", bins=bins, slice_rows=slice_rows)
    valid = df.filter(pl.col("start").is_not_null() & pl.col("lat").is_not_null())
    if not len(valid):
        assert got.is_empty()
        return
    t0, t1 = valid["start"].min(), valid["start"].max()
    width = (t1 - t0) // bins + 1
    want = (
        valid.with_columns(((pl.col("start") - t0) // width).alias("bin"))
        .group_by("bin")
        .agg(
            pl.len().alias("count").cast(pl.Int64),
            pl.col("lat").min().cast(pl.Float64).alias("min"),
            pl.col("lat").mean().alias("mean"),
            pl.col("lat").max().cast(pl.Float64).alias("max"),
            # the first row of the greatest, in table order
            pl.col("request").filter(pl.col("lat") == pl.col("lat").max()).first().alias("request"),
            (pl.col("start").filter(pl.col("lat") == pl.col("lat").max()).first() - t0).alias(
                "at_ns"
            ),
        )
        .sort("bin")
        .with_columns((pl.col("bin") * width).alias("t_ns"))
        .select(got.columns)
    )
    assert got["t_ns"].max() < bins * width
    assert_frame_equal(got, want, check_dtypes=False, rel_tol=1e-12)


@settings(max_examples=150, deadline=None)
@given(ROWS, st.integers(1, 9), st.integers(1, 6))
def test_median_window_holds_the_stable_median_row(rows, slice_rows, window):
    df = _frame(rows)
    got = plot_data.median_window(
        df.lazy(), "lat", ["request", "lat"], window, slice_rows=slice_rows
    )
    known = df.filter(pl.col("lat").is_not_null())
    if not len(known):
        assert got.is_empty()
        return
    order = np.argsort(known["lat"].to_numpy(), kind="stable")
    p = int(order[len(known) // 2])  # its place among the rows with a latency
    lo = max(0, min(p - window // 2, len(known) - window))
    assert_frame_equal(got, known.slice(lo, window).select("request", "lat"))
    assert int(known["request"][p]) in got["request"].to_list()


def test_median_window_is_full_where_few_rows_have_a_latency():
    # a latency on every 20th row: the window still holds `window` rows that have one
    lat = [v if i % 20 == 0 else None for i, v in enumerate(np.arange(1000) % 37)]
    df = _frame([("a", v, 0) for v in lat])
    got = plot_data.median_window(df.lazy(), "lat", ["request", "lat"], 30, slice_rows=64)
    known = df.filter(pl.col("lat").is_not_null())
    p = int(np.argsort(known["lat"].to_numpy(), kind="stable")[len(known) // 2])
    lo = max(0, min(p - 15, len(known) - 30))
    assert_frame_equal(got, known.slice(lo, 30).select("request", "lat"))
    assert len(got) == 30
