"""Several commands on one bundle at once (issue 23): two ingests raced on one temporary
name, and `timeline` during an ingest read a half-written events.parquet. Now every command
holds the bundle's lock (xvtrace.bundle.lock): a writer waits for the others and says so,
and leftovers of a killed writer are removed by the next one.

Each case holds the lock in this process and runs the other command as a real process: it
must announce that it waits (a line on its stderr, read without any timing), must not have
touched the bundle while it waited, and must finish correctly once the lock is let go."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from xvtrace import api
from xvtrace.bundle import EVENTS, lock

FIXTURE = Path(__file__).parent.parent / "fixtures" / "qemu" / "live-q35-pci"


@pytest.fixture
def bundle(tmp_path):
    out = tmp_path / "b"
    api.ingest(FIXTURE, out, warn=lambda m: None)
    return out


def start(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "xvtrace", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_announced(proc: subprocess.Popen) -> str:
    """The child's first stderr line: it blocks on the lock only after saying so."""
    line = proc.stderr.readline()
    assert "waiting to" in line, (line, proc.poll())
    return line


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return out, err


def test_a_second_ingest_waits_for_the_first_and_says_so(bundle):
    before = (bundle / EVENTS).stat().st_ino
    with lock.writing(bundle):  # the first writer, here
        proc = start("ingest", bundle)
        line = wait_announced(proc)
        assert str(bundle) in line and "another xvtrace command" in line
        assert (bundle / EVENTS).stat().st_ino == before  # nothing replaced while it waits
    finish(proc)
    assert (bundle / EVENTS).stat().st_ino != before  # then it wrote, whole
    assert api.timeline(bundle).facts["requests"] > 0
    assert not list(bundle.rglob("*.part"))


def test_an_ingest_waits_for_a_reader_to_finish(bundle):
    before = (bundle / EVENTS).stat().st_ino
    with lock.reading(bundle):  # e.g. a report computing from events.parquet
        manifest = (bundle / "manifest.json").read_text()
        events = pl.scan_parquet(bundle / EVENTS)
        proc = start("ingest", bundle)
        wait_announced(proc)
        assert events.select(pl.len()).collect().item() > 0  # still whole, still the same
        assert (bundle / "manifest.json").read_text() == manifest
    finish(proc)
    assert (bundle / EVENTS).stat().st_ino != before


def test_a_reader_waits_for_a_writer(bundle):
    with lock.writing(bundle):
        proc = start("timeline", bundle, "--json")
        assert "waiting to read" in wait_announced(proc)
    out, _ = finish(proc)
    assert json.loads(out)  # the answer, computed after the writer let go


def test_readers_share_the_bundle(bundle):
    """A reader does not wait for another reader (it would print that it waits)."""
    with lock.reading(bundle):
        out, err = finish(start("summary", bundle, "--json"))
    assert "waiting" not in err and json.loads(out)


def test_a_killed_writers_leftovers_are_removed_by_the_next_writer(bundle):
    dead = bundle / f".{EVENTS}.{2**22 + 1}-0a1b2c.part"  # above any pid: its owner is gone
    dead.write_bytes(b"PAR1 half")
    dead_dir = bundle / "raw" / f".unpack.{2**22 + 1}-ff.part"
    dead_dir.mkdir()
    live = bundle / f".{EVENTS}.{os.getpid()}-0a1b2c.part"  # this test's own: kept
    live.write_bytes(b"PAR1 still writing")
    finish(start("dump", bundle, "--limit", "1"))  # a pure reader leaves them
    assert dead.exists() and dead_dir.exists()
    finish(start("ingest", bundle))
    assert not dead.exists() and not dead_dir.exists() and live.exists()


def test_a_failed_first_write_leaves_no_bundle_behind(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a capture\n")
    proc = start("ingest", bad, "-o", tmp_path / "new.xvt")
    proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert not (tmp_path / "new.xvt").exists()


def test_a_read_only_bundle_is_read_without_a_lock(bundle, tmp_path):
    copy = tmp_path / "ro"
    shutil.copytree(bundle, copy)
    api.timeline(copy)  # its derived data stored while it could be written
    (copy / lock.LOCK).unlink()
    for p in [copy, *copy.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        if os.access(copy, os.W_OK):
            pytest.skip("running as root: nothing is read-only")
        assert api.timeline(copy).facts["requests"] > 0
    finally:
        for p in [copy, *copy.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


@pytest.mark.slow
def test_ingests_and_timelines_at_once_all_answer(bundle):
    """The issue's race, run as users run it: ingests and timelines started together on one
    bundle (before the lock: tracebacks and "Invalid thrift" errors in 11 of 61 runs)."""
    for _ in range(4):
        procs = [start(cmd, bundle) for cmd in ("ingest", "timeline", "ingest", "timeline")]
        for proc in procs:
            finish(proc)
    assert not list(bundle.rglob("*.part"))
    assert api.timeline(bundle).facts["requests"] > 0


def test_a_writer_waiting_on_a_failed_first_write_makes_the_bundle_whole(tmp_path):
    """A first write that fails removes its new bundle, lock file and all, while another
    writer waits on that lock: the waiter must notice and lock the bundle it makes afresh
    (else it writes into a removed directory, or holds a lock nobody else can find)."""
    new = tmp_path / "new.xvt"
    started = []

    def first_write_fails():
        with lock.writing(new):
            started.append(start("ingest", FIXTURE, "-o", new))
            wait_announced(started[0])
            raise RuntimeError("the first write fails")

    with pytest.raises(RuntimeError):
        first_write_fails()
    finish(started[0])
    assert (new / "manifest.json").is_file() and (new / lock.LOCK).is_file()
    assert api.timeline(new).facts["requests"] > 0
