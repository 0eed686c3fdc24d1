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
from pathlib import Path

import polars as pl

from xvtrace import timeline

PID_DM, PID_GUEST, PID_HOST = 1, 2, 3
IRQ_US = 0.5  # drawn width of the interrupt mark on a vCPU track


def trace_events(req: pl.DataFrame) -> list[dict]:
    """The trace events of reconstructed requests (rows of requests.parquet)."""
    seen = pl.col("pop_ns").is_not_null()
    if "trap_exit_ns" in req.columns:  # the hypervisor's view alone has kicks but no pops
        seen = seen | pl.col("trap_exit_ns").is_not_null()
    req = req.filter(seen)
    if not len(req):
        return []
    starts = [c for c in ("kick_ns", "pop_ns", "trap_exit_ns") if c in req.columns]
    t0 = int(req.select(pl.min_horizontal(starts).min()).item())
    queues = req.select("dev", "queue").unique().sort("dev", "queue", nulls_last=True).rows()
    tid = {q: i + 1 for i, q in enumerate(queues)}
    backend = {
        "device-model": "device model (QEMU)",
        "traps": "devices, as the hypervisor sees them (kick -> interrupt)",
    }.get(_view(req), "backend (dom0 block layer)")
    events: list[dict] = [
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
        return (pl.col(col) - t0) / 1000

    rows = req.with_columns(
        us("pop_ns").alias("pop"), us("fill_ns").alias("fill"), us("handle_ns").alias("handle"),
        us("io_done_ns").alias("io_done"), us("notify_ns").alias("notify"),
        us("kick_ns").alias("kick"),
    )  # fmt: skip
    mapping = pl.DataFrame({"dev": [d for d, _ in tid], "queue": [q for _, q in tid], "tid": list(tid.values())},
                           schema_overrides={"dev": req.schema["dev"], "queue": req.schema["queue"]})  # fmt: skip
    rows = rows.join(mapping, on=["dev", "queue"], how="left", nulls_equal=True)
    args = pl.struct(pl.col("request"), pl.col("op"), pl.col("bytes")).alias("args")

    def slices(df: pl.DataFrame, pid, tid_expr, name, start, end) -> pl.DataFrame:
        return df.filter(pl.col(start).is_not_null() & pl.col(end).is_not_null()).select(
            pl.lit("X").alias("ph"), pl.lit(pid).alias("pid"), tid_expr.alias("tid"), pl.lit(name).alias("name"),
            pl.col(start).alias("ts"), (pl.col(end) - pl.col(start)).clip(0).alias("dur"), args,
        )  # fmt: skip

    parts = [
        slices(rows, PID_DM, pl.col("tid"), "element (pop -> fill)", "pop", "fill"),
        slices(rows, PID_DM, pl.col("tid"), "device I/O", "handle", "io_done"),
        slices(rows, PID_DM, pl.col("tid"), "fill -> interrupt", "fill", "notify"),
        slices(rows.filter(pl.col("pop").is_null()), PID_DM, pl.col("tid"), "kick -> interrupt",
               "kick", "notify"),  # no backend step known: the device's whole time
    ]  # fmt: skip
    flows = []
    if "trap_exit_ns" in req.columns:
        rows = rows.with_columns(
            us("trap_exit_ns").alias("trap"), us("trap_entry_ns").alias("resume"),
            (pl.col("notify") + IRQ_US).alias("irq_end"),
        )  # fmt: skip
        vcpu_tid = 100 + pl.col("trap_vcpu").fill_null(0)
        parts.append(slices(rows, PID_GUEST, vcpu_tid, "notify trap", "trap", "resume"))
        kicked = rows.filter(pl.col("trap").is_not_null())
        parts.append(slices(kicked, PID_GUEST, vcpu_tid, "interrupt", "notify", "irq_end"))
        if "trap_cpu" in rows.columns:
            parts.append(slices(rows, PID_HOST, 200 + pl.col("trap_cpu").fill_null(0), "notify trap",
                                "trap", "resume"))  # fmt: skip
            events += [_thread(PID_HOST, 200 + c, f"pCPU {c}")
                       for c in sorted(kicked["trap_cpu"].drop_nulls().unique().to_list())]  # fmt: skip
        # one flow per request: the guest's kick -> the backend's pop -> the interrupt
        flow = [
            pl.lit("request").alias("name"),
            pl.lit("request").alias("cat"),
            pl.col("request").alias("id"),
        ]
        flows = [
            kicked.select(pl.lit("s").alias("ph"), pl.lit(PID_GUEST).alias("pid"), vcpu_tid.alias("tid"),
                          *flow, pl.col("trap").alias("ts")),
            kicked.filter(pl.col("pop").is_not_null()).select(
                pl.lit("t").alias("ph"), pl.lit(PID_DM).alias("pid"), pl.col("tid"), *flow,
                pl.col("pop").alias("ts")),
            kicked.filter(pl.col("notify").is_not_null()).select(
                pl.lit("f").alias("ph"), pl.lit("e").alias("bp"), pl.lit(PID_GUEST).alias("pid"),
                vcpu_tid.alias("tid"), *flow, pl.col("notify").alias("ts")),
        ]  # fmt: skip
        events += [_thread(PID_GUEST, 100 + v, f"vCPU {v}")
                   for v in sorted(kicked["trap_vcpu"].drop_nulls().unique().to_list())]  # fmt: skip
    for df in (*parts, *flows):
        events.extend(json.loads(df.write_json()))  # rows as JSON objects, built by polars
    return events


def _thread(pid: int, tid: int, name: str) -> dict:
    return {"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": name}}


def _view(req: pl.DataFrame) -> str:
    return req["view"][0] if "view" in req.columns and len(req) else "device-model"


def perfetto(bundle, out: Path) -> int:
    """Write the bundle's requests (built by `xvtrace timeline` first) as trace JSON."""
    events = trace_events(timeline.load(bundle).requests)
    out.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ns"}))
    return len(events)
