"""The HTML report: self-contained, escapes trace strings, and renders in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner
from helpers import QEMU_PCI

from xvtrace import api
from xvtrace.cli import cli
from xvtrace.emulate import EmulateOptions, emulate

CHROMIUM = shutil.which("chromium")


def _report(tmp_path, bundle) -> str:
    out = tmp_path / "report.html"
    r = CliRunner().invoke(cli, ["report", str(bundle), "--html", str(out)])
    assert r.exit_code == 0, r.output
    return out.read_text()


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    d = tmp_path_factory.mktemp("html")
    r = emulate(
        EmulateOptions(transport="epam-mmio", workload="randrw-16k-qd8", requests=500, out=d / "b")
    )
    api.ingest(r.bundle)
    return r.bundle


def test_report_is_self_contained_with_four_plots(tmp_path, emulated):
    page = _report(tmp_path, emulated)
    assert page.count("<svg") == 4
    assert not re.search(
        r"""(src|href)=["']?(https?:|//)""", page
    )  # nothing fetched from elsewhere
    assert "<script" not in page


def test_trace_strings_are_escaped(tmp_path):
    # names come from the captures (file names, devices): a crafted one must stay text
    hostile = tmp_path / "raw"
    hostile.mkdir()
    (hostile / "<img src=x onerror=alert(1)>.log").write_text((QEMU_PCI / "trace.log").read_text())
    bundle = api.ingest(tmp_path).bundle
    page = _report(tmp_path, bundle.path)
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;.log" in page


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")
def test_headless_chromium_loads_it_without_errors_and_draws_the_plots(tmp_path, emulated):
    page = tmp_path / "report.html"
    page.write_text(_report(tmp_path, emulated))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={tmp_path / 'prof'}",
             "--enable-logging=stderr", "--v=0"]  # fmt: skip
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0
    assert (
        dom.stdout.count("<svg") == 4 and dom.stdout.count("<polyline") >= 2
    )  # parsed into the DOM
    console = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln]
    assert not console, console
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1000,2400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 60_000  # drawn, not a blank page
