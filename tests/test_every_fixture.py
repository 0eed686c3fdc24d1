"""Every stored capture, real and emulated, through every command a user would run on it, as
the CLI runs them: each ends in an answer (exit 0) or, where the capture cannot answer
(no request to calibrate from, a transport it cannot constrain), a clear error (exit 2):
never a traceback, never an internal error."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import ARM_KHZ, FIXTURES, X86_KHZ, answered

pytestmark = pytest.mark.slow

CAPTURES = sorted(
    p.relative_to(FIXTURES)
    for kind in ("xen", "qemu", "xentrace", "emulated", "xen/validation", "xen/validation/stratos")
    for p in (FIXTURES / kind).iterdir()
    if p.is_dir() and p.name not in ("validation", "stratos")  # folders of bundles
)
CPU_KHZ = {"x86-pv-blkfront": X86_KHZ, "arm64-pvh-blkfront": ARM_KHZ}


@pytest.mark.parametrize("capture", CAPTURES, ids=str)
def test_every_command_answers_or_says_why(tmp_path, capture):
    src = tmp_path / "capture"
    shutil.copytree(FIXTURES / capture, src)
    khz = CPU_KHZ.get(capture.name)
    b = tmp_path / "b"
    assert answered("ingest", src, "-o", b, *(["--cpu-khz", khz] if khz else []))[0] == 0
    assert answered("summary", b)[0] == 0
    assert answered("dump", b, "--limit", 50)[0] == 0
    assert answered("timeline", b)[0] == 0
    assert answered("report", b, "--html", tmp_path / "r.html")[0] == 0
    assert (tmp_path / "r.html").read_text().rstrip().endswith("</html>")
    assert answered("export", "perfetto", b, "-o", tmp_path / "t.json")[0] == 0
    assert isinstance(json.loads((tmp_path / "t.json").read_text()), (dict, list))
    answered("replay", b, "--target", "all")
    answered("calibrate", b, "-o", tmp_path / "costs.toml")
    code, out = answered("regress", "--baseline", b, "--candidate", b)
    # against itself: no regression, or no complete request to compare (said so)
    assert (code == 0 and "PASS" in out) or (code == 2 and "no complete request" in out), out
