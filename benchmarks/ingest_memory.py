"""Benchmark: `xvtrace ingest` peak RSS and wall time as the capture grows.

    python benchmarks/ingest_memory.py [--requests 1000000,2000000,5000000]
        [--reference /path/to/other/xvtrace] [--reference-max 1000000] [--work DIR]

For each request count, emulates `epam-mmio` running `randwrite-4k-qd32` without
ingesting (1M requests: 2.3 GB raw, 39 M events; 5M: about 11 GB), then ingests the bundle
in a child process and prints its wall time and peak RSS (issue 21: under 1.5 GiB, flat
from 1M to 5M). With --reference it also ingests each bundle of at most --reference-max
requests with that xvtrace (e.g. an older checkout's, which sorted the whole capture in
memory) and checks the two tables are the same row for row (benchmarks/tables.py). Each
bundle is deleted before the next is made. Timings on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from measure import run
from tables import compare_in_child

XV = [sys.executable, "-m", "xvtrace"]


def raw_bytes(bundle: Path) -> int:
    return sum(p.stat().st_size for p in (bundle / "raw").iterdir() if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", default="1000000,2000000,5000000",
                    help="comma-separated request counts")  # fmt: skip
    ap.add_argument("--reference", help="another xvtrace executable to time and compare")
    ap.add_argument("--reference-max", type=int, default=1_000_000,
                    help="largest request count to run the reference on")  # fmt: skip
    ap.add_argument("--work", type=Path, help="where bundles go (default: a temporary dir)")
    args = ap.parse_args()
    counts = [int(x) for x in args.requests.split(",")]
    work = Path(tempfile.mkdtemp(prefix="xvt-ingest-mem-", dir=args.work))
    try:
        print(f"{'requests':>9} {'raw GB':>7} {'events':>11} {'tool':>9} {'wall s':>8} "
              f"{'peak RSS GiB':>12}  table")  # fmt: skip
        for n in counts:
            b = work / f"b{n}"
            run([*XV, "emulate", "-t", "epam-mmio", "-w", "randwrite-4k-qd32", "-n", str(n),
                 "--no-ingest", "-o", str(b)])  # fmt: skip
            size = raw_bytes(b) / 1e9
            wall, rss = run([*XV, "ingest", str(b)])
            events = json.loads((b / "manifest.json").read_text())["counts"]["events"]
            row = f"{n:>9} {size:>7.2f} {events:>11}"
            print(f"{row} {'this':>9} {wall:>8.1f} {rss / 2**30:>12.2f}", flush=True)
            if args.reference and n <= args.reference_max:
                ref = work / f"b{n}-ref"
                wall, rss = run([args.reference, "ingest", str(b), "-o", str(ref)])
                same, what = compare_in_child(ref / "events.parquet", b / "events.parquet")
                print(f"{row} {'reference':>9} {wall:>8.1f} {rss / 2**30:>12.2f}  "
                      f"{'same' if same else 'DIFFERENT'}: {what}", flush=True)  # fmt: skip
                shutil.rmtree(ref)
            shutil.rmtree(b)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
