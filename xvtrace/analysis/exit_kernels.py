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
    WAKE,
)
from xvtrace.analysis.fold_kernel import XAT


def pair_chunk(state, ts, role, vk, reason, port, last: bool, ranges=None):
    """The exits this chunk closes (and, when it is the `last`, every exit still open), as
    exit_pairs.OUT: key (the vCPU counted << 32 | reason), ts, dur (ns; -1 with no end),
    handler, io (write << 16 | port, or NO_IO). Rows in time order, each with its vCPU's
    pairing key (`vk`; a key `state`, exit_pairs.OpenExits, does not know yet stops the
    pass, which learns the chunk's new keys and goes on). `ranges`: the rows paired,
    [start, end) ranges each in time order (group_due's vCPUs); all by default."""
    # at most: the chunk's own exits and one exit carried in from before per vCPU
    n = int(np.count_nonzero(role == EXIT)) + len(state.open)
    out = (np.empty(n, np.uint64), np.empty(n, np.int64), np.empty(n, np.int64),
           np.empty(n, np.uint8), np.empty(n, np.uint32))  # fmt: skip
    slots = np.empty(len(role), np.int64)
    if ranges is None:
        ranges = np.array([[0, len(role)]], np.int64)
    m, start = 0, 0
    while True:
        m, start = pair(state.sorted_keys, state.at, ranges, ts, role, vk, reason, port, slots,
                        *state.arrays(), *out, m, start, last)  # fmt: skip
        if start == len(role):
            return tuple(a[:m] for a in out)
        state.learn(vk[start:])  # a vCPU not seen before: every new one from here on


@njit(cache=True, nogil=True, _nrt=False)
def pair(keys, at, ranges, ts, role, vk, reason, port, slots,
          counted, o_ts, o_reason, o_wake, o_handler, o_io, o_open, last_wake,
          out_key, out_ts, out_dur, out_handler, out_io, m, start, last):  # fmt: skip
    """The rows of `ranges` ([start, end) rows, each range in time order) from row
    `start` into the open exits and the outputs (`m` of them filled); returns (outputs
    filled, where it stopped: len(role), or the first row of an instant with a key not
    in `keys`, none of whose rows it took)."""
    for r in range(ranges.shape[0]):
        if ranges[r, 1] > start:
            m, stop = _pair_range(keys, at, ts, role, vk, reason, port, slots, counted, o_ts,
                                  o_reason, o_wake, o_handler, o_io, o_open, last_wake,
                                  out_key, out_ts, out_dur, out_handler, out_io, m,
                                  max(ranges[r, 0], start), ranges[r, 1])  # fmt: skip
            if stop < ranges[r, 1]:
                return m, stop
    if last:
        for v in range(len(o_open)):
            if o_open[v]:
                m = _emit(v, NEVER, NO_TIME, counted, o_ts, o_reason, o_wake, o_handler, o_io,
                          out_key, out_ts, out_dur, out_handler, out_io, m)  # fmt: skip
                o_open[v] = False
    return m, len(role)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _pair_range(keys, at, ts, role, vk, reason, port, slots, counted, o_ts, o_reason, o_wake,
                o_handler, o_io, o_open, last_wake, out_key, out_ts, out_dur, out_handler,
                out_io, m, i, n):  # fmt: skip
    """pair's rows [i, n); returns (outputs filled, where it stopped: n, or as pair)."""
    last_key, last_slot = np.uint64(0), -1  # (rows of one vCPU come in runs)
    while i < n:  # an instant at a time: its wake-ups first, then its other rows in order
        j = i + 1
        while j < n and ts[j] == ts[i]:
            j += 1
        for k in range(i, j):  # each row's vCPU slot, before the instant is taken
            if last_slot < 0 or vk[k] != last_key:
                p = np.searchsorted(keys, vk[k])
                if p == len(keys) or keys[p] != vk[k]:
                    return m, i
                last_key, last_slot = vk[k], at[p]
            slots[k] = last_slot
        for wakes in (True, False):
            for k in range(i, j):
                r = role[k]
                if (r == WAKE) != wakes:
                    continue
                v = slots[k]
                if r == WAKE:
                    last_wake[v] = ts[k]
                    if o_open[v] and o_wake[v] == NO_TIME:  # the open exit's first wake-up:
                        o_wake[v] = ts[k]  # its end (at its entry, the next exit or the end)
                elif r == EXIT:
                    if o_open[v]:  # another exit before an entry (lost records)
                        m = _emit(v, ts[k], NO_TIME, counted, o_ts, o_reason, o_wake, o_handler,
                                  o_io, out_key, out_ts, out_dur, out_handler, out_io, m)  # fmt: skip
                    o_open[v] = True
                    o_ts[v], o_reason[v] = ts[k], reason[k]
                    # a wake-up at the exit's own instant (taken before it) is its first
                    o_wake[v] = ts[k] if last_wake[v] == ts[k] else NO_TIME
                    o_handler[v], o_io[v] = NO_HANDLER, NO_IO
                elif not o_open[v]:
                    continue
                elif r == ENTRY:
                    w = o_wake[v]
                    m = _emit(v, NEVER, w if w != NO_TIME and w < ts[k] else ts[k], counted,
                              o_ts, o_reason, o_wake, o_handler, o_io, out_key, out_ts, out_dur,
                              out_handler, out_io, m)  # fmt: skip
                    o_open[v] = False
                elif o_wake[v] == NO_TIME or ts[k] < o_wake[v]:  # a handler record, exit open
                    if r == MMIO:
                        o_handler[v] = MMIO_HANDLER  # wins over npf
                    elif r == NPF:
                        if o_handler[v] == NO_HANDLER:
                            o_handler[v] = NPF_HANDLER
                    elif o_io[v] == NO_IO:  # the exit's first IO record
                        o_io[v] = (np.uint32(r == IO_WRITE) << np.uint32(16)) | np.uint32(port[k])
        i = j
    return m, n


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _emit(v, limit, end, counted, o_ts, o_reason, o_wake, o_handler, o_io,
          out_key, out_ts, out_dur, out_handler, out_io, m):  # fmt: skip
    """Close vCPU v's exit at `end`; with none (NO_TIME), at its wake-up if that came before
    `limit` (the next exit, or never), else it has no end (nor handler)."""
    w = o_wake[v]
    if end == NO_TIME and w != NO_TIME and w < limit:
        end = w
    out_key[m] = (counted[v] << np.uint64(32)) | np.uint64(o_reason[v])
    out_ts[m] = o_ts[v]
    out_dur[m] = end - o_ts[v] if end != NO_TIME else -1
    out_handler[m] = o_handler[v] if end != NO_TIME else NO_HANDLER
    out_io[m] = o_io[v] if end != NO_TIME else NO_IO
    return m + 1


