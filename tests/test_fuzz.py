"""A seeded mutation fuzzer over every raw format, the event table and the manifest, through
the CLI as a user runs it: each case ends in an answer or a clear error (exit 0 or 2), never
a traceback or an internal error (exit 3), and no request is complete whose stamps go back
in time. Bounded: a few hundred small cases (CI's slow stage)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
from helpers import FIXTURES, answered

from xvtrace.timeline.pipeline import PATH

pytestmark = pytest.mark.slow

EPAM = FIXTURES / "emulated" / "epam-mmio"  # xentrace, QEMU log, dom0 ftrace, virtqueues, ELF
MICROVM = FIXTURES / "qemu" / "live-microvm-mmio"  # a real QEMU log and pcap
TARGETS = [
    (EPAM, "raw/xentrace.bin"),
    (EPAM, "raw/qemu.log"),
    (EPAM, "raw/dom0-trace.txt"),
    (EPAM, "raw/virtqueues-0.jsonl"),
    (EPAM, "raw/trace-events"),
    (EPAM, "raw/memory-0.elf"),
    (MICROVM, "qemu-0.log"),
    (MICROVM, "0-n0.pcap"),
]
SEEDS = range(25)


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One seeded damage: bit flips, a cut, a zeroed or random run, a repeated run, or (in
    text) a line dropped, swapped or with one character changed."""
    b = bytearray(data)
    n = len(b)
    kind = int(rng.integers(0, 8))
    at = int(rng.integers(0, max(n, 1)))
    if kind == 0:  # one to three bit flips
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(0, n))] ^= 1 << int(rng.integers(0, 8))
    elif kind == 1:
        del b[at:]
    elif kind == 2:
        run = min(int(rng.integers(1, 4096)), n - at)
        b[at : at + run] = bytes(run)
    elif kind == 3:
        run = int(rng.integers(1, 64))
        b[at : at + run] = rng.integers(0, 256, len(b[at : at + run]), dtype=np.uint8).tobytes()
    elif kind == 4:
        b[at:at] = b[at : at + int(rng.integers(1, 2048))]
    else:
        lines = bytes(b).split(b"\n")
        i, j = (int(x) for x in rng.integers(0, len(lines), 2))
        if kind == 5:
            del lines[i]
        elif kind == 6:
            lines[i], lines[j] = lines[j], lines[i]
        elif lines[i]:
            k = int(rng.integers(0, len(lines[i])))
            lines[i] = lines[i][:k] + bytes([int(rng.integers(32, 127))]) + lines[i][k + 1 :]
        b = bytearray(b"\n".join(lines))
    return bytes(b)


def run(*argv) -> int:
    return answered(*argv)[0]


def assert_causal(bundle) -> None:
    req = pl.read_parquet(bundle / "requests.parquet").filter(pl.col("complete"))
    stamps = [c for c in PATH if c in req.columns]
    for i, later in enumerate(stamps[1:], 1):
        before = pl.max_horizontal([pl.col(c) for c in stamps[:i]])
        assert req.select((pl.col(later) >= before).fill_null(True).all()).item(), later


def analyse(bundle) -> None:
    if run("timeline", bundle) == 0:
        assert_causal(bundle)
        run("report", bundle)
        run("summary", bundle)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("fixture", "name"), TARGETS, ids=lambda t: str(t).split("/")[-1])
def test_a_damaged_capture_gives_an_answer_or_a_clear_error(tmp_path, fixture, name, seed):
    src = tmp_path / "capture"
    shutil.copytree(fixture, src)
    target = src / name
    rng = np.random.default_rng([seed, len(name)])
    target.write_bytes(mutate(target.read_bytes(), rng))
    b = tmp_path / "b"
    if run("ingest", src, "-o", b) == 0:
        analyse(b)


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("name", ["events.parquet", "manifest.json"])
def test_a_damaged_bundle_gives_an_answer_or_a_clear_error(tmp_path, name, seed):
    """The table or the manifest damaged after ingest (the derived data not yet made)."""
    b = tmp_path / "b"
    assert run("ingest", EPAM, "-o", b) == 0
    target = b / name
    target.write_bytes(mutate(target.read_bytes(), np.random.default_rng([seed, 7])))
    for cmd in ("summary", "timeline", "dump"):
        run(cmd, b, *(["--limit", "100"] if cmd == "dump" else []))


@pytest.mark.parametrize(
    "change",
    [{"host": None}, {"sources": None}, {"counts": []}, {"clock": "x"}, {"schema_version": 99}],
)
def test_a_manifest_with_a_wrong_section_is_refused_or_ignored(tmp_path, change):
    b = tmp_path / "b"
    assert run("ingest", EPAM, "-o", b) == 0
    doc = json.loads((b / "manifest.json").read_text())
    (b / "manifest.json").write_text(json.dumps({**doc, **change}))
    for cmd in ("summary", "timeline", "report"):
        run(cmd, b)
