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

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numba import njit

from xvtrace.replay.costs import SLOWDOWN
from xvtrace.replay.transports.base import RESOURCES, Op, buffers, held

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
    pages,
    nbytes,
    device_ns,
    rng: np.random.Generator,
    out=None,
    *,
    rows: int | None = None,
    factor: np.ndarray | None = None,
) -> np.ndarray:
    """[n, ops] durations: cost per unit x units, with lognormal jitter (median 1), and
    the request's host-wide slowdown (costs.SLOWDOWN: one factor per request, of mean 1, on
    all but the device's time) when its sigma is not 0, then times `factor` (one per
    operation) when given. Written op by op into `out` when given (an array or a
    replay.columns_file table), else into a new array. `pages`, `nbytes`, `device_ns`:
    arrays, or columns read as rows (replay.columns_file); drawn `rows` requests at a time
    (the same numbers: a generator's draws in pieces are its draws at once)."""
    n = len(pages)
    if out is None:
        out = np.empty((len(path), n), dtype=np.float64).T  # stored op by op, as the schedule
    step = max(rows or n, 1)
    parts = [slice(a, min(n, a + step)) for a in range(0, n, step)]

    def units(scale: str, part: slice):
        if scale == "request":
            return 1.0
        if scale == "byte":
            return nbytes[part]
        p = pages[part]
        return buffers(path, p) if scale == "buffer" else p

    for j, o in enumerate(path):  # per operation of the path, not per request
        for part in parts:
            if o.resource == "device":
                out[part, j] = device_ns[part]
                continue
            ns, sigma = costs[o.cost]
            m = part.stop - part.start
            jitter = rng.lognormal(0.0, sigma, m) if sigma > 0 else 1.0
            out[part, j] = ns * units(o.scale, part) * jitter
    common = costs.get(SLOWDOWN, (1.0, 0.0))[1]
    if common <= 0 and factor is None:
        return out
    for part in parts:
        slow = None
        if common > 0:  # mean 1: it spreads, not adds
            slow = rng.lognormal(-(common**2) / 2, common, part.stop - part.start)
        for j, o in enumerate(path):
            d = out[part, j]
            if slow is not None and o.resource != "device":
                d = d * slow
            if factor is not None:
                d = d * factor[j]
            out[part, j] = d
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
    return simulation([path], np.zeros(len(job), np.int64), dur, job, not_before,
                      iodepth=iodepth, njobs=njobs, device_servers=device_servers).run()  # fmt: skip


def simulation(
    paths: list[tuple[Op, ...]],
    path_of: np.ndarray,
    dur: np.ndarray,
    job: np.ndarray,
    not_before: np.ndarray,
    *,
    iodepth: int,
    njobs: int,
    device_servers: int = 8,
    min_idle: float = 0.0,
    think: np.ndarray | None = None,
    window: int | None = None,
) -> Simulation:
    """As run(), with request i following paths[path_of[i]] (e.g. a network job's transmit
    and receive paths; `dur` is padded to the longest path), set up to run: .run() runs it
    all, .advance() some events at a time. vCPU idle stretches of `min_idle` ns or less are
    not noted. `think[i]`: how long request i's job waits after its previous request is
    done before issuing it (a guest's own work between requests; default none). `window`:
    hold the per-operation arrays of about that many requests at a time, not of all
    (Simulation.chunks)."""
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
    return Simulation(res, release, nops, path_of, dur, job, not_before, iodepth=iodepth,
                      njobs=njobs, device_servers=device_servers, min_idle=min_idle,
                      think=think, window=window)  # fmt: skip


