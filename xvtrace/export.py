"""Perfetto / chrome://tracing export of a bundle's requests (Chrome trace-event JSON).

Tracks: the device model's queues (one per device and queue: the element's life from pop
to fill, with the device I/O inside it), the guest vCPUs (the kick's trap, when the
hypervisor side is known) and the interrupt path; flows link the slices of one request.
Times are microseconds from the first event exported, on the device model's clock.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from xvtrace.timeline import REQUESTS

PID_DM, PID_GUEST = 1, 2


def trace_events(req: pl.DataFrame) -> list[dict]:
    """The trace events of reconstructed requests (rows of requests.parquet)."""
    req = req.filter(pl.col("pop_ns").is_not_null())
    if not len(req):
        return []
    starts = [c for c in ("kick_ns", "pop_ns", "trap_exit_ns") if c in req.columns]
    t0 = int(req.select(pl.min_horizontal(starts).min()).item())
    queues = req.select("dev", "queue").unique().sort("dev", "queue", nulls_last=True).rows()
    tid = {q: i + 1 for i, q in enumerate(queues)}
    events: list[dict] = [
        {"ph": "M", "pid": PID_DM, "name": "process_name", "args": {"name": "device model (QEMU)"}},
        {"ph": "M", "pid": PID_GUEST, "name": "process_name", "args": {"name": "guest vCPUs"}},
    ]
    events += [
        {
            "ph": "M",
            "pid": PID_DM,
            "tid": t,
            "name": "thread_name",
            "args": {"name": f"{dev} queue {q}"},
        }
        for (dev, q), t in tid.items()
    ]

    def us(col: str) -> pl.Expr:
        return (pl.col(col) - t0) / 1000

    rows = req.with_columns(
        us("pop_ns").alias("pop"), us("fill_ns").alias("fill"), us("handle_ns").alias("handle"),
        us("io_done_ns").alias("io_done"), us("notify_ns").alias("notify"),
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
    ]
    flows = []
    if "trap_exit_ns" in req.columns:
        rows = rows.with_columns(
            us("trap_exit_ns").alias("trap"), us("trap_entry_ns").alias("resume")
        )
        vcpu_tid = 100 + pl.col("trap_vcpu").fill_null(0)
        parts.append(slices(rows, PID_GUEST, vcpu_tid, "notify trap (IOREQ)", "trap", "resume"))
        kicked = rows.filter(pl.col("trap").is_not_null())
        # a flow from the guest's kick to the element QEMU popped for it
        flows = [
            kicked.select(pl.lit("s").alias("ph"), pl.lit(PID_GUEST).alias("pid"), vcpu_tid.alias("tid"),
                          pl.lit("request").alias("name"), pl.lit("request").alias("cat"),
                          pl.col("request").alias("id"), pl.col("trap").alias("ts")),
            kicked.select(pl.lit("f").alias("ph"), pl.lit("e").alias("bp"), pl.lit(PID_DM).alias("pid"),
                          pl.col("tid"), pl.lit("request").alias("name"), pl.lit("request").alias("cat"),
                          pl.col("request").alias("id"), pl.col("pop").alias("ts")),
        ]  # fmt: skip
        events += [
            {
                "ph": "M",
                "pid": PID_GUEST,
                "tid": 100 + v,
                "name": "thread_name",
                "args": {"name": f"vCPU {v}"},
            }
            for v in sorted(kicked["trap_vcpu"].drop_nulls().unique().to_list())
        ]
    for df in (*parts, *flows):
        events.extend(json.loads(df.write_json()))  # rows as JSON objects, built by polars
    return events


def perfetto(bundle, out: Path) -> int:
    """Write the bundle's requests (built by `xvtrace timeline` first) as trace JSON."""
    path = bundle.path / REQUESTS
    if not path.exists():
        from xvtrace import timeline

        req = timeline.build(bundle)
    else:
        req = pl.read_parquet(path)
    events = trace_events(req)
    out.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ns"}))
    return len(events)
