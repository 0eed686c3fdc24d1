"""The summary's fold as it was declared before it was compiled (xvtrace.analysis.
fold_program, fold_kernel): polars queries over the table's rows, one per table. Kept as
the reference the compiled fold is checked against (tests/test_fold_kernel.py)."""

from __future__ import annotations

import polars as pl

from xvtrace.analysis import exit_pairs, xen_fold
from xvtrace.analysis.fold_program import (
    INTERRUPT_EVENTS,
    PV_EVENTS,
    ROLES,
    RUNSTATE,
    RUNSTATE_EVENTS,
)  # fmt: skip
from xvtrace.parsers import fields
from xvtrace.parsers import xen_events as xe

UNKNOWN_VCPU = exit_pairs.UNKNOWN_VCPU
NULL_REASON = 0xFFFFFFFF


CLASS_EXPR = (pl.col("code") // (1 << 16)) & 0xFFF


def record_bytes() -> pl.Expr:
    """On-disk size of a xentrace record: header, optional TSC, extra words."""
    return (4 + 8 * pl.col("has_ts").cast(pl.UInt32) + 4 * pl.col("nargs").cast(pl.UInt32)).cast(
        pl.UInt64
    )


def _groups(ev: pl.LazyFrame) -> pl.LazyFrame:
    """Records, bytes and first and last time per pCPU, class, domain, vCPU and known or
    not: the totals, the log volume, the records per vCPU and each pCPU's end."""
    return (
        ev.group_by("cpu", CLASS_EXPR.alias("cls"), "dom", "vcpu",
                    (pl.col("event") == xe.UNKNOWN).alias("unknown"))
        .agg(pl.len().alias("records"), record_bytes().sum().alias("bytes"),
             pl.col("ts_ns").min().alias("first_ns"), pl.col("ts_ns").max().alias("last_ns"))
    )  # fmt: skip


def _lost_marks(ev: pl.LazyFrame) -> pl.LazyFrame:
    return ev.filter(pl.col("event") == "gen.lost_records").select("ts_ns")


def _runstate_changes(ev: pl.LazyFrame) -> pl.LazyFrame:
    # continue_running is a running->running change: it ends one running interval.
    return ev.filter(pl.col("event").is_in(RUNSTATE_EVENTS)).select(
        "ts_ns",
        "cpu",
        pl.coalesce(*[fields.xen(e, "dom") for e in RUNSTATE_EVENTS]).cast(pl.Int32).alias("sdom"),
        pl.coalesce(*[fields.xen(e, "vcpu") for e in RUNSTATE_EVENTS])
        .cast(pl.Int32)
        .alias("svcpu"),
        ((pl.col("code") // (1 << 8)) & 0xF).alias("old"),
        ((pl.col("code") // (1 << 4)) & 0xF).alias("new"),
    )


def _packed(col: str, width: int, null: int) -> pl.Expr:
    return pl.col(col).fill_null(null).cast(pl.UInt64) * (1 << width)


VCPU_KEY = _packed("dom", 16, 0xFFFF) + _packed("vcpu", 0, 0xFFFF)  # dom << 16 | vcpu


PAIR_KEY = (
    pl.when(pl.col("dom").is_not_null() & pl.col("vcpu").is_not_null())
    .then(VCPU_KEY)
    .otherwise(UNKNOWN_VCPU + pl.col("cpu").cast(pl.UInt64))
)


def _exit_rows(ev: pl.LazyFrame) -> pl.LazyFrame:
    """The exit pairing's rows: every exit, entry and handler record, keyed by its vCPU
    (PAIR_KEY), and every vCPU's wake-up (runstate to runnable), keyed by the woken one."""
    wake = (pl.col("event") == RUNSTATE) & (((pl.col("code") // (1 << 4)) & 0xF) == 1)
    woken = (fields.xen(RUNSTATE, "dom").cast(pl.UInt64) * (1 << 16)
             + fields.xen(RUNSTATE, "vcpu").cast(pl.UInt64))  # fmt: skip
    role = pl.when(wake).then(pl.lit(exit_pairs.WAKE, pl.UInt8)).otherwise(_role(ROLES))
    return (
        ev.filter(pl.col("event").is_in(list(ROLES)) | wake)
        .select(
            "ts_ns", role.alias("role"),
            pl.when(wake).then(woken).otherwise(PAIR_KEY).alias("vk"),
            fields.exit_reason().fill_null(NULL_REASON).cast(pl.UInt32).alias("reason"),
            (pl.col("addr").fill_null(0) % (1 << 16)).cast(pl.UInt16).alias("port"),
        )
        .drop_nulls("vk")  # a wake-up of no named vCPU
    )  # fmt: skip


def _role(roles: dict[str, int]) -> pl.Expr:
    """Each record's role (`roles`: event name -> role): a chain of is_in on the event enum,
    twice as fast as casting 25 M names to strings to replace them."""
    by_role: dict[int, list[str]] = {}
    for name, role in roles.items():
        by_role.setdefault(role, []).append(name)
    expr = pl
    for role, names in sorted(by_role.items()):
        expr = expr.when(pl.col("event").is_in(names)).then(pl.lit(role, pl.UInt8))
    return expr.alias("role")


def _pv_counts(ev: pl.LazyFrame) -> pl.LazyFrame:
    return (
        ev.filter(pl.col("event").is_in(list(PV_EVENTS)))
        .group_by("dom", "event")  # (named after: a cast per row cost more than the count)
        .agg(pl.len().alias("count"))
    )


def _hypercall_counts(ev: pl.LazyFrame) -> pl.LazyFrame:
    """Hypercalls by name per domain: PV_HYPERCALL(_V2) and subcalls, and HVM VMCALLs."""
    kind = (
        pl.when(pl.col("event") == "pv.hypercall_subcall")
        .then(pl.lit("pv-subcall"))
        .when(pl.col("event") == "hvm.vmmcall")
        .then(pl.lit("hvm"))
        .otherwise(pl.lit("pv"))
    )
    return (
        ev.filter(pl.col("event").is_in(fields.HYPERCALL_EVENTS))
        .group_by("dom", kind.alias("kind"), fields.hypercall().alias("op"))
        .agg(pl.len().alias("count"))
    )


def _io_counts(ev: pl.LazyFrame) -> pl.LazyFrame:
    """Emulated IO port and MMIO accesses by address and direction."""
    io_events = ["hvm.ioport_read", "hvm.ioport_write", "hvm.mmio_read", "hvm.mmio_write"]
    return (
        ev.filter(pl.col("event").is_in(io_events))
        .group_by("dom", "event", "addr")
        .agg(pl.len().alias("count"))
    )


def _interrupt_counts(ev: pl.LazyFrame) -> pl.LazyFrame:
    """Virtual interrupts injected into guests and physical interrupts that caused exits."""
    return (
        ev.filter(pl.col("event").is_in(INTERRUPT_EVENTS))
        .group_by(
            "dom",
            "vcpu",
            pl.col("event").alias("kind"),
            pl.coalesce(*[fields.xen(e, "vector") for e in INTERRUPT_EVENTS]).alias("vector"),
        )
        .agg(pl.len().alias("count"))
    )


def _grant_counts(ev: pl.LazyFrame) -> pl.LazyFrame:
    """Grant map/unmap/transfer operations: done by (running domain) and for (granting)."""
    return (
        ev.filter(pl.col("event").is_in(["mem.grant_map", "mem.grant_unmap", "mem.grant_transfer"]))
        .group_by(
            pl.col("dom").alias("by_dom"),
            pl.coalesce(
                fields.xen("mem.grant_map", "granting_dom"),
                fields.xen("mem.grant_unmap", "granting_dom"),
                fields.xen("mem.grant_transfer", "dest_dom"),
            )
            .cast(pl.Int32, strict=False)  # (a damaged record's word past an id: null)
            .alias("for_dom"),
            pl.col("event").alias("op"),
        )
        .agg(pl.len().alias("count"))
    )


def _lost_counts(ev: pl.LazyFrame) -> pl.LazyFrame:
    return (
        ev.filter(pl.col("event") == "gen.lost_records")
        .group_by("cpu")
        .agg(pl.len().alias("markers"), fields.xen("gen.lost_records", "lost").sum())
    )


COUNT = {"count": "sum"}


TABLES = {
    "groups": (_groups, {"records": "sum", "bytes": "sum", "first_ns": "min", "last_ns": "max"}),
    "lost_records": (_lost_counts, {"markers": "sum", "lost": "sum"}),
    "hypercalls": (_hypercall_counts, COUNT),
    "pv_events": (_pv_counts, COUNT),
    "io": (_io_counts, COUNT),
    "interrupts": (_interrupt_counts, COUNT),
    "grants": (_grant_counts, COUNT),
}


ROWS = {"runstates": _runstate_changes, "lost": _lost_marks}


def fold(rows: pl.DataFrame, times: bool = False) -> xen_fold.Folded:
    """The fold of `rows` (the table's xentrace rows, in time order) in one go."""
    lf = rows.lazy()
    exits = xen_fold.Exits(times)
    rows = _exit_rows(lf).collect()
    exits.add([rows[c].to_numpy() for c in xen_fold.EXIT_COLUMNS])
    return xen_fold.Folded({n: q(lf).collect() for n, (q, _) in TABLES.items()},
                           {n: q(lf).collect() for n, q in ROWS.items()}, exits.result())  # fmt: skip


def runstate_intervals(f: xen_fold.Folded) -> pl.DataFrame:
    """summary.runstate_intervals as it was, a polars query (before its arrays): each
    vCPU's runstate intervals from consecutive runstate changes (`f`: the fold).

    The interval after a change is in the change's new state; intervals that span lost
    records are reported as state 'lost'. Runnable time is split by how it was entered:
    'wake' (from blocked or offline) and 'preempt' (from running), as xenalyze does.
    """
    # each pCPU's last record closes a vCPU still running
    cpu_end = f.tables["groups"].group_by("cpu").agg(pl.col("last_ns").max().alias("cpu_end"))
    rs = (
        f.rows["runstates"]
        .lazy()
        .sort("sdom", "svcpu", "ts_ns", maintain_order=True)
        .with_columns(
            pl.col("ts_ns").shift(-1).over("sdom", "svcpu").alias("end_ns"),
            # A vCPU's state is unknown until it is first seen entering 'running'.
            ((pl.col("new") == 0).cum_sum().over("sdom", "svcpu") > 0).alias("known"),
        )
        # Still running at the end: the interval closes at its pCPU's last record.
        .join(cpu_end.lazy(), on="cpu", how="left", maintain_order="left")
        .with_columns(
            pl.when(pl.col("end_ns").is_null() & (pl.col("new") == 0))
            .then(pl.col("cpu_end"))
            .otherwise(pl.col("end_ns"))
            .alias("end_ns")
        )
        .filter(pl.col("end_ns").is_not_null() & pl.col("known"))
    )
    lost = f.rows["lost"]["ts_ns"].sort()
    df = rs.collect()
    if len(lost):
        crosses = lost.search_sorted(df["ts_ns"], side="right") != lost.search_sorted(
            df["end_ns"], side="right"
        )
        df = df.with_columns(lost_between=crosses)
    else:
        df = df.with_columns(lost_between=pl.lit(False))
    names = pl.Series(list(xe.RUNSTATES))
    state = (
        pl.when(pl.col("lost_between"))
        .then(pl.lit("lost"))
        .otherwise(pl.col("new").cast(pl.Int64).replace_strict(range(4), names, default="?"))
    )
    sub = (
        pl.when(pl.col("new") == 1)
        .then(
            # from blocked, or offline: an HVM vCPU waiting for its IOREQ is paused
            # (blocked in Xen), which the runstate shows as offline
            pl.when(pl.col("old").is_in([2, 3]))
            .then(pl.lit("wake"))
            .when(pl.col("old") == 0)
            .then(pl.lit("preempt"))
            .otherwise(pl.lit("other"))
        )
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    df = df.with_columns(
        state.alias("state"),
        sub.alias("entered_by"),
        (pl.col("end_ns") - pl.col("ts_ns")).alias("dur"),
    )
    # Like xenalyze, zero-length intervals are not counted.
    return df.filter(pl.col("dur") > 0)


def runstates(f: xen_fold.Folded) -> pl.DataFrame:
    """summary.runstates as it was: runstate_intervals, summed by a query."""
    return (
        runstate_intervals(f)
        .group_by("sdom", "svcpu", "state", "entered_by")
        .agg(pl.len().alias("count"), pl.col("dur").sum().alias("total_ns"))
        .rename({"sdom": "dom", "svcpu": "vcpu"})
        .sort("dom", "vcpu", "state", "entered_by", nulls_last=False)
    )
