"""Each phase's history over the stored runs, and its change points: a series per
(transport, workload, queue, operation, phase), its runs in capture order, each run's
value its phase's median (p50)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from xvtrace.history import store as run_store
from xvtrace.history.changes import MIN_SIZE, change_points

SERIES = ("transport", "workload", "queue", "op", "phase")


def series(store: str | Path, *, transport: str | None = None, phase: str | None = None):
    """The store's runs, one row per run and series, in capture order within each series."""
    runs = run_store.scan(store)
    if transport:
        runs = runs.filter(pl.col("transport") == transport)
    if phase:
        runs = runs.filter(pl.col("phase") == phase)
    return (
        runs.select(*SERIES, "run_utc", "bundle", "p50_us", "requests")
        .sort(*SERIES, "run_utc", "bundle", nulls_last=True)
        .collect()
    )


def changes(store: str | Path, *, transport: str | None = None, phase: str | None = None,
            seed: int = 0) -> tuple[pl.DataFrame, int]:  # fmt: skip
    """Every change point of every series (SERIES, the run index it starts at, the runs on
    either side, the medians before and after, the change in percent, the confidence), and
    how many series were looked at."""
    runs = series(store, transport=transport, phase=phase)
    rows, looked = [], 0
    for key, s in runs.group_by(SERIES, maintain_order=True):
        looked += 1
        if len(s) < 2 * MIN_SIZE:
            continue
        for c in change_points(s["p50_us"].to_numpy(), seed=seed):
            rows.append({**dict(zip(SERIES, key, strict=True)), "run": c.at, "runs": len(s),
                         "last_before": s["bundle"][c.at - 1], "first_after": s["bundle"][c.at],
                         "first_after_utc": s["run_utc"][c.at], "before_us": c.before,
                         "after_us": c.after, "change_pct": 100 * c.size, "confidence": 1 - c.p})  # fmt: skip
    schema = {**{k: runs.schema[k] for k in SERIES}, "run": pl.Int64, "runs": pl.Int64,
              "last_before": pl.String, "first_after": pl.String,
              "first_after_utc": runs.schema["run_utc"], "before_us": pl.Float64,
              "after_us": pl.Float64, "change_pct": pl.Float64, "confidence": pl.Float64}  # fmt: skip
    return pl.DataFrame(rows, schema=schema), looked


def render(found: pl.DataFrame, looked: int) -> str:
    out = [f"{looked} series, {len(found)} change point(s)"]
    for r in found.iter_rows(named=True):
        out.append(
            f"{r['transport']} {r['workload']} q{r['queue']} {r['op']} {r['phase']}: "
            f"{r['change_pct']:+.1f} % at run {r['run']} of {r['runs']} "
            f"({r['before_us']:.1f} -> {r['after_us']:.1f} us, confidence {r['confidence']:.3f})\n"
            f"    last before: {r['last_before']}\n    first after: {r['first_after']} "
            f"({r['first_after_utc']})"
        )
    return "\n".join(out) + "\n"
