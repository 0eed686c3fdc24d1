"""Transports side by side, from a replay (xvtrace.replaying): terminal table, JSON and a
self-contained HTML page (latency CDF per transport, stacked mean phases).

Each transport is set against a baseline (the transport the capture ran on when it was
replayed, else the PV blkif/netif baseline, else the first): latency and CPU ratios, and the phases that make the
difference (largest change in mean time per request).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import polars as pl

from xvtrace import timeline
from xvtrace.bundle import Bundle, BundleError
from xvtrace.output import plot_data, plots
from xvtrace.replay.transports.base import PHASES
from xvtrace.replaying import REPLAY

TOP_PHASES = 2  # phases named per transport as making the difference


@dataclass
class Comparison:
    """A replay's transports side by side: its facts (xvtrace.replaying.facts) and its
    predicted requests."""

    facts: dict
    requests: pl.LazyFrame  # scanned from the replay's file: eight transports' worth
    emitted: list[Path] = field(default_factory=list)  # bundles `replay --emit-bundle` wrote

    @property
    def predicted(self) -> int:
        """How many predicted requests the replay holds (every transport's)."""
        return self.requests.select(pl.len()).collect().item()

    def table(self) -> pl.DataFrame:
        return table(self.facts)

    def render(self) -> str:
        return render_text(self.facts)

    def to_json(self) -> dict:
        return to_json(self.facts)

    def render_html(self) -> str:
        return render_html(self.facts, self.requests)


def load(path: str | Path) -> tuple[dict, pl.LazyFrame]:
    """A replay's facts and predicted requests, from its parquet file or the bundle that
    holds it."""
    path = Path(path)
    if path.is_dir():
        if not (path / REPLAY).exists():
            if Bundle.is_bundle(path):
                raise BundleError(f"{path}: no {REPLAY}; run `xvtrace replay {path}` first")
            raise BundleError(f"{path}: neither a bundle nor a replay file")
        bundle, path = Bundle.open(path), path / REPLAY
    else:
        bundle = None
    side = path.with_suffix(".json")
    if not side.exists():
        raise BundleError(f"{path}: no {side.name} beside it (written by `xvtrace replay`)")
    try:
        facts = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{side}: damaged ({e}); run `xvtrace replay` again") from e
    if bundle is not None and facts.get("timeline_key") != timeline.current_key(bundle):
        raise BundleError(
            f"{path}: replayed from requests this bundle no longer has (re-ingested or"
            f" rebuilt since); run `xvtrace replay {bundle.path}` again"
        )
    requests = pl.scan_parquet(path)
    requests.collect_schema()  # its footer read now: a damaged file is said here
    return facts, requests


BASELINE = "pv-blkif"  # what users compare against when the captured transport is unknown


def baseline(facts: dict) -> str:
    """The captured transport if it was replayed, else the PV baseline, else the first."""
    names = [t["transport"] for t in facts["transports"]]
    for name in (facts.get("source_transport"), BASELINE):
        if name in names:
            return name
    return names[0]


def table(facts: dict) -> pl.DataFrame:
    """One row per transport: latency, throughput, CPU and work per request, and against
    the baseline: latency and CPU ratios and the phases that differ most."""
    rows = pl.DataFrame(facts["transports"])
    if "calibrated_share" not in rows.columns:  # a replay stored before costs had origins
        rows = rows.with_columns(pl.lit(None, pl.Float64).alias("calibrated_share"))
    base = rows.filter(pl.col("transport") == baseline(facts)).row(0, named=True)
    diffs = []
    for r in rows.iter_rows(named=True):  # per transport
        delta = {p: r[f"{p}_us"] - base[f"{p}_us"] for p in PHASES}
        top = sorted(delta, key=lambda p: -abs(delta[p]))[:TOP_PHASES]
        diffs.append(", ".join(f"{p} {delta[p]:+.1f}" for p in top if abs(delta[p]) >= 0.05))
    return rows.with_columns(
        (pl.col("p50_us") / base["p50_us"]).alias("p50_ratio"),
        (pl.col("p99_us") / base["p99_us"]).alias("p99_ratio"),
        (pl.col("cpu_us") / base["cpu_us"]).alias("cpu_ratio"),
        pl.Series("differs_in_us", diffs, dtype=pl.String),
    )


MIXED = 0.5  # calibrated shares this far apart: one transport measured, another guessed


def warnings(facts: dict) -> list[str]:
    """What a reader must know before comparing the numbers: transports whose modelled
    costs come from different worlds (fitted to a capture of this host, or the table's
    estimates for hardware)."""
    shares = {r["transport"]: r.get("calibrated_share") for r in facts["transports"]}
    known = {t: v for t, v in shares.items() if v is not None}
    if len(known) < 2 or max(known.values()) - min(known.values()) < MIXED:
        return []
    most = max(known, key=known.get)
    least = min(known, key=known.get)
    return [
        f"{most}'s modelled costs are {known[most]:.0%} calibrated from a capture, {least}'s "
        f"{known[least]:.0%}: their ratio sets a measured host against the table's estimates "
        "(calibrate a capture of each transport on this host, or compare like with like)"
    ]


def render_text(facts: dict) -> str:
    t = table(facts)
    st = facts["stream"]
    ops = ", ".join(f"{n} {k}" for k, n in st["ops"].items())
    out = [
        f"stream: {st['requests']} requests ({ops}), {st['jobs']} job(s) x depth {st['iodepth']}, "
        f"device p50 {st['device_p50_us']:.1f} us; costs: {facts['profile']}; "
        f"baseline: {baseline(facts)}" + (" (the captured transport)" if facts.get("source_transport") else ""),
        f"{'transport':<22}{'p50 us':>9}{'p99 us':>9}{'x p50':>7}{'IOPS':>9}{'sat IOPS':>10}"
        f"{'cpu us':>8}{'exits':>7}{'hcalls':>7}{'ioreqs':>7}{'maps':>6}{'copied':>9}{'calib':>7}"
        "  differs in (us/request)",
    ]  # fmt: skip
    for r in t.iter_rows(named=True):
        share = "-" if r["calibrated_share"] is None else f"{r['calibrated_share']:.0%}"
        out.append(
            f"{r['transport']:<22}{r['p50_us']:>9.1f}{r['p99_us']:>9.1f}{r['p50_ratio']:>7.2f}"
            f"{r['iops']:>9.0f}{r['saturation_iops']:>10.0f}{r['cpu_us']:>8.1f}{r['vm_exits']:>7.1f}"
            f"{r['hypercalls']:>7.1f}{r['ioreqs']:>7.1f}{r['pages_mapped']:>6.1f}"
            f"{r['bytes_copied']:>9.0f}{share:>7}  {r['differs_in_us']}"
        )  # fmt: skip
    out.append(
        "calib: the share of each transport's modelled cost fitted to a capture (the rest: the cost table's estimates)"
    )
    out += [f"warning: {w}" for w in warnings(facts)]
    return "\n".join(out) + "\n"


def to_json(facts: dict) -> dict:
    return {**facts, "baseline": baseline(facts), "transports": table(facts).to_dicts(),
            "warnings": warnings(facts)}  # fmt: skip


def cdf_plot(req: pl.LazyFrame) -> str:
    found, top = plot_data.cdf_points(req, ["transport"], "latency_ns")
    series = [(escape(name), v / 1e3, frac) for (name,), v, frac in found]
    return plots.div(plots.cdf(series, top / 1e3, "request latency CDF per transport"))


def phase_bars(facts: dict) -> str:
    rows = [
        (escape(r["transport"]), {p: r[f"{p}_us"] for p in PHASES}) for r in facts["transports"]
    ]
    return plots.div(plots.phase_bars(rows, "mean time per phase, each phase on its own scale"))


def render_html(facts: dict, req: pl.LazyFrame) -> str:
    t = table(facts)
    cols = ["transport", "p50_us", "p99_us", "p50_ratio", "iops", "saturation_iops", "cpu_us",
            "vm_exits", "hypercalls", "ioreqs", "pages_mapped", "bytes_copied", "calibrated_share",
            "differs_in_us"]  # fmt: skip
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(
            f"<td>{escape(v if isinstance(v, str) else '-' if v is None else f'{v:.2f}')}</td>"
            for v in (r[c] for c in cols)
        ) + "</tr>"
        for r in t.iter_rows(named=True)
    )  # fmt: skip
    st = facts["stream"]
    return plots.page(
        "xvtrace compare",
        f"""<h1>xvtrace compare</h1>
<p>{st["requests"]} requests, {st["jobs"]} job(s) x depth {st["iodepth"]}; costs {escape(facts["profile"])};
baseline {escape(baseline(facts))}</p>
{"".join(f'<p class="warning"><b>warning:</b> {escape(w)}</p>' for w in warnings(facts))}
<table><tr>{head}</tr>{body}</table>
{cdf_plot(req)}{phase_bars(facts)}""",
    )
