"""What `xvtrace emulate` prints about its runs: per transport the requests, latency
p50/p99, IOPS and the work per request its xentrace records hold, and the mean time of
each phase of the emulated truth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from xvtrace.emulate.host import EmulateResult
from xvtrace.replay.transports.base import PHASES


@dataclass
class Run:
    transport: str
    result: EmulateResult
    bundle: Path


@dataclass
class EmulateSummary:
    workload: str
    profile: str
    runs: list[Run]

    def table(self) -> pl.DataFrame:
        """One row per transport: requests, p50_us, p99_us, iops, exits and dom0
        hypercalls per request, bundle."""
        rows = []
        for run in self.runs:
            r, truth = run.result, run.result.truth
            span = (truth["done_ns"].max() - truth["issue_ns"].min()) / 1e9
            rows.append({
                "transport": run.transport,
                "requests": r.requests,
                "p50_us": truth["latency_ns"].quantile(0.5) / 1e3,
                "p99_us": truth["latency_ns"].quantile(0.99) / 1e3,
                "iops": r.requests / span,
                "exits_per_request": sum(r.expected["guest_exits"].values()) / r.requests,
                "dom0_hypercalls_per_request": sum(r.expected["dom0_hypercalls"].values()) / r.requests,
                "bundle": str(run.bundle),
            })  # fmt: skip
        return pl.DataFrame(rows)

    def phase_means(self) -> pl.DataFrame:
        """Mean time (us) from each phase's first start to its last end, per transport."""
        frames = [_phase_means(run.result.truth, run.transport) for run in self.runs]
        return pl.concat(frames, how="diagonal_relaxed").fill_null(0.0)

    def render(self) -> str:
        out = [f"workload: {self.workload}  profile: {self.profile}"]
        out.append(
            f"{'transport':<24}{'requests':>9}{'p50 us':>9}{'p99 us':>9}{'IOPS':>10}"
            f"{'exits/req':>11}{'dom0 hc/req':>12}  bundle"
        )
        for r in self.table().iter_rows(named=True):
            out.append(
                f"{r['transport']:<24}{r['requests']:>9}{r['p50_us']:>9.1f}{r['p99_us']:>9.1f}"
                f"{r['iops']:>10.0f}{r['exits_per_request']:>11.2f}"
                f"{r['dom0_hypercalls_per_request']:>12.2f}  {r['bundle']}"
            )
        table = self.phase_means()
        cols = [c for c in PHASES if c in table.columns]
        out.append("mean us per phase (incl. queueing):")
        out.append(f"{'transport':<24}" + "".join(f"{c:>10}" for c in cols))
        for r in table.iter_rows(named=True):
            out.append(f"{r['transport']:<24}" + "".join(f"{r[c]:>10.1f}" for c in cols))
        return "\n".join(out) + "\n"


def _phase_means(truth: pl.DataFrame, name: str) -> pl.DataFrame:
    starts = [c for c in truth.columns if c.startswith("phase_") and c.endswith("_start_ns")]
    return truth.select(
        pl.lit(name).alias("transport"),
        *[
            ((pl.col(s.replace("_start_", "_end_")) - pl.col(s)).mean() / 1e3).alias(s[6:-9])
            for s in starts
        ],
    )
