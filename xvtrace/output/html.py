"""A self-contained HTML report: inline SVG plots and tables, no scripts or files from
elsewhere, so it opens offline. Every string that comes from a trace is escaped.

Plots: latency CDF per device and operation, mean time per phase (stacked), a Gantt chart of
a sample of requests, and latency over time.
"""

from __future__ import annotations

from html import escape

import numpy as np
import polars as pl

W, H, PAD = 720, 260, 48
COLORS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7")
SEGMENTS = (  # Gantt / stacked phases: (name, start column, end column)
    ("notify trap", "trap_exit_ns", "trap_entry_ns"),
    ("kick -> pop", "kick_ns", "pop_ns"),
    ("pop -> handle", "pop_ns", "handle_ns"),
    ("device I/O", "handle_ns", "io_done_ns"),
    ("completion", "io_done_ns", "fill_ns"),
    ("fill -> irq", "fill_ns", "notify_ns"),
)


def svg_figure(body: str, title: str, xlabel: str, ylabel: str) -> str:
    return (
        f'<figure><svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}">'
        f'<rect x="{PAD}" y="8" width="{W - PAD - 8}" height="{H - PAD - 8}" fill="none" stroke="#999"/>'
        f'{body}<text x="{W / 2}" y="{H - 8}" text-anchor="middle">{escape(xlabel)}</text>'
        f'<text x="12" y="{H / 2}" transform="rotate(-90 12 {H / 2})" text-anchor="middle">{escape(ylabel)}</text>'
        f"</svg><figcaption>{escape(title)}</figcaption></figure>"
    )


def scale(v: np.ndarray, lo: float, hi: float, a: float, b: float) -> np.ndarray:
    span = hi - lo if hi > lo else 1.0
    return a + (v - lo) / span * (b - a)


def legend(names: list[str]) -> str:
    return "".join(
        f'<rect x="{PAD + 8 + 108 * i}" y="12" width="9" height="9" fill="{COLORS[i % len(COLORS)]}"/>'
        f'<text x="{PAD + 20 + 108 * i}" y="20" font-size="10">{escape(n)}</text>'
        for i, n in enumerate(names)
    )


def cdf_lines(series: list[tuple[str, np.ndarray]], top: float) -> str:
    """One CDF polyline per (name, values in us) up to `top` us, with their legend."""
    body = []
    for i, (_, values) in enumerate(series):
        v = np.sort(values)
        idx = np.unique(np.linspace(0, len(v) - 1, min(len(v), 400)).astype(int))  # per point drawn
        x = scale(np.minimum(v[idx], top), 0, top, PAD, W - 8)
        y = scale((idx + 1) / len(v), 0, 1, H - PAD, 8)
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(x, y, strict=True))
        body.append(
            f'<polyline fill="none" stroke="{COLORS[i % len(COLORS)]}" stroke-width="1.5" points="{pts}"/>'
        )
    return "".join(body) + legend([name for name, _ in series])


def stacked_bars(labels: list[str], values: list[list[float]], *, span: float, bar_max: float,
                 tips: list[str] | None = None) -> tuple[str, float]:  # fmt: skip
    """One horizontal bar per label, stacked from its values (segment j in colour j, with a
    hover title from `tips[j]` when given); returns the SVG body and the longest bar."""
    total = max(sum(v) for v in values) or 1.0
    bar = min(bar_max, (H - PAD - 24) / len(labels))
    body = []
    for i, (label, row) in enumerate(zip(labels, values, strict=True)):
        x, y = PAD, 30 + i * bar
        for j, v in enumerate(row):
            w = v / total * span
            tip = f"<title>{escape(tips[j])} {v:.1f} us</title></rect>" if tips else "/>"
            body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{bar * 0.8:.1f}" '
                        f'fill="{COLORS[j % len(COLORS)]}"' + (">" + tip if tips else tip))  # fmt: skip
            x += w
        body.append(
            f'<text x="{x + 4:.1f}" y="{y + bar * 0.6:.1f}" font-size="10">{escape(label)}</text>'
        )
    return "".join(body), total


def cdf_plot(req: pl.DataFrame) -> str:
    groups = req.filter(pl.col("service_ns").is_not_null()).partition_by("dev", "op", as_dict=True)
    if not groups:
        return ""
    top = max(float(g["service_ns"].quantile(0.999, "nearest")) for g in groups.values()) / 1e3
    series = [(f"{dev} {op}", g["service_ns"].to_numpy() / 1e3)
              for (dev, op), g in sorted(groups.items(), key=lambda kv: str(kv[0]))]  # fmt: skip
    return svg_figure(
        cdf_lines(series, top),
        f"pop -> fill latency CDF (up to {top:.0f} us)",
        "us",
        "fraction",
    )


