"""The timeline: which view of the bundle's events reconstructs its requests, the clocks
that put them on one time line, and the requests stored as the bundle's derived data.

Views, tried in order (each needs certain events; `reconstruct` says which it used):
- the device model's (timeline.qemu): QEMU's virtqueue events, with each kick's trap from
  the hypervisor when a device-model clock can be fitted (timeline.clock);
- an emulated IDE disk (timeline.ide);
- the hypervisor's and dom0's block layer (timeline.hypervisor), for backends that log
  nothing per request.
The IOREQ join (timeline.ioreqs) adds each request's kick trap and interrupt acks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from functools import cache, cached_property, partial
from pathlib import Path

import numpy as np
import polars as pl

from xvtrace.bundle import BundleError, derived, file_order, spill_dir
from xvtrace.bundle.frame_sink import SPILL_OPTIONS, sink_frames
from xvtrace.timeline import hvm, ioreqs, qemu, qemu_buckets, spilled, text, traps, vhost_user
from xvtrace.timeline.clock import (
    Clock,
    align_device_model,
    evtchn_pairs,
    notify_pairs,
    to_device_model,
)
from xvtrace.timeline.hypervisor import block_requests, first_loss, hypervisor_requests
from xvtrace.timeline.ide import ide_requests
from xvtrace.timeline.phases import INTERVALS
from xvtrace.timeline.traps import trap_requests

REQUESTS = text.REQUESTS
IOREQS = ioreqs.IOREQS
SECTION = "timeline"  # the manifest section holding the facts, the key and the files
VERSION = 11  # of the reconstruction: bump when its output changes
DM_VIEW, DM_VIEW_NAME = qemu.VIEW, qemu.VIEW_NAME
IDE_VIEW_NAME = "device model (QEMU IDE trace events)"
HV_VIEW_NAME = "hypervisor (xentrace) + dom0 block layer (ftrace)"
BLOCK_VIEW_NAME = (
    "dom0 block layer (ftrace): a PV guest's kicks as its backend's interrupts and its "
    "interrupts as its vCPU's wake-ups, where captured"
)


@dataclass(frozen=True)
class Timeline:
    """A bundle's reconstructed requests and what the reconstruction found (`facts`: the
    view used, counts, incomplete requests by reason, the clocks and the IOREQ join)."""

    source: pl.DataFrame | Path  # the requests: just built, or the stored requests.parquet
    facts: dict
    computed: bool  # False when served from the bundle's stored, still valid, entry
    ioreqs_path: Path | None = None  # the joined IOREQs, when there are any
    bundle_path: Path | None = None

    @cached_property
    def requests(self) -> pl.DataFrame:
        """Every request, every column (read when first asked for)."""
        if isinstance(self.source, pl.DataFrame):
            return self.source
        return pl.read_parquet(self._stored())

    def scan(self) -> pl.LazyFrame:
        """The requests, lazily: a command that needs a few of their columns reads only
        those (all of them are 1.26 GB for 5 M requests)."""
        if "requests" in self.__dict__ or isinstance(self.source, pl.DataFrame):
            return self.requests.lazy()
        return pl.scan_parquet(self._stored())

    def _stored(self) -> Path:
        """The stored requests, refused once another build replaced them: this timeline's
        facts and clocks are those of the file it was loaded with."""
        if derived.file_identity(self.source) != self.facts["files"].get(REQUESTS):
            raise BundleError(
                f"{self.source}: rebuilt since this timeline was read (an ingest or a "
                "timeline ran meanwhile); run the command again"
            )
        return self.source

    def columns(self, *names: str, lazy: bool = False) -> pl.DataFrame | pl.LazyFrame:
        """The requests' columns among `names` (those the table has), in that order."""
        have = self.scan().collect_schema().names()
        chosen = self.scan().select(c for c in dict.fromkeys(names) if c in have)
        return chosen if lazy else chosen.collect()

    @property
    def view(self) -> str | None:
        """The view the requests come from (None: no view applies, see facts["views"])."""
        return self.facts["view"]

    @property
    def device_model_clock(self) -> Clock | None:
        return Clock.from_dict(self.facts.get("device_model_clock"))

    @property
    def ioreqs(self) -> pl.DataFrame | None:
        return None if self.ioreqs_path is None else pl.read_parquet(self.ioreqs_path)

    def render(self) -> str:
        """As `xvtrace timeline` prints it."""
        return text.render(self, self.bundle_path)

    def to_json(self) -> dict:
        return text.to_json(self, self.bundle_path)


