"""Text lines waiting to be written in time order, carried from one chunk to the next (QEMU's
log lines, dom0's block trace): per line its time, tie order and the id of its text."""

from __future__ import annotations

import numpy as np
import polars as pl
from numba import njit


class Pending:
    """Lines not yet written: time, tie order, text id, and the texts the ids index."""

    def __init__(self, t: np.ndarray, order: np.ndarray, ids: np.ndarray, texts: pl.Series):
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

    def then(self, later: Pending) -> Pending:
        """These lines followed by `later`'s (ties in time keep this order)."""
        return Pending(
            np.concatenate([self.t, later.t]),
            np.concatenate([self.order, later.order]),
            np.concatenate([self.ids, later.ids + len(self.texts)]),
            pl.concat([self.texts, later.texts]),
        )

    def cut(self, mark: float) -> tuple[Pending, Pending]:
        """(the lines before `mark` in time order, to write now; the rest, for later, with
        only the texts they use)."""
        idx = np.lexsort((self.order, self.t))  # stable: ties keep their order
        t = self.t[idx]
        k = int(np.searchsorted(t, mark, side="left"))
        now, rest = idx[:k], idx[k:]
        later = Pending(t[k:], self.order[rest], np.arange(len(rest)),
                        self.texts.gather(self.ids[rest]))  # fmt: skip
        return Pending(t[:k], self.order[now], self.ids[now], self.texts), later

    def lines(self) -> pl.Series:
        """The lines' texts, in order."""
        return self.texts.gather(self.ids)

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
        lengths = self.texts.str.len_bytes().to_numpy().astype(np.int64)
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        texts = np.frombuffer(self.texts.str.join("").item().encode(), np.uint8)
        head_bytes = np.frombuffer(head, np.uint8)
        # a block at a time through one cache-sized buffer, not the whole text at once
        block = np.empty(max(WRITE_BLOCK, int(lengths.max()) + len(head) + 32), np.uint8)
        i = 0
        while i < n:
            i, size = _fill(self.ids, texts, offsets, head_bytes, stamps, i, block)
            fh.write(block[:size])
        return n


WRITE_BLOCK = 1 << 20


@njit(cache=True, nogil=True)
def _fill(ids, texts, offsets, head, us, i, out):
    """Lines from the i-th on into `out` until it is full: [stamp] text[id] newline each (no
    stamps when `us` is empty). Returns (the next line, bytes used)."""
    n = ids.shape[0]
    stamped = us.shape[0] > 0
    stamp = np.empty(head.shape[0] + 28, np.uint8)
    stamp[: head.shape[0]] = head
    size, last, p = 0, -1, 0
    while i < n:
        if stamped and us[i] != last:  # lines come in runs of equal microseconds
            last = us[i]
            size = _stamp(stamp, head.shape[0], last)
        a, b = offsets[ids[i]], offsets[ids[i] + 1]
        if p + size + b - a + 1 > out.shape[0]:
            break
        out[p : p + size] = stamp[:size]
        p += size
        out[p : p + b - a] = texts[a:b]
        p += b - a
        out[p] = 10
        p += 1
        i += 1
    return i, p


@njit(cache=True, nogil=True)
def _stamp(out, k, us):
    """`{sec}.{usec:06d}:` at out[k:]; returns where it ends."""
    sec, usec = us // 1_000_000, us % 1_000_000
    digits, s = 1, sec
    while s >= 10:
        s //= 10
        digits += 1
    for j in range(digits - 1, -1, -1):
        out[k + j] = 48 + sec % 10
        sec //= 10
    k += digits
    out[k] = 46  # '.'
    for j in range(6, 0, -1):
        out[k + j] = 48 + usec % 10
        usec //= 10
    out[k + 7] = 58  # ':'
    return k + 8
