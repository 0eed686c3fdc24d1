"""dom0's grant-table operations joined to the requests they serve.

Xen records each grant page that dom0 maps or unmaps (TRC_MEM_PAGE_GRANT_MAP / _UNMAP). A
backend serving one queue from one thread works on one request at a time in two stretches:
from its pop to its submission to the device (the header and buffers mapped, in the kick's
IOREQ), and from its I/O completion to its fill (the status byte mapped, everything
unmapped). Stretches of different requests do not overlap even when their requests do, so
each record, once the hypervisor's times are on the device model's clock (the timeline's
fit), falls in at most one. Records in none are the rings' (mapped once per driver reset),
a persistent backend's first uses outside the capture's requests, or another backend's.
"""

from __future__ import annotations

import polars as pl

from xvtrace.timeline.clock import Clock, to_device_model

COLUMNS = {"mem.grant_map": "grant_maps", "mem.grant_unmap": "grant_unmaps"}


READS = ("request", "pop_ns", "handle_ns", "io_done_ns", "fill_ns")  # the requests' columns used


def per_request(
    ev: pl.LazyFrame, req: pl.DataFrame, clock: Clock | None
) -> tuple[pl.DataFrame, dict[str, int]] | None:
    """(request, grant_maps, grant_unmaps per request; per column the records in no
    request's stretch), or None without a device-model clock, requests or grant records."""
    if clock is None or not len(req):
        return None
    grants = (
        ev.filter(pl.col("event").is_in(list(COLUMNS)))
        .select(
            pl.col("event").cast(pl.String).replace_strict(COLUMNS).alias("column"),
            to_device_model(pl.col("ts_ns"), clock).alias("t"),
        )
        .collect()
        .sort("t")
    )
    if not len(grants):
        return None
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
        # one thread's stretches follow each other; one that reaches past the next one's
        # start (a request without a stamp between its pop and its fill) is cut there,
        # so a record is never given to a request that only may have made it
        .with_columns(pl.min_horizontal("end", pl.col("start").shift(-1)).alias("end"))
    )  # fmt: skip
    hit = grants.join_asof(stretches, left_on="t", right_on="start", strategy="backward").filter(
        pl.col("t") <= pl.col("end")
    )
    counts = hit.pivot("column", index="request", values="t", aggregate_function="len")
    out = req.select("request").join(counts, on="request", how="left")
    out = out.with_columns(
        pl.col(c).fill_null(0).cast(pl.UInt32)
        if c in out.columns
        else pl.lit(0, pl.UInt32).alias(c)
        for c in COLUMNS.values()
    ).select("request", *COLUMNS.values())
    total = grants["column"].value_counts()
    recorded = dict(zip(total["column"], total["count"], strict=True))
    return out, {c: recorded.get(c, 0) - int(out[c].sum()) for c in COLUMNS.values()}
