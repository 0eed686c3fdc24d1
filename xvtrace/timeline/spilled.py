"""A table kept on disk while columns are computed for its rows: `Spilled` is the rows (a
parquet scan, in order) and the computed columns (frames of one row per row, in the same
order), written out a slice at a time. Joined whole, the scan and the columns were held
together (a horizontal concat of the 5 M requests' scan with their IOREQ columns, sunk,
took 2.1 GB)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from xvtrace.bundle.frame_sink import sink_frames

SLICE_ROWS = 1 << 18  # (of 5 M requests, a slice of 1 M and its copies held 1.1 GB)

Step = Callable[[pl.DataFrame], pl.DataFrame]


@dataclass(frozen=True)
class Spilled:
    """`rows` (a scan, in order) with the columns of `added` (frames of one row per row,
    in the same order, held or scanned from disk) beside them."""

    rows: pl.LazyFrame
    added: list[pl.DataFrame | pl.LazyFrame] = field(default_factory=list)

    def with_added(self, *frames: pl.DataFrame | pl.LazyFrame) -> Spilled:
        for frame in frames:  # (a row too many would shift every later row's columns)
            if (rows := _height(frame)) != len(self):
                names = frame.collect_schema().names()
                raise ValueError(f"{rows} rows of {names} for {len(self)} rows")
        return Spilled(self.rows, [*self.added, *frames])

    @property
    def schema(self) -> pl.Schema:
        heads = [self.rows.head(0), *(a.lazy().head(0) for a in self.added)]
        return pl.concat(heads, how="horizontal").collect_schema()

    def __len__(self) -> int:
        return self.rows.select(pl.len()).collect().item()

    def slices(self, then: Step | None = None) -> Iterator[pl.DataFrame]:
        """Every row with every column, SLICE_ROWS at a time (each passed through `then`)."""
        for lo in range(0, len(self), SLICE_ROWS):
            part = self.rows.slice(lo, SLICE_ROWS).collect()
            part = part.hstack(
                [c for a in self.added for c in _slice(a, lo, len(part)).get_columns()]
            )
            yield part if then is None else then(part)

    def write(self, path: Path, then: Step | None = None, **options) -> None:
        """All of it to the parquet file `path` (`options`: sink_parquet's)."""
        empty = self.rows.head(0).collect()
        empty = empty.hstack([c for a in self.added for c in _slice(a, 0, 0).get_columns()])
        schema = (empty if then is None else then(empty)).schema
        sink_frames(lambda: self.slices(then), schema, path, **options)


def _height(frame: pl.DataFrame | pl.LazyFrame) -> int:
    return (
        frame.select(pl.len()).collect().item() if isinstance(frame, pl.LazyFrame) else len(frame)
    )


def _slice(frame: pl.DataFrame | pl.LazyFrame, lo: int, n: int) -> pl.DataFrame:
    part = frame.slice(lo, n)
    return part.collect() if isinstance(part, pl.LazyFrame) else part
