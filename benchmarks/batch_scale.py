"""Many captures: `xvtrace batch` over small emulated bundles with 1 and 2 worker processes.

    python benchmarks/batch_scale.py [--bundles 200] [--requests 300] [--work DIR]

Each run starts from the same undecoded bundles (copied afresh, not timed), so every run
ingests, reconstructs and stores all of them. Prints per worker count: wall seconds,
bundles per second, the speed-up over one worker, the CPU-seconds a bundle costs (wall x
workers / bundles), the peak RSS of any one process (the batch and its workers, wait4's
ru_maxrss, which covers the children it reaped) and of each worker (the range the batch's
summary line gives, from each worker's own getrusage); then the throughput projected for N
workers on N cores, from one worker's rate and the two-worker efficiency (speed-up / 2).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from measure import run

MIB = 1 << 20


def make_bundles(pristine: Path, n: int, requests: int) -> None:
    """n emulated EPAM runs of one workload, raw (no table yet), made once."""
    from xvtrace.emulate import EmulateOptions, emulate

    pristine.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        out = pristine / f"run{i:04d}"
        if not (out / "manifest.json").exists():
            emulate(EmulateOptions(transport="epam-mmio", workload="randread-4k-qd1",
                                   requests=requests, seed=i, out=out))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", type=int, default=200)
    ap.add_argument("--requests", type=int, default=300, help="requests per emulated bundle")
    ap.add_argument(
        "--work", type=Path, default=None, help="where the bundles go (default: a temp dir)"
    )
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="xvt-batch-"))
    pristine = work / f"pristine-{args.bundles}x{args.requests}"
    make_bundles(pristine, args.bundles, args.requests)
    print(
        f"{args.bundles} emulated bundles of {args.requests} requests (epam-mmio, randread-4k-qd1)"
    )
    print(f"{'workers':>8}{'wall s':>9}{'bundles/s':>11}{'speed-up':>10}{'CPU s/bundle':>14}"
          f"{'peak RSS MiB':>14}{'per worker MiB':>18}")  # fmt: skip
    rates = {}
    for workers in (1, 2):
        runs, store = work / "runs", work / "store"
        shutil.rmtree(runs, ignore_errors=True)
        shutil.rmtree(store, ignore_errors=True)
        shutil.copytree(pristine, runs)
        cmd = [sys.executable, "-m", "xvtrace", "batch", str(runs / "run*"), "-o", str(store),
               "-j", str(workers), "--no-progress"]  # fmt: skip
        said = work / "batch.out"
        with said.open("w") as out:
            wall, peak = run(cmd, stdout=out)
        per_worker = re.search(r"peak RSS (\d+-\d+) MiB", said.read_text())
        rates[workers] = args.bundles / wall
        print(f"{workers:>8}{wall:>9.1f}{rates[workers]:>11.2f}{rates[workers] / rates[1]:>10.2f}"
              f"{wall * workers / args.bundles:>14.3f}{peak / MIB:>14.0f}"
              f"{per_worker[1] if per_worker else '-':>18}")  # fmt: skip
    efficiency = rates[2] / rates[1] / 2
    print(f"projected, N workers on N cores at the 2-worker efficiency ({efficiency:.2f}):")
    for n in (4, 8, 16, 64):
        per_day = n * rates[1] * efficiency * 86400
        print(
            f"{n:>8} workers: {n * rates[1] * efficiency:>7.1f} bundles/s, {per_day:>12,.0f} a day"
        )
    shutil.rmtree(work / "runs", ignore_errors=True)


if __name__ == "__main__":
    main()
