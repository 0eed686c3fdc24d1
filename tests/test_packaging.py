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
    # every package of the tree (parsers/ and replay/ install as xvtrace.parsers and .replay)
    mapped = {"xvtrace": "xvtrace", "parsers": "xvtrace/parsers", "replay": "xvtrace/replay"}
    for top, into in mapped.items():
        for init in (ROOT / top).rglob("__init__.py"):
            pkg = (into + "/" + str(init.parent.relative_to(ROOT / top))).removesuffix("/.")
            assert f"{pkg}/__init__.py" in names, pkg
    assert "xvtrace/parsers/data/qemu-7.2-trace-events" in names
    assert not any(d.startswith(("tests", "fixtures", "benchmarks")) for d in dirs)
    # the pytest plugin is registered for every project that installs xvtrace
    (ep,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(ep).decode()
    assert "[pytest11]" in text and "xvtrace = xvtrace.gate.pytest_plugin" in text
    # the command starts where the allocator settings are applied before numpy and polars
    assert "xvtrace = xvtrace.entry:main" in text


def test_plugin_module_imports_nothing_heavy():
    code = "import sys, xvtrace.gate.pytest_plugin; print(sorted(m for m in ('polars', 'numpy', 'numba') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
