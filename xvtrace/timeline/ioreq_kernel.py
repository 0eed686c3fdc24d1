"""The compiled pass of timeline.ioreqs' numbering (apart from it, so that reading a stored
timeline imports no numba)."""

from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True)
def rows_by_key(key, start, order):
    """A counting sort: `order` (as long as the rows with a key >= 0) filled with the row
    numbers of each key in turn, in row order, and `start` (keys + 1) with where each key's
    rows begin there (the last: their count). Rows of a negative key are left out."""
    for k in key:
        if k >= 0:
            start[k + 1] += 1
    for g in range(len(start) - 1):
        start[g + 1] += start[g]
    at = start[:-1].copy()
    for i in range(len(key)):
        k = key[i]
        if k >= 0:
            order[at[k]] = i
            at[k] += 1
