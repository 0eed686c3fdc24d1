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
import contextlib
import functools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from xvtrace.analysis.dump import PRINTED, iter_chunks, iter_lines, select_events
from xvtrace.analysis.summary import Summary, virtqueues
from xvtrace.bundle import Bundle, atomic_path, lock, spill_dir
from xvtrace.parsers.errors import XvtraceError
from xvtrace.parsers.symbols import Symbols

# Ingest, replay, the emulator, the gate, the timeline and the outputs built on it are
# imported where they are used: they load numba (the decoders, the engine and the writers
# are compiled) or the timeline's modules (60 ms), which every other command would
# otherwise wait for.
if TYPE_CHECKING:
    from xvtrace.bundle.ingest import IngestResult
    from xvtrace.emulate.summary import EmulateSummary
    from xvtrace.gate.regress import Comparison as Verdicts
    from xvtrace.output.compare import Comparison
    from xvtrace.output.report import Report
    from xvtrace.replaying import Calibration, HostCalibration
    from xvtrace.timeline import Timeline
    from xvtrace.validation import Validation

_TEMP_DIRS: list[str] = []


@atexit.register
def _cleanup() -> None:
    for d in _TEMP_DIRS:
        shutil.rmtree(d, ignore_errors=True)


def _reads(fn):
    """Run `fn(path, ...)` holding the bundle at `path` for reading (xvtrace.bundle.lock):
    no ingest replaces its tables while the answer is computed from them."""

    @functools.wraps(fn)
    def wrapper(path, *args, **kwargs):
        with lock.reading(path):
            return fn(path, *args, **kwargs)

    return wrapper


def reading(path):
    """Hold the bundle at `path` for reading (a context manager; nothing for a raw capture):
    a Timeline or Report used inside it reads its stored requests before any ingest or
    rebuild can replace them (outside it, a read after such a replacement is refused)."""
    return lock.reading(path)


def _held_while_read(path, open_iter: Callable[[], Iterator]) -> Iterator:
    """A lazy iterator over a bundle's events that holds the bundle for reading until it
    is exhausted or closed."""
    with lock.reading(path):
        yield from open_iter()


def ingest(src, out=None, *, summarize: bool = True, **kw) -> IngestResult:
    """Decode a raw capture or a bundle into a bundle on disk (see xvtrace.bundle.ingest).
    With `summarize`, the summary is folded from the rows as they are written and stored
    in the bundle: its first `summary` is then served, not computed from the table."""
    from xvtrace.analysis import summary
    from xvtrace.bundle.ingest import ingest as _ingest
    from xvtrace.bundle.ingest import warn_stderr as ingest_warn

    if not summarize:
        return _ingest(src, out, **kw)
    folds: list = []

    def watch():  # a fresh fold each time the table's writing (re)starts
        folds.append(summary.Folding())
        return folds[-1]

    result = _ingest(src, out, watch=watch, **kw)
    if folds:
        try:  # the bundle is whole already: a summary not stored is computed when asked for
            Summary.store_folded(result.bundle, folds[-1].result())
        except (OSError, XvtraceError) as e:
            warn = kw.get("warn") or ingest_warn
            warn(f"{result.bundle.path}: the summary was not stored ({e}); "
                 "`xvtrace summary` computes it")  # fmt: skip
    return result


def load(
    path: str | os.PathLike,
    *,
    cpu_khz: int | None = None,
    hvm_vendor: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    summarize: bool = False,
) -> Bundle:
    """Open a bundle, or ingest a raw capture into a temporary bundle kept until exit
    (`progress`, `summarize`: ingest's)."""
    path = Path(path)
    if path.is_dir():
        return Bundle.open(path)
    tmp = tempfile.mkdtemp(prefix="xvtrace-")
    _TEMP_DIRS.append(tmp)
    return ingest(path, Path(tmp) / "bundle", cpu_khz=cpu_khz, hvm_vendor=hvm_vendor,
                  progress=progress, summarize=summarize).bundle  # fmt: skip


