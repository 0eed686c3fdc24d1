"""Per-request timelines from the hypervisor's and dom0's records, for backends that log
nothing per request (blkback, a vhost-user process, an Argo backend).

What a host records for each request of such a transport:
- xentrace: the guest's kick (a VMCALL exit for event_channel_op / argo_op, or an MMIO
  write trap to QueueNotify) and the vCPU's re-entry after it; dom0's response hypercall
  (event_channel_op, argo_op, or dm_op raising the interrupt); the interrupt injected into
  the guest;
- dom0's block layer (ftrace, on the same TSC): the request's submission (block_rq_insert,
  where the kernel logs it), its issue to the device and its completion, with its sector.

Nothing names the request across these, so they are matched by the order the path imposes,
and across the device by sector:
- the backend takes kicks in the order they reach it, which is the order of the vCPUs'
  re-entries (the notification is on its way once the vCPU resumes), and issues them to the
  device in that order: the k-th kick (by re-entry) is the k-th block issue;
- the n-th issue of a sector completes as that sector's n-th completion;
- the backend answers completions in the order they come: the k-th completion is the k-th
  response hypercall;
- each vCPU takes its interrupts in order: the k-th response for a vCPU's requests is the
  k-th injection of the device's vector on that vCPU.
A request whose chain breaks (records lost, counts that disagree) is kept, flagged with
the reason, and never given another request's times. A lost record shifts every count after
it, so once Xen reports a loss (or dom0's ftrace does) every later request is flagged rather
than risk a wrong match.

The table has the device-model view's columns: the block issue stands in for the backend's
pop (pop_ns = handle_ns) and the response hypercall for its fill (fill_ns), so reports,
exports and replay read both views alike; `view` says which one a row comes from.
"""

from __future__ import annotations

import polars as pl

from xvtrace.parsers import fields
from xvtrace.parsers.xen_events import RUNSTATES
from xvtrace.timeline import hvm
from xvtrace.timeline.phases import intervals

VIEW = "hypervisor"  # requests.parquet `view`: matched from xentrace and dom0's block layer
LOST_REASON = "records lost before this request's end: matching by order is not trusted"
RESPONSE_HYPERCALLS = (32, 39, 41)  # event_channel_op, argo_op, dm_op (dom0's answer)


