"""dom0's grant-table operations joined to the requests they serve.

Xen records each grant page that dom0 maps or unmaps (TRC_MEM_PAGE_GRANT_MAP / _UNMAP). A
backend serving one queue from one thread works on one request at a time in two stretches:
from its pop to its submission to the device (the header and buffers mapped, in the kick's
IOREQ), and from its I/O completion to its fill (the status byte mapped, everything
unmapped). Stretches of different requests do not overlap even when their requests do, so
each record, once the hypervisor's times are on the device model's clock (the timeline's
fit), falls in at most one. Records in none are the rings' (mapped once per driver reset),
a persistent backend's first uses outside the capture's requests, or another backend's.

The timeline's clock fit leaves the offset anywhere within its bounds (the IOREQ pairs'
window, half a millisecond wide on a TCG test host), and the middle of that window can sit
a few hundred microseconds from the truth: enough to put a stretch's first maps before its
pop. The grant records are causal pairs of their own (each made by the backend inside one of
its stretches), so the offset is settled within those bounds on them: the middle of the
widest run of offsets that puts the most records in a stretch.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

from xvtrace.bundle import sorted_runs
from xvtrace.timeline.clock import Clock, to_device_model
from xvtrace.timeline.order_stats import slices

COLUMNS = {"mem.grant_map": "grant_maps", "mem.grant_unmap": "grant_unmaps"}


READS = ("request", "pop_ns", "handle_ns", "io_done_ns", "fill_ns")  # the requests' columns used
SETTLING_RECORDS = 1 << 17  # at most this many records, spread evenly, settle the offset
SETTLING_PAIRS = 1 << 22  # and at most this many (record, stretch it may fall in) pairs
JOIN_RECORDS = 1 << 18  # records whose stretches are searched at a time
REQUEST_ROWS = 1 << 18  # requests whose stretches are made at a time


def per_request(
    ev: pl.LazyFrame, req: pl.DataFrame | pl.LazyFrame, clock: Clock | None
) -> tuple[pl.DataFrame, dict[str, int]] | None:
    """(request, grant_maps, grant_unmaps per request; per column the records in no
    request's stretch), or None without a device-model clock, requests or grant records.
    `req` (READS; a frame read the same each time, as a parquet scan is) is read only when
    there are grant records (a foreign-mapping transport has none), REQUEST_ROWS requests
    at a time: each slice's stretches sorted into a run on disk, the runs merged into
    pieces on disk (`_sorted_stretches`; the requests' columns held whole and their
    stretches sorted at once took 0.95 GB at 5 M requests). The records wait in a file of
    their own and are read JOIN_RECORDS at a time, twice: to settle the offset, then to
    find each one's stretch by a search of the starts in the piece that holds it (the join
    of frames and its pivot of every record, held whole, took 4.0 GB at 5 M)."""
    if clock is None:
        return None
    with tempfile.TemporaryDirectory(prefix="xvtrace-grants-") as tmp:
        path = Path(tmp) / "grants.parquet"
        _records(ev, clock).sink_parquet(path)
        records = pl.scan_parquet(path)
        total = records.select(pl.len()).collect().item()
        if not total:
            return None
        req = req.lazy()
        n = req.select(pl.len()).collect().item()
        if not n:
            return None
        # the offset, settled on every k-th record in time order (sorted once, held whole,
        # if they are not: the fallback)
        sample = _spread(records, total)
        if sample is None:
            pl.read_parquet(path).sort("t", nulls_last=True).write_parquet(path)
            records = pl.scan_parquet(path)
            sample = _spread(records, total)
        lo, hi = clock.lower_ns - clock.offset_ns, clock.upper_ns - clock.offset_ns
        pieces, near = _sorted_stretches(req, Path(tmp), sample, lo, hi)
        shift = settled_shift(sample, *near, lo, hi)
        del sample, near
        return _joined(records, req, n, pieces, shift)


def _spread(records: pl.LazyFrame, total: int) -> np.ndarray | None:
    """Every k-th of the records' times, k as settled_shift spreads them (so it takes them
    all), in time order with the records of no time first (as a NaN: in no stretch), as a
    sort puts them; None if the timed ones are not in time order."""
    k, last = max(1, total // SETTLING_RECORDS), None
    seen = records.select(pl.col("t").null_count()).collect(engine="streaming").item()
    sample = [np.full(-(-seen // k), np.nan)] if seen else []
    for _, part in slices(records, JOIN_RECORDS):
        t = part.select("t").collect().to_series().drop_nulls()
        if not len(t):
            continue
        if not t.is_sorted() or (last is not None and t[0] < last):
            return None
        sample.append(t.to_numpy()[(-seen) % k :: k].copy())  # (a view kept the whole slice)
        last, seen = t[-1], seen + len(t)
    return np.concatenate(sample) if sample else np.zeros(0, np.int64)


def _records(ev: pl.LazyFrame, clock: Clock) -> pl.LazyFrame:
    """The grant records: each one's column (its number in COLUMNS) and time (`t`, on the
    device model's clock), in the events' order."""
    names = list(COLUMNS)
    return ev.filter(pl.col("event").is_in(names)).select(
        # (a column's number by comparisons: the event's name as a string for every record
        # held 2.6 GB at 5 M requests)
        pl.coalesce(pl.when(pl.col("event") == name).then(pl.lit(i, pl.UInt8))
                    for i, name in enumerate(names)).alias("column"),
        to_device_model(pl.col("ts_ns"), clock).alias("t"),
    )  # fmt: skip


def _joined(records, req, n: int, pieces: list[Path], shift: int) -> tuple[pl.DataFrame, dict]:
    """Each record (`records`, in time order) counted for the request whose stretch (in
    the files `pieces`, in order) holds it once `shift` is added: per_request's answer."""
    names = list(COLUMNS)
    inside = np.zeros((len(names), n), np.uint32)
    recorded = np.zeros(len(names), np.int64)
    stretches = _Pieces(pieces)
    for _, part in slices(records, JOIN_RECORDS):
        part = part.collect()
        recorded += np.bincount(part["column"].to_numpy(), minlength=len(names))
        part = part.filter(pl.col("t").is_not_null())  # (in no stretch)
        t, column = part["t"].to_numpy() + shift, part["column"].to_numpy()
        # each record's stretch: the last to start at or before it (a backward as-of join's
        # rule), if the record is not past its end; searched in the piece that holds it
        hit, row = np.zeros(len(t), bool), np.zeros(len(t), np.int64)
        which = np.searchsorted(stretches.firsts, t, "right") - 1
        for k, lo, hi in _runs_of(which):
            if k < 0:
                continue
            start, end, owner = stretches[k]
            at = np.searchsorted(start, t[lo:hi], "right") - 1
            hit[lo:hi] = t[lo:hi] <= end[at]
            row[lo:hi] = owner[at]
        for i in range(len(names)):
            rows = row[hit & (column == i)]
            if len(rows):
                first = rows.min()
                counts = np.bincount(rows - first)
                inside[i, first : first + len(counts)] += counts.astype(np.uint32)
    requests = req.select("request").collect().to_series()
    out = pl.DataFrame(
        [requests, *(pl.Series(COLUMNS[name], inside[i]) for i, name in enumerate(names))]
    )  # fmt: skip
    outside = {
        COLUMNS[name]: int(recorded[i] - inside[i].sum(dtype=np.int64))
        for i, name in enumerate(names)
    }
    return out, outside


