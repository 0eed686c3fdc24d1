"""Perfetto / chrome://tracing export of a bundle's requests (Chrome trace-event JSON).

Tracks:
- the backend, one per device and queue: the request from the backend's first to its last
  recorded step (QEMU: pop -> fill; otherwise the block issue -> the response hypercall),
  with the device I/O and the way to the interrupt;
- the guest vCPUs: the kick's trap (when the hypervisor side is known) and the interrupt;
- the physical CPUs: the trap again, where Xen handled it.
Flows link one request's slices across tracks: kick (vCPU) -> backend -> interrupt (vCPU).
Times are microseconds from the first event exported, on the timeline's clock (the device
model's, or the hypervisor's for backends that log nothing).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from xvtrace import timeline
from xvtrace.analysis import fold_program, summary
from xvtrace.parsers import fields
from xvtrace.parsers import xen_events as xe
from xvtrace.timeline import pipeline
from xvtrace.timeline.clock import Clock, to_device_model
from xvtrace.timeline.order_stats import slices as row_slices
from xvtrace.timeline.phases import first_stamp

PID_DM, PID_GUEST, PID_HOST = 1, 2, 3
IRQ_US = 0.5  # drawn width of the interrupt mark on a vCPU track


@dataclass(frozen=True)
class Sliced:
    """Trace events made from the requests a slice at a time, when written: `make` turns
    a slice of `source` (lazily) into a row an event. (Streamed by polars instead, a
    piece's batches queued ahead of the slower JSON writer: 0.33 GB at 5 M requests.)"""

    source: pl.LazyFrame
    make: Callable[[pl.LazyFrame], pl.LazyFrame]

    def frames(self, rows: int) -> Iterator[pl.DataFrame]:
        for _, part in row_slices(self.source, rows):
            yield self.make(part).collect()


# What a trace is made of, written in order: single events (the metadata naming processes
# and threads) as dicts, and the many slices and flows a row an event, made when written
# (memory holds a slice of one of them, not the requests and all of them).
Pieces = list[dict | Sliced | pl.DataFrame]


def trace_events(req: pl.LazyFrame, t0: int | None = None) -> Pieces:
    """The trace events of reconstructed requests (rows of requests.parquet, lazily: only
    the columns drawn are read, a slice of the requests at a time); times in us after `t0`
    (default: the first request's first step)."""
    source, columns = req, req.collect_schema().names()
    traps = "trap_exit_ns" in columns
    seen = pl.col("pop_ns").is_not_null()
    if traps:  # the hypervisor's view alone has kicks but no pops
        seen = seen | pl.col("trap_exit_ns").is_not_null()
    req = req.filter(seen)
    first = _origin(req)
    if first is None:  # no request drawn
        return []
    t0 = first if t0 is None else t0
    queues = (
        req.select("dev", "queue").unique().sort("dev", "queue", nulls_last=True).collect().rows()
    )
    tid = {q: i + 1 for i, q in enumerate(queues)}
    backend = {
        "device-model": "device model (QEMU)",
        "traps": "devices, as the hypervisor sees them (kick -> interrupt)",
    }.get(_view(req), "backend (dom0 block layer)")
    events: Pieces = [
        {"ph": "M", "pid": PID_DM, "name": "process_name", "args": {"name": backend}},
        {"ph": "M", "pid": PID_GUEST, "name": "process_name", "args": {"name": "guest vCPUs"}},
        {
            "ph": "M",
            "pid": PID_HOST,
            "name": "process_name",
            "args": {"name": "physical CPUs (Xen)"},
        },
    ]
    events += [_thread(PID_DM, t, f"{dev} queue {q}") for (dev, q), t in tid.items()]

    def us(col: str) -> pl.Expr:
        # ns stamps: three decimals are exact (polars' `/ 1000` can differ in the last bit
        # from row to row of a lazy query)
        return ((pl.col(col) - t0) / 1000).round(3)

    schema = req.collect_schema()
    mapping = pl.LazyFrame({"dev": [d for d, _ in tid], "queue": [q for _, q in tid], "tid": list(tid.values())},
                           schema_overrides={"dev": schema["dev"], "queue": schema["queue"]})  # fmt: skip

    def drawn(part: pl.LazyFrame) -> pl.LazyFrame:
        """A slice of the requests drawn, its times in us and its track."""
        rows = part.filter(seen).with_columns(
            us("pop_ns").alias("pop"), us("fill_ns").alias("fill"), us("handle_ns").alias("handle"),
            us("io_done_ns").alias("io_done"), us("notify_ns").alias("notify"),
            us("kick_ns").alias("kick"),
        )  # fmt: skip
        if traps:
            rows = rows.with_columns(
                us("trap_exit_ns").alias("trap"), us("trap_entry_ns").alias("resume"),
                (pl.col("notify") + IRQ_US).alias("irq_end"),
            )  # fmt: skip
        return rows.join(
            mapping, on=["dev", "queue"], how="left", nulls_equal=True, maintain_order="left"
        )

    def piece(events_of: Callable[[pl.LazyFrame], pl.LazyFrame]) -> Sliced:
        return Sliced(source, lambda part: events_of(drawn(part)))

    args = pl.struct(pl.col("request"), pl.col("op"), pl.col("bytes")).alias("args")

    def slices(pid, tid_expr, name, start, end, where: pl.Expr | None = None) -> Sliced:
        def events_of(rows: pl.LazyFrame) -> pl.LazyFrame:
            rows = rows if where is None else rows.filter(where)
            return rows.filter(pl.col(start).is_not_null() & pl.col(end).is_not_null()).select(
                pl.lit("X").alias("ph"), pl.lit(pid).alias("pid"), tid_expr.alias("tid"),
                pl.lit(name).alias("name"), pl.col(start).alias("ts"),
                (pl.col(end) - pl.col(start)).clip(0).alias("dur"), args,
            )  # fmt: skip

        return piece(events_of)

    parts = [
        slices(PID_DM, pl.col("tid"), "element (pop -> fill)", "pop", "fill"),
        slices(PID_DM, pl.col("tid"), "device I/O", "handle", "io_done"),
        slices(PID_DM, pl.col("tid"), "fill -> interrupt", "fill", "notify"),
        slices(PID_DM, pl.col("tid"), "kick -> interrupt", "kick", "notify",
               where=pl.col("pop").is_null()),  # no backend step known: the device's whole time
    ]  # fmt: skip
    flows = []
    if traps:
        vcpu_tid = 100 + pl.col("trap_vcpu").fill_null(0)
        kicked = pl.col("trap").is_not_null()
        trapped = req.filter(pl.col("trap_exit_ns").is_not_null())  # (those kicked, for tracks)
        parts.append(slices(PID_GUEST, vcpu_tid, "notify trap", "trap", "resume"))
        parts.append(slices(PID_GUEST, vcpu_tid, "interrupt", "notify", "irq_end", where=kicked))
        if "trap_cpu" in columns:
            parts.append(slices(PID_HOST, 200 + pl.col("trap_cpu").fill_null(0), "notify trap",
                                "trap", "resume"))  # fmt: skip
            events += [
                _thread(PID_HOST, 200 + c, f"pCPU {c}") for c in _values(trapped, "trap_cpu")
            ]
        # one flow per request: the guest's kick -> the backend's pop -> the interrupt
        flow = [
            pl.lit("request").alias("name"),
            pl.lit("request").alias("cat"),
            pl.col("request").alias("id"),
        ]
        flows = [
            piece(lambda r: r.filter(kicked).select(
                pl.lit("s").alias("ph"), pl.lit(PID_GUEST).alias("pid"), vcpu_tid.alias("tid"),
                *flow, pl.col("trap").alias("ts"))),
            piece(lambda r: r.filter(kicked & pl.col("pop").is_not_null()).select(
                pl.lit("t").alias("ph"), pl.lit(PID_DM).alias("pid"), pl.col("tid"), *flow,
                pl.col("pop").alias("ts"))),
            piece(lambda r: r.filter(kicked & pl.col("notify").is_not_null()).select(
                pl.lit("f").alias("ph"), pl.lit("e").alias("bp"), pl.lit(PID_GUEST).alias("pid"),
                vcpu_tid.alias("tid"), *flow, pl.col("notify").alias("ts"))),
        ]  # fmt: skip
        events += [_thread(PID_GUEST, 100 + v, f"vCPU {v}") for v in _values(trapped, "trap_vcpu")]
    return events + parts + flows


def _values(rows: pl.LazyFrame, col: str) -> list:
    """The distinct values of `col`, sorted, nulls left out."""
    return sorted(rows.select(pl.col(col).drop_nulls().unique()).collect().to_series().to_list())


def _origin(req: pl.LazyFrame) -> int | None:
    """The first time drawn: every track's times are microseconds after it."""
    first = req.select(first_stamp(req.collect_schema().names()).min()).collect().item()
    return None if first is None else int(first)


def _thread(pid: int, tid: int, name: str) -> dict:
    return {"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": name}}


