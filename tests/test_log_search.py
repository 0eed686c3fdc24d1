"""timeline.log_search: the slice-at-a-time gather of rows by number, against indexing."""

from __future__ import annotations

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from xvtrace.timeline.log_search import rows_at


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 30), at=st.lists(st.integers(-1, 29), max_size=40), step=st.integers(1, 9))
def test_rows_at_are_the_rows_asked_for_in_that_order(n, at, step):
    frame = pl.DataFrame({"a": range(n), "b": [f"r{i}" for i in range(n)]})
    at = np.array([i if i < n else -1 for i in at], np.int64)
    got = rows_at(frame.lazy(), at, step)
    want = [frame.row(i) if i >= 0 else (None, None) for i in at]
    assert got.schema == frame.schema and got.rows() == want