def hypervisor_requests(
    ev: pl.LazyFrame, exits: pl.DataFrame, *, lost_after: int | None = None
) -> pl.DataFrame | None:
    """One row per guest kick matched through dom0's block layer (see the module doc); None
    when the bundle has no block events or no kicks. `lost_after`: the time of the first
    lost record (see `first_loss`); every request with a step at or after it is flagged."""
    blocks = block_pairs(ev)
    k = hvm.kicks(exits)
    if blocks is None or not len(k):
        return None
    req = (
        k.sort("entry_ns", "exit_ns")
        .with_columns(pl.int_range(pl.len()).alias("k"))
        .join(
            blocks.with_columns(pl.int_range(pl.len()).alias("k")),
            on="k",
            how="full",
            coalesce=True,
        )
    )
    responses = (
        ev.filter(
            (pl.col("event") == "pv.hypercall")
            & (pl.col("dom") == 0)
            & fields.hypercall().is_in(RESPONSE_HYPERCALLS)
        )
        .select("ts_ns")
        .collect()
        .sort("ts_ns")
        .select(pl.int_range(pl.len()).alias("r"), pl.col("ts_ns").alias("response_ns"))
    )
    req = (
        req.sort("io_done_ns", nulls_last=True)
        .with_columns(
            pl.when(pl.col("io_done_ns").is_not_null())
            .then(pl.col("io_done_ns").is_not_null().cum_sum() - 1)
            .alias("r")
        )
        .join(responses, on="r", how="left")
    )
    req = _with_interrupts(req, ev)
    order = (
        pl.col("exit_ns").is_not_null() & pl.col("handle_ns").is_not_null()
        & pl.col("io_done_ns").is_not_null() & pl.col("response_ns").is_not_null()
        & pl.col("notify_ns").is_not_null()
    )  # fmt: skip
    causal = (
        (pl.col("exit_ns") <= pl.col("handle_ns")) & (pl.col("handle_ns") <= pl.col("io_done_ns"))
        & (pl.col("io_done_ns") <= pl.col("response_ns")) & (pl.col("response_ns") <= pl.col("notify_ns"))
    )  # fmt: skip
    reason = (
        pl.when(pl.col("exit_ns").is_null()).then(pl.lit("no kick for this block request"))
        .when(pl.col("handle_ns").is_null()).then(pl.lit("no block request for this kick"))
        .when(pl.col("io_done_ns").is_null()).then(pl.lit("no completion (in flight at the end, or lost)"))
        .when(pl.col("response_ns").is_null()).then(pl.lit("no response hypercall"))
        .when(pl.col("notify_ns").is_null()).then(pl.lit("no interrupt injected"))
        .when(~causal).then(pl.lit("records out of causal order (lost records?)"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )  # fmt: skip
    if lost_after is not None:  # after a loss, counting order no longer identifies requests
        late = pl.any_horizontal(
            [pl.col(c) >= lost_after for c in ("exit_ns", "handle_ns", "io_done_ns", "response_ns", "notify_ns")]
        ) | pl.col("exit_ns").is_null()  # fmt: skip
        reason = pl.when(late.fill_null(True)).then(pl.lit(LOST_REASON)).otherwise(reason)
    # the backend's first and last recorded steps stand in for QEMU's pop and fill, so the
    # table has the device-model view's columns (see the module doc)
    return (
        req.sort("k")
        .with_columns(reason.alias("reason"))
        .select(
            pl.int_range(pl.len()).alias("request"), "src_file", "dev",
            pl.lit(0, pl.UInt16).alias("queue"), "op", "bytes", "sector",
            pl.col("exit_ns").alias("kick_ns"), pl.col("handle_ns").alias("pop_ns"), "handle_ns",
            "submit_ns", "io_done_ns", pl.col("response_ns").alias("fill_ns"), "notify_ns",
            *intervals(kick="exit_ns", pop="handle_ns", fill="response_ns"),
            (order & pl.col("reason").is_null()).alias("complete"), "reason",
            pl.col("exit_ns").alias("trap_exit_ns"), pl.col("entry_ns").alias("trap_entry_ns"),
            pl.col("dom").alias("trap_dom"), pl.col("vcpu").cast(pl.Int32).alias("trap_vcpu"),
            pl.col("cpu").alias("trap_cpu"),
            pl.col("kind").alias("kick_kind"), pl.lit(VIEW).alias("view"),
        )
    )  # fmt: skip


BLOCK_VIEW = "block"  # requests.parquet `view`: dom0's block layer alone (no kicks matched)


def block_requests(ev: pl.LazyFrame) -> pl.DataFrame | None:
    """Requests as dom0's block layer sees them, when the guest's kicks are no VM exits (a
    PV guest's event-channel sends are hypercalls, which the capture leaves out: dom0's own
    would flood it): each block_rq_issue with its completion (same sector, same
    occurrence); the issue and the completion stand in for pop and fill. Where the capture
    has them, the kick and the interrupt as the host sees them (`pv_edges`): kick_ns, the
    entry of the backend's event-channel interrupt in dom0 that woke it for this request,
    and notify_ns, the guest vCPU's wake-up by the response."""
    req = block_pairs(ev)
    if req is None:
        return None
    req = req.select(
        pl.int_range(pl.len()).alias("request"), "src_file", "dev", pl.lit(0, pl.UInt16).alias("queue"),
        "op", "bytes", "sector", pl.col("handle_ns").alias("pop_ns"), "submit_ns", "handle_ns", "io_done_ns",
        pl.col("io_done_ns").alias("fill_ns"), (pl.col("io_done_ns") - pl.col("handle_ns")).alias("io_ns"),
        pl.col("io_done_ns").is_not_null().alias("complete"),
        pl.when(pl.col("io_done_ns").is_null()).then(pl.lit("no completion (in flight at the end, or lost)"))
        .otherwise(pl.lit(None, dtype=pl.String)).alias("reason"),
        pl.lit(BLOCK_VIEW).alias("view"),
    )  # fmt: skip
    return pv_edges(ev, req)


# the names a PV backend's driver gives its event-channel interrupt in dom0 (xen-blkback's
# bind_interdomain_evtchn_to_irqhandler_lateeoi(..., "blkif-backend", ...))
BACKEND_IRQS = ("blkif-backend",)
BLOCKED, RUNNABLE = RUNSTATES.index("blocked"), RUNSTATES.index("runnable")
IDLE_DOMAIN = 0x7FFF


def pv_edges(ev: pl.LazyFrame, req: pl.DataFrame) -> pl.DataFrame:
    """`req` with a PV guest's kick, its backend's answer and the guest's interrupt where the
    capture has their records (all on the TSC xentrace stamps: capture sets dom0's trace
    clock to x86-tsc):
    - kick_ns: the last entry of the backend's interrupt (BACKEND_IRQS, dom0's ftrace) at or
      before the request's submission (its insert, else its issue): the kick that woke the
      backend thread which then took the request off the ring. Requests the backend took in
      one pass share it (blkback reads every request the ring holds);
    - fill_ns: the backend's first notification of the guest on that interrupt's channel
      (the notify_remote_via_irq probe) at or after the request's completion: its response
      sent. Responses sent together share it. Without the probe fill_ns stays the
      completion;
    - notify_ns: the guest vCPU's wake-up (runstate blocked -> runnable, xentrace) after the
      response, for a guest that was blocked when it was sent (a running guest takes its
      event without a record). Only with one guest domain in the trace (which one a backend
      serves is not recorded)."""
    irqs = (
        ev.filter((pl.col("event") == "irq.handler_entry") & pl.col("dev").is_in(BACKEND_IRQS))
        .select(pl.col("ts_ns").alias("kick_ns"), pl.col("arg0").alias("irq"))
        .collect()
        .sort("kick_ns")
    )
    if len(irqs):
        at = pl.coalesce("submit_ns", "handle_ns").alias("_at")
        req = _asof(req, at, irqs.select("kick_ns"), "kick_ns", "backward")
        sent = (
            ev.filter(
                (pl.col("event") == "irq.notify_remote")
                & pl.col("arg0").is_in(irqs["irq"].unique().to_list())
            )
            .select(pl.col("ts_ns").alias("_sent"))
            .collect()
        )
        if len(sent):
            req = _asof(req, pl.col("io_done_ns").alias("_at"), sent, "_sent", "forward")
            req = req.with_columns(pl.coalesce("_sent", "fill_ns").alias("fill_ns")).drop("_sent")
    req = _guest_wakes(ev, req)
    extra = []
    if "kick_ns" in req.columns:
        extra.append((pl.col("pop_ns") - pl.col("kick_ns")).alias("kick_to_pop_ns"))
    if "notify_ns" in req.columns:
        extra.append((pl.col("notify_ns") - pl.col("fill_ns")).alias("fill_to_notify_ns"))
    return req.with_columns(extra)


def _asof(req: pl.DataFrame, at: pl.Expr, times: pl.DataFrame, name: str, strategy: str):
    """req with `name`: the time in `times` nearest `at` (its alias `_at`) in `strategy`'s
    direction; requests without `at` get none."""
    have = req.with_columns(at).filter(pl.col("_at").is_not_null()).sort("_at")
    have = have.join_asof(times.sort(name), left_on="_at", right_on=name, strategy=strategy)
    return req.join(have.select("request", name), on="request", how="left")


def _guest_wakes(ev: pl.LazyFrame, req: pl.DataFrame) -> pl.DataFrame:
    """notify_ns (see pv_edges): the one guest domain's vCPU runstates, the state it was in
    when the response was sent, and its wake-up after."""
    runs = (
        ev.filter(pl.col("event") == "sched.runstate_change")
        .select("ts_ns", *(fields.xen("sched.runstate_change", f) for f in ("dom", "old", "new")))
        .filter((pl.col("dom") != 0) & (pl.col("dom") != IDLE_DOMAIN))
        .collect()
        .sort("ts_ns")
    )
    if runs["dom"].n_unique() != 1:
        return req
    wakes = runs.filter((pl.col("old") == BLOCKED) & (pl.col("new") == RUNNABLE))
    blocked = runs.select(
        pl.col("ts_ns").alias("_since"), (pl.col("new") == BLOCKED).alias("_blocked")
    )
    req = _asof(req, pl.col("fill_ns").alias("_at"), wakes.select(pl.col("ts_ns").alias("notify_ns")),
                "notify_ns", "forward")  # fmt: skip
    sent = req.filter(pl.col("fill_ns").is_not_null()).sort("fill_ns")
    sent = sent.join_asof(blocked, left_on="fill_ns", right_on="_since", strategy="backward")
    return (
        req.join(sent.select("request", "_blocked"), on="request", how="left")
        .with_columns(pl.when(pl.col("_blocked")).then("notify_ns").alias("notify_ns"))
        .drop("_blocked")
    )


def block_pairs(ev: pl.LazyFrame) -> pl.DataFrame | None:
    """dom0's block requests in issue order: dev, sector, bytes, op, handle_ns (the issue),
    submit_ns (block_rq_insert) and io_done_ns (block_rq_complete), src_file; the n-th issue
    of a sector is that sector's n-th insert and n-th completion. None without issues."""
    blk = (
        ev.filter(pl.col("event").is_in(["block.rq_insert", "block.rq_issue", "block.rq_complete"]))
        .select(
            "ts_ns",
            "event",
            "dev",
            "addr",
            "size",
            "src_file",
            "src_offset",
            fields.own("block.rq_issue", "write"),
        )
        .collect()
        .sort("ts_ns", "src_offset")
        .with_columns(pl.int_range(pl.len()).over("event", "dev", "addr").alias("nth"))
    )
    issues = blk.filter(pl.col("event") == "block.rq_issue")
    if not len(issues):
        return None
    key = ["dev", "addr", "nth"]

    def times(event: str, name: str) -> pl.DataFrame:
        return blk.filter(pl.col("event") == event).select(*key, pl.col("ts_ns").alias(name))

    return (
        issues.join(times("block.rq_complete", "io_done_ns"), on=key, how="left", maintain_order="left")
        .join(times("block.rq_insert", "submit_ns"), on=key, how="left", maintain_order="left")
        .select(
            "dev", pl.col("addr").alias("sector"), pl.col("size").cast(pl.UInt64).alias("bytes"),
            pl.when(pl.col("write") == 1).then(pl.lit("write")).otherwise(pl.lit("read")).alias("op"),
            pl.col("ts_ns").alias("handle_ns"), "submit_ns", "io_done_ns", "src_file",
        )
    )  # fmt: skip


def first_loss(ev: pl.LazyFrame) -> int | None:
    """The earliest time a record may be missing: for each LOST_RECORDS, the previous record
    of its pCPU (the lost ones lie between); for dom0's ftrace, its first line (it does not
    say where); None without losses."""
    lost = ev.filter(pl.col("event") == "gen.lost_records").select("cpu", "src_offset").collect()
    starts = []
    if len(lost):
        hv = (
            ev.filter((pl.col("source") == "xentrace") & pl.col("cpu").is_in(lost["cpu"].unique().to_list()))
            .select("cpu", "ts_ns", "src_offset", (pl.col("event") == "gen.lost_records").alias("lost"))
            .collect()
            .sort("cpu", "src_offset")
            .with_columns(pl.col("ts_ns").shift(1).over("cpu").alias("before"))
        )  # fmt: skip
        starts.append(int(hv.filter(pl.col("lost"))["before"].fill_null(0).min()))
    return min(starts) if starts else None


def _with_interrupts(req: pl.DataFrame, ev: pl.LazyFrame) -> pl.DataFrame:
    """notify_ns: the interrupt injected on the request's vCPU for its response (the k-th
    response among that vCPU's requests is the k-th injection of the device's vector)."""
    inj = (
        ev.filter(pl.col("event") == "hvm.inj_virq")
        .select("ts_ns", "dom", "vcpu", fields.xen("hvm.inj_virq", "vector"))
        .collect()
    )
    if not len(inj) or req["dom"].null_count() == len(req):
        return req.with_columns(pl.lit(None, pl.Int64).alias("notify_ns"))
    # the device's vector: the one injected about once per request
    guest = req.filter(pl.col("dom").is_not_null())["dom"][0]
    counts = inj.filter(pl.col("dom") == guest).group_by("vector").len()
    vector = counts.with_columns((pl.col("len") - len(req)).abs().alias("d")).sort("d")["vector"][0]
    inj = (
        inj.filter((pl.col("vector") == vector) & (pl.col("dom") == guest))
        .sort("ts_ns")
        .select("vcpu", pl.int_range(pl.len()).over("vcpu").alias("j"), pl.col("ts_ns").alias("notify_ns"))
    )  # fmt: skip
    return (
        req.sort("response_ns", nulls_last=True)
        .with_columns(
            pl.when(pl.col("response_ns").is_not_null() & pl.col("vcpu").is_not_null())
            .then(pl.col("response_ns").is_not_null().cum_sum().over("vcpu") - 1)
            .alias("j")
        )
        .join(inj, on=["vcpu", "j"], how="left")
    )
