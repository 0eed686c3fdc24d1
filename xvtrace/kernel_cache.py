"""Where numba keeps the compiled kernels: a directory named by a hash of this code's sources.

numba checks a cached kernel against its own source file only. A kernel that inlines
functions of another module (fold_kernel's record loop inlines count_map's, the decoder's
inline xentrace_scan's) kept its old compiled code when only that other module changed: a
stale kernel, and wrong answers, until its own file was touched. Named by the hash of every
source file of xvtrace, parsers and replay, the cache is compiled afresh whenever any of
them changes; another version's directory is removed once unused for a week.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

PREFIX = "numba-"
STAMP = "used"  # touched by each run that uses a directory
KEEP_DAYS = 7  # another version's directory unused this long is removed (one still in use,
# by another checkout or a run of the version before, stays: removed under it, a run's
# kernels could not be saved)


def use() -> None:
    """Point numba's cache at this code's directory, unless the user chose one
    (NUMBA_CACHE_DIR) or it cannot be made (numba then caches beside the sources)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xvtrace"
        here = base / (PREFIX + source_hash())
        new = not here.is_dir()
        here.mkdir(parents=True, exist_ok=True)
        (here / STAMP).touch()
        if new:
            _remove_unused(base, here)
    except (OSError, RuntimeError):  # (no home directory, none writable: numba's default)
        return
    os.environ["NUMBA_CACHE_DIR"] = str(here)
    if "numba" in sys.modules:  # (read at numba's import: set it there too)
        sys.modules["numba"].config.CACHE_DIR = str(here)


def _remove_unused(base: Path, here: Path) -> None:
    """Other versions' directories no run has used for KEEP_DAYS (best effort)."""
    import shutil
    import time

    for old in base.glob(PREFIX + "*"):
        stamp = old / STAMP
        try:
            used = (stamp if stamp.exists() else old).stat().st_mtime
        except OSError:
            continue
        if old != here and time.time() - used > KEEP_DAYS * 86400:
            shutil.rmtree(old, ignore_errors=True)


def source_hash(roots: list[Path] | None = None) -> str:
    """A hash of the contents of every .py file under `roots`, by default the three
    packages' directories (3.4 ms here)."""
    roots = set(roots or _package_dirs())
    digest = hashlib.blake2b(digest_size=8)
    for path in sorted({p for root in roots for p in root.rglob("*.py")}):
        digest.update(str(path).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _package_dirs() -> set[Path]:
    dirs = {Path(__file__).parent}
    for name in ("xvtrace.parsers", "xvtrace.replay"):  # (beside xvtrace/ in a checkout)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            dirs.update(Path(p) for p in spec.submodule_search_locations)
    return dirs
