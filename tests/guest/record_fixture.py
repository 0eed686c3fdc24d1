"""Record a real-guest capture for fixtures/ (small: the memory dump is cut down to the rings).

    python tests/guest/record_fixture.py --machine q35 fixtures/qemu/live-q35-pci

Runs tests/guest/run_guest.py, keeps the bundle's raw/ files, the console and the manifest,
and replaces raw/memory-0.elf (the whole guest RAM) by an ELF core of the same format that
holds only the pages of each virtqueue's rings, at the addresses QEMU reported.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from run_guest import run

from xvtrace.parsers.virtqueue import GuestMemory, QmpVirtqueueDecoder, write_core

PAGE = 4096


def ring_pages(rings) -> list[int]:
    pages = set()
    for r in rings:
        for start, size in (
            (r.desc, 16 * r.num),
            (r.avail, 6 + 2 * r.num),
            (r.used, 6 + 8 * r.num),
        ):
            pages.update(range(start // PAGE * PAGE, start + size, PAGE))
    return sorted(pages)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machine", default="q35")
    ap.add_argument("dest", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xvt-fixture-"))
    try:
        r = run(args.machine, work / "bundle", hold=args.machine == "q35", fetch=True)
        raw = work / "bundle" / "raw"
        args.dest.mkdir(parents=True, exist_ok=True)
        for f in raw.iterdir():
            if f.name.startswith("memory-"):
                dec = QmpVirtqueueDecoder(raw / "virtqueues-0.jsonl")
                for _ in dec.frames():
                    pass
                mem = GuestMemory(f)
                regions = [(p, mem.read(p, PAGE)) for p in ring_pages(dec.rings.values())]
                mem.close()
                write_core(args.dest / f.name, [(p, b) for p, b in regions if b is not None])
            else:
                shutil.copy(f, args.dest / f.name)
        (args.dest / "console.txt").write_text(r.console)
        manifest = json.loads((work / "bundle" / "manifest.json").read_text())
        meta = {
            "recorded_by": "tests/guest/record_fixture.py",
            "machine": args.machine,
            "qemu_argv": r.qemu_argv,
            "guest_issued": r.issued,
            "capture": manifest["capture"],
            "host": manifest["host"],
        }
        (args.dest / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
