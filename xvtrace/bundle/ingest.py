"""Ingest: raw capture files -> a bundle with events.parquet and a manifest.

Files are recognised by their content, never by their name. The decoders stream, and the
table's time order comes from merging their streams (bundle.sorted_runs: sorted runs on disk
and one stream live), never from sorting the whole capture, so memory stays bounded
whatever the size.
"""

from __future__ import annotations

import copy
import gzip
import json
import lzma
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import polars as pl

from xvtrace.bundle import (
    EVENTS,
    RAW,
    Bundle,
    BundleError,
    IngestError,
    atomic_path,
    fingerprint,
    lock,
    new_manifest,
    scratch_dir,
    sorted_runs,
    write_manifest,
)
from xvtrace.bundle.frame_sink import sink_frames
from xvtrace.bundle.row_order import file_ranks
from xvtrace.bundle.stages import aside, prefetch
from xvtrace.parsers import (
    fields,
    ftrace,
    ioreq,
    pcap,
    qemu_log,
    simpletrace,
    trace_events,
    virtqueue,
    xentrace,
)
from xvtrace.parsers import xen_events as xe
from xvtrace.parsers.errors import DecodeStats, ParseError
from xvtrace.parsers.schema import EVENT_SCHEMA

SNIFF_BYTES = 64 * 1024


class Watcher(Protocol):
    """What sees the table as ingest writes it (ingest's `watch` makes one each time the
    writing starts)."""

    def add(self, frame: pl.DataFrame) -> None:
        """A frame of the table, in the table's order."""

    def add_xentrace(self, dec: xentrace.XentraceDecoder) -> Callable[[xentrace.Records], None]:
        """For a table of one xentrace file: what sees its records instead of the frames,
        as `dec` hands them over (each before its frame is made)."""


Watch = Callable[[], Watcher]


@dataclass(frozen=True)
class Format:
    """A raw file format: how to recognise it and what it is for."""

    name: str
    sniff: Callable[[bytes], bool]
    role: str  # "events": decoded into the table; "definitions": helps decode others


# Content tests, most specific first (a file is the first format whose test passes).
FORMATS = (
    Format("xentrace", xentrace.sniff, "events"),
    Format("pcap", pcap.sniff, "events"),
    Format("qemu-simpletrace", simpletrace.sniff, "events"),
    Format("guest-memory-core", virtqueue.sniff_core, "events"),
    Format("qmp-virtqueues", virtqueue.sniff_qmp, "events"),
    Format("ioreq-pages", ioreq.sniff, "events"),
    Format("qemu-trace-events", trace_events.looks_like_definitions, "definitions"),
    Format("ftrace", ftrace.sniff, "events"),
    Format("qemu-log", qemu_log.sniff, "events"),
)
FORMAT_NAMES = ", ".join(f.name for f in FORMATS)


def detect_format(path: Path) -> Format | None:
    with path.open("rb") as fh:
        head = fh.read(SNIFF_BYTES)
    for fmt in FORMATS:
        if fmt.sniff(head):
            return fmt
    return None


# --- clock facts -----------------------------------------------------------------------


def sidecar_cpu_khz(raw_file: Path) -> tuple[int, str] | None:
    """cpu_khz from a metadata.json beside a capture (written by `xvtrace capture`)."""
    meta = raw_file.parent / "metadata.json"
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if isinstance(data.get("cpu_khz"), int | float) and data["cpu_khz"] > 0:
        return int(data["cpu_khz"]), f"{meta} cpu_khz"
    if isinstance(data.get("counter_hz"), int | float) and data["counter_hz"] > 0:
        return round(data["counter_hz"] / 1000), f"{meta} counter_hz"
    return None


def host_cpu_khz() -> tuple[int, str] | None:
    """This machine's TSC frequency, for captures decoded on the host that made them."""
    tsc = Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
    if tsc.is_file():
        try:
            return int(tsc.read_text().strip()), str(tsc)
        except ValueError:
            pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("cpu mhz"):
                return round(float(line.split(":")[1]) * 1000), "/proc/cpuinfo cpu MHz"
    except (OSError, ValueError, IndexError):
        pass
    return None


