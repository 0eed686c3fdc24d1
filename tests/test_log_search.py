"""timeline.log_search: the binary searches and slice-at-a-time gathers the timeline's
joins use in place of as-of joins, against their plain definitions."""

from __future__ import annotations

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from xvtrace.timeline.log_search import OFFSET_BITS, rows_at, search

rows = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 60)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(keyed=rows, asked=st.lists(st.tuples(st.integers(-1, 4), st.none() | st.integers(0, 61)),
                                   max_size=30), before=st.booleans())  # fmt: skip
def test_search_finds_the_groups_last_before_or_first_after(keyed, asked, before):
    """The row found is the last of the asked group at or before the offset (or the first
    at or after), -1 when the group has none there, an unknown group (-1) or no offset."""
    keys = np.sort(np.array([g << OFFSET_BITS | o for g, o in keyed], np.int64))
    lo = np.array([g << OFFSET_BITS if g >= 0 else -1 for g, _ in asked], np.int64)
    offs = pl.Series([o for _, o in asked], dtype=pl.UInt64)
    got = search(keys, lo, offs, before)
    for (g, o), i in zip(asked, got, strict=True):
        mine = [] if g < 0 or o is None else [
            j for j, k in enumerate(keys) if k >> OFFSET_BITS == g
            and ((k & ((1 << OFFSET_BITS) - 1)) <= o if before else (k & ((1 << OFFSET_BITS) - 1)) >= o)
        ]  # fmt: skip
        want = -1 if not mine else (max(mine) if before else min(mine))
        assert keys[i] == keys[want] if want >= 0 and i >= 0 else i == want


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 30), at=st.lists(st.integers(-1, 29), max_size=40), step=st.integers(1, 9))
def test_rows_at_are_the_rows_asked_for_in_that_order(n, at, step):
    frame = pl.DataFrame({"a": range(n), "b": [f"r{i}" for i in range(n)]})
    at = np.array([i if i < n else -1 for i in at], np.int64)
    got = rows_at(frame.lazy(), at, step)
    want = [frame.row(i) if i >= 0 else (None, None) for i in at]
    assert got.schema == frame.schema and got.rows() == want
