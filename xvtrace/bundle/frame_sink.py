"""A stream of frames written as one parquet file, holding one frame at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
from polars.io.plugins import register_io_source


def sink_frames(
    frames: Callable[[], Iterator[pl.DataFrame]], schema: pl.Schema, path: Path, **options
) -> None:
    """Write the frames `frames()` yields (each of `schema`) to the parquet file `path`
    (`options`: sink_parquet's)."""

    def source(with_columns, predicate, n_rows, batch_size):
        for frame in frames():
            yield frame.select(with_columns) if with_columns is not None else frame

    register_io_source(source, schema=schema).sink_parquet(path, **options)