class Simulation:
    """The event loop, resumable: advance() runs it some events at a time, so a caller
    can use the requests already done while later ones are still being simulated (the
    emulator writes a chunk of requests as soon as it is final).

    Between calls: `now` is the time of the last event (every operation that starts before
    it has its start, end and wait set, and none is changed again); requests [0, low) are
    done; per job, `remaining` requests are not done and `idle_since` is where its vCPU went
    idle (-1 while busy or before its first operation); an unissued request's issue time is
    +inf. gaps() are the vCPU idle stretches longer than `min_idle` closed so far.

    With a `window`, the per-operation arrays (durations, start, end, wait) and the
    per-request ones (path, job, earliest issue, think time, issue and done times, the next
    request of its job) are a ring of a power of two rows at least that many, request r in
    row r & mask, filled from the caller's arrays as rows free: chunks() runs the loop until
    the next request to issue has no row, hands over the requests done since (whose rows
    are then free) and goes on; a ring too small for the requests in flight doubles. Each
    event happens as without one: the schedule is the same, a chunk at a time.

    One request makes its [request, op] arrays C- as well as F-ordered: numba compiles
    (once, then caches) a second specialization of the kernel for it.
    """

    def __init__(self, res, release, nops, path_of, dur, job, not_before, *, iodepth: int,
                 njobs: int, device_servers: int, min_idle: float = 0.0, think=None,
                 window: int | None = None):  # fmt: skip
        self.min_idle = float(min_idle)
        n, width = dur.shape
        self.n, self.njobs = n, int(njobs)
        self.remaining, firsts = _jobs(job, self.njobs, int(iodepth))
        rows = _ring_rows(window, n, firsts)
        # per request, held whole or a ring of rows read from the caller's (arrays, or
        # columns read as rows: replay.columns_file): what it is given (path, job, earliest
        # issue, think time), its issue and done times, and the next request of its job
        # (each job's requests a list, linked as they get rows)
        self._no_think = think is None  # (every request's is 0)
        think = np.zeros(1) if think is None else think
        self._requests = (path_of, job, not_before, think)
        # durations, held whole or a window of them read from `dur` (F-ordered either way:
        # one compiled kernel, not one per layout)
        self._source = dur
        if rows is None:
            dur = np.asfortranarray(dur if isinstance(dur, np.ndarray) else dur[:n], np.float64)
            given = tuple(np.asarray(a if isinstance(a, np.ndarray) else a[:n], t)
                          for a, t in zip(self._requests, (np.int64, np.int64, np.float64, np.float64),
                                          strict=True))  # fmt: skip
            if self._no_think:
                given = (*given[:3], np.zeros(n))
            self._held_whole = True  # (every request's given is held: nothing to fill)
            self.issue, self.done = np.full(n, np.inf), np.full(n, np.inf)
            self._succ = np.empty(n, np.int64)
        else:
            dur = np.zeros((width, rows)).T
            dur[: min(n, rows)] = self._source[: min(n, rows)]
            given = (np.zeros(rows, np.int64), np.zeros(rows, np.int64), np.zeros(rows),
                     np.zeros(rows))  # fmt: skip
            self._held_whole = False
            self.issue, self.done = np.full(rows, np.inf), np.full(rows, np.inf)
            self._succ = np.empty(rows, np.int64)
        rows = n if rows is None else rows
        # [request, op] indexed, stored op by op: a chunk's column of one op is contiguous
        # (the writers read them so), and so is the truth's
        self.start, self.end, self.wait = (np.zeros((width, rows)).T for _ in range(3))
        # the vCPU is acquired at most once per operation that takes it: that bounds the gaps
        takes = int(max(((res[i, : nops[i]] == VCPU) & (release[i, : nops[i]] >= 0)).sum()
                        for i in range(len(nops))))  # fmt: skip
        self._gaps = np.empty((3, max(1, n * takes)))  # start, end, job
        self.idle_since = np.full(self.njobs, -1.0)
        self._unissued = self.remaining.copy()
        self._head = np.full(self.njobs, -1, np.int64)  # each job's next request to issue
        self._tail = np.full(self.njobs, -1, np.int64)  # and the last with a row
        # heap size, sequence, low, gaps; the ring's mask (all ones: no ring) and the first
        # request with no row
        self._counters = np.array([0, 0, 0, 0, -1 if rows == n else rows - 1, 0], np.int64)
        self.flushed = 0  # requests handed over by chunks()
        self._clock = np.zeros(1)
        inflight = iodepth * self.njobs + 1
        ring = 1 << int(inflight - 1).bit_length()  # the FIFOs: a power of two, masked
        nres = 6 + self.njobs
        self._work = (
            np.zeros(rows),  # ready_at
            np.zeros((len(nops), width)),  # line_end: last end per pure-latency op
            np.zeros(nres, np.int64),  # busy
            np.empty((nres, ring), np.int64),  # FIFO slots
            np.zeros(nres, np.int64),  # FIFO heads
            np.zeros(nres, np.int64),  # FIFO tails
            np.empty(inflight + 16),  # heap: times
            np.empty(inflight + 16, np.int64),  # heap: payloads
            np.empty(inflight + 16, np.int64),  # heap: sequence numbers
        )
        self._given = (res, release, nops, given[0], dur, *given[1:])
        self._cap = np.ones(nres, np.int64)
        self._cap[NONE] = 0  # unlimited
        self._cap[DEVICE] = device_servers
        self._fill(min(n, rows), durations=False)
        _begin(*self._state(), int(iodepth))

    def _state(self):
        return (*self._given, self._succ, self._unissued, self._cap, *self._work, self._head,
                self.issue, self.done, self.start, self.end, self.wait, self.remaining,
                self.idle_since, self._gaps, self._counters, self._clock)  # fmt: skip

    def advance(self, events: int = 1 << 62) -> bool:
        """Run up to `events` more events; True once every request is done."""
        return _advance(*self._state(), self.min_idle, int(events))

    @property
    def now(self) -> float:
        return float(self._clock[0])

    @property
    def low(self) -> int:
        return int(self._counters[2])

    @property
    def closed(self) -> int:
        """How many vCPU idle stretches have closed."""
        return int(self._counters[3])

    def gaps(self, first: int = 0, stop: int | None = None) -> tuple[np.ndarray, ...]:
        """(start, end, job) of the vCPU idle stretches closed so far (or those numbered
        first..stop), in the order they closed: from the release of a job's vCPU with nobody
        waiting to its next take."""
        g = self._gaps[:, first : self.closed if stop is None else stop]
        return g[0], g[1], g[2].astype(np.int64)

    def run(self) -> Schedule:
        """Every event left; the schedule (of a simulation without a window: with one, the
        schedule comes a chunk at a time, chunks())."""
        if self._counters[4] != -1:
            raise ValueError("a simulation with a window runs by chunks()")
        while not self.advance():
            pass
        return self.schedule()

    def schedule(self) -> Schedule:
        if self._counters[4] != -1:
            raise ValueError("a simulation with a window has its schedule by chunks()")
        return Schedule(self.issue, self.done, self.start, self.end, self.wait)

    def chunks(self) -> Iterator[tuple[int, Schedule]]:
        """The schedule a chunk of requests at a time, in order: (first request, its rows'
        Schedule). Without a window, one chunk of every request."""
        if self._counters[4] == -1 and self.flushed == 0:
            yield 0, self.run()
            return
        while True:
            finished = self.advance()
            if self.low > self.flushed:
                yield self._flush()
            elif not finished:  # stopped with no request done since: more rows in flight
                self._grow()
            if finished and self.flushed == self.n:
                return

    def _rows(self, first: int, stop: int) -> np.ndarray | slice:
        if self._counters[4] == -1:  # (no ring: the requests' own rows)
            return slice(first, stop)
        return np.arange(first, stop) & self._counters[4]

    def _flush(self) -> tuple[int, Schedule]:
        a, b = self.flushed, self.low
        at = self._rows(a, b)
        out = Schedule(self.issue[at], self.done[at], self.start[at], self.end[at], self.wait[at])
        self.flushed = b
        self._fill(min(self.n, b + len(self._work[0])))
        return a, out

    def _fill(self, stop: int, durations: bool = True) -> None:
        """Rows for the requests up to `stop`: their durations (unless told they are
        there) and what else is given of them, linked to their jobs' lists; the rest zero."""
        first = int(self._counters[5])
        at = self._rows(first, stop)
        if durations:  # (else the first rows, set up: durations read, the rest fresh)
            self._given[4][at] = self._source[first:stop]
            for a in (self.start, self.end, self.wait, self._work[0]):
                a[at] = 0.0
            self.issue[at], self.done[at] = np.inf, np.inf
        if not self._held_whole:
            held = (self._given[3], *self._given[5:])
            for k, (mine, theirs) in enumerate(zip(held, self._requests, strict=True)):
                if not (k == 3 and self._no_think):
                    mine[at] = theirs[first:stop]
        _link(self._given[5], first, stop, int(self._counters[4]), self._head, self._tail,
              self._succ)  # fmt: skip
        self._counters[5] = stop

    def _grow(self) -> None:
        """Twice the rows, the requests in flight moved to theirs; once that would be as
        many as the requests, a row for each request (no ring: never more than without a
        window)."""
        rows, width = len(self._work[0]) * 2, self.start.shape[1]
        mask = rows - 1
        if rows >= self.n:
            rows, mask = self.n, -1
        live = np.arange(self.flushed, self._counters[5])
        old, new = live & self._counters[4], live & mask

        def grown(a: np.ndarray) -> np.ndarray:
            out = np.zeros((width, rows)).T if a.ndim == 2 else np.zeros(rows, a.dtype)
            out[new] = a[old]
            return out

        self.start, self.end, self.wait = grown(self.start), grown(self.end), grown(self.wait)
        self._given = (*self._given[:3], *map(grown, self._given[3:]))
        self.issue, self.done, self._succ = grown(self.issue), grown(self.done), grown(self._succ)
        self._work = (grown(self._work[0]), *self._work[1:])
        self._counters[4] = mask
        self._held_whole = False
        self._fill(min(self.n, self.flushed + rows))


