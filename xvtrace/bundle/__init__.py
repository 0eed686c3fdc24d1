"""The bundle: a directory holding a run's raw captures, its manifest and its tables.

    run/
      manifest.json     schema version, tool version, host facts, clock, sources and counts
      raw/              source files exactly as captured
      events.parquet    the canonical event table (parsers.schema), sorted by ts_ns

Every file is written to a temporary name and renamed into place, so an interrupted run
never leaves a partial file that looks complete; the manifest is written last.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xvtrace import __version__
from xvtrace.parsers.errors import XvtraceError
from xvtrace.parsers.schema_version import SCHEMA_VERSION

if TYPE_CHECKING:
    import polars as pl

MANIFEST = "manifest.json"
EVENTS = "events.parquet"
REQUESTS = "requests.parquet"
RAW = "raw"


MAX_CPU_KHZ = 100_000_000  # 100 GHz: a clock rate beyond any CPU's is a damaged manifest


def manifest_problem(doc: dict) -> str | None:
    """What in a manifest's facts would mislead every step that reads them (the key and
    why), or None: the sections are objects, the clock rate a plausible positive integer."""
    for key in ("host", "clock", "counts"):
        if key in doc and doc[key] is not None and not isinstance(doc[key], dict):
            return f"{key}: not an object"
    if "sources" in doc and not isinstance(doc["sources"], list):
        return "sources: not a list"
    khz = (doc.get("host") or {}).get("cpu_khz")
    if khz is not None and (
        not isinstance(khz, int) or isinstance(khz, bool) or not 0 < khz <= MAX_CPU_KHZ
    ):
        return f"host.cpu_khz: {khz!r} is not a clock rate in kHz (1..{MAX_CPU_KHZ})"
    return None


class Manifest(dict):
    """manifest.json: a dict as stored (and as JSON shows it), with typed access to the facts
    every step reads. Sections: schema_version, tool, created, host, clock, sources, counts;
    `emulation` for emulated bundles; a derived entry per derived table (timeline, summary)."""

    @property
    def host(self) -> dict[str, Any]:
        return self.get("host") or {}

    @property
    def cpu_khz(self) -> int | None:
        return self.host.get("cpu_khz")

    @property
    def hvm_vendor(self) -> str | None:
        return self.host.get("hvm_vendor")

    @property
    def machine(self) -> str:
        return self.host.get("machine") or ""

    @property
    def xen_version(self) -> str | None:
        return self.host.get("xen_version")

    @property
    def tsc_origin(self) -> int | None:
        return (self.get("clock") or {}).get("tsc_origin")

    @property
    def sources(self) -> list[dict[str, Any]]:
        return [s for s in self.get("sources") or [] if isinstance(s, dict)]

    @property
    def counts(self) -> dict[str, int]:
        return self.get("counts") or {}

    @property
    def transport(self) -> str | None:
        """The transport the capture ran on: the emulator's record, or the user's entry."""
        return (self.get("emulation") or {}).get("transport") or self.get("transport")

    @property
    def workload(self) -> dict[str, Any]:
        """The workload the guest ran, when recorded (emulated: the fio-like job; a live
        capture: a `workload` entry the user added, e.g. {"iodepth": 32, "numjobs": 2})."""
        wl = (self.get("emulation") or {}).get("workload") or self.get("workload") or {}
        return wl if isinstance(wl, dict) else {"name": wl}


class BundleError(XvtraceError):
    """A bundle that is missing, incomplete or from an incompatible schema."""


class IngestError(XvtraceError):
    """Input that cannot become a bundle (unknown format, missing clock facts)."""


@dataclass
class Bundle:
    """An on-disk bundle; `events()` is the lazy entry point for every analysis."""

    path: Path
    manifest: Manifest

    @classmethod
    def open(cls, path: str | os.PathLike) -> Bundle:
        path = Path(path)
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise BundleError(f"{path}: not a bundle (no {MANIFEST})")
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{mpath}: unreadable manifest: {e}") from e
        if not isinstance(manifest, dict):
            raise BundleError(
                f"{mpath}: not a manifest (a JSON object), a {type(manifest).__name__}"
            )
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"{mpath}: schema version {version!r}, this xvtrace reads {SCHEMA_VERSION}"
            )
        if problem := manifest_problem(manifest):
            raise BundleError(f"{mpath}: {problem}")
        return cls(path, Manifest(manifest))

    def __post_init__(self) -> None:
        if not isinstance(self.manifest, Manifest):
            self.manifest = Manifest(self.manifest)

    @staticmethod
    def is_bundle(path: str | os.PathLike) -> bool:
        return (Path(path) / MANIFEST).is_file()

    @property
    def raw_dir(self) -> Path:
        return self.path / RAW

    @property
    def cpu_khz(self) -> int | None:
        return self.manifest.cpu_khz

    def events(self) -> pl.LazyFrame:
        """The canonical event table, lazily scanned (predicates and columns push down);
        refused when a raw capture changed after ingest."""
        import polars as pl  # on use: a capture writes bundles without the analysis stack

        epath = self.path / EVENTS
        if not epath.is_file():
            raise BundleError(f"{self.path}: no {EVENTS}; run `xvtrace ingest {self.path}`")
        problems = self.raw_changes()
        if problems:
            raise BundleError(
                "; ".join(problems)
                + f". The events are older than their capture: run `xvtrace ingest {self.path}`"
            )
        if stale := _catalogue_change(epath):
            raise BundleError(
                f"{epath}: {stale}. The events were decoded by another xvtrace: run "
                f"`xvtrace ingest {self.path}` to decode the capture again"
            )
        return pl.scan_parquet(epath)

    def raw_changes(self) -> list[str]:
        """Raw sources that differ from what was ingested (size, or the content sample of
        their fingerprint where the manifest recorded it): the events no longer describe them."""
        problems = []
        for src in self.manifest.sources:
            for entry in (src, src.get("archive")):
                if isinstance(entry, dict) and isinstance(entry.get("file"), str):
                    problems += _changed(self.path / entry["file"], entry)
        return problems


def _catalogue_change(epath: Path) -> str | None:
    """How the table's event and source names differ from this xvtrace's catalogue, or
    None. Names are stored as enums: a name this xvtrace added since would fail every
    filter on the table, and the capture's records of it were decoded as something else."""
    import polars as pl

    from xvtrace.parsers.schema import EVENT_SCHEMA

    try:
        kept = pl.read_parquet_schema(epath)  # the footer only
    except (OSError, pl.exceptions.PolarsError) as e:
        raise BundleError(f"{epath}: unreadable ({e}); `xvtrace ingest` makes it again") from e
    for col in ("event", "source"):
        have, want = kept.get(col), EVENT_SCHEMA[col]
        if have != want:
            names = have.categories.to_list() if isinstance(have, pl.Enum) else []
            new = [n for n in want.categories.to_list() if n not in names]
            gone = [n for n in names if n not in want.categories.to_list()]
            said = ", ".join(
                f"{what} {', '.join(ns[:3])}{' ...' if len(ns) > 3 else ''}"
                for what, ns in (("without", new), ("with unknown", gone))
                if ns
            )
            return f"its {col} names are not this xvtrace's ({said or 'another order'})"
    return None


