"""The request table's derived intervals, defined once for every view (timeline,
hv_timeline, ide_timeline): each view names the columns that stand for its kick, pop,
fill and so on."""

from __future__ import annotations

import polars as pl


def intervals(kick: str = "kick_ns", pop: str = "pop_ns", fill: str = "fill_ns") -> list[pl.Expr]:
    """kick_to_pop_ns, io_ns (handle_ns to io_done_ns), service_ns (pop to fill) and
    fill_to_notify_ns (fill to notify_ns)."""
    return [
        (pl.col(pop) - pl.col(kick)).alias("kick_to_pop_ns"),
        (pl.col("io_done_ns") - pl.col("handle_ns")).alias("io_ns"),
        (pl.col(fill) - pl.col(pop)).alias("service_ns"),
        (pl.col("notify_ns") - pl.col(fill)).alias("fill_to_notify_ns"),
    ]
