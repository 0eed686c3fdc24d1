"""Where each request's time goes: per-phase latency percentiles per device queue and the
hypervisor work per request, from a bundle's requests (xvtrace.timeline) and events.

Text for the terminal and a dict for JSON; every section is a polars frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from xvtrace import timeline
from xvtrace.analysis import grant_ops
from xvtrace.output import html
from xvtrace.parsers import fields
from xvtrace.parsers import xen_events as xe
from xvtrace.timeline import Timeline
from xvtrace.timeline.phases import table


@dataclass
class Report:
    facts: dict
    phases: pl.DataFrame  # dev, queue, op, phase, requests, p50/p90/p99/max (us)
    per_request: pl.DataFrame  # what, count, per_request
    timeline: Timeline | None = None  # whose requests the HTML page's plots read

    @classmethod
    def of(cls, bundle) -> Report:
        tl = timeline.load(bundle)
        phases = table(tl.scan())
        n = tl.facts["requests"]
        m = bundle.manifest
        facts = {
            "bundle": str(bundle.path),
            "requests": n,
            "incomplete": tl.facts.get("incomplete", {}),
            "clocks": {k: v for k, v in tl.facts.items() if k.endswith("_clock") and v},
            "lost_records": m.counts.get("lost", 0),
            "sources": [f"{s['file']} ({s['format']})" for s in m.sources],
        }
        vendor = m.hvm_vendor
        ev = bundle.events()
        per_request = _per_request(ev, n, vendor)
        joined = grant_ops.per_request(
            ev, tl.columns(*grant_ops.READS, lazy=True), tl.device_model_clock
        )
        if joined is not None:
            per_request = pl.concat([per_request, _joined_grants(*joined)])
        return cls(facts, phases, per_request, tl)

    def render_html(self) -> str:
        """A self-contained page (plots inline, works offline)."""
        plotted = self.timeline.columns(*html.READS, lazy=True)
        return html.render(self.facts, self.phases, self.per_request, plotted)

    def to_json(self) -> dict:
        return {
            **self.facts,
            "phases": self.phases.to_dicts(),
            "per_request": self.per_request.to_dicts(),
        }

    def render(self) -> str:
        f = self.facts
        out = [
            f"bundle {f['bundle']}: {f['requests']} requests; sources: {', '.join(f['sources'])}"
        ]
        if f["incomplete"]:
            out.append("incomplete: " + ", ".join(f"{n} {r}" for r, n in f["incomplete"].items()))
        if f["lost_records"]:
            out.append(f"xentrace records lost (reported by Xen): {f['lost_records']}")
        for name, c in f["clocks"].items():
            if "lower_ns" in c:
                out.append(
                    f"{name}: offset {c['offset_ns']} ns, drift {c.get('drift_ppm', 0):+.3f} ppm, "
                    f"bounds {c['lower_ns'] - c['offset_ns']:+d}..{c['upper_ns'] - c['offset_ns']:+d} ns"
                )
            else:
                out.append(
                    f"{name}: offset {c['offset_ns']} ns, residual {c['residual_min_ns']:+d}..{c['residual_max_ns']:+d} ns"
                )
        if len(self.phases):
            out.append("--- phases (us) ---")
            out.append(
                f"   {'device':<17}{'q':>3} {'op':<6}{'phase':<14}{'requests':>9}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>10}"
            )
            for r in self.phases.iter_rows(named=True):
                out.append(
                    f"   {r['dev'] or '?':<17}{r['queue'] if r['queue'] is not None else '?':>3} {r['op']:<6}"
                    f"{r['phase']:<14}{r['requests']:>9}{r['p50_us']:>11.1f}{r['p90_us']:>11.1f}{r['p99_us']:>11.1f}{r['max_us']:>12.1f}"
                )
        if len(self.per_request):
            out.append(
                "--- hypervisor and backend work per request ---"
                if self.facts["requests"]
                else "--- hypervisor and backend work (totals: no request to divide them by) ---"
            )
            out.extend(
                f"   {r['what']:<40}{r['count']:>10}{html.per_text(r['per_request']):>10}"
                for r in self.per_request.iter_rows(named=True)
            )
        return "\n".join(out) + "\n"


def _joined_grants(per: pl.DataFrame, outside: dict[str, int]) -> pl.DataFrame:
    """Xen's grant records joined to requests (xvtrace.analysis.grant_ops): inside the
    requests' backend stretches (their distribution, their mean per request), and outside."""
    rows = []
    for col, label in (("grant_maps", "grant maps"), ("grant_unmaps", "grant unmaps")):
        total = int(per[col].sum())
        if total or outside[col]:
            p50, top = int(per[col].median()), int(per[col].max())
            rows.append((f"{label} in requests: p50 {p50}, max {top}", total, total / len(per)))
            rows.append((f"{label} outside requests", outside[col], None))
    return _rows(rows)


def _rows(rows: list[tuple[str, int, float | None]]) -> pl.DataFrame:
    """(what, count, per request) rows as the report's per-request frame."""
    return pl.DataFrame(
        {"what": [r[0] for r in rows], "count": [r[1] for r in rows],
         "per_request": [r[2] for r in rows]},
        schema={"what": pl.String, "count": pl.Int64, "per_request": pl.Float64},
    )  # fmt: skip


def _per_request(ev: pl.LazyFrame, n: int, vendor: str | None) -> pl.DataFrame:
    """VM exits by reason, dom0 hypercalls by name, IOREQs, grant maps, mapcache lookups,
    each with its count per request (null with no request: nothing divides by zero).
    `vendor`: the host's exit-reason encoding (the manifest's, from ingest)."""
    exits = (
        ev.filter(pl.col("event").is_in(fields.EXIT_EVENTS))
        .group_by(fields.exit_reason().alias("reason"))
        .len()
        .collect()
    )
    vendor = vendor or "vmx"
    rows = [
        (f"VM exits: {xe.exit_reason_name(int(r), vendor)}", int(c))
        for r, c in exits.sort("reason").iter_rows()
    ]
    hc = (
        ev.filter((pl.col("event") == "pv.hypercall") & (pl.col("dom") == 0))
        .group_by(fields.hypercall().alias("op"))
        .len()
        .collect()
        .sort("op")
    )
    rows += [(f"dom0 hypercalls: {xe.hypercall_name(int(o))}", int(c)) for o, c in hc.iter_rows()]
    counted = {
        "IOREQs handled by QEMU": ["qemu.handle_ioreq"],
        "grant maps": ["mem.grant_map"],
        "grant unmaps": ["mem.grant_unmap"],
        "mapcache lookups": ["qemu.xen_map_cache"],
        "grant unmap calls (EPAM backend's log)": ["qemu.xen_unmap_grant"],
    }
    totals = ev.select(
        # as text: a bundle ingested before a name joined the catalogue lacks it in its enum
        *[
            pl.col("event").cast(pl.String).is_in(names).sum().alias(k)
            for k, names in counted.items()
        ]
    ).collect()
    rows += [(k, int(totals[k][0])) for k in counted if totals[k][0]]
    return _rows([(what, c, c / n if n else None) for what, c in rows])