def load(bundle, *, rebuild: bool = False) -> Timeline:
    """The bundle's timeline: its stored entry when still valid for these events, else
    reconstructed and stored (requests.parquet, ioreqs.parquet, the manifest's section)."""
    want = derived.key(bundle, SECTION, VERSION)
    facts = None if rebuild else derived.fresh(bundle, SECTION, want)
    if facts is not None:
        req, computed = bundle.path / REQUESTS, False
    else:
        with ExitStack() as stack:
            facts, req, joined = reconstruct(bundle, spill_dir(stack, bundle.path, "timeline"))
            facts = derived.store(bundle, SECTION, want, facts, {REQUESTS: req, IOREQS: joined})
            # the answer, kept or not (a read-only bundle, another command holding it)
            req = bundle.path / REQUESTS if REQUESTS in facts["files"] else pl.read_parquet(req)
        computed = True
    ipath = bundle.path / IOREQS
    ipath = ipath if IOREQS in facts["files"] and ipath.is_file() else None
    return Timeline(req, facts, computed, ipath, bundle.path)


def current_key(bundle) -> str | None:
    """The key of the bundle's timeline if it is stored and valid for its events, else None."""
    want = derived.key(bundle, SECTION, VERSION)
    return want if derived.fresh(bundle, SECTION, want) is not None else None


def build(bundle) -> pl.DataFrame:
    """Reconstruct the bundle's requests anew and store them; the requests."""
    return load(bundle, rebuild=True).requests


@dataclass(frozen=True)
class View:
    """A way to reconstruct requests and the events it needs: each group of `needs` must
    have at least one of its events in the bundle."""

    name: str
    needs: tuple[tuple[str, ...], ...]
    build: Callable[[_Inputs], tuple[pl.DataFrame | spilled.Spilled, Clock | None] | None]
    empty: str  # why it gave nothing although its events are there

    def missing(self, present: set[str]) -> list[str]:
        return [" or ".join(g) for g in self.needs if not present.intersection(g)]


@dataclass
class _Inputs:
    """What every view may use, each decoded once. The exits and the device model's IOREQs
    wait on disk (`spill`): each stage reads the columns and rows it uses (held, both sides
    of every access were 1.5 GB at 5 M requests under every later stage)."""

    bundle: object
    ev: pl.LazyFrame
    spill: Path  # EXITS, ACCESSES and DM_IOREQS
    lost: int | None  # the first lost record's time (timeline.hypervisor.first_loss)
    sequence_clock: Callable[[], dict | None]  # the IOREQ-order clock, fitted at most once

    @property
    def exits(self) -> pl.DataFrame:
        """timeline.hvm.handled, read whole (the views that are built from the exits)."""
        return pl.read_parquet(self.spill / EXITS)

    @property
    def acc(self) -> ioreqs.Accesses:
        """Both sides of the emulated accesses, lazily."""
        return spilled_accesses(self.spill)


# in the build's spill directory
EXITS, ACCESSES, DM_IOREQS = "exits.parquet", "accesses.parquet", "dm_ioreqs.parquet"


def spill_inputs(ev: pl.LazyFrame, spill: Path) -> None:
    """Decode the exits (timeline.hvm.handled) and the device model's IOREQs into `spill`."""
    _write_exits(ev, spill / EXITS)
    ioreqs.device_model_ioreq_rows(ev).sink_parquet(spill / DM_IOREQS, **SPILL_OPTIONS)