def load_timed(path, cpu_khz: int | None = None, hvm_vendor: str | None = None) -> Bundle:
    """`load`, for the commands whose stored tables carry the ingest's clock (timeline,
    report, export, regress): a bundle ingested with another clock rate or exit table is
    refused with the command that re-times it, rather than silently answered as it is."""
    bundle = load(path, cpu_khz=cpu_khz, hvm_vendor=hvm_vendor)
    if Path(path).is_dir():
        for option, want, have in (("--cpu-khz", cpu_khz, bundle.cpu_khz),
                                   ("--hvm-vendor", hvm_vendor, bundle.manifest.hvm_vendor)):  # fmt: skip
            if want is not None and have is not None and want != have:
                raise XvtraceError(
                    f"{path}: ingested with {option} {have}; `xvtrace ingest {path} {option} "
                    f"{want}` re-times it"
                )
    return bundle


def events(bundle: Bundle, *, cpu_khz: int | None = None) -> pl.LazyFrame:
    """The bundle's events; with `cpu_khz`, times are recomputed from the raw TSC."""
    ev = bundle.events()
    origin = bundle.manifest.tsc_origin
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
    return option or bundle.manifest.hvm_vendor


def symbols(elf_files=()) -> list[Symbols]:
    """Symbol tables of guest kernels (vmlinux) and backend binaries, to name code addresses."""
    return [Symbols.load(f) for f in elf_files]


def _plain_xentrace(path: Path) -> bool:
    """A raw xentrace file, not compressed (a raw capture the summary folds as it decodes)."""
    from xvtrace.bundle.ingest import detect_format

    fmt = detect_format(path) if path.is_file() else None
    return fmt is not None and fmt.name == "xentrace"


@_reads
def summarize(
    path,
    *,
    cpu_khz: int | None = None,
    hvm_vendor: str | None = None,
    elf_files=(),
    progress: Callable[[str, int, int], None] | None = None,
) -> Summary:
    """The summary of a bundle (stored in it), or of a raw capture: a plain xentrace file is
    folded as it decodes, others go through a temporary bundle. `progress(stage, done,
    total)`: a raw capture's decoding, in bytes."""
    if not Path(path).is_dir() and not elf_files and _plain_xentrace(Path(path)):
        from xvtrace.bundle.ingest import warn_stderr

        return Summary.of_xentrace(Path(path), cpu_khz=cpu_khz, vendor=hvm_vendor,
                                   warn=warn_stderr, progress=progress)  # fmt: skip
    bundle = load(path, cpu_khz=cpu_khz, hvm_vendor=hvm_vendor, progress=progress,
                  summarize=True)  # fmt: skip
    return Summary.stored(
        bundle,
        events(bundle, cpu_khz=cpu_khz),
        vendor=_vendor(bundle, hvm_vendor),
        cpu_khz=cpu_khz or bundle.cpu_khz,
        symbols=symbols(elf_files),
    )


@_reads
def timeline(path, *, rebuild: bool = False, cpu_khz=None, hvm_vendor=None) -> Timeline:
    """The bundle's (or raw capture's) requests, reconstructed or served from the bundle
    while still valid (see xvtrace.timeline); `.render()` and `.to_json()` print it.
    `cpu_khz`, `hvm_vendor`: how to ingest a raw capture (see load_timed)."""
    from xvtrace import timeline as _timeline

    return _timeline.load(load_timed(path, cpu_khz, hvm_vendor), rebuild=rebuild)


@_reads
def report(path, *, cpu_khz=None, hvm_vendor=None) -> Report:
    """Where each request's time goes (xvtrace.output.report): `.render()`, `.to_json()`,
    `.render_html()`."""
    from xvtrace.output.report import Report

    return Report.of(load_timed(path, cpu_khz, hvm_vendor))


@_reads
def export_perfetto(path, out: str | os.PathLike, *, cpu_khz=None, hvm_vendor=None) -> int:
    """The bundle's requests as Chrome trace-event JSON at `out` (atomically); the number of
    trace events written."""
    from xvtrace.output import perfetto

    bundle = load_timed(path, cpu_khz, hvm_vendor)
    with atomic_path(Path(out)) as tmp:
        return perfetto.perfetto(bundle, tmp)


