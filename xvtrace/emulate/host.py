"""The emulated Xen host: run a workload through a transport's request path and write what a
real host would (xentrace binary, QEMU log-backend lines, the device model's trace-events
definitions) plus the ground truth of every request (truth.parquet), as a bundle.

    emulate(EmulateOptions(transport="epam-mmio", workload="randread-4k-qd1", requests=10000,
                           out=Path("run/")))

The request path, its operations and their costs come from xvtrace.replay (transports, cost
table, the discrete-event engine): the emulator and the replayer share one definition.
"""

from __future__ import annotations

import contextlib
import gc
import io
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl

from xvtrace import __version__
from xvtrace.bundle import RAW, atomic_path, new_manifest, write_manifest
from xvtrace.emulate import block_trace, packets, qemu_lines, rings, xen_records
from xvtrace.emulate.block_trace import BLOCK_TRACE
from xvtrace.emulate.lanes import Lanes
from xvtrace.emulate.loop import EventLoop
from xvtrace.emulate.pending import Batch, Pending, Texts
from xvtrace.emulate.workload import Requests, Workload, WorkloadError, parse, requests
from xvtrace.parsers.ftrace import render_block
from xvtrace.parsers.trace_events import DEFAULT_FILE, TraceEvents, render_lines
from xvtrace.replay import costs as cost_table
from xvtrace.replay import engine
from xvtrace.replay.transports import NAMES, get

TRUTH = "truth.parquet"
PROFILE_KHZ = {"x86_64": 2_400_000, "arm64": 62_500}  # TSC / Arm generic timer (kHz)
EPOCH_NS = 1_800_000_000 * 10**9  # device-model wall clock at the run's start (2027-01-15)
TSC0 = 10**12  # the hypervisor's TSC at the run's start


@dataclass
class EmulateOptions:
    transport: str
    workload: str
    out: Path
    requests: int | None = None
    runtime: float | None = None  # seconds of emulated time, instead of a request count
    seed: int = 0
    profile: str = "x86_64"
    vendor: str = "vmx"
    device_servers: int = 8
    clock_offset_ns: float = 0.0  # device-model clock minus hypervisor clock
    clock_drift_ppm: float = 0.0
    drop_rate: float = 0.0  # fraction of xentrace records lost (in bursts, as Xen loses them)
    costs_file: Path | None = None
    extra: dict = field(default_factory=dict)
    # the requests and their device times, given instead of drawn from the workload (replay
    # --emit-bundle: a captured stream re-executed on another transport); the workload then
    # supplies only the depth, the jobs and the kind
    given: tuple[Requests, np.ndarray] | None = None
    progress: Callable[[int, int], None] | None = None  # (requests written, total)


@dataclass
class EmulateResult:
    bundle: Path
    requests: int
    seconds: float  # wall time of the emulation proper (engine + writers)
    truth: pl.DataFrame
    expected: dict


def validate(opts: EmulateOptions) -> Workload:
    get(opts.transport)  # raises with the valid names
    w = parse(opts.workload)
    if opts.profile not in PROFILE_KHZ:
        raise WorkloadError(f"profile {opts.profile!r}: valid: {', '.join(PROFILE_KHZ)}")
    if opts.vendor not in ("vmx", "svm"):
        raise WorkloadError(f"vendor {opts.vendor!r}: valid: vmx, svm")
    if (opts.requests is None) == (opts.runtime is None):
        raise WorkloadError("give exactly one of requests or runtime")
    if opts.requests is not None and opts.requests < 1:
        raise WorkloadError(f"requests={opts.requests}: must be >= 1")
    if opts.runtime is not None and opts.runtime <= 0:
        raise WorkloadError(f"runtime={opts.runtime}: must be > 0 seconds")
    if not 0 <= opts.drop_rate < 1:
        raise WorkloadError(f"drop rate {opts.drop_rate}: must be in [0, 1)")
    if opts.device_servers < 1:
        raise WorkloadError("device_servers must be >= 1")
    return w


def emulate(opts: EmulateOptions) -> EmulateResult:
    # the run's objects are arrays and frames, not cycles: the collector's passes over them
    # were 1.4 % of a 1M-request run's CPU samples
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _emulate(opts)
    finally:
        if collecting:
            gc.enable()


