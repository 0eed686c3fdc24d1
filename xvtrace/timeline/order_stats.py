"""Exact order statistics of groups of values that need not fit in memory.

The commands that print percentiles of every request (`report`, `timeline`, `regress`)
read the requests a slice at a time. `OrderStats` takes each slice's values by group; a
group's values stay in memory until all groups together hold HELD_VALUES, then the largest
groups' are sorted and appended, each as a run, to one file on disk. A group's values at
given ranks come from its held values sorted, or, once it has runs, from a merge of its
runs read a chunk of each at a time, which sorts only the blocks that hold a wanted rank.
Below HELD_VALUES nothing is written and the answers are those of one sort in memory; past
it they are the same, from a few chunks held (whole, a column of 5 M requests and its sorted
copy held 80 MB per phase, 0.1 GiB per million requests in all).

`Groups` numbers the distinct keys of a few key columns as slices of them come; `slices`
reads a frame a slice at a time and `grouped` such slices into both; `nearest_rank` and
`linear_quantiles` are polars' "nearest" and numpy's default quantile rules on order
statistics so found.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl

HELD_VALUES = 1 << 22  # values held in memory across groups before runs are written (32 MB)
MERGE_VALUES = 1 << 21  # values read from one group's runs at a time (a share per run)
MIN_CHUNK = 1 << 12  # values read from a run at least


class OrderStats:
    """Values by integer group, `add`ed a slice at a time (a group's values keep the dtype
    of its first ones: a phase's column has one); `count`, `select` (values at ranks). A
    context manager: its runs' directory goes on exit."""

    def __init__(self, held_values: int | None = None):
        self.held_values = HELD_VALUES if held_values is None else held_values
        self._dtype: dict[int, np.dtype] = {}  # a group's: that of its first values
        self._held: dict[int, list[np.ndarray]] = {}  # group -> pieces not yet in a run
        self._held_n: dict[int, int] = {}
        self._total_held = 0
        self._runs: dict[int, list[tuple[int, int]]] = {}  # group -> (byte offset, length)
        self._counts: dict[int, int] = {}
        self._dir: Path | None = None
        self._file = None  # runs.bin, open for appending while runs are written

    def __enter__(self) -> OrderStats:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closed_file()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def count(self, group: int) -> int:
        return self._counts.get(group, 0)

    def add(self, groups: np.ndarray, values: np.ndarray) -> None:
        """`values[i]` belongs to `groups[i]`."""
        if not len(values):
            return
        values = np.asarray(values)
        groups = np.asarray(groups)
        # (a few hundred groups at most: numpy's stable sort of 16-bit numbers is a radix sort)
        small = groups.min() >= 0 and groups.max() < 1 << 15
        order = np.argsort(groups.astype(np.int16) if small else groups, kind="stable")
        ranked = groups[order]
        starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
        ends = np.r_[starts[1:], len(ranked)]
        for g, a, b in zip(ranked[starts].tolist(), starts.tolist(), ends.tolist(), strict=True):
            dtype = self._dtype.setdefault(g, values.dtype)
            self._held.setdefault(g, []).append(values[order[a:b]].astype(dtype, copy=False))
            self._held_n[g] = self._held_n.get(g, 0) + (b - a)
            self._counts[g] = self._counts.get(g, 0) + (b - a)
        self._total_held += len(values)
        if self._total_held > self.held_values:  # the largest groups' values to disk
            for g in sorted(self._held_n, key=self._held_n.__getitem__, reverse=True):
                if self._total_held <= self.held_values // 2:
                    break
                self._write_run(g)

    def select(self, group: int, ranks: np.ndarray) -> np.ndarray:
        """The group's values at `ranks` (0 the least; each < count(group)), in their order."""
        ranks = np.asarray(ranks, np.int64)
        n = self.count(group)
        if len(ranks) and (ranks.min() < 0 or ranks.max() >= n):
            raise IndexError(f"ranks outside 0..{n - 1}")
        if group not in self._runs:
            held = self._held.get(group, [])
            return np.sort(np.concatenate(held))[ranks] if held else ranks[:0]
        self._write_run(group)  # (what it holds, as one run more)
        self._closed_file()  # (written through before it is read)
        return self._merge_select(group, ranks)

    def _closed_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _path(self) -> Path:
        """The one file every group's runs are appended to (a file a group made 40,000 of
        them for 10,000 groups)."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="xvtrace-ranks-"))
        return self._dir / "runs.bin"

    def _write_run(self, group: int) -> None:
        pieces = self._held.pop(group, [])
        n = self._held_n.pop(group, 0)
        if not n:
            return
        run = np.sort(np.concatenate(pieces))
        del pieces
        if self._file is None:  # (open while runs are written: thousands of groups write)
            self._file = self._path().open("ab")
        offset = self._file.tell()
        run.tofile(self._file)
        self._runs.setdefault(group, []).append((offset, n))
        self._total_held -= n

    def _merge_select(self, group: int, ranks: np.ndarray) -> np.ndarray:
        """The runs merged a chunk of each at a time: every value at or below the least
        last value of a chunk whose run goes on is final; a block of them is sorted only
        when a wanted rank falls in it."""
        runs, path, dtype = self._runs[group], self._path(), self._dtype[group]
        chunk = max(MERGE_VALUES // len(runs), MIN_CHUNK)
        order = np.argsort(ranks, kind="stable")
        wanted = ranks[order]
        out = np.empty(len(ranks), dtype)
        read = [0] * len(runs)  # values read of each run
        bufs: list[np.ndarray] = [np.empty(0, dtype)] * len(runs)

        def refill(i: int) -> None:
            offset, length = runs[i]
            count = min(chunk, length - read[i])
            at = offset + read[i] * dtype.itemsize
            bufs[i] = np.fromfile(path, dtype, count=count, offset=at)
            read[i] += count

        for i in range(len(runs)):
            refill(i)
        base, w = 0, 0  # the rank of the next value final, the next wanted rank
        while w < len(wanted):
            going = [i for i, (_, length) in enumerate(runs) if read[i] < length]
            limit = min(bufs[i][-1] for i in going) if going else None
            cut = [
                len(b) if limit is None else int(np.searchsorted(b, limit, "right")) for b in bufs
            ]
            size = sum(cut)
            if not size:  # (the ranks are checked against the count: cannot happen)
                raise AssertionError(f"group {group}: its runs end before rank {wanted[w]}")
            if wanted[w] < base + size:  # a wanted rank among these: sort them
                block = np.sort(np.concatenate([b[:c] for b, c in zip(bufs, cut, strict=True)]))
                end = int(np.searchsorted(wanted, base + size))
                out[order[w:end]] = block[wanted[w:end] - base]
                w = end
            base += size
            for i, c in enumerate(cut):
                bufs[i] = bufs[i][c:]
                if not len(bufs[i]) and read[i] < runs[i][1]:
                    refill(i)
        return out


def nearest_rank(n: int, q: float) -> int:
    """The rank polars' quantile(q, "nearest") takes of n values: (n - 1) * q rounded, a
    half away from zero."""
    return int(np.floor((n - 1) * q + 0.5))


def linear_quantiles(n: int, qs: np.ndarray, select: Callable[[np.ndarray], np.ndarray]):
    """np.quantile(values, qs) (its default, linear method) of n float64 values, from
    `select` (ranks -> the sorted values there): numpy's own index, weight and lerp."""
    virtual = (n - 1) * np.asarray(qs, np.float64)
    prev = np.floor(virtual)
    nxt = prev + 1
    above = virtual >= n - 1
    prev[above], nxt[above] = n - 1, n - 1
    below = virtual < 0
    prev[below], nxt[below] = 0, 0
    gamma = virtual - np.where(above, -1, prev)  # (numpy's, with its index -1 for the last)
    needed, at = np.unique(np.r_[prev, nxt].astype(np.int64), return_inverse=True)
    found = np.asarray(select(needed), np.float64)[at]
    a, b = found[: len(virtual)], found[len(virtual) :]
    diff = b - a
    out = a + diff * gamma
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), out)


