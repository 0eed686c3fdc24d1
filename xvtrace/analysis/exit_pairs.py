"""VM exits paired with their ends, as xenalyze pairs them, in one compiled pass over the
trace's exit, entry, handler and wake-up records in time order, chunk by chunk.

An exit is open until its vCPU's next entry, or its vCPU's wake-up (runstate to runnable)
when that comes first; another exit of the vCPU, or the trace's end, before either leaves
it with no end, unless the vCPU woke before that. Pairing per vCPU, not per pCPU: a vCPU
that blocks in an exit may resume on another pCPU, and another vCPU may run on this one
meanwhile. A handler record counts for its vCPU's open exit only while the exit is open
(before the wake-up): a read the device model serves is logged when the vCPU resumes.

The wake-ups come in the same stream as the rest, so one pass needs no look-ahead: among
records of one instant a wake-up is taken first (a wake-up at the exit's own instant is
its end; a handler record at the wake-up's instant is not the exit's), and the last
instant of a chunk waits for the next chunk, which may hold more of it.
"""

from __future__ import annotations

import numpy as np
import polars as pl

EXIT, ENTRY, NPF, MMIO, IO_READ, IO_WRITE, WAKE = 0, 1, 2, 3, 4, 5, 6  # a row's role
NO_HANDLER, MMIO_HANDLER, NPF_HANDLER = 0, 1, 2  # an exit's handler (summary.HANDLER_NAMES)
NO_IO = np.uint32(0xFFFFFFFF)
NEVER = np.iinfo(np.int64).max
NO_TIME = np.iinfo(np.int64).min  # no wake-up, no end (a time itself may be negative)
# a closed exit: key (its vCPU's counted key << 32 | reason), ts, dur (-1 with no end),
# handler, io
OUT = ("key", "ts", "dur", "handler", "io")
UNKNOWN_VCPU = 1 << 32  # a pairing key from here up: a pCPU's records whose vCPU is not known
UNKNOWN_COUNTED = np.uint64(0xFFFFFFFF)  # the key their exits are counted under (dom, vcpu null)


class OpenExits:
    """Each vCPU's open exit and last wake-up, carried from one chunk to the next; vCPUs by
    slot, in the order their keys were first seen (`learn`)."""

    def __init__(self):
        self.keys = np.zeros(0, np.uint64)  # by index
        self.counted = np.zeros(0, np.uint64)  # what each one's exits are counted under
        self.sorted_keys = np.zeros(0, np.uint64)  # the keys sorted, and their slots
        self.at = np.zeros(0, np.int32)
        self.ts = np.zeros(0, np.int64)
        self.reason = np.zeros(0, np.uint32)
        self.wake = np.zeros(0, np.int64)
        self.handler = np.zeros(0, np.uint8)
        self.io = np.zeros(0, np.uint32)
        self.open = np.zeros(0, np.bool_)
        self.last_wake = np.zeros(0, np.int64)

    def learn(self, keys: np.ndarray) -> None:
        """Give each key not seen before a slot."""
        seen = pl.Series(keys).unique().to_numpy()  # (a hash: a sort of a chunk took 20 ms)
        new = np.setdiff1d(seen, self.sorted_keys)
        if not len(new):
            return
        self.keys = np.concatenate((self.keys, new))
        self.counted = np.where(self.keys >= UNKNOWN_VCPU, UNKNOWN_COUNTED, self.keys)
        order = np.argsort(self.keys, kind="stable")
        self.sorted_keys, self.at = self.keys[order], order.astype(np.int32)
        grow = {"ts": 0, "reason": 0, "wake": NO_TIME, "handler": NO_HANDLER, "io": NO_IO,
                "open": False, "last_wake": NO_TIME}  # fmt: skip
        for name, fill in grow.items():
            old = getattr(self, name)
            setattr(self, name, np.concatenate((old, np.full(len(new), fill, old.dtype))))

    def arrays(self):
        return (self.counted, self.ts, self.reason, self.wake, self.handler, self.io, self.open,
                self.last_wake)  # fmt: skip
