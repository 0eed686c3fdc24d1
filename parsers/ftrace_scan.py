"""The compiled step of dom0 ftrace decoding: each line's context prefix and block-event
fields read straight from the file's bytes, as the regexes of parsers.ftrace read them.

It takes only lines it reads exactly as those regexes do and leaves every other one to
them (the slow path): lines that are not ASCII, have a nanosecond (sec.usec) timestamp,
match no prefix or their event's fields, or hold a number the regex path's casts would
refuse or print differently. The prefix regex's lazy comm means the first '-' after which
the rest of the prefix matches; the optional irq-flags token is tried before the
timestamp, as the regex tries it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

SLOW, FAST, DROP, OTHER = 0, 1, 2, 3  # DROP: empty or a comment; OTHER: another event
ISSUE, COMPLETE, INSERT = 0, 1, 2  # parsers.ftrace.EVENTS codes

# the block events the scan reads, then the events the regexes read (SLOW)
_NAMES = (b"block_rq_issue", b"block_rq_complete", b"block_rq_insert", b"irq_handler_entry",
          b"notify_remote_via_irq")  # fmt: skip
SCANNED = 3
_MAX = np.uint64(0xFFFFFFFFFFFFFFFF)


@njit(cache=True, nogil=True, inline="always")
def _ws(c):
    """Regex \\s for an ASCII byte."""
    return c == 32 or 9 <= c <= 13


@njit(cache=True, nogil=True, inline="always")
def _word(c):
    return 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c == 95


@njit(cache=True, nogil=True)
def _digits(body, p, e):
    """(end, value, fits in 64 bits) of the decimal digits at p; end == p when none."""
    v = np.uint64(0)
    fits = True
    q = p
    while q < e and 48 <= body[q] <= 57:
        d = np.uint64(body[q] - 48)
        if v > (_MAX - d) // np.uint64(10):
            fits = False
        else:
            v = v * np.uint64(10) + d
        q += 1
    return q, v, fits


@njit(cache=True, nogil=True)
def _spaces(body, p, e):
    while p < e and _ws(body[p]):
        p += 1
    return p


@njit(cache=True, nogil=True)
def _stamp(body, p, e):
    """`\\d+(?:\\.\\d+)?:\\s+\\w+:\\s?` at p: (rest start or -1, ts, fits, has '.', name
    start, name end)."""
    q, ts, fits = _digits(body, p, e)
    if q == p:
        return -1, ts, fits, False, 0, 0
    dot = False
    if q + 1 < e and body[q] == 46 and 48 <= body[q + 1] <= 57:  # '.' and digits
        dot = True
        q, _, _ = _digits(body, q + 1, e)
    if q >= e or body[q] != 58:  # ':'
        return -1, ts, fits, dot, 0, 0
    q += 1
    r = _spaces(body, q, e)
    if r == q:
        return -1, ts, fits, dot, 0, 0
    n0 = r
    while r < e and _word(body[r]):
        r += 1
    if r == n0 or r >= e or body[r] != 58:
        return -1, ts, fits, dot, 0, 0
    n1 = r
    r += 1
    if r < e and _ws(body[r]):
        r += 1
    return r, ts, fits, dot, n0, n1


@njit(cache=True, nogil=True)
def _prefix(body, d, e):
    """The prefix after comm, from the '-' at d: (rest start or -1, pid, cpu, ts, all
    fit, ts has '.', name start, name end)."""
    fail = (-1, np.uint64(0), np.uint64(0), np.uint64(0), False, False, 0, 0)
    p, pid, ok = _digits(body, d + 1, e)
    q = _spaces(body, p, e)
    if p == d + 1 or q == p:
        return fail
    if q < e and body[q] == 40:  # '(': the tgid, digits or dashes
        q = _spaces(body, q + 1, e)
        r = q
        if r < e and 48 <= body[r] <= 57:
            r, _, _ = _digits(body, r, e)
        else:
            while r < e and body[r] == 45:
                r += 1
        if r == q or r >= e or body[r] != 41:  # ')'
            return fail
        q = _spaces(body, r + 1, e)
        if q == r + 1:
            return fail
    if q >= e or body[q] != 91:  # '['
        return fail
    p, cpu, ok2 = _digits(body, q + 1, e)
    if p == q + 1 or p >= e or body[p] != 93:  # ']'
        return fail
    r = _spaces(body, p + 1, e)
    if r == p + 1:
        return fail
    # the irq-flags token (4 or 5 chars other than space [ ] :, then spaces), if any
    t = r
    while t < e and t < r + 6 and not _ws(body[t]) and body[t] != 91 and body[t] != 93 \
            and body[t] != 58:  # fmt: skip
        t += 1
    if 4 <= t - r <= 5 and t < e and _ws(body[t]):
        rest, ts, ok3, dot, n0, n1 = _stamp(body, _spaces(body, t, e), e)
        if rest >= 0:
            return rest, pid, cpu, ts, ok and ok2 and ok3, dot, n0, n1
    rest, ts, ok3, dot, n0, n1 = _stamp(body, r, e)
    if rest < 0:
        return fail
    return rest, pid, cpu, ts, ok and ok2 and ok3, dot, n0, n1


@njit(cache=True, nogil=True)
def _is(body, p, q, name):
    if q - p != len(name):
        return False
    for j in range(len(name)):  # noqa: SIM110 (a loop numba compiles)
        if body[p + j] != name[j]:
            return False
    return True


@njit(cache=True, nogil=True)
def _fields(body, p, e, complete):
    """The block event's fields at p to the line's end: (matched, major, minor, write,
    sector, nr, err, fit, canonical major,minor text)."""
    fail = (False, np.uint64(0), np.uint64(0), False, np.uint64(0), np.uint64(0), np.int64(0),
            False, False)  # fmt: skip
    q, major, f1 = _digits(body, p, e)
    canon = q - p <= 9 and (body[p] != 48 or q - p == 1)
    if q == p or q >= e or body[q] != 44:  # ','
        return fail
    p = q + 1
    q, minor, f2 = _digits(body, p, e)
    canon = canon and q - p <= 9 and (body[p] != 48 or q - p == 1)
    if q == p or q >= e or body[q] != 32:
        return fail
    p = q + 1
    q = p
    write = False
    while q < e and not _ws(body[q]):  # rwbs: \S+
        write = write or body[q] == 87  # 'W'
        q += 1
    if q == p or q >= e or body[q] != 32:
        return fail
    p = q + 1
    if not complete:  # bytes
        q, _, _ = _digits(body, p, e)
        if q == p or q >= e or body[q] != 32:
            return fail
        p = q + 1
    if p >= e or body[p] != 40:  # '(' cmd ')'
        return fail
    q = p + 1
    while q < e and body[q] != 41:
        q += 1
    if q + 1 >= e or body[q + 1] != 32:
        return fail
    p = q + 2
    q, sector, f3 = _digits(body, p, e)
    if q == p or q + 3 > e or body[q] != 32 or body[q + 1] != 43 or body[q + 2] != 32:  # ' + '
        return fail
    p = q + 3
    q, nr, f4 = _digits(body, p, e)
    if q == p or q + 1 >= e or body[q] != 32 or body[q + 1] != 91:  # ' ['
        return fail
    p = q + 2
    err = np.int64(0)
    fit = f1 and f2 and f3 and f4
    if complete:  # [-?\d+]$
        neg = p < e and body[p] == 45
        q, mag, f5 = _digits(body, p + neg, e)
        if q == p + neg or q + 1 != e or body[q] != 93:
            return fail
        fit = fit and f5 and mag <= np.uint64(1 << 62)  # well inside int64
        err = -np.int64(mag) if neg else np.int64(mag)
    elif body[e - 1] != 93:  # [.*]$
        return fail
    return True, major, minor, write, sector, nr, err, fit, canon


@njit(cache=True, nogil=True)
def scan(body, starts, ends, ascii_only):
    """Per line: status (SLOW, FAST, DROP, OTHER), event code, pid, cpu, TSC, major,
    minor, write, sector, sectors and error of the FAST ones."""
    n = len(starts)
    status = np.zeros(n, np.uint8)
    code = np.zeros(n, np.uint8)
    pid = np.zeros(n, np.uint64)
    cpu = np.zeros(n, np.uint64)
    tsc = np.zeros(n, np.uint64)
    major = np.zeros(n, np.uint64)
    minor = np.zeros(n, np.uint64)
    write = np.zeros(n, np.bool_)
    sector = np.zeros(n, np.uint64)
    nr = np.zeros(n, np.uint64)
    err = np.zeros(n, np.int64)
    for i in range(n):
        s, e = starts[i], ends[i]
        if e > s and body[e - 1] == 13:  # '\r'
            e -= 1
        if e == s or body[s] == 35:  # empty, or '#'
            status[i] = DROP
            continue
        if not ascii_only:
            q = s
            while q < e and body[q] < 128:
                q += 1
            if q < e:
                continue
        rest = -1
        for d in range(s, e):  # comm is lazy: the first '-' the rest of the prefix follows
            if body[d] == 45:
                rest, p_, c_, t_, fit, dot, n0, n1 = _prefix(body, d, e)
                if rest >= 0:
                    break
        if rest < 0:
            continue
        k = -1
        for j in range(len(_NAMES)):
            if _is(body, n0, n1, _NAMES[j]):
                k = j
        if k < 0:
            status[i] = OTHER
            continue
        if k >= SCANNED:  # an event the regexes read (rare: a backend's interrupts)
            continue
        if dot or not fit or p_ >= 1 << 32 or c_ >= 1 << 31 or t_ >= np.uint64(1 << 63):
            continue  # a ns clock, or numbers the regex path's casts refuse
        ok, mj, mn, w, sec, nsec, er, fit2, canon = _fields(body, rest, e, k == COMPLETE)
        if not (ok and fit2 and canon):
            continue
        status[i] = FAST
        code[i] = k
        pid[i], cpu[i], tsc[i] = p_, c_, t_
        major[i], minor[i], write[i] = mj, mn, w
        sector[i], nr[i], err[i] = sec, nsec, er
    return status, code, pid, cpu, tsc, major, minor, write, sector, nr, err
