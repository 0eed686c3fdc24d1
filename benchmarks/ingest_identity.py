"""Check: this tree's `xvtrace ingest` writes the same events.parquet as another xvtrace.

    python benchmarks/ingest_identity.py --reference /work/main/.venv/bin/xvtrace \\
        [--requests 20000] [--captures /work/shared/captures]

Ingests, with both, every stored bundle under fixtures/, every capture folder under
--captures, and a fresh emulated run of every transport (`emulate --transport all
-w randread-4k-qd1 -n REQUESTS`, plus a randwrite-4k-qd32 run of epam-mmio), each into
its own bundle in a temporary directory, and compares the tables row for row
(benchmarks/tables.py). Exits 1 when any differs.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tables import compare_events

ROOT = Path(__file__).resolve().parent.parent
XV = [sys.executable, "-m", "xvtrace"]


def sources(work: Path, requests: int, captures: Path | None) -> list[tuple[str, Path]]:
    found = [(str(p.relative_to(ROOT)), p) for p in sorted(ROOT.glob("fixtures/*/*/raw"))]
    found = [(name[: -len("/raw")], p.parent) for name, p in found]
    found += [(str(p.relative_to(ROOT)), p) for p in sorted(ROOT.glob("fixtures/*/*"))
              if p.is_dir() and not (p / "raw").exists()]  # fmt: skip
    if captures and captures.is_dir():
        found += [(f"captures/{p.name}", p) for p in sorted(captures.iterdir()) if p.is_dir()]
    emu = work / "emulated"
    for transport, workload in (("all", "randread-4k-qd1"), ("epam-mmio", "randwrite-4k-qd32")):
        out = emu / workload
        subprocess.run([*XV, "emulate", "-t", transport, "-w", workload, "-n", str(requests),
                        "--no-ingest", "-o", str(out)], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        if (out / "raw").is_dir():
            found.append((f"emulated {transport} {workload}", out))
        else:
            found += [(f"emulated {p.name} {workload}", p) for p in sorted(out.iterdir())]
    return found


def ingest(xvtrace: list[str], src: Path, out: Path) -> None:
    """Ingest src (a bundle or a folder of captures) into out, from a copy of its raw files
    so that neither run touches the stored fixtures."""
    if (src / "raw").is_dir():
        shutil.copytree(src / "raw", out / "raw")
        if (src / "manifest.json").is_file():
            shutil.copy(src / "manifest.json", out / "manifest.json")
        args = [str(out)]
    else:
        args = [str(src), "-o", str(out)]
    subprocess.run([*xvtrace, "ingest", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", required=True, help="the other xvtrace executable")
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--captures", type=Path, default=Path("/work/shared/captures"))
    args = ap.parse_args()
    bad = 0
    with tempfile.TemporaryDirectory(prefix="xvt-identity-") as d:
        work = Path(d)
        for i, (name, src) in enumerate(sources(work, args.requests, args.captures)):
            new, old = work / f"{i}-new", work / f"{i}-old"
            ingest(XV, src, new)
            ingest([args.reference], src, old)
            same, what = compare_events(old / "events.parquet", new / "events.parquet")
            bad += not same
            print(f"{'ok  ' if same else 'FAIL'} {name}: {what}", flush=True)
            shutil.rmtree(new)
            shutil.rmtree(old)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