def _runs_of(values: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """(value, first, end) of each run of equal values in `values` (sorted)."""
    if not len(values):
        return
    cuts = np.flatnonzero(np.diff(values)) + 1
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(values)], strict=True):
        yield int(values[lo]), int(lo), int(hi)


class _Pieces:
    """The stretches' files in order, read one at a time: `firsts` their first starts,
    [k] the k-th's (start, end, row)."""

    def __init__(self, pieces: list[tuple[Path, int]]):
        self.files = [path for path, _ in pieces]
        self.firsts = np.array([first for _, first in pieces], np.int64)
        self.held = (None, None)

    def __getitem__(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.held[0] != k:
            self.held = (k, tuple(np.fromfile(self.files[k], np.int64).reshape(3, -1)))
        return self.held[1]


# a settling end compared as a float (a record of no time makes the sample's times floats,
# in 256 ns steps at 2^60 ns): stretches this much nearer or farther are kept too
REACH_MARGIN_NS = 1 << 12


def _sorted_stretches(req: pl.LazyFrame, tmp: Path, sample: np.ndarray, lo: int, hi: int):
    """The requests' stretches as `_stretches` gives them, written to files in order (each
    one's path and first start); and those a record of `sample` may reach within [lo, hi]
    as (start, end as settled_shift cuts it): all settled_shift reads of them (the ends
    already cut, so it leaves them as they are)."""
    reach = sample[~np.isnan(sample)] if sample.dtype.kind == "f" else sample
    pieces, near = [], []
    for k, (start, end, row, after) in enumerate(_cut(_merged(_sorted_runs(req, tmp)))):
        settling = np.minimum(end, after - 1)  # (a time where two touch: the next one's)
        reached = np.searchsorted(reach, settling - lo + REACH_MARGIN_NS, "right") > (
            np.searchsorted(reach, start - hi - REACH_MARGIN_NS, "left")
        )
        near.append((start[reached], settling[reached]))
        pieces.append((tmp / f"stretches-{k}.bin", int(start[0])))
        np.stack([start, end, row]).tofile(pieces[-1][0])
    near = (
        [np.concatenate(a) for a in zip(*near, strict=True)]
        if near
        else [np.zeros(0, np.int64)] * 2
    )
    return pieces, near


MERGE_ROWS = 1 << 15  # a run's stretches read at a time in the merge
STRETCH = ["start", "end", "row"]  # a run's columns
_SIGNS = np.array([1 << 63, 1 << 63, 0], np.uint64)  # (the times' sign bits, flipped)


def _sorted_runs(req: pl.LazyFrame, tmp: Path) -> list[tuple[Path, int]]:
    """Each REQUEST_ROWS requests' stretches sorted by start, end and row, in a file of
    their own as rows of three int64 (a sorted run): (its path, its rows)."""
    runs = []
    for k, (first, part) in enumerate(slices(req, REQUEST_ROWS)):
        made = _made(part.collect(), first).sort(STRETCH)
        if len(made):
            runs.append((tmp / f"run-{k}.bin", len(made)))
            made.select(pl.col(STRETCH).cast(pl.Int64)).to_numpy(order="c").tofile(runs[-1][0])
    return runs


def _merged(runs: list[tuple[Path, int]]) -> Iterator[list[np.ndarray]]:
    """The sorted runs' stretches merged in (start, end, row) order, as (start, end, row),
    a chunk of each run held at a time (bundle.sorted_runs' merge)."""
    for frame in sorted_runs.merge_sources([_chunks(*run) for run in runs]):
        yield [frame[c].to_numpy() for c in STRETCH]


def _chunks(path: Path, rows: int) -> Iterator[sorted_runs.Chunk]:
    """A run's stretches MERGE_ROWS at a time, each with its key as row_order compares
    them: unsigned words in the same order as (start, end, row)."""
    for at in range(0, rows, MERGE_ROWS):
        n = min(MERGE_ROWS, rows - at)
        values = np.fromfile(path, np.int64, count=3 * n, offset=24 * at).reshape(n, 3)
        yield pl.DataFrame(values, schema=STRETCH, orient="row"), values.view(np.uint64) ^ _SIGNS


def _cut(ordered: Iterator[list[np.ndarray]]) -> Iterator[list[np.ndarray]]:
    """The stretches `ordered` gives, each cut where the next one starts, in pieces:
    (start, end, row, the next one's start; the very last's own end, for none follows)."""
    last = None
    for arrays in ordered:
        if last is not None:
            arrays = [np.concatenate(pair) for pair in zip(last, arrays, strict=True)]
        last = arrays
        if len(arrays[0]) < 2:
            continue
        start, end, row = arrays
        yield [start[:-1], np.minimum(end[:-1], start[1:]), row[:-1], start[1:]]
        last = [a[-1:] for a in arrays]  # (waits for the start of the one after it)
    if last is not None and len(last[0]):
        yield [*last, last[1] + 1]


def _made(req: pl.DataFrame, first: int) -> pl.DataFrame:
    """The stretches of the requests `req` (rows from `first`) as (row, start, end), in no
    order, uncut: from pop to submission, and from I/O completion to fill."""
    submitted = pl.coalesce("handle_ns", "pop_ns")
    row = (pl.int_range(pl.len(), dtype=pl.UInt32) + first).alias("row")
    return (
        pl.concat([
            req.select(row, pl.col("pop_ns").alias("start"), submitted.alias("end")),
            req.select(row, pl.coalesce("io_done_ns", submitted).alias("start"),
                       pl.col("fill_ns").alias("end")),
        ])
        .drop_nulls()
        .filter(pl.col("end") > pl.col("start"))
    )  # fmt: skip


def _stretches(req: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The requests' backend stretches sorted by start, end and row, as (start, end, the
    request's row in `req`), all at once: the reference the tests hold per_request's
    stretches, made a slice at a time, to.
    One thread's stretches follow each other; one that reaches past the next one's start (a
    request without a stamp between its pop and its fill) is cut there, so a record is
    never given to a request that only may have made it."""
    stretches = (
        _made(req, 0)
        .sort("start", "end", "row")
        .with_columns(pl.min_horizontal("end", pl.col("start").shift(-1)).alias("end"))
    )
    return tuple(stretches[c].to_numpy() for c in ("start", "end", "row"))


def settled_shift(t: np.ndarray, start: np.ndarray, end: np.ndarray, lo: int, hi: int) -> int:
    """The shift in [lo, hi] to add to the times `t` (sorted) that puts the most of them in
    a stretch [start, end] (sorted by start, each ending at or before the next one's start):
    the middle of the widest run of such shifts; 0 when the bounds leave no room or no
    record can reach a stretch."""
    if hi <= lo or not len(t) or not len(start):
        return 0
    # a time where one stretch ends and the next starts is the next one's, as the join
    # gives it (counted in both, two records at one time outweighed every other shift)
    end = np.minimum(end, np.append(start[1:] - 1, end[-1]))
    t = t[:: max(1, len(t) // SETTLING_RECORDS)]
    while True:
        # each record's reachable stretches: those ending at or after t + lo and starting
        # at or before t + hi (the ends rise with the starts)
        first = np.searchsorted(end, t + lo, "left")
        n = np.maximum(np.searchsorted(start, t + hi, "right") - first, 0)
        if n.sum() <= SETTLING_PAIRS or len(t) == 1:  # (wide bounds among short stretches:
            break  # fewer records, not more pairs than SETTLING_PAIRS)
        t = t[:: -(-int(n.sum()) // SETTLING_PAIRS)]
    if not n.sum():
        return 0
    rec = np.repeat(np.arange(len(t)), n)
    j = np.repeat(first, n) + np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    # the shifts [a, b] that put record `rec` in stretch `j`, as +1 at a and -1 after b
    a = np.clip(start[j] - t[rec], lo, hi + 1)
    b = np.clip(end[j] - t[rec] + 1, lo, hi + 1)
    at, where = np.unique(np.concatenate([[lo, hi + 1], a, b]), return_inverse=True)
    ins, outs = where[2 : 2 + len(a)], where[2 + len(a) :]
    delta = np.bincount(ins, minlength=len(at)) - np.bincount(outs, minlength=len(at))
    held = np.cumsum(delta)[:-1]  # records in a stretch for shifts in [at[k], at[k + 1])
    # runs of the most held (a change that nets to nothing splits none)
    best = np.flatnonzero(held == held.max())
    cuts = np.flatnonzero(np.diff(best) > 1)
    begins, ends = best[np.r_[0, cuts + 1]], best[np.r_[cuts, -1]]
    widest = np.argmax(at[ends + 1] - at[begins])
    left, right = at[begins[widest]], at[ends[widest] + 1]
    return int((left + right - 1) // 2)
