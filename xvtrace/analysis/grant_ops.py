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

import numpy as np
import polars as pl

from xvtrace.timeline.clock import Clock, to_device_model

COLUMNS = {"mem.grant_map": "grant_maps", "mem.grant_unmap": "grant_unmaps"}


READS = ("request", "pop_ns", "handle_ns", "io_done_ns", "fill_ns")  # the requests' columns used
SETTLING_RECORDS = 1 << 17  # at most this many records, spread evenly, settle the offset
SETTLING_PAIRS = 1 << 22  # and at most this many (record, stretch it may fall in) pairs


def per_request(
    ev: pl.LazyFrame, req: pl.DataFrame | pl.LazyFrame, clock: Clock | None
) -> tuple[pl.DataFrame, dict[str, int]] | None:
    """(request, grant_maps, grant_unmaps per request; per column the records in no
    request's stretch), or None without a device-model clock, requests or grant records.
    `req` (READS) is read only when there are grant records (its columns are 0.2 GB at 5 M
    requests, and a foreign-mapping transport has none). Each record's stretch is found by a
    search of the stretches' starts, not a join of frames: the join and its pivot of every
    record, with the record's column by name, held 0.9 GB at 1 M requests."""
    if clock is None:
        return None
    names = list(COLUMNS)
    grants = (
        ev.filter(pl.col("event").is_in(names))
        .select(
            pl.col("event").cast(pl.String).replace_strict(names, range(len(names)),
                                                           return_dtype=pl.UInt8).alias("column"),
            to_device_model(pl.col("ts_ns"), clock).alias("t"),
        )
        .collect(engine="streaming")  # (filtered as read: 45 M events' columns were 0.4 GB)
    )  # fmt: skip
    if not len(grants):
        return None
    if grants["t"].null_count() or not grants["t"].is_sorted():  # (the events are in order)
        grants = grants.sort("t")
    req = req.lazy().collect()
    if not len(req):
        return None
    start, end, owner = _stretches(req)
    requests = req["request"]
    del req
    t = grants["t"].to_numpy()
    shift = settled_shift(t, start, end, clock.lower_ns - clock.offset_ns,
                          clock.upper_ns - clock.offset_ns)  # fmt: skip
    # each record's stretch: the last to start at or before it (the join's backward rule),
    # if the record is not past its end
    t = t + shift
    at = np.searchsorted(start, t, "right") - 1
    hit = at >= 0
    hit[hit] = t[hit] <= end[at[hit]]
    column = grants["column"].to_numpy()
    recorded = np.bincount(column, minlength=len(names))
    del grants, t
    hits = pl.DataFrame({"request": pl.Series(owner[at[hit]]).cast(requests.dtype),
                         "column": column[hit]})  # fmt: skip
    counts = hits.group_by("request").agg(
        (pl.col("column") == i).sum().cast(pl.UInt32).alias(COLUMNS[name])
        for i, name in enumerate(names)
    )
    out = requests.to_frame().join(counts, on="request", how="left")
    out = out.with_columns(pl.col(c).fill_null(0) for c in COLUMNS.values())
    return out, {c: int(recorded[i]) - int(out[c].sum()) for i, c in enumerate(COLUMNS.values())}


def _stretches(req: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The requests' backend stretches sorted by start then end, as (start, end, request).
    One thread's stretches follow each other; one that reaches past the next one's start (a
    request without a stamp between its pop and its fill) is cut there, so a record is
    never given to a request that only may have made it."""
    submitted = pl.coalesce("handle_ns", "pop_ns")
    stretches = (
        pl.concat([
            req.select("request", pl.col("pop_ns").alias("start"), submitted.alias("end")),
            req.select("request", pl.coalesce("io_done_ns", submitted).alias("start"),
                       pl.col("fill_ns").alias("end")),
        ])
        .drop_nulls()
        .filter(pl.col("end") > pl.col("start"))
        .sort("start", "end")
        .with_columns(pl.min_horizontal("end", pl.col("start").shift(-1)).alias("end"))
    )  # fmt: skip
    return tuple(stretches[c].to_numpy() for c in ("start", "end", "request"))


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