class Groups:
    """The distinct values of `keys` numbered as slices of them come (a null is a value):
    `codes(part)` gives each row's, `names` each number's key tuple. A slice's rows are told apart by numbers (strings by their category numbers,
    which are the slice's own), its distinct keys then looked up by value (on the strings,
    a slice of a million keys held 0.35 GiB)."""

    def __init__(self, keys: list[str]):
        self.keys = keys
        self.names: list[tuple] = []
        self._found: dict[tuple, int] = {}

    def codes(self, part: pl.DataFrame) -> np.ndarray:
        def number(c: str) -> pl.Expr:
            dtype = part.schema[c]
            if isinstance(dtype, pl.Categorical | pl.Enum):
                return pl.col(c).to_physical().cast(pl.Int64)
            if dtype == pl.String:
                return pl.col(c).cast(pl.Categorical).to_physical().cast(pl.Int64)
            if dtype.is_integer() and dtype != pl.UInt64:
                return pl.col(c).cast(pl.Int64)
            return pl.col(c).rank("dense").cast(pl.Int64)  # (floats, wide numbers: the slice's)

        table = part.select(
            *(number(c).fill_null(0).alias(f"_n{i}") for i, c in enumerate(self.keys)),
            *(pl.col(c).is_null().cast(pl.Int64).alias(f"_z{i}") for i, c in enumerate(self.keys)),
        ).to_numpy()
        if not len(table):
            return np.zeros(0, np.int32)
        _, first, inverse = np.unique(_one_number(table), return_index=True, return_inverse=True)
        keys = part.select(self.keys)
        codes = []
        for at in first.tolist():
            name = keys.row(at)
            if name not in self._found:
                self._found[name] = len(self.names)
                self.names.append(name)
            codes.append(self._found[name])
        return np.asarray(codes, np.int32)[inverse.ravel()]