def _write_exits(ev: pl.LazyFrame, path: Path) -> None:
    """timeline.hvm.handled written a slice at a time (hvm.write_handled), and its accesses
    (timeline.hvm.accesses, computed on each slice: polars 2.1 computed a lone when-then of
    literals over a filtered scan wrongly, and these are read that way)."""
    hvm.write_handled(ev, path, path.parent, **SPILL_OPTIONS)
    written = spilled.Spilled(pl.scan_parquet(path))
    written.write(path.parent / ACCESSES, then=hvm.accesses, **SPILL_OPTIONS)


def spilled_accesses(spill: Path) -> ioreqs.Accesses:
    return ioreqs.Accesses(pl.scan_parquet(spill / DM_IOREQS), pl.scan_parquet(spill / ACCESSES))


def _device_model(x: _Inputs) -> tuple[pl.DataFrame | spilled.Spilled, Clock | None] | None:
    """QEMU's virtqueue events, each kick with its trap when a device-model clock fits (on
    disk, with the trap columns computed for them)."""
    # the clock first: its pairs come from the IOREQs and traps alone, and the requests
    # (a GB at 5 M) are not held while they are found
    pairs, lower, dm_clock = _device_model_clock(x)
    saved = None if pairs is None else x.spill / "dm_pairs.parquet"
    if saved is not None:  # (on disk while the requests are built: 0.45 GB at 5 M requests)
        pairs.lazy().sink_parquet(saved, **SPILL_OPTIONS)
    del pairs
    built = x.spill / "dm_requests.parquet"
    qemu_buckets.write_requests(x.ev, x.spill, built)  # (a share of the elements at a time)
    req = spilled.Spilled(pl.scan_parquet(built).with_columns(pl.lit(DM_VIEW).alias("view")))
    if not len(req):
        return None
    # a vhost-user back-end's requests, moved onto its front-end's log: their kick's trap
    # then comes from the IOREQ join (by the front-end's kick), not from their pop's IOREQ
    hopped = vhost_user.with_front_end(req.rows, x.ev)
    if hopped is not None:
        return hopped, dm_clock
    if dm_clock is not None and saved is not None:
        if lower is not None:
            req = req.with_added(with_kicks(req.rows, pl.read_parquet(saved), dm_clock))
        else:  # (the pairs' columns it reads, read as it sorts them)
            found = with_traps(
                req.rows, pl.scan_parquet(saved), dm_clock, x.spill / "dm_traps.parquet"
            )
            req = req.with_added(found)
    return req, dm_clock


def _device_model_clock(
    x: _Inputs,
) -> tuple[pl.DataFrame | pl.LazyFrame | None, pl.DataFrame | None, Clock | None]:
    """The device model's clock and the pairs it was fitted to: (kicks' traps with their
    IOREQs, or event-channel kicks with their VMCALLs and `lower` their responses; the
    clock), from the kicks, else every IOREQ in order when the kicks fit none."""
    pairs, lower = _before(x.lost, notify_pairs(x.ev, x.acc.hv, x.spill)), None
    if pairs is None:  # no IOREQs: an event-channel kick (gsoc-xenbus style)?
        found = evtchn_pairs(x.ev, x.exits)
        pairs, lower = found if found else (None, None)
        pairs, lower = _before(x.lost, pairs), _before(x.lost, lower, "resp_ns")
    dm_clock = align_device_model(pairs, lower)
    if lower is None and dm_clock is not None and not dm_clock.consistent:
        # The kicks' IOREQs zipped with their traps fit no clock: a trace edge shifted
        # them, or QEMU processed the queue after completing the IOREQ (ioeventfd).
        # Align on every IOREQ by order instead; each kick then gets its trap from the
        # IOREQ join.
        seq = x.sequence_clock()
        if seq is not None and seq.consistent:
            dm_clock, pairs = seq, None
    return pairs, lower, dm_clock


def _spilled(frame: pl.DataFrame, path: Path) -> pl.LazyFrame:
    """`frame` written to the parquet file `path`, as its scan."""
    frame.write_parquet(path, **SPILL_OPTIONS)
    return pl.scan_parquet(path)


