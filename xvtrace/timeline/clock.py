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

import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from xvtrace.bundle import file_order
from xvtrace.bundle.frame_sink import SPILL_OPTIONS, sink_frames
from xvtrace.parsers import fields
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
) -> pl.DataFrame | pl.LazyFrame | None:
    """Each QueueNotify trap with its IOREQ: dom, vcpu, cpu (the pCPU), exit_ns, entry_ns
    (hypervisor clock) and handle_off, handle_ns, last_ns (device-model clock: the last of
    the IOREQ's IOREQ_HANDLING events); None without both sides. `hv`: the hypervisor's
    emulated accesses (timeline.hvm.accesses), when the caller has them already. With a
    directory `scratch`, the pairs are written to NOTIFY_PAIRS there and scanned from it;
    without, returned as a frame.

    Nothing is held per IOREQ or pair: each log's IOREQs and the other events of their
    handling are streamed together in file order (`_handled`), written with their last
    time, then the kicks' IOREQs and traps are zipped per vCPU a slice at a time (held,
    the IOREQs, their times and the pairs were 0.75 GB at 5 M requests)."""
    if scratch is None:
        with tempfile.TemporaryDirectory(prefix="xvt-pairs-") as d:
            found = notify_pairs(ev, hv, Path(d))
            return None if found is None else found.collect()
    made: list[Path] = []  # the files on the way, removed once the pairs are written
    try:
        return _pairs(ev, hv, scratch, made)
    finally:
        for path in made:
            path.unlink(missing_ok=True)


def _pairs(ev: pl.LazyFrame, hv, scratch: Path, made: list[Path]) -> pl.LazyFrame | None:
    """notify_pairs, with a `scratch` directory (each file written there is listed in
    `made`)."""
    if hv is None:
        hv = hvm.accesses(hvm.handled(ev))
    qemu = ev.filter(pl.col("source") == "qemu")
    ioreqs = qemu.filter(pl.col("event") == "qemu.handle_ioreq")
    logs = ioreqs.select(pl.col("src_file").unique().sort()).collect().to_series().to_list()
    handled = []  # per log, its IOREQs in file order with their last time (_handled)
    for i, log in enumerate(logs):
        mine = ioreqs.filter(pl.col("src_file") == log).select(
            "ts_ns", "addr", "src_offset", fields.qemu("handle_ioreq", "req").alias("slot")
        )
        rest = qemu.filter(pl.col("event").is_in(IOREQ_HANDLING[1:]) & (pl.col("src_file") == log))
        rest = rest.select(
            "ts_ns", "src_offset", (pl.col("event") == "qemu.virtio_queue_notify").alias("notify")
        )
        at = scratch / f"notify_ioreqs_{i}.parquet"
        made.append(at)

        def batches(mine=mine, rest=rest) -> Iterator[pl.DataFrame]:
            io = file_order.batches(mine, scratch / "notify_io.parquet")
            events = file_order.batches(rest, scratch / "ioreq_handling.parquet")
            return _handled((b for b in io if len(b)), events)

        sink_frames(batches, _HANDLED, at, **SPILL_OPTIONS)
        handled.append(at)
    if not handled:
        return None
    handled = pl.scan_parquet(handled)
    # the queue-notify addresses: those of the IOREQs in whose handling QEMU kicked a queue
    # (virtio-mmio QueueNotify, a virtio-pci notify BAR or port; no layout assumed)
    notify_addrs = (
        handled.filter(pl.col("notified")).select(pl.col("addr").drop_nulls().unique())
        .collect().to_series().sort().to_list()
    )  # fmt: skip
    # device model: each notify IOREQ's span = its handle_ioreq .. the last event of its
    # synchronous handling (the queue kick QEMU processes before completing the IOREQ)
    spans = handled.filter(pl.col("addr").is_in(notify_addrs)).select(
        "slot", pl.col("src_offset").alias("handle_off"), pl.col("ts_ns").alias("handle_ns"), "last_ns"
    )  # fmt: skip
    # hypervisor: each notify trap = the MMIO or port write to such an address, with the VM
    # exit it came in with and the vCPU's entry after it
    traps = hv.lazy().filter(
        (pl.col("dir") == "write") & pl.col("addr").is_in(notify_addrs) & pl.col("entry_ns").is_not_null()
        & pl.col("dom").is_not_null() & pl.col("vcpu").is_not_null()
    ).select("dom", "vcpu", "cpu", "exit_ns", "entry_ns")  # fmt: skip
    slots = spans.select(pl.col("slot").unique().sort()).collect().to_series().to_list()
    vcpus = traps.select("dom", "vcpu").unique().sort("dom", "vcpu").collect().rows()
    sides = []  # per vCPU, its traps and its slot's spans, in order, on disk
    for n, ((dom, vcpu), slot) in enumerate(zip(vcpus, slots, strict=False)):  # (per vCPU)
        t = (
            traps
            if len(vcpus) == 1
            else traps.filter((pl.col("dom") == dom) & (pl.col("vcpu") == vcpu))
        )
        s = spans if len(slots) == 1 else spans.filter(pl.col("slot") == slot)
        t_at, s_at = scratch / f"notify_traps_{n}.parquet", scratch / f"notify_spans_{n}.parquet"
        made += [t_at, s_at]
        t.sink_parquet(t_at, **SPILL_OPTIONS)
        s.drop("slot").sink_parquet(s_at, **SPILL_OPTIONS)
        sides.append((pl.scan_parquet(t_at), pl.scan_parquet(s_at)))
    if not sides:
        return None

    def zipped() -> Iterator[pl.DataFrame]:  # the vCPU's k-th trap with its slot's k-th IOREQ
        for t, s in sides:
            k = min(t.select(pl.len()).collect().item(), s.select(pl.len()).collect().item())
            for lo in range(0, k, PAIR_SLICE):
                n = min(PAIR_SLICE, k - lo)
                yield t.slice(lo, n).collect().hstack(s.slice(lo, n).collect().get_columns())

    out = scratch / NOTIFY_PAIRS
    schema = pl.concat(
        [sides[0][0].head(0), sides[0][1].head(0)], how="horizontal"
    ).collect_schema()
    sink_frames(zipped, schema, out, **SPILL_OPTIONS)
    return pl.scan_parquet(out)