def _emulate(opts: EmulateOptions) -> EmulateResult:
    w = validate(opts)
    transport = get(opts.transport)
    kinds = ["block"] if w.kind == "block" else ["net_tx", "net_rx"]
    paths = [transport.path(k) for k in kinds]
    table = cost_table.load(opts.costs_file)
    costs = cost_table.costs_for(table, opts.profile)
    t0 = time.perf_counter()
    # the compiled kernels load from numba's cache while the requests are drawn (numpy
    # draws them without the GIL): the first load costs 0.1-0.2 s
    warm = threading.Thread(target=_load_kernels, args=(paths,), name="xvt-load", daemon=True)
    warm.start()
    req, dur, path_of = _requests(opts, w, paths, costs)
    warm.join()
    n = len(req.job)
    # the event loop runs in a thread of its own: a chunk of requests is written as soon as
    # it is final, while later requests are still being simulated; the same thread then
    # builds and writes the truth table (a run that fails leaves no truth.parquet behind,
    # nor a manifest: that comes last)
    sim = engine.simulation(paths, path_of, dur, req.job, req.not_before, iodepth=w.iodepth,
                            njobs=w.numjobs, device_servers=opts.device_servers,
                            min_idle=xen_records.MIN_IDLE_NS)  # fmt: skip
    loop = EventLoop(sim)
    out = Path(opts.out)
    (out / RAW).mkdir(parents=True, exist_ok=True)
    cpu_khz = PROFILE_KHZ[opts.profile]
    arm = opts.profile == "arm64"

    def simulate_then_truth() -> pl.DataFrame | None:
        loop.run()
        if loop.stopped:  # the writers failed or were interrupted: no truth to write (for
            return None  # 3M requests, minutes that a SIGTERM would have waited for)
        return _write_truth(out, _parts(kinds, paths, path_of, sim.schedule(), req))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="xvt-engine") as engine_pool:
        truth_job = engine_pool.submit(simulate_then_truth)
        try:
            expected = _write_streams(
                out, opts, transport, kinds, paths, path_of, loop, req, cpu_khz, arm, w
            )
            sched = sim.schedule()  # every request is done once the streams are written
            if w.kind == "block":
                grants = (
                    any(o.emits == "grant_map" for o in paths[0])
                    or transport.name == "suse-grant-persistent"
                )
                expected["ring_descriptors"] = rings.write(
                    out / RAW, req, EPOCH_NS, float(sched.done.max()), grants=grants
                )
            else:
                expected["packets"] = packets.write(
                    out / RAW / "net.pcap",
                    _parts(kinds, paths, path_of, sched, req),
                    EPOCH_NS + opts.clock_offset_ns,
                )
            truth = truth_job.result()
        except BaseException:
            loop.stop()
            engine_pool.shutdown(wait=True, cancel_futures=True)
            (out / TRUTH).unlink(missing_ok=True)
            raise
    seconds = time.perf_counter() - t0
    manifest = new_manifest({
        "emulated": True, "cpu_khz": cpu_khz, "cpu_khz_source": "emulated host",
        "hvm_vendor": None if arm else opts.vendor, "xen_version": "4.17 (emulated)",
        "machine": "aarch64" if arm else "x86_64",
    })  # fmt: skip
    manifest["emulation"] = {
        "tool": f"xvtrace {__version__}",
        "transport": transport.name,
        "workload": asdict(w),
        "options": _options(opts),
        "requests": n,
        "clocks": {
            "hypervisor": f"TSC = {TSC0} + ns * {cpu_khz} / 1e6",
            "device_model": f"epoch ns = {EPOCH_NS} + ns * (1 + {opts.clock_drift_ppm} ppm) + {opts.clock_offset_ns}",
            "pcap": f"epoch ns = {EPOCH_NS} + ns + {opts.clock_offset_ns}, microsecond timestamps",
            "truth": "ns since the run's start on the hypervisor clock",
        },
        "expected": expected,
        "costs": table.filter(pl.col("key").is_in(list(transport.cost_keys()))).to_dicts(),
    }
    write_manifest(out, manifest)
    return EmulateResult(out, n, seconds, truth, expected)


