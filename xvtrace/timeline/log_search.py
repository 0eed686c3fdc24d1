"""Rows of a table on disk gathered by their row numbers, a slice of the table at a time
(the IOREQ join's traps: only the rows asked for are held)."""

from __future__ import annotations

import numpy as np
import polars as pl


def rows_at(frame: pl.LazyFrame, at: np.ndarray, step: int) -> pl.DataFrame:
    """The rows of `frame` at `at` (-1: a row of nulls), in that order, `frame` read a slice
    of `step` rows at a time (only the rows asked for are held)."""
    order = np.argsort(at, kind="stable")
    wanted = at[order]
    parts = [frame.head(0).collect().clear(int(np.searchsorted(wanted, 0)))]
    total = frame.select(pl.len()).collect().item()
    for lo in range(0, total, step):
        a, b = np.searchsorted(wanted, [lo, lo + step])
        if a < b:
            parts.append(frame.slice(lo, step).collect()[wanted[a:b] - lo])
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return pl.concat(parts)[back]
