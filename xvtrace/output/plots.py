"""The figures of the HTML pages, drawn by plotly (offline: its JavaScript inlined once per
page, nothing fetched). Every axis has its unit and tick values, legends sit above the plot
area (never over the data), hovering names the request a mark stands for, and what a plot
draws is bounded (output.plot_data), whatever the capture's size.

Strings from a capture (device names, transports) are HTML-escaped before they reach a
figure: plotly renders its labels as a subset of HTML.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from xvtrace.timeline.phases import first_stamp

if TYPE_CHECKING:  # plotly is imported where a page is drawn: every other command skips it
    import plotly.graph_objects as go

SEGMENTS = (  # Gantt / phase bars: (name, start column, end column), in path order
    ("notify trap", "trap_exit_ns", "trap_entry_ns"),
    ("kick -> pop", "kick_ns", "pop_ns"),
    ("pop -> handle", "pop_ns", "handle_ns"),
    ("device I/O", "handle_ns", "io_done_ns"),
    ("completion", "io_done_ns", "fill_ns"),
    ("fill -> irq", "fill_ns", "notify_ns"),
    ("kick -> irq", "kick_ns", "notify_ns"),  # only where nothing in between is known
)
LATENCY = (  # the latency a page plots: the first column a request table has
    ("service_ns", "pop -> fill"),
    ("kick_to_irq_ns", "kick -> irq"),
)
LEGEND = {"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0}
CONFIG = {"displaylogo": False, "responsive": True}


def script() -> str:
    """plotly's JavaScript, once per page."""
    import plotly.offline

    return f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>'


def page(title: str, body: str, style: str = "") -> str:
    """A whole page: its title, the shared style (and `style`), plotly's script, `body`."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:12px}}{style}</style>
{script()}</head>
<body>{body}
</body></html>
"""


def div(fig: go.Figure) -> str:
    fig.update_layout(template="plotly_white", legend=LEGEND, height=fig.layout.height or 380,
                      margin={"l": 70, "r": 20, "t": 70, "b": 60}, font={"size": 12})  # fmt: skip
    return fig.to_html(full_html=False, include_plotlyjs=False, config=CONFIG)


def _label(*parts) -> str:
    return escape(" ".join(str(p) for p in parts if p is not None))


def cdf(series: list[tuple[str, np.ndarray, np.ndarray]], top: float, title: str) -> go.Figure:
    """One CDF line per (name, latencies in us at some ranks, the fraction of requests at
    or below each: output.plot_data.cdf_points); the x axis up to `top` (us, the p99.9), so
    one long tail does not flatten the rest."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, values, frac in series:
        fig.add_trace(go.Scatter(x=values, y=frac, mode="lines", name=name,
                                 hovertemplate="%{x:.1f} us: %{y:.4f} of requests<extra>%{fullData.name}</extra>"))  # fmt: skip
    fig.update_xaxes(title_text="latency (us)", range=[0, top * 1.02])
    fig.update_yaxes(title_text="fraction of requests", range=[0, 1.02])
    fig.update_layout(title=title)
    return fig


def phase_bars(rows: list[tuple[str, dict[str, float]]], title: str, unit: str = "us") -> go.Figure:
    """Per phase, one bar per group (label, {phase: value}); each phase on its own scale
    (a subplot each), so a phase that dwarfs the others does not hide them."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    phases = list(dict.fromkeys(p for _, vals in rows for p in vals))
    fig = make_subplots(rows=len(phases), cols=1, subplot_titles=[f"{escape(p)} ({unit})" for p in phases],
                        vertical_spacing=min(0.12, 0.5 / max(1, len(phases))))  # fmt: skip
    for i, phase in enumerate(phases, 1):
        labels = [label for label, vals in rows if phase in vals]
        values = [vals[phase] for _, vals in rows if phase in vals]
        fig.add_trace(go.Bar(x=values, y=labels, orientation="h", name=escape(phase), showlegend=False,
                             hovertemplate="%{y}: %{x:.1f} " + unit + "<extra></extra>"), row=i, col=1)  # fmt: skip
    # every group's name on every subplot: room for a label per bar
    fig.update_layout(title=title, height=max(300, 100 + len(phases) * (70 + 22 * len(rows))))
    fig.update_yaxes(dtick=1, automargin=True)
    return fig


def gantt(req: pl.DataFrame, segs, title: str) -> go.Figure:
    """Each request of `req` a row, each of its phases a bar from start to end (us from the
    first start); hovering names the request, the phase and its time."""
    import plotly.graph_objects as go

    t0 = req.select(first_stamp(req.columns).min()).item()
    fig = go.Figure()
    for name, a, b in segs:
        s = req.filter(pl.col(a).is_not_null() & pl.col(b).is_not_null() & (pl.col(b) >= pl.col(a)))
        if not len(s):
            continue
        base = (s[a] - t0).to_numpy() / 1e3
        dur = (s[b] - s[a]).to_numpy() / 1e3
        fig.add_trace(go.Bar(base=base, x=dur, y=[f"#{r}" for r in s["request"]], orientation="h",
                             name=escape(name), customdata=dur,
                             hovertemplate="%{y} " + escape(name) + ": %{customdata:.1f} us<extra></extra>"))  # fmt: skip
    fig.update_layout(barmode="overlay", title=title, height=max(320, 140 + 16 * len(req)))
    fig.update_xaxes(title_text="time (us from the window's first request)")
    fig.update_yaxes(title_text="request", autorange="reversed", type="category")
    return fig


def over_time(env: pl.DataFrame, name: str) -> go.Figure:
    """Latency over time in time bins (output.plot_data.envelope, in ns): a band from each
    bin's fastest request to its slowest, the bin's mean, and its slowest request marked
    where it was (hovering names it). Drawn from at most BINS bins, whatever the capture."""
    import plotly.graph_objects as go

    x, name = env["t_ns"].to_numpy() / 1e9, escape(name)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=env["min"].to_numpy() / 1e3, mode="lines", line={"width": 0.5},
                             name="fastest", hovertemplate="fastest: %{y:.1f} us<extra></extra>"))  # fmt: skip
    fig.add_trace(go.Scatter(x=x, y=env["max"].to_numpy() / 1e3, mode="lines", fill="tonexty",
                             line={"width": 0.5}, name="fastest .. slowest",
                             hovertemplate="slowest: %{y:.1f} us<extra></extra>"))  # fmt: skip
    fig.add_trace(go.Scatter(x=x, y=env["mean"].to_numpy() / 1e3, mode="lines", name="mean",
                             customdata=env["count"].to_numpy(),
                             hovertemplate="mean: %{y:.1f} us of %{customdata} requests<extra></extra>"))  # fmt: skip
    fig.add_trace(go.Scatter(x=env["at_ns"].to_numpy() / 1e9, y=env["max"].to_numpy() / 1e3,
                             mode="markers", marker={"size": 4}, name="slowest of each bin",
                             customdata=env["request"].to_numpy(),
                             hovertemplate="request %{customdata}: %{y:.1f} us at %{x:.6f} s<extra></extra>"))  # fmt: skip
    top = float(np.quantile(env["max"].to_numpy(), 0.99)) / 1e3 if len(env) else 1.0
    fig.update_xaxes(title_text="time (s from the first request)")
    fig.update_yaxes(title_text=f"{name} latency (us, to the bins' p99 slowest)",
                     range=[0, top * 1.05])  # fmt: skip
    fig.update_layout(title=f"{name} latency over time: {int(env['count'].sum())} requests"
                            f" in {len(env)} time bins")  # fmt: skip
    return fig
