"""Analysis at capture scale, each xvtrace task against its peer in the same run.

    python benchmarks/capture_scale.py [--size-mb 500] [--requests 1000000,2000000,5000000]
                                       [--work benchmarks/work] [--repeat 3]
                                       [--workload randwrite-4k-qd32]

Rows (wall seconds and peak RSS of each child process, medians of --repeat runs):
- on a generated xentrace file of --size-mb (HVM guest, 4 pCPUs): `ingest` (which folds
  the summary as it writes the table) and `ingest --no-summary`, each also against the
  floor of writing its table alone (xentrace_ingest.py --floor), `summary BUNDLE` after
  ingest (served) and computed from events.parquet (its stored summary dropped), `summary
  RAW`, each against `xenalyze --summary` on the raw file; `dump BUNDLE > /dev/null`
  against `xenalyze --dump-all`;
- on emulated epam-mmio bundles of each --requests (--workload, randwrite-4k-qd32; with
  randread-4k-qd1 QEMU pops one element pointer for every request): `ingest` (with
  the summary; at the first size also of the QEMU log alone and of the dom0 ftrace alone,
  in MB/s), `timeline` and `summary` (computed from the table), then `report`, `report
  --html`, `regress`, `export perfetto` and `replay` (from the stored timeline), whose peak
  RSS should stay flat as the capture grows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

from measure import run
from xentrace_ingest import CPU_KHZ, floor_seconds, make_trace

XV = [sys.executable, "-m", "xvtrace"]
GIB = 1 << 30
WORKLOAD = "randwrite-4k-qd32"  # of the emulated bundles


def median_run(cmd: list[str], repeat: int, before=None) -> tuple[float, int]:
    """Median wall time and the largest peak RSS over `repeat` runs (`before()` each time)."""
    walls, peaks = [], []
    for _ in range(repeat):
        if before:
            before()
        wall, peak = run(cmd)
        walls.append(wall)
        peaks.append(peak)
    return statistics.median(walls), max(peaks)


def row(task: str, ours: tuple[float, int], peer_name: str = "", peer=None) -> None:
    wall, peak = ours
    text = f"{task:<44}{wall:>8.2f} s {peak / GIB:>6.2f} GiB"
    if peer is not None:
        pwall, ppeak = peer
        text += f"   {peer_name:<22}{pwall:>7.2f} s {ppeak / GIB:>6.2f} GiB   x{pwall / wall:>5.2f}"
    print(text, flush=True)


def xentrace_rows(work: Path, size_mb: int, repeat: int) -> None:
    trace = work / f"trace-{size_mb}mb.bin"
    make_trace(trace, size_mb)
    bundle = work / f"bundle-{size_mb}mb"
    shutil.rmtree(bundle, ignore_errors=True)
    xen_summary = median_run(["xenalyze", "--summary", str(trace)], repeat)
    ingest = [*XV, "ingest", str(trace), "-o", str(bundle), "--cpu-khz", str(CPU_KHZ)]
    fresh = partial(shutil.rmtree, bundle, ignore_errors=True)
    plain = median_run([*ingest, "--no-summary"], repeat, before=fresh)
    row(f"ingest --no-summary ({size_mb} MB xentrace)", plain, "xenalyze --summary", xen_summary)
    folded = median_run(ingest, repeat, before=fresh)
    row(f"ingest ({size_mb} MB xentrace)", folded, "xenalyze --summary", xen_summary)
    floor = _floor(bundle)  # (the table as ingest --no-summary wrote it; ingest writes the same)
    for name, ours in (("ingest --no-summary", plain), ("ingest", folded)):
        print(f"{name + ', vs the write alone':<44}{ours[0]:>8.2f} s"
              f"{'':>10}   {'parquet write alone':<22}{floor:>7.2f} s {'':>10}"
              f"   {ours[0] / floor:.2f}x the floor (target <= 1.30x)", flush=True)  # fmt: skip
    summary = [*XV, "summary", str(bundle)]
    row("summary BUNDLE, after ingest (served)", median_run(summary, repeat),
        "xenalyze --summary", xen_summary)  # fmt: skip
    row(
        "summary BUNDLE, from events.parquet",
        median_run(summary, repeat, before=partial(_forget_summary, bundle)),
        "xenalyze --summary",
        xen_summary,
    )
    raw = [*XV, "summary", str(trace), "--cpu-khz", str(CPU_KHZ)]
    row("summary RAW", median_run(raw, repeat), "xenalyze --summary", xen_summary)
    row(
        "dump BUNDLE > /dev/null",
        median_run([*XV, "dump", str(bundle)], repeat),
        "xenalyze --dump-all",
        median_run(["xenalyze", "--dump-all", str(trace)], repeat),
    )


def _floor(bundle: Path) -> float:
    """Seconds to write the bundle's events table to parquet from memory, as ingest writes
    it: the least an ingest that decodes into it can take (median of three)."""
    walls = [floor_seconds(bundle, ("canonical",))["canonical"] for _ in range(3)]
    return statistics.median(walls)


def decoder_rows(raw: Path, work: Path, repeat: int, tag: str) -> None:
    """Ingest of one source alone, in MB/s (target >= 60): the QEMU log (with its
    trace-events file) and the dom0 ftrace of an emulated capture's raw/."""
    khz = json.loads((raw.parent / "manifest.json").read_text())["host"]["cpu_khz"]
    for name, files in (
        ("QEMU log", ("qemu.log", "trace-events")),
        ("dom0 ftrace", ("dom0-trace.txt",)),
    ):
        alone = work / "alone"
        shutil.rmtree(alone, ignore_errors=True)
        (alone / "raw").mkdir(parents=True)
        for f in files:
            os.link(raw / f, alone / "raw" / f)
        size = (raw / files[0]).stat().st_size
        wall, peak = median_run([*XV, "ingest", str(alone), "--cpu-khz", str(khz)], repeat,
                                before=partial((alone / "events.parquet").unlink, missing_ok=True))  # fmt: skip
        print(f"{f'ingest {name} alone, {tag}, {size / 1e9:.2f} GB':<44}{wall:>8.2f} s"
              f" {peak / GIB:>6.2f} GiB   {size / 1e6 / wall:.0f} MB/s (target >= 60)", flush=True)  # fmt: skip
        shutil.rmtree(alone)