JOB_ROWS = 1 << 20  # requests' jobs read at a time to count them (_jobs)


def _jobs(job, njobs: int, iodepth: int) -> tuple[np.ndarray, np.ndarray]:
    """Per job, its requests and its min(iodepth, its requests)-th request (-1 for a job of
    none: the last it issues at the start), of `job` (an array, or a column read as rows)
    read JOB_ROWS at a time."""
    count = np.zeros(njobs, np.int64)
    firsts = np.full(njobs, -1, np.int64)
    for a in range(0, len(job), JOB_ROWS):
        part = np.asarray(job[a : a + JOB_ROWS]).astype(np.int64, copy=False)
        if len(part) and (part.min() < 0 or part.max() >= njobs):
            raise ValueError(f"a request's job is not one of the {njobs} jobs")
        _firsts(part, a, count, firsts, iodepth)
    return count, firsts


def _ring_rows(window: int | None, n: int, firsts: np.ndarray) -> int | None:
    """The ring's rows for `window` (a power of two, room for every job's first requests:
    `firsts`, _firsts), or None for none: no window, or one that would hold every request
    anyway."""
    if window is None:
        return None
    need = int(max(window, int(firsts.max(initial=-1)) + 1, 1))
    rows = 1 << (need - 1).bit_length()
    return None if rows >= n else rows


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
def _firsts(job, first, count, out, iodepth):
    """Requests first.. (of jobs `job`) counted per job into `count`; out[j] the job's
    request that is its iodepth-th, or its last so far."""
    for i in range(job.shape[0]):
        j = job[i]
        if count[j] < iodepth:
            out[j] = first + i
        count[j] += 1


