"""dom0's block layer: the ftrace lines a capture with tracefs records for the backend's
requests (block_rq_insert when the backend submits one, block_rq_issue when the device
takes it, block_rq_complete when it is done), in trace_pipe's format with
the x86-tsc clock (the hypervisor's TSC), as `xvtrace capture` sets it up."""

from __future__ import annotations

import numpy as np

from xvtrace.emulate.pending import Batch, Texts
from xvtrace.parsers.ftrace import render_block
from xvtrace.replay.transports.base import submission

BLOCK_TRACE = "dom0-trace.txt"
DEVICE = (259, 0)  # nvme0n1 in dom0
# the task that issues the request: the backend (its comm as the kernel truncates it)
ISSUER = {"qemu": ("qemu-system-i38", 2101), "blkback": ("blkback.1.xvda", 311),
          "vhost-user": ("vhost-device-bl", 2207), "argo": ("argo-blk-backen", 2304)}  # fmt: skip


def build(parts, transport, cpu_khz: int, tsc0: int) -> Batch:
    """Issue and completion lines of the block requests in `parts` ([(kind, path,
    schedule, requests)]), at their times (ns of the run) to merge chunks in time order."""
    out = Batch()
    comm, pid = ISSUER[transport.backend]
    for kind, path, sched, req in parts:
        if kind != "block" or not len(req.job):
            continue
        s, d = submission(path)
        sector = (req.offset // np.uint64(512)).astype(np.uint64)
        nr_sector = np.maximum(1, (req.nbytes // 512)).astype(np.uint64)
        for event, t, who, tid in (("block_rq_insert", sched.end[:, s], comm, pid),
                                   ("block_rq_issue", sched.start[:, d], comm, pid),
                                   ("block_rq_complete", sched.end[:, d], "<idle>", 0)):  # fmt: skip
            tsc = (tsc0 + np.round(t * cpu_khz / 1e6)).astype(np.uint64)
            text = render_block(event, who, tid, 0, *DEVICE, tsc=tsc, write=req.write,
                                sector=sector, nr_sector=nr_sector)  # fmt: skip
            out.add_group(t, 0.0, np.arange(len(t)), Texts(*text))
    return out
