"""Text lines waiting to be written in time order, carried from one chunk to the next (QEMU's
log lines, dom0's block trace): per line its time, tie order and the id of its text."""

from __future__ import annotations

import numpy as np
import polars as pl
from numba import njit

from xvtrace.parsers.byte_copy import copy_bytes


class Texts:
    """Byte strings as one buffer and their offsets (text i is data[offsets[i] :
    offsets[i + 1]]): what the line writer copies from. Made from polars strings, or
    rendered straight into a buffer (parsers.ftrace.render_block)."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray):
        self.data, self.offsets = data, offsets

    @staticmethod
    def of(strings: pl.Series) -> Texts:
        strings = strings.fill_null("")  # a missing text is an empty line
        offsets = np.zeros(len(strings) + 1, np.int64)
        np.cumsum(strings.str.len_bytes().to_numpy(), out=offsets[1:])
        return Texts(np.frombuffer(strings.str.join("").cast(pl.Binary).item(), np.uint8), offsets)

    @staticmethod
    def empty() -> Texts:
        return Texts(np.zeros(0, np.uint8), np.zeros(1, np.int64))

    @staticmethod
    def concat(parts: list[Texts]) -> Texts:
        if len(parts) == 1:
            return parts[0]
        shift = np.cumsum([0] + [len(p.data) for p in parts])
        offsets = [p.offsets[:-1] + at for p, at in zip(parts, shift[:-1], strict=True)]
        return Texts(np.concatenate([p.data for p in parts]),
                     np.concatenate([*offsets, shift[-1:]]))  # fmt: skip

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def gather(self, ids: np.ndarray) -> Texts:
        return Texts(*_gather(self.data, self.offsets, np.asarray(ids, np.int64)))

    def to_list(self) -> list[str]:
        ends = zip(self.offsets[:-1], self.offsets[1:], strict=True)
        return [bytes(self.data[a:b]).decode() for a, b in ends]


class Pending:
    """Lines in time order: time, tie order, text id, and the texts the ids index (lines to
    write now need no tie order: None)."""

    def __init__(self, t: np.ndarray, order, ids: np.ndarray, texts: Texts | pl.Series):
        self.t, self.order, self.ids = t, order, ids
        self.texts = Texts.of(texts) if isinstance(texts, pl.Series) else texts

    @staticmethod
    def empty() -> Pending:
        z = np.zeros(0)
        return Pending(z, z, np.zeros(0, np.int64), Texts.empty())

    @staticmethod
    def of(t: np.ndarray, texts: Texts | pl.Series) -> Pending:
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
        texts, offsets = self.texts.data, self.texts.offsets
        lengths = np.diff(offsets)
        if offsets[0] < 0 or offsets[-1] > len(texts) or lengths.min() < 0:
            raise ValueError("text offsets are not ascending within the text buffer")
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
        self.groups: list[tuple[float, np.ndarray, np.ndarray, Texts]] = []

    def add_group(
        self, t: np.ndarray, order: float, ids: np.ndarray, texts: Texts | pl.Series
    ) -> None:
        if order != order:
            raise ValueError("a tie order must be a number, not NaN")
        if len(t):
            texts = Texts.of(texts) if isinstance(texts, pl.Series) else texts
            self.groups.append(
                (float(order), np.asarray(t, np.float64), np.asarray(ids, np.int64), texts)
            )

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
        every = Texts.concat(texts)
        later = Pending(t[k:], tie, np.arange(len(rest)), every.gather(ids[rest]))
        return Pending(t[:k], None, ids[idx[:k]], every), later


WRITE_BLOCK = 1 << 20


@njit(cache=True, nogil=True)
def _gather(data, offsets, ids):
    """The texts ids[0], ids[1], ... of (data, offsets) as a buffer and offsets of their own."""
    out_offsets = np.zeros(ids.shape[0] + 1, np.int64)
    for i in range(ids.shape[0]):
        out_offsets[i + 1] = out_offsets[i] + offsets[ids[i] + 1] - offsets[ids[i]]
    out = np.empty(out_offsets[-1], np.uint8)
    for i in range(ids.shape[0]):
        copy_bytes(
            out, out_offsets[i], data, offsets[ids[i]], offsets[ids[i] + 1] - offsets[ids[i]]
        )
    return out, out_offsets


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
        copy_bytes(out, p, stamp, 0, size)
        p += size
        copy_bytes(out, p, texts, a, b - a)
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