@_reads
def replay(
    path,
    transports: str = "all",
    *,
    output: str | os.PathLike | None = None,
    emit_dir: str | os.PathLike | None = None,
    warn: Callable[[str], None] | None = None,
    **options,
) -> Comparison:
    """Re-execute the bundle's request stream through each transport (`all` or names
    separated by commas; options: costs_file, seed, arrivals, source) and write the
    predicted requests to `output` (default BUNDLE/replay.parquet, facts beside it).
    With `emit_dir`, also a decoded bundle per transport from the emulated host running
    the replayed stream (`Comparison.emitted`)."""
    from xvtrace import replaying
    from xvtrace.output.compare import Comparison

    bundle = load(path)
    target = Path(output) if output else bundle.path / replaying.REPLAY
    if not os.access(target.parent, os.W_OK):  # said now, not after the replay's minutes
        raise XvtraceError(f"{target.parent}: not writable (read-only?); give replay -o FILE")
    if emit_dir is not None:
        emit_dir = Path(emit_dir)
        if emit_dir.exists() and any(emit_dir.iterdir()):
            raise XvtraceError(f"{emit_dir}: exists and is not empty; choose a new directory")
    chosen = replaying.parse_transports(transports)
    with contextlib.ExitStack() as stack:
        spill = spill_dir(stack, bundle.path)
        result = replaying.replay_bundle(bundle, chosen, spill=spill, **options)
        facts = replaying.facts(result)  # (the stream's columns are in `spill`: read now)
        if emit_dir is not None:
            result = replace(result, stream=result.stream.take(slice(None)))
        if output:
            written = Path(output)
            replaying.write(result, written, facts)
        else:
            from xvtrace.bundle import derived

            read = derived.events_identity(bundle)
            with lock.writing(bundle.path):  # (taking it may let a queued ingest in first)
                if derived.events_identity(Bundle.open(bundle.path)) != read:
                    raise XvtraceError(
                        f"{bundle.path}: re-ingested while this replay ran; run it again"
                    )
                written = bundle.path / replaying.REPLAY
                replaying.write(result, written, facts)
    cmp = Comparison(facts, pl.scan_parquet(written))
    if emit_dir is not None:
        for d in replaying.emit_bundles(result, chosen, emit_dir, costs_file=options.get(
                "costs_file"), seed=options.get("seed", 0)):  # fmt: skip
            ingest(d, None, **({"warn": warn} if warn else {}))
            cmp.emitted.append(d)
    return cmp


def compare(path) -> Comparison:
    """A replay again, from the bundle that holds it or its parquet file."""
    from xvtrace.output import compare as _compare

    return _compare.Comparison(*_compare.load(path))


@_reads
def calibrate(path, *more, **options) -> Calibration | HostCalibration:
    """Fit the costs of the capture's transport (options: transport, costs_file, seed); with
    more captures of the same host, each one's fit and the keys pooled across them."""
    from xvtrace import replaying

    if "transport" in options:
        options["source"] = options.pop("transport")
    if more:
        with contextlib.ExitStack() as held:  # the first is held by @_reads
            for p in more:
                held.enter_context(lock.reading(p))
            return replaying.calibrate_host([load(p) for p in (path, *more)], **options)
    return replaying.calibrate_bundle(load(path), **options)


def validate(tests, train, **options) -> Validation:
    """Replay checked against real captures (xvtrace.validation): options costs_file, seed."""
    from xvtrace import validation

    with contextlib.ExitStack() as held:
        for p in {*map(str, tests), *map(str, train)}:
            held.enter_context(lock.reading(p))
        return validation.validate([load(p) for p in train], [load(p) for p in tests], **options)


@_reads
def baseline(source, *, cpu_khz=None, hvm_vendor=None) -> dict:
    """A regression baseline: read from its JSON file, or summarized from a bundle or a raw
    capture (xvtrace.gate.regress)."""
    from xvtrace.gate import regress

    if regress.is_baseline_file(source):
        return regress.read(source)
    return regress.summarize(load_timed(source, cpu_khz, hvm_vendor))


def batch(bundles, store, *, workers: int | None = None, scheduler: str | None = None):
    """Many bundles (paths or glob patterns) into a run store, in a process pool or on a
    Dask cluster (xvtrace.history.batch): what was stored, skipped and failed."""
    from xvtrace.history import batch as _batch

    return _batch.run(_batch.expand(bundles), store, workers=workers, scheduler=scheduler)


def runs(store) -> pl.LazyFrame:
    """A run store (`batch`'s) as one LazyFrame: a row per bundle, queue, operation and
    phase, with the run's provenance and its partitions (transport, host, date) as columns."""
    from xvtrace.history import store as _store

    return _store.scan(store)


def history(store, *, transport: str | None = None, phase: str | None = None) -> pl.DataFrame:
    """Every change point of every series of a run store (xvtrace.history.report)."""
    from xvtrace.history import report

    return report.changes(store, transport=transport, phase=phase)[0]


