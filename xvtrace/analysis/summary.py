"""Summary of a xentrace event table, in the spirit of `xenalyze --summary`.

The xentrace sections come from one fold of the records (xen_fold: what it counts is
declared in fold_program), each section a small frame made from the folded tables;
`Summary` renders them as text or JSON. Sections: totals, log volume per pCPU and class,
runstates per vCPU, HVM exits by reason with time spent, hypercalls by name, IO port and
MMIO accesses by address, interrupts, grant operations and lost records; and the device
model's virtqueues (virtqueues).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from xvtrace.analysis import exit_pairs, xen_fold
from xvtrace.analysis.dump import name_addresses  # the dump's own address naming
from xvtrace.analysis.fold_program import EXIT_EVENTS, PV_EVENTS
from xvtrace.analysis.virtqueues import virtqueues
from xvtrace.bundle import derived
from xvtrace.bundle.stages import prefetch
from xvtrace.parsers import fields, xentrace
from xvtrace.parsers import xen_events as xe
from xvtrace.parsers.schema import EVENT_SCHEMA


def _us(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


CHUNK_ROWS = 1 << 20  # the table's rows folded at once (a slice of the table's scan)


def fold(
    ev: pl.LazyFrame | Iterable[pl.DataFrame], *, times: bool = False,
    first_spans: int | None = None,
) -> xen_fold.Folded:  # fmt: skip
    """What every xentrace section needs, in one pass in time order: from the bundle's
    events (a LazyFrame of the table, read CHUNK_ROWS of it at a time), or from decoded
    frames of xentrace rows. `times`: keep each exit's start (exit_spans), or with
    `first_spans` only the spans of those earliest exits (of a vCPU known, that end)."""
    f = xen_fold.Fold(times, first_spans, _known_span if first_spans is not None else None)
    if isinstance(ev, pl.LazyFrame):
        total = ev.select(pl.len()).collect().item()
        for lo in range(0, total, CHUNK_ROWS):  # (a slice of the scan reads its row groups)
            rows = ev.slice(lo, CHUNK_ROWS).filter(pl.col("source") == "xentrace")
            f.add_frame(rows.select(xen_fold.FRAME_COLUMNS).collect())
    else:
        for frame in ev:
            f.add_frame(frame)
    return f.result()


def fold_file(dec: xentrace.XentraceDecoder) -> xen_fold.Folded:
    """The fold of a xentrace file's records as `dec` reads them (no frame decoded), in
    three stages a chunk apart, each on a thread of its own (the kernels release the GIL):
    the records indexed, as they lie in the file; folded into the tables; the rows kept
    put in time order as they fall due and the exits paired a vCPU at a time (on this
    thread). No record is sorted: only the rows kept are, a vCPU's at a time."""
    f = xen_fold.Fold()

    def folded(records):
        for chunk in records:
            yield f.add_records(chunk, dec.cpu_khz, dec.address_ids)

    with (
        closing(prefetch(dec.records(ordered=False))) as records,
        closing(prefetch(folded(records))) as parts,
    ):
        for chunk in parts:
            f.take(chunk)
    return f.result()


class Folding(xen_fold.Fold):
    """The fold of a table's frames as they are written (api.ingest, a bundle.ingest
    Watcher): of their xentrace rows, the frames in the table's order, FOLD_ROWS or more at
    a time (frames of a merged table come 64 k rows of every source at a time: the exit
    pairing's cost per call would dominate); or, for a table of one xentrace file, its
    records as the decoder hands them over (`add_xentrace`)."""

    def __init__(self):
        super().__init__()
        self.waiting: list[pl.DataFrame] = []
        self.waiting_rows = 0

    def add(self, chunk: pl.DataFrame) -> None:
        source = chunk["source"]
        if (source != "xentrace").any():  # (most frames are one source's: no copy)
            chunk = chunk.filter(source == "xentrace")
        if len(chunk) >= FOLD_ROWS and not self.waiting:  # (as it is: no copy)
            self.add_frame(chunk)
            return
        if len(chunk):
            self.waiting.append(chunk)
            self.waiting_rows += len(chunk)
        if self.waiting_rows >= FOLD_ROWS:
            self._fold()

    def add_xentrace(self, dec: xentrace.XentraceDecoder) -> Callable[[xentrace.Records], None]:
        """Instead of `add`, for a table of one xentrace file: its records folded as `dec`
        hands them over (fold_file's stages, on the caller's thread)."""
        return lambda chunk: self.take(self.add_records(chunk, dec.cpu_khz, dec.address_ids))

    def _fold(self) -> None:
        if self.waiting:
            self.add_frame(pl.concat(self.waiting))
        self.waiting, self.waiting_rows = [], 0

    def result(self) -> xen_fold.Folded:
        self._fold()
        return super().result()


