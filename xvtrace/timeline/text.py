"""The timeline as `xvtrace timeline` prints it: the view used (and why the others were
not), the clocks, and per device queue and operation the p50 and p99 of every phase."""

from __future__ import annotations

import polars as pl

from xvtrace.bundle import REQUESTS
from xvtrace.timeline.ioreqs import IOREQS
from xvtrace.timeline.phases import PHASES, table


def queues(req: pl.LazyFrame) -> list[dict]:
    """One row per device, queue and operation: requests, incomplete, `<phase> p50` and
    `<phase> p99` (us; None where no request of the queue has the phase)."""
    counts = (
        req.group_by("dev", "queue", "op")
        .agg(pl.len().alias("requests"), (~pl.col("complete")).sum().alias("incomplete"))
        .sort("dev", "queue", "op")
        .collect()
    )
    if not len(counts):
        return []
    long = table(req)
    present = set(long["phase"].to_list()) if len(long) else set()
    names = [n for _, n in PHASES if n in present]
    rows = []
    for r in counts.iter_rows(named=True):
        row = dict(r)
        mine = long.filter(
            (pl.col("dev").eq_missing(r["dev"]))
            & (pl.col("queue").eq_missing(r["queue"]))
            & (pl.col("op").eq_missing(r["op"]))
        )
        found = {p["phase"]: p for p in mine.iter_rows(named=True)}
        for n in names:
            p = found.get(n)
            row[f"{n} p50"] = p["p50_us"] if p else None
            row[f"{n} p99"] = p["p99_us"] if p else None
        rows.append(row)
    return rows


def to_json(tl, bundle_path) -> dict:
    return {
        "bundle": str(bundle_path),
        "view": tl.view,
        "views": tl.facts.get("views", []),
        "incomplete": tl.facts.get("incomplete", {}),
        "queues": queues(tl.scan()),
    }


def render(tl, bundle_path) -> str:
    f = tl.facts
    out = [f"requests: {f['requests']} ({f['complete']} complete) -> {bundle_path / REQUESTS}"]
    if tl.view is not None:
        out.append(f"view: {tl.view}")
    views = f.get("views") or []
    if tl.view is None and views:
        out.append("no view of this bundle's events reconstructs requests:")
        out += [f"  {v['view']}: {v['why']}" for v in views]
    if incomplete := f.get("incomplete"):  # why, before the tables that count them
        out.append("incomplete: " + "; ".join(f"{n} {why}" for why, n in incomplete.items()))
    if devices := f.get("devices"):
        out += _devices(devices)
    if c := f.get("device_model_clock"):
        out += _device_model_clock(c)
    if j := f.get("ioreq_join"):
        out.append(
            f"IOREQs: {j['joined']} of {j['ioreqs']} joined with their VM exit and entry"
            f" ({j['ioreqs_without_trap']} without a trap, {j.get('ioreqs_before_trace', 0)} of them"
            f" before the hypervisor's trace began; {j['traps_without_ioreq']} traps at the"
            f" device model's addresses without an IOREQ) -> {bundle_path / IOREQS}"
        )
    if c := f.get("packet_clock"):
        out.append(
            f"packet clock = device model - {c['offset_ns']} ns (residual {c['residual_min_ns']:+d}"
            f"..{c['residual_max_ns']:+d} ns, {c['matched']}/{c['rx_requests']} rx frames matched)"
        )
    for r in queues(tl.scan()):  # a block per queue and op, a line per phase
        queue = r["queue"] if r["queue"] is not None else "?"
        out.append(
            f"\n{r['dev'] or '?'} queue {queue} {r['op']}: {r['requests']} requests,"
            f" {r['incomplete']} incomplete\n  {'phase':<14}{'p50 us':>10}{'p99 us':>10}"
        )
        for key in r:
            if key.endswith(" p50"):
                n = key[:-4]
                out.append(f"  {n:<14}{_us(r[f'{n} p50']):>10}{_us(r[f'{n} p99']):>10}")
    return "\n".join(out) + "\n"


def _devices(devices: list[dict]) -> list[str]:
    """The guest's busiest device registers, as its traps show them (timeline.traps)."""
    out = ["device registers the guest trapped on (exit -> re-entry):",
           f"  {'device':<12}{'register':<10}{'dir':<7}{'accesses':>9}{'p50 us':>10}{'p99 us':>10}"]  # fmt: skip
    said = set()
    for d in devices:  # a kicked device's transport and interrupt, on its first row
        kick = (f"  {d['transport']}: {d['kicks']} kicks, vector {d['vector']} injected"
                f" {d['injected']} times" if "transport" in d and d["device"] not in said else "")  # fmt: skip
        said.add(d["device"])
        out.append(f"  {d['device']:<12}{d['register']:<10}{d['dir']:<7}{d['accesses']:>9}"
                   f"{_us(d['trap_p50_us']):>10}{_us(d['trap_p99_us']):>10}{kick}")  # fmt: skip
    return out


def _device_model_clock(c: dict) -> list[str]:
    drift = f" {c['drift_ppm']:+.3f} ppm" if c.get("drift_ppm") else ""
    outliers = (
        f", {c['outliers']} left out as contradicting the rest by up to"
        f" {c.get('outliers_beyond_ns', 0) / 1000:.0f} us"
        if c.get("outliers")
        else ""
    )
    out = [
        f"device-model clock = hypervisor + {c['offset_ns']} ns{drift} (bounds"
        f" {c['lower_ns'] - c['offset_ns']:+d}..{c['upper_ns'] - c['offset_ns']:+d} ns,"
        f" {c['pairs']} causal pairs{outliers})"
    ]
    if not c["consistent"]:
        out.append(
            "  warning: no clock line fits every causal pair (they contradict each other by"
            f" {c['lower_ns'] - c['upper_ns']} ns): trap times on the device model's clock are approximate"
        )
    if c.get("queue_processing") == "deferred":
        out.append(
            "  QEMU completes each kick's IOREQ before it processes the queue (ioeventfd):"
            " kick -> pop includes the main loop's wake-up"
        )
    return out


def _us(v) -> str:
    return "-" if v is None else f"{v:.1f}"
