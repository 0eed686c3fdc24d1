"""Text lines waiting to be written in time order, carried from one chunk to the next (QEMU's
log lines, dom0's block trace): per line its time, tie order and the id of its text."""

from __future__ import annotations

import numpy as np
import polars as pl


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
