"""The device model's view: one row per virtqueue element QEMU popped, from QEMU's trace
events alone (what works on any QEMU capture): an element's life from the guest's kick
(virtio_queue_notify) through virtqueue_pop, the block request (virtio_blk_handle_*,
rw_complete, req_complete) to virtqueue_fill and the interrupt (virtio_notify[_irqfd]).
Elements are matched as QEMU reports them: pointers are reused, so the k-th pop of a
(device, queue, element) pairs with its k-th fill; notifications are suppressed and
coalesced, so a fill's notify is the first one at or after it on its queue.

Requests missing events are kept and flagged (`complete` False, `reason`).
"""

from __future__ import annotations

from typing import NamedTuple

import polars as pl

from xvtrace.parsers import fields
from xvtrace.timeline.phases import intervals

VIEW = "device-model"  # requests.parquet `view` of rows from QEMU's trace events
VIEW_NAME = "device model (QEMU trace events)"
KEY = ["src_file", "dev", "queue", "addr"]
RESETS = ["qemu.virtio_set_status"]  # status 0: the device's life ends


def _events(q: pl.LazyFrame, names: list[str], *cols: pl.Expr) -> pl.LazyFrame:
    return q.filter(pl.col("event").is_in(names)).select(*cols)


def epochs(q: pl.LazyFrame):
    """A function adding to a frame of one device's events (src_file, dev, offset column
    `off`, sorted by it on return) the number of resets of that device before each: its
    `epoch` (a virtio_set_status to 0 ends the device's life: nothing in flight survives)."""
    resets = (
        _events(q, RESETS, pl.col("src_file"), pl.col("dev"),
                pl.col("src_offset").alias("_reset_off"), fields.qemu("virtio_set_status", "val"))
        .filter(pl.col("val") == 0)
        .sort("_reset_off")
        .select("src_file", "dev", "_reset_off",
                (pl.int_range(pl.len()).over("src_file", "dev") + 1).alias("epoch"))
    )  # fmt: skip

    def since(frame: pl.LazyFrame, off: str) -> pl.LazyFrame:
        return (
            frame.sort(off)
            .join_asof(resets, left_on=off, right_on="_reset_off", by=["src_file", "dev"],
                       strategy="backward", check_sortedness=False)
            .with_columns(pl.col("epoch").fill_null(0))
            .drop("_reset_off")
        )  # fmt: skip

    return since


UNTIMED = "no timestamps: QEMU ran without `-msg timestamp=on` (add it to QEMU's command line)"


# the events of one element (keyed by its pointer, `addr`): a request's rows come from these
# and from its queue's kicks and notifies only
ELEMENT_EVENTS = [
    "qemu.virtqueue_pop", "qemu.virtqueue_fill", "qemu.virtio_blk_handle_read",
    "qemu.virtio_blk_handle_write", "qemu.virtio_blk_rw_complete", "qemu.virtio_blk_req_complete",
]  # fmt: skip
KICKS, NOTIFIES = ["qemu.virtio_queue_notify"], ["qemu.virtio_notify", "qemu.virtio_notify_irqfd"]
# every event `requests` reads (a device's resets end its epochs)
EVENTS = [*ELEMENT_EVENTS, *KICKS, *NOTIFIES, *RESETS]


def requests(ev: pl.LazyFrame) -> pl.LazyFrame:
    """One row per virtqueue element QEMU popped (see the module doc)."""
    q = events_of(ev)
    return with_queue_events(element_requests(q), QueueEvents.of(q))


def events_of(ev: pl.LazyFrame) -> pl.LazyFrame:
    """The QEMU events of the bundle's events `ev`, as the pairing reads them."""
    # the log and device names as categories while the events are paired: every join below
    # is keyed on them (on strings, each join row-encoded them for every event)
    return ev.filter(pl.col("source") == "qemu").with_columns(
        pl.col("src_file", "dev").cast(pl.Categorical)
    )


def element_requests(q: pl.LazyFrame) -> pl.LazyFrame:
    """Each popped element with what its own events say (ELEMENT_EVENTS: its fill, block
    request and completions) and its device's `epoch`, by (src_file, pop_off). `q`: the
    bundle's QEMU events (`events_of`). Elements are independent of each other: a subset of
    the elements' events gives those elements' rows."""
    since = epochs(q)
    pops = (
        since(_events(
            q,
            ["qemu.virtqueue_pop"],
            *[pl.col(c) for c in KEY],
            pl.col("ts_ns").alias("pop_ns"),
            pl.col("src_offset").alias("pop_off"),
            fields.qemu("virtqueue_pop", "in_num"),
            fields.qemu("virtqueue_pop", "out_num"),
        ), "pop_off")
        .with_columns(pl.int_range(pl.len()).over(*KEY, "epoch").alias("k"))
    )  # fmt: skip
    fills = (
        since(_events(
            q,
            ["qemu.virtqueue_fill"],
            *[pl.col(c) for c in KEY],
            pl.col("ts_ns").alias("fill_ns"),
            pl.col("src_offset").alias("fill_off"),
            pl.col("size").alias("fill_len"),
        ), "fill_off")
        .with_columns(pl.int_range(pl.len()).over(*KEY, "epoch").alias("k"))
    )  # fmt: skip
    # the nth pop of an element pointer with its nth fill, within one life of the device
    req = pops.join(fills, on=[*KEY, "epoch", "k"], how="left", nulls_equal=True).sort(
        "src_file", "pop_off"
    )

    def after_pop(names, *cols, by=("src_file", "dev", "addr")):
        """The first such event of the same request at or after its pop (in file order)."""
        right = _events(q, names, pl.col("src_file"), pl.col("dev"), pl.col("addr"),
                        pl.col("src_offset").alias("_off"), *cols).sort("_off")  # fmt: skip
        return right, list(by)

    handles, by = after_pop(
        ["qemu.virtio_blk_handle_read", "qemu.virtio_blk_handle_write"],
        pl.col("ts_ns").alias("handle_ns"),
        pl.when(pl.col("event") == "qemu.virtio_blk_handle_read").then(pl.lit("read")).otherwise(pl.lit("write")).alias("blk_op"),
        pl.col("size").alias("blk_bytes"),
        pl.coalesce(fields.qemu("virtio_blk_handle_read", "sector"), fields.qemu("virtio_blk_handle_write", "sector")),
    )  # fmt: skip
    done, _ = after_pop(["qemu.virtio_blk_rw_complete"], pl.col("ts_ns").alias("io_done_ns"))
    comp, _ = after_pop(["qemu.virtio_blk_req_complete"], pl.col("ts_ns").alias("complete_ns"))
    for right, cols in ((handles, ["handle_ns", "blk_op", "blk_bytes", "sector"]), (done, ["io_done_ns"]),
                        (comp, ["complete_ns"])):  # fmt: skip
        req = req.join_asof(
            right,
            left_on="pop_off",
            right_on="_off",
            by=by,
            strategy="forward",
            check_sortedness=False,
        )
        # an event after the fill belongs to a later request reusing the pointer (one in
        # flight at the end has no later reuse: what follows its pop is its own)
        mine = pl.col("fill_off").is_null() | (pl.col("_off") < pl.col("fill_off"))
        req = req.with_columns([pl.when(mine).then(pl.col(c)).alias(c) for c in cols]).drop("_off")
    return req


