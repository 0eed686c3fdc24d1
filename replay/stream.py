"""The request stream replay re-executes: what a capture says about its workload, separated
from how its transport served it.

From a reconstructed request table (one row per request, see xvtrace.timeline) it keeps, in
the order the backend saw them: the operation (read, write, tx, rx), bytes and pages, the
job (the guest vCPU that kicked it, when the hypervisor side is known and the workload
names no other number of jobs; else the workload's jobs in turn), each job's queue
depth (the most requests it had in flight at once) and each request's device service time.

The device time is what the capture measured from the backend's submission to the device's
completion (QEMU's virtio_blk_handle_* .. virtio_blk_rw_complete), less the source
transport's operations that run after the submission and before the device in its path
(EPAM's IOREQ completion), at their mean cost: what remains is the device's.

Queue depth: the device model sees only the requests the guest has kicked. When the guest's
vCPU is the bottleneck, requests also wait inside the guest, unseen, so the depth measured
at the backend is a lower bound; the workload's own depth (the fio job's iodepth, which the
emulator records in the manifest, and `capture --jobs --iodepth` on a live host) is used
when known. A backend that serves one request at a time (the EPAM test backend) shows depth 1
whatever the guest runs.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

from xvtrace.parsers.errors import XvtraceError
from xvtrace.replay.columns_file import DiskColumn, new_file, pieces
from xvtrace.replay.transports.base import Transport, submission

OPS = ("read", "write", "tx", "rx")
KIND_OF_OP = {"read": "block", "write": "block", "tx": "net_tx", "rx": "net_rx"}
NEEDED = ("op", "bytes", "pop_ns", "fill_ns", "io_ns", "complete")
RESPONSE_ENDS = ("notify_ns", "fill_ns")  # a request's response as the host sees it end
RESPONSE_STARTS = ("trap_exit_ns", "kick_ns", "pop_ns")  # ... and begin
READS = (
    *NEEDED,
    "reason",
    "trap_vcpu",
    *RESPONSE_ENDS,
    *RESPONSE_STARTS,
)  # all from_requests reads


class StreamError(XvtraceError, ValueError):
    """The request table cannot give a stream (message names what is missing)."""


@dataclass
class Stream:
    op: np.ndarray  # u1 per request, its number in OPS (given as names: numbered)
    nbytes: np.ndarray  # f8
    pages: np.ndarray  # f8, 4 KiB pages touched
    job: np.ndarray  # i8, 0..njobs-1
    device_ns: np.ndarray  # f8, the device's service time (block); 0 for network
    arrival_ns: np.ndarray  # f8, when the backend saw it (from the first request)
    iodepth: int
    njobs: int
    think_ns: float = 0.0  # a job's own time between a completion and its next request

    def __post_init__(self):
        # (a number, not a name, per request: a name of 5 characters was 20 bytes a request)
        if self.op.dtype != np.uint8:
            names, self.op = np.asarray(self.op, dtype=str), np.full(len(self.op), 255, np.uint8)
            for i, name in enumerate(OPS):  # (a pass per operation: four)
                self.op[names == name] = i
            if (self.op == 255).any():
                raise StreamError(f"operations other than {', '.join(OPS)}")

    def __len__(self) -> int:
        return len(self.op)

    def op_counts(self) -> np.ndarray:
        """Requests per operation, a count per OPS (then one per other code), read a piece
        at a time."""
        counts = np.zeros(256, np.int64)
        for _, part in pieces(self.op, 1 << 20):
            counts += np.bincount(part, minlength=256)
        return counts[: len(OPS)]

    def is_op(self, *names: str) -> np.ndarray:
        """Per request: is its operation one of `names`."""
        return np.isin(self.op, [OPS.index(n) for n in names])

    def op_names(self, rows=slice(None)) -> np.ndarray:
        """The operations of the requests at `rows`, by name."""
        return np.array(OPS)[self.op[rows]]

    @property
    def write(self) -> np.ndarray:
        return self.is_op("write", "tx")

    def take(self, rows) -> Stream:
        """The requests at `rows` (a slice or row numbers), depth and jobs kept."""
        return replace(self, op=self.op[rows], nbytes=self.nbytes[rows], pages=self.pages[rows],
                       job=self.job[rows], device_ns=self.device_ns[rows], arrival_ns=self.arrival_ns[rows])  # fmt: skip


def in_flight_depth(start: np.ndarray, end: np.ndarray) -> int:
    """The most intervals [start, end) open at once (vectorized sweep)."""
    if not len(start):
        return 0
    t = np.concatenate([start, end])
    step = np.concatenate([np.ones(len(start), np.int64), -np.ones(len(end), np.int64)])
    order = np.lexsort((step, t))  # at equal times, an end before a start
    return int(np.cumsum(step[order]).max())


PIECE_ROWS = 1 << 18  # requests made into the stream at a time, when it is spilled


def from_requests(
    req: pl.DataFrame | pl.LazyFrame,
    *,
    source: Transport | None,
    costs: dict[str, tuple[float, float]],
    iodepth: int | None = None,
    njobs: int | None = None,
    spill: Path | None = None,
) -> Stream:
    """The stream of `req`'s complete requests (a LazyFrame: only they are read). `source`
    is the transport the capture ran on (None: unknown, nothing is taken out of the device
    interval); `iodepth` and `njobs` the workload's, when known (else measured: see the
    module doc). `spill`: a directory the stream's columns are written to, PIECE_ROWS
    requests at a time, and read from (replay.columns_file.DiskColumn), not held."""
    req = req.lazy()
    columns = req.collect_schema().names()
    missing = [c for c in NEEDED if c not in columns]
    if missing:
        raise StreamError(f"request table lacks column(s) {', '.join(missing)}")
    # only what the stream is made of, each operation as its number in OPS: the request
    # table's columns whole (a string per request) held 1.2 GB at 5 M requests
    done = req.filter(pl.col("complete") & pl.col("op").is_in(OPS)).select(
        # (an Enum's codes: replace_strict of a string column held 0.3 GB more at 5 M)
        pl.col("op").cast(pl.Enum(OPS)).to_physical().cast(pl.UInt8),
        "bytes", "pop_ns", "fill_ns", "io_ns",
        *(["trap_vcpu"] if "trap_vcpu" in columns else []),
        response_ns(columns).alias("response_ns"),
    )  # fmt: skip
    with _pieces(done, spill) as (table, parts):
        n = table.select(pl.len()).collect().item()
        if not n:
            raise StreamError(
                f"no complete read/write/tx/rx requests to replay{_why(req, columns)}"
            )
        vcpus = None
        if "trap_vcpu" in columns:
            tv = table.select(pl.col("trap_vcpu").null_count().alias("nulls"),
                              pl.col("trap_vcpu").unique().sort().implode().alias("vcpus")).collect()  # fmt: skip
            vcpus = None if tv["nulls"].item() else tv["vcpus"].item().to_numpy()
        # a job per vCPU, unless the workload names another number of jobs (4 processes on
        # one vCPU are 4 jobs); seen: the jobs there are requests of
        by_vcpu = vcpus is not None and (not njobs or njobs == len(vcpus))
        seen = len(vcpus) if by_vcpu else min(n, njobs) if njobs else 1
        pop0 = table.select(pl.col("pop_ns").first()).collect().item()
        pop0 = np.nan if pop0 is None else pop0
        made = _Made(spill)
        depth = _Depth(seen)
        for first, part in parts:
            if by_vcpu:  # (the rank of its vCPU among those seen, as np.unique's inverse)
                job = np.searchsorted(vcpus, part["trap_vcpu"].to_numpy())
            elif njobs:  # jobs unseen: spread round-robin, as fio's jobs interleave
                job = (first + np.arange(len(part))) % njobs
            else:
                job = np.zeros(len(part), np.int64)
            op = part["op"].to_numpy()
            nbytes = part["bytes"].fill_null(0).to_numpy().astype(np.float64)
            pages = np.maximum(1.0, np.ceil(nbytes / 4096))
            pop, fill = part["pop_ns"].to_numpy(), part["fill_ns"].to_numpy()
            if not iodepth:
                depth.add(job, pop, fill)
            io = part["io_ns"].fill_null(0).to_numpy().astype(np.float64)
            device = np.maximum(io - inside_device_interval(source, costs, pages, nbytes), 0.0)
            device[op > OPS.index("write")] = 0.0  # (read and write come first)
            arrival = (pop - pop0).astype(np.float64)
            made.add(op, nbytes, pages, job.astype(np.int64, copy=False), device, arrival)
        depth = max(1, iodepth or depth.best)
        # (of integer ns: the same to the last bit however polars sums them)
        mean = table.select(pl.col("response_ns").drop_nulls().mean()).collect().item()
    op, nbytes, pages, job, device, arrival = made.columns()
    last = float(arrival[n - 1 : n][0])
    return Stream(op, nbytes, pages, job, device, arrival, depth, seen,
                  _think(mean, n, last, depth * seen))  # fmt: skip


def _why(req: pl.LazyFrame, columns: list[str]) -> str:
    """Why a request table gives no stream: its requests and the timeline's commonest
    reason, when it has some."""
    total = req.select(pl.len()).collect().item()
    if not total or "reason" not in columns:
        return ""
    reasons = req.select(pl.col("reason").drop_nulls()).collect().to_series()
    top = reasons.value_counts(sort=True).head(1).rows()
    return f" ({total} requests, none complete; {top[0][1]}: {top[0][0]})" if top else ""


@contextmanager
def _pieces(done: pl.LazyFrame, spill: Path | None):
    """(the requests as a LazyFrame, their pieces as (first row, frame)) in pop order (the
    timeline numbers them so; else sorted, whole): held whole without `spill`, else
    written to a file there and read PIECE_ROWS at a time."""
    path = None
    try:
        if spill is not None:
            path = new_file(spill, "stream-", ".parquet")
            done.sink_parquet(path)
            done = pl.scan_parquet(path)
            pop = done.select(pl.col("pop_ns").null_count().alias("nulls"),
                              (pl.col("pop_ns").diff() < 0).any().alias("back")).collect()  # fmt: skip
            if not (pop["nulls"].item() or pop["back"].item()):
                n = done.select(pl.len()).collect().item()
                yield (
                    done,
                    ((a, done.slice(a, PIECE_ROWS).collect()) for a in range(0, n, PIECE_ROWS)),
                )
                return
        frame = done.collect() if isinstance(done, pl.LazyFrame) else done
        pop = frame["pop_ns"]
        if pop.null_count() or not pop.is_sorted():
            frame = frame.sort("pop_ns", maintain_order=True)
        yield frame.lazy(), [(0, frame)]
    finally:
        if path is not None:
            path.unlink(missing_ok=True)


class _Made:
    """A stream's columns as its pieces are made: held (a list of pieces each), or
    appended to files in `spill`."""

    TYPES = (np.uint8, np.float64, np.float64, np.int64, np.float64, np.float64)

    def __init__(self, spill: Path | None):
        self.spill = spill
        self.store = ([[] for _ in self.TYPES] if spill is None
                      else [DiskColumn(new_file(spill, "stream-", ".col"), t) for t in self.TYPES])  # fmt: skip

    def add(self, *columns: np.ndarray) -> None:
        for store, c in zip(self.store, columns, strict=True):
            store.append(c)

    def columns(self) -> list:
        if self.spill is not None:
            return self.store
        return [p[0] if len(p) == 1 else np.concatenate(p).astype(t, copy=False)
                for p, t in zip(self.store, self.TYPES, strict=True)]  # fmt: skip


class _Depth:
    """The most requests a job had in flight at once, of every job (in_flight_depth per
    job), from the stream's pieces in pop order: each piece swept with its jobs' requests
    of the pieces before that were still open at its first pop (a job's few)."""

    def __init__(self, jobs: int):
        self.best = 0
        self.open: list[tuple[np.ndarray, np.ndarray] | None] = [None] * jobs

    def add(self, job: np.ndarray, pop: np.ndarray, fill: np.ndarray) -> None:
        for j, held in enumerate(self.open):
            m = job == j
            start, end = pop[m], fill[m]
            if held is not None:
                start, end = np.concatenate([held[0], start]), np.concatenate([held[1], end])
            self.best = max(self.best, in_flight_depth(start, end))
            if len(pop):  # open past this piece's last pop (an end not known never closes)
                still = ~(end <= pop[-1])
                self.open[j] = (start[still], end[still])


def response_ns(columns: list[str]) -> pl.Expr:
    """Each request's response time as the host sees it: from the first stamp it has of
    the request (RESPONSE_STARTS) to the last (RESPONSE_ENDS), among the table's `columns`;
    null without either."""
    end = pl.coalesce([c for c in RESPONSE_ENDS if c in columns])
    begin = pl.coalesce([c for c in RESPONSE_STARTS if c in columns])
    return end - begin


def think_time(response: pl.Series, arrival: np.ndarray, inflight: int) -> float:
    """The mean time a job spends between a response and its next request, by the
    response-time law of a closed system (Denning and Buzen 1978: N = X (R + Z)): with N
    requests in flight, throughput X (requests over the span of their arrivals) and mean
    response time R (`response`, response_ns of each request, null where not known), Z =
    N / X - R. Zero for a stream of fewer than two requests, or one that kept its jobs
    saturated."""
    r = response.drop_nulls()
    mean = float(r.mean()) if len(r) else None
    return _think(mean, len(arrival), float(arrival[-1]) if len(arrival) else 0.0, inflight)


def _think(mean_response: float | None, n: int, last_arrival: float, inflight: int) -> float:
    """think_time of `n` requests, the last arriving at `last_arrival` (the first at 0),
    whose mean response time is `mean_response` (None: not known)."""
    if n < 2 or last_arrival <= 0 or mean_response is None:
        return 0.0
    rate = (n - 1) / last_arrival
    return max(inflight / rate - mean_response, 0.0)


def inside_device_interval(
    source: Transport | None, costs, pages, nbytes, *, skip: tuple[str, ...] = ()
) -> np.ndarray:
    """The mean modelled time of the source transport's operations between the backend's
    submission and the device (replay.transports.base.submission), but those named in
    `skip`."""
    if source is None:
        return np.zeros(len(pages))
    path = source.path("block")
    s, d = submission(path)
    total = np.zeros(len(pages))
    for o in (o for o in path[s + 1 : d] if o.name not in skip):  # per operation, vectorized
        ns, sigma = costs[o.cost]
        total += (
            ns * np.exp(sigma**2 / 2) * {"request": 1.0, "page": pages, "byte": nbytes}[o.scale]
        )
    return total