FOLD_ROWS = 1 << 19  # xentrace rows folded at once, at least


def totals(groups: pl.DataFrame) -> pl.DataFrame:
    """`groups`: the fold's "groups" table."""
    return groups.select(
        pl.col("records").sum().cast(pl.UInt32),
        pl.col("first_ns").min(),
        pl.col("last_ns").max(),
        (pl.col("last_ns").max() - pl.col("first_ns").min()).alias("span_ns"),
        pl.col("records").filter(pl.col("unknown")).sum().cast(pl.UInt32).alias("unknown_records"),
        pl.col("cpu").n_unique().alias("pcpus"),
    )


def volume(groups: pl.DataFrame) -> pl.DataFrame:
    """Bytes of trace per pCPU and event class (xenalyze's log volume summary)."""
    names = pl.DataFrame(
        {"cls": list(xe.CLASS_NAMES), "class": list(xe.CLASS_NAMES.values())},
        schema={"cls": pl.UInt32, "class": pl.String},
    )
    return (
        groups.group_by("cpu", "cls")
        .agg(pl.col("records").sum().cast(pl.UInt32), pl.col("bytes").sum())
        .join(names, on="cls", how="left")
        .with_columns(pl.col("class").fill_null("unknown"))
        .sort("cpu", "cls")
        .select("cpu", "class", "records", "bytes")
    )


def records_by_dom(groups: pl.DataFrame) -> pl.DataFrame:
    return (
        groups.group_by("dom", "vcpu")
        .agg(pl.col("records").sum().cast(pl.UInt32))
        .sort("dom", "vcpu")
    )


STATE_NAMES = (*xe.RUNSTATES, "lost", "?")  # an interval's state: new (0-3), lost, unknown
LOST_STATE, UNKNOWN_STATE = 4, 5
ENTERED_BY = (None, "wake", "preempt", "other")  # how a runnable interval began (0: not one)


INTERVAL_BATCH = 1 << 20  # runstate changes turned into intervals at once (whole vCPUs)
_NO_INTERVALS = {"sdom": np.zeros(0, np.int32), "svcpu": np.zeros(0, np.int32),
                 "ts_ns": np.zeros(0, np.int64), "end_ns": np.zeros(0, np.int64),
                 "state": np.zeros(0, np.uint8), "entered_by": np.zeros(0, np.uint8),
                 "dur": np.zeros(0, np.int64)}  # fmt: skip


def _intervals(f: xen_fold.Folded) -> Iterator[dict[str, np.ndarray]]:
    """runstate_intervals' columns as arrays, whole vCPUs at a time (about INTERVAL_BATCH
    changes, a vCPU with more alone): the states and ways in as codes (STATE_NAMES, ENTERED_BY),
    sdom and svcpu -1 where not known. Arrays, not a lazy query: on the 672 k changes of a
    500 MB trace the query took 0.13 s and faulted in 230 MB (its sort's row encoding, its
    windows' hashes); this takes 0.04 s. In batches: the arrays made from every change at
    once added 285 MiB to the peak at a 2 GB trace's 2.66 M changes."""
    rs = f.rows["runstates"]
    cols = [rs[c].fill_null(-1).to_numpy() for c in ("ts_ns", "cpu", "sdom", "svcpu", "old", "new")]
    # each vCPU's changes in time order (ties as they come: the decoder's time order)
    by_vcpu = np.lexsort((cols[0], cols[3], cols[2]))
    sdom, svcpu = cols[2][by_vcpu], cols[3][by_vcpu]
    n = len(by_vcpu)
    # each vCPU's first change, and the end
    starts = np.append(
        np.flatnonzero(np.r_[True, (sdom[1:] != sdom[:-1]) | (svcpu[1:] != svcpu[:-1])]), n
    )
    del sdom, svcpu
    # Still running at the end: the interval closes at its pCPU's last record.
    cpu_end = f.tables["groups"].group_by("cpu").agg(pl.col("last_ns").max()).drop_nulls()
    ends = dict(zip(cpu_end["cpu"].to_list(), cpu_end["last_ns"].to_list(), strict=True))
    lost = np.sort(f.rows["lost"]["ts_ns"].to_numpy())
    if not n:
        yield dict(_NO_INTERVALS)
    lo = 0
    while lo < n:
        # the whole vCPUs from row lo within INTERVAL_BATCH changes, or the one vCPU at lo
        hi = int(starts[np.searchsorted(starts, lo + INTERVAL_BATCH, "right") - 1])
        if hi <= lo:
            hi = int(starts[np.searchsorted(starts, lo, "right")])
        rows = by_vcpu[lo:hi]
        yield _vcpus_intervals(*(c[rows] for c in cols), ends, lost)
        lo = hi


