"""Benchmark: `xvtrace timeline` and `xvtrace report` on a ~10M-event bundle.

    python benchmarks/timeline_scale.py [--requests 280000]

Emulates epam-mmio (about 36 events per request: xentrace + QEMU lines), ingests it, then
times `timeline` and `report` in child processes and prints wall time and peak RSS.
Target (issue 6): under 20 s and under 2 GiB each.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from measure import run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=280_000)
    args = ap.parse_args()
    xv = [sys.executable, "-m", "xvtrace"]
    with tempfile.TemporaryDirectory(prefix="xvt-scale-") as d:
        b = Path(d) / "b"
        run(
            [
                *xv,
                "emulate",
                "-t",
                "epam-mmio",
                "-w",
                "randrw-16k-qd8",
                "-n",
                str(args.requests),
                "-o",
                str(b),
            ]
        )
        events = json.loads((b / "manifest.json").read_text())["counts"]["events"]
        print(f"bundle: {args.requests} requests, {events} events")
        for name, cmd in (
            ("timeline", [*xv, "timeline", str(b)]),
            ("report", [*xv, "report", str(b)]),
        ):
            wall, rss = run(cmd)
            print(f"{name:<10}{wall:8.1f} s {rss / 2**20:8.0f} MiB peak RSS")


if __name__ == "__main__":
    main()
