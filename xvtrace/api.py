"""The Python API the CLI is built on; the same calls work in a notebook.

>>> import xvtrace.api as xv
>>> b = xv.load("run/")                 # a bundle, or a raw capture file
>>> ev = b.events()                     # polars LazyFrame of canonical events
>>> from xvtrace.parsers import fields   # event fields by name, from the catalogues
>>> ev.filter(pl.col("event") == "hvm.vmexit").group_by(fields.exit_reason()).len().collect()
>>> xv.summarize("run/").sections["exits"]
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from xvtrace.analysis.dump import iter_lines, select_events
from xvtrace.analysis.summary import Summary, virtqueues
from xvtrace.bundle import Bundle
from xvtrace.bundle.ingest import IngestResult
from xvtrace.bundle.ingest import ingest as _ingest
from xvtrace.parsers.symbols import Symbols

_TEMP_DIRS: list[str] = []


@atexit.register
def _cleanup() -> None:
    for d in _TEMP_DIRS:
        shutil.rmtree(d, ignore_errors=True)


def ingest(src, out=None, **kw) -> IngestResult:
    """Decode a raw capture or a bundle into a bundle on disk (see xvtrace.bundle.ingest)."""
    return _ingest(src, out, **kw)


def load(
    path: str | os.PathLike, *, cpu_khz: int | None = None, hvm_vendor: str | None = None
) -> Bundle:
    """Open a bundle, or ingest a raw capture into a temporary bundle kept until exit."""
    path = Path(path)
    if path.is_dir():
        return Bundle.open(path)
    tmp = tempfile.mkdtemp(prefix="xvtrace-")
    _TEMP_DIRS.append(tmp)
    return _ingest(path, Path(tmp) / "bundle", cpu_khz=cpu_khz, hvm_vendor=hvm_vendor).bundle


def events(bundle: Bundle, *, cpu_khz: int | None = None) -> pl.LazyFrame:
    """The bundle's events; with `cpu_khz`, times are recomputed from the raw TSC."""
    ev = bundle.events()
    origin = bundle.manifest.get("clock", {}).get("tsc_origin")
    if cpu_khz and cpu_khz != bundle.cpu_khz and origin is not None:
        dt = pl.col("ts_raw").cast(pl.Int128) - origin
        ns = ((dt // cpu_khz) * 1_000_000 + ((dt % cpu_khz) * 1_000_000) // cpu_khz).cast(pl.Int64)
        ev = ev.with_columns(
            pl.when(pl.col("source") == "xentrace")
            .then(ns)
            .otherwise(pl.col("ts_ns"))
            .alias("ts_ns")
        )
    return ev


def _vendor(bundle: Bundle, option: str | None) -> str | None:
    return option or bundle.manifest.get("host", {}).get("hvm_vendor")


def symbols(elf_files=()) -> list[Symbols]:
    """Symbol tables of guest kernels (vmlinux) and backend binaries, to name code addresses."""
    return [Symbols.load(f) for f in elf_files]


def summarize(
    path, *, cpu_khz: int | None = None, hvm_vendor: str | None = None, elf_files=()
) -> Summary:
    bundle = load(path, cpu_khz=cpu_khz, hvm_vendor=hvm_vendor)
    return Summary.of(
        events(bundle, cpu_khz=cpu_khz),
        vendor=_vendor(bundle, hvm_vendor),
        cpu_khz=cpu_khz or bundle.cpu_khz,
        symbols=symbols(elf_files),
    )


def dump_lines(
    path, *, limit=None, cpu_khz=None, hvm_vendor=None, elf_files=(), **filters
) -> Iterator[str]:
    bundle = load(path, cpu_khz=cpu_khz, hvm_vendor=hvm_vendor)
    ev = select_events(events(bundle, cpu_khz=cpu_khz), **filters)
    vendor = _vendor(bundle, hvm_vendor) or "vmx"
    return iter_lines(ev, vendor, limit=limit, symbols=symbols(elf_files))


__all__ = ["dump_lines", "events", "ingest", "load", "summarize", "symbols", "virtqueues"]
