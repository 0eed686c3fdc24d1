"""Benchmark: `xvtrace ingest` vs `xenalyze --summary` vs `cat` on the same xentrace file.

`xvtrace ingest` folds the summary as it writes the table (its first `summary` is served);
`xvtrace ingest --no-summary` writes the table alone, which is what --floor compares.

    python benchmarks/xentrace_ingest.py [--size-mb 500] [--work benchmarks/work]

Generates (once, then reuses) a synthetic HVM xentrace file of about --size-mb with the
project's writer, then runs each tool on it in this process's run, measuring wall time and
peak RSS (of the child process, via wait4), and prints throughput and the ratios.

With --floor it also times, in a child process, writing the ingested table back to parquet
from memory (no decoding) as the bundle stores it, and with a minimal 12-column layout: the
least any ingest that produces events.parquet on this machine can take.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from measure import run

CPU_KHZ = 2_400_000
EXITS_PER_CHUNK = 400_000  # ~10 MB of trace per generated chunk


def make_trace(path: Path, size_mb: int) -> None:
    """Write the trace in a child process, so this one stays small (children's peak RSS
    is measured, and a fork inherits the parent's)."""
    if path.exists() and path.stat().st_size >= size_mb * 1_000_000 * 0.95:
        return
    subprocess.run(
        [sys.executable, __file__, "--generate", str(path), "--size-mb", str(size_mb)], check=True
    )


def generate(path: Path, size_mb: int) -> None:
    from xvtrace.parsers.xentrace import write_frame
    from xvtrace.testing.synth import hvm_records

    tmp = path.with_suffix(".part")
    written, seed, start = 0, 0, 1_000_000_000
    with tmp.open("wb") as fh:
        while written < size_mb * 1_000_000:
            df = hvm_records(EXITS_PER_CHUNK, seed=seed, ncpu=4, start_tsc=start, lost_every=0)
            written += write_frame(fh, df, round_cycles=240_000_000, window_bytes=32 * 4096 - 8)
            start = int(df["ts_raw"].max()) + 1000
            seed += 1
            print(f"\rgenerating {path.name}: {written / 1e6:.0f} MB", end="", file=sys.stderr)
    print(file=sys.stderr)
    tmp.replace(path)


FLOOR_LAYOUTS = ("canonical", "minimal")


def write_floor(bundle: Path, layouts: tuple[str, ...] = FLOOR_LAYOUTS) -> None:
    """Print the seconds to write the bundle's events table, already in memory, to parquet:
    as ingest writes it ("canonical"), and as 12 columns ("minimal": time, pCPU, id, arg
    count, 32-bit args, offset)."""
    import json
    import time

    import polars as pl

    df = pl.read_parquet(bundle / "events.parquet")
    tables = {
        "canonical": lambda: df,
        "minimal": lambda: df.select("ts_ns", "cpu", "code", "nargs", pl.col("^arg.$").cast(pl.UInt32),
                                     "src_offset"),
    }  # fmt: skip
    out = {}
    for name in layouts:
        table = tables[name]()
        t0 = time.perf_counter()
        table.write_parquet(bundle / "floor.parquet", compression="lz4", statistics=False)
        out[name] = time.perf_counter() - t0
    (bundle / "floor.parquet").unlink()
    print(json.dumps(out))


def floor_seconds(bundle: Path, layouts: tuple[str, ...] = FLOOR_LAYOUTS) -> dict[str, float]:
    """write_floor of `layouts`, in a child process (its memory is not the caller's)."""
    import json

    out = subprocess.run([sys.executable, __file__, "--write-floor", str(bundle),
                          "--floor-layouts", ",".join(layouts)],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(out.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=500)
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / "work")
    ap.add_argument("--repeat", type=int, default=1, help="runs per tool; the best is reported")
    ap.add_argument(
        "--floor",
        action="store_true",
        help="also time writing the decoded table alone (needs ~7x the file in RAM)",
    )
    ap.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--write-floor", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--floor-layouts", default=",".join(FLOOR_LAYOUTS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate:
        generate(args.generate, args.size_mb)
        return
    if args.write_floor:
        write_floor(args.write_floor, tuple(args.floor_layouts.split(",")))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    trace = args.work / f"hvm-{args.size_mb}mb.bin"
    make_trace(trace, args.size_mb)
    size = trace.stat().st_size
    records = None
    xv = shutil.which("xvtrace") or f"{sys.executable} -m xvtrace"
    tools = {
        "cat": ["cat", str(trace)],
        "xenalyze --summary": ["xenalyze", f"--cpu-hz={CPU_KHZ // 1000}M", "--summary", str(trace)],
        "xvtrace ingest": [*xv.split(), "ingest", str(trace), "-o", str(args.work / "bundle"),
                           "--cpu-khz", str(CPU_KHZ), "--no-progress"],
        "ingest --no-summary": [*xv.split(), "ingest", str(trace), "-o", str(args.work / "bundle"),
                                "--cpu-khz", str(CPU_KHZ), "--no-progress", "--no-summary"],
    }  # fmt: skip
    if not shutil.which("xenalyze"):
        del tools["xenalyze --summary"]
        print("xenalyze not found (apt-get install xen-utils-4.17): no peer ratio", file=sys.stderr)
    results = {}
    for name, cmd in tools.items():
        best = None
        for _ in range(args.repeat):
            if "ingest" in name:
                shutil.rmtree(args.work / "bundle", ignore_errors=True)
            r = run(cmd)
            best = r if best is None or r[0] < best[0] else best
        results[name] = best
    import json

    manifest = json.loads((args.work / "bundle" / "manifest.json").read_text())
    records = manifest["counts"]["events"]
    print(f"file: {trace} ({size / 1e6:.1f} MB, {records} records)")
    print(f"{'tool':<22}{'seconds':>9}{'MB/s':>9}{'Mrec/s':>9}{'peak RSS MiB':>14}")
    for name, (wall, rss) in results.items():
        print(
            f"{name:<22}{wall:9.2f}{size / 1e6 / wall:9.1f}{records / 1e6 / wall:9.2f}{rss / 2**20:14.0f}"
        )
    if "xenalyze --summary" in results:
        xa, xr = results["xenalyze --summary"]
        iw, ir = results["xvtrace ingest"]
        print(f"ratio ingest/xenalyze throughput: {xa / iw:.2f}x (>= 1.0 means xvtrace is faster)")
        print(f"ratio ingest/xenalyze peak RSS:   {ir / xr:.2f}x")
        nw = results["ingest --no-summary"][0]
        print(f"ratio ingest --no-summary/xenalyze throughput: {xa / nw:.2f}x")
    cw, _ = results["cat"]
    print(f"ratio ingest/cat throughput:      {cw / results['xvtrace ingest'][0]:.3f}x")
    if args.floor:
        peer = results.get("xenalyze --summary", results["cat"])[0]
        floors = floor_seconds(args.work / "bundle")
        for layout, secs in floors.items():
            print(f"parquet write alone, {layout + ' table':<16}{secs:6.2f} s "
                  f"({secs / peer:.2f}x the peer's whole run)")  # fmt: skip
        floor = next(iter(floors.values()))  # as the bundle stores it
        for name in ("ingest --no-summary", "xvtrace ingest"):
            print(f"{name} / the floor: {results[name][0] / floor:.2f}x")


if __name__ == "__main__":
    main()