def phase_bars(req: pl.DataFrame) -> str:
    segs = [(n, a, b) for n, a, b in SEGMENTS if a in req.columns and b in req.columns]
    groups = sorted(req.partition_by("dev", "op", as_dict=True).items(), key=lambda kv: str(kv[0]))
    if not groups:
        return ""
    means = [
        [float(((g[b] - g[a]).drop_nulls().mean() or 0) / 1e3) for _, a, b in segs]
        for _, g in groups
    ]
    body, total = stacked_bars([f"{dev} {op}" for (dev, op), _ in groups], means,
                               span=W - PAD - 16, bar_max=28)  # fmt: skip
    return svg_figure(
        body + legend([n for n, _, _ in segs]),
        f"mean time per phase (bar = {total:.1f} us)",
        "us",
        "",
    )


def gantt(req: pl.DataFrame, sample: int = 40) -> str:
    segs = [(n, a, b) for n, a, b in SEGMENTS if a in req.columns and b in req.columns]
    s = req.filter(pl.col("fill_ns").is_not_null()).head(sample)
    if not len(s):
        return ""
    starts = [c for c in ("trap_exit_ns", "kick_ns", "pop_ns") if c in s.columns]
    t0 = float(s.select(pl.min_horizontal(starts).min()).item())
    t1 = float(
        s.select(
            pl.max_horizontal([c for c in ("notify_ns", "fill_ns") if c in s.columns]).max()
        ).item()
    )
    row = (H - PAD - 24) / len(s)
    body = []
    for i, r in enumerate(s.iter_rows(named=True)):  # the sample's rows, not the run's
        for j, (_, a, b) in enumerate(segs):
            if r[a] is None or r[b] is None or r[b] < r[a]:
                continue
            x0, x1 = scale(np.array([r[a], r[b]], float), t0, t1, PAD, W - 8)
            body.append(
                f'<rect x="{x0:.1f}" y="{26 + i * row:.1f}" width="{max(0.5, x1 - x0):.1f}" height="{row * 0.8:.1f}" fill="{COLORS[j % len(COLORS)]}"/>'
            )
    return svg_figure(
        "".join(body) + legend([n for n, _, _ in segs]),
        f"first {len(s)} requests ({(t1 - t0) / 1e3:.0f} us)",
        "time",
        "request",
    )


def over_time(req: pl.DataFrame, points: int = 2000) -> str:
    s = req.filter(pl.col("service_ns").is_not_null())
    if not len(s):
        return ""
    s = s.gather_every(max(1, len(s) // points))
    t = s["pop_ns"].to_numpy().astype(float)
    v = s["service_ns"].to_numpy() / 1e3
    top = float(np.quantile(v, 0.999)) or 1.0
    x = scale(t, t.min(), t.max(), PAD, W - 8)
    y = scale(np.minimum(v, top), 0, top, H - PAD, 8)
    dots = "".join(
        f'<circle cx="{a:.1f}" cy="{b:.1f}" r="1.3" fill="{COLORS[0]}"/>'
        for a, b in zip(x, y, strict=True)
    )
    return svg_figure(
        dots, f"pop -> fill latency over time ({len(s)} requests shown)", "time", "us"
    )


def per_text(value: float | None) -> str:
    """A count per request, or "-" where there is no request to divide it by."""
    return "-" if value is None else f"{value:.2f}"


def render(f: dict, phases: pl.DataFrame, per_request: pl.DataFrame, req: pl.DataFrame) -> str:
    """The page of a report (output.report.Report's facts, phase table, work per request
    and requests)."""
    table = ""
    if len(phases):
        cells = "".join(
            f"<tr><td>{escape(str(r['dev']))}</td><td>{r['queue']}</td><td>{escape(str(r['op']))}</td>"
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
    clocks = "".join(f"<li>{escape(k)}: {escape(str(v))}</li>" for k, v in f["clocks"].items())
    plots = "".join(p for p in (cdf_plot(req), phase_bars(req), gantt(req), over_time(req)) if p)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>xvtrace report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:12px}}figure{{margin:1em 0}}</style></head>
<body><h1>xvtrace report</h1>
<p>{escape(f["bundle"])}: {f["requests"]} requests; sources: {escape(", ".join(f["sources"]))}</p>
<ul>{clocks}</ul>
<h2>Plots</h2>{plots}
<h2>Phases</h2>{table}
<h2>Work per request</h2><table><tr><th>what</th><th>count</th><th>per request</th></tr>{work}</table>
</body></html>
"""
