"""Change points of one series of runs: E-Divisive means (Matteson and James, "A
Nonparametric Approach for Multiple Change Point Analysis of Multivariate Data", JASA
2014), the method MongoDB's performance CI and Apache Otava use: the split that maximises
the energy distance between the runs before and after it, kept when a permutation test
says so, then the same within each side, until no split is significant.

A run's value is its phase's median; the energy distance compares whole groups of runs,
so one slow run moves no split, a lasting step does."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

MIN_SIZE = 3  # runs on either side of a change at least
PERMUTATIONS = 199
P_MAX = 0.01  # a split is kept at this significance or better


@dataclass(frozen=True)
class Change:
    at: int  # the first run after the change (index in the series)
    before: float  # the median of the runs since the previous change
    after: float  # ... and up to the next
    p: float  # the permutation test's p-value

    @property
    def size(self) -> float:
        """The relative change of the median (0.1: 10 % higher)."""
        return self.after / self.before - 1 if self.before else float("inf")


def _best_split(x: np.ndarray, min_size: int) -> tuple[int, float]:
    """The split of `x` with the largest energy statistic Q and that statistic (all splits
    at once from prefix sums of the distance matrix: O(n^2))."""
    n = len(x)
    d = np.abs(x[:, None] - x[None, :])
    upper = np.triu(d, 1)
    left = np.concatenate(([0.0], np.cumsum(upper.sum(axis=0))))  # within x[:t], t = 0..n
    right = np.concatenate((np.cumsum(upper.sum(axis=1)[::-1])[::-1], [0.0]))  # within x[t:]
    t = np.arange(min_size, n - min_size + 1)
    m, k = t.astype(np.float64), (n - t).astype(np.float64)
    between = upper.sum() - left[t] - right[t]
    e = 2 * between / (m * k) - left[t] / (m * (m - 1) / 2) - right[t] / (k * (k - 1) / 2)
    q = m * k / n * e
    best = int(np.argmax(q))
    return int(t[best]), float(q[best])


def _significance(x: np.ndarray, q: float, min_size: int, rng, rounds: int) -> float:
    """The share of shuffles of `x` whose best split is at least as strong (permutation p)."""
    hits = sum(_best_split(rng.permutation(x), min_size)[1] >= q for _ in range(rounds))
    return (hits + 1) / (rounds + 1)


def change_points(values, *, min_size: int = MIN_SIZE, permutations: int = PERMUTATIONS,
                  p_max: float = P_MAX, seed: int = 0) -> list[Change]:  # fmt: skip
    """The series' change points, in order (none for fewer than 2 * min_size runs)."""
    x = np.asarray(values, np.float64)
    rng = np.random.default_rng(seed)
    cuts: dict[int, float] = {}  # split -> its p-value
    while True:
        bounds = [0, *sorted(cuts), len(x)]
        best = None  # (q, split, segment start, segment end)
        for a, b in pairwise(bounds):
            if b - a >= 2 * min_size:
                t, q = _best_split(x[a:b], min_size)
                if best is None or q > best[0]:
                    best = (q, a + t, a, b)
        if best is None:
            break
        q, at, a, b = best
        p = _significance(x[a:b], q, min_size, rng, permutations)
        if p > p_max:
            break
        cuts[at] = p
    bounds = [0, *sorted(cuts), len(x)]
    return [
        Change(at, float(np.median(x[lo:at])), float(np.median(x[at:hi])), cuts[at])
        for lo, at, hi in zip(bounds, bounds[1:], bounds[2:], strict=False)
    ]
