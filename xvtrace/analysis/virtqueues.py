"""The summary's virtqueues section: per device and virtqueue, from QEMU's trace events,
the elements popped and filled, their pop -> fill times (the device's service time),
the bytes written back, the guest's kicks and the interrupts raised.

Elements are matched as QEMU reports them: the element pointer is reused, so the k-th pop
of a (device, queue, element) pairs with its k-th fill, in file order, one log after
another; completion order is free. The pairing streams: each log's pops and fills a batch
at a time, the side of each element not matched yet carried to the next batch (a ring's
worth), so memory holds a batch, the elements in flight and one time per request (before,
a sort of every QEMU row: 2.27 GiB at a million requests).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from xvtrace.bundle import file_order
from xvtrace.parsers.schema import EVENT_NAMES

KEY = ["dev", "queue", "addr"]  # an element
POP, FILL = "qemu.virtqueue_pop", "qemu.virtqueue_fill"
KICK, IRQS = "qemu.virtio_queue_notify", ["qemu.virtio_notify", "qemu.virtio_notify_irqfd"]
BLK = [e for e in EVENT_NAMES if e.startswith("qemu.virtio_blk_")]
# the section's columns, in order, with the types its stored answers have
COLUMNS = {"dev": pl.String, "kind": pl.String, "queue": pl.UInt16, "pops": pl.UInt32,
           "fills": pl.UInt32, "in_flight": pl.UInt32, "bytes_filled": pl.UInt32,
           "p50_us": pl.Float64, "p95_us": pl.Float64, "max_us": pl.Float64,
           "kicks": pl.UInt32, "irqs": pl.UInt32}  # fmt: skip


@dataclass
class Pairs:
    """The pairing so far: how many pops and fills each element has had, its pops and fills
    not matched yet, per queue the counts and bytes, and each matched request's time."""

    seen: pl.DataFrame | None = None  # KEY, event, n
    pops: pl.DataFrame | None = None  # KEY, k, pop_ns
    fills: pl.DataFrame | None = None  # KEY, k, fill_ns
    counted: list[pl.DataFrame] = field(default_factory=list)  # dev, queue, pops, fills, bytes
    times: dict[tuple, list[np.ndarray]] = field(default_factory=dict)  # (dev, queue): us

    def add(self, batch: pl.DataFrame) -> None:
        """`batch`: the next pops and fills of a log in file order (KEY, event, ts_ns, size)."""
        k = pl.int_range(pl.len()).over(*KEY, "event")
        if self.seen is not None:  # each element's k goes on from the batches before
            batch = batch.join(
                self.seen, on=[*KEY, "event"], how="left", nulls_equal=True, maintain_order="left"
            )  # (k follows the file order)
            k = k + pl.col("n").fill_null(0)
        batch = batch.with_columns(k.cast(pl.Int64).alias("k"))
        here = batch.group_by(*KEY, "event").agg(pl.len().cast(pl.Int64).alias("n"))
        self.seen = here if self.seen is None else _summed(pl.concat([self.seen, here]))
        self.counted.append(batch.group_by("dev", "queue").agg(
            (pl.col("event") == POP).sum().alias("pops"),
            (pl.col("event") == FILL).sum().alias("fills"),
            pl.col("size").filter(pl.col("event") == FILL).sum().alias("bytes_filled"),
        ))  # fmt: skip
        pops = batch.filter(pl.col("event") == POP).select(
            *KEY, "k", pl.col("ts_ns").alias("pop_ns")
        )
        fills = batch.filter(pl.col("event") == FILL).select(
            *KEY, "k", pl.col("ts_ns").alias("fill_ns")
        )
        pops = pops if self.pops is None else pl.concat([self.pops, pops])
        fills = fills if self.fills is None else pl.concat([self.fills, fills])
        on = [*KEY, "k"]  # (an element with a null key matches nothing, as in a join)
        matched = pops.join(fills, on=on, how="inner").select(
            "dev", "queue", (pl.col("fill_ns") - pl.col("pop_ns")).alias("ns")
        )
        for (dev, queue), group in matched.partition_by("dev", "queue", as_dict=True).items():
            # ns * 0.001: what polars' `/ 1000` computes on a column (its stored answers)
            us = group["ns"].to_numpy().astype(np.float64) * 0.001
            self.times.setdefault((dev, queue), []).append(us)
        self.pops = pops.join(fills, on=on, how="anti")
        self.fills = fills.join(pops, on=on, how="anti")

    def per_queue(self) -> pl.DataFrame:
        """dev, queue, pops, fills, in_flight (pops never filled), bytes_filled and the
        pop -> fill times' p50, p95 and max (us)."""
        counted = (
            pl.concat(self.counted)
            .group_by("dev", "queue")
            .agg(pl.col("pops", "fills", "bytes_filled").sum())
        )
        in_flight = self.pops.group_by("dev", "queue").agg(pl.len().alias("in_flight"))
        times = pl.DataFrame(
            [
                {"dev": dev, "queue": queue, "p50_us": t.quantile(0.5, "nearest"),
                 "p95_us": t.quantile(0.95, "nearest"), "max_us": t.max()}
                for (dev, queue), parts in self.times.items()
                for t in [pl.Series(np.concatenate(parts), dtype=pl.Float64)]
            ],
            schema={"dev": pl.String, "queue": pl.UInt16, "p50_us": pl.Float64,
                    "p95_us": pl.Float64, "max_us": pl.Float64},
        )  # fmt: skip
        return (
            counted.join(in_flight, on=["dev", "queue"], how="left", nulls_equal=True)
            .join(times, on=["dev", "queue"], how="left", nulls_equal=True)
            .with_columns(pl.col("in_flight").fill_null(0))
        )


def _summed(seen: pl.DataFrame) -> pl.DataFrame:
    return seen.group_by(*KEY, "event").agg(pl.col("n").sum())


def virtqueues(ev: pl.LazyFrame) -> pl.DataFrame:
    """The section (COLUMNS, a row per device and queue) from the table's QEMU rows."""
    qemu = ev.filter(pl.col("source") == "qemu")
    elements = qemu.filter(pl.col("event").is_in([POP, FILL]))
    logs = elements.select(pl.col("src_file").unique().sort()).collect().to_series().to_list()
    pairs = Pairs()
    for log in logs:
        rows = elements.filter(pl.col("src_file") == log).select(
            *KEY, "event", "ts_ns", "size", "src_offset"
        )
        for batch in file_order.batches(rows):
            pairs.add(batch.drop("src_offset"))
    if pairs.seen is None:
        return pl.DataFrame(schema=COLUMNS)
    counts = (
        qemu.filter(pl.col("event").is_in([KICK, *IRQS]))
        .group_by("dev", "queue")
        .agg((pl.col("event") == KICK).sum().alias("kicks"),
             pl.col("event").is_in(IRQS).sum().alias("irqs"))
        .collect()
    )  # fmt: skip
    kinds = (
        qemu.filter(pl.col("event").is_in(BLK))
        .select(pl.col("dev").unique(), pl.lit("blk").alias("kind"))
        .collect()
    )
    return (
        pairs.per_queue()
        .join(counts, on=["dev", "queue"], how="left", nulls_equal=True)
        # a queue with neither kick nor interrupt: none counted (not unknown)
        .with_columns(pl.col("kicks", "irqs").fill_null(0))
        .join(kinds, on="dev", how="left")
        .filter(pl.col("dev").is_not_null())
        .with_columns(pl.col("kind").fill_null("?"))
        .sort("dev", "queue")
        .select(*COLUMNS)
        .cast(COLUMNS)
    )
