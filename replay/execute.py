"""Re-execute a request stream through a transport's request path: per-request latency,
phases and resource use, as that transport would have served the captured workload.

The stream keeps its captured shape (operations, sizes, jobs, queue depth, device service
times); the transport supplies the path and the cost table the durations of its operations.
The discrete-event engine (replay.engine, the emulator's own) adds contention for guest
vCPUs, backend threads, the device and the hypervisor's copy bandwidth. Arrivals are
closed-loop at the captured queue depth (what fio-like jobs do: a slower transport gets
fewer IOPS, not an unbounded queue), or open-loop at the captured arrival times.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

from xvtrace.parsers.errors import XvtraceError
from xvtrace.replay import columns_file, engine
from xvtrace.replay.accounting import CPU_RESOURCES, counters
from xvtrace.replay.stream import KIND_OF_OP, OPS, Stream
from xvtrace.replay.transports.base import PHASES, Transport

# closed: each job issues its next request as its previous one is done (fio-like); think:
# closed, with the job's own time between the two that the capture implies (a guest that
# does work per request); open: at the captured arrival times
ARRIVALS = ("closed", "think", "open")
CPU_ACTORS = ("guest_vcpu", "hypervisor", "backend_thread", "backend_process")
# where a predicted request's time comes from: costs fitted to a capture, the table's
# estimates, the device's service time as captured, and waiting for a busy resource
ORIGINS = ("calibrated", "estimated", "captured", "waiting")


def schedule(
    stream: Stream,
    transport: Transport,
    costs: dict[str, tuple[float, float]],
    *,
    seed: int = 0,
    arrivals: str = "closed",
    device_servers: int = 8,
    scale: dict[str, np.ndarray] | None = None,
) -> tuple[list, np.ndarray, engine.Schedule]:
    """Run the stream through the transport's paths: (paths, each request's path index,
    the engine's schedule). `scale`: per device kind, a factor per operation of its path
    applied to the drawn durations (calibration's trial costs)."""
    paths, path_of, sim = _simulation(stream, transport, costs, seed=seed, arrivals=arrivals,
                                      device_servers=device_servers, scale=scale)  # fmt: skip
    return paths, path_of, sim.run()


def _simulation(stream, transport, costs, *, seed, arrivals, device_servers, scale=None,
                window=None, spill: Path | None = None, files: list | None = None,
                ) -> tuple[list, columns_file.Mapped, engine.Simulation]:  # fmt: skip
    """The stream set up to run through the transport's paths, its durations drawn (into
    files in the directory `spill`, when given: a ColumnFile per path, a row per request of
    it and a column per operation, drawn and read a piece at a time; each file made is put
    in `files`, for the caller to close)."""
    if arrivals not in ARRIVALS:
        raise XvtraceError(f"arrivals {arrivals!r}: valid: {', '.join(ARRIVALS)}")
    files = [] if files is None else files
    n = len(stream)
    counts = stream.op_counts()
    if counts.sum() != n:
        raise XvtraceError(f"stream operations other than {', '.join(KIND_OF_OP)}")
    present = [o for o, c in zip(OPS, counts, strict=True) if c]
    kinds = sorted({KIND_OF_OP[o] for o in present})
    paths = [transport.path(k) for k in kinds]
    # each request's path, looked up by its operation as it is read
    lut = np.array(
        [kinds.index(KIND_OF_OP[o]) if c else 0 for o, c in zip(OPS, counts, strict=True)], np.uint8
    )
    path_of = columns_file.Mapped(stream.op, lut)
    rng = np.random.default_rng(seed)
    width = max(len(p) for p in paths)

    def factor(i: int):
        return scale[kinds[i]] if scale and kinds[i] in scale else None

    if spill is None:  # [request, op], stored op by op as the engine keeps it
        dur = np.zeros((width, n)).T
        held = path_of[:]
        for i, path in enumerate(paths):  # per path, not per request
            m = held == i
            columns = (np.asarray(c[:])[m] for c in (stream.pages, stream.nbytes, stream.device_ns))
            dur[m, : len(path)] = engine.durations(path, costs, *columns, rng, factor=factor(i))
        del held
    else:
        tables = []
        for i, (path, columns) in enumerate(zip(paths, _path_columns(stream, path_of, len(paths), spill, files), strict=True)):  # fmt: skip
            tables.append(_spill_file(columns_file.ColumnFile, spill, files, f"durations-{transport.name}-{i}-",
                                      len(columns[0]), len(path)))  # fmt: skip
            engine.durations(path, costs, *columns, rng, out=tables[-1], rows=PIECE,
                             factor=factor(i))  # fmt: skip
        dur = _ByPath(tables, path_of, width)
    not_before = stream.arrival_ns if arrivals == "open" else columns_file.Constant(0.0, n)
    think = columns_file.Constant(stream.think_ns, n) if arrivals == "think" else None
    # (no idle stretch is noted with a window: a replay does not draw them)
    sim = engine.simulation(paths, path_of, dur, stream.job, not_before, iodepth=stream.iodepth,
                            njobs=stream.njobs, device_servers=device_servers, think=think,
                            window=window, min_idle=0.0 if window is None else np.inf)  # fmt: skip
    return paths, path_of, sim


PIECE = 1 << 18  # requests whose durations are drawn, or columns copied, at a time on disk


def _spill_file(kind, spill: Path, files: list, prefix: str, *args):
    """A new file of `kind` (a replay.columns_file class) in `spill`, named apart (two
    replays may share the directory), put in `files`."""
    files.append(kind(columns_file.new_file(spill, prefix, ".f8"), *args))
    return files[-1]


def _path_columns(stream: Stream, path_of, npaths: int, spill: Path, files: list) -> list[tuple]:
    """Per path, the pages, bytes and device time of its requests, in order: the stream's
    own columns for one path, else columns of their own on disk, copied a piece at a time."""
    own = (stream.pages, stream.nbytes, stream.device_ns)
    if npaths == 1:
        return [own]
    out = [tuple(_spill_file(columns_file.DiskColumn, spill, files, f"path-{i}-{k}-", np.float64)
                 for k in range(3)) for i in range(npaths)]  # fmt: skip
    for a in range(0, len(stream), PIECE):
        part = slice(a, a + PIECE)
        p, values = path_of[part], [c[part] for c in own]
        for i in range(npaths):
            m = p == i
            for column, v in zip(out[i], values, strict=True):
                column.append(v[m])
    return out


class _ByPath:
    """Each request's durations, from its path's table (a row per request of the path, in
    stream order), read as rows a..b of every request, in order (engine.Simulation's
    window reads them so): shape (requests, the longest path's operations)."""

    def __init__(self, tables: list, path_of, width: int):
        self.tables, self.path_of = tables, path_of
        self.shape = (len(path_of), width)
        self._at, self._read = 0, np.zeros(len(tables), np.int64)

    def __getitem__(self, key: slice) -> np.ndarray:
        a, b, _ = key.indices(self.shape[0])
        b = max(a, b)
        if a != self._at:
            raise IndexError(f"durations are read in order: rows {a}.. after ..{self._at}")
        out = np.zeros((self.shape[1], b - a)).T
        p = self.path_of[a:b]
        for i, table in enumerate(self.tables):
            m = p == i
            k = int(m.sum())
            if k:
                out[m, : table.shape[1]] = table[self._read[i] : self._read[i] + k]
                self._read[i] += k
        self._at = b
        return out


WINDOW = 1 << 16  # requests whose operations a replay holds at a time (replay_chunks)


def replay(stream: Stream, transport: Transport, costs: dict[str, tuple[float, float]],
           **options) -> pl.DataFrame:  # fmt: skip
    """One row per request of `stream` as `transport` serves it: issue/done/latency, time
    per phase (including queueing), the accounting counters, CPU time per actor (ns) and
    where its time comes from (ORIGINS: `calibrated` names the cost keys fitted to a
    capture; the device's service time is the capture's own). `options`: replay_chunks'
    seed, arrivals, device_servers and calibrated; every request is held at once."""
    return pl.concat(replay_chunks(stream, transport, costs, **options, window=None))


def replay_chunks(
    stream: Stream,
    transport: Transport,
    costs: dict[str, tuple[float, float]],
    *,
    seed: int = 0,
    arrivals: str = "closed",
    device_servers: int = 8,
    calibrated: frozenset[str] = frozenset(),
    window: int | None = WINDOW,
    spill: Path | None = None,
) -> Iterator[pl.DataFrame]:
    """replay()'s rows a chunk of requests at a time, in order, the engine holding the
    operations of about `window` requests at a time (None: of all; the rows are the same).
    `spill`: a directory where the durations wait on disk (as large as the operations of
    every request) when there are more requests than the window; a stream whose columns
    are on disk (replay.stream.from_requests with a spill) is read a piece at a time."""
    files: list = []
    if window is None or len(stream) <= window:
        spill = None  # (held whole: the ring would hold every request anyway)
    try:
        paths, path_of, sim = _simulation(stream, transport, costs, seed=seed, arrivals=arrivals,
                                          device_servers=device_servers, window=window,
                                          spill=spill, files=files)  # fmt: skip
        for first, sched in sim.chunks():
            yield _predicted(stream, transport, paths, path_of, first, sched, calibrated)
    finally:
        for f in files:
            f.close()


def _predicted(stream: Stream, transport: Transport, paths: list, path_of: np.ndarray,
               first: int, sched: engine.Schedule, calibrated: frozenset[str]) -> pl.DataFrame:  # fmt: skip
    """replay()'s rows of the requests from `first` on that `sched` holds."""
    n = len(sched.issue)
    part = slice(first, first + n)
    pages, nbytes = stream.pages[part], stream.nbytes[part]
    phase = {p: np.zeros(n) for p in PHASES}
    cpu = {a: np.zeros(n) for a in CPU_ACTORS}
    origin = {o: np.zeros(n) for o in ORIGINS}
    used = {}
    for i, path in enumerate(paths):
        m = path_of[part] == i
        for k, o in enumerate(path):  # per operation, vectorized over its requests
            ran = sched.end[m, k] - sched.start[m, k]
            phase[o.phase][m] += ran + sched.wait[m, k]
            if o.resource in CPU_RESOURCES and o.actor in cpu:
                cpu[o.actor][m] += ran
            kind = ("captured" if o.resource == "device"
                    else "calibrated" if o.cost in calibrated else "estimated")  # fmt: skip
            origin[kind][m] += ran
            origin["waiting"][m] += sched.wait[m, k]
        for name, values in counters(path, pages[m], nbytes[m]).items():
            used.setdefault(name, np.zeros(n))[m] = values
    return pl.DataFrame({
        "transport": pl.Series([transport.name] * n, dtype=pl.String),
        "request": np.arange(first, first + n, dtype=np.int64),
        "op": stream.op_names(part),
        "bytes": nbytes,
        "job": stream.job[part],
        "issue_ns": sched.issue,
        "done_ns": sched.done,
        "latency_ns": sched.done - sched.issue,
        **{f"phase_{p}_ns": v for p, v in phase.items()},
        **{f"{c}": v for c, v in used.items()},
        **{f"cpu_{a}_ns": v for a, v in cpu.items()},
        **{f"from_{o}_ns": v for o, v in origin.items()},
    })  # fmt: skip
