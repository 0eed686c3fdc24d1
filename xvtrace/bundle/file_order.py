"""One capture file's rows of the event table in that file's order, a batch at a time."""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl

BATCH_ROWS = 250_000


def batches(rows: pl.LazyFrame) -> Iterator[pl.DataFrame]:
    """`rows` (one src_file's, with src_offset) by src_offset, BATCH_ROWS at a time. The
    table is in time order, so a log's rows are in its file order unless its own times
    step back (threads logging at once): then they are sorted, and held whole."""
    stepped_back = rows.select((pl.col("src_offset").diff() < 0).any()).collect().item()
    if stepped_back:
        yield rows.sort("src_offset").collect()
    else:
        yield from rows.collect_batches(chunk_size=BATCH_ROWS)
