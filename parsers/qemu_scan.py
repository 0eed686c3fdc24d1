"""The compiled step of QEMU log decoding: each line's prefix, event and arguments read
straight from the file's bytes, as the regexes of parsers.qemu_log would read them.

Polars' regexes read about 20 MB/s of log; this kernel reads a line in one pass. It takes
only what it reads exactly as the regexes do, and marks every other line for them (the
slow path): a line that is not ASCII, has an ISO or no valid prefix, names an event whose
format it cannot follow (text or float arguments, two conversions with no text between
them, text after a number that could continue it), or does not match its format. So the
table is the same whichever path reads a line.

An event's format becomes a template: literal pieces and the conversions between them,
each a kind below (what _format_regex matches for it) and whether padding spaces may
precede it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from xvtrace.parsers.trace_events import _CONV, EventDef

UDEC, SDEC, OCT, HEX, HEXU, PTR, ALTX = range(7)  # \d+ -?\d+ [0-7]+ [0-9a-f]+ [0-9A-F]+ %p %#x

_KIND = {"u": UDEC, "d": SDEC, "i": SDEC, "o": OCT, "x": HEX, "X": HEXU, "p": PTR}
# The characters a conversion's digits are made of: text after it must not start with one.
_CLASS = {
    UDEC: "0123456789", SDEC: "0123456789", OCT: "01234567", HEX: "0123456789abcdef",
    HEXU: "0123456789ABCDEF", PTR: "0123456789abcdef", ALTX: "0123456789abcdefABCDEF",
}  # fmt: skip

# Line status
SLOW, FAST, EMPTY = 0, 1, 2


@dataclass(frozen=True)
class Template:
    pieces: tuple[bytes, ...]  # literal text before, between and after the conversions
    kinds: tuple[int, ...]
    lead: tuple[bool, ...]  # padding spaces may precede the conversion (a width, no '0')
    args: tuple[str, ...]  # the argument each conversion prints


def template(ev: EventDef) -> Template | None:
    """The event's format as a template, or None when the kernel cannot read it as the
    regex does."""
    pieces, kinds, lead, pos = [""], [], [], 0
    for m in _CONV.finditer(ev.fmt):
        pieces[-1] += ev.fmt[pos : m.start()]
        pos = m.end()
        conv, flags = m.group("conv"), m.group("flags")
        if conv == "%":
            pieces[-1] += "%"
            continue
        if conv not in _KIND:
            return None  # text, char and float arguments
        kinds.append(ALTX if conv in "xX" and "#" in flags else _KIND[conv])
        lead.append(bool(m.group("width")) and "0" not in flags)
        pieces.append("")
    pieces[-1] += ev.fmt[pos:]
    if len(kinds) != len(ev.conversions) or not all(p.isascii() for p in pieces):
        return None
    for k, kind in enumerate(kinds):
        after = pieces[k + 1]
        if (not after and k + 1 < len(kinds)) or (after and after[0] in _CLASS[kind]):
            return None  # where the regex could end the number elsewhere
    args = tuple(c.arg for c in ev.conversions)
    return Template(tuple(p.encode() for p in pieces), tuple(kinds), tuple(lead), args)


def _fnv(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


class Catalog:
    """The events the kernel reads, packed into arrays for it: (name, template, the
    conversion whose text the table keeps or -1; a line is read only where that text is
    what f"{value:#x}" prints)."""

    def __init__(self, events: list[tuple[str, Template, int]]):
        self.names = [name for name, _, _ in events]
        self.templates = [t for _, t, _ in events]
        self.exact = np.array([x for _, _, x in events] or [-1], np.int64)
        names = [n.encode() for n in self.names]
        self.name_buf = np.frombuffer(b"".join(names) or b"\0", np.uint8)
        self.name_off = np.cumsum([0] + [len(n) for n in names]).astype(np.int64)
        size = 1 << max(4, (4 * len(names)).bit_length())
        self.slots = np.full(size, -1, np.int64)
        for i, n in enumerate(names):
            s = _fnv(n) & (size - 1)
            while self.slots[s] >= 0:
                s = (s + 1) & (size - 1)
            self.slots[s] = i
        pieces = [p for t in self.templates for p in t.pieces]
        self.piece_buf = np.frombuffer(b"".join(pieces) or b"\0", np.uint8)
        self.piece_off = np.cumsum([0] + [len(p) for p in pieces]).astype(np.int64)
        self.nconv = np.array([len(t.kinds) for t in self.templates] or [0], np.int64)
        self.first_piece = np.cumsum([0] + [len(t.pieces) for t in self.templates]).astype(np.int64)
        self.first_conv = np.cumsum([0] + [len(t.kinds) for t in self.templates]).astype(np.int64)
        flat = [(k, ld) for t in self.templates for k, ld in zip(t.kinds, t.lead, strict=True)]
        self.kind = np.array([k for k, _ in flat] or [0], np.int64)
        self.lead = np.array([ld for _, ld in flat] or [False], np.bool_)
        self.width = int(self.nconv.max()) if self.templates else 0

    def scan(self, body: np.ndarray, starts: np.ndarray, ends: np.ndarray):
        """Per line: status (SLOW, FAST, EMPTY), event index, tid, sec, usec, whether it has
        the tid@sec.usec prefix, the conversions' values and whether each is a number (not
        an overflow: null in the table)."""
        return _scan(body, starts, ends, self.name_buf, self.name_off, self.slots,
                     self.piece_buf, self.piece_off, self.first_piece, self.first_conv,
                     self.nconv, self.kind, self.lead, self.exact, max(1, self.width),
                     bool(body.max(initial=0) < 128))  # fmt: skip


_MAX = np.uint64(0xFFFFFFFFFFFFFFFF)
_SIGN = np.uint64(1 << 63)


@njit(cache=True, nogil=True, inline="always")
def _digit(c, kind):
    """The value of byte c as a digit of the conversion kind, or -1."""
    if 48 <= c <= 57:
        return c - 48 if (kind != OCT or c <= 55) else -1
    if 97 <= c <= 102 and (kind in (HEX, PTR, ALTX)):
        return c - 87
    if 65 <= c <= 70 and (kind in (HEXU, ALTX)):
        return c - 55
    return -1


@njit(cache=True, nogil=True)
def _number(body, p, e, kind):
    """Read the digits of one conversion at p: (end, value, fits in 64 bits, canonical
    pointer text); end < 0 when there is no number here."""
    base = np.uint64(8) if kind == OCT else np.uint64(16) if kind >= HEX else np.uint64(10)
    neg = False
    canon = True
    if kind in (PTR, ALTX):
        if (
            p + 5 <= e
            and kind == PTR
            and body[p] == 40
            and body[p + 1] == 110
            and body[p + 2] == 105
            and body[p + 3] == 108
            and body[p + 4] == 41
        ):  # (nil)
            return p + 5, np.uint64(0), True, True
        if p + 2 < e and body[p] == 48 and body[p + 1] == 120 and _digit(body[p + 2], kind) >= 0:
            p += 2  # 0x and at least one digit
            canon = body[p] != 48 or p + 1 >= e or _digit(body[p + 1], kind) < 0
        elif kind == ALTX and p < e and body[p] == 48:
            return p + 1, np.uint64(0), True, False  # printf's '#' prints 0 bare
        else:
            return -1, np.uint64(0), False, False
    elif kind == SDEC and p < e and body[p] == 45:  # '-'
        neg = True
        p += 1
    value = np.uint64(0)
    fits = True
    # digits that always fit in 64 bits; past them each one is checked (a division)
    safe = 21 if kind == OCT else 16 if kind >= HEX else 19
    significant = 0
    q = p
    while q < e:
        d = _digit(body[q], kind)
        if d < 0:
            break
        if kind == ALTX and body[q] >= 65 and body[q] <= 70:
            canon = False  # upper-case digits: the text is not what f"{v:#x}" prints
        du = np.uint64(d)
        if significant or d:
            significant += 1
        if significant <= safe:
            value = value * base + du
        elif value > (_MAX - du) // base:
            fits = False
        else:
            value = value * base + du
        q += 1
    if q == p:
        return -1, np.uint64(0), False, False
    if neg:
        if value > _SIGN:
            fits = False  # below int64's range: null, as polars' parse
        value = np.uint64(0) - value  # two's complement, as C's (uint64_t) cast
    return q, value, fits, canon


@njit(cache=True, nogil=True)
def _scan(body, starts, ends, name_buf, name_off, slots, piece_buf, piece_off, first_piece,
          first_conv, nconv, kinds, lead, exact, width, ascii_only):  # fmt: skip
    n = len(starts)
    status = np.zeros(n, np.uint8)
    event = np.zeros(n, np.int64)
    tid = np.zeros(n, np.uint64)
    sec = np.zeros(n, np.int64)
    usec = np.zeros(n, np.int64)
    prefixed = np.zeros(n, np.bool_)
    values = np.zeros((n, width), np.uint64)
    fits = np.zeros((n, width), np.bool_)
    mask = np.uint64(len(slots) - 1)
    for i in range(n):
        s = starts[i]
        e = ends[i]
        if e > s and body[e - 1] == 13:  # '\r'
            e -= 1
        if e == s:
            status[i] = EMPTY
            continue
        if not ascii_only:
            for q in range(s, e):
                if body[q] >= 128:
                    break
            else:
                q = e
            if q < e:
                continue
        p = s
        if 48 <= body[p] <= 57:  # tid@sec.usec:
            t = np.int64(0)
            while p < e and 48 <= body[p] <= 57 and t < 10_000_000_000:
                t = t * 10 + (body[p] - 48)
                p += 1
            if p >= e or body[p] != 64 or t >= 1 << 32:  # '@', and the tid fits UInt32
                continue
            p += 1
            q = p
            sc = np.int64(0)
            while p < e and 48 <= body[p] <= 57 and sc < 10_000_000_000:
                sc = sc * 10 + (body[p] - 48)
                p += 1
            if p == q or p >= e or body[p] != 46 or sc > 9_000_000_000:  # '.'
                continue
            p += 1
            us = np.int64(0)
            q = p
            while p < e and p < q + 6 and 48 <= body[p] <= 57:
                us = us * 10 + (body[p] - 48)
                p += 1
            if p != q + 6 or p >= e or body[p] != 58:  # six digits and ':'
                continue
            p += 1
            tid[i] = t
            sec[i] = sc
            usec[i] = us
            prefixed[i] = True
        # the event name: [A-Za-z_][A-Za-z0-9_]*, then the end or a space
        c = body[p] if p < e else 0
        if not (65 <= c <= 90 or 97 <= c <= 122 or c == 95):
            continue
        q = p
        h = np.uint64(0xCBF29CE484222325)
        while q < e:
            c = body[q]
            if not (65 <= c <= 90 or 97 <= c <= 122 or c == 95 or 48 <= c <= 57):
                break
            h = (h ^ np.uint64(c)) * np.uint64(0x100000001B3)
            q += 1
        if q < e and body[q] != 32:
            continue
        ev = -1
        slot = h & mask
        while slots[slot] >= 0:
            k = slots[slot]
            a, b = name_off[k], name_off[k + 1]
            if b - a == q - p:
                same = True
                for j in range(b - a):
                    if name_buf[a + j] != body[p + j]:
                        same = False
                        break
                if same:
                    ev = k
                    break
            slot = (slot + np.uint64(1)) & mask
        if ev < 0:
            continue
        # the arguments: the template's pieces and conversions, in turn, to the line's end
        p = q + 1 if q < e else e
        ok = True
        fp, fc = first_piece[ev], first_conv[ev]
        for k in range(nconv[ev] + 1):
            a, b = piece_off[fp + k], piece_off[fp + k + 1]
            if p + (b - a) > e:
                ok = False
                break
            for j in range(b - a):
                if body[p + j] != piece_buf[a + j]:
                    ok = False
                    break
            if not ok:
                break
            p += b - a
            if k == nconv[ev]:
                break
            if lead[fc + k]:
                while p < e and body[p] == 32:
                    p += 1
            end, v, f, cn = _number(body, p, e, kinds[fc + k])
            if end < 0:
                ok = False
                break
            values[i, k] = v
            fits[i, k] = f
            if k == exact[ev] and not (cn and f):
                ok = False  # a text the table keeps that f"{v:#x}" would not print
                break
            p = end
        if ok and p == e:
            status[i] = FAST
            event[i] = ev
    return status, event, tid, sec, usec, prefixed, values, fits


ABSENT, OVERFLOW, VALUE = 0, 1, 2  # what columns() found for a row's column


@njit(cache=True, nogil=True)
def columns(status, event, values, fits, colmap):
    """The FAST lines' rows and, per output column c, each row's value of conversion
    colmap[event, c] with its state (ABSENT where the event has none)."""
    rows = np.flatnonzero(status == FAST)
    m, ncol = len(rows), colmap.shape[1]
    out = np.zeros((ncol, m), np.uint64)
    state = np.zeros((ncol, m), np.uint8)
    for j in range(m):
        i = rows[j]
        for c in range(ncol):
            k = colmap[event[i], c]
            if k >= 0:
                out[c, j] = values[i, k]
                state[c, j] = VALUE if fits[i, k] else OVERFLOW
    return rows, out, state


@njit(cache=True, nogil=True)
def small_codes(values, valid, limit):
    """Codes of the distinct valid values (-1 where not valid), those values, and whether
    there were at most `limit` of them (device pointers: a log names a few)."""
    uniq = np.empty(limit, np.uint64)
    k = 0
    codes = np.full(len(values), -1, np.int64)
    for i in range(len(values)):
        if not valid[i]:
            continue
        v = values[i]
        j = 0
        while j < k and uniq[j] != v:
            j += 1
        if j == k:
            if k == limit:
                return codes, uniq[:k], False
            uniq[k] = v
            k += 1
        codes[i] = j
    return codes, uniq[:k], True


@njit(cache=True, nogil=True)
def lines_containing(body, starts, ends, needle):
    """Which lines hold the bytes of `needle` (as str.contains(literal) on their text: a
    needle of ASCII bytes is found the same in bytes as in the decoded text)."""
    n, m = len(starts), len(needle)
    out = np.zeros(n, np.bool_)
    for i in range(n):
        for p in range(starts[i], ends[i] - m + 1):
            if body[p] == needle[0]:
                j = 1
                while j < m and body[p + j] == needle[j]:
                    j += 1
                if j == m:
                    out[i] = True
                    break
    return out


@njit(cache=True, nogil=True)
def first_and_count(event, n_events):
    """Per event index: the first row holding it (-1: none) and how many rows do."""
    first = np.full(n_events, -1, np.int64)
    count = np.zeros(n_events, np.int64)
    for i in range(len(event)):
        e = event[i]
        if count[e] == 0:
            first[e] = i
        count[e] += 1
    return first, count
