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
from pathlib import Path

import numpy as np
import polars as pl

from xvtrace.timeline.clock import Clock, to_device_model
from xvtrace.timeline.order_stats import slices

COLUMNS = {"mem.grant_map": "grant_maps", "mem.grant_unmap": "grant_unmaps"}


READS = ("request", "pop_ns", "handle_ns", "io_done_ns", "fill_ns")  # the requests' columns used
SETTLING_RECORDS = 1 << 17  # at most this many records, spread evenly, settle the offset
SETTLING_PAIRS = 1 << 22  # and at most this many (record, stretch it may fall in) pairs
JOIN_RECORDS = 1 << 20  # records whose stretches are searched at a time


def per_request(
    ev: pl.LazyFrame, req: pl.DataFrame | pl.LazyFrame, clock: Clock | None
) -> tuple[pl.DataFrame, dict[str, int]] | None:
    """(request, grant_maps, grant_unmaps per request; per column the records in no
    request's stretch), or None without a device-model clock, requests or grant records.
    `req` (READS) is read only when there are grant records (its columns are 0.2 GB at 5 M
    requests, and a foreign-mapping transport has none). The records wait in a file of
    their own and are read JOIN_RECORDS at a time, twice: to settle the offset, then to
    find each one's stretch by a search of the stretches' starts (the join of frames and
    its pivot of every record, held whole, took 4.0 GB at 5 M requests)."""
    if clock is None:
        return None
    with tempfile.TemporaryDirectory(prefix="xvtrace-grants-") as tmp:
        path = Path(tmp) / "grants.parquet"
        _records(ev, clock).sink_parquet(path)
        records = pl.scan_parquet(path)
        total = records.select(pl.len()).collect().item()
        if not total:
            return None
        req = req.lazy().collect()
        if not len(req):
            return None
        start, end, row = _stretches(req)
        requests = req["request"]
        del req
        # the offset, settled on every k-th record in time order (sorted once, held whole,
        # if they are not: the fallback)
        sample = _spread(records, total)
        if sample is None:
            pl.read_parquet(path).sort("t", nulls_last=True).write_parquet(path)
            records = pl.scan_parquet(path)
            sample = _spread(records, total)
        shift = settled_shift(sample, start, end, clock.lower_ns - clock.offset_ns,
                              clock.upper_ns - clock.offset_ns)  # fmt: skip
        del sample
        return _joined(records, requests, start, end, row, shift)


def _spread(records: pl.LazyFrame, total: int) -> np.ndarray | None:
    """Every k-th of the records' times, k as settled_shift spreads them (so it takes them
    all), in time order with the records of no time first (as a NaN: in no stretch), as a
    sort puts them; None if the timed ones are not in time order."""
    k, last = max(1, total // SETTLING_RECORDS), None
    seen = records.select(pl.col("t").null_count()).collect().item()
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


def _joined(records, requests, start, end, row, shift: int) -> tuple[pl.DataFrame, dict]:
    """Each record (`records`, sorted by time) counted for the request whose stretch holds
    it once `shift` is added: per_request's answer."""
    names = list(COLUMNS)
    inside = np.zeros((len(names), len(requests)), np.int64)
    recorded = np.zeros(len(names), np.int64)
    for _, part in slices(records, JOIN_RECORDS):
        part = part.collect()
        t, column = part["t"].to_numpy() + shift, part["column"].to_numpy()
        # each record's stretch: the last to start at or before it (a backward as-of join's
        # rule), if the record is not past its end
        at = np.searchsorted(start, t, "right") - 1
        hit = at >= 0
        hit[hit] = t[hit] <= end[at[hit]]
        recorded += np.bincount(column, minlength=len(names))
        for i in range(len(names)):
            inside[i] += np.bincount(row[at[hit & (column == i)]], minlength=len(requests))
    out = pl.DataFrame(
        [requests, *(pl.Series(COLUMNS[name], inside[i], pl.UInt32) for i, name in enumerate(names))]
    )  # fmt: skip
    outside = {COLUMNS[name]: int(recorded[i] - inside[i].sum()) for i, name in enumerate(names)}
    return out, outside


def _stretches(req: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The requests' backend stretches sorted by start then end, as (start, end, the
    request's row in `req`).
    One thread's stretches follow each other; one that reaches past the next one's start (a
    request without a stamp between its pop and its fill) is cut there, so a record is
    never given to a request that only may have made it."""
    submitted = pl.coalesce("handle_ns", "pop_ns")
    stretches = (
        pl.concat([
            req.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("row"),
                       pl.col("pop_ns").alias("start"), submitted.alias("end")),
            req.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("row"),
                       pl.coalesce("io_done_ns", submitted).alias("start"),
                       pl.col("fill_ns").alias("end")),
        ])
        .drop_nulls()
        .filter(pl.col("end") > pl.col("start"))
        .sort("start", "end")
        .with_columns(pl.min_horizontal("end", pl.col("start").shift(-1)).alias("end"))
    )  # fmt: skip
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