def _vcpus_intervals(ts, cpu, sdom, svcpu, old, new, ends: dict, lost: np.ndarray) -> dict:
    """_intervals of whole vCPUs' changes, each vCPU's together in time order; `ends`: each
    pCPU's last record time, `lost`: the lost-record marks, sorted."""
    n = len(ts)
    same_next = (sdom[1:] == sdom[:-1]) & (svcpu[1:] == svcpu[:-1])  # row i+1 of i's vCPU
    end = np.append(ts[1:], 0)
    has_end = np.append(same_next, False)
    # A vCPU's state is unknown until it is first seen entering 'running'.
    starts = np.ones(n, np.bool_)
    starts[1:] = ~same_next
    first = np.flatnonzero(starts)  # each vCPU's first change
    entered_running = np.cumsum(new == 0)
    before = entered_running[first] - (new[first] == 0)
    known = entered_running - np.repeat(before, np.diff(np.append(first, n))) > 0
    at_end = ~has_end & (new == 0)
    for c in np.unique(cpu[at_end]).tolist():  # (a few pCPUs)
        if c in ends:
            rows = at_end & (cpu == c)
            end[rows], has_end[rows] = ends[c], True
    keep = has_end & known & (end - ts > 0)  # like xenalyze, zero-length intervals not counted
    ts, end, sdom, svcpu, old, new = (c[keep] for c in (ts, end, sdom, svcpu, old, new))
    crosses = np.searchsorted(lost, ts, "right") != np.searchsorted(lost, end, "right")
    state = np.where(crosses, LOST_STATE, np.where(new < 4, new, UNKNOWN_STATE))
    # runnable: from blocked, or offline (an HVM vCPU waiting for its IOREQ is paused,
    # blocked in Xen, which the runstate shows as offline), or preempted from running
    way = np.where(np.isin(old, (2, 3)), 1, np.where(old == 0, 2, 3))
    return {"sdom": sdom, "svcpu": svcpu, "ts_ns": ts, "end_ns": end,
            "state": state.astype(np.uint8), "entered_by": np.where(new == 1, way, 0).astype(np.uint8),
            "dur": end - ts}  # fmt: skip


def _names(codes, names: tuple) -> pl.Series:
    return pl.Series(names, dtype=pl.String).gather(codes)


def _null_ids(values: np.ndarray) -> pl.Series:
    return pl.Series(values.astype(np.int32)).set(pl.Series(values < 0), None)


def runstate_intervals(f: xen_fold.Folded) -> pl.DataFrame:
    """Each vCPU's runstate intervals (sdom, svcpu, ts_ns, end_ns, state, entered_by, dur),
    from consecutive runstate changes (`f`: the fold).

    The interval after a change is in the change's new state; intervals that span lost
    records are reported as state 'lost'. Runnable time is split by how it was entered:
    'wake' (from blocked or offline) and 'preempt' (from running), as xenalyze does.
    """
    parts = list(_intervals(f))
    r = {k: np.concatenate([p[k] for p in parts]) for k in _NO_INTERVALS}
    return pl.DataFrame({
        "sdom": _null_ids(r["sdom"]), "svcpu": _null_ids(r["svcpu"]),
        "ts_ns": r["ts_ns"], "end_ns": r["end_ns"],
        "state": _names(r["state"], STATE_NAMES),
        "entered_by": _names(r["entered_by"], ENTERED_BY), "dur": r["dur"],
    })  # fmt: skip


def runstates(f: xen_fold.Folded) -> pl.DataFrame:
    """Time each vCPU spent in each runstate (runstate_intervals, summed)."""
    keys = ("sdom", "svcpu", "state", "entered_by")
    parts = [
        pl.DataFrame({k: r[k] for k in (*keys, "dur")})
        .group_by(keys)
        .agg(pl.len().alias("count"), pl.col("dur").sum().alias("total_ns"))
        for r in _intervals(f)
    ]  # (a vCPU's intervals all in one batch: the batches' groups are apart)
    sums = pl.concat(parts)
    return pl.DataFrame({
        "dom": _null_ids(sums["sdom"].to_numpy()), "vcpu": _null_ids(sums["svcpu"].to_numpy()),
        "state": _names(sums["state"], STATE_NAMES),
        "entered_by": _names(sums["entered_by"], ENTERED_BY),
        "count": sums["count"], "total_ns": sums["total_ns"],
    }).sort("dom", "vcpu", "state", "entered_by", nulls_last=False)  # fmt: skip


