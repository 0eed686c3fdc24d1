"""The request table's derived intervals, defined once for every view (timeline.qemu,
timeline.hypervisor, timeline.ide): each view names the columns that stand for its kick,
pop, fill and so on. PHASES lists them in path order with the names every output uses;
`table` is the one aggregation of them that the timeline and the report print."""

from __future__ import annotations

import numpy as np
import polars as pl

from xvtrace.timeline.order_stats import grouped, nearest_rank

INTERVALS = ("kick_to_pop_ns", "io_ns", "service_ns", "fill_to_notify_ns")  # intervals()'s


def intervals(kick: str = "kick_ns", pop: str = "pop_ns", fill: str = "fill_ns") -> list[pl.Expr]:
    """kick_to_pop_ns, io_ns (handle_ns to io_done_ns), service_ns (pop to fill) and
    fill_to_notify_ns (fill to notify_ns)."""
    return [
        (pl.col(pop) - pl.col(kick)).alias("kick_to_pop_ns"),
        (pl.col("io_done_ns") - pl.col("handle_ns")).alias("io_ns"),
        (pl.col(fill) - pl.col(pop)).alias("service_ns"),
        (pl.col("notify_ns") - pl.col(fill)).alias("fill_to_notify_ns"),
    ]


STARTS = ("trap_exit_ns", "kick_ns", "pop_ns")  # a request's first stamps, as views have them


def first_stamp(columns) -> pl.Expr:
    """A request's first stamp: the earliest of its kick's trap, its kick and its pop."""
    return pl.min_horizontal([c for c in STARTS if c in columns])


PHASES = (
    ("vu_kick_hop_ns", "kick eventfd"),  # vhost-user: front-end kick -> back-end awake
    ("kick_to_pop_ns", "kick -> pop"),  # (vhost-user: from the back-end awake)
    ("trap_ns", "notify trap"),
    ("kick_to_irq_ns", "kick -> irq"),  # the hypervisor's view alone (timeline.traps)
    ("service_ns", "pop -> fill"),
    ("io_ns", "device I/O"),
    ("fill_to_notify_ns", "fill -> irq"),
    ("vu_call_hop_ns", "call eventfd"),  # vhost-user: back-end call -> front-end reads it
    ("irq_to_isr_ns", "irq -> ISR"),  # virtio-mmio: the guest's InterruptStatus read
    ("isr_to_ack_ns", "ISR -> ACK"),  # ... and its InterruptACK write (two more IOREQs)
)


def with_phases(req: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame | pl.LazyFrame:
    """`req` with the PHASES that come from the hypervisor's side where it has their stamps:
    trap_ns (the kick's exit to entry), irq_to_isr_ns and isr_to_ack_ns; and, through a
    vhost-user back-end, the hops of its kick and call eventfds."""
    columns = req.collect_schema().names()
    if "trap_exit_ns" in columns:
        req = req.with_columns((pl.col("trap_entry_ns") - pl.col("trap_exit_ns")).alias("trap_ns"))
    if "vu_kick_ns" in columns:  # timeline.vhost_user
        req = req.with_columns(
            (pl.col("vu_kick_ns") - pl.col("kick_ns")).alias("vu_kick_hop_ns"),
            (pl.col("vu_call_ns") - pl.col("notify_ns")).alias("vu_call_hop_ns"),
        )
    if "isr_read_ns" in columns:
        # the interrupt as the guest's side sees it raised: through a vhost-user back-end,
        # once the front-end read its call (the call eventfd's phase is before it)
        irq = pl.col("notify_ns")
        if "vu_call_ns" in columns:
            irq = pl.coalesce("vu_call_ns", "notify_ns")
        req = req.with_columns(
            (pl.col("isr_read_ns") - irq).alias("irq_to_isr_ns"),
            (pl.col("ack_ns") - pl.col("isr_read_ns")).alias("isr_to_ack_ns"),
        )
    return req


QUANTILES = (0.5, 0.9, 0.99)


def table(req: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Per device, queue, operation and phase (in PHASES order): requests that have the
    phase, its p50/p90/p99 (nearest rank) and max in us."""
    req = with_phases(req).lazy()
    schema = req.collect_schema()
    phases = [(c, name) for c, name in PHASES if c in schema]
    if not phases:
        return pl.DataFrame()
    # One pass, GROUP_SLICE requests at a time: each row's group numbered from its keys,
    # each phase's values kept by (group, phase) in bounded memory (order_stats); a column
    # of every request gathered per group held 8 bytes a request, polars' group-by 0.37 GiB
    # for one quantile of 5 M requests.
    rows = []
    columns = [pl.col(c) for c, _ in phases]
    with grouped(req, ["dev", "queue", "op"], columns, GROUP_SLICE) as found:
        for (dev, queue, op), order, n, select in found:
            # (us divided in Python, correctly rounded: polars multiplies a column by 1e-3,
            # an ulp off for some, as its group-by did unless one group had the phase)
            ranks = [nearest_rank(n, q) for q in QUANTILES] + [n - 1]
            at = select(np.array(ranks))
            rows.append((dev, queue, op, phases[order][1], order, n, *(float(v) / 1e3 for v in at)))
    us = [f"p{round(q * 100)}_us" for q in QUANTILES] + ["max_us"]
    out = pl.DataFrame(rows, orient="row", schema={
        "dev": pl.String, "queue": schema["queue"], "op": pl.String, "phase": pl.String,
        "_order": pl.Int32, "requests": pl.UInt32, **dict.fromkeys(us, pl.Float64),
    })  # fmt: skip
    return out.sort("dev", "queue", "op", "_order").drop("_order")


GROUP_SLICE = 1 << 18  # requests read at a time (their keys and every phase)
