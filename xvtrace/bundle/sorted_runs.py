"""Sorted runs on disk and their k-way merge: the table's row order (bundle.row_order) for
a whole capture while holding only a few chunks, whatever its size.

Every source is already in time order per stream, or nearly: a Sorter sorts each frame of
a stream together with the stream's last `lookahead_rows` rows held back (disorder within
that reach costs nothing). A RunWriter appends what it gives to a run of chunk files; a row
that sorts before what the run already holds starts a new run. `merge` then reads each run
a chunk at a time and emits, step by step, every row that sorts no later than the earliest
end of a loaded chunk: no row still to come can precede it. More runs than `fan_in` are
first merged in groups into longer runs, so memory stays at fan_in chunks even for a stream
in no order at all. One stream may also be merged live, as it is decoded (`live`), without
going to disk; it must then be one run (OutOfOrder otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from xvtrace.bundle.row_order import (
    SEQ,
    WORDS,
    count_le,
    keys_of,
    less,
    merge_order,
    sort_order,
    take,
)

CHUNK_ROWS = 1 << 16  # ~9 MB of event rows per chunk file
LOOKAHEAD_ROWS = 1 << 16
FAN_IN = 32

Chunk = tuple[pl.DataFrame, np.ndarray]  # rows in key order, and their keys


class OutOfOrder(Exception):
    """A live stream held a row that sorts before rows it already gave."""


@dataclass
class Run:
    """A sorted run: its chunk files in order, and how many rows they hold."""

    files: list[Path] = field(default_factory=list)
    rows: int = 0


class Sorter:
    """One stream's frames in key order, the last `lookahead_rows` held back until more
    come: each push gives the rows that can go (at least `chunk_rows` of them), sorted.
    Frames get SEQ (their arrival number, from `first_seq`) here."""

    def __init__(self, ranks: dict[str | None, int], first_seq: int = 0, *,
                 chunk_rows: int = CHUNK_ROWS, lookahead_rows: int = LOOKAHEAD_ROWS):  # fmt: skip
        self.ranks = ranks
        self.next_seq = first_seq
        self.chunk_rows = max(1, chunk_rows)
        self.lookahead_rows = max(0, lookahead_rows)
        self._held: Chunk | None = None

    def push(self, frame: pl.DataFrame) -> Chunk | None:
        if not len(frame):
            return None
        if SEQ not in frame.columns:
            seq = np.arange(self.next_seq, self.next_seq + len(frame), dtype=np.uint64)
            frame = frame.with_columns(pl.Series(SEQ, seq))
        self.next_seq += len(frame)
        keys = keys_of(frame, self.ranks)
        if self._held is not None:
            frame = pl.concat([self._held[0], frame])
            keys = np.concatenate([self._held[1], keys])
        order = sort_order(keys)
        if order is not None:
            frame, keys = take(frame, order), keys[order]
        if len(frame) < self.lookahead_rows + self.chunk_rows:
            self._held = frame, keys  # too little to give a chunk yet
            return None
        cut = len(frame) - self.lookahead_rows
        self._held = (frame[cut:], keys[cut:]) if self.lookahead_rows else None
        return frame[:cut], keys[:cut]

    def flush(self) -> Chunk | None:
        held, self._held = self._held, None
        return held if held is not None and len(held[0]) else None


class RunWriter:
    """Cuts streams of frames into sorted runs of chunk files in `directory`.

    `add(frame, stream)` with a new stream ends the previous one, `close()` ends the last
    and returns every run; `rows` counts the rows taken (the next SEQ)."""

    def __init__(self, directory: Path, ranks: dict[str | None, int], *,
                 chunk_rows: int = CHUNK_ROWS, lookahead_rows: int = LOOKAHEAD_ROWS,
                 prefix: str = "r"):  # fmt: skip
        self.directory = Path(directory)
        self.ranks = ranks
        self.chunk_rows = max(1, chunk_rows)
        self.lookahead_rows = lookahead_rows
        self.prefix = prefix
        self.runs: list[Run] = []
        self.rows = 0
        self._stream = None
        self._sorter: Sorter | None = None
        self._last: np.ndarray | None = None  # key of the open run's last row; None: closed

    def add(self, frame: pl.DataFrame, stream=None) -> None:
        if self._sorter is None or stream != self._stream:
            self.end_stream()
            self._stream = stream
            self._sorter = Sorter(self.ranks, self.rows, chunk_rows=self.chunk_rows,
                                  lookahead_rows=self.lookahead_rows)  # fmt: skip
        self.rows += len(frame)
        self._write(self._sorter.push(frame))

    def end_stream(self) -> None:
        if self._sorter is not None:
            self._write(self._sorter.flush())
        self._sorter = None
        self._last = None  # another stream's rows go to runs of their own

    def close(self) -> list[Run]:
        self.end_stream()
        return self.runs

    def _write(self, chunk: Chunk | None) -> None:
        if chunk is None:
            return
        frame, keys = chunk
        if self._last is None or less(keys, 0, self._last, 0):
            self.runs.append(Run())
        run = self.runs[-1]
        for at in range(0, len(frame), self.chunk_rows):
            path = self.directory / f"{self.prefix}{len(self.runs):05d}-{len(run.files):06d}.arrow"
            frame.slice(at, self.chunk_rows).write_ipc(path, compression="lz4")
            run.files.append(path)
        run.rows += len(frame)
        self._last = keys[-1:].copy()


def live(frames: Iterable[pl.DataFrame], ranks: dict[str | None, int], first_seq: int, *,
         chunk_rows: int = CHUNK_ROWS, lookahead_rows: int = LOOKAHEAD_ROWS) -> Iterator[Chunk]:  # fmt: skip
    """One stream's frames as sorted chunks for `merge`, with no file between: OutOfOrder
    where the stream reaches back past the lookahead (a RunWriter would start a second
    run there)."""
    sorter = Sorter(ranks, first_seq, chunk_rows=chunk_rows, lookahead_rows=lookahead_rows)

    def chunks() -> Iterator[Chunk | None]:
        for frame in frames:
            yield sorter.push(frame)
        yield sorter.flush()

    last = None
    for chunk in chunks():
        if chunk is None:
            continue
        if last is not None and less(chunk[1], 0, last, 0):
            raise OutOfOrder
        last = chunk[1][-1:].copy()
        yield chunk


def _read(run: Run, ranks: dict[str | None, int], keep: bool) -> Iterator[Chunk]:
    """A run's chunks from its files, each deleted once read unless `keep`."""
    for path in run.files:
        frame = pl.read_ipc(path)
        if not keep:
            path.unlink()
        yield frame, keys_of(frame, ranks)