def _ide(x: _Inputs) -> tuple[pl.DataFrame, Clock | None] | None:
    req = ide_requests(x.ev)
    return None if req is None else (req, None)


def _hypervisor(x: _Inputs) -> tuple[pl.DataFrame, Clock | None] | None:
    lost_after = x.lost if _ftrace_intact(x.bundle) else 0
    req = hypervisor_requests(x.ev, x.exits, lost_after=lost_after)
    return (req, None) if req is not None and req["complete"].any() else None


def _block(x: _Inputs) -> tuple[pl.DataFrame, Clock | None] | None:
    req = block_requests(x.ev)
    return None if req is None else (req, None)


def _traps(x: _Inputs) -> tuple[pl.DataFrame, Clock | None] | None:
    req = trap_requests(x.ev, x.exits)
    return None if req is None else (req, None)


KICKS = ("hvm.mmio_write", "hvm.vmmcall")
VIEWS = (
    View(DM_VIEW_NAME, (("qemu.virtqueue_pop",),), _device_model, "no element popped"),
    View(IDE_VIEW_NAME, (("qemu.ide_exec_cmd",), ("qemu.ide_dma_cb",)), _ide,
         "no DMA command"),
    View(HV_VIEW_NAME, (("block.rq_issue",), KICKS, ("hvm.vmentry",)), _hypervisor,
         "no request matched from kick to interrupt"),
    View(BLOCK_VIEW_NAME, (("block.rq_issue",),), _block, "no block request issued"),
    View(traps.VIEW_NAME, (("hvm.vmentry",), ("hvm.mmio_write",)), _traps,
         "no virtio kick among the guests' MMIO traps"),
)  # fmt: skip
# what adds the events a view needs, said when they are missing
SOURCES = {
    "qemu": "QEMU's trace events: capture --qmp SOCK, or --log FILE of a device model run with -trace",
    "block": "dom0's block layer: capture --block-trace",
    "hvm": "xentrace on the Xen host: capture --xentrace",
}  # fmt: skip


def _source(event: str, present: set[str]) -> str:
    """What adds `event` to a capture (SOURCES); for HVM records with xentrace already
    there, why it has none."""
    if event.startswith("hvm.") and any(e.startswith(("sched.", "pv.")) for e in present):
        return "the xentrace has no HVM exits: a PV guest, or xentrace -e without TRC_HVM"
    return SOURCES[event.split(".")[0]]