# exits xenalyze splits by their handler: "mmio" (an MMIO access emulated in the exit) or
# "npf" (a nested page fault with no access emulated before the exit ended)
SPLIT_EXITS = ("VMEXIT_NPF", "EPT_VIOLATION", "APIC_ACCESS")
HANDLER_NAMES = ("(no handler)", "mmio", "npf")
NO_IO = np.uint32(exit_pairs.NO_IO)
NULL_ID, NULL_REASON = 0xFFFF, 0xFFFFFFFF  # not known (yet), in a group key


def _known_span(part: tuple[np.ndarray, ...]) -> np.ndarray:
    """Which closed exits (exit_pairs.OUT arrays) end, on a vCPU known: exit_spans' rows
    with a dom and a vCPU."""
    key, dur = part[exit_pairs.OUT.index("key")], part[exit_pairs.OUT.index("dur")]
    dom, vcpu = key >> np.uint64(48), (key >> np.uint64(32)) & np.uint64(0xFFFF)
    return (dur >= 0) & (dom != NULL_ID) & (vcpu != NULL_ID)


def exit_spans(f: xen_fold.Folded) -> pl.DataFrame:
    """Every HVM exit that ends, as `exits` times it: dom, vcpu, reason, ts_ns, end_ns."""
    r = f.exits
    ok = r["dur"] >= 0
    key = r["key"][ok]
    ids = {"dom": key >> np.uint64(48), "vcpu": (key >> np.uint64(32)) & np.uint64(0xFFFF)}
    reason = key & np.uint64(0xFFFFFFFF)
    return pl.DataFrame({
        **{c: pl.Series(v.astype(np.int32)).set(pl.Series(v == NULL_ID), None) for c, v in ids.items()},
        "reason": pl.Series(reason).set(pl.Series(reason == NULL_REASON), None),
        "ts_ns": r["ts"][ok],
        "end_ns": r["ts"][ok] + r["dur"][ok],
    })  # fmt: skip


def hvm_vendor(f: xen_fold.Folded) -> str | None:
    """'svm' or 'vmx' from the exit codes seen (bundle.ingest.infer_hvm_vendor's rule)."""
    reason = f.exits["key"] & np.uint64(NULL_REASON)
    reason = reason[reason != NULL_REASON]
    return xe.hvm_vendor(int(reason.max()) if len(reason) else None)


