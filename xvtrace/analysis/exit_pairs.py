"""VM exits paired with their ends, as xenalyze pairs them, in one compiled pass over the
trace's exit, entry and handler records in time order, chunk by chunk.

An exit is open until its vCPU's next entry, or its vCPU's wake-up (runstate to runnable)
when that comes first; another exit of the vCPU, or the trace's end, before either leaves
it with no end, unless the vCPU woke before that. Pairing per vCPU, not per pCPU: a vCPU
that blocks in an exit may resume on another pCPU, and another vCPU may run on this one
meanwhile. A handler record counts for its vCPU's open exit only while the exit is open
(before the wake-up): a read the device model serves is logged when the vCPU resumes.
"""

from __future__ import annotations

import numpy as np

EXIT, ENTRY, NPF, MMIO, IO_READ, IO_WRITE = 0, 1, 2, 3, 4, 5  # a row's role
NO_HANDLER, MMIO_HANDLER, NPF_HANDLER = 0, 1, 2  # an exit's handler (summary.HANDLER_NAMES)
NO_IO = np.uint32(0xFFFFFFFF)
NEVER = np.iinfo(np.int64).max
NO_TIME = np.iinfo(np.int64).min  # no wake-up, no end (a time itself may be negative)


class OpenExits:
    """Each vCPU's open exit, carried from one chunk to the next (vCPUs by dense index),
    and where its wake-ups stand: `wakes` holds each vCPU's wake-up times in order,
    vCPU v's at [wake_pos[v], wake_end[v])."""

    def __init__(self, wakes: np.ndarray, wake_start: np.ndarray, wake_end: np.ndarray):
        n_vcpus = len(wake_start)
        self.wakes, self.wake_end = wakes, wake_end
        self.wake_pos = wake_start.astype(np.int64)
        self.ts = np.zeros(n_vcpus, np.int64)
        self.reason = np.zeros(n_vcpus, np.uint32)
        self.wake = np.full(n_vcpus, NO_TIME, np.int64)
        self.handler = np.zeros(n_vcpus, np.uint8)
        self.io = np.full(n_vcpus, NO_IO, np.uint32)
        self.open = np.zeros(n_vcpus, np.bool_)

    def arrays(self):
        return (self.wakes, self.wake_pos, self.wake_end,
                self.ts, self.reason, self.wake, self.handler, self.io, self.open)  # fmt: skip
