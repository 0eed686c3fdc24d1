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
    pairing key (`vk`; a key `state`, exit_pairs.OpenExits, does not know yet stops the
    pass, which learns the chunk's new keys and goes on)."""
    # at most: the chunk's own exits and one exit carried in from before per vCPU
    n = int(np.count_nonzero(role == EXIT)) + len(state.open)
    out = (np.empty(n, np.uint64), np.empty(n, np.int64), np.empty(n, np.int64),
           np.empty(n, np.uint8), np.empty(n, np.uint32))  # fmt: skip
    slots = np.empty(len(role), np.int64)
    m, start = 0, 0
    while True:
        m, start = pair(state.sorted_keys, state.at, ts, role, vk, reason, port, slots,
                        *state.arrays(), *out, m, start, last)  # fmt: skip
        if start == len(role):
            return tuple(a[:m] for a in out)
        state.learn(vk[start:])  # a vCPU not seen before: every new one from here on


@njit(cache=True, nogil=True, _nrt=False)
def pair(keys, at, ts, role, vk, reason, port, slots,
          counted, o_ts, o_reason, o_wake, o_handler, o_io, o_open, last_wake,
          out_key, out_ts, out_dur, out_handler, out_io, m, start, last):  # fmt: skip
    """Rows [start:] into the open exits and the outputs (`m` of them filled); returns
    (outputs filled, where it stopped: len(role), or the first row of an instant with a
    key not in `keys`, none of whose rows it took)."""
    n = len(role)
    i = start
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
    if last:
        for v in range(len(o_open)):
            if o_open[v]:
                m = _emit(v, NEVER, NO_TIME, counted, o_ts, o_reason, o_wake, o_handler, o_io,
                          out_key, out_ts, out_dur, out_handler, out_io, m)  # fmt: skip
                o_open[v] = False
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
def by_vcpu(vk, tsc, skip):
    """The order that puts rows (in the order their records lie in the file; those in
    `skip` left out) by pairing key `vk`, each key's rows in `tsc` order, ties in their
    order here: a key's rows in
    the time order the pairing takes them, which is all it needs, since it pairs each
    vCPU's rows apart from the others'. (A stable sort of every row by TSC, then by key,
    gives the same; this counts the rows by key, and sorts alone the rows of a key that
    came from more than one pCPU out of TSC order.)"""
    n = vk.shape[0]
    slot = np.empty(n, np.int64)
    size, nk, i = 64, 0, 0
    table, keys = np.full(size, -1, np.int64), np.empty(size, np.uint64)
    while True:
        i, nk = _slots(vk, skip, slot, table, keys, nk, i)
        if i == n:
            break
        size *= 2  # (a table half full: twice the size, each key placed again)
        keys = np.concatenate((keys, np.empty(size - keys.shape[0], np.uint64)))
        table = np.full(size, -1, np.int64)
        for s in range(nk):
            _find(keys[s], table, keys, s)
    start = np.zeros(nk + 1, np.int64)
    for i in range(n):
        start[slot[i] + 1] += 1  # (a row left out counts at -1 + 1: before the first key's)
    for s in range(nk):
        start[s + 1] += start[s]
    fill = start[:nk].copy()
    order = np.empty(start[nk] - start[0], np.int64)
    for i in range(n):
        s = slot[i]
        if s >= 0:
            order[fill[s] - start[0]] = i
            fill[s] += 1
    for s in range(nk):
        a, b = start[s] - start[0], start[s + 1] - start[0]
        for i in range(a + 1, b):
            if tsc[order[i]] < tsc[order[i - 1]]:
                part = order[a:b].copy()
                order[a:b] = part[np.argsort(tsc[part], kind="mergesort")]
                break
    return order


@njit(cache=True, nogil=True)
def _slots(vk, skip, slot, table, keys, nk, start):
    """Each row's key's slot (-1 for a row to skip), from row `start`, new keys given the
    next; returns (where it
    stopped: the end, or a new key the table has no room for; the keys known). Apart
    from by_vcpu, whose tables it may regrow: a loop over arrays reassigned inside it
    ran 20 times slower."""
    last, known = np.uint64(0), -1  # (a key's rows come in runs)
    for i in range(start, vk.shape[0]):
        if skip[i]:
            slot[i] = -1
            continue
        k = vk[i]
        if known < 0 or k != last:
            known, nk = _find(k, table, keys, nk)
            if known < 0:
                return i, nk
            last = k
        slot[i] = known
    return vk.shape[0], nk


@njit(cache=True, nogil=True)
def _find(k, table, keys, nk):
    """Key k's slot in the open-addressing `table` of `keys`, made the nk-th if new (-1
    when the table would be over half full); and the keys known after."""
    size = table.shape[0]
    h = np.int64((k * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)) & (size - 1)
    while table[h] >= 0:
        if keys[table[h]] == k:
            return table[h], nk
        h = (h + 1) & (size - 1)
    if 2 * (nk + 1) > size:
        return -1, nk
    keys[nk] = k
    table[h] = nk
    return nk, nk + 1