NOTIFY_PAIRS = "notify_pairs.parquet"
_HANDLED = pl.Schema({"ts_ns": pl.Int64, "addr": pl.UInt64, "src_offset": pl.UInt64,
                      "slot": pl.UInt64, "last_ns": pl.Int64, "notified": pl.Boolean})  # fmt: skip


def _handled(io: Iterator[pl.DataFrame], events: Iterator[pl.DataFrame]) -> Iterator[pl.DataFrame]:
    """Per batch of a log's IOREQs (`io`, in file order: ts_ns, addr, src_offset, slot),
    the same with the time of the last event of each one's handling (its own when none,
    last_ns) and whether a queue notify was among them (notified), from `events` (the log's
    other handling events in file order: ts_ns, src_offset, notify). Each event belongs to
    the last IOREQ before it, so a batch's are those before the next batch's first IOREQ
    (a batch of events is cut there, its rest kept for the next); those before the log's
    first IOREQ belong to none."""
    rest = None  # events read and not yet given: the next batch's
    batch = next(io, None)
    while batch is not None:
        after = next(io, None)
        end = None if after is None else after["src_offset"].fill_null(0)[0]
        offsets = batch["src_offset"].fill_null(0).to_numpy()  # (sorted first: file_order)
        unplaced = batch["src_offset"].is_null().to_numpy()  # an IOREQ of no offset owns none
        last, notified = _times(batch["ts_ns"]), np.zeros(len(batch), bool)
        while (part := rest if rest is not None else next(events, None)) is not None:
            rest = None
            if end is not None:
                cut = int(np.searchsorted(part["src_offset"].fill_null(0).to_numpy(), end))
                part, rest = part.head(cut), (part.slice(cut) if cut < len(part) else None)
            _own(offsets, unplaced, last, notified, part)
            if rest is not None:
                break
        last = pl.Series("last_ns", last).replace(UNTIMED, None)
        yield batch.with_columns(last, pl.Series("notified", notified)).cast(dict(_HANDLED))
        batch = after


UNTIMED = np.iinfo(np.int64).min  # an event without a time (QEMU logging none): never the last


def _times(ts: pl.Series) -> np.ndarray:
    return ts.fill_null(UNTIMED).to_numpy().astype(np.int64, copy=True)


