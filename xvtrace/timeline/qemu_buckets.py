"""The device model's requests (timeline.qemu) built a share of the elements at a time.

An element's row comes from its own events (qemu.ELEMENT_EVENTS, keyed by its pointer) and
from its queue's kicks and notifies. So the elements, put into buckets by pointer, are
paired one bucket at a time, each bucket's rows written in (src_file, pop_off) order; the
buckets are then merged in that order a slice at a time, each slice joined with its queues'
events (held: two narrow columns' worth per request) and written. What is held is one
bucket's pairing, the queues' events and a slice, not the whole capture's pairing (2.2 GB
at 5 M requests, built at once).

QEMU reuses a few element pointers (the emulated 5 M request capture pops from 7, one of
them 1.55 M times), so a pointer's hash alone filled one bucket of five with 2.7 M pops;
the pointers popped most are dealt out by count instead (`_bucket_of`). A bucket holds at
least the pointer popped most.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

from xvtrace.bundle.frame_sink import SPILL_OPTIONS, sink_frames
from xvtrace.timeline import qemu

ELEMENTS_PER_BUCKET = 1_000_000  # pops paired at a time
SLICE_ROWS = 1 << 18  # requests merged, joined and written at a time
FILE_SPAN = 1 << 40  # a log's offsets lie below this (1 TiB): merge key = file rank * this + offset


def write_requests(ev: pl.LazyFrame, spill: Path, path: Path) -> None:
    """qemu.requests(ev), written to the parquet file `path` (`spill`: a directory for the
    buckets)."""
    # the events the build reads, once (each bucket then reads this, not the whole table)
    events = spill / "dm_events.parquet"
    ev.filter((pl.col("source") == "qemu") & pl.col("event").is_in(qemu.EVENTS)).sink_parquet(
        events, **SPILL_OPTIONS
    )
    q = qemu.events_of(pl.scan_parquet(events))
    bucket, buckets = _bucket_of(q.filter(pl.col("event") == "qemu.virtqueue_pop"))
    parts = []
    for b in range(buckets):
        other = pl.col("event").is_in(qemu.ELEMENT_EVENTS) & (bucket != b)
        part = spill / f"dm_elements_{b}.parquet"
        qemu.element_requests(q.filter(~other)).sink_parquet(part, **SPILL_OPTIONS)
        parts.append(pl.scan_parquet(part))
    queues = qemu.QueueEvents.of(q).collect()
    schema = qemu.with_queue_events(parts[0].head(0), queues).collect_schema()
    try:
        sink_frames(lambda: _merged(parts, queues), schema, path, **SPILL_OPTIONS)
    finally:  # (the spill directory goes at the build's end; these can go now)
        for b in range(buckets):
            (spill / f"dm_elements_{b}.parquet").unlink(missing_ok=True)
        events.unlink(missing_ok=True)


def _bucket_of(pops: pl.LazyFrame) -> tuple[pl.Expr, int]:
    """Each element event's bucket (by its pointer, `addr`) and how many buckets: about
    ELEMENTS_PER_BUCKET pops each. A pointer popped more than an eighth of that goes whole
    to the bucket with the fewest pops so far, most popped first; the others (many, each
    popped a few times) by their hash, counted first."""
    per_addr = pops.group_by("addr").len().collect()
    total = int(per_addr["len"].sum())
    buckets = max(1, -(-total // ELEMENTS_PER_BUCKET))
    hashed = pl.col("addr").hash(seed=0) % buckets
    heavy = (pl.col("len") > ELEMENTS_PER_BUCKET // 8) & pl.col("addr").is_not_null()
    load = np.zeros(buckets, np.int64)
    light = per_addr.filter(~heavy).group_by(hashed.alias("b")).agg(pl.col("len").sum())
    np.add.at(load, light["b"].to_numpy().astype(np.int64), light["len"].to_numpy())
    dealt = per_addr.filter(heavy).sort(["len", "addr"], descending=[True, False])
    to = []
    for n in dealt["len"].to_list():  # (at most 8 per bucket: few)
        to.append(int(load.argmin()))
        load[to[-1]] += n
    if not to:
        return hashed, buckets
    dealt = pl.col("addr").replace_strict(dealt["addr"], to, default=hashed, return_dtype=pl.UInt64)
    return dealt, buckets


def _merged(parts: list[pl.LazyFrame], queues: qemu.QueueEvents) -> Iterator[pl.DataFrame]:
    """The buckets' rows in (src_file, pop_off) order, SLICE_ROWS at a time, as requests."""
    files = (
        pl.concat([p.select(pl.col("src_file").cast(pl.String).unique()) for p in parts])
        .unique()
        .collect()["src_file"]
        .sort()
        .to_list()
    )  # (in the order of their names: the requests' order)
    rank = (
        pl.col("src_file")
        .cast(pl.String)
        .replace_strict(files, list(range(len(files))), return_dtype=pl.Int64)
    )
    keys = [
        p.select(rank * FILE_SPAN + pl.col("pop_off").cast(pl.Int64))
        .collect()
        .to_series()
        .to_numpy()
        for p in parts
    ]
    # each element's place among all buckets' (bucket b's rows from starts[b]): its bucket
    # and row there follow from it (no array of either held)
    starts = np.cumsum([0, *(len(k) for k in keys)])
    order = np.argsort(np.concatenate(keys), kind="stable")
    del keys
    order = order.astype(np.int32) if len(order) < 1 << 31 else order
    for lo in range(0, len(order), SLICE_ROWS):
        at = order[lo : lo + SLICE_ROWS]
        whose = np.searchsorted(starts, at, side="right") - 1
        rows = at - starts[whose]
        pieces, place, start = [], np.empty(len(at), np.int64), 0
        for b in np.unique(whose):
            mine = whose == b
            # (a bucket's rows in the slice: one run, as each bucket is in this order)
            first, last = int(rows[mine].min()), int(rows[mine].max())
            pieces.append(parts[b].slice(first, last - first + 1).collect())
            place[mine] = start + rows[mine] - first
            start += last - first + 1
        elements = pl.concat(pieces)[place]
        yield qemu.with_queue_events(elements.lazy(), queues, first=lo).collect()
