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

from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from xvtrace.parsers.errors import XvtraceError
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


def from_requests(
    req: pl.DataFrame | pl.LazyFrame,
    *,
    source: Transport | None,
    costs: dict[str, tuple[float, float]],
    iodepth: int | None = None,
    njobs: int | None = None,
) -> Stream:
    """The stream of `req`'s complete requests (a LazyFrame: only they are read). `source`
    is the transport the capture ran on (None: unknown, nothing is taken out of the device
    interval); `iodepth` and `njobs` the workload's, when known (else measured: see the
    module doc)."""
    req = req.lazy()
    columns = req.collect_schema().names()
    missing = [c for c in NEEDED if c not in columns]
    if missing:
        raise StreamError(f"request table lacks column(s) {', '.join(missing)}")
    # only what the stream is made of, each operation as its number in OPS: the request
    # table's columns whole (a string per request) held 1.2 GB at 5 M requests
    done = (
        req.filter(pl.col("complete") & pl.col("op").is_in(OPS))
        .select(
            pl.col("op").replace_strict(OPS, range(len(OPS)), return_dtype=pl.UInt8),
            "bytes", "pop_ns", "fill_ns", "io_ns",
            *(["trap_vcpu"] if "trap_vcpu" in columns else []),
            response_ns(columns).alias("response_ns"),
        )
        .collect()
    )  # fmt: skip
    pop = done["pop_ns"]
    if pop.null_count() or not pop.is_sorted():  # (the timeline numbers them in pop order)
        done = done.sort("pop_ns", maintain_order=True)
    if not len(done):
        why = ""
        total = req.select(pl.len()).collect().item()
        if total and "reason" in columns:  # the timeline's reasons, the commonest first
            reasons = req.select(pl.col("reason").drop_nulls()).collect().to_series()
            top = reasons.value_counts(sort=True).head(1).rows()
            why = f" ({total} requests, none complete; {top[0][1]}: {top[0][0]})" if top else ""
        raise StreamError(f"no complete read/write/tx/rx requests to replay{why}")
    vcpus = None
    if "trap_vcpu" in done.columns and done["trap_vcpu"].null_count() == 0:
        vcpus, vcpu_job = np.unique(done["trap_vcpu"].to_numpy(), return_inverse=True)
    # a job per vCPU, unless the workload names another number of jobs (4 processes on one
    # vCPU are 4 jobs)
    if vcpus is not None and (not njobs or njobs == len(vcpus)):
        job = vcpu_job
    elif njobs:  # jobs unseen: spread round-robin, as fio's jobs interleave
        job = np.arange(len(done)) % njobs
    else:
        job = np.zeros(len(done), np.int64)
    op = done["op"].to_numpy()
    nbytes = done["bytes"].fill_null(0).to_numpy().astype(np.float64)
    pages = np.maximum(1.0, np.ceil(nbytes / 4096))
    pop, fill = done["pop_ns"].to_numpy(), done["fill_ns"].to_numpy()
    seen = int(job.max()) + 1
    depth = iodepth or max(in_flight_depth(pop[job == j], fill[job == j]) for j in range(seen))
    io = done["io_ns"].fill_null(0).to_numpy().astype(np.float64)
    device = np.maximum(io - inside_device_interval(source, costs, pages, nbytes), 0.0)
    device[op > OPS.index("write")] = 0.0  # (read and write come first)
    arrival = (pop - pop[0]).astype(np.float64)
    return Stream(op, nbytes, pages, job.astype(np.int64, copy=False), device, arrival,
                  max(1, depth), seen,
                  think_time(done["response_ns"], arrival, max(1, depth) * seen))  # fmt: skip


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
    if len(arrival) < 2 or arrival[-1] <= 0:
        return 0.0
    r = response.drop_nulls()
    if not len(r):
        return 0.0
    rate = (len(arrival) - 1) / float(arrival[-1])
    return max(inflight / rate - float(r.mean()), 0.0)


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