def merge(
    runs: Iterable[Run],
    directory: Path,
    ranks: dict[str | None, int],
    *,
    live: Iterator[Chunk] | None = None,
    keep: bool = False,
    fan_in: int = FAN_IN,
    chunk_rows: int = CHUNK_ROWS,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[pl.DataFrame]:
    """The rows of all runs, and of the `live` chunks, in key order, as frames without SEQ.
    Deletes the runs' files as it reads them unless `keep` (to merge again).

    progress(rows done, rows in all) after each frame (rows of runs only)."""
    runs = [r for r in runs if r.rows]
    total = sum(r.rows for r in runs)
    given = {id(r) for r in runs}  # with `keep`, their files stay (a run merged before
    # the last level, or passed through a level alone, is still one of them)
    level = 0
    while len(runs) > max(2, fan_in):  # merge groups into longer runs until few are left
        level += 1
        merged = []
        for g in range(0, len(runs), fan_in):
            group = runs[g : g + fan_in]
            if len(group) == 1:
                merged += group
                continue
            writer = RunWriter(directory, ranks, chunk_rows=chunk_rows, lookahead_rows=0,
                               prefix=f"m{level}-{g // fan_in:05d}-")  # fmt: skip
            for frame in merge_sources([_read(r, ranks, keep and id(r) in given) for r in group]):
                writer.add(frame)
            merged += writer.close()
        runs = [r for r in merged if r.rows]
    sources = [_read(r, ranks, keep and id(r) in given) for r in runs]
    done = 0
    for frame in merge_sources(sources + ([live] if live is not None else [])):
        done += len(frame)
        if progress and live is None:
            progress(done, total)
        yield frame.drop(SEQ)


class _Cursor:
    """A sorted source being merged: its loaded chunk, that chunk's keys and next row."""

    def __init__(self, chunks: Iterator[Chunk]):
        self.chunks = chunks
        self.frame: pl.DataFrame | None = None
        self.keys = np.empty((0, WORDS), np.uint64)
        self.pos = 0
        self.advance(0)

    def advance(self, rows: int) -> None:
        """Move past `rows` rows; load the next chunk when the loaded one is used up, or
        become done."""
        self.pos += rows
        while self.pos == len(self.keys):
            chunk = next(self.chunks, None)
            if chunk is None:
                self.frame = None
                return
            (self.frame, self.keys), self.pos = chunk, 0

    @property
    def done(self) -> bool:
        return self.frame is None


def merge_sources(sources: list[Iterator[Chunk]]) -> Iterator[pl.DataFrame]:
    """The rows of sorted sources in key order, a step per chunk used up. The keys are any
    rows of uint64 words compared in turn (row_order's; the event table's carry SEQ)."""
    cursors = [c for c in map(_Cursor, sources) if not c.done]
    while len(cursors) > 1:
        # The chunk that ends first: nothing after its end can precede it, and every row
        # up to it, in any source, is already loaded.
        first = cursors[0]
        for c in cursors[1:]:
            if less(c.keys, len(c.keys) - 1, first.keys, len(first.keys) - 1):
                first = c
        end = first.keys, len(first.keys) - 1
        counts = [count_le(c.keys, c.pos, len(c.keys), *end) for c in cursors]
        yield _combine([(c, n) for c, n in zip(cursors, counts, strict=True) if n])
        for c, n in zip(cursors, counts, strict=True):
            c.advance(n)
        cursors = [c for c in cursors if not c.done]
    for c in cursors:  # the last source left: the rest of it as it is
        while not c.done:
            yield c.frame.slice(c.pos)
            c.advance(len(c.keys) - c.pos)


def _combine(pieces: list[tuple[_Cursor, int]]) -> pl.DataFrame:
    """The next n rows of each cursor, merged into one frame in key order."""
    if len(pieces) == 1:
        c, n = pieces[0]
        return c.frame.slice(c.pos, n)
    keys = np.concatenate([c.keys[c.pos : c.pos + n] for c, n in pieces])
    bounds = np.cumsum([0] + [n for _, n in pieces])
    frame = pl.concat([c.frame.slice(c.pos, n) for c, n in pieces])
    return take(frame, merge_order(keys, bounds))
