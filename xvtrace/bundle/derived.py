"""Derived data the bundle owns: tables computed from its events on demand and stored under
a key that covers every input, so a stale table is never served.

A derived entry is a manifest section (its facts) plus the parquet files it names. The key
hashes:
- the events' identity: events.parquet's fingerprint (size and sampled content, which a
  copy of the bundle keeps) and the manifest's ingest facts (host, clock, sources, counts:
  a re-ingest with another cpu_khz changes them even when the table's bytes match);
- the entry's options and the code's version of it (bump `version` when its output changes).
The files' own fingerprints are kept in the entry too: a file rewritten or removed
behind the bundle's back no longer matches, and the entry is computed again.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xvtrace import __version__
from xvtrace.bundle import (
    EVENTS,
    Bundle,
    BundleError,
    atomic_path,
    fingerprint,
    lock,
    write_manifest,
)

if TYPE_CHECKING:
    import polars as pl

# Manifest sections written by derived entries themselves, left out of the events' identity.
DERIVED_SECTIONS = ("timeline", "summary")
VOLATILE = ("created",)


def file_identity(path: Path) -> list:
    f = fingerprint(path)
    return [f["bytes"], f["sample"]]


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
    tables: dict[str, pl.DataFrame | Path | None],
) -> dict:
    """Write the entry's tables (atomically; a None table removes its file, a path is a
    parquet file already written, moved into place), then its facts
    with the key and the files' identities into the manifest, last. The answer is given
    but not kept when the bundle cannot be written (read-only), when another command holds
    it (storing is worth no wait), or when its events are no longer the ones the entry was
    computed from (re-ingested meanwhile)."""
    files = {}
    entry = {**facts, "key": want, "files": files}
    if not os.access(bundle.path, os.W_OK):  # (polars' own write error would carry no errno)
        bundle.manifest.pop(name, None)
        return entry
    try:
        with lock.if_free(bundle.path) as held:
            if not held:
                return entry
            now = Bundle.open(bundle.path)
            if events_identity(now) != events_identity(bundle):
                return entry
            for fname, frame in tables.items():
                path = bundle.path / fname
                if frame is None:
                    path.unlink(missing_ok=True)
                    continue
                with atomic_path(path) as tmp:
                    if isinstance(frame, Path):
                        shutil.move(frame, tmp)
                    else:
                        frame.write_parquet(tmp)
                files[fname] = file_identity(path)
            now.manifest[name] = entry
            write_manifest(bundle.path, now.manifest)
            bundle.manifest.clear()
            bundle.manifest.update(now.manifest)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        bundle.manifest.pop(name, None)  # nothing half-stored is ever taken as valid
    return entry
