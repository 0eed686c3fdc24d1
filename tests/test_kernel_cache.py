"""numba's cache is named by a hash of the sources: a kernel that inlines another module's
functions is compiled afresh when that module changes (numba checks the kernel's own file
only: a stale fold kernel kept a fixed bug's answers)."""

from __future__ import annotations

import os
import time

import numba

from xvtrace import kernel_cache


def test_the_hash_follows_every_source_file(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    inlined = tmp_path / "pkg" / "sub" / "helpers.py"
    inlined.write_text("def f(x):\n    return x + 1\n")
    (tmp_path / "pkg" / "kernel.py").write_text("from pkg.sub.helpers import f\n")
    before = kernel_cache.source_hash([tmp_path / "pkg"])
    assert kernel_cache.source_hash([tmp_path / "pkg"]) == before
    inlined.write_text("def f(x):\n    return x + 2\n")
    assert kernel_cache.source_hash([tmp_path / "pkg"]) != before
    assert kernel_cache.source_hash() == kernel_cache.source_hash()  # this code's own


def test_the_cache_is_this_codes_and_unused_versions_go(tmp_path, monkeypatch):
    """Another version's directory unused for a week goes when a new one is made; one in
    use (another checkout, a run of the version before) stays."""
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(numba.config, "CACHE_DIR", numba.config.CACHE_DIR)  # (restored after)
    base = tmp_path / "xvtrace"
    old, busy = base / "numba-0123456789abcdef", base / "numba-fedcba9876543210"
    for d in (old, busy):
        d.mkdir(parents=True)
        (d / kernel_cache.STAMP).touch()
    week = time.time() - (kernel_cache.KEEP_DAYS * 86400 + 60)
    os.utime(old / kernel_cache.STAMP, (week, week))
    kernel_cache.use()
    here = base / ("numba-" + kernel_cache.source_hash())
    assert os.environ["NUMBA_CACHE_DIR"] == str(here) == numba.config.CACHE_DIR
    assert here.is_dir() and busy.is_dir() and not old.exists()
    assert time.time() - (here / kernel_cache.STAMP).stat().st_mtime < 60


def test_a_cache_the_user_chose_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    kernel_cache.use()
    assert os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "mine")
    assert not (tmp_path / "xvtrace").exists()
