"""The vhost-user hop (Linaro Stratos's shape; tests/xen/stratos on the real host): a
back-end process serves the queue and logs the device's virtqueue events in a log of its
own, while the front-end's log holds the guest's side (the IOREQs, the registers, the kick
as it trapped, the interrupt). Both stamp dom0's wall clock, so the logs join by time:
each back-end request takes the front-end kick before the back-end woke for it, and the
front-end's read of the call eventfd the back-end wrote as it notified.

The request then lives in the front-end's log (src_file, kick_off, kick_ns), so the IOREQ
join gives it its kick's trap and the guest's interrupt handling as for one device model;
the back-end's own stamps are added: vu_kick_ns (it woke for the kick) and vu_call_ns (the
front-end read its call), and the log it came from (backend_file: pop_off and fill_off
stay offsets in that log). Its kick -> pop is then from the back-end's wake-up: the
front-end's kick to it is the kick eventfd's phase (timeline.phases), so the phases add up.
One front-end and one back-end: a capture of more would need them paired by device."""

from __future__ import annotations

import polars as pl

from xvtrace.timeline.phases import intervals

BACKEND_MARK = "qemu.vu_message"  # a log with these is a vhost-user back-end's
FRONTEND_MARK = "qemu.vhost_user_write"  # ... and with these, its front-end's
CALL_READ = "qemu.vhost_user_call_read"


def _logs(q: pl.LazyFrame, mark: str) -> list[str]:
    return (
        q.filter(pl.col("event") == mark)
        .select(pl.col("src_file").unique().sort())
        .collect()
        .to_series()
        .to_list()
    )


def with_front_end(req: pl.LazyFrame, ev: pl.LazyFrame) -> pl.DataFrame | None:
    """`req` (timeline.qemu) with the vhost-user back-end's requests moved onto its
    front-end's log and stamps (module doc); None unless the capture has exactly one
    back-end log and one front-end log."""
    q = ev.filter(pl.col("source") == "qemu")
    backs = _logs(q, BACKEND_MARK)
    fronts = _logs(q, FRONTEND_MARK)
    if len(backs) != 1 or len(fronts) != 1:
        return None
    (front,) = fronts
    mine = q.filter(pl.col("src_file") == front)
    kicks = (
        mine.filter(pl.col("event") == "qemu.virtio_queue_notify")
        .select(pl.col("ts_ns").alias("_fk_ns"), pl.col("src_offset").alias("_fk_off"))
        .collect()
        .sort("_fk_ns")
    )
    calls = (
        mine.filter(pl.col("event") == CALL_READ)
        .select(pl.col("ts_ns").alias("vu_call_ns"))
        .collect()
        .sort("vu_call_ns")
    )
    back = pl.col("backend_file").is_not_null()
    out = (
        req.lazy()
        .with_columns(
            pl.when(pl.col("src_file").is_in(backs)).then(pl.col("src_file")).alias("backend_file"),
        )
        .with_columns(pl.when(back).then(pl.col("kick_ns")).alias("vu_kick_ns"))
        .sort("vu_kick_ns", nulls_last=True)
        .join_asof(kicks.lazy(), left_on="vu_kick_ns", right_on="_fk_ns", strategy="backward")
        .sort("notify_ns", nulls_last=True)
        .join_asof(
            calls.lazy(),
            left_on="notify_ns",
            right_on="vu_call_ns",
            strategy="forward",
            coalesce=False,
        )
        .sort("request")
        .collect()
    )
    out = out.with_columns(
        pl.when(back).then(pl.lit(front)).otherwise(pl.col("src_file")).alias("src_file"),
        pl.when(back).then(pl.col("_fk_ns")).otherwise(pl.col("kick_ns")).alias("kick_ns"),
        pl.when(back).then(pl.col("_fk_off")).otherwise(pl.col("kick_off")).alias("kick_off"),
        pl.when(back).then(pl.col("vu_call_ns")).alias("vu_call_ns"),
    ).drop("_fk_ns", "_fk_off")
    # kick -> pop from the back-end's wake-up (the kick eventfd's phase is before it)
    kick = pl.when(back).then(pl.col("vu_kick_ns")).otherwise(pl.col("kick_ns"))
    return out.with_columns(kick.alias("_kick")).with_columns(intervals("_kick")).drop("_kick")
