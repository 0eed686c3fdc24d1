"""The summary's fold, compiled: one pass over xentrace records that counts them into the
summary's group tables (one count_map, a table per key's top byte), keeps the few rows
kept whole (runstate changes, lost-record marks) and selects the exit pairing's rows.

What each record feeds is declared in xvtrace.analysis.fold_program (by event, and by
field through parsers.field_table); this module is the loop. Two drivers share the one
record step (`_record`):

- `fold_records` reads a xentrace file's records where they lie, in file order, from the
  decoder's Index (`summary RAW`: no table, no frame). Memory, not arithmetic, bounds this
  machine (4-5 GB/s a core): the file is read once, in order, and only the rows kept are
  put in time order after (`exits_in_time_order`, and a sort of the few runstate rows).
- `fold_columns` reads a decoded frame's columns (ingest, the table's slices), already in
  time order.

Every function of the record loop runs without numba's reference counts (see count_map).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from xvtrace.analysis import count_map
from xvtrace.analysis.exit_pairs import UNKNOWN_VCPU, WAKE
from xvtrace.parsers import field_table
from xvtrace.parsers import xentrace_scan as scan

# what an event feeds (fold_program.FEEDS, by event name index)
F_LOST, F_HYPERCALL, F_PV, F_IO, F_INTERRUPT, F_GRANT, F_RUNSTATE, F_WAKE, F_UNKNOWN = (
    1 << i for i in range(9)
)
# the group tables: a key's top byte (fold_program.TABLES is their order)
T_GROUPS, T_LOST, T_HYPERCALLS, T_PV, T_IO, T_INTERRUPTS, T_GRANTS = range(7)
# the columns of fold_program.program()'s `info`, a row per event id
EV, FLAGS, ROLE, KIND, FIELD_ROW = range(5)
# the field slots (fold_program.SLOTS is their order)
S_REASON, S_HYPERCALL, S_VECTOR, S_FOR_DOM, S_LOST, S_DOM, S_VCPU = range(7)
NO_ROLE = 255
NULL_REASON = 0xFFFFFFFF
MAX_ADDS = 2  # entries one record can add to a map (groups and lost; pv and hypercalls)

# A chunk's rows: `xrows` the exit pairing's, a row per exit of (ts, role, vk, reason,
# port, and its record's place); `krows`, one row of the array per column, those kept whole: the runstate
# changes' (ts, cpu, sdom, svcpu, old, new; -1 for a missing dom or vCPU) and the
# lost-record marks' (ts), each with its record's place (in the Index, or the frame: to
# put them in time order). `n` counts the exit rows, the runstate changes and the marks.
RUNSTATE_ROWS, RUNSTATE_AT, LOST_TS, LOST_AT = range(0, 6), 6, 7, 8
XROWS, KROWS = 6, 9
XAT = 5  # an exit row's record: its place in the Index or frame


def out_arrays(n: int, space: np.ndarray | None = None) -> tuple:
    """(xrows, krows, n, a) for a chunk of `n` records (`a`: room for a record's payload
    words); the rows views of `space` (at least (XROWS + KROWS) * n int64) when given."""
    if space is None:
        space = np.empty((XROWS + KROWS) * n, np.int64)
    # an exit's fields side by side: exits_in_time_order reads them back an exit at a time
    # in time order, one cache line each (0.31 s a 500 MB trace with a field per row: 0.12)
    xrows = space[: XROWS * n].reshape(n, XROWS)
    krows = space[XROWS * n : (XROWS + KROWS) * n].reshape(KROWS, n)
    return xrows, krows, np.zeros(3, np.int64), np.zeros(7, np.uint64)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _u(x):
    """A nullable id (-1: null) as a key field: one more, 0 for null."""
    return np.uint64(np.int64(x) + 1)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _record(ts, cpu, dom, vcpu, code, nargs, a, addr, has_addr, nbytes, at, ids, info, layouts,
            wide, wfilled, run, narrow, nfilled, xrows, krows, n):  # fmt: skip
    """One record into the maps (count_map's: `wide` for the groups, by way of its `run`,
    and lost records, which sum and time; `narrow` for the tables that only count) and the
    rows; `at`: its place in the Index or frame (by which rows made in file order are put
    in time order). `a`: its payload words (nargs of them); ids, info, layouts:
    fold_program.program(). Returns the exit row it made, or -1."""
    r = scan._event_index(code, ids)
    ev = info[r, EV]
    flags = info[r, FLAGS]
    sh = np.uint64(56)
    k1 = (np.uint64(T_GROUPS) << sh) | (np.uint64((code >> 16) & 0xFFF) << np.uint64(32))
    k1 |= np.uint64(cpu & 0xFFFF) | (np.uint64((flags & F_UNKNOWN) != 0) << np.uint64(48))
    count_map.add_run(wide, wfilled, run, (_u(dom) << np.uint64(32)) | _u(vcpu), k1, 0, nbytes, ts)
    role = info[r, ROLE]
    if flags == 0 and role == NO_ROLE:
        return -1
    row = info[r, FIELD_ROW]
    if flags & F_LOST:
        v, ok = field_table.read(layouts, row, S_LOST, code, nargs, a)
        k1 = (np.uint64(T_LOST) << sh) | np.uint64(cpu & 0xFFFF)
        count_map.add(wide, wfilled, 0, k1, 0, np.int64(v), ts)
        krows[LOST_TS, n[2]] = ts
        krows[LOST_AT, n[2]] = at
        n[2] += 1
    if flags & F_HYPERCALL:
        v, ok = field_table.read(layouts, row, S_HYPERCALL, code, nargs, a)
        k1 = (np.uint64(T_HYPERCALLS) << sh) | (np.uint64(ok) << np.uint64(40))
        k1 |= (np.uint64(info[r, KIND]) << np.uint64(32)) | _u(dom)
        count_map.tally(narrow, nfilled, v, k1, 0)
    if flags & F_PV:
        k1 = (np.uint64(T_PV) << sh) | (np.uint64(ev) << np.uint64(32)) | _u(dom)
        count_map.tally(narrow, nfilled, 0, k1, 0)
    if flags & F_IO:
        k1 = (np.uint64(T_IO) << sh) | (np.uint64(has_addr) << np.uint64(48))
        k1 |= (np.uint64(ev) << np.uint64(32)) | _u(dom)
        count_map.tally(narrow, nfilled, addr if has_addr else np.uint64(0), k1, 0)
    if flags & F_INTERRUPT:
        v, ok = field_table.read(layouts, row, S_VECTOR, code, nargs, a)
        k1 = (np.uint64(T_INTERRUPTS) << sh) | (np.uint64(ok) << np.uint64(50))
        k1 |= (np.uint64(ev) << np.uint64(34)) | (_u(dom) << np.uint64(17)) | _u(vcpu)
        count_map.tally(narrow, nfilled, v, k1, 0)
    if flags & F_GRANT:
        v, ok = field_table.read(layouts, row, S_FOR_DOM, code, nargs, a)
        k1 = (np.uint64(T_GRANTS) << sh) | (np.uint64(ok) << np.uint64(50))
        k1 |= (np.uint64(ev) << np.uint64(34)) | _u(dom)
        count_map.tally(narrow, nfilled, v, k1, 0)
    new = (code >> 4) & 0xF
    if flags & (F_RUNSTATE | F_WAKE):
        sdom, dok = field_table.read(layouts, row, S_DOM, code, nargs, a)
        svcpu, vok = field_table.read(layouts, row, S_VCPU, code, nargs, a)
        if flags & F_RUNSTATE:
            i = n[1]
            krows[0, i] = ts
            krows[1, i] = cpu
            krows[2, i] = np.int64(sdom) if dok else -1
            krows[3, i] = np.int64(svcpu) if vok else -1
            krows[4, i] = (code >> 8) & 0xF
            krows[5, i] = new
            krows[RUNSTATE_AT, i] = at
            n[1] += 1
        if flags & F_WAKE and new == 1:  # a vCPU made runnable: its wake-up
            if not (dok and vok):
                return -1  # a wake-up of no named vCPU
            vk = np.int64((sdom << np.uint64(16)) + svcpu)
            return _exit_row(xrows, n, ts, WAKE, vk, NULL_REASON, 0, at)
    if role == NO_ROLE:
        return -1
    if dom >= 0 and vcpu >= 0:
        vk = (np.int64(dom) << 16) | np.int64(vcpu)
    else:  # a vCPU not known (yet): paired with its pCPU's others
        vk = UNKNOWN_VCPU + np.int64(cpu)
    v, ok = field_table.read(layouts, row, S_REASON, code, nargs, a)
    port = np.int64(addr & np.uint64(0xFFFF)) if has_addr else 0
    return _exit_row(xrows, n, ts, role, vk, np.int64(v) if ok else NULL_REASON, port, at)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _exit_row(xrows, n, ts, role, vk, reason, port, at):
    i = n[0]
    xrows[i, 0] = ts
    xrows[i, 1] = role
    xrows[i, 2] = vk
    xrows[i, 3] = reason
    xrows[i, 4] = port
    xrows[i, XAT] = at
    n[0] += 1
    return i


@njit(cache=True, nogil=True, _nrt=False)
def fold_records(words, ready, i_word, i_cpu, i_tsc, i_dom, i_vcpu, origin, khz, addr32,
                 addr64, ids, info, layouts, wide, wfilled, run, narrow, nfilled, xrows, krows,
                 n, a, xi, start):  # fmt: skip
    """The records k >= start of the decoder's Index (i_word .. i_vcpu) with ready[k], in
    file order, from the xentrace file's `words` (addr32, addr64: the IO address ids of
    scan.emit_records' `names`), into the maps and the rows; xi[k]: the exit row record k
    made, or -1 (`xi` empty: not kept). Returns where it stopped: the Index's length, or a
    record a map may not have room for."""
    for k in range(start, i_word.shape[0]):
        if not ready[k]:
            continue
        if not (
            count_map.room(wide, wfilled, MAX_ADDS) and count_map.room(narrow, nfilled, MAX_ADDS)
        ):
            return k
        r = i_word[k]
        h = words[r]
        code = h & scan.EVENT_MASK
        nx = (h >> 28) & 7
        d = r + 1 + 2 * (h >> 31)
        for j in range(nx):
            a[j] = words[d + j]
        addr, has_addr = scan.record_address(code, nx, a[0], a[1], addr32, addr64)
        j = _record(scan.tsc_to_ns(i_tsc[k], origin, khz), i_cpu[k], i_dom[k], i_vcpu[k],
                    code, nx, a, addr, has_addr, 4 + 8 * (h >> 31) + 4 * nx, k, ids, info,
                    layouts, wide, wfilled, run, narrow, nfilled, xrows, krows, n)  # fmt: skip
        if xi.shape[0]:
            xi[k] = j
    return i_word.shape[0]


@njit(cache=True, nogil=True)
def exits_in_time_order(order, xi, xrows, count):
    """The exit rows fold_records made (xi: each record's, -1 for none), in the records'
    time `order`, as the exit pairing takes them: ts, role, vk, reason, port."""
    ts = np.empty(count, np.int64)
    role = np.empty(count, np.uint8)
    vk = np.empty(count, np.uint64)
    reason = np.empty(count, np.uint32)
    port = np.empty(count, np.uint16)
    m = 0
    for s in order:
        j = xi[s]
        if j >= 0:
            ts[m] = xrows[j, 0]
            role[m] = xrows[j, 1]
            vk[m] = xrows[j, 2]
            reason[m] = xrows[j, 3]
            port[m] = xrows[j, 4]
            m += 1
    return ts, role, vk, reason, port


@njit(cache=True, nogil=True, _nrt=False)
def fold_columns(ts, cpu, dom, vcpu, code, nargs, has_ts, a0, a1, a2, a3, a4, a5, a6, addr,
                 has_addr, ids, info, layouts, wide, wfilled, run, narrow, nfilled, xrows,
                 krows, n, a, start):  # fmt: skip
    """Rows [start:] of a frame's columns (dom, vcpu: -1 for null; a0..a6: the argument
    columns) into the maps and the rows; returns where it stopped, as fold_records."""
    for i in range(start, ts.shape[0]):
        if not (
            count_map.room(wide, wfilled, MAX_ADDS) and count_map.room(narrow, nfilled, MAX_ADDS)
        ):
            return i
        nx = nargs[i]
        a[0], a[1], a[2], a[3], a[4], a[5], a[6] = a0[i], a1[i], a2[i], a3[i], a4[i], a5[i], a6[i]
        _record(ts[i], cpu[i], dom[i], vcpu[i], code[i], nx, a, addr[i], has_addr[i],
                4 + 8 * np.int64(has_ts[i]) + 4 * np.int64(nx), i, ids, info, layouts,
                wide, wfilled, run, narrow, nfilled, xrows, krows, n)  # fmt: skip
    return ts.shape[0]
