"""dom0's block layer: the ftrace lines a capture with tracefs records for the backend's
requests (block_rq_insert when the backend submits one, block_rq_issue when the device
takes it, block_rq_complete when it is done), in trace_pipe's format with
the x86-tsc clock (the hypervisor's TSC), as `xvtrace capture` sets it up."""

from __future__ import annotations

import numpy as np
import polars as pl

from xvtrace.emulate.pending import Pending
from xvtrace.parsers.ftrace import render
from xvtrace.replay.transports.base import submission

BLOCK_TRACE = "dom0-trace.txt"
DEVICE = (259, 0)  # nvme0n1 in dom0
# the task that issues the request: the backend (its comm as the kernel truncates it)
ISSUER = {"qemu": ("qemu-system-i38", 2101), "blkback": ("blkback.1.xvda", 311),
          "vhost-user": ("vhost-device-bl", 2207), "argo": ("argo-blk-backen", 2304)}  # fmt: skip


def build(parts, transport, cpu_khz: int, tsc0: int) -> Pending:
    """Issue and completion lines of the block requests in `parts` ([(kind, path,
    schedule, requests)]), at their times (ns of the run) to merge chunks in time order."""
    frames = []
    comm, pid = ISSUER[transport.backend]
    for kind, path, sched, req in parts:
        if kind != "block" or not len(req.job):
            continue
        s, d = submission(path)
        n = len(req.job)
        sector = (req.offset // np.uint64(512)).astype(np.uint64)
        nr = np.maximum(1, (req.nbytes // 512)).astype(np.uint64)
        for event, t, who, tid in (("block_rq_insert", sched.end[:, s], comm, pid),
                                   ("block_rq_issue", sched.start[:, d], comm, pid),
                                   ("block_rq_complete", sched.end[:, d], "<idle>", 0)):  # fmt: skip
            frames.append(pl.DataFrame({
                "t": t, "event": _repeat(event, n), "comm": _repeat(who, n), "pid": np.full(n, tid),
                "cpu": np.zeros(n, np.int64), "write": req.write, "sector": sector, "nr_sector": nr,
            }))  # fmt: skip
    if not frames:
        return Pending.empty()
    f = pl.concat(frames).with_columns(
        (tsc0 + (pl.col("t") * cpu_khz / 1e6).round()).cast(pl.UInt64).alias("tsc"),
        pl.lit(DEVICE[0]).alias("major"), pl.lit(DEVICE[1]).alias("minor"),
    )  # fmt: skip
    return Pending.of(f["t"].to_numpy(), f.select(render(f)).to_series())


def _repeat(text: str, n: int) -> pl.Series:
    """n copies of one string, without a Python list of n."""
    return pl.Series([text], dtype=pl.String).new_from_index(0, n)


def write(fh, lines: Pending) -> int:
    return lines.write(fh)
