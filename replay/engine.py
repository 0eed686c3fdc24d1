"""Discrete-event execution of request paths with contention: the core the emulator (and the
replayer) run every request through.

Each request walks its transport's operations in order. An operation holds a resource while
it runs: the guest vCPU its job runs on, the backend thread, a separate backend process, the
device (several servers), the hypervisor's copy engine, or nothing (pure latency). A busy
resource queues requests first come, first served. A pure latency (no resource: an event
channel or IOREQ notification on its way) delivers in order: a request does not overtake
the one before it on the same step. Jobs are fio-like: each keeps `iodepth`
requests outstanding (closed loop), optionally paced to a rate.

The event loop is the one sequential part (a request's start depends on every earlier
completion); it is a numba kernel over preallocated arrays with its own binary heap, so a
million requests of a dozen operations take seconds. Durations are drawn beforehand with
numpy, so results are a pure function of the inputs and the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from xvtrace.replay.transports.base import RESOURCES, Op, held

RES_INDEX = {r: i for i, r in enumerate(RESOURCES)}
NONE = RES_INDEX["none"]
VCPU = RES_INDEX["vcpu"]
DEVICE = RES_INDEX["device"]


@dataclass
class Schedule:
    """Per request: when it was issued and when it completed, and per operation its start
    and end (ns from the start of the run)."""

    issue: np.ndarray  # f8 [n]
    done: np.ndarray  # f8 [n]
    start: np.ndarray  # f8 [n, ops]
    end: np.ndarray  # f8 [n, ops]
    wait: np.ndarray  # f8 [n, ops] time spent queued for the op's resource


def durations(
    path: tuple[Op, ...],
    costs: dict[str, tuple[float, float]],
    pages: np.ndarray,
    nbytes: np.ndarray,
    device_ns: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """[n, ops] durations: cost per unit x units, with lognormal jitter (median 1)."""
    n = len(pages)
    out = np.empty((n, len(path)), dtype=np.float64)
    for j, o in enumerate(path):  # per operation of the path, not per request
        if o.resource == "device":
            out[:, j] = device_ns
            continue
        ns, sigma = costs[o.cost]
        units = {"request": 1.0, "page": pages, "byte": nbytes}[o.scale]
        jitter = rng.lognormal(0.0, sigma, n) if sigma > 0 else 1.0
        out[:, j] = ns * units * jitter
    return out


def run(
    path: tuple[Op, ...],
    dur: np.ndarray,
    job: np.ndarray,
    not_before: np.ndarray,
    *,
    iodepth: int,
    njobs: int,
    device_servers: int = 8,
) -> Schedule:
    """Run requests (in issue order per job) through `path`; `job[i]` is request i's job,
    `not_before[i]` its earliest issue time (rate pacing; 0 for as fast as possible)."""
    return run_paths([path], np.zeros(len(job), np.int64), dur, job, not_before,
                     iodepth=iodepth, njobs=njobs, device_servers=device_servers)  # fmt: skip


def run_paths(
    paths: list[tuple[Op, ...]],
    path_of: np.ndarray,
    dur: np.ndarray,
    job: np.ndarray,
    not_before: np.ndarray,
    *,
    iodepth: int,
    njobs: int,
    device_servers: int = 8,
) -> Schedule:
    """As run(), with request i following paths[path_of[i]] (e.g. a network job's transmit
    and receive paths); `dur` is padded to the longest path."""
    width = max(len(p) for p in paths)
    res = np.full((len(paths), width), RES_INDEX["none"], dtype=np.int64)
    release = np.zeros((len(paths), width), dtype=np.int64)
    nops = np.array([len(p) for p in paths], dtype=np.int64)
    for i, path in enumerate(paths):
        names = [o.name for o in path]
        inside = held(path)
        for k, o in enumerate(path):
            res[i, k] = RES_INDEX[o.resource]
            # the op whose end frees op k's resource (itself unless it holds on)
            until = names.index(o.hold_until) if o.hold_until else k
            if until < k:
                raise ValueError("hold_until must name a later operation of the same path")
            # -1: op k runs on a resource an earlier op holds (base.held): it neither takes
            # nor frees it
            release[i, k] = -1 if k in inside else until
    issue, done, start, end, wait = _simulate(
        res, release, nops, path_of.astype(np.int64), dur, job.astype(np.int64),
        not_before.astype(np.float64), int(iodepth), int(njobs), int(device_servers),
    )  # fmt: skip
    return Schedule(issue, done, start, end, wait)


# --- the kernel -------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _push(ht, hp, hs, size, t, payload, seq):
    i = size
    ht[i], hp[i], hs[i] = t, payload, seq
    while i > 0:
        parent = (i - 1) >> 1
        if ht[parent] < ht[i] or (ht[parent] == ht[i] and hs[parent] <= hs[i]):
            break
        ht[i], ht[parent] = ht[parent], ht[i]
        hp[i], hp[parent] = hp[parent], hp[i]
        hs[i], hs[parent] = hs[parent], hs[i]
        i = parent
    return size + 1


@njit(cache=True, nogil=True)
def _pop(ht, hp, hs, size):
    t, payload = ht[0], hp[0]
    size -= 1
    ht[0], hp[0], hs[0] = ht[size], hp[size], hs[size]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= size:
            break
        c = left
        right = left + 1
        if right < size and (
            ht[right] < ht[left] or (ht[right] == ht[left] and hs[right] < hs[left])
        ):
            c = right
        if ht[i] < ht[c] or (ht[i] == ht[c] and hs[i] <= hs[c]):
            break
        ht[i], ht[c] = ht[c], ht[i]
        hp[i], hp[c] = hp[c], hp[i]
        hs[i], hs[c] = hs[c], hs[i]
        i = c
    return t, payload, size


@njit(cache=True, nogil=True)
def _simulate(
    res2, release2, nops_p, path_of, dur, job, not_before, iodepth, njobs, device_servers
):
    n, width = dur.shape
    issue = np.zeros(n, np.float64)
    done = np.zeros(n, np.float64)
    start = np.zeros((n, width), np.float64)
    end = np.zeros((n, width), np.float64)
    wait = np.zeros((n, width), np.float64)
    ready_at = np.zeros(n, np.float64)
    line_end = np.zeros((len(nops_p), width), np.float64)  # last end per pure-latency op
    shift = 1  # payload = request << shift | step: a shift, not a division, per event
    while (1 << shift) < width + 1:
        shift += 1
    stride = 1 << shift
    low = stride - 1
    # resources: vcpu per job; the others shared. capacity 0 = unlimited.
    nres = 6 + njobs
    cap = np.ones(nres, np.int64)
    cap[5] = 0  # none
    cap[3] = device_servers
    busy = np.zeros(nres, np.int64)
    # At most iodepth x njobs requests are in flight, each with one pending event or one
    # place in a queue: that bounds the heap and the FIFO ring buffers.
    inflight = iodepth * njobs + 1
    ring = 1  # the FIFOs' size: a power of two, indexed by a mask
    while ring < inflight:
        ring <<= 1
    qbuf = np.empty((nres, ring), np.int64)
    qhead = np.zeros(nres, np.int64)
    qtail = np.zeros(nres, np.int64)
    cap_heap = inflight + 16
    ht = np.empty(cap_heap, np.float64)
    hp = np.empty(cap_heap, np.int64)
    hs = np.empty(cap_heap, np.int64)
    size = 0
    seq = 0
    # per-job request lists in order
    counts = np.zeros(njobs, np.int64)
    for i in range(n):
        counts[job[i]] += 1
    offs = np.zeros(njobs + 1, np.int64)
    for j in range(njobs):
        offs[j + 1] = offs[j] + counts[j]
    order = np.empty(n, np.int64)
    fill = offs[:-1].copy()
    for i in range(n):
        order[fill[job[i]]] = i
        fill[job[i]] += 1
    nxt = offs[:-1].copy()  # next request to issue per job
    for j in range(njobs):
        for _ in range(iodepth):
            if nxt[j] < offs[j + 1]:
                r = order[nxt[j]]
                nxt[j] += 1
                t = not_before[r]
                issue[r] = t
                size = _push(ht, hp, hs, size, t, r * stride, seq)
                seq += 1
    while size > 0:
        now, payload, size = _pop(ht, hp, hs, size)
        r = payload >> shift
        step = payload & low
        res = res2[path_of[r]]
        release = release2[path_of[r]]
        nops = nops_p[path_of[r]]
        if step > 0:  # the previous op of r ended: release what it (or earlier ops) held
            for k in range(step):
                if release[k] != step - 1:
                    continue
                pr = res[k]
                rid = 6 + job[r] if pr == 0 else pr
                if cap[rid] > 0:
                    busy[rid] -= 1
                    if qhead[rid] != qtail[rid]:
                        w = qbuf[rid, qhead[rid] & (ring - 1)]
                        qhead[rid] += 1
                        wr = w >> shift
                        ws = w & low
                        busy[rid] += 1
                        start[wr, ws] = now
                        wait[wr, ws] = now - ready_at[wr]
                        end[wr, ws] = now + dur[wr, ws]
                        size = _push(ht, hp, hs, size, end[wr, ws], wr * stride + ws + 1, seq)
                        seq += 1
        if step == nops:
            done[r] = now
            j = job[r]
            if nxt[j] < offs[j + 1]:
                r2 = order[nxt[j]]
                nxt[j] += 1
                t = max(now, not_before[r2])
                issue[r2] = t
                size = _push(ht, hp, hs, size, t, r2 * stride, seq)
                seq += 1
            continue
        pr = res[step]
        rid = 6 + job[r] if pr == 0 else pr
        ready_at[r] = now
        if release[step] == -1:  # an earlier op of r still holds this resource (a blocked vCPU)
            start[r, step] = now
            end[r, step] = now + dur[r, step]
            size = _push(ht, hp, hs, size, end[r, step], r * stride + step + 1, seq)
            seq += 1
        elif cap[rid] == 0 or busy[rid] < cap[rid]:
            if cap[rid] > 0:
                busy[rid] += 1
            start[r, step] = now
            end[r, step] = now + dur[r, step]
            if pr == NONE:  # a notification path delivers in order: no overtaking
                p = path_of[r]
                if end[r, step] <= line_end[p, step]:  # held back: 1 ns behind, in order
                    end[r, step] = line_end[p, step] + 1.0
                    start[r, step] = end[r, step] - dur[r, step]
                    wait[r, step] = start[r, step] - ready_at[r]
                line_end[p, step] = end[r, step]
            size = _push(ht, hp, hs, size, end[r, step], r * stride + step + 1, seq)
            seq += 1
        else:
            qbuf[rid, qtail[rid] & (ring - 1)] = r * stride + step
            qtail[rid] += 1
    return issue, done, start, end, wait
