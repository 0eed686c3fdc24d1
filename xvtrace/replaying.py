"""Replay a bundle's request stream against transports: the bundle side of xvtrace.replay.

Reads the reconstructed requests (requests.parquet, from `xvtrace timeline`), takes the
stream out of them (replay.stream), re-executes it per transport (replay.execute) and
writes every predicted request to one table with a `transport` column, plus a summary
per transport: latency percentiles, throughput at the captured depth and at saturation,
CPU time and work per request, and the mean time per phase.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

from xvtrace import timeline
from xvtrace.bundle import Bundle, BundleError, atomic_path
from xvtrace.emulate import EmulateOptions, emulate
from xvtrace.emulate.workload import FRAME_OVERHEAD, MAX_BS, MAX_PAYLOAD, Requests
from xvtrace.parsers.errors import XvtraceError
from xvtrace.replay import calibrate
from xvtrace.replay import costs as cost_table
from xvtrace.replay.accounting import COUNTERS
from xvtrace.replay.columns_file import pieces
from xvtrace.replay.execute import CPU_ACTORS, ORIGINS, replay, replay_chunks
from xvtrace.replay.stream import OPS, READS, Stream, from_requests, inside_device_interval
from xvtrace.replay.transports import NAMES, get
from xvtrace.replay.transports.base import PHASES, Transport
from xvtrace.timeline import order_stats
from xvtrace.timeline.order_stats import OrderStats

REPLAY = "replay.parquet"
SATURATION_DEPTH = 64  # requests in flight per job when measuring throughput at saturation
SATURATION_SAMPLE = 50_000  # requests of the stream used for it


@dataclass
class ReplayResult:
    requests: pl.LazyFrame  # every predicted request, all transports
    summary: pl.DataFrame  # one row per transport
    stream: Stream
    source: str | None  # the transport the capture ran on, when known
    profile: str
    timeline_key: str | None = None  # of the requests replayed: a later timeline differs


def source_transport(bundle: Bundle) -> str | None:
    """The transport a bundle was captured on: the emulator's record of it, or the user's
    entry in the manifest (`transport`); None when unknown (e.g. a plain QEMU capture)."""
    name = bundle.manifest.transport
    return name if name in NAMES else None


def profile_of(bundle: Bundle) -> str:
    return "arm64" if bundle.manifest.machine in ("aarch64", "arm64") else "x86_64"


def parse_transports(spec: str) -> list[Transport]:
    """`all`, or names separated by commas (ValueError naming the valid ones)."""
    names = (
        list(NAMES) if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    )
    if not names:
        raise XvtraceError(f"no transport given; valid: {', '.join(NAMES)}, all")
    return [get(n) for n in names]


def bundle_stream(bundle: Bundle, req: pl.DataFrame | pl.LazyFrame, source: str | None, costs, *,
                  iodepth: int | None = None, njobs: int | None = None,
                  spill: Path | None = None) -> Stream:  # fmt: skip
    """The request stream of a bundle's requests: the workload's depth and jobs from the
    arguments, else the manifest (replay.stream explains why the capture cannot say);
    its columns on disk in `spill`, when given."""
    w = bundle.manifest.workload
    return from_requests(req, source=get(source) if source else None, costs=costs,
                         iodepth=iodepth or w.get("iodepth"), njobs=njobs or w.get("numjobs"),
                         spill=spill)  # fmt: skip


def replay_bundle(
    bundle: Bundle,
    transports: list[Transport],
    *,
    costs_file: str | os.PathLike | None = None,
    seed: int = 0,
    arrivals: str = "closed",
    source: str | None = None,
    iodepth: int | None = None,
    njobs: int | None = None,
    progress=None,
    spill: Path | None = None,
) -> ReplayResult:
    """`spill`: a directory the request stream's columns and each transport's predicted
    requests are written to as they are made, so that memory holds a piece of them (eight
    transports' are 2.2 GB at 1 M requests); without it they are held. The result's
    stream and requests are read from there: use them before it goes."""
    profile = profile_of(bundle)
    table = cost_table.load(costs_file)
    costs = cost_table.costs_for(table, profile)
    calibrated = cost_table.calibrated_keys(table)
    src = source or source_transport(bundle)
    tl = timeline.load(bundle)
    stream = bundle_stream(bundle, tl.columns(*READS, lazy=True), src, costs, iodepth=iodepth,
                           njobs=njobs, spill=spill)  # fmt: skip
    parts, rows = [], []
    for i, t in enumerate(transports):  # per transport, each run vectorized
        if progress:
            progress(t.name, i, len(transports))
        if spill is None:
            df = replay(stream, t, costs, seed=seed, arrivals=arrivals, calibrated=calibrated)
        else:  # written a chunk of requests at a time, as the engine finishes them
            chunks = replay_chunks(stream, t, costs, seed=seed, arrivals=arrivals,
                                   calibrated=calibrated, spill=spill)  # fmt: skip
            df = _written(chunks, spill / f"{i:03d}-{t.name}")
        rows.append(summarize(df) | {"saturation_iops": saturation_iops(stream, t, costs, seed)})
        parts.append(df.lazy())
        del df
    return ReplayResult(pl.concat(parts), pl.DataFrame(rows), stream, src, profile,
                        tl.facts["key"])  # fmt: skip


PART_ROWS = 1 << 19  # predicted requests per part file a replay spills


def _written(chunks, stem: Path) -> pl.LazyFrame:
    """`chunks` (frames of predicted requests) written to part files `stem`-NNNNN.parquet,
    PART_ROWS or more each, and scanned from them. (lz4: a part is read once, by `write`.)"""
    files, held, rows = [], [], 0

    def write() -> None:
        files.append(stem.with_name(f"{stem.name}-{len(files):05d}.parquet"))
        pl.concat(held).write_parquet(files[-1], compression="lz4")
        held.clear()

    for chunk in chunks:
        held.append(chunk)
        rows += len(chunk)
        if rows >= PART_ROWS:
            write()
            rows = 0
    if held or not files:
        write()
    return pl.scan_parquet(files)


def emit_bundles(
    result: ReplayResult,
    transports: list[Transport],
    out: Path,
    *,
    costs_file=None,
    seed: int = 0,
    progress=None,
) -> list[Path]:
    """A full bundle per transport (raw/ in the real formats, truth, manifest) from the
    emulated host running the replayed stream, so its output goes through ingest, timeline
    and report like a capture; returns the bundle directories."""
    st = result.stream.take(slice(None))  # (held: the emulator holds every request anyway)
    block = bool(st.is_op("read", "write").all())
    if not block and st.is_op("read", "write").any():
        raise XvtraceError(
            "--emit-bundle: a stream mixing block and network requests is not supported"
        )
    bs = int(np.median(st.nbytes))
    spec = (f"rw=randrw,bs={min(max(bs, 512), MAX_BS)}" if block
            else f"net=rr,bs={min(max(bs - FRAME_OVERHEAD, 1), MAX_PAYLOAD)}")  # fmt: skip
    spec += f",iodepth={st.iodepth},numjobs={st.njobs}"
    offset = np.concatenate([[0], np.cumsum(st.nbytes[:-1])]).astype(np.uint64)
    req = Requests(st.job, st.write, offset, st.nbytes, st.pages, np.zeros(len(st)))
    dirs = []
    for i, t in enumerate(transports):  # one emulation per transport
        if progress:
            progress(t.name, i, len(transports))
        d = out / t.name if len(transports) > 1 else out
        emulate(EmulateOptions(transport=t.name, workload=spec, out=d, requests=len(st), seed=seed,
                               profile=result.profile, costs_file=costs_file,
                               given=(req, st.device_ns)))  # fmt: skip
        dirs.append(d)
    return dirs


def op_counts(st: Stream) -> dict[str, int]:
    """Requests per operation of the stream, by name (sorted)."""
    counts = st.op_counts()
    return {name: int(n) for name, n in sorted(zip(OPS, counts, strict=True)) if n}


def _median(column) -> float:
    """np.median of a stream's column, held, or on disk and read a piece at a time."""
    if isinstance(column, np.ndarray):
        return float(np.median(column))
    with OrderStats() as stats:
        for _, part in pieces(column, 1 << 20):
            stats.add(np.zeros(len(part), np.int64), part)
        n = stats.count(0)
        return float(np.mean(stats.select(0, np.array([(n - 1) // 2, n // 2]))))


def saturation_iops(stream: Stream, t: Transport, costs, seed: int) -> float:
    """Requests per second with every job keeping SATURATION_DEPTH requests in flight."""
    n = min(len(stream), SATURATION_SAMPLE)
    sub = stream.take(slice(0, n))
    sub = replace(sub, iodepth=max(stream.iodepth, SATURATION_DEPTH), njobs=int(sub.job.max()) + 1)
    df = replay(sub, t, costs, seed=seed)
    return n / (float(df["done_ns"].max()) / 1e9)


SUMMARY_ROWS = 1 << 17  # predicted requests summarized at a time (25 columns: 26 MB)


def summarize(rows: pl.DataFrame | pl.LazyFrame) -> dict:
    """One transport's predicted requests in one row (times in us, rates per second), read
    SUMMARY_ROWS at a time: the latency percentiles exact (the order statistics at numpy's
    linear rule: np.percentile's, to the last bit), each mean a sum added a slice at a time
    over the count."""
    rows = rows.lazy()
    summed = ["bytes", *(f"cpu_{a}_ns" for a in CPU_ACTORS), *COUNTERS,
              *(f"phase_{p}_ns" for p in PHASES), *(f"from_{o}_ns" for o in ORIGINS)]  # fmt: skip
    n, lat_sum, sums = 0, 0.0, dict.fromkeys(summed, 0.0)
    first, last = np.inf, -np.inf
    with OrderStats() as stats:
        for _, part in order_stats.slices(rows, SUMMARY_ROWS):
            df = part.select("latency_ns", "issue_ns", "done_ns", *summed).collect()
            lat = df["latency_ns"].to_numpy() / 1e3
            stats.add(np.zeros(len(lat), np.int64), lat)
            n, lat_sum = n + len(df), lat_sum + float(lat.sum())
            first = min(first, float(df["issue_ns"].min()))
            last = max(last, float(df["done_ns"].max()))
            for c in summed:  # (numpy's sum of the slice's values, however polars chunks them)
                sums[c] += float(df[c].to_numpy().sum())
        p50, p90, p99 = order_stats.linear_quantiles(n, np.array([0.5, 0.9, 0.99]),
                                                     lambda ranks: stats.select(0, ranks))  # fmt: skip
    mean = {c: v / n for c, v in sums.items()}
    span = (last - first) / 1e9
    return {
        "transport": rows.select(pl.col("transport").first()).collect().item(),
        "requests": n,
        "p50_us": float(p50),
        "p90_us": float(p90),
        "p99_us": float(p99),
        "mean_us": lat_sum / n,
        "iops": n / span if span > 0 else 0.0,
        "mb_per_s": sums["bytes"] / span / 1e6 if span > 0 else 0.0,
        **{f"cpu_{a}_us": mean[f"cpu_{a}_ns"] / 1e3 for a in CPU_ACTORS},
        "cpu_us": sum(mean[f"cpu_{a}_ns"] for a in CPU_ACTORS) / 1e3,
        **{c: mean[c] for c in COUNTERS},
        **{f"{p}_us": mean[f"phase_{p}_ns"] / 1e3 for p in PHASES},
        **origins({o: mean[f"from_{o}_ns"] for o in ORIGINS}),
    }


def origins(mean_ns: dict[str, float]) -> dict:
    """Where a transport's predicted time comes from, per request (us), of the mean ns per
    origin: and the share of its modelled cost (calibrated + estimated) fitted to a
    capture: `calibrated_share`."""
    out = {f"{o}_us": mean_ns[o] / 1e3 for o in ORIGINS}
    modelled = out["calibrated_us"] + out["estimated_us"]
    return out | {"calibrated_share": out["calibrated_us"] / modelled if modelled else 0.0}


@dataclass
class Calibration:
    """A capture's fit of its transport's costs: one row per cost key of the transport's
    block path (replay.calibrate.fitted_costs), fitted where the capture constrains it."""

    transport: str
    profile: str
    rows: pl.DataFrame
    bundle_path: Path

    def entries(self) -> list[dict]:
        """The fitted costs as cost-file entries, each citing what it was fitted from."""
        fitted = self.rows.filter(pl.col("fitted_ns").is_not_null())
        return [{"key": r["key"], "ns": r["fitted_ns"], "sigma": r["fitted_sigma"], "ci_low": r["ci_low"],
                 "ci_high": r["ci_high"],
                 "source": f"calibrated from {self.bundle_path} ({r['requests']} requests, interval "
                           f"{r['interval']}{', scaled with ' + r['with'] if r['with'] else ''})"}
                for r in fitted.iter_rows(named=True)]  # fmt: skip

    def write(self, path: Path) -> None:
        """The fitted costs as a TOML cost file (atomically); XvtraceError when none fit."""
        entries = self.entries()
        if not entries:
            raise XvtraceError(
                f"{self.bundle_path}: no interval of this capture constrains any {self.transport} cost"
            )
        with atomic_path(path) as tmp:
            cost_table.write_toml(tmp, self.profile, entries)

    def render(self) -> str:
        rows = self.rows
        n = rows.filter(pl.col("fitted_ns").is_not_null()).height
        out = [
            f"transport {self.transport}, profile {self.profile}: {n} of {len(rows)} costs constrained",
            f"{'key':<28}{'table ns':>10}{'fitted ns':>11}{'95% interval':>22}{'sigma':>7}  constrained by",
        ]
        for r in rows.iter_rows(named=True):
            if r["fitted_ns"] is None:
                out.append(
                    f"{r['key']:<28}{r['ns']:>10.1f}{'-':>11}{'':>22}{r['sigma']:>7.2f}  not constrained by this capture"
                )
                continue
            ci = _interval(r)
            extra = f" (with {r['with']})" if r["with"] else ""
            out.append(
                f"{r['key']:<28}{r['ns']:>10.1f}{r['fitted_ns']:>11.1f}{ci:>22}{r['fitted_sigma']:>7.2f}  {r['interval']}{extra}"
            )
        return "\n".join(out) + "\n"


def _interval(row: dict) -> str:
    """A fitted cost's 95 % interval as calibrate prints it ("-" for the host's slowdown,
    a factor of 1 by definition whose sigma is what is fitted)."""
    if row["key"] == cost_table.SLOWDOWN:
        return "-"
    return f"{row['ci_low']:.1f}..{row['ci_high']:.1f}"


def calibrate_bundle(
    bundle: Bundle, *, source: str | None = None, costs_file=None, seed: int = 0
) -> Calibration:
    """Fit the costs of the bundle's transport (`source`, else the manifest's) to its
    timeline's intervals."""
    src = source or source_transport(bundle)
    if src is None:
        raise BundleError(
            f"{bundle.path}: the capture's transport is unknown (not in the manifest); "
            f"name it with --transport ({', '.join(NAMES)})"
        )
    profile = profile_of(bundle)
    costs = cost_table.costs_for(cost_table.load(costs_file), profile)
    t = get(src)
    tl = timeline.load(bundle)
    clock = tl.device_model_clock
    half = clock.half_width_ns if clock else 0.0
    req = tl.requests
    stream = bundle_stream(bundle, req, src, costs)
    groups = calibrate.fit(req, stream, t, costs, seed=seed, clock_halfwidth_ns=half)
    return Calibration(src, profile, calibrate.fitted_costs(groups, t, costs), bundle.path)


@dataclass
class HostCalibration:
    """The costs of one host fitted from several of its captures together: each capture
    fits its own transport's costs (`Calibration`), and a key that more than one constrains
    (the host's primitives: traps, IOREQs, interrupts are shared by the transports) gets
    their random-effects mean (replay.calibrate.combine)."""

    fits: list[Calibration]
    rows: pl.DataFrame  # combine()'s: key, ns, sigma, ci_low, ci_high, captures, requests

    def entries(self) -> list[dict]:
        """The pooled costs as cost-file entries, each naming its captures and intervals."""
        if len(self.fits) == 1:
            return self.fits[0].entries()
        return [r | {"source": f"{cost_table.CALIBRATED} {r['captures']}"}
                for r in self.rows.iter_rows(named=True)]  # fmt: skip

    def write(self, path: Path) -> None:
        """The pooled costs as a TOML cost file (atomically); XvtraceError when none fit."""
        if len(self.fits) == 1:
            return self.fits[0].write(path)
        if not len(self.rows):
            names = ", ".join(str(f.bundle_path) for f in self.fits)
            raise XvtraceError(f"no interval of these captures constrains any cost: {names}")
        with atomic_path(path) as tmp:
            cost_table.write_toml(tmp, self.fits[0].profile, self.entries())

    def render(self) -> str:
        if len(self.fits) == 1:
            return self.fits[0].render()
        out = []
        for f in self.fits:  # one line per capture
            n = f.rows.filter(pl.col("fitted_ns").is_not_null()).height
            out.append(f"{f.bundle_path} ({f.transport}): {n} of {len(f.rows)} costs constrained")
        table = {r["key"]: r for r in self.fits[0].rows.iter_rows(named=True)}
        for f in self.fits[1:]:
            table |= {r["key"]: r for r in f.rows.iter_rows(named=True)}
        fitted = {r["key"]: r for r in self.rows.iter_rows(named=True)}
        out.append(
            f"{'key':<28}{'table ns':>10}{'fitted ns':>11}{'95% interval':>22}{'sigma':>7}  constrained by"
        )
        for key in sorted(table):
            ns = table[key]["ns"]
            r = fitted.get(key)
            if r is None:
                out.append(
                    f"{key:<28}{ns:>10.1f}{'-':>11}{'':>22}{table[key]['sigma']:>7.2f}  estimate: no capture constrains it"
                )
                continue
            ci = _interval(r)
            out.append(
                f"{key:<28}{ns:>10.1f}{r['ns']:>11.1f}{ci:>22}{r['sigma']:>7.2f}  {r['captures']}"
            )
        return "\n".join(out) + "\n"


def calibrate_host(
    bundles: list[Bundle], *, source: str | None = None, costs_file=None, seed: int = 0
) -> HostCalibration:
    """Fit each capture's transport costs, then pool the keys across captures. The captures
    must come from one host: one cost profile and one TSC frequency (BundleError if not)."""
    profiles = {profile_of(b) for b in bundles}
    khz = {b.manifest.cpu_khz for b in bundles if b.manifest.cpu_khz}
    if len(profiles) > 1 or (khz and max(khz) > min(khz) * 1.001):
        raise BundleError(
            "calibrate pools captures of one host: these differ in "
            + ("machine" if len(profiles) > 1 else f"TSC frequency ({', '.join(map(str, sorted(khz)))} kHz)")
        )  # fmt: skip
    fits = [calibrate_bundle(b, source=source, costs_file=costs_file, seed=seed) for b in bundles]
    rows = calibrate.combine([(str(f.bundle_path), f.rows) for f in fits])
    costs = cost_table.costs_for(cost_table.load(costs_file), profile_of(bundles[0]))
    costs |= {r["key"]: (r["ns"], r["sigma"]) for r in rows.iter_rows(named=True)}
    if len(bundles) > 1 and len(rows):
        rows = _joint(bundles, fits, rows, costs, seed)
        costs |= {r["key"]: (r["ns"], r["sigma"]) for r in rows.iter_rows(named=True)}
    io = calibrate.io_path_excess(
        [_io_interval(b, f.transport, costs) for b, f in zip(bundles, fits, strict=True)]
    )
    if len(io):  # keys no single capture fits (their interval holds the device)
        sigma = pl.col("key").replace_strict(
            {k: v[1] for k, v in costs.items()}, return_dtype=pl.Float64
        )
        rows = pl.concat([rows, io.with_columns(sigma.alias("sigma")).select(rows.columns)]).sort(
            "key"
        )
    return HostCalibration(fits, rows)


def _joint(bundles, fits, rows: pl.DataFrame, costs, seed: int) -> pl.DataFrame:
    """`rows` (the pooled per-capture fits) refitted to all the captures at once
    (replay.calibrate.joint); each key's interval moves with its value."""
    captures = []
    for b, f in zip(bundles, fits, strict=True):
        req = timeline.load(b).requests
        stream = calibrate.block_sample(bundle_stream(b, req, f.transport, costs))
        captures.append((calibrate.block_requests(req), stream, get(f.transport)))
    keys = set(rows["key"].to_list()) - {cost_table.SLOWDOWN}
    fitted = calibrate.joint(captures, costs, keys, seed=seed)
    ratio = pl.col("key").replace_strict(
        {k: v / costs[k][0] for k, v in fitted.items()}, default=1.0, return_dtype=pl.Float64
    )
    return rows.with_columns((pl.col(c) * ratio).alias(c) for c in ("ns", "ci_low", "ci_high"))


def _io_interval(bundle: Bundle, transport: str, costs) -> tuple[str, str, str, np.ndarray]:
    """(capture, the transport's io_path key, workload name, each complete block request's
    submission -> completion less the mean of the path's other steps in it, e.g. EPAM's
    IOREQ completion, at the host's fitted costs: as replay.stream takes them out) for
    calibrate.io_path_excess."""
    t = get(transport)
    key = next((o.cost for o in t.path("block") if o.name == calibrate.IO_PATH), "")
    blk = calibrate.block_requests(timeline.load(bundle).requests)
    blk = blk.filter(pl.col("io_done_ns").is_not_null() & pl.col("handle_ns").is_not_null())
    x = (blk["io_done_ns"] - blk["handle_ns"]).to_numpy().astype(np.float64)
    nbytes = blk["bytes"].fill_null(0).to_numpy().astype(np.float64)
    pages = np.maximum(1.0, np.ceil(nbytes / 4096))
    x -= inside_device_interval(t, costs, pages, nbytes, skip=(calibrate.IO_PATH,))
    return str(bundle.path), key, str(bundle.manifest.workload.get("name") or ""), x


def facts(result: ReplayResult) -> dict:
    """What a comparison needs besides the requests: the stream's shape and the summary."""
    st = result.stream
    return {
        "source_transport": result.source,
        "profile": result.profile,
        "timeline_key": result.timeline_key,
        "stream": {
            "requests": len(st),
            "jobs": st.njobs,
            "iodepth": st.iodepth,
            "ops": op_counts(st),
            "device_p50_us": _median(st.device_ns) / 1e3,
        },
        "transports": result.summary.to_dicts(),
    }


def write(result: ReplayResult, out: Path, facts_of: dict | None = None) -> Path:
    """The predicted requests as parquet and the facts beside them as `<out>.json` (facts()
    of the result, unless given), each written atomically; returns the facts' path."""
    import json

    with atomic_path(out) as tmp:
        result.requests.sink_parquet(tmp)  # streamed from the transports' parts
    side = out.with_suffix(".json")
    with atomic_path(side) as tmp:
        tmp.write_text(json.dumps(facts(result) if facts_of is None else facts_of, indent=2))
    return side