def _own(
    offsets: np.ndarray,
    unplaced: np.ndarray,
    last: np.ndarray,
    notified: np.ndarray,
    events: pl.DataFrame,
) -> None:
    """The IOREQs at `offsets` (in file order; `unplaced`: of no offset) take `events`
    (ts_ns, src_offset, notify; in file order) as their handling's: each IOREQ's `last`
    time rises to its events' latest and it is `notified` if one of them is a queue
    notify. An event of no offset belongs to none."""
    at = events["src_offset"]
    owner = np.searchsorted(offsets, at.fill_null(0).to_numpy(), "right") - 1
    handled = owner >= 0  # events before the log's first IOREQ belong to none
    handled &= at.is_not_null().to_numpy()
    handled[handled] = ~unplaced[owner[handled]]
    owner, ts = owner[handled], _times(events["ts_ns"])[handled]
    notified[owner[events["notify"].to_numpy()[handled]]] = True
    if len(owner):  # `owner` rises through the log: each IOREQ's events are one run
        runs = np.flatnonzero(np.diff(owner, prepend=-1))
        at = owner[runs]
        last[at] = np.maximum(last[at], np.maximum.reduceat(ts, runs))


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
    pairs: pl.DataFrame | pl.LazyFrame | None,
    lower: pl.DataFrame | None = None,
    *,
    method: str | None = None,
) -> Clock | None:
    """The device model's clock against the hypervisor's, from `notify_pairs` (or, with
    `lower`, from `evtchn_pairs`): device-model time = hypervisor time + offset_ns +
    drift_ppm * 1e-6 * hypervisor time, with the offset's bounds at that drift; None when
    the bundle lacks either side of the pairs (a stamp missing on either side, e.g. QEMU
    logging without timestamps, leaves that pair out: it bounds nothing).

    The pairs are read PAIR_SLICE at a time, and only those on the hulls of their bounds
    are kept (`_hull`): a line's tightest bounds at any drift are pairs on them, so the fit
    is the same, without every pair's four times held (0.3 GB at 5 M requests). Pairs that
    contradict each other are looked at whole (`_most_agreeing`)."""
    if pairs is not None:
        pairs = pairs.lazy()
        pairs = pairs.drop_nulls([c for c in PAIR_TIMES if c in pairs.collect_schema()])
    if lower is not None:
        lower = _timed(lower, ["resp_ns", "last_ns"])
    n = 0 if pairs is None else pairs.select(pl.len()).collect().item()
    if not n or (lower is not None and not len(lower)):
        return None
    # QEMU's log stamps are gettimeofday truncated to the microsecond: an event logged at
    # t happened in [t, t + resolution), which loosens the upper bounds by that much
    whole = pairs.select((pl.col("handle_ns") % 1000 != 0).any()).collect().item()
    res = 1 if whole else 1000  # (schema.timestamp_tick)
    ioreq = lower is None
    ups, lows = [], []
    for lo in range(0, n, PAIR_SLICE):
        part = pairs.slice(lo, PAIR_SLICE).select(*PAIR_TIMES[: 4 if ioreq else 3]).collect()
        t_up, up = (
            part["exit_ns"].to_numpy(),
            (part["handle_ns"] - part["exit_ns"]).to_numpy() + (res - 1),
        )
        ups.append(_hull(t_up, up, below=True))
        if ioreq:
            t_low, low = (
                part["entry_ns"].to_numpy(),
                (part["last_ns"] - part["entry_ns"]).to_numpy(),
            )
            lows.append(_hull(t_low, low, below=False))
    if not ioreq:
        lows.append((lower["resp_ns"].to_numpy(), (lower["last_ns"] - lower["resp_ns"]).to_numpy()))
    (t_up, up), (t_low, low) = (
        (np.concatenate([h[0] for h in hs]), np.concatenate([h[1] for h in hs]))
        for hs in (ups, lows)
    )
    drift, lower_ns, upper_ns = fit_line(t_up, up, t_low, low)
    outliers = beyond = 0
    if lower_ns > upper_ns and ioreq:  # each pair is one interval for the offset
        whole = pairs.select(PAIR_TIMES).collect()
        t_up, t_low = whole["exit_ns"].to_numpy(), whole["entry_ns"].to_numpy()
        up = (whole["handle_ns"] - whole["exit_ns"]).to_numpy() + (res - 1)
        low = (whole["last_ns"] - whole["entry_ns"]).to_numpy()
        del whole
        keep = _most_agreeing(low, up)
        if keep.sum() >= (1 - MAX_OUTLIERS) * len(keep):
            outliers = int((~keep).sum())
            drift, lower_ns, upper_ns = fit_line(t_up[keep], up[keep], t_low[keep], low[keep])
            # how far the left-out pairs are from the line: the bounds hold for the pairs
            # kept; if those few were real (a clock that is not quite a line), this is the
            # error they would add
            out = ~keep
            beyond = int(max(
                (lower_ns + drift * t_up[out] - up[out]).max(), (low[out] - upper_ns - drift * t_low[out]).max(), 0
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
        pairs=n,
        outliers=outliers,
        outliers_beyond_ns=beyond,
        device_model_resolution_ns=res,
        method=method,
    )


PAIR_SLICE = 1 << 20  # pairs read at a time for the fit
HULL_SLACK = 1.0  # ns: a point this close to a hull's chord is kept (rounding is far below)


def _hull(t: np.ndarray, v: np.ndarray, *, below: bool) -> tuple[np.ndarray, np.ndarray]:
    """The points (t, v) on the lower (`below`) or upper convex hull, and some within
    HULL_SLACK of it: min(v - b t) (or max) over them is that over all points, for every
    slope b, to the last bit (a point dropped is more than HULL_SLACK off at every b).
    Points above the chord of their neighbours are dropped until none is, all at once each
    round (a point above any chord of the set is on no lower hull)."""
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    if len(t):  # of equal times, the least (or greatest) value alone
        ends = np.r_[np.flatnonzero(np.diff(t)), len(t) - 1]
        starts = np.r_[0, ends[:-1] + 1]
        v = (np.minimum if below else np.maximum).reduceat(v, starts)
        t = t[starts]
    base = v.min() if len(v) else 0  # (epoch-sized offsets: to float64 after a base)
    y = (v - base).astype(np.float64) * (1 if below else -1)
    x = (t - t[0]).astype(np.float64) if len(t) else t.astype(np.float64)
    keep = np.arange(len(t))
    while len(keep) > 2:
        a, b, c = keep[:-2], keep[1:-1], keep[2:]
        span = x[c] - x[a]
        above = (y[b] - y[a]) * span - (y[c] - y[a]) * (x[b] - x[a]) > HULL_SLACK * span
        if not above.any():
            break
        keep = np.r_[keep[0], b[~above], keep[-1]]
    return t[keep], v[keep]


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