def reconstruct(bundle, spill: Path) -> tuple[dict, Path, Path | None]:
    """The bundle's requests from its events: (facts, the requests' and the joined IOREQs'
    (or None) parquet files in the directory `spill`). The facts hold the view used and why the
    others were not, the counts, incomplete requests by reason and the clocks."""
    ev = bundle.events()
    present = set(
        ev.select(pl.col("event").unique().cast(pl.String)).collect().to_series().to_list()
    )
    spill_inputs(ev, spill)  # decoded once: kicks, the clock fits and the join all use them
    lost = first_loss(ev)
    x = _Inputs(
        bundle, ev, spill, lost, cache(partial(_sequence_clock, spilled_accesses(spill), lost))
    )
    view, req, dm_clock, tried = None, None, None, []
    for v in VIEWS:
        if view is not None:
            tried.append({"view": v.name, "used": False, "why": "an earlier view applied"})
        elif missing := v.missing(present):
            adds = dict.fromkeys(_source(m, present) for m in missing if m.split(".")[0] in SOURCES)
            why = (
                "needs "
                + ", and ".join(missing)
                + " (none in this bundle; "
                + "; ".join(adds)
                + ")"
            )
            tried.append({"view": v.name, "used": False, "why": why})
        elif (found := v.build(x)) is None:
            tried.append({"view": v.name, "used": False, "why": v.empty})
        else:
            view, (req, dm_clock) = v.name, found
            del found  # (the requests are handed on below, and freed once on disk)
            tried.append({"view": v.name, "used": True, "why": None})
    # every view's table has every column of the device model's (null where the view has
    # no such stamp): the report, HTML and Perfetto read one schema, whichever view applied
    req = _conformed(req, _no_requests(ev))
    ide = view == IDE_VIEW_NAME
    join_clock = dm_clock
    if dm_clock is None or not dm_clock.consistent:
        # No clock from the requests' kicks, or none that fits: the IOREQs in order, which
        # the join below then uses; fitted once, like the kicks' fit, before any loss.
        join_clock = x.sequence_clock()
        dm_clock = join_clock or dm_clock
    found_devices = traps.devices(x.exits, req) if view == traps.VIEW_NAME else None
    # The views are built: their requests wait on disk through the IOREQ join.
    has_traps = "trap_exit_ns" in req.schema
    if isinstance(req, pl.DataFrame):
        if view in (DM_VIEW_NAME, IDE_VIEW_NAME) and not req["request"].is_sorted():
            req = req.sort("request")  # (they are: the joins' columns are added in this order)
        req = spilled.Spilled(req.lazy())
    built = spill / "views.parquet"
    req.write(built)
    del x, req
    joined, join_counts = ioreqs.join(spilled_accesses(spill), join_clock, spill / IOREQS)

    def columns(*names: str) -> pl.DataFrame:
        return pl.scan_parquet(built).select(names).collect()

    added = []  # the joins' columns, a row per request in request order, each on disk
    # once computed (held, each was there while the next was computed and all of them
    # while the requests were written)
    if joined is not None and (ide or (view == DM_VIEW_NAME and not has_traps)):
        kicks = ioreqs.kick_traps(columns("request", "src_file", "kick_off"), joined)
        if not ide:
            stamps = columns("pop_ns").hstack([kicks["trap_entry_ns"]])
            dm_clock = replace(dm_clock, queue_processing=_queue_processing(stamps, dm_clock))
            del stamps
        added.append(_spilled(kicks, spill / "kick_traps.parquet"))
        del kicks
    if joined is not None and view == DM_VIEW_NAME:
        keys = pl.scan_parquet(built).select("request", "src_file", "kick_off", "notify_ns")
        added.append(ioreqs.interrupt_acks(keys, joined, spill / "acks.parquet"))
    spilled.Spilled(pl.scan_parquet(built), added).write(
        spill / REQUESTS, then=lambda part: _causal(part.lazy()).collect()
    )
    del added
    req = pl.scan_parquet(spill / REQUESTS)
    counts = req.select(pl.len(), pl.col("complete").sum()).collect()
    reasons = req.filter(~pl.col("complete")).group_by("reason").len().collect()
    facts = {
        "view": view,
        "views": tried,
        "requests": counts.item(0, 0),
        "complete": int(counts.item(0, 1)),
        "incomplete": {r: int(n) for r, n in reasons.iter_rows()},
        "packet_clock": align_packets(req, ev),
        "device_model_clock": None if dm_clock is None else dm_clock.to_dict(),
        "ioreq_join": join_counts,
        **({"devices": found_devices} if found_devices is not None else {}),
    }
    return facts, spill / REQUESTS, None if joined is None else spill / IOREQS


# the stamps the phases are made of, in path order (complete_ns, virtio_blk_req_complete,
# feeds no phase; stored emulated bundles made before qemu_lines.ElementSlots reused an
# element pointer in flight, and their complete_ns can be another request's)
PATH = ("kick_ns", "pop_ns", "handle_ns", "io_done_ns", "fill_ns", "notify_ns")
CAUSAL_REASON = "stamps out of causal order (a corrupt or misread log?)"


