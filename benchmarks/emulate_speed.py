"""Benchmark: emulated block requests per second of wall time, per transport.

    python benchmarks/emulate_speed.py [--requests 1000000] [--transport all]

Runs `xvtrace emulate` in a child process per transport (so peak RSS is that run's), with
QEMU lines and xentrace written, and prints requests/s and peak RSS. Target: 200k req/s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--transport", default="all")
    ap.add_argument("--workload", default="randwrite-4k-qd32")
    args = ap.parse_args()
    from xvtrace.replay.transports import NAMES

    names = NAMES if args.transport == "all" else args.transport.split(",")
    print(f"{'transport':<24}{'requests':>10}{'seconds':>9}{'k req/s':>9}{'peak RSS MiB':>14}")
    for name in names:
        out = Path(tempfile.mkdtemp(prefix="xvt-bench-")) / "b"
        cmd = [sys.executable, "-m", "xvtrace", "emulate", "-t", name, "-w", args.workload,
               "-n", str(args.requests), "-o", str(out), "--no-ingest"]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        shutil.rmtree(out.parent, ignore_errors=True)
        if os.waitstatus_to_exitcode(status):
            raise SystemExit(f"{name}: failed: {proc.stderr.read().decode()}")
        proc.stderr.close()
        print(
            f"{name:<24}{args.requests:>10}{wall:>9.1f}{args.requests / wall / 1e3:>9.0f}{usage.ru_maxrss / 1024:>14.0f}"
        )


if __name__ == "__main__":
    main()
