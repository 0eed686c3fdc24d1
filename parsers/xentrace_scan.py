"""The one sequential step of xentrace decoding, compiled with numba.

A xentrace file is a chain: each record's length is in its own header word (0-7 extra
words, optional 8-byte TSC), so the position of record k+1 is known only after reading
record k. No numpy expression can find the boundaries without walking them, and a Python
loop per record runs at ~1 MB/s. This kernel walks the window framing and the record chain
once (two passes: count, then fill preallocated columns) at memory speed; everything after
it (naming, payload fields, time conversion, merging) is vectorized numpy/polars.

Per-pCPU state (last TSC, running vCPU) lives in small arrays the caller owns, so the file
can be decoded in chunks with results identical to one pass.
"""

from __future__ import annotations

import numpy as np
from numba import njit

CPU_CHANGE_HEADER = np.uint32(0x2001F003)
EVENT_MASK = 0x0FFFFFFF
CPU_CHANGE_EVENT = 0x0001F003
LOST_RECORDS_EVENT = 0x0001F001
RUNSTATE_EVENT = 0x00021001
RUNSTATE_MASK = 0x0FFFF00F

# Problem kinds reported in the `problems` array (kind, word offset, skipped words, extra).
P_RESYNC = 1  # expected a window header, found garbage; skipped to the next valid header
P_BAD_RECORD = 2  # a record inside a window is invalid (zero header, nested CPU_CHANGE)
P_OVERRUN = 3  # a record runs past the end of its window
P_TRUNCATED = 4  # the file ends inside a window
P_TSC_BACKWARD = 5  # a pCPU's TSC stepped backward (kept, reported)
P_NO_HEADER_FOUND = 6  # garbage up to the end of the file


