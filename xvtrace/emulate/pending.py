"""Text lines waiting to be written in time order, carried from one chunk to the next (QEMU's
log lines, dom0's block trace): per line its time, tie order and the id of its text."""

from __future__ import annotations

import numpy as np
import polars as pl
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


class Pending:
    """Lines in time order: time, tie order, text id, and the texts the ids index (lines to
    write now need no tie order: None)."""

    def __init__(self, t: np.ndarray, order, ids: np.ndarray, texts: pl.Series):
        self.t, self.order, self.ids, self.texts = t, order, ids, texts

    @staticmethod
    def empty() -> Pending:
        z = np.zeros(0)
        return Pending(z, z, np.zeros(0, np.int64), pl.Series([], dtype=pl.String))

    @staticmethod
    def of(t: np.ndarray, texts: pl.Series) -> Pending:
        """A text per line, no ties to break."""
        return Pending(np.asarray(t, np.float64), np.zeros(len(t)), np.arange(len(t)), texts)

    def __len__(self) -> int:
        return len(self.t)

    def write(self, fh, head: bytes = b"", us: np.ndarray | None = None) -> int:
        """Append the lines to an open binary file, each ended by a newline; with `us` (per
        line, microseconds), each after a `{head}{sec}.{usec:06d}:` stamp, QEMU's log
        prefix. Returns the number of lines."""
        n = len(self)
        if not n:
            return 0
        stamps = np.zeros(0, np.int64) if us is None else np.asarray(us, np.int64)
        if us is not None and (len(stamps) != n or stamps.min() < 0):
            raise ValueError("one non-negative microsecond stamp per line")
        if len(self.ids) != n or self.ids.min() < 0 or self.ids.max() >= len(self.texts):
            raise ValueError("a line's text id is outside its texts")  # _fill copies unchecked
        strings = self.texts.fill_null("")  # a missing text is an empty line
        lengths = strings.str.len_bytes().to_numpy().astype(np.int64)
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        texts = np.frombuffer(strings.str.join("").cast(pl.Binary).item(), np.uint8)
        head_bytes = np.frombuffer(head, np.uint8)
        # a block at a time through one cache-sized buffer, not the whole text at once
        block = np.empty(max(WRITE_BLOCK, int(lengths.max()) + len(head) + 32), np.uint8)
        i = 0
        while i < n:
            i, size = _fill(self.ids, texts, offsets, head_bytes, stamps, i, block)
            fh.write(block[:size])
        return n


class Batch:
    """A chunk's lines being gathered, a group at a time: a group's lines share a tie order
    (which of the lines at one instant goes first) and index texts of their own."""

    def __init__(self):
        self.groups: list[tuple[float, np.ndarray, np.ndarray, pl.Series]] = []

    def add_group(self, t: np.ndarray, order: float, ids: np.ndarray, texts: pl.Series) -> None:
        if len(t):
            self.groups.append((float(order), np.asarray(t, np.float64), ids, texts))

    def cut(self, carry: Pending, mark: float) -> tuple[Pending, Pending]:
        """(the lines before `mark`, the carried ones and this batch's, in time order; the
        rest, to carry to the next chunk, with only the texts they use). Ties in time go by
        tie order, then carried lines first, then as added.

        One stable sort on time alone gives that order: the lines are laid out by tie order
        first (the carried lines split by theirs, each part ahead of the batch's groups of
        the same order), so a tie in time keeps that layout."""
        texts = [carry.texts] + [g[3] for g in self.groups]
        base = np.cumsum([0] + [len(x) for x in texts])
        parts = [(float(v), 0, i, carry.t[m], carry.ids[m])
                 for i, v in enumerate(np.unique(carry.order))
                 for m in [carry.order == v]]  # fmt: skip
        parts += [(v, 1, i, t, ids + base[i + 1]) for i, (v, t, ids, _) in enumerate(self.groups)]
        parts.sort(key=lambda p: p[:3])
        t = np.concatenate([p[3] for p in parts]) if parts else np.zeros(0)
        ids = np.concatenate([p[4] for p in parts]) if parts else np.zeros(0, np.int64)
        idx = np.argsort(t, kind="stable")
        t = t[idx]
        k = int(np.searchsorted(t, mark, side="left"))
        rest = idx[k:]
        ends = np.cumsum([len(p[3]) for p in parts])
        tie = np.array([p[0] for p in parts])[np.searchsorted(ends, rest, side="right")]
        every = pl.concat(texts)
        later = Pending(t[k:], tie, np.arange(len(rest)), every.gather(ids[rest]))
        return Pending(t[:k], None, ids[idx[:k]], every), later