@njit(cache=True, nogil=True)
def _link(job, first, stop, mask, head, tail, succ):
    """Requests first..stop (their rows r & mask of `job` and `succ` just filled) put at
    the end of their jobs' lists: `head` a job's next request to issue (-1: none with a
    row), `tail` its last with a row, succ[row] the next of the request's job (-1: none
    with a row yet). A tail is written to only while it waits to issue, so its row is its."""
    for r in range(first, stop):
        i = r & mask
        j = job[i]
        succ[i] = -1
        if head[j] < 0:
            head[j] = r
        else:
            succ[tail[j] & mask] = r
        tail[j] = r


@njit(cache=True, nogil=True)
def _shift(width):
    """payload = request << shift | step: a shift, not a division, per event."""
    shift = 1
    while (1 << shift) < width + 1:
        shift += 1
    return shift


@njit(cache=True, nogil=True)
def _begin(res2, release2, nops_p, path_of, dur, job, not_before, think, succ, unissued, cap,
           ready_at, line_end, busy, qbuf, qhead, qtail, ht, hp, hs, head, issue, done, start,
           end, wait, remaining, idle_since, gaps, counters, clock, iodepth):  # fmt: skip
    """Each job issues its first `iodepth` requests (each has its row: _ring_rows)."""
    shift = _shift(dur.shape[1])
    mask = counters[4]
    size, seq = counters[0], counters[1]
    for j in range(head.shape[0]):
        for _ in range(iodepth):
            if unissued[j] > 0:
                r = head[j]
                i = r & mask
                head[j] = succ[i]
                unissued[j] -= 1
                t = not_before[i]
                issue[i] = t
                size = _push(ht, hp, hs, size, t, r << shift, seq)
                seq += 1
    counters[0], counters[1] = size, seq