@njit(cache=True, nogil=True)
def _valid_header(words, q, end, max_cpu):
    if q + 3 > end or words[q] != CPU_CHANGE_HEADER:
        return False
    cpu = np.int32(words[q + 1])
    size = words[q + 2]
    if cpu < 0 or cpu >= max_cpu or size % 4 != 0:
        return False
    nxt = q + 3 + np.int64(size // 4)
    # The window must end at the file end, past it (truncated file), or at another header.
    return nxt >= end or words[nxt] == CPU_CHANGE_HEADER


@njit(cache=True, nogil=True)
def _walk_window(words, s, e):
    """Walk records in [s, e): return (n_records, stop, kind) where stop is where the good
    records end and kind is 0 when they fill the window exactly."""
    r = s
    n = 0
    while r < e:
        h = words[r]
        ev = h & EVENT_MASK
        cls = (ev >> 16) & 0xFFF
        # Xen's classes (TRC_GEN .. TRC_GUEST) are single bits; anything else is not a
        # record Xen wrote, and neither is a CPU_CHANGE inside a window.
        if cls == 0 or (cls & (cls - 1)) != 0 or ev == CPU_CHANGE_EVENT:
            return n, r, P_BAD_RECORD
        size = 1 + 2 * (h >> 31) + ((h >> 28) & 7)
        if r + size > e:
            return n, r, P_OVERRUN
        r += size
        n += 1
    return n, r, 0


@njit(cache=True, nogil=True)
def frame_windows(words, pos, stop, end, max_cpu):
    """Enumerate windows starting at word `pos` until a window starts at or after `stop`.

    Returns (win, problems, new_pos): win rows are (cpu, data_start, good_end, declared_end,
    n_records); problems rows are (kind, word_offset, skipped_words, aux).
    """
    cap = 64
    win = np.empty((cap, 5), dtype=np.int64)
    nw = 0
    probs = np.empty((16, 4), dtype=np.int64)
    npb = 0
    p = pos
    while p < end and p < stop:
        if not _valid_header(words, p, end, max_cpu):
            q = p + 1
            while q < end and not _valid_header(words, q, end, max_cpu):
                q += 1
            if npb == probs.shape[0]:
                probs = np.concatenate((probs, np.empty_like(probs)))
            probs[npb, 0] = P_RESYNC if q < end else P_NO_HEADER_FOUND
            probs[npb, 1] = p
            probs[npb, 2] = q - p
            probs[npb, 3] = 0
            npb += 1
            p = q
            continue
        cpu = np.int64(np.int32(words[p + 1]))
        s = p + 3
        declared = s + np.int64(words[p + 2] // 4)
        e = min(declared, end)
        n, good, kind = _walk_window(words, s, e)
        if kind == 0 and declared > end:
            kind = P_TRUNCATED
        if kind != 0:
            if npb == probs.shape[0]:
                probs = np.concatenate((probs, np.empty_like(probs)))
            probs[npb, 0] = kind
            probs[npb, 1] = good
            probs[npb, 2] = e - good
            probs[npb, 3] = declared - end if declared > end else 0
            npb += 1
        if nw == cap:
            cap *= 2
            grown = np.empty((cap, 5), dtype=np.int64)
            grown[:nw] = win[:nw]
            win = grown
        win[nw, 0] = cpu
        win[nw, 1] = s
        win[nw, 2] = good
        win[nw, 3] = declared
        win[nw, 4] = n
        nw += 1
        p = declared
    return win[:nw], probs[:npb], p


@njit(cache=True, nogil=True)
def fill_records(words, win, last_tsc, tsc_seen, cur_dom, cur_vcpu):
    """Decode the records of the windows found by frame_windows into columns.

    last_tsc/tsc_seen/cur_dom/cur_vcpu are per-pCPU state carried across chunks and updated
    in place. Returns (offset_words, cpu, header, tsc, has_tsc, dom, vcpu, args[n, 7]) and
    a problems array of TSC steps backward.
    """
    n = 0
    for i in range(win.shape[0]):
        n += win[i, 4]
    off = np.empty(n, dtype=np.int64)
    cpu_out = np.empty(n, dtype=np.int16)
    hdr = np.empty(n, dtype=np.uint32)
    tsc = np.empty(n, dtype=np.uint64)
    has_tsc = np.empty(n, dtype=np.bool_)
    dom = np.empty(n, dtype=np.int32)
    vcpu = np.empty(n, dtype=np.int32)
    args = np.zeros((n, 7), dtype=np.uint32)
    missing = np.zeros(n, dtype=np.bool_)
    back = 0
    back_first = np.int64(-1)
    k = 0
    for i in range(win.shape[0]):
        c = win[i, 0]
        r = win[i, 1]
        good = win[i, 2]
        while r < good:
            h = words[r]
            cyc = h >> 31
            nx = (h >> 28) & 7
            off[k] = r
            cpu_out[k] = c
            hdr[k] = h
            d = r + 1
            if cyc:
                t = np.uint64(words[r + 1]) | (np.uint64(words[r + 2]) << np.uint64(32))
                if tsc_seen[c] and t < last_tsc[c]:
                    back += 1
                    if back_first < 0:
                        back_first = r
                last_tsc[c] = t
                tsc_seen[c] = True
                d = r + 3
            has_tsc[k] = cyc == 1
            if tsc_seen[c]:
                tsc[k] = last_tsc[c]
            else:
                tsc[k] = 0
                missing[k] = True
            for j in range(nx):
                args[k, j] = words[d + j]
            # Attribute to the vCPU running on this pCPU, then apply the record's effect.
            dom[k] = cur_dom[c]
            vcpu[k] = cur_vcpu[c]
            ev = h & EVENT_MASK
            if (ev & RUNSTATE_MASK) == RUNSTATE_EVENT and nx >= 1:
                sd = np.int32(args[k, 0] >> 16)
                sv = np.int32(args[k, 0] & 0xFFFF)
                new = (ev >> 4) & 0xF
                old = (ev >> 8) & 0xF
                if new == 0:
                    cur_dom[c] = sd
                    cur_vcpu[c] = sv
                elif old == 0 and cur_dom[c] == sd and cur_vcpu[c] == sv:
                    cur_dom[c] = -1
                    cur_vcpu[c] = -1
            elif ev == LOST_RECORDS_EVENT:
                cur_dom[c] = -1
                cur_vcpu[c] = -1
            r = d + nx
            k += 1
    # Records before the first TSC of their pCPU take that pCPU's first TSC in this chunk.
    first = np.zeros(last_tsc.shape[0], dtype=np.uint64)
    found = np.zeros(last_tsc.shape[0], dtype=np.bool_)
    for i in range(n):
        c = cpu_out[i]
        if not missing[i] and not found[c]:
            first[c] = tsc[i]
            found[c] = True
    for i in range(n):
        if missing[i] and found[cpu_out[i]]:
            tsc[i] = first[cpu_out[i]]
            missing[i] = False
    probs = np.empty((1 if back else 0, 4), dtype=np.int64)
    if back:
        probs[0, 0] = P_TSC_BACKWARD
        probs[0, 1] = back_first
        probs[0, 2] = 0
        probs[0, 3] = back
    return off, cpu_out, hdr, tsc, has_tsc, dom, vcpu, args, missing, probs
