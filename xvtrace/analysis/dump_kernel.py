"""The compiled half of the dump's lines (dump._render_compiled): each row's numbers laid
out for line_render and the row's variant (the distinct line shapes of a batch), in one
pass over the columns instead of a numpy pass (and a hash join) per step."""

from __future__ import annotations

import numpy as np
from numba import njit

HEAD = 5  # a line's head: seconds, nanoseconds, cpu (or thread), dom, vcpu

# flags bits: what a row has (dump._render_compiled sets them from the columns' nulls);
# HAS_COLUMN << i: the i-th of dump.COLUMNS (queue, head, addr, size)
HAS_TS, HAS_CPU, HAS_THREAD, HAS_DOM, HAS_VCPU, HAS_COLUMN = 1, 2, 4, 8, 16, 32
# a slot's source (the columns of a slot table row: kind, word, high word, low bit, bit
# count, named index, words needed): nothing, a constant, a word's bits, word j, one of
# dump.COLUMNS (its index in `word`), the device name (text: only its id is in the key)
NONE, CONST, WORD, RAW, COLUMN, DEV = 0, 1, 2, 3, 4, 5
SLOT = 7
KEY = 8  # a variant's key: id, words, event, has a time, cpu/thread/neither, dom width,
# vcpu unknown, the columns it shows ((device id + 1) << 4 | a bit per COLUMN); then its
# named values


def distinct(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of `ids` (int64: layout ids) in order of first sight, and each
    row's index among them."""
    cap = 1 << 10
    while True:
        seen, at, m = _distinct(ids, cap)
        if m >= 0:
            return seen[:m].copy(), at
        cap *= 4


@njit(cache=True, nogil=True)
def _distinct(ids, cap):
    """distinct in a table of `cap` slots (m = -1: more than half of them needed)."""
    table = np.full(cap, -1, np.int64)
    seen = np.empty(cap // 2, np.int64)
    at = np.empty(len(ids), np.int64)
    m = 0
    for r in range(len(ids)):
        c = ids[r]
        i = np.int64((np.uint64(c) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)) & (cap - 1)
        while table[i] >= 0 and seen[table[i]] != c:
            i = (i + 1) & (cap - 1)
        if table[i] < 0:
            if m == cap // 2:
                return seen, at, -1
            seen[m] = c
            table[i] = m
            m += 1
        at[r] = table[i]
    return seen, at, m


@njit(cache=True, nogil=True)
def _digits(v):
    """How many characters str() gives an int64."""
    d = 1
    a = -v if v < 0 else v
    while a >= 10:
        a //= 10
        d += 1
    return d + (1 if v < 0 else 0)


@njit(cache=True, nogil=True)
def lay_out(ts, flags, cpu, thread, dom, vcpu, layout, at, nargs, event,
            a0, a1, a2, a3, a4, a5, a6, queue, head, addr, size, dev, slots, nnamed,
            max_variants):  # fmt: skip
    """(values, variant, keys, m): per row its HEAD numbers and its fields' values by its
    layout's slots (slots[at[r], j] for value column HEAD + j; a RAW slot is word j; `dev`
    the device name's id in the batch, -1 for none), and its variant among the batch's m
    distinct keys (KEY numbers and the named values, which print as text: 0 where the row
    lacks the words); keys[v] is variant v's. m is -1 when there are more than
    max_variants."""
    n = len(ts)
    width = slots.shape[1]
    values = np.zeros((n, HEAD + width), np.uint64)
    variant = np.empty(n, np.int64)
    kw = KEY + nnamed
    keys = np.zeros((max_variants, kw), np.int64)
    room = 2  # the variants' hash table: at most half full (a full one has no empty slot to
    while room < 2 * max_variants:  # end a probe)
        room *= 2
    table = np.full(room, -1, np.int64)
    key = np.zeros(kw, np.int64)
    words = np.zeros(7, np.uint64)
    m = 0
    for r in range(n):
        f = flags[r]
        t = ts[r] if f & HAS_TS else 0
        sec, ns = t // 1_000_000_000, t % 1_000_000_000
        if f & HAS_CPU:
            who, mode = np.int64(cpu[r]), 0
        elif f & HAS_THREAD:
            who, mode = np.int64(thread[r]), 1
        else:
            who, mode = np.int64(0), 2
        d = np.int64(dom[r]) if f & HAS_DOM else np.int64(0)
        v = np.int64(vcpu[r]) if f & HAS_VCPU else np.int64(0)
        values[r, 0], values[r, 1], values[r, 2] = np.uint64(sec), np.uint64(ns), np.uint64(who)
        values[r, 3], values[r, 4] = np.uint64(d), np.uint64(v)
        na = min(np.int64(nargs[r]), 7)
        words[0], words[1], words[2], words[3] = a0[r], a1[r], a2[r], a3[r]
        words[4], words[5], words[6] = a4[r], a5[r], a6[r]
        c = at[r]
        key[:] = 0
        key[0], key[1], key[2] = np.int64(layout[r]), na, np.int64(event[r])
        key[3], key[4] = 1 if f & HAS_TS else 0, mode
        key[5] = _digits(d) if f & HAS_DOM else 0
        key[6] = 0 if f & HAS_VCPU else 1
        for j in range(width):
            kind = slots[c, j, 0]
            if kind == NONE:
                continue
            if kind == DEV:
                if dev[r] >= 0:
                    key[7] |= (dev[r] + 1) << 4
                continue
            if kind == COLUMN:
                e = slots[c, j, 1]
                if not f & (HAS_COLUMN << e):
                    continue
                key[7] |= 1 << e
                if e == 0:
                    x = np.uint64(queue[r])
                elif e == 1:
                    x = np.uint64(head[r])
                elif e == 2:
                    x = np.uint64(addr[r])
                else:
                    x = np.uint64(size[r])
            elif kind == RAW:
                x = words[j]
            elif kind == CONST:
                x = np.uint64(slots[c, j, 1])
            else:
                x = words[slots[c, j, 1]]
                if slots[c, j, 2] >= 0:
                    x |= words[slots[c, j, 2]] << np.uint64(32)
                if slots[c, j, 4] > 0:
                    x = (x >> np.uint64(slots[c, j, 3])) & np.uint64((1 << slots[c, j, 4]) - 1)
            values[r, HEAD + j] = x
            named = slots[c, j, 5]
            if named >= 0 and na >= slots[c, j, 6]:
                key[KEY + named] = np.int64(x)
        # the variant: open addressing over the keys seen in this batch
        h = np.uint64(0)
        for k in range(kw):
            h = (h ^ np.uint64(key[k])) * np.uint64(0x9E3779B97F4A7C15)
        i = np.int64(h >> np.uint64(40)) & (room - 1)
        while True:
            s = table[i]
            if s < 0:
                if m == max_variants:
                    return values, variant, keys, -1
                keys[m] = key
                table[i] = m
                variant[r] = m
                m += 1
                break
            same = True
            for k in range(kw):
                if keys[s, k] != key[k]:
                    same = False
                    break
            if same:
                variant[r] = s
                break
            i = (i + 1) & (room - 1)
    return values, variant, keys, m