def _changed(path: Path, was: dict) -> list[str]:
    if not path.is_file():
        return [f"{path}: ingested, now missing"]
    size = path.stat().st_size
    if "bytes" in was and size != was["bytes"]:
        return [f"{path}: {was['bytes']} bytes when ingested, now {size}"]
    if "sample" in was and fingerprint(path)["sample"] != was["sample"]:
        return [f"{path}: its content changed since it was ingested"]
    return []


SAMPLE_BYTES = 64 * 1024


def fingerprint(path: Path) -> dict:
    """What tells a file's content apart cheaply: its size and a hash of its first, middle
    and last 64 KiB. It survives a copy (times do not), and catches an append, a cut, a
    rewritten header or footer (a parquet file's footer indexes every page)."""
    size = path.stat().st_size
    h = hashlib.blake2b(digest_size=12)
    with path.open("rb") as fh:
        for at in sorted({0, max(0, size // 2 - SAMPLE_BYTES // 2), max(0, size - SAMPLE_BYTES)}):
            fh.seek(at)
            h.update(fh.read(SAMPLE_BYTES))
    return {"bytes": size, "sample": h.hexdigest()}


def new_manifest(host: dict[str, Any] | None = None) -> Manifest:
    return Manifest(
        {
            "schema_version": SCHEMA_VERSION,
            "tool": "xvtrace",
            "tool_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": dict(host or {}),
            "clock": {},
            "sources": [],
            "counts": {},
        }
    )


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    with atomic_path(path / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


@contextmanager
def atomic_path(final: Path):
    """Yield a temporary path beside `final`; rename it into place only on success.

    The path does not exist yet: the writer creates it. A file made empty first and then
    opened for writing (O_TRUNC) is one ext4 flushes to disk when closed (its auto_da_alloc
    guard for files rewritten by truncation): for the emulator's 1.7 GB QEMU log that close
    alone blocked for 0.65 s."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = final.parent / f".{final.name}.{os.getpid()}-{secrets.token_hex(6)}.part"
    try:
        yield tmp_path
        tmp_path.touch(exist_ok=True)  # a writer that wrote nothing leaves an empty file
        umask = os.umask(0)
        os.umask(umask)
        tmp_path.chmod(0o666 & ~umask)
        tmp_path.replace(final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def spill_dir(stack: ExitStack, bundle_dir: Path, name: str = "spill") -> Path:
    """A directory for what a command computed but does not need in memory until later:
    inside the bundle (`scratch_dir`: storing a file is then a rename), or the system's
    temporary directory when the bundle is read-only. Removed when `stack` closes."""
    try:
        return stack.enter_context(scratch_dir(bundle_dir, name))
    except OSError:
        return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"xvtrace-{name}-")))


@contextmanager
def scratch_dir(bundle_dir: Path, name: str):
    """Yield a new hidden directory inside the bundle for a step's temporary files; it is
    removed with everything in it whether the step succeeds or fails."""
    bundle_dir.mkdir(parents=True, exist_ok=True)
    path = bundle_dir / f".{name}.{os.getpid()}-{secrets.token_hex(6)}.part"
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