QUEUE_EVENTS = ((KICKS, "kick_ns", "_koff"), (NOTIFIES, "notify_ns", "_noff"))  # names, columns


def queue_events(q: pl.LazyFrame, names: list[str], ns: str, off: str) -> pl.LazyFrame:
    """A queue's kicks or notifies (QUEUE_EVENTS): its log, device and queue, time `ns` and
    offset `off`."""
    return _events(q, names, pl.col("src_file"), pl.col("dev"), pl.col("queue"),
                   pl.col("ts_ns").alias(ns), pl.col("src_offset").alias(off))  # fmt: skip


class QueueEvents(NamedTuple):
    """The queues' kicks and notifies, each with its device's epoch (`epochs`)."""

    kicks: pl.LazyFrame | pl.DataFrame
    irqs: pl.LazyFrame | pl.DataFrame

    @classmethod
    def of(cls, q: pl.LazyFrame) -> QueueEvents:
        since = epochs(q)
        return cls(*(since(queue_events(q, *side), side[2]) for side in QUEUE_EVENTS))


def with_queue_events(req: pl.LazyFrame, queues: QueueEvents, first: int = 0) -> pl.LazyFrame:
    """Elements (`element_requests`, by (src_file, pop_off)) with their queue's kick and
    notify, as requests numbered from `first`. Each row's answer is its own: a slice of the
    elements gives that slice's requests (qemu_buckets: the same, from the queues' events in
    sorted runs on disk)."""
    # a kick and an interrupt belong to a request only within the device's same life: a
    # reset (status 0) ends every request in flight (an interrupt was matched 13.9 s later)
    req = req.join_asof(queues.kicks.lazy(), left_on="pop_off", right_on="_koff",
                        by=QUEUE, strategy="backward",
                        check_sortedness=False).rename({"_koff": "kick_off"})  # fmt: skip
    req = (
        req.sort("fill_off", nulls_last=True)
        .join_asof(
            queues.irqs.lazy(),
            left_on="fill_off",
            right_on="_noff",
            by=QUEUE,
            strategy="forward",
            check_sortedness=False,
        )
        .drop("_noff")
    )
    return as_requests(req, first)


QUEUE = ["src_file", "dev", "queue", "epoch"]  # a queue within one life of its device


def as_requests(req: pl.LazyFrame, first: int) -> pl.LazyFrame:
    """Elements with their kick and notify, as requests numbered from `first`."""
    blk = pl.col("blk_op").is_not_null()
    op = (
        pl.when(blk).then(pl.col("blk_op"))
        .when((pl.col("in_num") == 0) & (pl.col("out_num") > 0)).then(pl.lit("tx"))
        .when((pl.col("out_num") == 0) & (pl.col("in_num") > 0)).then(pl.lit("rx"))
        .otherwise(pl.lit("other"))
    )  # fmt: skip
    reason = (
        pl.when(pl.col("pop_ns").is_null()).then(pl.lit(UNTIMED))
        .when(pl.col("fill_ns").is_null()).then(pl.lit("no fill (in flight at the end, or lost)"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )  # fmt: skip
    return (
        req.with_columns(pl.col("src_file", "dev").cast(pl.String))
        .sort("src_file", "pop_off")
        .with_columns(op.alias("op"), reason.alias("reason"))
        .select(
            (pl.int_range(pl.len()) + first).alias("request"),
            "src_file", "dev", "queue", pl.col("addr").alias("elem"), "op",
            pl.when(pl.col("blk_op").is_not_null()).then(pl.col("blk_bytes").cast(pl.UInt64))
            .when(pl.col("op") == "rx").then(pl.col("fill_len").cast(pl.UInt64) - 12)
            .alias("bytes"),
            "sector", "in_num", "out_num", "fill_len",
            "kick_ns", "pop_ns", "handle_ns", "io_done_ns", "complete_ns", "fill_ns", "notify_ns",
            *intervals(),
            pl.col("reason").is_null().alias("complete"),
            "reason", "pop_off", "fill_off", "kick_off",
        )
    )  # fmt: skip
