"""Each phase's history over the stored runs, and its change points: a series per
(transport, workload, queue, operation, phase), its runs in capture order, each run's
value its phase's median (p50)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from xvtrace.history import store as run_store
from xvtrace.history.changes import MIN_SIZE, change_points

DRAWN = 40  # series drawn on the HTML page at most: those with a change first

SERIES = ("transport", "workload", "queue", "op", "phase")


def series(store: str | Path, *, transport: str | None = None, phase: str | None = None):
    """The store's runs, one row per run and series, in capture order within each series."""
    runs = run_store.scan(store)
    if transport:
        runs = runs.filter(pl.col("transport") == transport)
    if phase:
        runs = runs.filter(pl.col("phase") == phase)
    return run_store.collect(
        store,
        runs.select(*SERIES, "run_utc", "bundle", "p50_us", "requests").sort(
            *SERIES, "run_utc", "bundle", nulls_last=True
        ),
    )


def changes(store: str | Path, *, transport: str | None = None, phase: str | None = None,
            seed: int = 0) -> tuple[pl.DataFrame, int]:  # fmt: skip
    """Every change point of every series (SERIES, the run index it starts at, the runs on
    either side, the medians before and after, the change in percent, the confidence), and
    how many series were looked at."""
    runs = series(store, transport=transport, phase=phase)
    rows, looked = [], 0
    for key, s in runs.group_by(SERIES, maintain_order=True):
        looked += 1
        if len(s) < 2 * MIN_SIZE:
            continue
        for c in change_points(s["p50_us"].to_numpy(), seed=seed):
            rows.append({**dict(zip(SERIES, key, strict=True)), "run": c.at, "runs": len(s),
                         "last_before": s["bundle"][c.at - 1], "first_after": s["bundle"][c.at],
                         "first_after_utc": s["run_utc"][c.at], "before_us": c.before,
                         "after_us": c.after, "change_pct": 100 * c.size, "confidence": 1 - c.p})  # fmt: skip
    schema = {**{k: runs.schema[k] for k in SERIES}, "run": pl.Int64, "runs": pl.Int64,
              "last_before": pl.String, "first_after": pl.String,
              "first_after_utc": runs.schema["run_utc"], "before_us": pl.Float64,
              "after_us": pl.Float64, "change_pct": pl.Float64, "confidence": pl.Float64}  # fmt: skip
    return pl.DataFrame(rows, schema=schema), looked


def render(found: pl.DataFrame, looked: int) -> str:
    out = [f"{looked} series, {len(found)} change point(s)"]
    for r in found.iter_rows(named=True):
        out.append(
            f"{r['transport']} {r['workload']} q{r['queue']} {r['op']} {r['phase']}: "
            f"{r['change_pct']:+.1f} % at run {r['run']} of {r['runs']} "
            f"({r['before_us']:.1f} -> {r['after_us']:.1f} us, confidence {r['confidence']:.3f})\n"
            f"    last before: {r['last_before']}\n    first after: {r['first_after']} "
            f"({r['first_after_utc']})"
        )
    return "\n".join(out) + "\n"


def render_html(runs: pl.DataFrame, found: pl.DataFrame, looked: int) -> str:
    """A self-contained page (plotly inlined): each series' medians over its runs with its
    change points drawn, the series with a change first (at most DRAWN)."""
    from html import escape

    import plotly.graph_objects as go

    from xvtrace.output import plots

    changed = {tuple(r[k] for k in SERIES) for r in found.iter_rows(named=True)}
    groups = sorted(runs.group_by(SERIES, maintain_order=True), key=lambda kv: kv[0] not in changed)
    figures = []
    for key, s in groups[:DRAWN]:
        fig = go.Figure(go.Scatter(
            x=list(range(len(s))), y=s["p50_us"].to_list(), mode="lines+markers", name="p50",
            customdata=list(zip(s["bundle"].to_list(), s["run_utc"].cast(pl.String).to_list(), strict=True)),
            hovertemplate="run %{x}: %{y:.1f} us<br>%{customdata[0]}<br>%{customdata[1]}<extra></extra>",
        ))  # fmt: skip
        mine = found.filter(
            pl.all_horizontal(pl.col(k) == v for k, v in zip(SERIES, key, strict=True))
        )
        for c in mine.iter_rows(named=True):
            fig.add_vline(x=c["run"] - 0.5, line_dash="dash", line_color="firebrick",
                          annotation_text=f"{c['change_pct']:+.1f} %", annotation_position="top")  # fmt: skip
        title = escape(" ".join(str(v) for v in key))
        fig.update_layout(title=title, xaxis_title="run (capture order)", yaxis_title="p50 (us)",
                          height=300)  # fmt: skip
        figures.append(plots.div(fig))
    rows = "".join(
        f"<tr><td>{escape(' '.join(str(r[k]) for k in SERIES))}</td><td>{r['run']} of {r['runs']}</td>"
        f"<td>{r['change_pct']:+.1f} %</td><td>{r['before_us']:.1f} -> {r['after_us']:.1f}</td>"
        f"<td>{r['confidence']:.3f}</td><td>{escape(r['last_before'])}</td><td>{escape(r['first_after'])}</td></tr>"
        for r in found.iter_rows(named=True)
    )  # fmt: skip
    table = (f"<table><tr><th>series</th><th>at run</th><th>change</th><th>p50 us</th>"
             f"<th>confidence</th><th>last before</th><th>first after</th></tr>{rows}</table>"
             if rows else "<p>No change point.</p>")  # fmt: skip
    more = f"<p>{len(groups) - DRAWN} more series not drawn.</p>" if len(groups) > DRAWN else ""
    return plots.page(
        "xvtrace history",
        f"""<h1>xvtrace history</h1>
<p>{looked} series, {len(found)} change point(s) (E-Divisive means, p &lt;= 0.01)</p>
{table}{"".join(figures)}{more}""",
    )