@njit(cache=True, nogil=True)
def group_due(keys, at, nslots, h_ts, h_role, h_vk, h_reason, h_port, h_tsc, h_place, xrows,
              count, tsc, base, due, everything):  # fmt: skip
    """The exit rows of the records now due (`tsc` up to `due`, or `everything`) put by
    vCPU, each vCPU's rows in the time order the pairing takes them (by TSC, ties in file
    order): which is all it needs, since it pairs each vCPU's rows apart from the others'.
    No sort of every row by time: the rows, those held from before (h_*, in file order)
    and those fold_records made from a chunk read in file order (`xrows`, `count` of them;
    `base`: the place of the chunk's first record), are counted by vCPU and put in place;
    only a vCPU whose rows came out of TSC order (from more than one pCPU) is sorted.

    Returns (ts, role, vk, reason, port, TSC, place) of the rows due, grouped; where each
    vCPU's rows start (by slot of `at`, of the `keys` sorted, and one past the last); the
    same columns of the rows not due, in file order; the least and greatest time due.
    With a key not in `keys`, `start` is empty: the caller learns the keys and asks
    again."""
    nh = h_ts.shape[0]
    size = np.zeros(nslots + 1, np.int64)
    nlater = 0
    t_lo, t_hi = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    last_key, slot = np.uint64(0), -1  # (a vCPU's rows come in runs)
    for j in range(nh + count):  # what goes where
        if j < nh:
            d, k, tj = everything or h_tsc[j] <= due, h_vk[j], h_ts[j]
        else:
            r = j - nh
            d = everything or tsc[xrows[r, XAT]] <= due
            k, tj = np.uint64(xrows[r, 2]), xrows[r, 0]
        if not d:
            nlater += 1
            continue
        if slot < 0 or k != last_key:
            p = np.searchsorted(keys, k)
            if p == keys.shape[0] or keys[p] != k:
                size[:] = -1  # (no rows placed: the caller learns the keys first)
                break
            last_key, slot = k, np.int64(at[p])
        size[slot + 1] += 1
        t_lo, t_hi = min(t_lo, tj), max(t_hi, tj)
    if size[0] < 0:
        return _columns(0), size[:0], _columns(0), t_lo, t_hi
    for v in range(nslots):
        size[v + 1] += size[v]
    start = size
    fill = start[:nslots].copy()
    n = start[nslots]
    now, later = _columns(n), _columns(nlater)
    ts, role, vk, reason, port, t, place = now  # (arrays, not tuples, in the loop: a tuple
    l_ts, l_role, l_vk, l_reason, l_port, l_t, l_place = later  # chosen per row cost 10 ns)
    m = 0
    slot = -1
    for j in range(nh):  # each row where it goes: those held from before
        if everything or h_tsc[j] <= due:
            k = h_vk[j]
            if slot < 0 or k != last_key:
                last_key, slot = k, np.int64(at[np.searchsorted(keys, k)])
            i = fill[slot]
            fill[slot] += 1
            ts[i], role[i], vk[i], reason[i] = h_ts[j], h_role[j], k, h_reason[j]
            port[i], t[i], place[i] = h_port[j], h_tsc[j], h_place[j]
        else:
            l_ts[m], l_role[m], l_vk[m], l_reason[m] = h_ts[j], h_role[j], h_vk[j], h_reason[j]
            l_port[m], l_t[m], l_place[m] = h_port[j], h_tsc[j], h_place[j]
            m += 1
    for j in range(count):  # and the chunk's
        q = xrows[j, XAT]
        if everything or tsc[q] <= due:
            k = np.uint64(xrows[j, 2])
            if slot < 0 or k != last_key:
                last_key, slot = k, np.int64(at[np.searchsorted(keys, k)])
            i = fill[slot]
            fill[slot] += 1
            ts[i], role[i], vk[i], reason[i] = xrows[j, 0], xrows[j, 1], k, xrows[j, 3]
            port[i], t[i], place[i] = xrows[j, 4], tsc[q], base + q
        else:
            l_ts[m], l_role[m], l_vk[m] = xrows[j, 0], xrows[j, 1], xrows[j, 2]
            l_reason[m], l_port[m], l_t[m], l_place[m] = xrows[j, 3], xrows[j, 4], tsc[q], base + q
            m += 1
    for v in range(nslots):  # a vCPU's rows out of TSC order (from pCPUs apart): sorted
        a, b = start[v], start[v + 1]
        for i in range(a + 1, b):
            if t[i] < t[i - 1]:
                o = a + np.argsort(t[a:b], kind="mergesort")
                ts[a:b], role[a:b], vk[a:b], reason[a:b] = ts[o], role[o], vk[o], reason[o]
                port[a:b], t[a:b], place[a:b] = port[o], t[o], place[o]
                break
    return now, start, later, t_lo, t_hi


@njit(cache=True, nogil=True)
def _columns(n):
    """group_due's columns for n rows: ts, role, vk, reason, port, TSC, place."""
    return (np.empty(n, np.int64), np.empty(n, np.uint8), np.empty(n, np.uint64),
            np.empty(n, np.uint32), np.empty(n, np.uint16), np.empty(n, np.uint64),
            np.empty(n, np.int64))  # fmt: skip


@njit(cache=True, nogil=True)
def edges(ts, start, head, tail):
    """Per vCPU (rows [start[v], start[v + 1]), in time order): how many of its first rows
    are at time `head` and of its last at `tail` (group_due's rows: those of the instants
    paired apart, or held back)."""
    nv = start.shape[0] - 1
    first, last = np.zeros(nv, np.int64), np.zeros(nv, np.int64)
    for v in range(nv):
        a, b = start[v], start[v + 1]
        i = a
        while i < b and ts[i] == head:
            i += 1
        first[v] = i - a
        j = b
        while j > i and ts[j - 1] == tail:
            j -= 1
        last[v] = b - j
    return first, last