def _load_kernels(paths) -> None:
    """Run the event loop and the compiled writers once on a request / record / line each
    (the same argument types as the run's), so their code is loaded before it is needed."""
    two = np.zeros(2, np.int64)  # two requests: one would make its [request, op] arrays C-ordered
    engine.simulation(paths, two, np.ones((max(len(p) for p in paths), 2)).T, two, np.zeros(2),
                      iodepth=1, njobs=1).run()  # fmt: skip
    lines = Batch()  # a block trace line rendered, carried to the next chunk and written
    u64 = two.astype(np.uint64)
    text = render_block("block_rq_issue", "x", 1, 0, 259, 0, tsc=u64, write=two == 1,
                        sector=u64, nr_sector=u64)  # fmt: skip
    lines.add_group(np.ones(2), 0.0, two, Texts(*text))
    notify = TraceEvents.default().events["virtio_notify"]  # and a QEMU line
    lines.add_group(np.ones(2), 0.0, two, Texts(*render_lines(notify, {"vdev": u64, "vq": u64}, 2)))
    _, later = lines.cut(Pending.of(np.zeros(1), pl.Series(["x"])), 0.0)
    now, _ = Batch().cut(later, np.inf)
    now.write(io.BytesIO(), b"1@", np.zeros(len(now), np.int64))
    rec = xen_records.Records()
    rec.add(0, np.zeros(1), 0.0, 0x0002F001, (1,))
    table = rec.columns(1000, 0)
    table.write(io.BytesIO(), round_cycles=1, rows=xen_records.time_order(table))


