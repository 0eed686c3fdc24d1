"""The request table's derived intervals, defined once for every view (timeline.qemu,
timeline.hypervisor, timeline.ide): each view names the columns that stand for its kick,
pop, fill and so on. PHASES lists them in path order with the names every output uses;
`table` is the one aggregation of them that the timeline and the report print."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import polars as pl

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
    # Each group's rows found once (by device, queue and operation, a slice at a time),
    # then a phase's column at a time, gathered per group: polars' group-by held 0.37 GiB
    # for one quantile of 5 M requests, and a group-by of the keys' strings 0.4 GiB.
    names, members = _groups(req)
    rows = []
    for order, (col, name) in enumerate(phases):
        values = req.select(col).collect().to_series()
        for (dev, queue, op), at in zip(names, members, strict=True):
            mine = values.gather(at).drop_nulls()
            if len(mine):  # (us divided in Python, correctly rounded: polars multiplies a
                # column by 1e-3, an ulp off for some, as its group-by did unless one group
                # had the phase)
                rows.append((dev, queue, op, name, order, len(mine),
                             *(mine.quantile(q, "nearest") / 1e3 for q in QUANTILES), mine.max() / 1e3))  # fmt: skip
        del values
    us = [f"p{round(q * 100)}_us" for q in QUANTILES] + ["max_us"]
    out = pl.DataFrame(rows, orient="row", schema={
        "dev": pl.String, "queue": schema["queue"], "op": pl.String, "phase": pl.String,
        "_order": pl.Int32, "requests": pl.UInt32, **dict.fromkeys(us, pl.Float64),
    })  # fmt: skip
    return out.sort("dev", "queue", "op", "_order").drop("_order")


GROUP_SLICE = 1 << 18  # requests' keys read at a time (np.unique of a slice: 100 B a row)


def _groups(req: pl.LazyFrame) -> tuple[list[tuple], list[pl.Series]]:
    """The requests' (dev, queue, op) groups and each one's rows (in order), the keys read
    a slice at a time as numbers (the names' category numbers; joined on their strings,
    a slice of a million keys held 0.35 GiB)."""
    keys = ["dev", "queue", "op"]
    as_numbers = [
        pl.col(c).cast(pl.Categorical).to_physical().cast(pl.Int64) + 1 for c in ("dev", "op")
    ]
    found: dict[tuple, int] = {}  # a group's numbers -> its code
    names: list[tuple] = []
    codes = []
    total = req.select(pl.len()).collect().item()
    for lo in range(0, total, GROUP_SLICE):
        part = req.slice(lo, GROUP_SLICE).select(keys).collect()
        numbers = part.select(*as_numbers, pl.col("queue").cast(pl.Int64) + 1).fill_null(0)
        mine, first, inverse = np.unique(
            numbers.to_numpy(), axis=0, return_index=True, return_inverse=True
        )
        for row, at in zip(map(tuple, mine.tolist()), first.tolist(), strict=True):
            if row not in found:
                found[row] = len(names)
                names.append(part.row(at))
        codes.append(np.array([found[tuple(r)] for r in mine.tolist()], np.int32)[inverse.ravel()])
    codes = np.concatenate([np.zeros(0, np.int32), *codes])
    order = np.argsort(codes, kind="stable").astype(np.uint32 if total < 1 << 32 else np.int64)
    bounds = np.r_[0, np.cumsum(np.bincount(codes, minlength=len(names)))]
    members = [pl.Series(order[a:b]) for a, b in pairwise(bounds)]
    return names, members
