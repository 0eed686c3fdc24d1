"""Benchmark: emulated block requests per second of wall time, per transport.

    python benchmarks/emulate_speed.py [--requests 1000000] [--transport all]

Runs `xvtrace emulate` in a child process per transport (so peak RSS is that run's), with
QEMU lines and xentrace written, and prints requests/s and peak RSS. Target: 200k req/s.
The peer is `cp -r` of the bundle the run wrote, to the same file system right after it: the
time to write those bytes at all (from the page cache), which no emulation can beat.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from measure import run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--transport", default="all")
    ap.add_argument("--workload", default="randwrite-4k-qd32")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per transport; the fastest is reported (a shared machine's wall "
                    "time varies by 20 %% and more between runs)")  # fmt: skip
    args = ap.parse_args()
    from xvtrace.replay.transports import NAMES

    names = NAMES if args.transport == "all" else args.transport.split(",")
    print(f"{'transport':<24}{'requests':>10}{'seconds':>9}{'k req/s':>9}{'peak RSS MiB':>14}"
          f"{'GB':>6}{'cp -r s':>9}{'x cp':>6}")  # fmt: skip
    for name in names:
        out = Path(tempfile.mkdtemp(prefix="xvt-bench-")) / "b"
        cmd = [sys.executable, "-m", "xvtrace", "emulate", "-t", name, "-w", args.workload,
               "-n", str(args.requests), "-o", str(out), "--no-ingest"]  # fmt: skip
        wall, rss, size, cp = min(_once(cmd, out) for _ in range(max(1, args.repeat)))
        shutil.rmtree(out.parent, ignore_errors=True)
        print(
            f"{name:<24}{args.requests:>10}{wall:>9.1f}{args.requests / wall / 1e3:>9.0f}"
            f"{rss / 2**20:>14.0f}{size / 1e9:>6.2f}{cp:>9.1f}{wall / cp:>6.1f}"
        )


SETTLE_S = 2.0


def _once(cmd: list[str], out: Path) -> tuple[float, int, int, float]:
    """One run, into a fresh `out`, with no earlier run's output still being written back
    (each run writes up to 2.7 GB; flushing it would otherwise take CPU from the next):
    (wall seconds, peak RSS, bytes written, seconds of `cp -r` of those bytes). The disk
    gets a moment after the sync: freeing the last run's 5 GB (bundle and copy) goes on in
    the background (ext4 discards them), and took 0.3-0.5 s from the next run when it started
    at once."""
    os.sync()
    time.sleep(SETTLE_S)
    try:
        wall, rss = run(cmd)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        os.sync()
        cp, _ = run(["cp", "-r", str(out), str(out) + "-copy"])
        return wall, rss, size, cp
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(str(out) + "-copy", ignore_errors=True)


if __name__ == "__main__":
    main()