def _view(req: pl.LazyFrame) -> str:
    if "view" not in req.collect_schema().names():
        return "device-model"
    first = req.select(pl.col("view").first()).collect()
    return first.item() if len(first) and first.item() is not None else "device-model"


PID_RUNSTATE, PID_EXITS = 4, 5
HOST_EVENTS = [*fold_program.RUNSTATE_EVENTS, *fields.EXIT_EVENTS, "hvm.vmentry"]
HOST_LIMIT = 2_000_000  # host slices kept (the first in time): a JSON trace a UI can open


def host_events(ev: pl.LazyFrame, t0: int, clock: Clock | None, vendor: str | None) -> Pieces:
    """Xen's side, every vCPU a track: its runstates (the scheduler's running, runnable,
    blocked, offline) and its VM exits (exit to its vCPU's re-entry or wake-up, whichever
    comes first, as the summary counts them; named by reason), on the
    requests' clock (`clock`: the device model's against the hypervisor's, or None when
    the requests are on the hypervisor's)."""
    # (runstates, and the exits drawn: the earliest HOST_LIMIT, kept bounded as they close)
    folded = summary.fold(ev, times=True, first_spans=HOST_LIMIT)
    runs = summary.runstate_intervals(folded).select(
        pl.col("sdom").alias("dom"), pl.col("svcpu").alias("vcpu"), "ts_ns", "end_ns",
        pl.col("state").alias("name"),
    )  # fmt: skip
    exits = summary.exit_spans(folded)
    reasons = {r: xe.exit_reason_name(int(r), vendor or "vmx")
               for r in exits["reason"].drop_nulls().unique().to_list()}  # fmt: skip
    exits = exits.select("dom", "vcpu", "ts_ns", "end_ns",
                         pl.col("reason").replace_strict(reasons, default="?", return_dtype=pl.String).alias("name"))  # fmt: skip
    events: Pieces = []
    for pid, title, rows in ((PID_RUNSTATE, "vCPU runstates (Xen)", runs),
                             (PID_EXITS, "VM exits per vCPU (Xen)", exits)):  # fmt: skip
        rows = rows.filter(pl.col("dom").is_not_null() & pl.col("vcpu").is_not_null())
        rows = rows.sort("ts_ns").head(HOST_LIMIT)
        if not len(rows):
            continue
        when = [pl.col(c) for c in ("ts_ns", "end_ns")]
        if clock is not None:
            when = [to_device_model(c, clock) for c in when]
        tid = pl.col("dom").cast(pl.Int64) * 1000 + pl.col("vcpu")
        rows = rows.select(
            pl.lit("X").alias("ph"), pl.lit(pid).alias("pid"), tid.alias("tid"), "name",
            ((when[0] - t0) / 1000).alias("ts"), ((when[1] - when[0]) / 1000).clip(0).alias("dur"),
        )  # fmt: skip
        events.append({"ph": "M", "pid": pid, "name": "process_name", "args": {"name": title}})
        events += [_thread(pid, t, f"d{t // 1000}v{t % 1000}")
                   for t in sorted(rows["tid"].unique().to_list())]  # fmt: skip
        events.append(rows)
    return events


