"""Benchmark: `xvtrace replay --target all` of a 1M-request stream, against emulating the same
requests on one transport (the peer, measured in the same run).

    python benchmarks/replay_speed.py [--requests 1000000] [--seed-requests 25000]

Emulates --seed-requests of epam-mmio randrw-16k-qd8, reconstructs them (timeline), tiles
the request table to --requests (times shifted, so it is one long capture), then times
`xvtrace replay --target all` (every transport, plus its saturation runs, plus writing the
predictions) and `xvtrace emulate` of --requests on pv-blkif (the fastest transport to
emulate) in child processes. Target (issue 7): replay under 60 s (aim 30 s) on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import polars as pl
from measure import run

WORKLOAD = "randrw-16k-qd8"


def tiled_bundle(seed_bundle: Path, out: Path, n: int) -> None:
    """A bundle whose requests.parquet is the seed's repeated (and shifted in time) to n."""
    req = pl.read_parquet(seed_bundle / "requests.parquet")
    span = int(req["fill_ns"].max() - req["pop_ns"].min()) + 1
    times = [c for c, t in req.schema.items() if c.endswith("_ns") and t == pl.Int64 and "to" not in c
             and c not in ("io_ns", "service_ns")]  # fmt: skip
    copies = -(-n // len(req))
    tiled = pl.concat(
        [req.with_columns([pl.col(c) + k * span for c in times]) for k in range(copies)]
    ).head(n).with_columns(pl.int_range(pl.len()).alias("request"))  # fmt: skip
    out.mkdir(parents=True)
    tiled.write_parquet(out / "requests.parquet")
    shutil.copy(seed_bundle / "manifest.json", out / "manifest.json")
    (out / "raw").mkdir()
    shutil.copy(seed_bundle / "events.parquet", out / "events.parquet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--seed-requests", type=int, default=25_000)
    args = ap.parse_args()
    xv = [sys.executable, "-m", "xvtrace"]
    with tempfile.TemporaryDirectory(prefix="xvt-replay-") as d:
        seed, big = Path(d) / "seed", Path(d) / "big"
        run([*xv, "emulate", "-t", "epam-mmio", "-w", WORKLOAD, "-n", str(args.seed_requests),
             "-o", str(seed)])  # fmt: skip
        run([*xv, "timeline", str(seed)])
        tiled_bundle(seed, big, args.requests)
        print(f"stream: {args.requests} requests ({WORKLOAD}, tiled from {args.seed_requests})")
        wall, rss = run([*xv, "replay", str(big), "--target", "all"])
        facts = json.loads((big / "replay.json").read_text())
        k = len(facts["transports"])
        print(f"replay   --target all ({k} transports): {wall:6.1f} s {rss / 2**20:7.0f} MiB peak RSS"
              f"  {args.requests * k / wall / 1e6:5.2f} M request-paths/s")  # fmt: skip
        ewall, erss = run([*xv, "emulate", "-t", "pv-blkif", "-w", WORKLOAD, "-n", str(args.requests),
                           "-o", str(Path(d) / "emu"), "--no-ingest"])  # fmt: skip
        print(
            f"emulate  -t pv-blkif (1 transport): {ewall:6.1f} s {erss / 2**20:7.0f} MiB peak RSS"
        )
        print(f"ratio: replaying {k} transports takes {wall / ewall:.2f}x the time of emulating one "
              f"(target: replay under 60 s)")  # fmt: skip


if __name__ == "__main__":
    main()
