"""One pass over a capture's xentrace records in time order, a chunk at a time, folding
what the summary's sections need: the table (or the raw file) is read once, and memory
holds a chunk, the sections' small group tables, the runstate changes and a histogram of
the exits' durations (or, for the exits' spans, each exit's times).

What is folded is declared in fold_program and run by the compiled loop of fold_kernel,
into count_maps: the group tables (counts, sums, first and last times), the rows kept
whole (runstate changes, lost-record marks), and the exit, entry, handler and wake-up
records, which go through the exit pairing (exit_pairs) as they come. `Fold` feeds it a
decoded frame at a time (ingest's frames, the table's slices) or a raw file's records as
the decoder indexed them (`summary RAW`, no frame decoded).
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from xvtrace.analysis import count_map, exit_pairs, fold_kernel, fold_program

EXIT_COLUMNS = ("ts_ns", "role", "vk", "reason", "port")  # the exit pairing's rows


@dataclass
class Exits:
    """Every exit closed so far and the pairing's state. With `times`, each exit's arrays
    (exit_pairs.OUT, per chunk: the exits' spans need their starts); without, a histogram
    of them (counted in a count_map), which is all the summary's
    statistics need. With `times` and `first`, only the `first` exits by start among those
    `keep` keeps (a mask of a part's arrays), as each chunk comes: a bounded set, where a
    consumer draws only the earliest."""

    times: bool = True
    first: int | None = None
    keep: Callable[[tuple[np.ndarray, ...]], np.ndarray] | None = None
    state: exit_pairs.OpenExits = field(default_factory=exit_pairs.OpenExits)
    parts: list[tuple[np.ndarray, ...]] = field(default_factory=list)
    # the histogram, (key, dur, handler << 32 | io) -> count: exact statistics come from it,
    # and it stops growing once a capture's exit durations have been seen (40 k entries for
    # the 8.4 M exits of a 500 MB trace)
    counted: tuple = field(default_factory=lambda: count_map.new(wide=False))
    tail: list[np.ndarray] | None = None  # the last instant of the chunk before
    # with `first`, once `first` exits are kept: the start of the last of them (an exit
    # that starts later is not kept, nor sorted with them: the set stops changing)
    bound: int | None = None

    def add(self, cols: list[np.ndarray], last: bool = False) -> None:
        """`cols`: the arrays of EXIT_COLUMNS, rows in time order. (A record whose TSC
        stepped backward, which the decoder counts as out of order, is taken where it
        stands: a wake-up before an exit in the stream is not that exit's, whatever its
        time.)"""
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

    def grouped(self, held: tuple[np.ndarray, ...], xrows: np.ndarray, tsc: np.ndarray,
                base: int, due: int | None) -> tuple:  # fmt: skip
        """exit_kernels.group_due of these rows (`held` from before, then `xrows` of a
        chunk whose records' TSCs are `tsc`), their vCPUs' keys learned first."""
        from xvtrace.analysis import exit_kernels

        while True:
            *out, t_lo, t_hi = exit_kernels.group_due(
                self.state.sorted_keys, self.state.at, len(self.state.keys), *held, xrows,
                len(xrows), tsc, base, np.uint64(due or 0), due is None,
            )  # fmt: skip
            if len(out[1]):
                return (*out, t_lo, t_hi)
            # (a vCPU not seen before: the keys of every row learned)
            self.state.learn(np.concatenate((held[2], xrows[:, 2].view(np.uint64))))

    def add_grouped(self, rows: tuple[np.ndarray, ...], start: np.ndarray, t_lo: int,
                    t_hi: int, monotone: bool) -> None:  # fmt: skip
        """As `add`, the exit rows of the records now due (Fold's unordered take), put by
        vCPU (exit_kernels.group_due: `rows` ts, role, vk, reason, port, TSC and place,
        each vCPU's from `start`; their times from t_lo to t_hi), not in time order: the
        same exits closed, since the pairing keeps each vCPU's apart, so it takes them a
        vCPU at a time. `monotone`: a record's time (ns) never decreases with its TSC
        among these, so that the instants `add` finds in time order are the rows of equal
        time; otherwise they are sorted and handed to `add`."""
        from xvtrace.analysis import exit_kernels

        *cols, tsc, place = rows
        if not monotone or self.times:
            o = np.lexsort((place, tsc))
            self.add([c[o] for c in cols])
            return
        n = len(tsc)
        instant = self.tail[0][0] if self.tail is not None else None  # held back, its time
        head = instant if n and t_lo == instant else t_lo - 1  # (no row's: no head)
        first, last = exit_kernels.edges(cols[0], start, head, t_hi if n else t_lo - 1)
        lo, hi = start[:-1] + first, start[1:] - last

        def timed(a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
            """The rows of ranges [a, b), in time order (a few rows)."""
            size = b - a
            at = np.repeat(a - np.cumsum(size) + size, size) + np.arange(size.sum())
            at = at[np.lexsort((place[at], tsc[at]))]
            return [c[at] for c in cols]

        if self.tail is not None:  # the instant held back, with the rows of it now due
            joint = [np.concatenate(p) for p in zip(self.tail, timed(start[:-1], lo), strict=True)]
            self.tail = None
            if first.sum() == n:  # the instant fills this chunk too
                self.tail = joint
                return
            self._pair(joint, last=False)
        if n:  # the last instant may go on in the next chunk
            self.tail = timed(hi, start[1:])
        ranges = np.stack((lo, hi), axis=1)
        self._pair(cols, last=False, ranges=ranges[lo < hi])

    def _pair(self, cols: list[np.ndarray], last: bool, ranges=None) -> None:
        from xvtrace.analysis import exit_kernels  # numba (0.25 s to import) only here

        part = exit_kernels.pair_chunk(self.state, *cols, last, ranges)
        if self.times:
            if self.first is not None:
                mask = self.keep(part) if self.keep else np.ones(len(part[0]), np.bool_)
                if self.bound is not None:  # (one that starts at or after the last kept
                    # closed after it: in start order, ties in closing order, it is not kept)
                    mask &= part[_TS] < self.bound
                self.parts.append(tuple(a[mask] for a in part))
                # (cut down at a quarter over: at twice, 4 M exits held and their cut made
                # 1M requests' host tracks 0.12 GB lighter than 5M's, which cut them)
                if sum(len(p[0]) for p in self.parts) > self.first + self.first // 4:
                    self.parts = [_earliest(self.parts, self.first)]
                    self.bound = self.parts[0][_TS][-1]
            else:
                self.parts.append(part)
        else:
            key, _, dur, handler, io = part
            k2 = (handler.astype(np.int64) << 32) | io.astype(np.int64)
            (self.counted,) = count_map.fill(
                (self.counted,), len(key), 1,
                lambda maps, start: count_map.tally_rows(*maps[0], key.view(np.int64), dur, k2, start),
            )  # fmt: skip

    def result(self) -> dict[str, np.ndarray]:
        """exit_pairs.OUT arrays with `times`, else the histogram's: key, handler, io, dur
        and how many exits had them (count)."""
        tail, self.tail = self.tail, None
        self.add(tail if tail is not None else [np.zeros(0, t) for t in _TYPES], last=True)
        if not self.times:
            h, self.counted = count_map.used(self.counted), count_map.new(wide=False)
            return {"key": h[:, count_map.K0].view(np.uint64), "dur": h[:, count_map.K1],
                    "handler": (h[:, count_map.K2] >> 32).astype(np.uint8),
                    "io": (h[:, count_map.K2] & 0xFFFFFFFF).astype(np.uint32),
                    "count": h[:, count_map.COUNT].astype(np.uint64)}  # fmt: skip
        if self.first is not None and self.parts:
            self.parts = [_earliest(self.parts, self.first)]
        # one array at a time, each part's copy dropped as it is taken: the whole set is
        # held twice over for one array, not for all
        out = {}
        for i, name in reversed(list(enumerate(exit_pairs.OUT))):
            out[name] = np.concatenate([p[i] for p in self.parts])
            self.parts = [p[:i] for p in self.parts]
        return out


class _Held:
    """Rows of records not due yet (Fold._take_due's runstate changes and lost-record
    marks), in file order."""

    def __init__(self):
        self.cols: list[np.ndarray] | None = None
        self.tsc = np.zeros(0, np.uint64)
        self.place = np.zeros(0, np.int64)

    def due(self, cols, tsc, place, due: int | None):
        """(cols, tsc, place) of the rows now due, in file order: those held that are, then
        these (`cols`, their records' TSC and place) that are; the rest held. `due` None:
        every row is."""
        if self.cols is not None:
            cols = [np.concatenate(p) for p in zip(self.cols, cols, strict=True)]
            tsc, place = np.concatenate((self.tsc, tsc)), np.concatenate((self.place, place))
        mask = np.ones(len(tsc), np.bool_) if due is None else tsc <= np.uint64(due)
        later = _rows(~mask, cols, tsc, place)
        self.cols, self.tsc, self.place = later if len(later[1]) else (None, *later[1:])
        return _rows(mask, cols, tsc, place)


class _HeldExits:
    """The exit rows of records not due yet (exit_kernels.group_due's), in file order, and
    the TSC origins their times were computed with."""

    def __init__(self):
        self.rows = _empty_exit_part()
        self.origins: set[int] = set()
        self.origin = 0  # the last chunk's

    def hold(self, rows: list[np.ndarray], origin: int) -> None:
        self.rows = tuple(rows)
        self.origin = origin
        self.origins = {origin} | (self.origins if len(rows[0]) else set())


def _empty_exit_part() -> tuple[np.ndarray, ...]:
    """exit_kernels.group_due's columns of no rows."""
    return (*(np.zeros(0, t) for t in _TYPES), np.zeros(0, np.uint64), np.zeros(0, np.int64))


def _monotone(tsc: np.ndarray, origin: int, khz: int) -> bool:
    """Whether the times (ns) of these TSCs, all from `origin`, never decrease as their TSC
    grows: tsc_to_ns is exact (no int64 wraps) for every TSC between the least and the
    greatest."""
    if not len(tsc):
        return True
    lo, hi = int(tsc.min()) - origin, int(tsc.max()) - origin
    bound = 1 << 62
    return -bound < lo and hi < bound and max(-lo, hi) * 10**6 // khz < bound


def _rows(mask: np.ndarray, cols: list[np.ndarray], *more: np.ndarray):
    """(cols, *more) of the rows in `mask`."""
    return ([c[mask] for c in cols], *(m[mask] for m in more))


_TS = exit_pairs.OUT.index("ts")


def _earliest(parts: list[tuple[np.ndarray, ...]], first: int) -> tuple[np.ndarray, ...]:
    """The `first` exits by start (exit_pairs.OUT's ts) of `parts`, in that order (ties in
    the order they closed). Empties `parts`: each array is dropped once it is cut down or
    joined, so the set is not held twice over."""
    columns = [list(c) for c in zip(*parts, strict=True)]  # each array's parts
    parts.clear()
    ts = np.concatenate(columns[_TS])
    if len(ts) > first:  # those before the first-th start, and the earliest closed at it
        at = np.partition(ts, first - 1)[first - 1]
        keep = ts < at
        keep[np.flatnonzero(ts == at)[: first - int(keep.sum())]] = True
        bounds = np.cumsum([0, *(len(a) for a in columns[_TS])])
        for col in columns:
            col[:] = [
                a[keep[lo:hi]] for a, lo, hi in zip(col, bounds[:-1], bounds[1:], strict=True)
            ]
        del keep
    del ts
    kept = []
    for col in columns:
        kept.append(np.concatenate(col))
        col.clear()
    order = np.argsort(kept[_TS], kind="stable")
    for i, a in enumerate(kept):
        kept[i] = a[order]
    return tuple(kept)


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


_RUNSTATE_TYPES = (np.int64, np.int16, np.int32, np.int32, np.uint32, np.uint32)
FRAME_COLUMNS = ("ts_ns", "cpu", "dom", "vcpu", "code", "nargs", "has_ts",
                 *(f"arg{i}" for i in range(7)), "addr")  # fmt: skip


# fold_kernel.fold_columns' columns, in its order
_KERNEL_COLUMNS = ("ts_ns", "cpu", "dom", "vcpu", "code", "nargs", "has_ts",
                   *(f"arg{i}" for i in range(7)), "addr", "has_addr")  # fmt: skip


@dataclass
class FoldedChunk:
    """A chunk of a file's records folded into the tables (Fold.add_records), its rows
    still in file order: what Fold.take puts in time order."""

    xrows: np.ndarray
    krows: np.ndarray
    count: np.ndarray
    xi: np.ndarray
    tsc: np.ndarray
    order: np.ndarray | None  # None: the records of an unordered chunk (Records.due)
    space: np.ndarray  # what the arrays above are views of, reused once taken
    origin: int = 0
    due: int | None = None


class Fold:
    """A fold in progress (fold_kernel, running fold_program): fed a frame of xentrace rows
    (`add_frame`) or a xentrace file's records (`add_records`, then `take`) at a time, in
    time order. `times`, `first`, `keep`: as Exits."""

    def __init__(self, times: bool = False, first: int | None = None, keep=None):
        self.prog = fold_program.program()
        self.maps = (count_map.new(wide=True), count_map.new(wide=False))  # fold_kernel's
        self.run = count_map.new_run()  # the groups' last key, summed apart (count_map.add_run)
        self.runstates: list[tuple[np.ndarray, ...]] = []
        self.lost: list[np.ndarray] = []
        self.exits = Exits(times, first, keep)
        # the chunks' working arrays, handed back once taken: fresh ones of this size are
        # mapped anew each time, and faulting in their pages cost 0.4 s of a 500 MB trace
        self.spare: queue.SimpleQueue = queue.SimpleQueue()
        # an unordered fold's (Fold._take_due): rows not due yet, and the records before
        self.held = {"runstates": _Held(), "lost": _Held()}
        self.held_exits = _HeldExits()
        self.placed = 0
        self.khz = 1

    def add_frame(self, frame: pl.DataFrame) -> None:
        """`frame`: xentrace rows (FRAME_COLUMNS of the table's schema), in time order."""
        f = frame.select(
            pl.col("dom", "vcpu").fill_null(-1), pl.col("addr").fill_null(0),
            pl.col("addr").is_not_null().alias("has_addr"),
            *(c for c in FRAME_COLUMNS if c not in ("dom", "vcpu", "addr")),
        )  # fmt: skip
        c = [f[name].to_numpy() for name in _KERNEL_COLUMNS]
        xrows, krows, count, _ = out = fold_kernel.out_arrays(len(f))
        self.maps = count_map.fill(
            self.maps, len(f), fold_kernel.MAX_ADDS,
            lambda maps, start: fold_kernel.fold_columns(*c, *self.prog, *maps[0], self.run, *maps[1], *out, start),
        )  # fmt: skip
        self._keep(krows, count, None)
        self.exits.add([a.astype(t) for a, t in zip(xrows[: count[0], :5].T, _TYPES, strict=True)])

    def add_records(self, chunk, khz: int, address_ids) -> FoldedChunk:
        """The records a xentrace decoder handed over (parsers.xentrace.Records: its Index
        and their time order) into the tables, read in file order; their rows for `take`
        (which another thread may run)."""
        words, index, order, origin, due = chunk
        self.khz = khz
        n = len(index.word)
        rows = fold_kernel.XROWS + fold_kernel.KROWS  # and xi and ready, a row each
        space = np.empty(0, np.int64) if self.spare.empty() else self.spare.get()
        if len(space) < (rows + 2) * n:
            space = np.empty((rows + 2) * n, np.int64)
        xrows, krows, count, _ = out = fold_kernel.out_arrays(n, space)
        xi, ready = space[rows * n : (rows + 1) * n], space[(rows + 1) * n :].view(np.bool_)[:n]
        if order is None or len(order) == n:
            ready[:] = True
        else:  # (the rest wait for a later chunk)
            ready[:] = False
            ready[order] = True
        if order is None:  # (take_due finds the exit rows' records in the rows)
            xi = xi[:0]
        self.maps = count_map.fill(
            self.maps, n, fold_kernel.MAX_ADDS,
            lambda maps, start: fold_kernel.fold_records(
                words, ready, *index, np.uint64(origin), khz, *address_ids, *self.prog, *maps[0],
                self.run, *maps[1], *out, xi, start),
        )  # fmt: skip
        return FoldedChunk(xrows, krows, count, xi, index.tsc, order, space, origin, due)

    def take(self, chunk: FoldedChunk) -> None:
        """A chunk of add_records: its exit rows paired and its rows kept, in time order."""
        if chunk.order is None:
            self._take_due(chunk)
            return
        self._keep(chunk.krows, chunk.count, chunk.tsc)
        rows = fold_kernel.exits_in_time_order(chunk.order, chunk.xi, chunk.xrows, chunk.count[0])
        self.spare.put(chunk.space)
        self.exits.add(list(rows))

    def _take_due(self, chunk: FoldedChunk | None) -> None:
        """A chunk of Records.order None (read in file order, every record folded): the
        rows of the records now due, this chunk's and those held from before, kept and
        paired in time order; the others held for a later chunk. None: every row held
        falls due (the file's end)."""
        if chunk is None:
            chunk = FoldedChunk(np.zeros((0, fold_kernel.XROWS), np.int64),
                                np.zeros((fold_kernel.KROWS, 0), np.int64), np.zeros(3, np.int64),
                                None, np.zeros(0, np.uint64), None, None, self.held_exits.origin)  # fmt: skip
        base, self.placed = self.placed, self.placed + len(chunk.tsc)
        due, count, krows, tsc = chunk.due, chunk.count, chunk.krows, chunk.tsc
        at = krows[fold_kernel.RUNSTATE_AT, : count[1]]
        rows = [a.astype(t) for a, t in zip(krows[fold_kernel.RUNSTATE_ROWS, : count[1]],
                                            _RUNSTATE_TYPES, strict=True)]  # fmt: skip
        cols, t, place = self.held["runstates"].due(rows, tsc[at], base + at, due)
        if len(t):
            o = np.lexsort((place, t))
            self.runstates.append(tuple(c[o] for c in cols))
        at = krows[fold_kernel.LOST_AT, : count[2]]
        ts = krows[fold_kernel.LOST_TS, : count[2]].copy()
        (ts,), t, place = self.held["lost"].due([ts], tsc[at], base + at, due)
        if len(t):
            self.lost.append(ts[np.lexsort((place, t))])
        held = self.held_exits
        now, start, later, t_lo, t_hi = self.exits.grouped(
            held.rows, chunk.xrows[: count[0]], tsc, base, due
        )
        if chunk.space is not None:
            self.spare.put(chunk.space)
        # rows held from before (placed before the chunk's first) of another origin
        origins = {chunk.origin}
        if len(held.rows[0]) and len(now[6]) and now[6].min() < base:
            origins |= held.origins
        held.hold(later, chunk.origin)
        if len(now[0]) or self.exits.tail is not None:
            monotone = len(origins) == 1 and _monotone(now[5], chunk.origin, self.khz)
            self.exits.add_grouped(now, start, t_lo, t_hi, monotone)

    def _keep(self, krows, count, tsc) -> None:
        """The chunk's runstate changes and lost-record marks, in time order (rows made in
        file order are sorted by their records' TSC, ties in file order, as the decoder's
        time order; without `tsc`, they are in time order)."""

        def timed(at):
            return None if tsc is None else np.lexsort((at, tsc[at]))

        if count[1]:
            r = krows[fold_kernel.RUNSTATE_ROWS, : count[1]]
            o = timed(krows[fold_kernel.RUNSTATE_AT, : count[1]])
            r = r if o is None else r[:, o]
            self.runstates.append(
                tuple(a.astype(t) for a, t in zip(r, _RUNSTATE_TYPES, strict=True))
            )
        if count[2]:
            lost = krows[fold_kernel.LOST_TS, : count[2]]
            o = timed(krows[fold_kernel.LOST_AT, : count[2]])
            self.lost.append(lost.copy() if o is None else lost[o])

    def result(self) -> Folded:
        if any(h.cols is not None for h in self.held.values()) or len(self.held_exits.rows[0]):
            self._take_due(None)  # (an unordered fold's rows still held: all due at the end)
        wide = self.maps[0] if count_map.room(*self.maps[0], 1) else count_map.grown(*self.maps[0])
        count_map.merge_run(*wide, self.run)
        self.maps = (wide, self.maps[1])
        lost = np.concatenate(self.lost) if self.lost else np.zeros(0, np.int64)
        return Folded(fold_program.tables(*self.maps),
                      {"runstates": fold_program.runstate_rows(self.runstates),
                       "lost": pl.DataFrame({"ts_ns": lost}, schema={"ts_ns": pl.Int64})},
                      self.exits.result())  # fmt: skip