def resolve_cpu_khz(
    option: int | None,
    manifest: dict,
    raw_file: Path,
    warn: Callable[[str], None],
    origin: Path | None = None,
) -> tuple[int, str]:
    if option:
        return int(option), "--cpu-khz"
    host = manifest.get("host", {})
    if host.get("cpu_khz"):
        return int(host["cpu_khz"]), host.get("cpu_khz_source", "manifest")
    found = sidecar_cpu_khz(origin or raw_file) or sidecar_cpu_khz(raw_file)
    if found:
        return found
    found = host_cpu_khz()
    if found:
        warn(
            f"{raw_file}: cpu_khz not given; assuming this machine's {found[0]} kHz "
            f"({found[1]}). Pass --cpu-khz with the traced host's value (xl info: cpu_mhz)."
        )
        return found
    raise IngestError(f"{raw_file}: cpu_khz unknown; pass --cpu-khz (xl info: cpu_mhz x 1000)")


def infer_hvm_vendor(events: pl.LazyFrame) -> str | None:
    """'svm' or 'vmx' from the exit codes seen (SVM codes for INTR, IOIO, NPF... are >= 96)."""
    top = (
        events.filter(pl.col("event").is_in(["hvm.vmexit", "hvm.nested_vmexit"]))
        .select(fields.exit_reason().max())
        .collect()
        .item()
    )
    return xe.hvm_vendor(top)


# --- ingest ----------------------------------------------------------------------------


def warn_stderr(message: str) -> None:
    """The default warning: one line on stderr."""
    print(f"xvtrace: warning: {message}", file=sys.stderr)


@dataclass
class IngestResult:
    bundle: Bundle
    stats: list[DecodeStats]
    skipped_files: list[str]

    def to_json(self) -> dict:
        m = self.bundle.manifest
        return {"bundle": str(self.bundle.path), "counts": m.counts, "sources": m.sources}

    def render(self) -> str:
        """What was decoded, skipped and lost per source file."""
        m = self.bundle.manifest
        out = [f"bundle: {self.bundle.path}"]
        for s in m.sources:
            if s["format"] == "xentrace":
                what = f"{s['windows']} windows, pCPUs {s['cpus']}"
                lost = f", lost {s['lost']} (reported by Xen)"
            else:
                what = f"threads {s.get('threads', [])}"
                lost = ""
            out.append(
                f"  {s['file']}: {s['format']}, {s['bytes']} bytes, {what}: decoded {s['decoded']} "
                f"records, skipped {s['skipped']} records / {s['skipped_bytes']} bytes{lost}"
            )
        clock = ""
        if m.cpu_khz:
            clock = f"; cpu_khz {m.cpu_khz} ({m.host['cpu_khz_source']})"
        out.append(f"  events.parquet: {m.counts['events']} events{clock}")
        return "\n".join(out) + "\n"


def default_bundle_path(raw: Path) -> Path:
    return Path.cwd() / f"{raw.stem}.xvt"


def place_raw(raw: Path, bundle_dir: Path) -> Path:
    """Put a capture into bundle/raw/ untouched: a hard link where possible, else a copy."""
    dest = bundle_dir / RAW / raw.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and dest.samefile(raw):
        return dest
    if dest.exists():
        raise IngestError(f"{dest} already exists and is a different file")
    try:
        os.link(raw, dest)
    except OSError:
        shutil.copyfile(raw, dest)
    return dest


COMPRESSED = {".gz": gzip.open, ".xz": lzma.open}  # raw captures people store compressed
UNPACK_RATIO = 100  # a plain copy at most this many times its archive (traces: 5-30x) ...
UNPACK_FLOOR = 1 << 30  # ... or 1 GiB, whichever is larger, unless the caller allows more