def _causal(req: pl.LazyFrame) -> pl.LazyFrame:
    """A request is complete only when the stamps of its path, all on the view's one clock,
    never go back in time: a complete request with a negative phase is a wrong answer given
    with confidence (one corrupted event name in a QEMU log gave pop -> fill p50 -309 us).
    Such a request keeps its stamps, to be looked at, but no interval: no table, plot or
    baseline counts a phase measured between stamps that contradict each other."""
    stamps = [pl.col(c) for c in PATH]
    back = pl.lit(False)
    for i in range(1, len(stamps)):  # each stamp at or after every stamp before it
        back = back | (stamps[i] < pl.max_horizontal(stamps[:i])).fill_null(False)
    req = req.with_columns(back.alias("_back"))
    return req.with_columns(
        pl.when(pl.col("complete") & pl.col("_back")).then(pl.lit(CAUSAL_REASON)).otherwise("reason").alias("reason"),
        (pl.col("complete") & ~pl.col("_back")).alias("complete"),
        *[pl.when(pl.col("_back")).then(None).otherwise(pl.col(c)).alias(c)
          for c in INTERVALS if c in req.collect_schema().names()],
    ).drop("_back")  # fmt: skip


def _conformed(
    req: pl.DataFrame | spilled.Spilled | None, empty: pl.DataFrame
) -> pl.DataFrame | spilled.Spilled:
    """`req` with `empty`'s columns it lacks, as nulls of their type, and those it has in
    their type; `empty` without one."""
    if req is None:
        return empty
    if isinstance(req, spilled.Spilled):
        have = req.schema
        if all(c in have and have[c] == t for c, t in empty.schema.items()):
            return req
        req = pl.concat([req.rows, *(a.lazy() for a in req.added)], how="horizontal").collect()
    missing = [
        pl.lit(None, dtype=t).alias(c) for c, t in empty.schema.items() if c not in req.columns
    ]
    req = req.with_columns(missing) if missing else req
    return req.cast({c: t for c, t in empty.schema.items() if req.schema[c] != t})


def _no_requests(ev: pl.LazyFrame) -> pl.DataFrame:
    """The request table of a bundle no view applies to: the device model's, empty."""
    return qemu.requests(ev.head(0)).collect().with_columns(pl.lit(DM_VIEW).alias("view"))


def _queue_processing(req: pl.DataFrame, clock: Clock) -> str:
    """ "deferred" when most pops come after their kick's vCPU re-entered (beyond the clock's
    bounds): QEMU completed the IOREQ first and processed the queue from its main loop;
    otherwise "in the IOREQ"."""
    late = req.filter(pl.col("trap_entry_ns").is_not_null()).select(
        (pl.col("pop_ns") > pl.col("trap_entry_ns") + (clock.upper_ns - clock.lower_ns)).mean()
    )
    return "deferred" if late.item() is not None and late.item() > 0.5 else "in the IOREQ"


def _sequence_clock(acc, lost: int | None) -> Clock | None:
    """The device-model clock from every IOREQ inside its trap, paired in order, before the
    first lost record. When none lies before it (a pCPU's buffer overflowed at the start),
    all of them: the pairing keeps only a run that agrees access for access, which a loss
    inside the run would break, so those pairs are still likely right."""
    pairs = ioreqs.sequence_pairs(acc)
    early = _before(lost, pairs)
    return align_device_model(
        early if early is not None and len(early) else pairs, method=ioreqs.SEQUENCE_METHOD
    )


def _before(lost: int | None, pairs: pl.DataFrame | None, col: str = "entry_ns"):
    """The pairs before the first lost record: they are matched by count, which a loss shifts."""
    return pairs if pairs is None or lost is None else pairs.filter(pl.col(col) < lost)


def with_kicks(req: pl.LazyFrame, pairs: pl.DataFrame, clock: Clock) -> pl.DataFrame:
    """The hypervisor's side of event-channel kicks, a row per request in request order:
    the VMCALL's exit and re-entry of the kick each request's pop followed (matched on the
    virtio_queue_notify it was logged as)."""
    kicks = pairs.select(
        pl.col("handle_off").alias("kick_off"),
        to_device_model(pl.col("exit_ns"), clock).alias("trap_exit_ns"),
        to_device_model(pl.col("entry_ns"), clock).alias("trap_entry_ns"),
        pl.col("dom").alias("trap_dom"), pl.col("vcpu").alias("trap_vcpu"), pl.col("cpu").alias("trap_cpu"),
    )  # fmt: skip
    # (one kick per logged notify: two logs' notifies at one offset gave a request twice)
    kicks = kicks.unique("kick_off", keep="first", maintain_order=True)
    out = req.select("request", "kick_off").collect().join(kicks, on="kick_off", how="left")
    return ioreqs.in_request_order(out.select("request"), out.drop("request", "kick_off"))


