"""One capture file's rows of the event table in that file's order, a batch at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl

from xvtrace.bundle.frame_sink import batches_through

BATCH_ROWS = 250_000
FILE_SPAN = 1 << 40  # a log's offsets lie below this (1 TiB)


def int_offset(offset: pl.Expr) -> pl.Expr:
    """A log's UInt64 offsets as Int64, for keys and searches: one past FILE_SPAN (only a
    damaged table has one; past 2^63 the cast failed) taken as the log's last place."""
    return offset.clip(upper_bound=FILE_SPAN - 1).cast(pl.Int64)


def batches(rows: pl.LazyFrame, scratch: Path | None = None) -> Iterator[pl.DataFrame]:
    """`rows` (one src_file's, with src_offset) by src_offset, BATCH_ROWS at a time. The
    table is in time order, so a log's rows are in its file order unless its own times
    step back (threads logging at once) or a row has no offset: then they are sorted (ties
    in the table's order, a null offset first), and held whole. `scratch`:
    a file to pass them through, written before this returns (frame_sink.batches_through:
    polars' own batches run ahead of their consumer, 40 M rows of three columns to 0.7 GB)."""
    offset = pl.col("src_offset")  # (a null one: sorted first, as a sort puts it)
    # (compared, not differenced: a diff of UInt64 offsets casts them to Int64, and fails on
    # a damaged table's offset past 2^63)
    stepped_back = (
        rows.select((offset < offset.shift()).any() | offset.is_null().any()).collect().item()
    )
    if stepped_back:
        return iter([rows.sort("src_offset", maintain_order=True).collect()])
    if scratch is not None:
        return batches_through(rows, scratch, BATCH_ROWS)
    return rows.collect_batches(chunk_size=BATCH_ROWS)
