"""The HTML report: self-contained, escapes trace strings, and renders in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import FIXTURES, QEMU_PCI, X86_PV

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
    assert page.count('class="plotly-graph-div"') == 4
    # nothing fetched from elsewhere (plotly's code names its site in strings: not loaded)
    assert not re.search(r"<(script|link|img|iframe|object)\b[^>]*\b(src|href)=", page)
    assert page.count("<script") == 1 + 4  # plotly inlined once, then each figure's data


def test_trace_strings_are_escaped(tmp_path):
    # names come from the captures (file names, devices): a crafted one must stay text
    hostile = tmp_path / "raw"
    hostile.mkdir()
    (hostile / "<img src=x onerror=alert(1)>.log").write_text((QEMU_PCI / "trace.log").read_text())
    bundle = api.ingest(tmp_path).bundle
    page = _report(tmp_path, bundle.path)
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;.log" in page


def _dom(tmp_path, page: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={tmp_path / 'prof'}",
             "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
             "--enable-unsafe-swiftshader"]  # fmt: skip
    return subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True,
                          text=True, timeout=180)  # fmt: skip


class _Tree(HTMLParser):
    """The rendered page as nested (tag, attrs, children), enough to read plotly's SVG."""

    VOID = frozenset({"meta", "br", "img", "input", "link", "hr", "rect", "path", "line",
                      "circle", "stop", "use", "image"})  # fmt: skip

    def __init__(self):
        super().__init__()
        self.root = ("root", {}, [])
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = (tag, dict(attrs), [])
        self.stack[-1][2].append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1][2].append((tag, dict(attrs), []))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                return


def _walk(node):
    yield node
    for child in node[2]:
        yield from _walk(child)


def _has(node, cls: str) -> bool:
    return cls in node[1].get("class", "").split()


def _figures(dom: str) -> list[dict]:
    """Per plotly figure on the page: its size, tick counts, plot areas and legend box."""
    tree = _Tree()
    tree.feed(dom)
    out = []
    for fig in (n for n in _walk(tree.root) if _has(n, "plotly-graph-div")):
        svg = next(n for n in _walk(fig) if n[0] == "svg" and _has(n, "main-svg"))
        legend = next((n for n in _walk(fig) if n[0] == "g" and _has(n, "legend")), None)
        box = None
        if legend is not None:
            x, y = map(float, re.findall(r"[-\d.]+", legend[1]["transform"])[:2])
            bg = next(n for n in legend[2] if n[0] == "rect" and _has(n, "bg"))
            box = (x, y, x + float(bg[1]["width"]), y + float(bg[1]["height"]))
        areas = [tuple(float(n[1][k]) for k in ("x", "y", "width", "height"))
                 for n in _walk(fig) if n[0] == "rect" and _has(n, "nsewdrag")]  # fmt: skip
        out.append({
            "size": (float(svg[1]["width"]), float(svg[1]["height"])),
            "xticks": sum(1 for n in _walk(fig) if _has(n, "xtick")),
            "yticks": sum(1 for n in _walk(fig) if _has(n, "ytick")),
            "areas": [(x, y, x + w, y + h) for x, y, w, h in areas],
            "legend": box,
            "title": next((n for n in _walk(fig) if _has(n, "gtitle")), ("", {"data-unformatted": ""}, []))[1]
            .get("data-unformatted", ""),
        })  # fmt: skip
    return out


def _check_figures(figures: list[dict], legends: int) -> None:
    """Ticks on both axes of every plot; every legend inside its figure and off the plot
    areas (over the data it hides it, outside the frame it is clipped)."""
    assert figures
    for f in figures:
        w, h = f["size"]
        assert f["xticks"] >= 2 and f["yticks"] >= 2, f
        if f["legend"] is not None:
            x0, y0, x1, y1 = f["legend"]
            assert x0 >= 0 and x1 <= w and y0 >= 0 and y1 <= h, f
            for a in f["areas"]:
                assert x1 <= a[0] or a[2] <= x0 or y1 <= a[1] or a[3] <= y0, (f, a)
    assert sum(f["legend"] is not None for f in figures) >= legends


@pytest.mark.slow  # (seconds: the real-system stage runs it)
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")
def test_headless_chromium_draws_every_plot_with_ticks_and_legends_in_frame(tmp_path):
    """The report of a real capture (the EPAM device on real Xen) and the compare page of
    a replay, rendered by chromium: every plot has tick values on both axes, and every
    legend lies inside its figure and off the data (the hand-drawn SVG had neither ticks
    nor legends that stayed out of the way). Also: no console error, and a drawn page."""
    bundle = api.ingest(FIXTURES / "xen" / "hvm-epam", tmp_path / "b", warn=lambda m: None).bundle
    page = tmp_path / "report.html"
    page.write_text(_report(tmp_path, bundle.path))
    dom = _dom(tmp_path, page)
    assert dom.returncode == 0
    # (software WebGL's own notes on its speed are not the page's errors)
    console = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln and "GPU stall" not in ln]
    assert not console, console
    figures = _figures(dom.stdout)
    assert len(figures) == 4
    _check_figures(figures, legends=2)  # the CDF's and the Gantt's
    r = CliRunner().invoke(cli, ["replay", str(bundle.path), "--target", "epam-mmio,pv-blkif"])
    assert r.exit_code == 0, r.output
    cmp_page = tmp_path / "compare.html"
    r = CliRunner().invoke(cli, ["compare", str(bundle.path), "--html", str(cmp_page)])
    assert r.exit_code == 0, r.output
    figures = _figures(_dom(tmp_path, cmp_page).stdout)
    assert len(figures) == 2
    _check_figures(figures, legends=1)
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'prof'}",
             "--virtual-time-budget=10000", "--window-size=1200,3600"]  # fmt: skip
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=180, check=True)  # fmt: skip
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 100_000  # drawn, not a blank page


def test_sections_with_nothing_to_show_say_why(tmp_path):
    """A capture no view reconstructs: every plot section explains itself, no empty heading."""
    b = tmp_path / "pv"
    assert (
        CliRunner().invoke(cli, ["ingest", str(X86_PV / "trace.bin"), "-o", str(b)]).exit_code == 0
    )
    page = _report(tmp_path, b)
    assert page.count("Nothing to draw:") == 4 and 'class="plotly-graph-div"' not in page
    assert "No phase measured" in page and "No clock alignment" in page