def regress_runs(baseline_source, candidate_source, **options) -> Verdicts:
    """Judge a candidate run against a baseline, phase by phase (options: threshold_pct,
    alpha, force); `.regressed` lists the phases that got slower."""
    from xvtrace.gate import regress

    return regress.compare(baseline(baseline_source), baseline(candidate_source), **options)


def emulate(
    transports: list[str],
    out: str | os.PathLike,
    *,
    decode: bool = True,
    progress: Callable[[str], Callable[[int, int], None] | None] | None = None,
    warn: Callable[[str], None] | None = None,
    **options,
) -> EmulateSummary:
    """Emulate each transport into `out` (one sub-directory each when there are several;
    each must be new or empty) and, with `decode`, ingest the bundles; `options` are EmulateOptions'
    (workload, requests or runtime, seed, profile, ...). `progress(name)` may give a
    callback (requests written, total) for that transport's run."""
    from xvtrace.emulate import EmulateOptions
    from xvtrace.emulate import emulate as _emulate
    from xvtrace.emulate.summary import EmulateSummary, Run

    out = Path(out)
    dirs = [out / name if len(transports) > 1 else out for name in transports]
    for d in dirs:  # refuse before any run writes
        if lock.occupied(d):
            raise XvtraceError(f"{d}: exists and is not empty; choose a new directory")
    runs = []
    for name, d in zip(transports, dirs, strict=True):
        tick = progress(name) if progress else None
        with lock.writing(d):
            if lock.occupied(d):  # another command wrote there since
                raise XvtraceError(f"{d}: exists and is not empty; choose a new directory")
            result = _emulate(EmulateOptions(transport=name, out=d, progress=tick, **options))
            if decode:
                ingest(d, None, **({"warn": warn} if warn else {}))
        runs.append(Run(name, result, d))
    return EmulateSummary(
        options.get("workload", "randread-4k-qd1"), options.get("profile", "x86_64"), runs
    )


def capture(out: str | os.PathLike, *, decode: bool = True, **options) -> Bundle | Path:
    """Capture a live run into a new bundle at `out` (options: CaptureOptions' fields: qmp,
    duration, xentrace, block_trace, ifaces, netdevs, transport, ...) until the duration
    passes or every traced VM exits; with `decode`, ingest it. The bundle, or its path when
    not decoded. (`xvtrace capture` runs the same capture without this module: a dom0 may
    have no analysis stack.)"""
    from xvtrace.capture import CaptureOptions
    from xvtrace.capture import capture as _capture

    for key in ("qmp", "ifaces", "netdevs", "logs", "patterns"):
        if key in options:
            options[key] = tuple(options[key])
    _capture(CaptureOptions(out=Path(out), **options))
    return ingest(out).bundle if decode else Path(out)


def dump_lines(
    path, *, limit=None, cpu_khz=None, hvm_vendor=None, elf_files=(), **filters
) -> Iterator[str]:
    """One text line per selected record (xvtrace.analysis.dump), read while held."""
    return _dumped(iter_lines, path, limit, cpu_khz, hvm_vendor, elf_files, filters)


def dump_chunks(
    path, *, limit=None, cpu_khz=None, hvm_vendor=None, elf_files=(), **filters
) -> Iterator[bytes]:
    """dump_lines as newline-terminated byte buffers, the fast way to write them out."""
    return _dumped(iter_chunks, path, limit, cpu_khz, hvm_vendor, elf_files, filters)


def _dumped(render, path, limit, cpu_khz, hvm_vendor, elf_files, filters) -> Iterator:
    def rendered() -> Iterator:
        bundle = load(path, cpu_khz=cpu_khz, hvm_vendor=hvm_vendor)
        # (only the columns a line shows are read; filtered a slice at a time: dump.batches)
        ev = events(bundle, cpu_khz=cpu_khz).select(PRINTED)
        vendor = _vendor(bundle, hvm_vendor) or "vmx"
        return render(ev, vendor, limit=limit, symbols=symbols(elf_files),
                      select=functools.partial(select_events, **filters))  # fmt: skip

    return _held_while_read(path, rendered)


__all__ = [
    "dump_chunks",
    "dump_lines",
    "events",
    "ingest",
    "load",
    "summarize",
    "symbols",
    "virtqueues",
]
