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
    `req` (READS) is read only when there are grant records (a foreign-mapping transport
    has none), REQUEST_ROWS requests at a time: their stretches are made in order a slice
    at a time and wait in files (`_sorted_stretches`; the requests' columns held whole and
    their stretches sorted at once took 0.95 GB at 5 M requests). The records wait in a
    file of their own and are read JOIN_RECORDS at a time, twice: to settle the offset,
    then to find each one's stretch by a search of the starts of the stretches near it
    (the join of frames and its pivot of every record, held whole, took 4.0 GB at 5 M)."""
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
        sample.append(t.to_numpy()[(-seen) % k :: k])
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
    near = _Near(pieces)
    for _, part in slices(records, JOIN_RECORDS):
        part = part.collect()
        t, column = part["t"].to_numpy() + shift, part["column"].to_numpy()
        recorded += np.bincount(column, minlength=len(names))
        timed = ~np.isnan(t) if t.dtype.kind == "f" else np.ones(len(t), bool)
        if not timed.any():
            continue
        start, end, row = near.around(t[timed].min(), t[timed].max())
        # each record's stretch: the last to start at or before it (a backward as-of join's
        # rule), if the record is not past its end
        at = np.searchsorted(start, t, "right") - 1
        hit = (at >= 0) & timed
        hit[hit] = t[hit] <= end[at[hit]]
        for i in range(len(names)):
            rows = row[at[hit & (column == i)]]
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


class _Near:
    """The stretches near a time, from their files in order: from the last to start at or
    before `lo` to the first to start after `hi` (or the last there is)."""

    def __init__(self, pieces: list[Path]):
        self.files = iter(pieces)
        self.held = [np.zeros(0, np.int64)] * 3

    def around(self, lo, hi) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        while True:
            keep = max(np.searchsorted(self.held[0], lo, "right") - 1, 0)
            self.held = [a[keep:] for a in self.held]
            if len(self.held[0]) and self.held[0][-1] > hi:
                break
            piece = next(self.files, None)
            if piece is None:
                break
            self.held = [
                np.concatenate(pair) for pair in zip(self.held, np.load(piece), strict=True)
            ]
        return tuple(self.held)


def _sorted_stretches(req: pl.LazyFrame, tmp: Path, sample: np.ndarray, lo: int, hi: int):
    """The requests' stretches as `_stretches` gives them, written to files in order
    (start, end, row); and those a record of `sample` can reach within [lo, hi], as
    (start, end): all settled_shift reads of them."""
    reach = sample[~np.isnan(sample)] if sample.dtype.kind == "f" else sample
    pieces, near = [], []
    for k, (start, end, row) in enumerate(_cut(_in_order(req))):
        # (settled_shift ends one where the next starts a ns early: the same answer unless
        # that next one is also kept, and then it does so itself)
        reached = np.searchsorted(reach, end - lo, "right") > np.searchsorted(
            reach, start - hi, "left"
        )
        near.append((start[reached], end[reached]))
        pieces.append(tmp / f"stretches-{k}.npy")
        np.save(pieces[-1], np.stack([start, end, row.astype(np.int64)]))
    near = (
        [np.concatenate(a) for a in zip(*near, strict=True)]
        if near
        else [np.zeros(0, np.int64)] * 2
    )
    return pieces, near


def _in_order(req: pl.LazyFrame) -> Iterator[list[np.ndarray]]:
    """The stretches of `req` sorted by start, end and row as (start, end, row), made
    REQUEST_ROWS requests at a time: each slice's wait until no later slice's can sort
    before them (a first pass finds each slice's earliest start)."""
    earliest = [_made(part.collect(), 0)["start"].min() for _, part in slices(req, REQUEST_ROWS)]
    later = [None] * len(earliest)  # the earliest start of every slice after each
    for k in range(len(earliest) - 2, -1, -1):
        later[k] = min((x for x in (later[k + 1], earliest[k + 1]) if x is not None), default=None)
    held = None
    for k, (first, part) in enumerate(slices(req, REQUEST_ROWS)):
        made = _made(part.collect(), first)
        held = made if held is None else pl.concat([held, made])
        go = pl.lit(True) if later[k] is None else pl.col("start") < later[k]
        ready, held = held.filter(go), held.filter(~go)
        yield [ready.sort("start", "end", "row")[c].to_numpy() for c in ("start", "end", "row")]


def _cut(ordered: Iterator[list[np.ndarray]]) -> Iterator[list[np.ndarray]]:
    """The stretches `ordered` gives, each cut where the next one starts, in pieces."""
    last = None
    for arrays in ordered:
        if last is not None:
            arrays = [np.concatenate(pair) for pair in zip(last, arrays, strict=True)]
        last = arrays
        if len(arrays[0]) < 2:
            continue
        start, end, row = arrays
        yield [start[:-1], np.minimum(end[:-1], start[1:]), row[:-1]]
        last = [a[-1:] for a in arrays]  # (waits for the start of the one after it)
    if last is not None and len(last[0]):
        yield last


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
    request's row in `req`), all at once (per_request makes them a slice at a time).
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