def _forget_summary(bundle: Path) -> None:
    """Drop the bundle's stored summary, so the next one is computed from the table."""
    manifest = bundle / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc.pop("summary", None)
    manifest.write_text(json.dumps(doc, indent=2))
    shutil.rmtree(bundle / "derived", ignore_errors=True)


def emulated_rows(work: Path, counts: list[int], repeat: int, workload: str) -> None:
    tag = "epam-mmio" if workload == WORKLOAD else f"epam-mmio {workload.split('-')[-1]}"
    for n in counts:
        with tempfile.TemporaryDirectory(prefix="xvt-scale-", dir=work) as d:
            b = Path(d) / "b"
            subprocess.run([*XV, "emulate", "-t", "epam-mmio", "-w", workload,
                            "-n", str(n), "--no-ingest", "-o", str(b)],
                           check=True, stdout=subprocess.DEVNULL)  # fmt: skip
            size = sum(p.stat().st_size for p in (b / "raw").iterdir()) / 1e9
            row(f"ingest, {tag} {n // 1000}k requests ({size:.1f} GB)",
                median_run([*XV, "ingest", str(b)], repeat, before=partial(_clean, b)))  # fmt: skip
            if n == counts[0]:
                decoder_rows(b / "raw", Path(d), repeat, f"{tag} {n // 1000}k")
            row(f"timeline, {tag} {n // 1000}k requests",
                median_run([*XV, "timeline", str(b)], repeat, before=partial(_forget_timeline, b)))  # fmt: skip
            row(f"summary, {tag} {n // 1000}k requests",
                median_run([*XV, "summary", str(b)], repeat, before=partial(_forget_summary, b)))  # fmt: skip
            # the commands that read the stored timeline's requests
            trace, page = Path(d) / "trace.json", Path(d) / "report.html"
            for name, cmd in (
                ("report", ["report", str(b)]),
                ("report --html", ["report", str(b), "--html", str(page)]),
                ("regress", ["regress", "--baseline", str(b), "--candidate", str(b)]),
                ("export perfetto", ["export", "perfetto", str(b), "-o", str(trace)]),
                ("replay (8 transports)", ["replay", str(b)]),
            ):
                row(f"{name}, {tag} {n // 1000}k requests", median_run([*XV, *cmd], repeat))


def _clean(bundle: Path) -> None:
    (bundle / "events.parquet").unlink(missing_ok=True)


def _forget_timeline(bundle: Path) -> None:
    for name in ("requests.parquet", "ioreqs.parquet"):
        (bundle / name).unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=500)
    ap.add_argument("--requests", default="1000000,2000000,5000000")
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / "work")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", choices=("xentrace", "emulated"))
    ap.add_argument("--workload", default=WORKLOAD, help="of the emulated bundles")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"{'task':<44}{'xvtrace':>17}   {'peer':<22}{'':>17}   ratio (peer / xvtrace)")
    if args.only != "emulated":
        xentrace_rows(args.work, args.size_mb, args.repeat)
    if args.only != "xentrace":
        counts = [int(n) for n in args.requests.split(",")]
        emulated_rows(args.work, counts, args.repeat, args.workload)


if __name__ == "__main__":
    main()
