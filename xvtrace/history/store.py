"""The run store: one Parquet file per bundle in a hive-partitioned folder
(STORE/transport=T/host=H/date=D/<bundle id>.parquet), a row per queue, operation and phase
of the bundle's complete requests (the phases regress compares: xvtrace.gate.regress) with
the run's provenance as columns. `scan` opens the whole store as one LazyFrame.

A bundle's file is named after its path (one file per bundle, wherever its partition), and
holds the key of its inputs (`inputs`: the raw files' sizes and samples as ingest recorded
them): a bundle stored with the same key is skipped, a changed one is stored again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl

from xvtrace.bundle import Bundle, atomic_path
from xvtrace.parsers.errors import XvtraceError

SCHEMA = {
    "bundle": pl.String, "inputs": pl.String, "run_utc": pl.Datetime("us", "UTC"),
    "transport": pl.String, "host": pl.String, "date": pl.String, "workload": pl.String,
    "xen_version": pl.String, "kernel": pl.String, "cpu_khz": pl.Int64, "commit": pl.String,
    "view": pl.String,
    "queue": pl.Int64, "op": pl.String, "phase": pl.String, "requests": pl.Int64,
    "p50_us": pl.Float64, "p90_us": pl.Float64, "p99_us": pl.Float64, "mean_us": pl.Float64,
}  # fmt: skip
PARTITIONS = ("transport", "host", "date")


def bundle_id(path: Path) -> str:
    """A bundle's file name in the store: its resolved path, hashed."""
    return hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:20]


def inputs_key(bundle: Bundle) -> str:
    """What the bundle was decoded from, as ingest recorded it: a changed capture changes it."""
    ident = [(s.get("file"), s.get("bytes"), s.get("sample")) for s in bundle.manifest.sources]
    return hashlib.sha256(json.dumps(ident, default=str).encode()).hexdigest()[:20]


def run_time(bundle: Bundle) -> str:
    """When the run was captured (a live capture's start, else the bundle's creation)."""
    m = bundle.manifest
    return (m.get("capture") or {}).get("started_utc") or m.get("created") or ""


def rows(bundle: Bundle, summary: dict, source: Path) -> pl.DataFrame:
    """The store's rows of one bundle, from its regress summary (xvtrace.gate.regress);
    `source`: what the batch was given (the bundle, or a raw capture decoded elsewhere)."""
    m, prov = bundle.manifest, summary["provenance"]
    when = run_time(bundle)
    facts = {
        "bundle": str(Path(source).resolve()), "inputs": inputs_key(bundle),
        "run_utc": when, "transport": prov.get("transport") or "unknown",
        "host": m.host.get("hostname") or m.machine or "unknown", "date": when[:10] or "unknown",
        "workload": prov.get("workload"), "xen_version": prov.get("xen_version"),
        "kernel": m.host.get("kernel"), "cpu_khz": prov.get("cpu_khz"),
        # the commit under test, where the capture's tooling wrote one into the manifest
        "commit": m.get("commit") or (m.get("capture") or {}).get("commit"),
        "view": prov.get("view"),
    }  # fmt: skip
    out = []
    for g in summary["phases"]:
        v = np.asarray(g["values"], np.float64) / 1e3
        out.append({**facts, "queue": g["queue"], "op": g["op"], "phase": g["phase"],
                    "requests": g["n"], "p50_us": float(np.quantile(v, 0.5)),
                    "p90_us": float(np.quantile(v, 0.9)), "p99_us": float(np.quantile(v, 0.99)),
                    "mean_us": float(v.mean())})  # fmt: skip
    frame = pl.DataFrame(
        out, schema={k: (pl.String if k == "run_utc" else t) for k, t in SCHEMA.items()}
    )
    return frame.with_columns(pl.col("run_utc").str.to_datetime(time_zone="UTC", strict=False))


def _partition(value) -> str:
    """A partition folder's value: hive paths cannot hold a slash or an equals sign."""
    return str(value).replace("/", "_").replace("=", "_") or "unknown"


def stored_inputs(store: Path, bid: str) -> tuple[list[Path], set[str]]:
    """The bundle's files in the store, and the input keys they hold."""
    files = sorted(Path(store).glob(f"*/*/*/{bid}.parquet"))
    keys = set()
    for f in files:
        keys |= set(pl.read_parquet(f, columns=["inputs"])["inputs"].to_list())
    return files, keys


def write(store: Path, bid: str, frame: pl.DataFrame) -> Path:
    """The bundle's rows into its partition (atomically), its older files removed."""
    old, _ = stored_inputs(store, bid)
    first = frame.row(0, named=True)
    where = Path(store).joinpath(*(f"{k}={_partition(first[k])}" for k in PARTITIONS))
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{bid}.parquet"
    with atomic_path(path) as tmp:
        frame.drop(*PARTITIONS).write_parquet(tmp)
    for f in old:
        if f != path:
            f.unlink(missing_ok=True)
    return path


def scan(store: str | Path) -> pl.LazyFrame:
    """The whole store as one LazyFrame (the partitions as columns)."""
    store = Path(store)
    if not any(store.glob("*/*/*/*.parquet")):
        return pl.LazyFrame(schema=SCHEMA)
    return pl.scan_parquet(store / "**" / "*.parquet", hive_partitioning=True,
                           hive_schema=dict.fromkeys(PARTITIONS, pl.String))  # fmt: skip


def collect(store: str | Path, frame: pl.LazyFrame) -> pl.DataFrame:
    """`frame` (a query of `scan(store)`) collected; a damaged file of the store is an
    error naming it, not a polars traceback."""
    try:
        return frame.collect()
    except (pl.exceptions.PolarsError, OSError) as e:
        for f in sorted(Path(store).glob("*/*/*/*.parquet")):
            try:
                pl.read_parquet_schema(f)
            except (pl.exceptions.PolarsError, OSError) as bad:
                raise XvtraceError(
                    f"{f}: not a file of the run store ({bad}); remove it and run "
                    "`xvtrace batch` on its bundle again"
                ) from None
        raise XvtraceError(f"{store}: the run store cannot be read ({e})") from None
