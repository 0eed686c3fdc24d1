"""What the HTML pages draw, read from a request table a slice at a time, so that a page
of 5 M requests holds and shows as much as one of 50 k (every request drawn made a 33 MB
page at 1 M requests, and collecting the plots' columns held a gigabyte at 5 M).

- `cdf_points`: per group, the exact latency at about POINTS ranks (timeline.order_stats).
- `envelope`: latency over time in BINS time bins: per bin its count, the fastest, the
  mean and the slowest request (which one, and when).
- `median_window`: the requests around the one of median latency, in table order.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from xvtrace.timeline.order_stats import OrderStats, grouped, linear_quantiles, slices

SLICE_ROWS = 1 << 18  # requests read at a time
POINTS = 2000  # ranks drawn of each CDF (and its last)
BINS = 1000  # time bins of the latency over time


def cdf_ranks(n: int) -> np.ndarray:
    """The ranks a CDF of n values draws: every n // POINTS-th, and the last."""
    return np.unique(np.r_[np.arange(0, n, max(1, n // POINTS)), n - 1])


def cdf_points(
    frame: pl.LazyFrame, keys: list[str], col: str, *, slice_rows: int = SLICE_ROWS
) -> tuple[list[tuple[tuple, np.ndarray, np.ndarray]], float]:
    """Per group of `keys` (sorted by their text) with a value of `col`: (its key, the
    values at cdf_ranks, the fraction of the group's values at or below each rank), and
    the largest group p99.9 (numpy's linear rule) over the groups."""
    series, top = [], 0.0
    with grouped(frame, keys, [pl.col(col)], slice_rows) as found:
        for key, _, n, select in found:
            ranks = cdf_ranks(n)
            series.append((key, select(ranks).astype(np.float64), (ranks + 1) / n))
            top = max(top, float(linear_quantiles(n, np.array([0.999]), select)[0]))
    return sorted(series, key=lambda s: str(s[0])), top


def envelope(
    frame: pl.LazyFrame, start: str, col: str, *, bins: int = BINS, slice_rows: int = SLICE_ROWS
) -> pl.DataFrame:
    """The rows with both `start` (ns) and `col` in `bins` equal stretches of `start`, from
    its least to its greatest: per stretch with a row, its first time (`t_ns`, from the
    least start), `count`, `min`, `mean`, `max` of `col`, and the `request` and `start` of
    the first row of the greatest."""
    valid = pl.col(start).is_not_null() & pl.col(col).is_not_null()
    t0, t1 = None, None
    for _, part in slices(frame, slice_rows):  # the stretches' bounds
        lo, hi = (
            part.filter(valid)
            .select(pl.col(start).min().alias("lo"), pl.col(start).max().alias("hi"))
            .collect()
            .row(0)
        )
        if lo is not None:
            t0, t1 = lo if t0 is None else min(t0, lo), hi if t1 is None else max(t1, hi)
    if t0 is None:
        return pl.DataFrame(schema={"t_ns": pl.Int64, "count": pl.Int64, "min": pl.Float64,
                                    "mean": pl.Float64, "max": pl.Float64, "request": pl.Int64,
                                    "at_ns": pl.Int64})  # fmt: skip
    width = (t1 - t0) // bins + 1  # ns a stretch: the last one ends past t1
    count, total = np.zeros(bins, np.int64), np.zeros(bins)
    least, most = np.full(bins, np.inf), np.full(bins, -np.inf)
    slowest, at = np.full(bins, -1, np.int64), np.zeros(bins, np.int64)
    for _, part in slices(frame, slice_rows):
        part = (
            part.filter(valid)
            .group_by(((pl.col(start) - t0) // width).alias("bin"))
            .agg(pl.len(), pl.col(col).sum().alias("sum"), pl.col(col).min().alias("min"),
                 pl.col(col).max().alias("max"), pl.col("request", start).get(pl.col(col).arg_max()))
            .collect()
        )  # fmt: skip
        b = part["bin"].to_numpy()
        count[b] += part["len"].to_numpy()
        total[b] += part["sum"].to_numpy()
        np.minimum.at(least, b, part["min"].to_numpy())
        greater = part["max"].to_numpy().astype(np.float64) > most[b]  # (the first row kept)
        most[b[greater]] = part["max"].to_numpy()[greater]
        slowest[b[greater]] = part["request"].to_numpy()[greater]
        at[b[greater]] = part[start].to_numpy()[greater]
    kept = np.flatnonzero(count)
    return pl.DataFrame({
        "t_ns": kept * width, "count": count[kept], "min": least[kept],
        "mean": total[kept] / count[kept], "max": most[kept], "request": slowest[kept],
        "at_ns": at[kept] - t0,
    })  # fmt: skip


def median_window(
    frame: pl.LazyFrame, col: str, columns: list[str], window: int, *,
    slice_rows: int = SLICE_ROWS,
) -> pl.DataFrame:  # fmt: skip
    """`columns` of the `window` rows with a `col` that are nearest, in the table's order,
    to the row of median `col` (of the rows with one in that order, the one a stable sort
    by `col` puts at n // 2); empty without any."""
    known = pl.col(col).is_not_null()
    counted = []  # rows with a `col`, per slice
    with OrderStats() as stats:
        for _, part in slices(frame, slice_rows):
            values = part.filter(known).select(col).collect().to_series().to_numpy()
            stats.add(np.zeros(len(values), np.int64), values)
            counted.append(len(values))
        n = stats.count(0)
        if not n:
            return frame.select(columns).head(0).collect()
        median = stats.select(0, np.array([n // 2]))[0]
    # the row: the (n // 2 - rows below the median)-th of those equal to it
    below, equal = [], []
    for _, part in slices(frame, slice_rows):
        counts = part.select((pl.col(col) < median).sum().alias("below"),
                             (pl.col(col) == median).sum().alias("equal"))  # fmt: skip
        a, b = counts.collect().row(0)
        below.append(a)
        equal.append(b)
    tie = n // 2 - sum(below)
    first = int(np.searchsorted(np.cumsum(equal), tie, "right"))  # the slice it is in
    tie -= sum(equal[:first])
    values = frame.slice(first * slice_rows, slice_rows).select(col).collect().to_series()
    row = int(np.flatnonzero((values == median).fill_null(False).to_numpy())[tie])
    # its place among the rows with a `col`, and the window's first and last there
    place = sum(counted[:first]) + int(values.head(row).is_not_null().sum())
    lo = max(0, min(place - window // 2, n - window))
    hi = min(n, lo + window)
    starts = np.cumsum([0, *counted])  # each slice's first row with a `col`, so numbered
    out = []
    for k in range(int(np.searchsorted(starts, lo, "right")) - 1, len(counted)):
        if starts[k] >= hi:
            break
        part = frame.slice(k * slice_rows, slice_rows).filter(known).select(columns).collect()
        out.append(part.slice(max(0, lo - starts[k]), hi - max(lo, starts[k])))
    return pl.concat(out)
