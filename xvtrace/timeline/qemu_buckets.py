"""The device model's requests (timeline.qemu) built a share of the elements at a time.

An element's row comes from its own events (qemu.ELEMENT_EVENTS, keyed by its pointer) and
from its queue's kicks and notifies. So the elements, hashed into buckets by pointer, are
paired one bucket at a time, each bucket's rows written in (src_file, pop_off) order; the
buckets are then merged in that order a slice at a time, each slice joined with its queues'
events (held: two narrow columns' worth per request) and written. What is held is one
bucket's pairing, the queues' events and a slice, not the whole capture's pairing (2.2 GB
at 5 M requests, built at once).
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
    pops = q.filter(pl.col("event") == "qemu.virtqueue_pop").select(pl.len()).collect().item()
    buckets = max(1, -(-pops // ELEMENTS_PER_BUCKET))
    parts = []
    for b in range(buckets):
        other = pl.col("event").is_in(qemu.ELEMENT_EVENTS) & (
            pl.col("addr").hash(seed=0) % buckets != b
        )
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
    owner = np.concatenate([np.full(len(k), b, np.int32) for b, k in enumerate(keys)])
    row = np.concatenate([np.arange(len(k)) for k in keys])
    order = np.argsort(np.concatenate(keys), kind="stable")
    del keys
    for lo in range(0, len(order), SLICE_ROWS):
        at = order[lo : lo + SLICE_ROWS]
        whose, rows = owner[at], row[at]
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