def perfetto(bundle, out: Path) -> int:
    """Write the bundle's requests (built by `xvtrace timeline` first) as trace JSON, with
    Xen's vCPU runstates and VM exits as tracks when the capture has them and their clock
    is the requests' or aligned to it."""
    tl = timeline.load(bundle)
    t0 = _origin(tl.scan())
    clock = Clock.from_dict(tl.facts.get("device_model_clock"))
    on_dm = tl.view in (pipeline.DM_VIEW_NAME, pipeline.IDE_VIEW_NAME)  # the device model's clock
    host = clock is not None or not on_dm  # else no clock common to both
    ev = bundle.events()
    if host:  # the origin: the first thing drawn, a request or a host record
        first = ev.filter(pl.col("event").is_in(HOST_EVENTS)).select(pl.col("ts_ns").min())
        first = first.collect().item()
        if first is not None:
            first = pl.select(to_device_model(pl.lit(first), clock) if on_dm else pl.lit(first))
            t0 = int(first.item()) if t0 is None else min(t0, int(first.item()))
        host = t0 is not None
    events = trace_events(tl.scan(), t0)
    if host:
        events += host_events(ev, t0, clock if on_dm else None, bundle.manifest.hvm_vendor)
    with out.open("w") as fh:
        return write_trace(fh, events)


WRITE_ROWS = 100_000  # rows of a frame turned into JSON at a time


def write_trace(fh, events: Pieces) -> int:
    """Write the trace JSON object, its events streamed in order (a million requests make
    eight million events: as Python dicts they took 9.6 GB); the number written."""
    fh.write('{"displayTimeUnit": "ns", "traceEvents": [')
    count = 0
    for piece in events:
        if isinstance(piece, dict):
            texts = [json.dumps(piece)]
        else:  # a line of NDJSON per row, made by polars, WRITE_ROWS rows at a time (a
            # piece of the requests made a slice at a time: collected whole, one held 0.5 GB
            # at 5 M requests)
            batches = (
                piece.frames(WRITE_ROWS)
                if isinstance(piece, Sliced)
                else (piece.slice(at, WRITE_ROWS) for at in range(0, len(piece), WRITE_ROWS))
            )
            texts = (b.write_ndjson().rstrip("\n") for b in batches if len(b))
        for text in texts:
            fh.write(("," if count else "") + "\n" + text.replace("\n", ",\n"))
            count += text.count("\n") + 1
    fh.write("\n]}\n")
    return count
