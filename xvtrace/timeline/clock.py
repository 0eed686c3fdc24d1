"""Clock alignment between the hypervisor (xentrace TSC, through cpu_khz) and the device model
(QEMU's log clock), from causally ordered pairs of events, not from the clocks themselves.

For a virtio device served through IOREQs (virtio-mmio, or virtio-pci on an HVM guest) every
guest kick is a trap the hypervisor records (a VMEXIT with an MMIO or port write to the
queue-notify address: those of the IOREQs in which QEMU kicked a queue) and an IOREQ the
device model records (handle_ioreq for that address) after it; and the vCPU re-enters (VMENTRY) only after the device model is done with
that IOREQ (its last event before the next one). With D = device-model time - hypervisor
time for the same instant:

    handle_ioreq(dm) >= exit(hv)          =>  D <= min(dm_handle - hv_exit)
    vmentry(hv) >= last event of the IOREQ(dm)  =>  D >= max(dm_last - hv_entry)

so D lies in [lower, upper]; the estimate is the middle and the bounds are its residual.

Clocks also drift apart (QEMU's clock is the host's CLOCK_REALTIME, slewed by NTP; the TSC
through a nominal cpu_khz is off by its calibration error), so D is a line, D(t) = offset +
drift * t over hypervisor time t. Every pair bounds the line from one side at one instant;
the feasible lines form a convex set. For a slope b the offsets that fit lie between the
lower hull max(l_j - b t_j) and the upper hull min(u_i - b t_i). When a constant offset
(b = 0) fits every pair it is taken: a slope fitted inside a wide feasible set would follow
the extremes of a few pairs, not the clocks. Otherwise the gap between the hulls is a
concave function of b, so a golden-section search finds the slope that leaves the widest
gap (the centre of the feasible set, as in convex-hull clock synchronisation), and the
offset is the middle of that gap. A negative gap means no line fits: the pairs contradict
each other (wrong pairing, or a clock that jumped) and the result says so.
Pairs are taken per vCPU in order: the vCPU's k-th notify trap with the k-th IOREQ from its
ioreq slot (QEMU names the slot's ioreq_t pointer; slots are in vCPU order).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from xvtrace.bundle import file_order
from xvtrace.parsers import fields
from xvtrace.parsers.schema import timestamp_tick
from xvtrace.timeline import hvm

EVENT_CHANNEL_OP = 32  # xen.h __HYPERVISOR_event_channel_op

# what QEMU does inside a QueueNotify IOREQ before it completes it, when it processes the
# queue in the notify write itself (virtio-mmio under Xen: no ioeventfd)
IOREQ_HANDLING = [
    "qemu.handle_ioreq", "qemu.virtio_mmio_write_offset", "qemu.virtio_queue_notify",
    "qemu.virtqueue_alloc_element", "qemu.virtqueue_pop", "qemu.virtio_blk_handle_read",
    "qemu.virtio_blk_handle_write", "qemu.xen_map_cache", "qemu.xen_map_cache_return",
]  # fmt: skip


def notify_pairs(
    ev: pl.LazyFrame, hv: pl.DataFrame | pl.LazyFrame | None = None, scratch: Path | None = None
) -> pl.DataFrame | None:
    """Each QueueNotify trap with its IOREQ: dom, vcpu, cpu (the pCPU), exit_ns, entry_ns
    (hypervisor clock) and handle_off, handle_ns, last_ns (device-model clock: the last of
    the IOREQ's IOREQ_HANDLING events); None without both sides. `hv`: the hypervisor's
    emulated accesses (timeline.hvm.accesses), when the caller has them already; `scratch`:
    a directory for the handling events on their way through."""
    if hv is None:
        hv = hvm.accesses(hvm.handled(ev))
    # the IOREQs, and the other events of their handling: each belongs to the last IOREQ
    # before it in its log, one log at a time (a vhost-user back-end's log beside its
    # front-end's has none of them: its events are no IOREQ's). The IOREQs are held, the
    # other events streamed in file order (held whole, they took 0.55 GB at 1 M requests).
    qemu = ev.filter(pl.col("source") == "qemu")
    ioreqs = qemu.filter(pl.col("event") == "qemu.handle_ioreq")
    logs = ioreqs.select(pl.col("src_file").unique().sort()).collect().to_series().to_list()
    # Two passes, each IOREQ's columns read when they are used (the IOREQs held whole with
    # their last times, then copied for the spans, were 0.75 GB at 15 M): the last time of
    # every IOREQ's handling and the addresses kicked, then the spans of those IOREQs.
    found = []  # per log: its name, each IOREQ's address and last time (file order)
    kicked = set()
    for log in logs:
        rest = qemu.filter(pl.col("event").is_in(IOREQ_HANDLING[1:]) & (pl.col("src_file") == log))
        rest = rest.select(
            "ts_ns", "src_offset", (pl.col("event") == "qemu.virtio_queue_notify").alias("notify")
        )
        # (through `scratch`, the handling events are written before the IOREQs are read:
        # the scan's memory is free again when they are)
        through = None if scratch is None else scratch / "ioreq_handling.parquet"
        handling = file_order.batches(rest, through)
        io = _in_file_order(
            ioreqs.filter(pl.col("src_file") == log).select("ts_ns", "addr", "src_offset").collect()
        )
        last, notified = _handling(io, handling)
        kicked.update(io["addr"].filter(pl.Series(notified)).drop_nulls().unique().to_list())
        found.append((log, io["addr"], last))
        del io, notified
    if not found:
        return None
    # the queue-notify addresses: those of the IOREQs in whose handling QEMU kicked a queue
    # (virtio-mmio QueueNotify, a virtio-pci notify BAR or port; no layout assumed)
    notify_addrs = sorted(kicked)
    # device model: each notify IOREQ's span = its handle_ioreq .. the last event of its
    # synchronous handling (the queue kick QEMU processes before completing the IOREQ)
    spans = []
    for log, addr, last in found:
        at = addr.is_in(notify_addrs).fill_null(False).to_numpy()  # (as the filter below)
        mine = _in_file_order(
            ioreqs.filter((pl.col("src_file") == log) & pl.col("addr").is_in(notify_addrs))
            .select(fields.qemu("handle_ioreq", "req").alias("slot"), "src_offset", "ts_ns")
            .collect()
        )
        spans.append(mine.select(
            "slot", pl.col("src_offset").alias("handle_off"), pl.col("ts_ns").alias("handle_ns"),
            pl.Series("last_ns", last[at]),
        ))  # fmt: skip
    del found, addr, last, at
    spans = pl.concat(spans)
    # hypervisor: each notify trap = the MMIO or port write to such an address, with the VM
    # exit it came in with and the vCPU's entry after it
    traps = hv.lazy().filter(
        (pl.col("dir") == "write") & pl.col("addr").is_in(notify_addrs) & pl.col("entry_ns").is_not_null()
        & pl.col("dom").is_not_null() & pl.col("vcpu").is_not_null()
    ).select("dom", "vcpu", "cpu", "exit_ns", "entry_ns").collect()  # fmt: skip
    slots = sorted(spans["slot"].unique().to_list())
    vcpus = traps.select("dom", "vcpu").unique().sort("dom", "vcpu").rows()
    out = []
    for (dom, vcpu), slot in zip(vcpus, slots, strict=False):  # per vCPU, not per request
        # (one vCPU, one slot: all of them, no copy)
        t = (
            traps
            if len(vcpus) == 1
            else traps.filter((pl.col("dom") == dom) & (pl.col("vcpu") == vcpu))
        )
        s = spans if len(slots) == 1 else spans.filter(pl.col("slot") == slot)
        k = min(len(t), len(s))
        out.append(pl.concat([t.head(k), s.head(k).drop("slot")], how="horizontal"))
    return pl.concat(out) if out else None


def _handling(io: pl.DataFrame, batches) -> tuple[np.ndarray, np.ndarray]:
    """Per IOREQ of one log (`io`, in file order): the time of the last event of its
    handling (its own when none) and whether a queue notify was among them, from `batches`
    of the log's other handling events in file order (ts_ns, src_offset, notify)."""
    offsets = io["src_offset"].to_numpy()
    last = io["ts_ns"].to_numpy().copy()
    notified = np.zeros(len(io), bool)
    for batch in batches:
        owner = np.searchsorted(offsets, batch["src_offset"].to_numpy(), "right") - 1
        handled = owner >= 0  # events before the log's first IOREQ belong to none
        owner, ts = owner[handled], batch["ts_ns"].to_numpy()[handled]
        notified[owner[batch["notify"].to_numpy()[handled]]] = True
        if len(owner):  # `owner` rises through the log: each IOREQ's events are one run
            runs = np.flatnonzero(np.diff(owner, prepend=-1))
            at = owner[runs]
            last[at] = np.maximum(last[at], np.maximum.reduceat(ts, runs))
    return last, notified


def _in_file_order(df: pl.DataFrame) -> pl.DataFrame:
    """`df` by src_offset: as it is when the table's time order kept the log's (the
    usual case: no sort, no copy)."""
    return df if df["src_offset"].is_sorted() else df.sort("src_offset")


@dataclass(frozen=True)
class Clock:
    """The device model's clock against the hypervisor's: device-model time = hypervisor
    time + offset_ns + drift_ppm * 1e-6 * hypervisor time, the offset within [lower_ns,
    upper_ns] at that drift (a negative width, `consistent` False: no line fits every
    pair). Kept in the manifest as a dict (`to_dict`)."""

    offset_ns: int  # add to a hypervisor time to get device-model time
    drift_ppm: float
    lower_ns: int
    upper_ns: int
    consistent: bool
    pairs: int
    outliers: int = 0  # pairs left out as contradicting the rest (see _most_agreeing)
    outliers_beyond_ns: int = 0  # the farthest of them from the bounds
    device_model_resolution_ns: int = 1
    method: str = ""
    queue_processing: str | None = None  # "deferred" or "in the IOREQ", where measured

    @property
    def half_width_ns(self) -> float:
        return (self.upper_ns - self.lower_ns) / 2

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["queue_processing"] is None:
            del d["queue_processing"]
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> Clock | None:
        return None if d is None else cls(**d)


MAX_DRIFT = 1e-2  # 1 %: two TSC calibrations (Xen's cpu_khz, dom0's clock) disagreed by 0.19 % on
# a loaded nested-TCG test host; NTP-disciplined clocks on hardware stay within 500 ppm


def fit_line(t_up, up, t_low, low, *, max_drift: float = MAX_DRIFT, iters: int = 100):
    """The line D(t) = offset + drift * t that keeps D(t_up) <= up and D(t_low) >= low with
    the widest margin (see the module doc). Returns (drift, lower, upper): for that drift the
    offset lies in [lower, upper] (integers); lower > upper when no line fits."""
    # offsets are epoch-sized (1.8e18 ns): take out a base in integers first, or float64
    # would round them to 256 ns
    base = int(np.min(up))
    t_up, t_low = np.asarray(t_up, np.float64), np.asarray(t_low, np.float64)
    up = (np.asarray(up, np.int64) - base).astype(np.float64)
    low = (np.asarray(low, np.int64) - base).astype(np.float64)

    def band(b: float) -> tuple[float, float]:
        return float((low - b * t_low).max()), float((up - b * t_up).min())

    def gap(b: float) -> float:
        lo, hi = band(b)
        return hi - lo

    # a constant offset when it fits every pair (the simplest line that does)
    drift = 0.0 if gap(0.0) >= 0 else _widest(gap, max_drift, iters)
    lo, hi = band(drift)
    return drift, base + int(np.floor(lo)), base + int(np.ceil(hi))


def _widest(gap, max_drift: float, iters: int) -> float:
    """The slope in [-max_drift, max_drift] with the widest gap (golden-section search of
    a concave function)."""
    a, b = -max_drift, max_drift
    golden = (np.sqrt(5) - 1) / 2
    x1, x2 = b - golden * (b - a), a + golden * (b - a)
    g1, g2 = gap(x1), gap(x2)
    for _ in range(iters):  # per search step, each vectorized over the pairs
        if g1 < g2:
            a, x1, g1 = x1, x2, g2
            x2 = a + golden * (b - a)
            g2 = gap(x2)
        else:
            b, x2, g2 = x2, x1, g1
            x1 = b - golden * (b - a)
            g1 = gap(x1)
    return (a + b) / 2


def evtchn_pairs(
    ev: pl.LazyFrame, exits: pl.DataFrame | None = None
) -> tuple[pl.DataFrame, pl.DataFrame] | None:
    """For guests that kick with an event-channel hypercall (no IOREQ): the k-th kick's
    VMCALL (hypervisor) comes before QEMU's k-th virtio_queue_notify (device model), and
    QEMU's k-th virtio_notify comes before dom0's k-th event_channel_op, its notification to
    the guest. Returns (kicks: dom, vcpu, cpu, exit_ns, entry_ns, handle_off, handle_ns;
    responses: resp_ns, last_ns), or None without both sides."""
    exits = hvm.handled(ev) if exits is None else exits
    k = hvm.kicks(exits).filter(pl.col("kind") == "hypercall").sort("entry_ns", "exit_ns")
    q = (
        ev.filter(pl.col("event").is_in(["qemu.virtio_queue_notify", "qemu.virtio_notify"]))
        .select("event", "ts_ns", "src_offset")
        .collect()
        .sort("src_offset")
    )
    resp = (
        ev.filter((pl.col("event") == "pv.hypercall") & (pl.col("dom") == 0) & (fields.hypercall() == EVENT_CHANNEL_OP))
        .select(pl.col("ts_ns").alias("resp_ns"))
        .collect()
        .sort("resp_ns")
    )  # fmt: skip
    qn = q.filter(pl.col("event") == "qemu.virtio_queue_notify")
    vn = q.filter(pl.col("event") == "qemu.virtio_notify")
    if not len(k) or not len(qn):
        return None
    n, m = min(len(k), len(qn)), min(len(resp), len(vn))
    pairs = pl.concat([k.head(n).drop("kind"), qn.head(n).select(pl.col("src_offset").alias("handle_off"),
                                                                 pl.col("ts_ns").alias("handle_ns"))],
                      how="horizontal")  # fmt: skip
    lower = pl.concat(
        [resp.head(m), vn.head(m).select(pl.col("ts_ns").alias("last_ns"))], how="horizontal"
    )
    return pairs, lower


PAIR_TIMES = ("exit_ns", "entry_ns", "handle_ns", "last_ns")


def _timed(pairs: pl.DataFrame, times: list[str]) -> pl.DataFrame:
    """The pairs with all of `times` (no copy of 5 M pairs when they all have them)."""
    return (
        pairs.drop_nulls(times)
        if pairs.select(times).null_count().sum_horizontal().item()
        else pairs
    )


def align_device_model(
    pairs: pl.DataFrame | None, lower: pl.DataFrame | None = None, *, method: str | None = None
) -> Clock | None:
    """The device model's clock against the hypervisor's, from `notify_pairs` (or, with
    `lower`, from `evtchn_pairs`): device-model time = hypervisor time + offset_ns +
    drift_ppm * 1e-6 * hypervisor time, with the offset's bounds at that drift; None when
    the bundle lacks either side of the pairs (a stamp missing on either side, e.g. QEMU
    logging without timestamps, leaves that pair out: it bounds nothing)."""
    if pairs is not None:
        pairs = _timed(pairs, [c for c in PAIR_TIMES if c in pairs.columns])
    if lower is not None:
        lower = _timed(lower, ["resp_ns", "last_ns"])
    if pairs is None or not len(pairs) or (lower is not None and not len(lower)):
        return None
    # QEMU's log stamps are gettimeofday truncated to the microsecond: an event logged at
    # t happened in [t, t + resolution), which loosens the upper bounds by that much
    res = timestamp_tick(pairs["handle_ns"].to_numpy())
    ioreq = lower is None
    t_low, dm_low = (
        (pairs["entry_ns"], pairs["last_ns"]) if ioreq else (lower["resp_ns"], lower["last_ns"])
    )
    up = (pairs["handle_ns"] - pairs["exit_ns"]).to_numpy() + (res - 1)
    low = (dm_low - t_low).to_numpy()
    drift, lower_ns, upper_ns = fit_line(pairs["exit_ns"].to_numpy(), up, t_low.to_numpy(), low)
    outliers = beyond = 0
    if lower_ns > upper_ns and ioreq:  # each pair is one interval for the offset
        keep = _most_agreeing(low, up)
        if keep.sum() >= (1 - MAX_OUTLIERS) * len(keep):
            outliers = int((~keep).sum())
            kept = pairs.filter(pl.Series(keep))
            drift, lower_ns, upper_ns = fit_line(
                kept["exit_ns"].to_numpy(), up[keep], kept["entry_ns"].to_numpy(), low[keep]
            )
            # how far the left-out pairs are from the line: the bounds hold for the pairs
            # kept; if those few were real (a clock that is not quite a line), this is the
            # error they would add
            out = ~keep
            t_up, t_lo = pairs["exit_ns"].to_numpy()[out], t_low.to_numpy()[out]
            beyond = int(max(
                (lower_ns + drift * t_up - up[out]).max(), (low[out] - upper_ns - drift * t_lo).max(), 0
            ))  # fmt: skip
    method = (
        "MMIO QueueNotify traps (xentrace) before handle_ioreq (QEMU); VMENTRY after the IOREQ's last event"
        if ioreq else
        "event-channel kicks (VMCALL, xentrace) before virtio_queue_notify (QEMU); virtio_notify (QEMU) before dom0's event_channel_op"
    ) if method is None else method  # fmt: skip
    method += "; widest-margin line"
    return Clock(
        offset_ns=(lower_ns + upper_ns) // 2,
        drift_ppm=round(drift * 1e6, 4),
        lower_ns=lower_ns,
        upper_ns=upper_ns,
        consistent=lower_ns <= upper_ns,
        pairs=len(pairs),
        outliers=outliers,
        outliers_beyond_ns=beyond,
        device_model_resolution_ns=res,
        method=method,
    )


MAX_OUTLIERS = 0.05  # at most this share of the pairs may be left out, else it is no fit


def _most_agreeing(low: np.ndarray, up: np.ndarray) -> np.ndarray:
    """The pairs whose offset intervals [low, up] contain the offset most of them contain
    (a sweep over the sorted ends): when a few pairs contradict the rest (a clock step in
    dom0, a pair matched across a trace edge) the rest still fit a line, and the result
    says how many were left out."""
    ends = np.concatenate([low, up])
    kind = np.concatenate([np.zeros(len(low)), np.ones(len(up))])  # opens sort before closes
    order = np.lexsort((kind, ends))
    depth = np.cumsum(np.where(kind[order] == 0, 1, -1))
    best = ends[order][int(np.argmax(depth))]
    return (low <= best) & (up >= best)


def to_device_model(hv_ns: pl.Expr, clock: Clock) -> pl.Expr:
    """A hypervisor-clock time expression on the device model's clock (`align_device_model`)."""
    shifted = hv_ns + clock.offset_ns
    if not clock.drift_ppm:
        return shifted
    return shifted + (hv_ns.cast(pl.Float64) * (clock.drift_ppm * 1e-6)).round().cast(pl.Int64)