def _one_number(table: np.ndarray) -> np.ndarray:
    """Each row of small numbers as one number, in mixed radix from each column's range (or
    the rows themselves where those ranges' product passes 2^62): numpy's unique of rows
    sorts them as records, 8 times slower than of one column."""
    low, high = table.min(axis=0), table.max(axis=0)
    radix = [h - lo + 1 for lo, h in zip(low.tolist(), high.tolist(), strict=True)]  # (Python ints)
    if np.prod(np.array(radix, dtype=object)) >= 1 << 62:
        return np.unique(table, axis=0, return_inverse=True)[1].ravel()
    out = np.zeros(len(table), np.int64)
    for j in range(table.shape[1]):
        out = out * radix[j] + (table[:, j] - low[j])
    return out


Found = tuple[tuple, int, int, Callable[[np.ndarray], np.ndarray]]


def slices(frame: pl.LazyFrame, slice_rows: int) -> Iterator[tuple[int, pl.LazyFrame]]:
    """`frame` `slice_rows` rows at a time: (the first row's number, those rows, lazy)."""
    total = frame.select(pl.len()).collect().item()
    for lo in range(0, total, slice_rows):
        yield lo, frame.slice(lo, slice_rows)


@contextmanager
def grouped(
    frame: pl.LazyFrame, keys: list[str], columns: list[pl.Expr], slice_rows: int,
    where: pl.Expr | None = None,
) -> Iterator[Iterator[Found]]:  # fmt: skip
    """`frame` read `slice_rows` rows at a time (each slice filtered by `where`), the
    non-null values of each of `columns` kept by the group of their row's `keys`. Yields,
    for each group (in the order found) and column (in order) that has values: the group's
    key tuple, the column's index, how many values, and `select` (ranks -> the values
    there, as OrderStats.select)."""
    groups = Groups(keys)
    with OrderStats() as stats:
        for _, part in slices(frame, slice_rows):
            part = (part if where is None else part.filter(where)).select(*keys, *columns)
            part = part.collect()
            codes = groups.codes(part).astype(np.int64) * len(columns)
            for j, values in enumerate(part.get_columns()[len(keys) :]):
                known = values.is_not_null()
                stats.add(codes[known.to_numpy()] + j, values.filter(known).to_numpy())
            del part

        def found() -> Iterator[Found]:
            for g, key in enumerate(groups.names):
                for j in range(len(columns)):
                    if n := stats.count(at := g * len(columns) + j):
                        yield key, j, n, partial(stats.select, at)

        yield found()
