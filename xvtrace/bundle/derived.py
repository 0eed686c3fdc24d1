"""Derived data the bundle owns: tables computed from its events on demand and stored under
a key that covers every input, so a stale table is never served.

A derived entry is a manifest section (its facts) plus the parquet files it names. The key
hashes:
- the events' identity: events.parquet's size and modification time (ingest replaces the
  file, so a re-ingest changes it) and the manifest's ingest facts (host, clock, sources,
  counts: a re-ingest with another cpu_khz changes them even when the sizes match);
- the entry's options and the code's version of it (bump `version` when its output changes).
The files' own sizes and times are kept in the entry too: a file rewritten or removed
behind the bundle's back no longer matches, and the entry is computed again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xvtrace import __version__
from xvtrace.bundle import EVENTS, Bundle, BundleError, atomic_path, write_manifest

if TYPE_CHECKING:
    import polars as pl

# Manifest sections written by derived entries themselves, left out of the events' identity.
DERIVED_SECTIONS = ("timeline",)
VOLATILE = ("created",)


def file_identity(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def events_identity(bundle: Bundle) -> dict[str, Any]:
    epath = bundle.path / EVENTS
    if not epath.is_file():
        raise BundleError(f"{bundle.path}: no {EVENTS}; run `xvtrace ingest {bundle.path}`")
    facts = {
        k: v for k, v in bundle.manifest.items() if k not in DERIVED_SECTIONS and k not in VOLATILE
    }
    return {"events": file_identity(epath), "manifest": facts}


def key(bundle: Bundle, name: str, version: int, options: dict | None = None) -> str:
    """The key of derived entry `name` of `bundle` as computed now."""
    doc = {
        "entry": name,
        "version": version,
        "tool": __version__,
        "options": options or {},
        **events_identity(bundle),
    }
    blob = json.dumps(doc, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def fresh(bundle: Bundle, name: str, want: str) -> dict | None:
    """The entry's facts when stored under key `want` with every file unchanged, else None."""
    entry = bundle.manifest.get(name)
    if not isinstance(entry, dict) or entry.get("key") != want:
        return None
    for fname, ident in (entry.get("files") or {}).items():
        path = bundle.path / fname
        if not path.is_file() or file_identity(path) != ident:
            return None
    return entry


def store(
    bundle: Bundle,
    name: str,
    want: str,
    facts: dict,
    tables: dict[str, pl.DataFrame | None],
) -> dict:
    """Write the entry's tables (atomically; a None table removes its file), then its facts
    with the key and the files' identities into the manifest, last."""
    files = {}
    for fname, frame in tables.items():
        path = bundle.path / fname
        if frame is None:
            path.unlink(missing_ok=True)
            continue
        with atomic_path(path) as tmp:
            frame.write_parquet(tmp)
        files[fname] = file_identity(path)
    entry = {**facts, "key": want, "files": files}
    bundle.manifest[name] = entry
    write_manifest(bundle.path, bundle.manifest)
    return entry
