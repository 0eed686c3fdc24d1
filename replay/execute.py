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

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

from xvtrace.parsers.errors import XvtraceError
from xvtrace.replay import engine
from xvtrace.replay.accounting import CPU_RESOURCES, counters
from xvtrace.replay.columns_file import ColumnFile
from xvtrace.replay.stream import KIND_OF_OP, Stream
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
                window=None, on_disk: Path | None = None,
                ) -> tuple[list, np.ndarray, engine.Simulation]:  # fmt: skip
    """The stream set up to run through the transport's paths, its durations drawn (into
    the file `on_disk`, a ColumnFile of a row per request and a column per operation of the
    longest path, when given)."""
    if arrivals not in ARRIVALS:
        raise XvtraceError(f"arrivals {arrivals!r}: valid: {', '.join(ARRIVALS)}")
    n = len(stream)
    # each request's path, by a pass per operation name (a few), not a sort of n strings
    is_op = {o: m for o in KIND_OF_OP if (m := stream.is_op(o)).any()}
    if sum(int(m.sum()) for m in is_op.values()) != n:
        raise XvtraceError(f"stream operations other than {', '.join(KIND_OF_OP)}")
    kinds = sorted({KIND_OF_OP[o] for o in is_op})
    paths = [transport.path(k) for k in kinds]
    path_of = np.zeros(n, np.int64)
    for o, m in is_op.items():
        path_of[m] = kinds.index(KIND_OF_OP[o])
    del is_op
    rng = np.random.default_rng(seed)
    width = max(len(p) for p in paths)
    # [request, op], stored op by op as the engine keeps it
    dur = np.zeros((width, n)).T if on_disk is None else ColumnFile(on_disk, n, width)
    for i, path in enumerate(paths):  # per path, not per request
        m = path_of == i
        args = (path, costs, stream.pages[m], stream.nbytes[m], stream.device_ns[m], rng)
        if on_disk is not None:  # the same draws, each op's written as it is drawn
            rows = dur if m.all() else dur.where(m)
            engine.durations(*args, out=rows)
            for k, factor in enumerate(scale[kinds[i]] if scale and kinds[i] in scale else ()):
                rows[:, k] = rows[:, k] * factor
            continue
        d = engine.durations(*args)
        if scale and kinds[i] in scale:
            d = d * scale[kinds[i]]
        dur[m, : len(path)] = d
    not_before = stream.arrival_ns if arrivals == "open" else np.zeros(n)
    think = np.full(n, stream.think_ns) if arrivals == "think" else None
    # (no idle stretch is noted with a window: a replay does not draw them)
    sim = engine.simulation(paths, path_of, dur, stream.job, not_before, iodepth=stream.iodepth,
                            njobs=stream.njobs, device_servers=device_servers, think=think,
                            window=window, min_idle=0.0 if window is None else np.inf)  # fmt: skip
    return paths, path_of, sim


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
    every request) when there are more requests than the window."""
    on_disk = None
    if window is not None and spill is not None and len(stream) > window:
        fd, name = tempfile.mkstemp(prefix=f"durations-{transport.name}-", suffix=".f8", dir=spill)
        os.close(fd)  # (a name of its own: two replays may share the directory)
        on_disk = Path(name)
    try:
        paths, path_of, sim = _simulation(stream, transport, costs, seed=seed, arrivals=arrivals,
                                          device_servers=device_servers, window=window,
                                          on_disk=on_disk)  # fmt: skip
        for first, sched in sim.chunks():
            yield _predicted(stream, transport, paths, path_of, first, sched, calibrated)
    finally:
        if on_disk is not None:
            on_disk.unlink(missing_ok=True)


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
