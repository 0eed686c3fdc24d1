"""Rows found by their place in a log: of a set of rows keyed by their group (a queue, a
log) and line offset, the last at or before, or the first at or after, an offset of the
same group, by binary search in the keys sorted once. An as-of join `by` the group
partitioned its whole right side at every call: seconds and GBs at millions of rows."""

from __future__ import annotations

import numpy as np
import polars as pl

OFFSET_BITS = 40  # a log's offsets lie below 2^40 (1 TiB): key = group << this | offset


def search(keys: np.ndarray, lo: np.ndarray, offs: pl.Series, before: bool) -> np.ndarray:
    """Per row (its group's least key `lo`, -1 for none; its offset `offs`): where in the
    sorted `keys` its group's last key at or before it is (`before`), else its first at or
    after; -1 if there is none."""
    ok = (lo >= 0) & offs.is_not_null().to_numpy()
    off = offs.fill_null(0).to_numpy().astype(np.int64)
    ok &= (off >= 0) & (off < 1 << OFFSET_BITS)
    if not len(keys):
        return np.full(len(lo), -1, np.int64)
    mine = lo + off
    if before:
        i = np.searchsorted(keys, mine, side="right") - 1
        ok &= i >= 0
        ok &= keys[i.clip(0)] >= lo
    else:
        i = np.searchsorted(keys, mine, side="left")
        ok &= i < len(keys)
        ok &= keys[i.clip(0, len(keys) - 1)] < lo + (1 << OFFSET_BITS)
    return np.where(ok, i, -1)


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
