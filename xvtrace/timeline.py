"""Per-request timelines: one row per request with its phase timestamps, from a bundle's
event table (lazy polars).

This first stage reconstructs requests as the device model sees them, from QEMU's trace
events alone (what works on any QEMU capture): an element's life from the guest's kick
(virtio_queue_notify) through virtqueue_pop, the block request (virtio_blk_handle_*,
rw_complete, req_complete) to virtqueue_fill and the interrupt (virtio_notify[_irqfd]).
Elements are matched as QEMU reports them: pointers are reused, so the k-th pop of a
(device, queue, element) pairs with its k-th fill; notifications are suppressed and
coalesced, so a fill's notify is the first one at or after it on its queue.

Requests missing events are kept and flagged (`complete` False, `reason`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import polars as pl

from xvtrace import derived, ioreq_join
from xvtrace.clock import (
    align_device_model,
    evtchn_pairs,
    notify_pairs,
    to_device_model,
)
from xvtrace.hv_timeline import block_requests, first_loss, hypervisor_requests
from xvtrace.ide_timeline import ide_requests
from xvtrace.intervals import intervals

REQUESTS = "requests.parquet"
IOREQS = ioreq_join.IOREQS
SECTION = "timeline"  # the manifest section holding the facts, the key and the files
VERSION = 1  # of the reconstruction: bump when its output changes
DM_VIEW = "device-model"  # requests.parquet `view` of rows from QEMU's trace events
DM_VIEW_NAME = "device model (QEMU trace events)"
KEY = ["src_file", "dev", "queue", "addr"]


def _events(q: pl.LazyFrame, names: list[str], *cols: pl.Expr) -> pl.LazyFrame:
    return q.filter(pl.col("event").is_in(names)).select(*cols)


def qemu_requests(ev: pl.LazyFrame) -> pl.LazyFrame:
    """One row per virtqueue element QEMU popped (see the module doc)."""
    q = ev.filter(pl.col("source") == "qemu")
    pops = (
        _events(
            q,
            ["qemu.virtqueue_pop"],
            *[pl.col(c) for c in KEY],
            pl.col("ts_ns").alias("pop_ns"),
            pl.col("src_offset").alias("pop_off"),
            pl.col("arg2").alias("in_num"),
            pl.col("arg3").alias("out_num"),
        )
        .sort("src_file", "pop_off")
        .with_columns(pl.int_range(pl.len()).over(KEY).alias("k"))
    )
    fills = (
        _events(
            q,
            ["qemu.virtqueue_fill"],
            *[pl.col(c) for c in KEY],
            pl.col("ts_ns").alias("fill_ns"),
            pl.col("src_offset").alias("fill_off"),
            pl.col("size").alias("fill_len"),
        )
        .sort("src_file", "fill_off")
        .with_columns(pl.int_range(pl.len()).over(KEY).alias("k"))
    )
    req = pops.join(fills, on=[*KEY, "k"], how="left", nulls_equal=True).sort("src_file", "pop_off")

    def after_pop(names, *cols, by=("src_file", "dev", "addr")):
        """The first such event of the same request at or after its pop (in file order)."""
        right = _events(q, names, pl.col("src_file"), pl.col("dev"), pl.col("addr"),
                        pl.col("src_offset").alias("_off"), *cols).sort("_off")  # fmt: skip
        return right, list(by)

    handles, by = after_pop(
        ["qemu.virtio_blk_handle_read", "qemu.virtio_blk_handle_write"],
        pl.col("ts_ns").alias("handle_ns"),
        pl.when(pl.col("event") == "qemu.virtio_blk_handle_read").then(pl.lit("read")).otherwise(pl.lit("write")).alias("blk_op"),
        pl.col("size").alias("blk_bytes"), pl.col("arg2").alias("sector"),
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
    kicks = _events(q, ["qemu.virtio_queue_notify"], pl.col("src_file"), pl.col("dev"), pl.col("queue"),
                    pl.col("ts_ns").alias("kick_ns"), pl.col("src_offset").alias("_koff")).sort("_koff")  # fmt: skip
    req = req.join_asof(kicks, left_on="pop_off", right_on="_koff", by=["src_file", "dev", "queue"],
                        strategy="backward", check_sortedness=False).rename({"_koff": "kick_off"})  # fmt: skip
    irqs = _events(q, ["qemu.virtio_notify", "qemu.virtio_notify_irqfd"], pl.col("src_file"), pl.col("dev"),
                   pl.col("queue"), pl.col("ts_ns").alias("notify_ns"), pl.col("src_offset").alias("_noff")).sort("_noff")  # fmt: skip
    req = (
        req.sort("fill_off", nulls_last=True)
        .join_asof(
            irqs,
            left_on="fill_off",
            right_on="_noff",
            by=["src_file", "dev", "queue"],
            strategy="forward",
            check_sortedness=False,
        )
        .drop("_noff")
    )
    blk = pl.col("blk_op").is_not_null()
    op = (
        pl.when(blk).then(pl.col("blk_op"))
        .when((pl.col("in_num") == 0) & (pl.col("out_num") > 0)).then(pl.lit("tx"))
        .when((pl.col("out_num") == 0) & (pl.col("in_num") > 0)).then(pl.lit("rx"))
        .otherwise(pl.lit("other"))
    )  # fmt: skip
    reason = (
        pl.when(pl.col("fill_ns").is_null()).then(pl.lit("no fill (in flight at the end, or lost)"))
        .when(pl.col("pop_ns").is_null()).then(pl.lit("no timestamps"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )  # fmt: skip
    return (
        req.sort("src_file", "pop_off")
        .with_columns(op.alias("op"), reason.alias("reason"))
        .select(
            pl.int_range(pl.len()).alias("request"),
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


@dataclass(frozen=True)
class Timeline:
    """A bundle's reconstructed requests and what the reconstruction found (`facts`: the
    view used, counts, incomplete requests by reason, the clocks and the IOREQ join)."""

    requests: pl.DataFrame
    facts: dict
    computed: bool  # False when served from the bundle's stored, still valid, entry

    @property
    def view(self) -> str:
        return self.facts["view"]

    @property
    def device_model_clock(self) -> dict | None:
        return self.facts.get("device_model_clock")

    @property
    def ioreqs(self) -> pl.DataFrame | None:
        return None if self._ioreqs_path is None else pl.read_parquet(self._ioreqs_path)

    _ioreqs_path: Path | None = None


def load(bundle, *, rebuild: bool = False) -> Timeline:
    """The bundle's timeline: its stored entry when still valid for these events, else
    reconstructed and stored (requests.parquet, ioreqs.parquet, the manifest's section)."""
    want = derived.key(bundle, SECTION, VERSION)
    facts = None if rebuild else derived.fresh(bundle, SECTION, want)
    if facts is not None:
        req, computed = pl.read_parquet(bundle.path / REQUESTS), False
    else:
        facts, req, ioreqs = reconstruct(bundle)
        facts = derived.store(bundle, SECTION, want, facts, {REQUESTS: req, IOREQS: ioreqs})
        computed = True
    ipath = bundle.path / IOREQS if IOREQS in facts["files"] else None
    return Timeline(req, facts, computed, ipath)


def current_key(bundle) -> str | None:
    """The key of the bundle's timeline if it is stored and valid for its events, else None."""
    want = derived.key(bundle, SECTION, VERSION)
    return want if derived.fresh(bundle, SECTION, want) is not None else None


def build(bundle) -> pl.DataFrame:
    """Reconstruct the bundle's requests anew and store them; the requests."""
    return load(bundle, rebuild=True).requests


def reconstruct(bundle) -> tuple[dict, pl.DataFrame, pl.DataFrame | None]:
    """The bundle's requests from its events: (facts, requests, joined IOREQs or None).
    The facts hold the counts, incomplete requests by reason and the clocks."""
    ev = bundle.events()
    acc = ioreq_join.accesses(ev)  # read once: the clock fits and the join all use them
    req = qemu_requests(ev).collect().with_columns(pl.lit(DM_VIEW).alias("view"))
    dm_clock, view, ide = None, DM_VIEW_NAME, None
    lost = first_loss(ev)
    # the IOREQ-order clock, fitted at most once whichever step asks for it first
    sequence_clock = cache(lambda: _sequence_clock(acc, lost))
    if len(req):
        pairs, lower = _before(lost, notify_pairs(ev, acc.hv)), None
        if pairs is None:  # no IOREQs: an event-channel kick (gsoc-xenbus style)?
            found = evtchn_pairs(ev)
            pairs, lower = found if found else (None, None)
            pairs, lower = _before(lost, pairs), _before(lost, lower, "resp_ns")
        dm_clock = align_device_model(pairs, lower)
        if lower is None and dm_clock is not None and not dm_clock["consistent"]:
            # The kicks' IOREQs zipped with their traps fit no clock: a trace edge shifted
            # them, or QEMU processed the queue after completing the IOREQ (ioeventfd).
            # Align on every IOREQ by order instead; each kick then gets its trap from the
            # IOREQ join below.
            seq = sequence_clock()
            if seq is not None and seq["consistent"]:
                dm_clock, pairs = seq, None
        if dm_clock is not None and pairs is not None:
            req = (
                with_traps(req, pairs, dm_clock)
                if lower is None
                else with_kicks(req, pairs, dm_clock)
            )
    elif (ide := ide_requests(ev)) is not None:  # an emulated IDE disk
        req, view = ide, "device model (QEMU IDE trace events)"
    else:  # a backend that logs nothing per request: the hypervisor's and dom0's records
        hv = hypervisor_requests(ev, lost_after=lost if _ftrace_intact(bundle) else 0)
        if hv is not None and hv["complete"].any():
            req, view = hv, "hypervisor (xentrace) + dom0 block layer (ftrace)"
        elif (blk := block_requests(ev)) is not None:
            req, view = (
                blk,
                "dom0 block layer only (ftrace): the guest's kicks could not be matched",
            )
    join_clock = dm_clock
    if dm_clock is None or not dm_clock["consistent"]:
        # No clock from the requests' kicks, or none that fits: the IOREQs in order, which
        # the join below then uses; fitted once, like the kicks' fit, before any loss.
        join_clock = sequence_clock()
        dm_clock = join_clock or dm_clock
    ioreqs, joined = ioreq_join.build(acc, join_clock)
    if joined is not None and (
        ide is not None or (view == DM_VIEW_NAME and "trap_exit_ns" not in req.columns)
    ):
        req = ioreq_join.with_kick_traps(req, joined)
        if ide is None:
            dm_clock = dm_clock | {"queue_processing": _queue_processing(req, dm_clock)}
    if joined is not None and view == DM_VIEW_NAME:
        req = ioreq_join.with_interrupt_acks(req, joined)
    reasons = req.filter(~pl.col("complete")).group_by("reason").len()
    facts = {
        "view": view,
        "requests": len(req),
        "complete": int(req["complete"].sum()),
        "incomplete": {r: int(n) for r, n in reasons.iter_rows()},
        "packet_clock": align_packets(req, ev),
        "device_model_clock": dm_clock,
        "ioreq_join": ioreqs,
    }
    return facts, req, joined


def _queue_processing(req: pl.DataFrame, clock: dict) -> str:
    """ "deferred" when most pops come after their kick's vCPU re-entered (beyond the clock's
    bounds): QEMU completed the IOREQ first and processed the queue from its main loop;
    otherwise "in the IOREQ"."""
    late = req.filter(pl.col("trap_entry_ns").is_not_null()).select(
        (
            pl.col("pop_ns") > pl.col("trap_entry_ns") + (clock["upper_ns"] - clock["lower_ns"])
        ).mean()
    )
    return "deferred" if late.item() is not None and late.item() > 0.5 else "in the IOREQ"


def _sequence_clock(acc, lost: int | None) -> dict | None:
    """The device-model clock from every IOREQ inside its trap, paired in order, before the
    first lost record. When none lies before it (a pCPU's buffer overflowed at the start),
    all of them: the pairing keeps only a run that agrees access for access, which a loss
    inside the run would break, so those pairs are still likely right."""
    pairs = ioreq_join.sequence_pairs(acc)
    early = _before(lost, pairs)
    return align_device_model(
        early if early is not None and len(early) else pairs, method=ioreq_join.SEQUENCE_METHOD
    )


def _before(lost: int | None, pairs: pl.DataFrame | None, col: str = "entry_ns"):
    """The pairs before the first lost record: they are matched by count, which a loss shifts."""
    return pairs if pairs is None or lost is None else pairs.filter(pl.col(col) < lost)


def with_kicks(req: pl.DataFrame, pairs: pl.DataFrame, clock: dict) -> pl.DataFrame:
    """The hypervisor's side of event-channel kicks: the VMCALL's exit and re-entry of the
    kick each request's pop followed (matched on the virtio_queue_notify it was logged as)."""
    kicks = pairs.select(
        pl.col("handle_off").alias("kick_off"),
        to_device_model(pl.col("exit_ns"), clock).alias("trap_exit_ns"),
        to_device_model(pl.col("entry_ns"), clock).alias("trap_entry_ns"),
        pl.col("dom").alias("trap_dom"), pl.col("vcpu").alias("trap_vcpu"), pl.col("cpu").alias("trap_cpu"),
    )  # fmt: skip
    return req.join(kicks, on="kick_off", how="left").sort("request")


def _ftrace_intact(bundle) -> bool:
    """False when dom0's ftrace reported lost events (it does not say where)."""
    return not any(
        s.get("format") == "ftrace" and s.get("lost") for s in bundle.manifest.get("sources", [])
    )


def align_packets(req: pl.DataFrame, ev: pl.LazyFrame, *, window: int = 64) -> dict | None:
    """Offset of the packet clock against the device model's, found by matching, not by
    clock: the k-th frame the guest received fills the (k + s)-th rx buffer, and a frame's
    length plus the 12-byte virtio_net_hdr is that fill's length. Returns the offset
    (median of fill - packet time over matched pairs), its residual bounds, the shift s and
    the match count; None without packets or rx requests."""
    rx = req.filter(pl.col("op") == "rx").sort("fill_ns")
    pk = ev.filter(pl.col("event") == "net.packet").select("ts_ns", "size", "addr").collect()
    if not len(rx) or not len(pk):
        return None
    # the two busiest source MACs are the guest and its peer: try each as the guest's
    macs = pk.group_by("addr").len().sort(["len", "addr"], descending=[True, False])["addr"]
    lens = rx["fill_len"].to_numpy().astype(np.int64) - 12
    best = None
    for mac in macs.to_list()[:2]:  # received frames are those not from the guest
        got = pk.filter(pl.col("addr") != mac).sort("ts_ns")
        plen = got["size"].to_numpy().astype(np.int64)
        t_pk, t_fill = got["ts_ns"].to_numpy(), rx["fill_ns"].to_numpy()
        for s in range(-window, window + 1):  # per candidate shift, vectorized inside
            a = np.arange(max(0, -s), min(len(plen), len(lens) - s))
            same = plen[a] == lens[a + s] if len(a) else np.zeros(0, bool)
            if not same.any():
                continue
            diff = t_fill[a + s][same] - t_pk[a][same]
            # most matches first; on a tie (frames all of one size) the tighter pairing:
            # a frame and its own buffer are a backend's latency apart, others a round trip
            score = (int(same.sum()), -float(np.subtract(*np.percentile(diff, [75, 25]))))
            if best is None or score > best[0]:
                best = (score, s, diff)
    if best is None:
        return None
    (_, _), s, diff = best
    offset = int(np.median(diff))
    return {
        "offset_ns": offset,  # add to a packet's time to get the device model's clock
        "residual_min_ns": int(diff.min() - offset),
        "residual_max_ns": int(diff.max() - offset),
        "shift": int(s),
        "matched": len(diff),
        "rx_requests": len(rx),
        "method": "received frame length + 12 == rx fill length, in order",
    }


def with_traps(req: pl.DataFrame, pairs: pl.DataFrame, clock: dict) -> pl.DataFrame:
    """Add the hypervisor's side of each request's kick: the notify trap's VM exit and the
    vCPU's re-entry after the IOREQ (trap_exit_ns, trap_entry_ns on the device model's
    clock), from the IOREQ that contains the request's pop."""
    spans = pairs.sort("handle_off").select(
        pl.col("handle_off"),
        to_device_model(pl.col("exit_ns"), clock).alias("trap_exit_ns"),
        to_device_model(pl.col("entry_ns"), clock).alias("trap_entry_ns"),
        pl.col("dom").alias("trap_dom"),
        pl.col("vcpu").alias("trap_vcpu"),
        pl.col("cpu").alias("trap_cpu"),
    )
    out = req.sort("pop_off").join_asof(
        spans, left_on="pop_off", right_on="handle_off", strategy="backward"
    )
    # only a pop inside the IOREQ's handling belongs to its trap (a later pop, e.g. after a
    # device completion, was not kicked by it)
    kicked = pl.col("trap_entry_ns").is_not_null() & (pl.col("pop_ns") <= pl.col("trap_entry_ns"))
    return (
        out.with_columns(
            [
                pl.when(kicked).then(pl.col(c)).alias(c)
                for c in ("trap_exit_ns", "trap_entry_ns", "trap_dom", "trap_vcpu", "trap_cpu")
            ]
        )
        .drop("handle_off")
        .sort("request")
    )
