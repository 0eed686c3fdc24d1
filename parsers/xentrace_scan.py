"""The one sequential step of xentrace decoding, compiled with numba.

A xentrace file is a chain: each record's length is in its own header word (0-7 extra
words, optional 8-byte TSC), so the position of record k+1 is known only after reading
record k. No numpy expression can find the boundaries without walking them, and a Python
loop per record runs at ~1 MB/s. These kernels find the windows from header to header,
then walk each window's record chain once, checking and indexing each record (into columns
sized by the words a record took in the chunk before, grown when short; a walk to count
first, then one to fill, took 0.47 s more of a 500 MB trace's 1 s); everything after it
(naming, payload fields, time conversion, merging) is vectorized numpy/polars or compiled
likewise.

Per-pCPU state (last TSC, running vCPU) lives in small arrays the caller owns, so the file
can be decoded in chunks with results identical to one pass.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

CPU_CHANGE_HEADER = np.uint32(0x2001F003)
EVENT_MASK = 0x0FFFFFFF
CPU_CHANGE_EVENT = 0x0001F003
LOST_RECORDS_EVENT = 0x0001F001
WRAP_BUFFER_EVENT = 0x0001F002  # ring padding Xen writes when a buffer wraps
RUNSTATE_EVENT = 0x00021001
RUNSTATE_MASK = 0x0FFFF00F
CONTINUE_RUNNING_EVENT = 0x00021002  # the vCPU keeps running on this pCPU (running->running)

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
def frame_windows(words, pos, stop, end, max_cpu):
    """Enumerate windows starting at word `pos` until a window starts at or after `stop`,
    by their headers alone (a header's size leads to the next header, which
    _valid_header checks is there): the records inside are walked once, by index_records.

    Returns (win, problems, new_pos): win rows are (cpu, data_start, end, declared_end, 0),
    `end` the window's end within the file, which index_records narrows to where its good
    records end, and the 0 their count; problems rows (kind, word_offset, skipped_words,
    aux) are the garbage skipped between windows.
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
        if nw == cap:
            cap *= 2
            grown = np.empty((cap, 5), dtype=np.int64)
            grown[:nw] = win[:nw]
            win = grown
        declared = p + 3 + np.int64(words[p + 2] // 4)
        win[nw, 0] = np.int64(np.int32(words[p + 1]))
        win[nw, 1] = p + 3
        win[nw, 2] = min(declared, end)
        win[nw, 3] = declared
        win[nw, 4] = 0
        nw += 1
        p = declared
    return win[:nw], probs[:npb], p


class Index(NamedTuple):
    """Pass 1: where each record is and the state a record cannot know by itself."""

    word: np.ndarray  # i64 word offset of the record header in the file
    cpu: np.ndarray  # i16 pCPU of the record's window
    tsc: np.ndarray  # u64 own or inherited TSC
    dom: np.ndarray  # i32 domain running on the pCPU, -1 while unknown
    vcpu: np.ndarray  # i32 its vCPU, -1 while unknown

    def take(self, idx: np.ndarray) -> Index:
        return Index(*(col[idx] for col in self))

    @staticmethod
    def concat(parts: list[Index]) -> Index:
        return (
            parts[0] if len(parts) == 1 else Index(*map(np.concatenate, zip(*parts, strict=True)))
        )


@njit(cache=True, nogil=True)
def _grown(a, size):
    out = np.empty(size, a.dtype)
    out[: a.shape[0]] = a
    return out


@njit(cache=True, nogil=True)
def index_records(words, win, last_tsc, tsc_seen, cur_dom, cur_vcpu, per_record):
    """Pass 1 over the records of the windows found by frame_windows, walking each window's
    chain once: position, pCPU, TSC (records without one take their pCPU's last) and
    running vCPU (from runstate records). A window's walk stops at a record Xen cannot
    have written or one that runs past the window's end: win[i, 2] becomes where its good
    records end and win[i, 4] their count.

    last_tsc/tsc_seen/cur_dom/cur_vcpu are per-pCPU state carried across chunks and updated
    in place. `per_record`: the words a record is expected to take (the columns are sized
    by it, and grow if it was too many). Returns the Index fields, a mask of records before
    any TSC of their pCPU, a problems array (the windows' bad records, overruns and
    truncation, in file order, then the TSC steps backward), and (records lost, as
    lost-record records say; wrap-buffer fillers) among them (tally's, of every record).
    """
    most = 0  # every record is a word at least
    for i in range(win.shape[0]):
        most += win[i, 2] - win[i, 1]
    cap = min(most, np.int64(most / max(per_record, 1.0) * 1.125) + 256)
    word = np.empty(cap, dtype=np.int64)
    cpu_out = np.empty(cap, dtype=np.int16)
    tsc = np.empty(cap, dtype=np.uint64)
    dom = np.empty(cap, dtype=np.int32)
    vcpu = np.empty(cap, dtype=np.int32)
    missing = np.empty(cap, dtype=np.bool_)
    probs = np.empty((win.shape[0] + 1, 4), dtype=np.int64)
    npb = 0
    back = 0
    back_first = np.int64(-1)
    lost, wrap = 0, 0
    k = 0
    for i in range(win.shape[0]):
        c = win[i, 0]
        r = win[i, 1]
        e = win[i, 2]
        k0 = k
        kind = 0
        while True:
            while r < e and k < cap:
                h = words[r]
                ev = h & EVENT_MASK
                cls = (ev >> 16) & 0xFFF
                # Xen's classes (TRC_GEN .. TRC_GUEST) are single bits; anything else is not a
                # record Xen wrote, and neither is a CPU_CHANGE inside a window.
                if cls == 0 or (cls & (cls - 1)) != 0 or ev == CPU_CHANGE_EVENT:
                    kind = P_BAD_RECORD
                    break
                nx = (h >> 28) & 7
                if r + 1 + 2 * (h >> 31) + nx > e:
                    kind = P_OVERRUN
                    break
                word[k] = r
                cpu_out[k] = c
                d = r + 1
                if h >> 31:
                    t = np.uint64(words[r + 1]) | (np.uint64(words[r + 2]) << np.uint64(32))
                    if tsc_seen[c] and t < last_tsc[c]:
                        back += 1
                        if back_first < 0:
                            back_first = r
                    last_tsc[c] = t
                    tsc_seen[c] = True
                    d = r + 3
                missing[k] = not tsc_seen[c]
                tsc[k] = last_tsc[c] if tsc_seen[c] else np.uint64(0)  # (0: a float64)
                # Attribute to the vCPU running on this pCPU, then apply the record's effect.
                dom[k] = cur_dom[c]
                vcpu[k] = cur_vcpu[c]
                if (ev & RUNSTATE_MASK) == RUNSTATE_EVENT and nx >= 1:
                    sd = np.int32(words[d] >> 16)
                    sv = np.int32(words[d] & 0xFFFF)
                    new = (ev >> 4) & 0xF
                    old = (ev >> 8) & 0xF
                    if new == 0:
                        cur_dom[c] = sd
                        cur_vcpu[c] = sv
                    elif old == 0 and cur_dom[c] == sd and cur_vcpu[c] == sv:
                        cur_dom[c] = -1
                        cur_vcpu[c] = -1
                elif ev == CONTINUE_RUNNING_EVENT and nx >= 1:
                    # often a pCPU's first scheduling record: from here its vCPU is known (as
                    # xenalyze's vcpu_start takes it)
                    cur_dom[c] = np.int32(words[d] >> 16)
                    cur_vcpu[c] = np.int32(words[d] & 0xFFFF)
                elif ev == LOST_RECORDS_EVENT:
                    cur_dom[c] = -1
                    cur_vcpu[c] = -1
                    if nx:
                        lost += words[d]
                elif ev == WRAP_BUFFER_EVENT:
                    wrap += 1
                r = d + nx
                k += 1
            if kind != 0 or r >= e:
                break
            # out of room (the records were shorter than expected): grown by half
            cap = min(most, cap + cap // 2 + 1)
            word, cpu_out, tsc = _grown(word, cap), _grown(cpu_out, cap), _grown(tsc, cap)
            dom, vcpu, missing = _grown(dom, cap), _grown(vcpu, cap), _grown(missing, cap)
        declared = win[i, 3]
        if kind == 0 and declared > e:
            kind = P_TRUNCATED
        if kind != 0:
            probs[npb, 0] = kind
            probs[npb, 1] = r
            probs[npb, 2] = e - r
            probs[npb, 3] = declared - e if declared > e else 0
            npb += 1
        win[i, 2] = r
        win[i, 4] = k - k0
    n = k
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
    if back:
        probs[npb, 0] = P_TSC_BACKWARD
        probs[npb, 1] = back_first
        probs[npb, 2] = 0
        probs[npb, 3] = back
        npb += 1
    index = (word[:n], cpu_out[:n], tsc[:n], dom[:n], vcpu[:n])
    return index, missing[:n], probs[:npb], (lost, wrap)


def name_table(codes: np.ndarray, names: np.ndarray, unknown: int, guest: int) -> np.ndarray:
    """Open-addressing hash table id -> name index for _event_index (one probe, usually).

    Row layout: [id, name]; empty slots hold id 0, which no Xen event has."""
    size = 1 << int(np.ceil(np.log2(max(len(codes), 1) * 4)))
    table = np.zeros((size + 2, 2), dtype=np.uint32)
    table[size] = unknown, 0
    table[size + 1] = guest, 0
    for c, n in zip(codes.tolist(), names.tolist(), strict=True):
        slot = _hash(c, size)  # in Python: building the table loads no kernel
        while table[slot, 0]:
            slot = (slot + 1) & (size - 1)
        table[slot] = c, n
    return table


def _hash(ev, size):
    """An event id's first slot in a name table of `size` slots (a power of two)."""
    return ((ev * 2654435761) >> 7) & (size - 1)


_slot = njit(cache=True, nogil=True)(_hash)  # the same hash, for the kernels


@njit(cache=True, nogil=True, inline="always")
def _event_index(ev, table):
    """Name index of an event id (TRC_GUEST ids share one name; unknown ids the last)."""
    size = table.shape[0] - 2
    if (ev & 0x0FFFF000) == 0x0800F000:
        return table[size + 1, 0]
    slot = _slot(ev, size)
    while True:
        k = table[slot, 0]
        if k == ev:
            return table[slot, 1]
        if k == 0:
            return table[size, 0]
        slot = (slot + 1) & (size - 1)


@njit(cache=True, nogil=True, inline="always")
def tsc_to_ns(tsc, origin, khz):
    """floor((tsc - origin) * 1e6 / khz) exactly (modulo 2**64 where that overflows an
    int64), for |tsc - origin| < 2**63, without a division per call: each quotient is
    estimated with the reciprocal of `khz` (computed once per loop, where the call is
    inlined) and corrected by exact integer products. (Two divisions were 13 ns of a
    record, a sixth of the summary's fold.)"""
    dt = np.int64(np.uint64(tsc) - np.uint64(origin))  # wrapping difference read as signed
    inv = 1.0 / khz
    e = np.float64(dt) * inv
    if -4e18 < e < 4e18:
        q = np.int64(e)  # off by at most about 3 * |dt| * 2**-53 / khz + 1: a few steps
        # below for any real rate (1,300 at 1 kHz and |dt| near 2**62)
        rem = dt - q * khz
        while rem < 0:
            q -= 1
            rem += khz
        while rem >= khz:
            q += 1
            rem -= khz
    else:
        q = dt // khz
        rem = dt - q * khz
    r6 = rem * 1_000_000  # < khz * 1e6: exact in a double for khz < 2**33
    c = np.int64(np.float64(r6) * inv)
    while c * khz > r6:
        c -= 1
    while (c + 1) * khz <= r6:
        c += 1
    return q * 1_000_000 + c


@njit(cache=True, nogil=True, inline="always")
def record_address(ev, nx, w0, w1, addr32, addr64):
    """(address, present) of a record of id `ev` with `nx` payload words starting w0, w1:
    the IO port or MMIO/NPF address its payload starts with (emit_records' `names`)."""
    if (ev >> 12) == 0x82 and nx >= 1:  # only HVM handler ids carry an address
        for a in addr32:
            if ev == a:
                return np.uint64(w0), True
        if nx >= 2:
            for a in addr64:
                if ev == a:
                    return np.uint64(w0) | (np.uint64(w1) << np.uint64(32)), True
    return np.uint64(0), False


@njit(cache=True, nogil=True)
def tally(words, i_word, order, lost_id, wrap_id):
    """(records lost, as lost-record records say; wrap-buffer fillers) among the records
    i_word[order] (what the decoder's stats count of the records it hands over)."""
    lost = 0
    wrap = 0
    for s in order:
        h = words[i_word[s]]
        ev = h & EVENT_MASK
        if ev == lost_id and (h >> 28) & 7:
            lost += words[i_word[s] + 1 + 2 * (h >> 31)]
        elif ev == wrap_id:
            wrap += 1
    return lost, wrap


@njit(cache=True, nogil=True)
def count_due(held, tsc, due, everything, last, after):
    """Of the records now due, the TSCs `held` (not due before) and a chunk's `tsc` up to
    `due` (all of them: `everything`): how many are earlier than `last` (when `after`: the
    last one due before), whether any is due and the latest of them; the TSCs still
    held, in the order they came; and the least and greatest of the chunk's."""
    out = np.empty(held.shape[0] + tsc.shape[0], np.uint64)
    m = 0
    early = 0
    top = np.uint64(0)
    seen = False
    lo, hi = np.iinfo(np.uint64).max, np.uint64(0)
    for part in (held, tsc):
        for t in part:
            if everything or t <= due:
                early += after and t < last
                if not seen or t > top:
                    top = t
                seen = True
            else:
                out[m] = t
                m += 1
    for t in tsc:
        lo, hi = min(lo, t), max(hi, t)
    return early, seen, top, out[:m], lo, hi


@njit(cache=True, nogil=True)
def emit_records(words, order, index, origin, khz, names):
    """Pass 2: the final columns of the records index[order], in that (time) order, decoded
    once from the file words: one write per output value, no intermediate copies.

    `names` is (name_table(), ids whose w0 is an address, ids whose w1:w0 is one).
    ts_ns = floor((tsc - origin) * 1e6 / khz), exactly.
    """
    table, addr32, addr64 = names
    i_word, i_cpu, i_tsc, i_dom, i_vcpu = index
    m = order.shape[0]
    ts_ns = np.empty(m, dtype=np.int64)
    ts_raw = np.empty(m, dtype=np.uint64)
    has_ts = np.empty(m, dtype=np.bool_)
    cpu = np.empty(m, dtype=np.int16)
    dom = np.empty(m, dtype=np.int32)
    vcpu = np.empty(m, dtype=np.int32)
    event = np.empty(m, dtype=np.uint16)
    code = np.empty(m, dtype=np.uint32)
    nargs = np.empty(m, dtype=np.uint8)
    args = np.zeros((7, m), dtype=np.uint64)
    addr = np.zeros(m, dtype=np.uint64)
    has_addr = np.zeros(m, dtype=np.bool_)
    offset = np.empty(m, dtype=np.uint64)
    for i in range(m):
        s = order[i]
        r = i_word[s]
        h = words[r]
        ev = h & EVENT_MASK
        nx = (h >> 28) & 7
        d = r + 1 + 2 * (h >> 31)
        t = i_tsc[s]
        ts_ns[i] = tsc_to_ns(t, origin, khz)
        ts_raw[i] = t
        has_ts[i] = (h >> 31) == 1
        cpu[i] = i_cpu[s]
        dom[i] = i_dom[s]
        vcpu[i] = i_vcpu[s]
        event[i] = _event_index(ev, table)
        code[i] = ev
        nargs[i] = nx
        for j in range(nx):
            args[j, i] = words[d + j]
        if nx:
            addr[i], has_addr[i] = record_address(ev, nx, words[d], words[d + 1] if nx > 1 else 0,
                                                  addr32, addr64)  # fmt: skip
        offset[i] = np.uint64(r) * np.uint64(4)
    return (ts_ns, ts_raw, has_ts, cpu, dom, vcpu, event, code, nargs, args, addr, has_addr,
            offset)  # fmt: skip


# Names of emit_records' outputs, in order.
EMITTED = ("ts_ns", "ts_raw", "has_ts", "cpu", "dom", "vcpu", "event", "code", "nargs", "args",
           "addr", "has_addr", "src_offset")  # fmt: skip


@njit(cache=True, nogil=True)
def layout_windows(cpu, tsc, has_tsc, code, nargs, args, order, round_cycles, window_bytes, ncpu):
    """The writer's kernel: the file's u32 words for the records order[0], order[1], ...,
    given per pCPU in order (the rows are read where they lie: no gathered copy).

    Round of a record = its TSC // round_cycles, never going back within a pCPU; within a
    (pCPU, round) the records are split into windows of at most window_bytes. Windows go
    out by (round, split number, pCPU): one merge over the per-pCPU sequences, since each
    is already in order.
    """
    n = order.shape[0]
    rnd = np.empty(n, np.int64)
    sub = np.empty(n, np.int64)
    words = np.empty(n, np.int64)
    cur_rnd = np.full(ncpu, -1, np.int64)
    used = np.zeros(ncpu, np.int64)
    counts = np.zeros(ncpu, np.int64)
    total = 0
    for i in range(n):
        s = order[i]
        c = cpu[s]
        w = 1 + 2 * np.int64(has_tsc[s]) + np.int64(nargs[s])
        words[i] = w
        r = np.int64(tsc[s] // np.uint64(round_cycles))
        if r < cur_rnd[c]:
            r = cur_rnd[c]
        if r != cur_rnd[c]:
            cur_rnd[c] = r
            used[c] = 0
        rnd[i] = r
        sub[i] = used[c] // window_bytes
        used[c] += 4 * w
        counts[c] += 1
        total += w
    # per-pCPU lists of positions (stable counting sort by pCPU)
    start = np.zeros(ncpu + 1, np.int64)
    for c in range(ncpu):
        start[c + 1] = start[c] + counts[c]
    fill = start[:-1].copy()
    idx = np.empty(n, np.int64)
    for i in range(n):
        c = cpu[order[i]]
        idx[fill[c]] = i
        fill[c] += 1
    head = start[:-1].copy()
    # every window adds a 3-word header: at most n of them
    out = np.empty(total + 3 * n, np.uint32)
    pos = 0
    while True:
        best = -1
        for c in range(ncpu):
            if head[c] < start[c + 1]:
                i = idx[head[c]]
                if best < 0:
                    best = c
                else:
                    j = idx[head[best]]
                    if rnd[i] < rnd[j] or (rnd[i] == rnd[j] and sub[i] < sub[j]):
                        best = c
        if best < 0:
            break
        c = best
        first = idx[head[c]]
        hpos = pos
        pos += 3
        nbytes = 0
        while head[c] < start[c + 1]:
            i = idx[head[c]]
            if rnd[i] != rnd[first] or sub[i] != sub[first]:
                break
            s = order[i]
            out[pos] = (
                np.uint32(code[s]) | (np.uint32(nargs[s]) << 28) | (np.uint32(has_tsc[s]) << 31)
            )
            pos += 1
            if has_tsc[s]:
                out[pos] = np.uint32(tsc[s] & np.uint64(0xFFFFFFFF))
                out[pos + 1] = np.uint32(tsc[s] >> np.uint64(32))
                pos += 2
            for j in range(nargs[s]):
                out[pos] = np.uint32(args[s, j])
                pos += 1
            nbytes += 4 * words[i]
            head[c] += 1
        out[hpos] = CPU_CHANGE_HEADER
        out[hpos + 1] = np.uint32(c)
        out[hpos + 2] = np.uint32(nbytes)
    return out[:pos]
