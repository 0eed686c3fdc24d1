"""A stream of frames written as one parquet file, holding one frame at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
from polars.io.plugins import register_io_source

# how a command's scratch tables are written: fast to write and read back, no statistics
# (polars computes them for every column; nothing filters these files by them)
SPILL_OPTIONS = {"compression": "lz4", "statistics": False}


def sink_frames(
    frames: Callable[[], Iterator[pl.DataFrame]], schema: pl.Schema, path: Path, **options
) -> None:
    """Write the frames `frames()` yields (each of `schema`) to the parquet file `path`
    (`options`: sink_parquet's)."""

    def source(with_columns, predicate, n_rows, batch_size):
        for frame in frames():
            yield frame.select(with_columns) if with_columns is not None else frame

    register_io_source(source, schema=schema).sink_parquet(path, **options)


def batches_through(rows: pl.LazyFrame, scratch: Path, size: int) -> Iterator[pl.DataFrame]:
    """The rows of `rows`, in order, `size` at a time, through the parquet file `scratch`
    (removed after): the query is written now, before this returns (a caller can then
    collect what it holds beside the batches after the query's own memory is free), and
    read back a slice at a time. (polars' collect_batches runs ahead of its consumer: a
    query of 45 M narrow rows had 1.4 GB of its batches waiting.)"""
    rows.sink_parquet(scratch, **SPILL_OPTIONS)
    return _read_back(scratch, size)


def _read_back(stored: Path, size: int) -> Iterator[pl.DataFrame]:
    try:
        rows = pl.scan_parquet(stored)
        total = rows.select(pl.len()).collect().item()
        for lo in range(0, total, size):
            yield rows.slice(lo, size).collect()
    finally:
        stored.unlink(missing_ok=True)