WRITE_BLOCK = 1 << 20


# "00" .. "99": a microsecond field is three of them
_PAIRS = np.frombuffer("".join(f"{i:02d}" for i in range(100)).encode(), np.uint8).copy()


@njit(cache=True, nogil=True)
def _fill(ids, texts, offsets, head, us, i, out):
    """Lines from the i-th on into `out` until it is full: [stamp] text[id] newline each (no
    stamps when `us` is empty). Returns (the next line, bytes used)."""
    n = ids.shape[0]
    stamped = us.shape[0] > 0
    stamp = np.empty(head.shape[0] + 28, np.uint8)
    stamp[: head.shape[0]] = head
    size, last, last_sec, frac, p = 0, -1, -1, 0, 0
    while i < n:
        if stamped and us[i] != last:  # lines come in runs of equal microseconds
            last = us[i]
            sec, usec = last // 1_000_000, last % 1_000_000
            if sec != last_sec:
                last_sec = sec
                frac = _decimal(stamp, head.shape[0], sec)
                stamp[frac] = 46  # '.'
                frac += 1
            for j in range(3):  # usec as three digit pairs, last pair first
                pair = usec % 100
                usec //= 100
                stamp[frac + 4 - 2 * j] = _PAIRS[2 * pair]
                stamp[frac + 5 - 2 * j] = _PAIRS[2 * pair + 1]
            stamp[frac + 6] = 58  # ':'
            size = frac + 7
        a, b = offsets[ids[i]], offsets[ids[i] + 1]
        if p + size + b - a + 1 > out.shape[0]:
            break
        _copy(out, p, stamp, 0, size)
        p += size
        _copy(out, p, texts, a, b - a)
        p += b - a
        out[p] = 10
        p += 1
        i += 1
    return i, p


@njit(cache=True, nogil=True)
def _decimal(out, k, value):
    """The decimal digits of a non-negative `value` at out[k:]; returns where they end."""
    digits, v = 1, value
    while v >= 10:
        v //= 10
        digits += 1
    for j in range(digits - 1, -1, -1):
        out[k + j] = 48 + value % 10
        value //= 10
    return k + digits


@intrinsic
def _copy(typingctx, dst, dst_at, src, src_at, count):
    """memcpy(&dst[dst_at], &src[src_at], count) for C-contiguous byte arrays (other
    arguments do not type): one call per text instead of a loop over its bytes (five times
    faster on QEMU's lines). Bounds are the caller's to keep."""
    for a in (dst, src):
        if not (isinstance(a, types.Array) and a.dtype == types.uint8 and a.layout == "C"):
            return None
    if not all(isinstance(i, types.Integer) for i in (dst_at, src_at, count)):
        return None

    def codegen(context, builder, sig, args):
        d, d_at, s, s_at, n = args
        to = context.make_array(sig.args[0])(context, builder, d)
        frm = context.make_array(sig.args[2])(context, builder, s)
        cgutils.raw_memcpy(
            builder, builder.gep(to.data, [d_at]), builder.gep(frm.data, [s_at]), n, 1
        )
        return context.get_dummy_value()

    return types.void(dst, dst_at, src, src_at, count), codegen