@njit(cache=True, nogil=True)
def _advance(res2, release2, nops_p, path_of, dur, job, not_before, think, succ, unissued,
             cap, ready_at, line_end, busy, qbuf, qhead, qtail, ht, hp, hs, head, issue, done,
             start, end, wait, remaining, idle_since, gaps, counters, clock, min_idle,
             events):  # fmt: skip
    """Up to `events` events of the loop; True once none is left. The per-request arrays
    (path_of, job, not_before, think, succ, issue, done) and the per-operation ones (dur,
    start, end, wait, ready_at) hold request r in row r & mask (counters[4]); the loop stops
    before an event that would issue a request at or past counters[5], which has no row
    yet (its job has requests to issue, none of them with a row)."""
    shift = _shift(dur.shape[1])
    low_mask = (1 << shift) - 1
    ring = qbuf.shape[1]
    size, seq, low, ngaps = counters[0], counters[1], counters[2], counters[3]
    mask, limit = counters[4], counters[5]
    now = clock[0]
    while size > 0 and events > 0:
        r = hp[0] >> shift  # the next event: a request done whose job's next has no row?
        if (hp[0] & low_mask) == nops_p[path_of[r & mask]]:
            j = job[r & mask]
            if unissued[j] > 0 and head[j] < 0:
                break
        events -= 1
        now, payload, size = _pop(ht, hp, hs, size)
        r = payload >> shift
        step = payload & low_mask
        i = r & mask
        res = res2[path_of[i]]
        release = release2[path_of[i]]
        nops = nops_p[path_of[i]]
        if step > 0:  # the previous op of r ended: release what it (or earlier ops) held
            for k in range(step):
                if release[k] != step - 1:
                    continue
                pr = res[k]
                rid = 6 + job[i] if pr == 0 else pr
                if cap[rid] > 0:
                    busy[rid] -= 1
                    if qhead[rid] != qtail[rid]:
                        w = qbuf[rid, qhead[rid] & (ring - 1)]
                        qhead[rid] += 1
                        wr = w >> shift
                        ws = w & low_mask
                        wi = wr & mask
                        busy[rid] += 1
                        start[wi, ws] = now
                        wait[wi, ws] = now - ready_at[wi]
                        end[wi, ws] = now + dur[wi, ws]
                        size = _push(ht, hp, hs, size, end[wi, ws], (wr << shift) + ws + 1, seq)
                        seq += 1
                    elif pr == VCPU:  # nobody waits: the vCPU goes idle
                        idle_since[job[i]] = now
        if step == nops:
            done[i] = now
            j = job[i]
            remaining[j] -= 1
            while low < limit and done[low & mask] < np.inf:
                low += 1
            if unissued[j] > 0:
                r2 = head[j]
                i2 = r2 & mask
                head[j] = succ[i2]
                unissued[j] -= 1
                t = max(now + think[i2], not_before[i2])
                issue[i2] = t
                size = _push(ht, hp, hs, size, t, r2 << shift, seq)
                seq += 1
            continue
        pr = res[step]
        rid = 6 + job[i] if pr == 0 else pr
        ready_at[i] = now
        if release[step] == -1:  # an earlier op of r still holds this resource (a blocked vCPU)
            start[i, step] = now
            end[i, step] = now + dur[i, step]
            size = _push(ht, hp, hs, size, end[i, step], (r << shift) + step + 1, seq)
            seq += 1
        elif cap[rid] == 0 or busy[rid] < cap[rid]:
            if cap[rid] > 0:
                busy[rid] += 1
                if pr == VCPU and idle_since[job[i]] >= 0:  # the vCPU's idle stretch closes
                    if now - idle_since[job[i]] > min_idle:
                        gaps[0, ngaps] = idle_since[job[i]]
                        gaps[1, ngaps] = now
                        gaps[2, ngaps] = job[i]
                        ngaps += 1
                    idle_since[job[i]] = -1.0
            start[i, step] = now
            end[i, step] = now + dur[i, step]
            if pr == NONE:  # a notification path delivers in order: no overtaking
                p = path_of[i]
                if end[i, step] <= line_end[p, step]:  # held back: 1 ns behind, in order
                    end[i, step] = line_end[p, step] + 1.0
                    start[i, step] = end[i, step] - dur[i, step]
                    wait[i, step] = start[i, step] - ready_at[i]
                line_end[p, step] = end[i, step]
            size = _push(ht, hp, hs, size, end[i, step], (r << shift) + step + 1, seq)
            seq += 1
        else:
            qbuf[rid, qtail[rid] & (ring - 1)] = (r << shift) + step
            qtail[rid] += 1
    counters[0], counters[1], counters[2], counters[3] = size, seq, low, ngaps
    clock[0] = now
    return size == 0
