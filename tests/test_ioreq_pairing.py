"""The IOREQ join's pairing by order (timeline.ioreqs._Numbered) against the same rules
written as polars joins, the way the join first computed them: traps numbered per key in
exit order, IOREQs per key in log order, each key's shift the most common (then least)
difference between an IOREQ's number and that of the last trap at or before its reach, and
each IOREQ's trap the one numbered its own number plus that shift."""

from __future__ import annotations

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from xvtrace.timeline import ioreqs
from xvtrace.timeline.ioreqs import _Numbered


def by_joins(dm_key, dm_reach, hv_key, hv_exit) -> np.ndarray:
    """Each IOREQ's trap row (or -1), by polars' asof join, group-by mode and hash join."""
    traps = (
        pl.DataFrame({"key": hv_key, "exit": hv_exit}, schema={"key": pl.Int64, "exit": pl.Int64})
        .with_row_index("row")
        .filter(pl.col("key") >= 0)
        .sort("exit", "row")
        .with_columns(pl.int_range(pl.len()).over("key").alias("ti"))
    )
    dm = (
        pl.DataFrame(
            {"key": dm_key, "reach": dm_reach}, schema={"key": pl.Int64, "reach": pl.Int64}
        )
        .with_row_index("dm_row")
        .with_columns(pl.int_range(pl.len()).over("key").alias("di"))
    )
    timed = dm.filter((pl.col("key") >= 0) & pl.col("reach").is_not_null())
    nearest = (
        timed.sort("reach")
        .join_asof(
            traps.select("key", "exit", "ti").sort("exit"),
            left_on="reach",
            right_on="exit",
            by="key",
            strategy="backward",
            check_sortedness=False,
        )
        .filter(pl.col("ti").is_not_null())
    )
    shift = nearest.group_by("key").agg((pl.col("ti") - pl.col("di")).mode().min().alias("shift"))
    out = (
        dm.filter(pl.col("key") >= 0)
        .join(shift, on="key", how="inner")
        .with_columns((pl.col("di") + pl.col("shift")).alias("ti"))
        .join(traps.select("key", "ti", "row"), on=["key", "ti"], how="inner")
    )
    rows = np.full(len(dm_key), -1, np.int64)
    rows[out["dm_row"].to_numpy()] = out["row"].to_numpy()
    return rows


def by_numbering(dm_key, dm_reach, hv_key, hv_exit) -> np.ndarray:
    keys = int(max(max(dm_key, default=-1), max(hv_key, default=-1))) + 1
    dm_key, hv_key = np.array(dm_key, np.int64), np.array(hv_key, np.int64)
    reach = pl.Series(dm_reach, dtype=pl.Int64)
    traps = _Numbered(hv_key, np.array(hv_exit, np.int64), keys)
    di = ioreqs._numbers(dm_key, keys)
    step = ioreqs.KEY_SLICE
    shift = traps.shifts(dm_key, di, (reach.slice(lo, step) for lo in range(0, len(reach), step)))
    return traps.rows(dm_key, di, shift)


keys = st.integers(-1, 3)
times = st.integers(0, 60)


@settings(max_examples=100, deadline=None)
@given(
    dm=st.lists(st.tuples(keys, st.one_of(st.none(), times)), max_size=40),
    hv=st.lists(st.tuples(keys, times), max_size=40, unique_by=lambda t: t),
)
def test_pairing_by_numbering_equals_the_joins(dm, hv):
    """(Trap exits are distinct per key, as one vCPU's exits are: the joins number tied
    exits in no set order.)"""
    dm_key, dm_reach = [k for k, _ in dm], [t for _, t in dm]
    hv_key, hv_exit = [k for k, _ in hv], [t for _, t in hv]
    want = by_joins(dm_key, dm_reach, hv_key, hv_exit)
    assert by_numbering(dm_key, dm_reach, hv_key, hv_exit).tolist() == want.tolist()
    chunk, keys_at_once = ioreqs.JOIN_CHUNK_ROWS, ioreqs.KEY_SLICE
    try:  # the rows found, numbered and their shifts tallied a few at a time
        ioreqs.JOIN_CHUNK_ROWS, ioreqs.KEY_SLICE = 3, 4
        assert by_numbering(dm_key, dm_reach, hv_key, hv_exit).tolist() == want.tolist()
    finally:
        ioreqs.JOIN_CHUNK_ROWS, ioreqs.KEY_SLICE = chunk, keys_at_once


