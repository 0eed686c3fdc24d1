"""Tables and columns a long replay keeps on disk rather than in memory, each read a range
of rows at a time in order (engine.Simulation with a window reads a window of requests at
a time):

- ColumnFile: a [rows, columns] float64 table, column after column, written a range of a
  column at a time (engine.durations draws one operation's durations at a time);
- DiskColumn: a 1-D array appended to in order (replay.stream's per-request columns);
- Constant: a value every row shares, read as rows (an arrival or think time);
- Mapped: a column looked up in a table as it is read (each request's path, of its
  operation).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

ITEM = np.dtype(np.float64).itemsize


def _span(key: slice, n: int) -> tuple[int, int]:
    a, b, step = key.indices(n)
    if step != 1:
        raise IndexError("rows a..b are read in order")
    return a, max(a, b)


class ColumnFile:
    """`path` (created, all zeros, removed by close()) as `rows` x `columns` float64, indexed
    like an array for what its users do: table[a:b, j] (rows of a column, read or written;
    `:` for all), table[a:b] (rows a..b of every column, read)."""

    def __init__(self, path: Path, rows: int, columns: int):
        self.path, self.shape = Path(path), (int(rows), int(columns))
        with self.path.open("wb") as fh:
            fh.truncate(rows * columns * ITEM)

    def column(self, j: int, a: int = 0, b: int | None = None) -> np.ndarray:
        n = self.shape[0]
        b = n if b is None else b
        return np.fromfile(self.path, np.float64, count=b - a, offset=(j * n + a) * ITEM)

    def write_column(self, j: int, values, a: int = 0, b: int | None = None) -> None:
        n = self.shape[0]
        b = n if b is None else b
        with self.path.open("r+b") as fh:
            fh.seek((j * n + a) * ITEM)
            np.ascontiguousarray(np.broadcast_to(np.asarray(values, np.float64), b - a)).tofile(fh)

    def __getitem__(self, key):
        if isinstance(key, slice):  # rows, every column
            a, b = _span(key, self.shape[0])
            out = np.empty((self.shape[1], b - a)).T
            for j in range(self.shape[1]):
                out[:, j] = self.column(j, a, b)
            return out
        rows, j = key
        return self.column(j, *_span(rows, self.shape[0]))

    def __setitem__(self, key, values) -> None:
        rows, j = key
        self.write_column(j, values, *_span(rows, self.shape[0]))

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


class DiskColumn:
    """A 1-D array in the file `path` (created empty, removed by close()), appended to in
    order and read a range at a time: column[a:b]."""

    def __init__(self, path: Path, dtype):
        self.path, self.dtype, self._n = Path(path), np.dtype(dtype), 0
        self.path.write_bytes(b"")

    def append(self, values) -> None:
        with self.path.open("ab") as fh:
            a = np.ascontiguousarray(values, self.dtype)
            a.tofile(fh)
        self._n += len(a)

    def __len__(self) -> int:
        return self._n

    @property
    def shape(self) -> tuple[int]:
        return (self._n,)

    def __getitem__(self, key: slice) -> np.ndarray:
        a, b = _span(key, self._n)
        return np.fromfile(self.path, self.dtype, count=b - a, offset=a * self.dtype.itemsize)

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


class Constant:
    """`n` rows of `value`, read as rows: column[a:b]."""

    def __init__(self, value, n: int, dtype=np.float64):
        self.value, self.dtype, self.shape = value, np.dtype(dtype), (int(n),)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice) -> np.ndarray:
        a, b = _span(key, self.shape[0])
        return np.full(b - a, self.value, self.dtype)


class Mapped:
    """`column` (an array, or anything read as rows) looked up in `table` as it is read:
    table[column[a:b]]."""

    def __init__(self, column, table: np.ndarray):
        self.column, self.table = column, np.asarray(table)
        self.dtype, self.shape = self.table.dtype, (len(column),)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice) -> np.ndarray:
        return self.table[self.column[key]]


def pieces(column, rows: int):
    """(first row, column[first:first + rows] as an array) over the column, in order."""
    n = len(column)
    for a in range(0, n, rows):
        yield a, np.asarray(column[a : min(n, a + rows)])


def new_file(spill: Path, prefix: str, suffix: str) -> Path:
    """A new empty file in the directory `spill`, named apart (two replays may share it)."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=spill)
    os.close(fd)
    return Path(name)
