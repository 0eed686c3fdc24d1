"""The wheel carries every package and data file (editable installs hide omissions)."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from helpers import ROOT


def test_wheel_has_every_package_and_the_trace_event_definitions(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("xvtrace-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    dirs = {n.rsplit("/", 1)[0] for n in names}
    for pkg in ("xvtrace", "xvtrace/capture", "xvtrace/emulate", "xvtrace/parsers", "xvtrace/replay",
                "xvtrace/replay/transports"):  # fmt: skip
        assert f"{pkg}/__init__.py" in names, pkg
    assert "xvtrace/parsers/data/qemu-7.2-trace-events" in names
    assert not any(d.startswith(("tests", "fixtures", "benchmarks")) for d in dirs)
