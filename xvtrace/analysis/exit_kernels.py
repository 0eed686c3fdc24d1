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


def pair_chunk(state, ts, role, vk, reason, port, last: bool):
    """The exits this chunk closes (and, when it is the `last`, every exit still open), as
    exit_pairs.OUT: key (the vCPU counted << 32 | reason), ts, dur (ns; -1 with no end),
    handler, io (write << 16 | port, or NO_IO). Rows in time order, each with its vCPU's
    pairing key (`vk`, known to `state`: exit_pairs.OpenExits)."""
    # at most: the chunk's own exits and one exit carried in from before per vCPU
    n = int(np.count_nonzero(role == EXIT)) + len(state.open)
    out = (np.empty(n, np.uint64), np.empty(n, np.int64), np.empty(n, np.int64),
           np.empty(n, np.uint8), np.empty(n, np.uint32))  # fmt: skip
    m = pair(state.sorted_keys, state.at, ts, role, vk, reason, port, *state.arrays(), *out, last)
    return tuple(a[:m] for a in out)


@njit(cache=True, nogil=True)
def pair(keys, at, ts, role, vk, reason, port,
          counted, o_ts, o_reason, o_wake, o_handler, o_io, o_open, last_wake,
          out_key, out_ts, out_dur, out_handler, out_io, last):  # fmt: skip
    m = 0
    n = len(role)
    i = 0
    while i < n:  # an instant at a time: its wake-ups first, then its other rows in order
        j = i + 1
        while j < n and ts[j] == ts[i]:
            j += 1
        for wakes in (True, False):
            for k in range(i, j):
                r = role[k]
                if (r == WAKE) != wakes:
                    continue
                v = at[np.searchsorted(keys, vk[k])]
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
    if last:
        for v in range(len(o_open)):
            if o_open[v]:
                m = _emit(v, NEVER, NO_TIME, counted, o_ts, o_reason, o_wake, o_handler, o_io,
                          out_key, out_ts, out_dur, out_handler, out_io, m)  # fmt: skip
                o_open[v] = False
    return m


@njit(cache=True, nogil=True, inline="always")
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


QUANTILES = (0.05, 0.5, 0.95)  # group_durations' percentiles (summary: p5, p50, p95)


@njit(cache=True, nogil=True)
def group_durations(key, dur, groups):
    """Per group of `groups` (the keys sorted, unique): exits, unmatched (dur < 0), total of
    the matched durations and their QUANTILES (nearest rank, as polars' quantile; -1 with
    none). The matched durations are bucketed by group, and each bucket's three ranks
    selected in place (quickselect: linear, where a sort was 0.7 s for 8 M exits)."""
    g_n = len(groups)
    counts = np.zeros(g_n, np.int64)
    unmatched = np.zeros(g_n, np.int64)
    total = np.zeros(g_n, np.int64)
    gid = np.empty(len(key), np.int32)
    for i in range(len(key)):
        g = np.searchsorted(groups, key[i])
        gid[i] = g
        counts[g] += 1
        if dur[i] < 0:
            unmatched[g] += 1
        else:
            total[g] += dur[i]
    at = np.zeros(g_n, np.int64)
    for g in range(1, g_n):
        at[g] = at[g - 1] + counts[g - 1] - unmatched[g - 1]
    start = at.copy()
    d = np.empty(len(key) - unmatched.sum(), np.int64)
    for i in range(len(key)):
        if dur[i] >= 0:
            g = gid[i]
            d[at[g]] = dur[i]
            at[g] += 1
    picked = np.full((g_n, 3), -1, np.int64)
    for g in range(g_n):
        n = at[g] - start[g]
        if n == 0:
            continue
        ks = np.empty(3, np.int64)
        for j in range(3):
            ks[j] = start[g] + np.int64(np.floor((n - 1) * QUANTILES[j] + 0.5))
        _select(d, start[g], at[g], ks[1])  # the median; then each side holds its rank
        _select(d, start[g], ks[1], ks[0])
        _select(d, ks[1] + 1, at[g], ks[2])
        for j in range(3):
            picked[g, j] = d[ks[j]]
    return counts, unmatched, total, picked


@njit(cache=True, nogil=True)
def _select(a, lo, hi, k):
    """Put a[lo:hi]'s element of rank k (an index into `a`) at k, the smaller before it and
    the larger after (Hoare's partition around a median of three: many equal values split
    evenly). Nothing to do when k is outside [lo, hi)."""
    if k < lo or k >= hi:
        return
    rounds = 0
    while hi - lo > 1:
        rounds += 1
        if rounds > 64:  # a pivot that keeps missing (input built against median of three):
            a[lo:hi].sort()  # a sort bounds the time
            return
        x, y, z = a[lo], a[(lo + hi - 1) // 2], a[hi - 1]
        pivot = max(min(x, y), min(max(x, y), z))
        i, j = lo, hi - 1
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j + 1
        elif k >= i:
            lo = i
        else:
            return
