"""One pass over a capture's xentrace rows in time order, a chunk at a time, folding what
the summary's sections need: the table (or the raw file) is read once, and memory holds a
chunk, the sections' small per-group tables, the runstate changes and a histogram of the
exits' durations (or, for the exits' spans, each exit's times).

A fold is declared, not coded per section: `tables` are per-chunk group-by queries whose
results are merged (counts added, firsts and lasts kept), `rows` per-chunk selections kept
whole (few: runstate changes, lost-record marks), and one selection of exit, entry, handler
and wake-up records goes through the exit pairing (exit_pairs) as it comes. Over decoded
frames a frame's queries run together (polars' collect_all, on every core); over the
table each query streams on its own, one after another (run together they shared a cached
scan of the whole table).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from xvtrace.analysis import exit_pairs
from xvtrace.parsers.schema import EVENT_SCHEMA

Query = Callable[[pl.LazyFrame], pl.LazyFrame]
MERGE = {"sum": pl.Expr.sum, "min": pl.Expr.min, "max": pl.Expr.max}
COMPACT_EVERY = 32  # partial tables merged once this many are kept (bounded whatever the size)


@dataclass
class Table:
    """A per-chunk group-by (`query`) merged over chunks: `merge` names each value column's
    merge ("sum", "min" or "max"); the other columns are its keys. Merged every
    COMPACT_EVERY parts while merging pays (halves the rows at least); once it does not (few
    rows repeat across chunks), the parts are kept as they come: a merge would hold them
    twice over for little gain."""

    query: Query
    merge: dict[str, str]
    parts: list[pl.DataFrame] = field(default_factory=list)
    compacting: bool = True

    def add(self, part: pl.DataFrame) -> None:
        self.parts.append(part)
        if self.compacting and len(self.parts) >= COMPACT_EVERY:
            rows = sum(len(p) for p in self.parts)
            self.parts = [self.result()]
            self.compacting = 2 * len(self.parts[0]) <= rows

    def result(self) -> pl.DataFrame:
        df = pl.concat(self.parts)
        keys = [c for c in df.columns if c not in self.merge]
        merged = df.group_by(keys, maintain_order=True).agg(
            MERGE[how](pl.col(c)) for c, how in self.merge.items()
        )
        return merged.select(df.columns).cast(df.schema)


EXIT_COLUMNS = ("ts_ns", "role", "vk", "reason", "port")  # the exit pairing's rows


def _counted(exits: pl.LazyFrame) -> pl.LazyFrame:
    """Closed exits as a histogram: how many of each key, handler, io and duration (the
    summary's statistics are exact from it, and it stops growing once a capture's exit
    durations have been seen: 40 k rows for 8.4 M exits of a 500 MB trace)."""
    return exits.group_by(*HISTOGRAM[:-1]).agg(pl.len().cast(pl.UInt64).alias("count"))


HISTOGRAM = ("key", "handler", "io", "dur", "count")  # Exits.result without times


@dataclass
class Exits:
    """Every exit closed so far and the pairing's state. With `times`, each exit's arrays
    (exit_pairs.OUT, per chunk: the exits' spans need their starts); without, a histogram
    of them (HISTOGRAM, a Table: merged while merging pays), which is all the summary's
    statistics need. With `times` and `first`, only the `first` exits by start among those
    `keep` keeps (a mask of a part's arrays), as each chunk comes: a bounded set, where a
    consumer draws only the earliest."""

    times: bool = True
    first: int | None = None
    keep: Callable[[tuple[np.ndarray, ...]], np.ndarray] | None = None
    state: exit_pairs.OpenExits = field(default_factory=exit_pairs.OpenExits)
    parts: list[tuple[np.ndarray, ...]] = field(default_factory=list)
    counted: Table = field(default_factory=lambda: Table(_counted, {"count": "sum"}))
    tail: list[np.ndarray] | None = None  # the last instant of the chunk before

    def add(self, rows: pl.DataFrame | list[np.ndarray], last: bool = False) -> None:
        """`rows`: EXIT_COLUMNS, in time order. (A record whose TSC stepped backward, which
        the decoder counts as out of order, is taken where it stands: a wake-up before an
        exit in the stream is not that exit's, whatever its time.)"""
        cols = (
            [rows[c].to_numpy() for c in EXIT_COLUMNS] if isinstance(rows, pl.DataFrame) else rows
        )
        if self.tail is not None:  # the instant held back, with the rest of it from here
            head = _run_length(cols[0], self.tail[0][0])
            joint = [
                np.concatenate(p) for p in zip(self.tail, (c[:head] for c in cols), strict=True)
            ]
            self.tail = None
            if head == len(cols[0]) and not last:  # the instant fills this chunk too
                self.tail = joint
                return
            self._pair(joint, last=False)
            cols = [c[head:] for c in cols]
        if not last and len(cols[0]):  # the last instant may go on in the next chunk
            at = len(cols[0]) - _run_length(cols[0][::-1], cols[0][-1])
            self.tail = [c[at:] for c in cols]
            cols = [c[:at] for c in cols]
        self._pair(cols, last)

    def _pair(self, cols: list[np.ndarray], last: bool) -> None:
        from xvtrace.analysis import exit_kernels  # numba (0.25 s to import) only here

        self.state.learn(cols[2])
        part = exit_kernels.pair_chunk(self.state, *cols, last)
        if self.times:
            if self.first is not None:
                mask = self.keep(part) if self.keep else slice(None)
                self.parts.append(tuple(a[mask] for a in part))
                if sum(len(p[0]) for p in self.parts) > 2 * self.first:
                    self.parts = [_earliest(self.parts, self.first)]
            else:
                self.parts.append(part)
        else:
            frame = pl.DataFrame(dict(zip(exit_pairs.OUT, part, strict=True))).drop("ts")
            self.counted.add(_counted(frame.lazy()).collect())

    def result(self) -> dict[str, np.ndarray]:
        """exit_pairs.OUT arrays with `times`, else HISTOGRAM's."""
        tail, self.tail = self.tail, None
        self.add(tail if tail is not None else [np.zeros(0, t) for t in _TYPES], last=True)
        if not self.times:  # the parts as they are: a key and duration may repeat across
            # them (the statistics sort them anyway; a last merge held 1 GiB for 4 M exits)
            h, self.counted.parts = pl.concat(self.counted.parts), []
            return {name: h[name].to_numpy() for name in HISTOGRAM}
        if self.first is not None and self.parts:
            self.parts = [_earliest(self.parts, self.first)]
        # one array at a time, each part's copy dropped as it is taken: the whole set is
        # held twice over for one array, not for all
        out = {}
        for i, name in reversed(list(enumerate(exit_pairs.OUT))):
            out[name] = np.concatenate([p[i] for p in self.parts])
            self.parts = [p[:i] for p in self.parts]
        return out


def _earliest(parts: list[tuple[np.ndarray, ...]], first: int) -> tuple[np.ndarray, ...]:
    """The `first` exits by start (exit_pairs.OUT's ts) of `parts`, in that order (ties in
    the order they closed)."""
    joint = [np.concatenate(a) for a in zip(*parts, strict=True)]
    order = np.argsort(joint[exit_pairs.OUT.index("ts")], kind="stable")[:first]
    return tuple(a[order] for a in joint)


def _run_length(ts: np.ndarray, t) -> int:
    """How many of `ts` from its start equal `t` (a scan, not a search: a record whose TSC
    stepped back leaves the rows out of order, which a binary search would misread)."""
    other = ts != t
    return int(np.argmax(other)) if other.any() else len(ts)


_TYPES = (np.int64, np.uint8, np.uint64, np.uint32, np.uint16)  # of EXIT_COLUMNS


@dataclass
class Folded:
    tables: dict[str, pl.DataFrame]
    rows: dict[str, pl.DataFrame]
    exits: dict[str, np.ndarray]


class Folding:
    """A fold in progress over decoded frames, fed a frame at a time (`add`): for a caller
    that has the frames on their way elsewhere (ingest writing the table)."""

    def __init__(self, tables: dict[str, tuple[Query, dict[str, str]]], rows: dict[str, Query],
                 exit_rows: Query, times: bool, first: int | None = None,
                 keep=None):  # fmt: skip
        self.tables = {name: Table(q, how) for name, (q, how) in tables.items()}
        self.rows = rows
        self.kept: dict[str, list[pl.DataFrame]] = {name: [] for name in rows}
        self.exits = Exits(times, first, keep)
        self.queries = [t.query for t in self.tables.values()] + list(rows.values()) + [exit_rows]

    def add(self, chunk: pl.DataFrame) -> None:
        """`chunk`: the next xentrace rows, in time order."""
        lf = chunk.lazy()
        got = pl.collect_all([q(lf) for q in self.queries])
        for t, part in zip(self.tables.values(), got, strict=False):
            t.add(part)
        for name, part in zip(self.kept, got[len(self.tables) :], strict=False):
            self.kept[name].append(part)
        self.exits.add(got[-1])

    def result(self) -> Folded:
        empty = pl.DataFrame(schema=EVENT_SCHEMA).lazy()  # (a capture with no rows)
        return Folded(
            {n: t.result() if t.parts else t.query(empty).collect() for n, t in self.tables.items()},
            {n: pl.concat(p) if p else self.rows[n](empty).collect() for n, p in self.kept.items()},
            self.exits.result(),
        )  # fmt: skip


def fold(
    source: pl.LazyFrame | Iterable[pl.DataFrame],
    tables: dict[str, tuple[Query, dict[str, str]]],
    rows: dict[str, Query],
    exit_rows: Query,
    chunk_rows: int,
    times: bool = True,
    first: int | None = None,
    keep=None,
) -> Folded:
    """Fold `source` (xentrace rows in time order) through the declared queries: a table's
    LazyFrame by one streamed query each and its exit rows `chunk_rows` at a time; decoded
    frames (an iterable) in one pass, a frame at a time. `times`: keep each exit's start
    (`first`, `keep`: only the earliest, as Exits)."""
    if isinstance(source, pl.LazyFrame):
        # one after another: collect_all shares their scan by caching the whole table
        # (1.8 GiB for 30 M rows, against 0.26 GiB for the largest query alone)
        queries = [q(source) for q, _ in tables.values()] + [q(source) for q in rows.values()]
        got = [q.collect(engine="streaming") for q in queries]
        exits = Exits(times, first, keep)
        for batch in exit_rows(source).collect_batches(chunk_size=chunk_rows):
            exits.add(batch)
        return Folded(dict(zip(tables, got, strict=False)),
                      dict(zip(rows, got[len(tables):], strict=True)), exits.result())  # fmt: skip
    folding = Folding(tables, rows, exit_rows, times, first, keep)
    for chunk in source:
        folding.add(chunk)
    return folding.result()
