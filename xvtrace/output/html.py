"""A self-contained HTML report: plotly figures (output.plots, its JavaScript inlined) and
tables, nothing fetched from elsewhere, so it opens offline. Every string that comes from a
trace is escaped.

Plots: latency CDF per device and operation, p50 per phase (each phase on its own scale), a
Gantt chart of the requests around the one of median latency, and latency over time in time
bins; each reads the requests a slice at a time (output.plot_data), so the page and the
memory it takes are the same for 5 M requests as for 50 k. A section with nothing to show
says why.
"""

from __future__ import annotations

from html import escape

import polars as pl

from xvtrace.output import plot_data, plots
from xvtrace.timeline.phases import STARTS, first_stamp

WINDOW = 30  # requests in the Gantt chart: consecutive ones around the median request
# the requests' columns the plots read (of a request table's forty)
READS = ("request", "dev", "op", *(c for c, _ in plots.LATENCY), *STARTS,
         *(c for _, a, b in plots.SEGMENTS for c in (a, b)))  # fmt: skip


def _latency(req: pl.LazyFrame) -> tuple[str, str] | None:
    """The latency a page plots (plots.LATENCY): the first such column with a value."""
    names = req.collect_schema().names()
    for col, name in plots.LATENCY:
        if col in names and req.select(pl.col(col).is_not_null().any()).collect().item():
            return col, name
    return None


def cdf_plot(req: pl.LazyFrame, lat: tuple[str, str] | None) -> str:
    if lat is None:
        return _empty("Latency CDF", "no request has a measured latency (pop -> fill, or kick -> irq "
                      "for a capture of the hypervisor alone)")  # fmt: skip
    col, name = lat
    found, top = plot_data.cdf_points(req, ["dev", "op"], col)
    series = [(plots._label(*key), v / 1e3, frac) for key, v, frac in found]
    return plots.div(plots.cdf(series, top / 1e3, f"{name} latency CDF per device and operation"))


def phase_bars(phases: pl.DataFrame) -> str:
    if not len(phases):
        return _empty("Time per phase", "no request has any phase measured")
    rows = {}
    for r in phases.iter_rows(named=True):
        rows.setdefault(plots._label(r["dev"], f"q{_queue(r['queue'])}", r["op"]), {})[
            r["phase"]
        ] = r["p50_us"]
    return plots.div(
        plots.phase_bars(list(rows.items()), "p50 per phase, each phase on its own scale")
    )


def gantt(req: pl.LazyFrame, lat: tuple[str, str] | None) -> str:
    names = req.collect_schema().names()
    segs = [(n, a, b) for n, a, b in plots.SEGMENTS if a in names and b in names]
    if lat is None or not segs:
        return _empty("A window of requests", "no request has a measured latency")
    col, _ = lat
    starts = [c for c in STARTS if c in names]
    used = dict.fromkeys(["request", col, *starts, *(c for _, a, b in segs for c in (a, b))])
    window = plot_data.median_window(req, col, list(used), WINDOW)
    window = window.sort(first_stamp(window.columns), maintain_order=True)
    # a phase measured between two others is drawn only where they are not
    if "pop_ns" in window.columns and window["pop_ns"].drop_nulls().len():
        segs = [seg for seg in segs if seg[0] != "kick -> irq"]
    return plots.div(plots.gantt(window, segs, f"{len(window)} consecutive requests around the one of"
                                              " median latency"))  # fmt: skip


def over_time(req: pl.LazyFrame, lat: tuple[str, str] | None) -> str:
    if lat is None:
        return _empty("Latency over time", "no request has a measured latency")
    col, name = lat
    start = "pop_ns" if col == "service_ns" else "kick_ns"
    return plots.div(plots.over_time(plot_data.envelope(req, start, col), name))