column = st.lists(st.one_of(st.none(), st.integers(0, 3)), min_size=6, max_size=6)


@settings(max_examples=100, deadline=None)
@given(dm=st.lists(column, max_size=30), hv=st.lists(column, max_size=30))
def test_key_ids_name_equal_keys_alike(dm, hv):
    """The keys' ids: two rows of either side share an id exactly when their keys are
    equal, a key with a null has none (-1), and the count is of the keys both sides hold;
    looked up a few rows at a time, the same ids."""
    names = list("abcdef")

    def frame(rows):
        return pl.DataFrame(list(rows), schema=dict.fromkeys(names, pl.Int64), orient="row")

    d, h = frame(dm), frame(hv)
    dm_ids, hv_ids, n = ioreqs._key_ids(d, h, names)
    step = ioreqs.KEY_SLICE
    try:
        ioreqs.KEY_SLICE = 4
        again = ioreqs._key_ids(d, h, names)
    finally:
        ioreqs.KEY_SLICE = step
    assert again[2] == n
    assert [*again[0], *again[1]] == [*dm_ids, *hv_ids]
    rows = [*dm, *hv]
    ids = [*dm_ids.tolist(), *hv_ids.tolist()]
    for row, i in zip(rows, ids, strict=True):
        assert (i == -1) == (None in row)
    named = {}
    for row, i in zip(rows, ids, strict=True):
        if i >= 0:
            assert named.setdefault(tuple(row), i) == i
    assert len(set(named.values())) == len(named) == n


def test_a_trace_begun_early_shifts_the_pairing():
    """The traps began two accesses before the device model's log: each IOREQ pairs with
    the trap two further on, one the clock placed it after."""
    hv_exit = [0, 10, 20, 30, 40]
    dm_reach = [21, 31, 41]
    rows = by_numbering([0, 0, 0], dm_reach, [0] * 5, hv_exit)
    assert rows.tolist() == [2, 3, 4]
    assert by_joins([0, 0, 0], dm_reach, [0] * 5, hv_exit).tolist() == [2, 3, 4]


def test_a_keys_shift_counts_its_differences_over_every_slice(monkeypatch):
    """The differences are tallied a slice of IOREQs at a time: the most common one is
    that of all slices together (5, three times), not of the last slice or of one alone
    (7, twice, in the second)."""
    monkeypatch.setattr(ioreqs, "KEY_SLICE", 2)
    traps = _Numbered(np.zeros(100, np.int64), np.arange(100, dtype=np.int64), 1)
    key, index = np.zeros(5, np.int64), np.arange(5, dtype=np.int64)
    reach = pl.Series([5, 6, 9, 10, 9], dtype=pl.Int64)  # differences 5, 5 | 7, 7 | 5
    shift, has = traps.shifts(key, index, (reach.slice(lo, 2) for lo in range(0, 5, 2)))
    assert has.tolist() == [True] and shift.tolist() == [5]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-1, 4), st.integers(0, 6) | st.just(-1)), max_size=80),
    st.booleans(),
)
def test_the_traps_numbered_are_a_lexsort_by_key_then_time(rows, with_nan):
    """_Numbered's counting sort and its per-key sort of what is not in time order: the
    order, times and bounds of np.lexsort((by, key)) (rows of no key left out; a time not
    known, NaN, last within its key)."""
    key = np.array([k for k, _ in rows], np.int32)
    by = np.array([t for _, t in rows], np.float64 if with_nan else np.int64)
    if with_nan:
        by[by == -1] = np.nan
    got = _Numbered(key, by, 5)
    want = np.lexsort((by, key))
    want = want[key[want] >= 0]
    assert got.order.tolist() == want.tolist()
    assert np.array_equal(got.by, by[want], equal_nan=True)
    assert got.start.tolist() == np.searchsorted(key[want], np.arange(6)).tolist()
