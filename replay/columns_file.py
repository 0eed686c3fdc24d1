"""A [rows, columns] float64 table on disk, column after column: what the replay engine reads
a window of rows at a time (engine.Simulation with a window), written a column at a time
(engine.durations draws one operation's durations for every request at once), so that
neither side holds the whole table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ITEM = np.dtype(np.float64).itemsize


class ColumnFile:
    """`path` (created, all zeros, removed by close()) as `rows` x `columns` float64, indexed
    like an array for what its users do: table[:, j] (a column, read or written whole),
    table[a:b] (rows a..b of every column, read)."""

    def __init__(self, path: Path, rows: int, columns: int):
        self.path, self.shape = Path(path), (int(rows), int(columns))
        with self.path.open("wb") as fh:
            fh.truncate(rows * columns * ITEM)

    def column(self, j: int) -> np.ndarray:
        n = self.shape[0]
        return np.fromfile(self.path, np.float64, count=n, offset=j * n * ITEM)

    def write_column(self, j: int, values) -> None:
        n = self.shape[0]
        with self.path.open("r+b") as fh:
            fh.seek(j * n * ITEM)
            np.ascontiguousarray(np.broadcast_to(np.asarray(values, np.float64), n)).tofile(fh)

    def __getitem__(self, key):
        if isinstance(key, slice):  # rows, every column
            a, b, step = key.indices(self.shape[0])
            if step != 1:
                raise IndexError("a ColumnFile reads rows a..b, in order")
            b = max(a, b)
            out = np.empty((self.shape[1], b - a)).T
            n = self.shape[0]
            for j in range(self.shape[1]):
                out[:, j] = np.fromfile(self.path, np.float64, count=b - a,
                                        offset=(j * n + a) * ITEM)  # fmt: skip
            return out
        _, j = key
        return self.column(j)

    def __setitem__(self, key, values) -> None:
        _, j = key
        self.write_column(j, values)

    def where(self, mask: np.ndarray) -> _Rows:
        """The rows `mask` selects, as a table of their own to read and write columns of."""
        return _Rows(self, mask)

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


class _Rows:
    def __init__(self, table: ColumnFile, mask: np.ndarray):
        self.table, self.mask = table, mask

    def __getitem__(self, key) -> np.ndarray:
        _, j = key
        return self.table.column(j)[self.mask]

    def __setitem__(self, key, values) -> None:
        _, j = key
        column = self.table.column(j)
        column[self.mask] = values
        self.table.write_column(j, column)
