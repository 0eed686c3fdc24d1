"""The compiled pass of exit_pairs, chunk by chunk (apart from it, so that the summary
imports numba only when it pairs exits: a stored summary needs none). The rules are
exit_pairs'."""

from __future__ import annotations

import numpy as np
from numba import njit

from xvtrace.analysis.exit_pairs import (
    ENTRY,
    EXIT,
    IO_WRITE,
    MMIO,
    MMIO_HANDLER,
    NEVER,
    NO_HANDLER,
    NO_IO,
    NO_TIME,
    NPF,
    NPF_HANDLER,
    OpenExits,
)


def pair_chunk(state: OpenExits, vi, ts, role, reason, port, last: bool):
    """The exits this chunk closes (and, when it is the `last`, every exit still open):
    vcpu index, reason, ts, end (ns; NO_TIME with none), handler, io (write << 16 | port, or
    NO_IO). `vi` is each row's vCPU index."""
    # at most: the chunk's own exits and one exit carried in from before per vCPU
    n = int(np.count_nonzero(role == EXIT)) + len(state.open)
    out = (np.empty(n, np.int32), np.empty(n, np.uint32), np.empty(n, np.int64),
           np.empty(n, np.int64), np.empty(n, np.uint8), np.empty(n, np.uint32))  # fmt: skip
    m = pair(vi, ts, role, reason, port, *state.arrays(), *out, last)
    return tuple(a[:m] for a in out)


@njit(cache=True, nogil=True)
def pair(vi, ts, role, reason, port, wakes, wake_pos, wake_end,
          o_ts, o_reason, o_wake, o_handler, o_io, o_open,
          out_vi, out_reason, out_ts, out_end, out_handler, out_io, last):  # fmt: skip
    m = 0
    for i in range(len(role)):
        v, r = vi[i], role[i]
        if r == EXIT:
            if o_open[v]:  # another exit before an entry (lost records)
                m = _emit(v, ts[i], NO_TIME, o_ts, o_reason, o_wake, o_handler, o_io,
                          out_vi, out_reason, out_ts, out_end, out_handler, out_io, m)  # fmt: skip
            p = wake_pos[v]  # the vCPU's first wake-up at or after the exit: its exits
            while p < wake_end[v] and wakes[p] < ts[i]:  # come in time order, so the
                p += 1  # search goes on from where the last one stopped
            wake_pos[v] = p
            o_open[v] = True
            o_ts[v], o_reason[v] = ts[i], reason[i]
            o_wake[v] = wakes[p] if p < wake_end[v] else NO_TIME
            o_handler[v], o_io[v] = NO_HANDLER, NO_IO
        elif not o_open[v]:
            continue
        elif r == ENTRY:
            w = o_wake[v]
            m = _emit(v, NEVER, w if w != NO_TIME and w < ts[i] else ts[i], o_ts, o_reason, o_wake,
                      o_handler, o_io, out_vi, out_reason, out_ts, out_end, out_handler,
                      out_io, m)  # fmt: skip
            o_open[v] = False
        elif o_wake[v] == NO_TIME or ts[i] < o_wake[v]:  # a handler record, exit still open
            if r == MMIO:
                o_handler[v] = MMIO_HANDLER  # wins over npf
            elif r == NPF:
                if o_handler[v] == NO_HANDLER:
                    o_handler[v] = NPF_HANDLER
            elif o_io[v] == NO_IO:  # the exit's first IO record
                o_io[v] = (np.uint32(r == IO_WRITE) << np.uint32(16)) | np.uint32(port[i])
    if last:
        for v in range(len(o_open)):
            if o_open[v]:
                m = _emit(v, NEVER, NO_TIME, o_ts, o_reason, o_wake, o_handler, o_io,
                          out_vi, out_reason, out_ts, out_end, out_handler, out_io, m)  # fmt: skip
                o_open[v] = False
    return m


@njit(cache=True, nogil=True, inline="always")
def _emit(v, limit, end, o_ts, o_reason, o_wake, o_handler, o_io,
          out_vi, out_reason, out_ts, out_end, out_handler, out_io, m):  # fmt: skip
    """Close vCPU v's exit at `end`; with none (NO_TIME), at its wake-up if that came before
    `limit` (the next exit, or never), else it has no end (nor handler)."""
    w = o_wake[v]
    if end == NO_TIME and w != NO_TIME and w < limit:
        end = w
    out_vi[m], out_reason[m], out_ts[m], out_end[m] = v, o_reason[v], o_ts[v], end
    out_handler[m] = o_handler[v] if end != NO_TIME else NO_HANDLER
    out_io[m] = o_io[v] if end != NO_TIME else NO_IO
    return m + 1