def unpack(
    raw: Path,
    was: dict | None = None,
    *,
    limit: int | None = None,
    warn: Callable[[str], None] = lambda m: None,
) -> Path:
    """A compressed capture's plain copy beside it (streamed, atomically); any other file as
    it is. An existing copy is used when the archive is the one it was made from: `was`, the
    archive's fingerprint the last ingest recorded, else (none recorded) when the copy is
    newer than the archive.

    The copy stops at `limit` bytes (default: UNPACK_RATIO times the archive, at least
    UNPACK_FLOOR) with an error, and nothing of it is kept: a 9 MB gzip of zeros wrote 2 GB.
    A damaged or cut stream keeps what decoded before the damage, with a warning; the
    decoders then treat the copy as a capture cut short."""
    opener = COMPRESSED.get(raw.suffix)
    if opener is None:
        return raw
    dest = raw.with_suffix("")
    if dest.exists():
        same = (
            fingerprint(raw) == {k: was.get(k) for k in ("bytes", "sample")}
            if was
            else dest.stat().st_mtime_ns >= raw.stat().st_mtime_ns
        )
        if same:
            return dest
    limit = max(UNPACK_RATIO * raw.stat().st_size, UNPACK_FLOOR) if limit is None else limit
    damage = None
    with atomic_path(dest) as tmp:
        written = 0
        with opener(raw) as fin, tmp.open("wb") as fout:
            while True:
                try:
                    block = fin.read(1 << 20)
                except (OSError, EOFError, lzma.LZMAError) as e:
                    damage = e
                    break
                if not block:
                    break
                written += len(block)
                if written > limit:
                    raise ParseError(
                        str(raw), 0,
                        f"unpacks to more than {limit:,} bytes, the limit for a"
                        f" {raw.stat().st_size:,}-byte archive (ingest --unpack-limit raises it);"
                        " nothing of it kept",
                    )  # fmt: skip
                fout.write(block)
        if damage is not None and not written:
            raise ParseError(str(raw), 0, f"cannot decompress ({raw.suffix[1:]}): {damage}")
    if damage is not None:
        warn(
            f"{raw}: compressed stream damaged after {written:,} decoded bytes ({damage}):"
            " decoding what came before it"
        )
    return dest


def ingest(
    src: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    cpu_khz: int | None = None,
    hvm_vendor: str | None = None,
    chunk_bytes: int = xentrace.DEFAULT_CHUNK_BYTES,
    progress: Callable[[str, int, int], None] | None = None,
    warn: Callable[[str], None] = warn_stderr,
    unpack_limit: int | None = None,
    watch: Watch | None = None,
) -> IngestResult:
    """Decode a raw capture or a bundle's raw/ into events.parquet; returns the bundle.
    `unpack_limit`: the most bytes a compressed capture may unpack to (see `unpack`).
    `watch`: called as the table's writing starts, it gives the Watcher that sees each
    frame written, in the table's order, or a single xentrace file's records (a writing
    begun again calls it again): what a caller folds from the rows as they pass costs no
    second read of the table."""
    src = Path(src)
    if not src.exists():
        raise IngestError(f"{src}: no such file or directory")
    if out:
        bundle_dir = Path(out)
    elif src.is_dir() and (src / RAW).is_dir():
        bundle_dir = src
    else:
        bundle_dir = default_bundle_path(src)
    with lock.reading(src), lock.writing(bundle_dir):
        new = not lock.occupied(bundle_dir)
        try:
            return _ingest(src, bundle_dir, cpu_khz, hvm_vendor, chunk_bytes, progress, warn,
                           unpack_limit, watch)  # fmt: skip
        except BaseException:
            if new:  # a bundle begun here and not finished is not left looking like one
                lock.clear(bundle_dir)
            raise