def _requests(opts: EmulateOptions, w: Workload, paths, costs):
    """The run's requests, their operations' durations and each one's path: `requests` of
    the workload, the `given` ones, or as many as are issued within `runtime` (sized from
    whole runs, then the requests issued before the runtime kept: a prefix of each job)."""
    n = opts.requests or 10_000
    for _ in range(3 if opts.runtime else 1):  # size a runtime-bounded run from a first pass
        rng = np.random.default_rng(opts.seed)
        if opts.given is not None:
            req, dev = opts.given
            n = len(req.job)
        else:
            req = requests(w, n, rng)
            dev = _device_ns(req, costs, rng)
        path_of = np.where(req.write, 0, 1) if w.kind == "net" else np.zeros(n, np.int64)
        if len(paths) == 1:
            dur = engine.durations(paths[0], costs, req.pages, req.nbytes, dev, rng)
        else:  # [request, op], stored op by op as the engine keeps it
            dur = np.zeros((max(len(p) for p in paths), n)).T
            for i, path in enumerate(paths):  # per path, not per request
                d = engine.durations(path, costs, req.pages, req.nbytes, dev, rng)
                dur[path_of == i, : len(path)] = d[path_of == i]
        if not opts.runtime:
            return req, dur, path_of
        sched = engine.simulation(paths, path_of, dur, req.job, req.not_before,
                                  iodepth=w.iodepth, njobs=w.numjobs,
                                  device_servers=opts.device_servers).run()  # fmt: skip
        span = float(sched.done.max()) / 1e9
        want = int(n * opts.runtime / span * 1.05) + 1
        if abs(want - n) < max(10, n // 100) and span >= opts.runtime:
            break
        n = want
    # the run ends with the last request issued before the runtime; it is run again without
    # the later ones, which would otherwise still contend with it
    kept = sched.issue < opts.runtime * 1e9
    req = Requests(req.job[kept], req.write[kept], req.offset[kept], req.nbytes[kept],
                   req.pages[kept], req.not_before[kept])  # fmt: skip
    return req, dur[kept], path_of[kept]


CHUNK = 100_000  # requests whose records are built and written at a time


def _write_streams(out, opts, transport, kinds, paths, path_of, loop, req, cpu_khz, arm, w) -> dict:
    """xentrace.bin, qemu.log and dom0's block trace, written chunk by chunk of requests so
    memory stays bounded.

    Every record of a request is at or after its issue time, so once chunk k is built,
    everything earlier than the next chunk's first issue time is final and written; the
    rest waits to be merged with the next chunk (per pCPU for xentrace, globally for QEMU).
    The three writers are independent: two of them work at a time, each on its own stream
    in chunk order (polars and numpy release the GIL for the bulk of it).
    """
    n = len(req.job)
    sched = loop.sim.schedule()  # filled in as the event loop runs
    starts = list(range(0, n, CHUNK))
    marks: list[float] = []  # per chunk: the earliest issue time of the requests after it
    drop_rng = np.random.default_rng(opts.seed + 1)
    qemu = transport.backend == "qemu"
    defs = TraceEvents.default() if qemu else None
    blocks = kinds == ["block"]
    # what each stream could not write yet: xentrace records, QEMU lines, block trace lines
    pending: dict = {"xen": None, "qemu": Pending.empty(), "block": Pending.empty()}
    slots: dict = {}  # per queue kind: the element pointers in flight (qemu_lines.ElementSlots)
    expected: dict = {}

    def xen_chunk(k: int, parts, gaps, fh) -> dict:
        rec = xen_records.build([x[1:] for x in parts], vendor=opts.vendor, guest_exits=not arm,
                                gaps=gaps, start=k == 0)  # fmt: skip
        table = rec.columns(cpu_khz, TSC0, carry=pending["xen"])
        del rec
        rows = xen_records.time_order(table)  # written where they lie, not gathered
        written = np.ones(len(table), bool)
        if np.isfinite(marks[k]):
            cut = table.tsc[rows].astype(np.float64) < TSC0 + marks[k] * cpu_khz / 1e6
            rows, held = rows[cut], rows[~cut]
            pending["xen"] = table.take(held)
            written[held] = False
        else:
            pending["xen"] = None
        round_cycles = cpu_khz * 10_000  # xentrace polls every 10 ms
        if opts.drop_rate > 0:
            ready = xen_records.drop_bursts(table.take(rows), opts.drop_rate, drop_rng)
            ready.write(fh, round_cycles=round_cycles)
            return xen_records.expected_counts(ready)
        table.write(fh, round_cycles=round_cycles, rows=rows)
        return xen_records.expected_counts(table, written)

    def qemu_chunk(k: int, parts, gaps, fh) -> dict:
        lines = qemu_lines.build(parts, defs=defs, first=k == 0, slots=slots)
        done, pending["qemu"] = lines.cut(pending["qemu"], marks[k])
        n = qemu_lines.write_lines(fh, done, EPOCH_NS, opts.clock_offset_ns, opts.clock_drift_ppm)
        return {"qemu_lines": n}

    def block_chunk(k: int, parts, gaps, fh) -> dict:
        lines = block_trace.build(parts, transport, cpu_khz, TSC0)
        done, pending["block"] = lines.cut(pending["block"], marks[k])
        return {"block_events": done.write(fh)}

    with contextlib.ExitStack() as stack:

        def output(name: str, wanted: bool = True):
            if not wanted:
                return None
            return stack.enter_context(
                stack.enter_context(atomic_path(out / RAW / name)).open("wb")
            )

        # the heaviest first: on a tie the lanes take the earlier stream
        streams = {"xen": (xen_chunk, output("xentrace.bin"))}
        if qemu:
            streams["qemu"] = (qemu_chunk, output("qemu.log"))
        if blocks:
            streams["block"] = (block_chunk, output(BLOCK_TRACE))
        # two writers at a time, whichever streams are ready (lanes.py); this thread hands
        # them each chunk as soon as it is final
        lanes = None  # made inside the try: a signal while its threads start must stop them
        try:
            lanes = Lanes([_writer(write, fh) for write, fh in streams.values()])
            for k, c0 in enumerate(starts):
                if opts.progress:
                    opts.progress(c0, n)
                mark, gaps = loop.wait(min(n, c0 + CHUNK), marks[-1] if marks else -np.inf)
                marks.append(mark)
                in_chunk = np.zeros(n, bool)
                in_chunk[c0 : c0 + CHUNK] = True
                lanes.put(k, (_parts(kinds, paths, path_of, sched, req, in_chunk), gaps))
            results = lanes.close(len(starts))
        except BaseException as e:
            if lanes is not None:
                lanes.stop(e)
            raise
        per_stream = dict(zip(streams, results, strict=True))
        for name in ("xen", "block", "qemu"):  # the manifest's order
            for counts in per_stream.get(name, []):
                _add_counts(expected, counts)
    if qemu:
        _keep_definitions(out / RAW / "trace-events")
    return expected


def _writer(write, fh):
    """A stream's chunk writer as the lanes call it: (chunk number, (parts, gaps))."""
    return lambda k, item: write(k, *item, fh)


def _options(opts: EmulateOptions) -> dict:
    """The options as the manifest records them (no callbacks; given requests counted)."""
    out = {}
    for f in fields(opts):
        v = getattr(opts, f.name)
        if f.name == "progress":
            continue
        if f.name == "given":
            v = None if v is None else f"{len(v[0].job)} requests given (replayed stream)"
        out[f.name] = str(v) if isinstance(v, Path) else v
    return out


def _add_counts(total: dict, part: dict) -> None:
    for key, value in part.items():
        if isinstance(value, dict):
            sub = total.setdefault(key, {})
            for k, v in value.items():
                sub[k] = sub.get(k, 0) + v
        else:
            total[key] = total.get(key, 0) + value


def _parts(kinds, paths, path_of, sched, req, rows: np.ndarray | None = None) -> list:
    """[(kind, path, schedule, requests)] per request path, of the requests in `rows` (a
    mask; all by default)."""
    parts = []
    for i, (kind, path) in enumerate(zip(kinds, paths, strict=True)):
        on = path_of == i if rows is None else (path_of == i) & rows
        parts.append((kind, path, *_subset(sched, req, on, len(path))))
    return parts


def _subset(sched, req, m: np.ndarray, width: int):
    """The schedule and requests of the rows in mask m (one request path): views when the
    rows are one contiguous run (a block job's chunk), copies otherwise."""
    index = np.flatnonzero(m)
    if len(index) and index[-1] - index[0] + 1 == len(index):
        m = slice(int(index[0]), int(index[-1]) + 1)
    s = engine.Schedule(
        sched.issue[m],
        sched.done[m],
        sched.start[m, :width],
        sched.end[m, :width],
        sched.wait[m, :width],
    )
    r = Requests(
        req.job[m], req.write[m], req.offset[m], req.nbytes[m], req.pages[m], req.not_before[m]
    )
    r.index = index
    return s, r


def _device_ns(req, costs, rng) -> np.ndarray:
    """Device service time: the 4 KiB read/write latency plus transfer of the rest."""
    rd, rsig = costs["device.block_read"]
    wr, wsig = costs["device.block_write"]
    per_byte, _ = costs["device.transfer"]
    base = np.where(req.write, wr, rd)
    sigma = np.where(req.write, wsig, rsig)
    return base * rng.lognormal(0.0, sigma) + np.maximum(req.nbytes - 4096, 0) * per_byte


def _write_truth(out: Path, parts) -> pl.DataFrame:
    frames = [_truth(*part) for part in parts]
    if len(frames) == 1 and frames[0]["request"].is_sorted():
        truth = frames[0]  # one path, requests in order: no 66-column gather to sort
    else:
        truth = pl.concat(frames, how="diagonal_relaxed").sort("request")
    with atomic_path(out / TRUTH) as tmp:
        truth.write_parquet(tmp, compression="lz4", statistics=False)
    return truth


def _truth(kind, path, sched, req) -> pl.DataFrame:
    n = len(req.job)
    # strings from an index into their few values, not n Python objects
    op = (
        pl.Series(["read", "write"]).gather(req.write.astype(np.uint32))
        if kind == "block"
        else pl.Series(["tx" if kind == "net_tx" else "rx"]).new_from_index(0, n)
    )
    cols = {
        "request": req.index.astype(np.int64),
        "dom": np.full(n, xen_records.GUEST_DOM, np.int32),
        "vcpu": req.job.astype(np.int32),
        "device": pl.Series(["vblk0" if kind == "block" else "vnet0"]).new_from_index(0, n),
        "queue": np.full(n, 0 if kind != "net_tx" else 1, np.uint16),
        "op": op,
        "offset": req.offset,
        "bytes": req.nbytes.astype(np.uint32),
        "issue_ns": sched.issue,
        "done_ns": sched.done,
    }
    # per operation a column: contiguous where the schedule is stored op by op (all of a
    # run's), one transposing copy otherwise
    start, end, wait = (np.ascontiguousarray(a.T) for a in (sched.start, sched.end, sched.wait))
    for k, o in enumerate(path):
        cols[f"{o.name}_start_ns"] = start[k]
        cols[f"{o.name}_end_ns"] = end[k]
        cols[f"{o.name}_wait_ns"] = wait[k]
    df = pl.DataFrame(cols).with_columns(
        (pl.col("done_ns") - pl.col("issue_ns")).alias("latency_ns")
    )
    phases = {}
    for o in path:
        phases.setdefault(o.phase, []).append(o.name)
    return df.with_columns(
        *[
            pl.min_horizontal([f"{n}_start_ns" for n in ops]).alias(f"phase_{p}_start_ns")
            for p, ops in phases.items()
        ],
        *[
            pl.max_horizontal([f"{n}_end_ns" for n in ops]).alias(f"phase_{p}_end_ns")
            for p, ops in phases.items()
        ],
    )


def _keep_definitions(path: Path) -> None:
    """The trace-event definitions beside the QEMU lines (as a live capture keeps them)."""
    path.write_text(resources.files("xvtrace.parsers").joinpath("data", DEFAULT_FILE).read_text())


__all__ = ["NAMES", "EmulateOptions", "EmulateResult", "WorkloadError", "emulate"]