def exits(f: xen_fold.Folded, vendor: str | None) -> dict[str, pl.DataFrame]:
    """HVM exits by reason: count and time from VM exit to its vCPU's next VM entry or, as
    xenalyze counts it, to the vCPU's wake-up (runstate to runnable) when that comes first:
    the time it then waits for a pCPU is contention, not the exit's cost. Also, as xenalyze
    prints them: the nested-page-fault exits split by handler ("exit_handlers") and the
    exits by the IO port their access record names ("io_exits")."""
    r = f.exits
    key, dur, count = r["key"], r["dur"], r["count"]
    vendor = vendor or "vmx"
    low = np.uint64(0xFFFFFFFF)
    split = np.flatnonzero(
        np.isin(key & low, [c for c, n in _reason_names(vendor).items() if n in SPLIT_EXITS])
    )
    by_handler = key[split] & ~low | r["handler"][split].astype(np.uint64) << np.uint64(16)
    low16 = pl.col("reason") & 0xFFFF
    handlers = _by_key(by_handler | key[split] & low, dur[split], count[split]).with_columns(
        (pl.col("reason") // (1 << 16)).cast(pl.Int64).replace_strict(
            dict(enumerate(HANDLER_NAMES)), return_dtype=pl.String).alias("handler"),
        low16,
    )  # fmt: skip
    at = np.flatnonzero(r["io"] != NO_IO)
    ports = _by_key(key[at] & ~low | r["io"][at].astype(np.uint64), dur[at], count[at])
    ports = ports.with_columns(
        low16.alias("port"),
        pl.when(pl.col("reason") // (1 << 16) == 1).then(pl.lit("write")).otherwise(pl.lit("read"))
        .alias("dir"),
    )  # fmt: skip
    return {
        "exits": _named(_by_key(key, dur, count), vendor),
        "exit_handlers": _named(handlers, vendor),
        "io_exits": ports.select(
            "dom", "vcpu", "port", "dir", pl.exclude("dom", "vcpu", "port", "dir", "reason")
        ).sort("dom", "vcpu", "port", "dir", nulls_last=True),
    }


def _reason_names(vendor: str) -> dict[int, str]:
    return xe.SVM_EXIT_REASONS if vendor == "svm" else xe.VMX_EXIT_REASONS


def _named(df: pl.DataFrame, vendor: str) -> pl.DataFrame:
    """`df` with each exit reason's name beside it."""
    return df.with_columns(
        pl.col("reason")
        .map_elements(lambda r: xe.exit_reason_name(int(r), vendor), return_dtype=pl.String)
        .alias("name")
    ).select("dom", "vcpu", "reason", "name", pl.exclude("dom", "vcpu", "reason", "name"))


def _by_key(key: np.ndarray, dur: np.ndarray, count: np.ndarray | None = None) -> pl.DataFrame:
    """Per group key: count, total, mean and 5/50/95th percentiles of the matched durations
    (nearest rank, as polars' quantile) and the unmatched count (dur -1), from each
    duration's `count` (xen_fold's histogram of the exits; one each when not given). Sorted
    by group and duration, a group's rank is a search of the running count."""
    count = np.ones(len(key), np.int64) if count is None else count.astype(np.int64)
    order = np.lexsort((dur, key))
    key, dur, count = key[order], dur[order], count[order]
    del order
    starts = np.ones(len(key), np.bool_)
    starts[1:] = key[1:] != key[:-1]
    first = np.flatnonzero(starts)  # each group's first row
    groups = key[first]
    matched = np.where(dur >= 0, count, 0)  # (an exit with no end counts, but has no time)
    counts, n, total = (np.add.reduceat(a, first) for a in (count, matched, dur * matched))
    at_end = np.cumsum(matched, out=matched)  # matched exits up to each row (in place)
    before = np.cumsum(n) - n  # matched exits before each group
    none = pl.Series(n == 0)
    ranks = {}
    for q in QUANTILES:
        rank = np.floor((n - 1) * q + 0.5).astype(np.int64)
        row = np.minimum(np.searchsorted(at_end, before + rank, side="right"), len(key) - 1)
        # a float, as polars' quantile gives (the stored and JSON answers keep their type)
        ranks[f"p{round(q * 100)}_ns"] = pl.Series(dur[row].astype(np.float64)).set(none, None)
    mean = np.round(np.where(n > 0, total / np.maximum(n, 1), 0)).astype(np.int64)  # half to even
    out = pl.DataFrame({
        "dom": (groups >> np.uint64(48)).astype(np.int32),
        "vcpu": ((groups >> np.uint64(32)) & np.uint64(0xFFFF)).astype(np.int32),
        "reason": groups & np.uint64(0xFFFFFFFF),
        "count": counts.astype(np.uint32),
        "total_ns": total.astype(np.int64),
        "mean_ns": pl.Series(mean).set(none, None),
        **ranks,
        "unmatched": (counts - n).astype(np.uint32),
    })  # fmt: skip
    null = {"dom": NULL_ID, "vcpu": NULL_ID, "reason": NULL_REASON}
    return out.with_columns(
        [pl.when(pl.col(c) != v).then(pl.col(c)).alias(c) for c, v in null.items()]
    ).sort("dom", "vcpu", "reason")


QUANTILES = (0.05, 0.5, 0.95)  # the exits' percentiles (p5, p50, p95)


def pv_events(counts: pl.DataFrame) -> pl.DataFrame:
    """PV guests' events per domain, as xenalyze's "PV events" counts them: its names, and
    a multicall's subcalls counted as hypercalls too (and again on their own line).
    `counts`: the fold's "pv_events" table."""
    counts = counts.with_columns(pl.col("event").cast(pl.String))
    subcalls = counts.filter(pl.col("event") == "pv.hypercall_subcall").with_columns(
        pl.lit("pv.hypercall").alias("event")
    )
    order = {e: i for i, e in enumerate(PV_EVENTS)}
    return (
        pl.concat([counts, subcalls])
        .group_by("dom", "event")
        .agg(pl.col("count").sum())
        .with_columns(
            pl.col("event").replace_strict(PV_EVENTS, return_dtype=pl.String).alias("name"),
            pl.col("event").replace_strict(order, return_dtype=pl.Int32).alias("_order"),
        )
        .sort("dom", "_order", nulls_last=True)
        .select("dom", "name", pl.col("count").cast(pl.UInt32))
    )


def hypercalls(counts: pl.DataFrame) -> pl.DataFrame:
    return (
        counts.sort("dom", "kind", "op")
        .with_columns(
            pl.col("op")
            .map_elements(lambda o: xe.hypercall_name(int(o)), return_dtype=pl.String)
            .alias("name")
        )
        .select("dom", "kind", "op", "name", "count")
    )


def io_accesses(counts: pl.DataFrame) -> pl.DataFrame:
    """`counts`: the fold's "io" table, named: space (ioport, mmio) and dir (read, write)."""
    name = pl.col("event").cast(pl.String)
    return counts.select(
        "dom",
        name.str.split("_").list.first().str.strip_prefix("hvm.").alias("space"),
        "addr",
        name.str.split("_").list.last().alias("dir"),
        "count",
    ).sort("dom", "space", "addr", "dir")


SECTION = "summary"  # the bundle's derived entry (manifest section) of the stored sections
VERSION = 3  # of the sections' code: bump when an answer changes
DERIVED_DIR = "derived"


def _xentrace(events: pl.LazyFrame) -> pl.LazyFrame:
    return events.filter(pl.col("source") == "xentrace")


def _sections(events: pl.LazyFrame, vendor: str | None) -> dict[str, pl.DataFrame]:
    """Every section but the exit sites (which need symbol files)."""
    return {**xen_sections(fold(events), vendor), "virtqueues": virtqueues(events)}


def xen_sections(f: xen_fold.Folded, vendor: str | None) -> dict[str, pl.DataFrame]:
    """The xentrace sections, from the fold of its rows."""
    t = f.tables
    groups = t["groups"]
    return {
        "totals": totals(groups),
        "volume": volume(groups),
        "lost_records": t["lost_records"].sort("cpu"),
        "records_by_vcpu": records_by_dom(groups),
        "runstates": runstates(f),
        **exits(f, vendor),
        "hypercalls": hypercalls(t["hypercalls"]),
        "pv_events": pv_events(t["pv_events"]),
        "io": io_accesses(t["io"]),
        "interrupts": t["interrupts"]
        .with_columns(pl.col("kind").cast(pl.String))
        .sort("dom", "vcpu", "kind", "vector"),
        "grants": t["grants"]
        .with_columns(pl.col("op").cast(pl.String).str.strip_prefix("mem.grant_"))
        .sort("by_dom", "for_dom", "op"),
    }


def exit_sites(ev: pl.LazyFrame, symbols, vendor: str | None, top: int = 20) -> pl.DataFrame:
    """HVM exits by the guest function they left (needs the guest's vmlinux symbols)."""
    empty = pl.DataFrame(schema={"function": pl.String, "exits": pl.UInt32, "reasons": pl.String})
    if not symbols:
        return empty
    rip = pl.coalesce(*[fields.xen(e, "rip") for e in EXIT_EVENTS])
    ex = (
        ev.filter(pl.col("event").is_in(EXIT_EVENTS))
        .select(rip.alias("rip"), fields.exit_reason().alias("reason"))
        .collect()
    )
    if not len(ex):
        return empty
    rips = ex["rip"].to_numpy()
    names = name_addresses(rips, symbols)
    fn = pl.Series("function", names).str.strip_chars(" <>").str.replace(r"\+0x[0-9a-f]+.*$", "")
    table = ex.with_columns(fn.replace("", "(unknown)")).with_columns(
        pl.col("reason").map_elements(
            lambda r: xe.exit_reason_name(int(r), vendor or "vmx"), return_dtype=pl.String
        )
    )
    return (
        table.group_by("function")
        .agg(
            pl.len().alias("exits"), pl.col("reason").unique().sort().str.join(",").alias("reasons")
        )
        .sort("exits", "function", descending=[True, False])
        .head(top)
    )


@dataclass
class Summary:
    vendor: str | None
    cpu_khz: int | None
    sections: dict[str, pl.DataFrame]

    @classmethod
    def of(
        cls, events: pl.LazyFrame, *, vendor: str | None, cpu_khz: int | None, symbols=()
    ) -> Summary:
        """Every section computed from the event table."""
        sections = _sections(events, vendor)
        sections["exit_sites"] = exit_sites(_xentrace(events), symbols, vendor)
        return cls(vendor, cpu_khz, sections)

    @classmethod
    def stored(
        cls, bundle, events: pl.LazyFrame, *, vendor: str | None, cpu_khz: int | None, symbols=()
    ) -> Summary:
        """The bundle's summary: its stored sections while the events and these options are
        the ones they were computed from (xvtrace.bundle.derived), else computed and stored.
        The exit sites depend on the symbol files given: always computed (empty without)."""
        want = _key(bundle, vendor, cpu_khz)
        entry = derived.fresh(bundle, SECTION, want)
        if entry is not None:
            sections = {
                name: pl.read_parquet(bundle.path / f) for name, f in entry["sections"].items()
            }
        else:
            sections = _sections(events, vendor)
            _store(bundle, want, sections)
        sections["exit_sites"] = exit_sites(_xentrace(events), symbols, vendor)
        return cls(vendor, cpu_khz, sections)

    @staticmethod
    def store_folded(bundle, folded: xen_fold.Folded) -> None:
        """Store the summary of a bundle just ingested, from `folded`: its table's rows
        folded as they were written (`Folding`), so that its first `summary` is served.
        Stored as `stored` would store it: with the bundle's own vendor and clock rate."""
        vendor, khz = bundle.manifest.hvm_vendor, bundle.cpu_khz
        sections = {**xen_sections(folded, vendor), "virtqueues": virtqueues(bundle.events())}
        _store(bundle, _key(bundle, vendor, khz), sections)

    @classmethod
    def of_xentrace(
        cls, path: Path, *, cpu_khz: int | None, vendor: str | None, warn: Callable[[str], None],
        progress: Callable[[str, int, int], None] | None = None,
    ) -> Summary:  # fmt: skip
        """The summary of a raw xentrace file in one pass, with no table written: decoded
        on one core (a thread: the kernels release the GIL) while the other folds.
        `progress("decode", bytes done, bytes)` as it goes."""
        from xvtrace.bundle.ingest import resolve_cpu_khz

        khz, _ = resolve_cpu_khz(cpu_khz, {}, path, warn)
        size = path.stat().st_size
        step = (lambda done: progress("decode", done, size)) if progress else None
        dec = xentrace.XentraceDecoder(path, cpu_khz=khz, progress=step)
        folded = fold_file(dec)
        if text := dec.stats.warning_text():
            warn(text)
        vendor = vendor or hvm_vendor(folded)
        sections = xen_sections(folded, vendor)
        empty = pl.DataFrame(schema=EVENT_SCHEMA).lazy()
        sections |= {"virtqueues": virtqueues(empty), "exit_sites": exit_sites(empty, (), vendor)}
        return cls(vendor, khz, sections)

    def to_json(self) -> dict:
        return {
            "hvm_vendor": self.vendor,
            "cpu_khz": self.cpu_khz,
            **{k: v.to_dicts() for k, v in self.sections.items()},
        }

    def render(self) -> str:
        s = self.sections
        out = self._xen_lines() if s["totals"]["records"][0] else []
        if len(s["virtqueues"]):
            out.append("--- Virtqueues (QEMU trace) ---")
            out.append(
                "   device            kind queue    pops   fills inflight      bytes "
                " pop->fill us {p50|p95|max}   kicks    irqs"
            )
            out.extend(
                f"   {r['dev']:<17} {r['kind']:<4} {r['queue'] if r['queue'] is not None else '?':>5} "
                f"{r['pops']:>7} {r['fills']:>7} {r['in_flight']:>8} {r['bytes_filled'] or 0:>10} "
                f" {{{_us(r['p50_us'])}|{_us(r['p95_us'])}|{_us(r['max_us'])}}}"
                f" {r['kicks'] or 0:>7} {r['irqs'] or 0:>7}"
                for r in s["virtqueues"].iter_rows(named=True)
            )
        if len(s["exit_sites"]):
            out.append("--- HVM exits by guest function ---")
            out.extend(
                f"   {r['exits']:>8}  {r['function']:<40} {r['reasons']}"
                for r in s["exit_sites"].iter_rows(named=True)
            )
        if not out:
            out.append("No events.")
        return "\n".join(out) + "\n"

    def _xen_lines(self) -> list[str]:
        s = self.sections
        t = s["totals"].row(0, named=True)
        out: list[str] = []
        span = (t["span_ns"] or 0) / 1e9
        khz = f"{self.cpu_khz / 1e6:.6g} GHz" if self.cpu_khz else "unknown cpu speed"
        out.append(
            f"Total time: {span:.6f} s ({khz}); {t['records']} records on {t['pcpus']} pCPUs"
        )
        if t["unknown_records"]:
            out.append(f"Unknown event ids: {t['unknown_records']} records (raw words kept)")
        out.append("--- Log volume (bytes) ---")
        for cpu, grp in s["volume"].group_by("cpu", maintain_order=True):
            out.append(f" - cpu {cpu[0]} -")
            out.extend(
                f"   {r['class']:<7} {r['bytes']:>12} bytes {r['records']:>10} records"
                for r in grp.iter_rows(named=True)
            )
        if len(s["lost_records"]):
            out.append("--- Lost records ---")
            out.extend(
                f" cpu {r['cpu']}: {r['lost']} records lost in {r['markers']} gaps"
                for r in s["lost_records"].iter_rows(named=True)
            )
        doms = sorted(
            {d for d in s["records_by_vcpu"]["dom"].to_list() if d is not None}
            | set(s["runstates"]["dom"].to_list())
        )
        for dom in doms:
            out.append(f"|-- Domain {dom} --|")
            out.extend(self._domain_lines(dom))
        unattributed = s["records_by_vcpu"].filter(pl.col("dom").is_null())
        if len(unattributed):
            out.append(
                f"(records while no vCPU was known to run on their pCPU: {unattributed['records'].sum()})"
            )
        return out

    def _domain_lines(self, dom: int) -> list[str]:
        s = self.sections
        out = []
        rs = s["runstates"].filter(pl.col("dom") == dom)
        for vcpu in sorted(
            set(rs["vcpu"].to_list())
            | set(s["records_by_vcpu"].filter(pl.col("dom") == dom)["vcpu"].to_list())
        ):
            out.append(f"-- v{vcpu} --")
            v = rs.filter(pl.col("vcpu") == vcpu)
            if len(v):
                out.append(" Runstates:")
                per_state = v.group_by("state", maintain_order=True).agg(
                    pl.col("count").sum(), pl.col("total_ns").sum()
                )
                for r in per_state.sort("state").iter_rows(named=True):
                    out.append(f"   {r['state']:>9}: {r['count']:>7} {r['total_ns'] / 1e9:10.6f}s")
                    for sub in v.filter(
                        (pl.col("state") == r["state"]) & pl.col("entered_by").is_not_null()
                    ).iter_rows(named=True):
                        out.append(
                            f"     {sub['entered_by']:>9}: {sub['count']:>7} {sub['total_ns'] / 1e9:10.6f}s"
                        )
            this = (pl.col("dom") == dom) & (pl.col("vcpu") == vcpu)
            ex = s["exits"].filter(this)
            # (summaries stored before them have no handler or IO port sections)
            handlers = s.get("exit_handlers", _NO_ROWS).filter(this)
            if len(ex):
                out.append(
                    " Exit reasons:                count    time(s)   mean(ns) {p5|p50|p95} ns"
                )
                for r in ex.iter_rows(named=True):
                    out.append(_timed_line(f"   {r['name']:<24}", r))
                    for h in handlers.filter(pl.col("reason") == r["reason"]).iter_rows(named=True):
                        out.append(_timed_line(f"     {h['handler']:<22}", h))
            _listed(out, " IO port exits (xenalyze's IO address summary):",
                    s.get("io_exits", _NO_ROWS).filter(this),
                    lambda r: _timed_line(f"   {r['port']:#06x} {r['dir']:<5}{'':13}", r))  # fmt: skip
            irq = s["interrupts"].filter((pl.col("dom") == dom) & (pl.col("vcpu") == vcpu))
            # SVM's INTR exit (a physical interrupt) is traced with no vector
            _listed(out, " Interrupts:", irq,
                    lambda r: f"   {r['kind']:<16} vector {_or_dash(r['vector']):>3}: {r['count']}")  # fmt: skip
        if "pv_events" in s:  # (summaries stored before it have no such section)
            _listed(out, " PV events:", s["pv_events"].filter(pl.col("dom") == dom),
                    lambda r: f"   {r['name']:<24} {r['count']:>8}")  # fmt: skip
        _listed(out, " Hypercalls:", s["hypercalls"].filter(pl.col("dom") == dom),
                lambda r: f"   {r['kind']:<10} {r['name']:<30} [{r['op']:>2}]: {r['count']:>8}")  # fmt: skip
        _listed(out, " IO and MMIO accesses by address (every record):", s["io"].filter(pl.col("dom") == dom),
                lambda r: f"   {r['space']:<6} {r['addr']:#012x} {r['dir']:<5}: {r['count']:>8}")  # fmt: skip
        _listed(out, " Grant operations (done by this domain):", s["grants"].filter(pl.col("by_dom") == dom),
                lambda r: f"   {r['op']:<8} for d{r['for_dom']}: {r['count']}")  # fmt: skip
        return out


_NO_ROWS = pl.DataFrame(schema={"dom": pl.Int32, "vcpu": pl.Int32, "reason": pl.UInt64})


def _key(bundle, vendor: str | None, cpu_khz: int | None) -> str:
    return derived.key(bundle, SECTION, VERSION, {"vendor": vendor, "cpu_khz": cpu_khz})


def _store(bundle, want: str, sections: dict[str, pl.DataFrame]) -> None:
    files = {name: f"{DERIVED_DIR}/summary-{name}.parquet" for name in sections}
    derived.store(bundle, SECTION, want, {"sections": files},
                  {files[name]: frame for name, frame in sections.items()})  # fmt: skip


def _timed_line(label: str, r: dict) -> str:
    """A line of exits: count, total seconds, mean and {p5|p50|p95} in ns."""
    return (
        f"{label} {r['count']:>7} {(r['total_ns'] or 0) / 1e9:10.6f} {r['mean_ns'] or 0:>10} "
        f"{{{r['p5_ns']}|{r['p50_ns']}|{r['p95_ns']}}}"
    )


def _listed(out: list[str], title: str, rows: pl.DataFrame, line) -> None:
    """A titled list of `rows` (one `line(row)` each) in the summary's text; nothing when empty."""
    if len(rows):
        out.append(title)
        out.extend(line(r) for r in rows.iter_rows(named=True))


def _or_dash(value) -> object:
    return "-" if value is None else value