def _ingest(
    src: Path,
    bundle_dir: Path,
    cpu_khz: int | None,
    hvm_vendor: str | None,
    chunk_bytes: int,
    progress: Callable[[str, int, int], None] | None,
    warn: Callable[[str], None],
    unpack_limit: int | None,
    watch: Watch | None,
) -> IngestResult:
    if src.is_dir() and not (src / RAW).is_dir():  # a folder of capture files
        files = sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise IngestError(f"{src}: an empty directory, not a bundle or a folder of captures")
        manifest = _load_or_new_manifest(bundle_dir)
        raw_files = [place_raw(f, bundle_dir) for f in files if f.stat().st_size]
        origins = dict(zip(raw_files, [f for f in files if f.stat().st_size], strict=True))
    elif src.is_dir():
        if bundle_dir.resolve() != src.resolve():
            for f in sorted((src / RAW).iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    place_raw(f, bundle_dir)
        manifest = _load_or_new_manifest(src)
        # hidden names are temporary files of a writer (atomic_path), never captures
        raw_files = sorted(
            p for p in (bundle_dir / RAW).iterdir() if p.is_file() and not p.name.startswith(".")
        )
        origins: dict[Path, Path] = {}
    else:
        if src.stat().st_size == 0:
            raise ParseError(str(src), 0, "empty file")
        if src.suffix not in COMPRESSED and detect_format(src) is None:
            with src.open("rb") as fh:
                head = fh.read(SNIFF_BYTES)
            if head[:4] == xentrace.CPU_CHANGE_HEADER.to_bytes(4, "little"):
                raise ParseError(str(src), 0, xentrace.header_problem(head))
            raise ParseError(str(src), 0, f"not a recognised capture format ({FORMAT_NAMES})")
        manifest = _load_or_new_manifest(bundle_dir)
        raw_files = [place_raw(src, bundle_dir)]
        origins = {raw_files[0]: src}

    recorded = _recorded_archives(manifest, bundle_dir)
    unpacked = {f: unpack(f, recorded.get(f), limit=unpack_limit, warn=warn) for f in raw_files}
    archives = {plain: f for f, plain in unpacked.items() if f != plain}
    raw_files = sorted(set(unpacked.values()))
    formats = {f: detect_format(f) if f.stat().st_size else None for f in raw_files}
    skipped_files = [f.name for f, fmt in formats.items() if fmt is None]
    for f in raw_files:
        if not f.stat().st_size:  # e.g. a block trace of a run that touched no block device
            warn(f"{bundle_dir / RAW / f.name}: empty, nothing to decode")
    if unknown := [f.name for f in raw_files if f.stat().st_size and formats[f] is None]:
        # one warning for the folder: a capture's notes and logs beside its traces are common
        warn(f"{bundle_dir / RAW}: {', '.join(unknown)}: not a recognised capture format"
             f" ({FORMAT_NAMES}); skipped")  # fmt: skip
    defs = _definitions([f for f, fmt in formats.items() if fmt and fmt.role == "definitions"])
    decoders = _decoders(formats, defs, manifest, cpu_khz, chunk_bytes, warn, origins)
    if not decoders:
        raise IngestError(f"{bundle_dir}: no decodable capture in {RAW}/ (formats: {FORMAT_NAMES})")
    xen = [d for d in decoders if isinstance(d, xentrace.XentraceDecoder)]
    if len(xen) > 1:
        # One clock origin for all xentrace files of the bundle: the earliest first TSC.
        origin = min(_first_tsc(d.path) for d in xen)
        for d in xen:
            d.tsc_origin = origin

    _write_events(bundle_dir, decoders, progress, watch)

    stats = [d.stats for d in decoders]
    for s in stats:
        text = s.warning_text()
        if text:
            warn(text)
    # each source's size and time as decoded: a capture changed later is refused, not
    # analysed from stale events (Bundle.raw_changes)
    manifest["sources"] = [
        {**d.describe(), **raw_identity(d.path), **_archive(archives.get(d.path), bundle_dir)}
        for d in decoders
    ]
    if xen:
        manifest["clock"] = {
            "domain": "xentrace TSC",
            "tsc_origin": xen[0].tsc_origin,
            "cpu_khz": manifest["host"]["cpu_khz"],
            "ts_ns": "(tsc - tsc_origin) * 1e6 / cpu_khz",
        }
    if defs:
        manifest["definitions"] = next(iter(defs.values())).origin
    bundle = Bundle(bundle_dir, manifest)
    events = bundle.events()
    known = (
        manifest["host"].get("hvm_vendor")
        if manifest["host"].get("hvm_vendor_source") == "xl dmesg"
        else None
    )
    vendor = hvm_vendor or known or infer_hvm_vendor(events)
    if vendor:
        manifest["host"]["hvm_vendor"] = vendor
        manifest["host"]["hvm_vendor_source"] = (
            "option" if hvm_vendor else "xl dmesg" if known else "inferred from exit codes"
        )
    nrows = events.select(pl.len()).collect().item()
    manifest["counts"] = {
        "events": nrows,
        "decoded": sum(s.decoded for s in stats),
        "skipped": sum(s.skipped for s in stats),
        "skipped_bytes": sum(s.skipped_bytes for s in stats),
        "lost": sum(s.lost for s in stats),
    }
    write_manifest(bundle_dir, manifest)
    return IngestResult(bundle, stats, skipped_files)


def raw_identity(path: Path) -> dict:
    return fingerprint(path)


def _recorded_archives(manifest: dict, bundle_dir: Path) -> dict[Path, dict]:
    """The archives the last ingest unpacked, with their fingerprints then."""
    return {
        bundle_dir / s["archive"]["file"]: s["archive"]
        for s in manifest.get("sources") or []
        if isinstance(s, dict) and isinstance(s.get("archive"), dict) and "file" in s["archive"]
    }


def _archive(path: Path | None, bundle_dir: Path) -> dict:
    """The compressed file a source was unpacked from, so a replaced archive is noticed."""
    if path is None:
        return {}
    return {"archive": {"file": str(path.relative_to(bundle_dir)), **raw_identity(path)}}


def _load_or_new_manifest(bundle_dir: Path) -> dict:
    if Bundle.is_bundle(bundle_dir):
        try:
            return Bundle.open(bundle_dir).manifest
        except BundleError:
            pass
    return new_manifest()


def _first_tsc(path: Path) -> int:
    dec = xentrace.XentraceDecoder(path, cpu_khz=1, chunk_bytes=1 << 20)
    for frame in dec.frames():
        if len(frame):
            return int(frame["ts_raw"].min())
    return 0


# Decoding order: QMP polls before memory dumps (a dump is read at the ring addresses the
# polls report); the rest as found.
DECODE_ORDER = (
    "xentrace", "ftrace", "qemu-log", "qemu-simpletrace", "pcap", "ioreq-pages", "qmp-virtqueues",
    "guest-memory-core",
)  # fmt: skip


def _decoders(formats, defs, manifest, cpu_khz, chunk_bytes, warn, origins) -> list:
    decoders = []
    qmp_polls: list[virtqueue.QmpVirtqueueDecoder] = []

    def rings() -> list[virtqueue.Ring]:
        return [r for d in qmp_polls for r in d.rings.values()]

    events = [(f, fmt) for f, fmt in formats.items() if fmt is not None and fmt.role == "events"]
    for f, fmt in sorted(events, key=lambda kv: DECODE_ORDER.index(kv[1].name)):
        src_file = f"{RAW}/{f.name}"
        if fmt.name == "xentrace":
            khz, khz_source = resolve_cpu_khz(cpu_khz, manifest, f, warn, origins.get(f))
            manifest["host"].update(cpu_khz=khz, cpu_khz_source=khz_source)
            dec = xentrace.XentraceDecoder(
                f, cpu_khz=khz, chunk_bytes=chunk_bytes, src_file=src_file
            )
        elif fmt.name == "ftrace":
            xen = [d for d in decoders if isinstance(d, xentrace.XentraceDecoder)]
            khz = manifest["host"].get("cpu_khz") or cpu_khz
            origin = (lambda x=xen[0]: x.tsc_origin) if xen else None  # same TSC, same origin
            dec = ftrace.FtraceDecoder(f, cpu_khz=khz, tsc_origin=origin, src_file=src_file)
        elif fmt.name == "pcap":
            dec = pcap.PcapDecoder(f, src_file=src_file)
        elif fmt.name == "ioreq-pages":
            dec = ioreq.IoreqPageDecoder(f, src_file=src_file)
        elif fmt.name == "qemu-simpletrace":
            dec = simpletrace.SimpletraceDecoder(f, defs=_defined_for(defs, f), src_file=src_file)
        elif fmt.name == "qmp-virtqueues":
            dec = virtqueue.QmpVirtqueueDecoder(f, src_file=src_file)
            qmp_polls.append(dec)
        elif fmt.name == "guest-memory-core":
            dec = virtqueue.RingDumpDecoder(f, rings, src_file=src_file)
        else:
            dec = qemu_log.QemuLogDecoder(f, defs=_defined_for(defs, f), src_file=src_file)
        decoders.append(dec)
    return decoders


def _definitions(files: list[Path]) -> dict[Path, trace_events.TraceEvents]:
    """The QEMU trace-event definitions shipped with the capture, by file (none: the
    decoders use the packaged ones)."""
    try:
        return {f: trace_events.TraceEvents.load(f) for f in files}
    except trace_events.DefinitionError as e:
        raise IngestError(str(e)) from e


def _defined_for(defs: dict[Path, trace_events.TraceEvents], log: Path):
    """A trace's definitions: its own (LOG.trace-events beside LOG, as two processes of a
    capture each ship theirs), else the first the capture has, else None (packaged)."""
    own = defs.get(log.with_name(log.name + ".trace-events"))
    return own if own is not None else next(iter(defs.values()), None)


# A decoder no other one reads from (the ftrace origin is xentrace's; ring dumps read QMP
# polls): the largest of these is decoded last, merged as it decodes, with no run files.
LIVE = (qemu_log.QemuLogDecoder, ftrace.FtraceDecoder)


def _write_events(bundle_dir: Path, decoders: list, progress, watch: Watch | None) -> None:
    """events.parquet from the decoders' frames. Where a live decoder's stream needs more
    than one run, it is decoded again into runs, by a fresh copy that replaces it in
    `decoders` (its counts are that second decoding's)."""
    total = sum(d.path.stat().st_size for d in decoders)
    done = [0]

    def frames(which: list[int], *seen) -> Iterator[tuple[int, pl.DataFrame]]:
        for i in which:
            d = decoders[i]
            if progress:
                d.progress = lambda pos, base=done[0]: progress("decode", base + pos, total)
            for frame in d.frames(*seen):
                yield i, frame
            done[0] += d.path.stat().st_size

    if len(decoders) == 1:  # one stream: the table is its frames in decoder order
        d = decoders[0]
        if watch is not None and isinstance(d, xentrace.XentraceDecoder):
            # its records seen where they lie, not its frames (a 500 MB trace's summary
            # fold: 1.7 s from the records, 4.1 s from the frames' columns), on a thread
            # of their own, done (or raising) before the table is put in place
            with atomic_path(bundle_dir / EVENTS) as tmp, aside(watch().add_xentrace(d)) as seen:
                table = (frame for _, frame in frames([0], seen))
                with closing(prefetch(table)) as got:  # (it stops on any error)
                    _write_table(tmp, lambda: got)
            return
        with closing(prefetch(_watched((frame for _, frame in frames([0])), watch))) as got:
            _sink(bundle_dir, lambda: got)
        return
    # Several: each decoder's stream becomes sorted runs on disk, merged into the table's
    # order a few chunks at a time (a sort of the whole capture needed 10 GiB at 39 M rows).
    ranks = file_ranks(d.src_file for d in decoders)
    step = (lambda done, rows: progress("merge", done, rows)) if progress else None
    lives = [i for i, d in enumerate(decoders) if isinstance(d, LIVE)]
    live = max(lives, key=lambda i: decoders[i].path.stat().st_size, default=None)
    with scratch_dir(bundle_dir, "events-runs") as tmp:
        writer = sorted_runs.RunWriter(tmp, ranks)
        with closing(prefetch(frames([i for i in range(len(decoders)) if i != live]))) as got:
            for i, frame in got:  # (the thread stops before tmp goes)
                writer.add(frame, stream=i)
        runs = writer.close()
        if live is not None:
            fresh = copy.deepcopy(decoders[live])
            try:
                with closing(prefetch(frame for _, frame in frames([live]))) as got:
                    chunks = sorted_runs.live(got, ranks, writer.rows)
                    table = sorted_runs.merge(runs, tmp, ranks, live=chunks, keep=True)
                    with closing(prefetch(_watched(table, watch))) as merged:
                        _sink(bundle_dir, lambda: merged)
                return
            except sorted_runs.OutOfOrder:  # it reaches back further than the lookahead
                decoders[live] = fresh
                done[0] = total - fresh.path.stat().st_size  # its bytes are to decode again
                with closing(prefetch(frames([live]))) as got:
                    for i, frame in got:
                        writer.add(frame, stream=i)
                runs = writer.close()
        table = sorted_runs.merge(runs, tmp, ranks, progress=step)
        with closing(prefetch(_watched(table, watch))) as merged:
            _sink(bundle_dir, lambda: merged)


def _watched(table: Iterator[pl.DataFrame], watch: Watch | None) -> Iterator[pl.DataFrame]:
    """The table's frames, each shown to `watch`'s function first (on the thread that makes
    them: the writer's core stays the writer's)."""
    if watch is None:
        yield from table
        return
    seen = watch()
    for frame in table:
        seen.add(frame)
        yield frame


def _sink(bundle_dir: Path, frames: Callable[[], Iterator[pl.DataFrame]]) -> None:
    with atomic_path(bundle_dir / EVENTS) as tmp:
        _write_table(tmp, frames)


def _write_table(path: Path, frames: Callable[[], Iterator[pl.DataFrame]]) -> None:
    # No column statistics: polars computes them for every column (~20% of the write time
    # measured on a 500 MB capture) and time-window scans of a sorted ts_ns column are
    # cheap without them.
    sink_frames(frames, EVENT_SCHEMA, path, compression="lz4", statistics=False)