def clock_table(clocks: dict) -> str:
    """Each clock alignment a row: what was aligned to what, and the fit's facts."""
    if not clocks:
        return "<p>No clock alignment: this bundle's requests are on one clock.</p>"
    keys = list(dict.fromkeys(k for c in clocks.values() if isinstance(c, dict) for k in c))
    head = "".join(f"<th>{escape(k)}</th>" for k in keys)
    body = "".join(
        f"<tr><td>{escape(name)}</td>"
        + "".join(f"<td>{escape(_fact(c.get(k)))}</td>" for k in keys) + "</tr>"
        for name, c in clocks.items() if isinstance(c, dict)
    )  # fmt: skip
    return f"<table><tr><th>clock</th>{head}</tr>{body}</table>"


def _fact(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _empty(title: str, why: str) -> str:
    return f"<h3>{escape(title)}</h3><p class=empty>Nothing to draw: {escape(why)}.</p>"


def per_text(value: float | None) -> str:
    """A count per request, or "-" where there is no request to divide it by."""
    return "-" if value is None else f"{value:.2f}"


def render(f: dict, phases: pl.DataFrame, per_request: pl.DataFrame,
           req: pl.DataFrame | pl.LazyFrame) -> str:  # fmt: skip
    """The page of a report (output.report.Report's facts, phase table, work per request
    and requests: READS of them, each plot collecting its own)."""
    req = req.lazy()
    table = ""
    if len(phases):
        cells = "".join(
            f"<tr><td>{escape(str(r['dev']))}</td><td>{_queue(r['queue'])}</td><td>{escape(str(r['op']))}</td>"
            f"<td>{escape(r['phase'])}</td><td>{r['requests']}</td><td>{r['p50_us']:.1f}</td>"
            f"<td>{r['p90_us']:.1f}</td><td>{r['p99_us']:.1f}</td><td>{r['max_us']:.1f}</td></tr>"
            for r in phases.iter_rows(named=True)
        )
        table = ("<table><tr><th>device</th><th>queue</th><th>op</th><th>phase</th><th>requests</th>"
                 f"<th>p50 us</th><th>p90 us</th><th>p99 us</th><th>max us</th></tr>{cells}</table>")  # fmt: skip
    work = "".join(
        f"<tr><td>{escape(r['what'])}</td><td>{r['count']}</td><td>{per_text(r['per_request'])}</td></tr>"
        for r in per_request.iter_rows(named=True)
    )
    incomplete = "".join(
        f"<tr><td>{escape(str(why))}</td><td>{n}</td></tr>" for why, n in f["incomplete"].items()
    )
    incomplete = (
        f"<table><tr><th>why</th><th>requests</th></tr>{incomplete}</table>"
        if incomplete
        else "<p>Every request is complete.</p>"
    )
    if not len(phases):
        table = "<p>No phase measured: no view of this bundle's events reconstructs requests.</p>"
    if not work:
        work_html = "<p>No VM exits, dom0 hypercalls, IOREQs or grant operations recorded.</p>"
    else:
        work_html = f"<table><tr><th>what</th><th>count</th><th>per request</th></tr>{work}</table>"
    lat = _latency(req)  # (found once: a scan of the stored requests)
    plotted = "".join(
        (cdf_plot(req, lat), phase_bars(phases), gantt(req, lat), over_time(req, lat))
    )
    return plots.page(
        "xvtrace report",
        f"""<h1>xvtrace report</h1>
<p>{escape(f["bundle"])}: {f["requests"]} requests; sources: {escape(", ".join(f["sources"]))}</p>
<h2>Clock alignment</h2>{clock_table(f["clocks"])}
<h2>Incomplete requests</h2>{incomplete}
<h2>Plots</h2>{plotted}
<h2>Phases</h2>{table}
<h2>Work per request</h2>{work_html}
""",
        style="p.empty{color:#666}",
    )


def _queue(queue) -> str:
    """A queue's number, or "?" where the view cannot tell (the hypervisor's traps)."""
    return "?" if queue is None else str(queue)
