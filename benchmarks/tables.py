"""Compare two events.parquet files row for row, a slice at a time (tables of tens of
millions of rows do not fit in memory twice)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

KEY = ["ts_ns", "src_file", "src_offset"]  # parsers.schema.SORT_KEY
SLICE = 2_000_000


def compare_events(a: Path, b: Path) -> tuple[bool, str]:
    """(same, what differs). Same: identical rows in identical order, except that rows
    whose SORT_KEY is equal may come in another order (the old whole-table sort did not
    keep their decoded order; the merge does), which is reported."""
    import polars as pl  # here: a benchmark that only forks children stays small

    la, lb = pl.scan_parquet(a), pl.scan_parquet(b)
    if la.collect_schema() != lb.collect_schema():
        return False, "schemas differ"
    n = la.select(pl.len()).collect().item()
    m = lb.select(pl.len()).collect().item()
    if n != m:
        return False, f"{n} rows vs {m}"
    moved_a, moved_b = [], []
    for at in range(0, n, SLICE):
        x, y = la.slice(at, SLICE).collect(), lb.slice(at, SLICE).collect()
        if x.equals(y):
            continue
        if not x.select(KEY).equals(y.select(KEY)):
            return False, f"the key sequence differs in rows {at}..{at + len(x)}"
        diff = x.select(pl.any_horizontal([pl.col(c).ne_missing(y[c]) for c in x.columns]))
        moved_a.append(x.filter(diff.to_series()))
        moved_b.append(y.filter(diff.to_series()))
    if not moved_a:
        return True, f"identical ({n} rows)"
    ra, rb = pl.concat(moved_a), pl.concat(moved_b)
    cols = ra.columns
    if not ra.sort(cols, nulls_last=True).equals(rb.sort(cols, nulls_last=True)):
        return False, f"{len(ra)} rows differ in content"
    # equal keys position by position and the same rows: only equal-key rows swapped
    return True, (
        f"same {n} rows; {len(ra)} rows of equal SORT_KEY in another order "
        f"({', '.join(sorted(set(ra['src_file'].to_list())))})"
    )


def compare_in_child(a: Path, b: Path) -> tuple[bool, str]:
    """compare_events in a child process: the tables it reads stay out of this process,
    whose size a child forked for a measurement would start from (its peak RSS counts the
    memory it shared with this one before exec)."""
    out = subprocess.run([sys.executable, __file__, str(a), str(b)], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    same, what = json.loads(out)
    return same, what


if __name__ == "__main__":
    print(json.dumps(compare_events(Path(sys.argv[1]), Path(sys.argv[2]))))
