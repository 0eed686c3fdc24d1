"""timeline.phases.table, a phase's column gathered per group, against polars' own group-by
of every phase (what it computed before, and held 0.5 GiB for at 5 M requests): the same
rows, counts, nearest-rank quantiles and maxima, whatever the groups, nulls and values."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from xvtrace.timeline.phases import PHASES, QUANTILES, table, with_phases


def grouped(req: pl.DataFrame) -> pl.DataFrame:
    """Every phase grouped by polars on (dev, queue, op)."""
    req = with_phases(req)
    order = [c for c, _ in PHASES]
    keys = [pl.col("dev").cast(pl.Categorical), "queue", pl.col("op").cast(pl.Categorical)]
    rows = [
        req.select(*keys, col)
        .filter(pl.col(col).is_not_null())
        .group_by("dev", "queue", "op")
        .agg(
            pl.lit(name).alias("phase"),
            pl.lit(order.index(col)).alias("_order"),
            pl.len().alias("requests"),
            *[
                (pl.col(col).quantile(q, "nearest") / 1e3).alias(f"p{round(q * 100)}_us")
                for q in QUANTILES
            ],
            (pl.col(col).max() / 1e3).alias("max_us"),
        )
        .with_columns(pl.col("dev", "op").cast(pl.String))
        for col, name in PHASES
        if col in req.columns
    ]
    return pl.concat(rows).sort("dev", "queue", "op", "_order").drop("_order")


values = st.one_of(st.none(), st.integers(-(10**9), 10**9))


@st.composite
def requests(draw):
    n = draw(st.integers(0, 60))

    def column(strategy):
        return draw(st.lists(strategy, min_size=n, max_size=n))

    return pl.DataFrame(
        {
            "dev": column(st.sampled_from(["blk0", "net0", None])),
            "queue": column(st.integers(0, 2)),
            "op": column(st.sampled_from(["read", "write", "rx"])),
            **{c: column(values) for c in ("kick_to_pop_ns", "service_ns", "io_ns")},
            "trap_exit_ns": column(values),
            "trap_entry_ns": column(values),
        },
        schema_overrides={"queue": pl.UInt16, "dev": pl.String, "op": pl.String}
        | dict.fromkeys(
            ["kick_to_pop_ns", "service_ns", "io_ns", "trap_exit_ns", "trap_entry_ns"], pl.Int64
        ),
    )


@settings(max_examples=100, deadline=None)
@given(requests())
def test_the_phase_table_is_polars_group_by_of_every_phase(req):
    want = grouped(req)
    got = table(req.lazy())
    assert_frame_equal(got, want, rel_tol=1e-12)


def test_the_phase_table_of_many_rows_per_group():
    """Thousands of rows a group (the nearest rank is then not the middle of a few)."""
    n = 20_000
    req = pl.DataFrame(
        {
            "dev": ["blk0"] * n,
            "queue": pl.Series([i % 3 for i in range(n)], dtype=pl.UInt16),
            "op": ["read", "write"] * (n // 2),
            "service_ns": [(i * 7919) % 100_003 for i in range(n)],
        }
    )
    assert_frame_equal(table(req), grouped(req), rel_tol=1e-12)


@settings(max_examples=100, deadline=None)
@given(requests(), st.integers(1, 9), st.integers(1, 20))
def test_the_phase_table_read_a_slice_at_a_time_with_runs_on_disk(req, rows, held):
    """A few requests read at a time, their values' runs on disk and merged: the same."""
    from xvtrace.timeline import order_stats, phases

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(phases, "GROUP_SLICE", rows)
        mp.setattr(order_stats, "HELD_VALUES", held)
        mp.setattr(order_stats, "MERGE_VALUES", 3)
        mp.setattr(order_stats, "MIN_CHUNK", 1)
        got = table(req.lazy())
    assert_frame_equal(got, grouped(req), rel_tol=1e-12)


def test_float_and_wide_unsigned_phases_are_polars_group_by():
    req = pl.DataFrame(
        {"dev": ["a", "a", "b"], "queue": [0, 0, 1], "op": ["read"] * 3,
         "io_ns": [1500.7, 2500.2, 3.5], "service_ns": [2**63 + 5000, 1000, 7]},
        schema_overrides={"queue": pl.UInt16, "service_ns": pl.UInt64},
    )  # fmt: skip
    assert_frame_equal(table(req.lazy()), grouped(req), rel_tol=1e-12)