def _ftrace_intact(bundle) -> bool:
    """False when dom0's ftrace reported lost events (it does not say where)."""
    return not any(s.get("format") == "ftrace" and s.get("lost") for s in bundle.manifest.sources)


def align_packets(req: pl.LazyFrame, ev: pl.LazyFrame, *, window: int = 64) -> dict | None:
    """Offset of the packet clock against the device model's, found by matching, not by
    clock: the k-th frame the guest received fills the (k + s)-th rx buffer, and a frame's
    length plus the 12-byte virtio_net_hdr is that fill's length. Returns the offset
    (median of fill - packet time over matched pairs), its residual bounds, the shift s and
    the match count; None without packets or rx requests."""
    rx = (
        req.filter((pl.col("op") == "rx") & pl.col("fill_ns").is_not_null())
        .select("fill_ns", "fill_len")
        .sort("fill_ns")
        .collect()
    )
    pk = (
        ev.filter((pl.col("event") == "net.packet") & pl.col("ts_ns").is_not_null())
        .select("ts_ns", "size", "addr")
        .collect()
    )
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


def with_traps(
    req: pl.LazyFrame, pairs: pl.LazyFrame | pl.DataFrame, clock: Clock, out: Path
) -> pl.LazyFrame:
    """The hypervisor's side of each request's kick, a row per row of `req`: the notify
    trap's VM exit and the vCPU's re-entry after the IOREQ (trap_exit_ns, trap_entry_ns on
    the device model's clock), from the IOREQ that contains the request's pop. Written to
    the parquet file `out` a slice of requests at a time (not every request's offsets
    sorted and as-of joined at once, the result held), and returned as its scan."""
    spans = (
        pairs.lazy()
        .sort("handle_off", maintain_order=True)
        .select(
            file_order.int_offset(pl.col("handle_off")),
            to_device_model(pl.col("exit_ns"), clock).alias("trap_exit_ns"),
            to_device_model(pl.col("entry_ns"), clock).alias("trap_entry_ns"),
            pl.col("dom").alias("trap_dom"),
            pl.col("vcpu").alias("trap_vcpu"),
            pl.col("cpu").alias("trap_cpu"),
        )
        .collect()
    )  # (held: a few numbers per kick)
    offs = spans["handle_off"].to_numpy()
    traps = spans.drop("handle_off")
    del spans
    total = req.select(pl.len()).collect().item()

    def slices() -> Iterator[pl.DataFrame]:
        for lo in range(0, total, spilled.SLICE_ROWS):
            part = (
                req.slice(lo, spilled.SLICE_ROWS)
                .select(file_order.int_offset(pl.col("pop_off")), "pop_ns")
                .collect()
            )
            pop = part["pop_off"]
            # the last IOREQ at or before the pop, in the log's order
            at = np.searchsorted(offs, pop.fill_null(-1).to_numpy(), "right") - 1
            found = traps[at.clip(0)] if len(traps) else traps.clear(len(part))
            # only a pop inside the IOREQ's handling belongs to its trap (a later pop, e.g.
            # after a device completion, was not kicked by it)
            kicked = (
                pl.Series(at >= 0) & pop.is_not_null()
                & (part["pop_ns"] <= found["trap_entry_ns"]).fill_null(False)
            )  # fmt: skip
            yield found.select(pl.when(kicked).then(pl.col(c)).alias(c) for c in traps.columns)

    sink_frames(slices, traps.schema, out, **SPILL_OPTIONS)
    return pl.scan_parquet(out)
