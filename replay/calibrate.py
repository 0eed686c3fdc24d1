"""Fit the cost table to a capture: per-operation costs from the intervals the capture
measured, with confidence intervals, and the costs it could not constrain.

The reconstructed request table (xvtrace.timeline) has timestamps that mark known points of
the source transport's request path (`anchors`: QEMU's virtqueue_pop is the backend pop's
start, its virtio_blk_handle_* the submission, its virtio_notify the push's end, the re-entry
after the kick's IOREQ the IOREQ completion's end, a virtio-mmio ISR's trap exits and entries
its two traps, ...). Between two consecutive anchors lie some of the path's
operations, and the interval measures their time plus any queueing for their resources.

The fit runs the captured stream through the path with the discrete-event engine (the
replay's own, so queueing is modelled, not assumed absent), reads the same intervals off
the simulated schedule, stamped with the capture's clock ticks, and scales each group's
operations until the simulated mean matches the measured one: the interval is the group's
operations (linear in its factor) plus the queueing the engine simulates, so each round
solves for the factor given the simulated queueing (damped). An interval that is mostly
queueing (its operations under half of it) is not fitted: its costs would only absorb the
queueing's noise; nor is a group whose factor has not settled after the rounds. Standard
errors from batch means of the measured and of the simulated intervals (neighbours queue
alike, so they are not independent) give each factor's 95 % interval; an interval with one
end on each clock (hypervisor and device model) also carries the alignment's bounds.

Each group also gets its jitter (the lognormal sigma of its operations): scaled until the
simulated intervals' spread (log p90/p50) matches the measured one; and the capture its
host's slowdown (costs.SLOWDOWN: one factor per request on all its steps), until the spread
of the fitted intervals' sum matches: a real host's steps of one request are slow together,
which independent jitters cannot give (on the nested-TCG test host the means alone put the
whole request's p90 40-55 % short).

A cost is constrained only when its operation lies between two anchors; the device's time is
not fitted (replay takes it from the capture), and the operations of one interval share one
factor (their split within it stays the table's). Intervals whose operations share a cost
key are fitted together, since a key is one number in the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import polars as pl

from xvtrace.parsers.schema import timestamp_tick
from xvtrace.replay.costs import SLOWDOWN
from xvtrace.replay.execute import schedule
from xvtrace.replay.stream import Stream
from xvtrace.replay.transports.base import Transport, submission

SAMPLE = 20_000  # requests simulated, at most
REPLICAS = 4  # engine runs per fit round, pooled (queueing makes one run noisy)
BATCHES = 20
MIN_SHARE = 0.5  # the operations must be at least half of their intervals to be fitted
MIN_REQUESTS = 20
ITERATIONS = 30
TOLERANCE = 1e-3


KICKS = ("mmio_notify", "pci_notify", "vmcall_evtchn", "vmcall_argo")  # a guest's notification
RESPONSES = ("pv_evtchn", "pv_argo", "irq_dm_op")  # the backend domain's answer
INTERRUPTS = ("guest_upcall", "guest_irq")  # the guest's interrupt
ISR_TRAP_COLUMNS = {  # a virtio-mmio ISR's two traps, their timeline columns (ioreq_join)
    "mmio_isr_status": ("isr_read_trap_exit_ns", "isr_read_trap_entry_ns"),
    "mmio_isr_ack": ("ack_trap_exit_ns", "ack_trap_entry_ns"),
}


def anchors(path, view: str = "device-model") -> dict[str, tuple[int, str]]:
    """Timeline column -> (operation index in `path`, "start" or "end") for the points of
    the path the timeline's columns mark, in the timeline's `view` (xvtrace.timeline):
    QEMU's events in the device-model view; in the hypervisor view the block layer's issue
    and completion, the response hypercall (its fill_ns) and the interrupt injection; in the
    block view the backend's wake-up (kick_ns), the issue, the completion and the guest's
    wake-up (notify_ns)."""
    names = [o.name for o in path]
    s, d = submission(path)
    out = {"io_done_ns": (d, "end")}
    for k, o in enumerate(path):
        if o.emits in KICKS and "trap_exit_ns" not in out:
            out["trap_exit_ns"] = (k, "start")
            out["trap_entry_ns"] = (names.index(o.hold_until) if o.hold_until else k, "end")
        if o.emits in ISR_TRAP_COLUMNS:
            exit_, entry = ISR_TRAP_COLUMNS[o.emits]
            out[exit_], out[entry] = (k, "start"), (k, "end")
    if view == "block":  # dom0's block layer: a PV guest's kick as its backend's interrupt,
        # its interrupt as its vCPU's wake-up (timeline.hypervisor.pv_edges)
        for k, o in enumerate(path):
            if o.emits == "backend_wake" and k < d:
                out["kick_ns"] = (k, "end")
            if o.emits in RESPONSES and k > d and "fill_ns" not in out:
                out["fill_ns"] = (k, "start")  # the response probe (else the completion)
            if o.emits in INTERRUPTS and k > d and "notify_ns" not in out:
                out["notify_ns"] = (k, "start")
    if view == "hypervisor":
        out["submit_ns"] = (s, "end")  # block_rq_insert: the backend hands it to the device
        out["handle_ns"] = (d, "start")
        for k, o in enumerate(path):
            if o.emits in RESPONSES and k > d and "fill_ns" not in out:
                out["fill_ns"] = (k, "start")
            if o.emits in INTERRUPTS and k > d and "notify_ns" not in out:
                out["notify_ns"] = (k, "start")
        return out
    out["handle_ns"] = (s, "end")
    if "backend_pop" in names:
        out["pop_ns"] = (names.index("backend_pop"), "start")
    if "backend_push" in names:
        out["fill_ns"] = (names.index("backend_push"), "start")
        out["notify_ns"] = (names.index("backend_push"), "end")  # QEMU's virtio_notify
    # a vhost-user back-end's process (timeline.vhost_user): awake for the front-end's kick,
    # and its call read by the front-end
    if "frontend_kick" in names:  # (the front-end logs the kick as it writes the eventfd)
        out["kick_ns"] = (names.index("frontend_kick"), "start")
        out["vu_kick_ns"] = (names.index("frontend_kick"), "end")
    if "call_eventfd" in names:
        out["vu_call_ns"] = (names.index("call_eventfd"), "end")
    return out


@dataclass
class Group:
    """Operations fitted with one factor: those between the anchors of one or more
    intervals, merged when they share a cost key (a key is one number in the table)."""

    intervals: list[tuple[str, str]]  # timeline columns bounding each measured interval
    ops: tuple[int, ...]  # indices of the path's operations inside them
    keys: frozenset[str]
    requests: int
    factor: float = 1.0
    low: float = 1.0  # 95 % interval of the factor
    high: float = 1.0
    sigma: float | None = None  # the operations' fitted jitter (lognormal sigma); None: the table's

    @property
    def interval(self) -> str:
        return "; ".join(f"{a} -> {b}" for a, b in self.intervals)


def fit(
    req: pl.DataFrame,
    stream: Stream,
    transport: Transport,
    costs: dict[str, tuple[float, float]],
    *,
    seed: int = 0,
    clock_halfwidth_ns: float = 0.0,
) -> list[Group]:
    """The fitted groups of the block path of `transport` from the complete block requests
    of `req` (columns named by `anchors`) and their `stream`. `clock_halfwidth_ns`: half
    the width of the hypervisor/device-model alignment bounds (the trap_* columns are
    hypervisor times)."""
    path = transport.path("block")
    blk = block_requests(req)
    marks = observed_marks(blk, path)
    spans = []  # (columns, ops, measured intervals, anchors, clock ticks)
    for (b0, _, c0, a0), (b1, _, c1, a1) in pairwise(marks):  # a few intervals
        ops = tuple(range(b0, b1))
        if not ops or any(path[k].resource == "device" for k in ops):
            continue
        if out_of_order(blk, c0, c1, [c for *_, c, _ in marks if c not in (c0, c1)]):
            continue  # the capture's backend did these steps in another order than the path
        own = _own_notify(blk, [c1])
        m = (own[c1] - own[c0]).drop_nulls().to_numpy().astype(np.float64)
        if len(m) >= MIN_REQUESTS:
            tk = [timestamp_tick(blk[c].drop_nulls().to_numpy()) for c in (c0, c1)]
            spans.append(((c0, c1), ops, m, (a0, a1), tk))
    sub = block_sample(stream)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 1000, len(sub))  # clock phases of the simulated stamps
    # an interval that is mostly queueing says little about its operations' costs (and
    # fitting it would only chase the queueing's noise): keep those whose operations are
    # at least half of it with the table's costs
    first = schedule(sub, transport, costs, seed=seed)[2]
    spans = [sp for sp in spans if _share(first, sp) >= MIN_SHARE]
    groups = _merge(spans, path)
    if not groups:
        return []
    members = [[i for i, sp in enumerate(spans) if set(sp[1]) <= set(g.ops)] for g in groups]
    scale = np.ones(len(path))
    stats = [None] * len(groups)
    moved = [1.0] * len(groups)
    for g in groups:  # the spread starts at the table's (one jitter per group, as one factor)
        g.sigma = float(np.mean([costs[k][1] for k in g.keys]))
    # the whole request, first mark to last: its spread beyond its steps' is the host's
    # slowdown of every step of a request together (costs.SLOWDOWN)
    whole = _whole(blk, spans)
    slowdown = (
        Group([c for c, *_ in spans], (), frozenset({SLOWDOWN}), len(whole[0])) if whole else None
    )
    if slowdown:
        slowdown.sigma = max(costs.get(SLOWDOWN, (1.0, 0.0))[1], SIGMA_BOUNDS[0])
    # a fixed point, each round REPLICAS engine runs: factors and spreads together, then (if
    # they have not settled) the factors alone with the spreads kept, as before spreads
    for rnd in range(2 * ITERATIONS):
        spreading = rnd < ITERATIONS
        jittered = costs | {k: (costs[k][0], g.sigma) for g in groups for k in g.keys}
        if slowdown:
            jittered[SLOWDOWN] = (1.0, slowdown.sigma)
        runs = [schedule(sub, transport, jittered, seed=seed + r, scale={"block": scale})[2]
                for r in range(REPLICAS)]  # fmt: skip
        worst = 0.0
        if slowdown and spreading:
            m, parts = whole
            sim = np.concatenate([
                sum(_stamp(phase, at(sc, a0), at(sc, a1), tk) for (a0, a1), tk in parts)
                for sc in runs
            ])  # fmt: skip
            sigma = _fitted_sigma(slowdown.sigma, [m], [sim])
            worst, slowdown.sigma = abs(sigma - slowdown.sigma), sigma
        for gi, g in enumerate(groups):
            total = ops = 0.0
            sims = []
            for i in members[gi]:
                _, span_ops, _, (a0, a1), tk = spans[i]
                sim = [_stamp(phase, at(sc, a0), at(sc, a1), tk) for sc in runs]
                sims.append(np.concatenate(sim))
                total += np.mean([x.mean() for x in sim])
                ops += np.mean([_work(sc, span_ops) for sc in runs])
            measured = sum(spans[i][2].mean() for i in members[gi])
            stats[gi] = (total, ops, sims)
            # the intervals are the ops (linear in the factor) plus the simulated queueing
            new = g.factor * (measured - (total - ops)) / ops if ops > 0 else g.factor
            new = float(np.sqrt(g.factor * np.clip(new, g.factor / 2, g.factor * 2)))  # damped
            moved[gi] = abs(new / g.factor - 1)
            sigma = (
                _fitted_sigma(g.sigma, [spans[i][2] for i in members[gi]], sims)
                if spreading
                else g.sigma
            )
            worst = max(worst, moved[gi], abs(sigma - g.sigma))
            g.factor, g.sigma = new, sigma
            scale[[k for k, o in enumerate(path) if o.cost in g.keys]] = g.factor
        if worst < TOLERANCE:
            break
    out = []
    for gi, g in enumerate(groups):
        total, ops, sims = stats[gi]
        if moved[gi] > 10 * TOLERANCE:  # still moving: the capture does not pin it down
            continue
        # factor = (measured - simulated queueing) / operations: its error is that of both
        # means, relative to the operations. Queueing makes neighbouring intervals alike,
        # so standard errors come from batch means
        se = sum(_batch_se(spans[i][2]) for i in members[gi]) + sum(
            _batch_se(x) / np.sqrt(REPLICAS) for x in sims
        )
        rel = se / ops
        low, high = g.factor * (1 - 1.96 * rel), g.factor * (1 + 1.96 * rel)
        crossing = sum(("trap_" in a) != ("trap_" in b) for a, b in g.intervals)
        widen = g.factor * crossing * clock_halfwidth_ns / ops  # one end on each clock
        g.low, g.high = float(max(low - widen, 0.0)), float(high + widen)
        out.append(g)
    return out + ([slowdown] if out and slowdown else [])


def _own_notify(blk: pl.DataFrame, ends: list[str]) -> pl.DataFrame:
    """`blk` without the requests whose notification answered others too (a batch,
    EVENT_IDX) when an interval ends at it: such an interval holds the others' work."""
    return blk.filter(pl.col("notify_ns").is_unique()) if "notify_ns" in ends else blk


def _whole(blk: pl.DataFrame, spans) -> tuple | None:
    """The host's part of each request: the sum of the fitted intervals (the device's time
    left out: its spread is the capture's own) for the requests that have them all, as
    (measured sums, [(anchors, clock ticks)] per interval); None with fewer than
    MIN_REQUESTS, or a single interval (its spread is its own group's)."""
    if len(spans) < 2:
        return None
    # (a missing stamp makes the sum null, not shorter; a notification shared by several
    # requests holds the others' work, as in `fit`)
    own = _own_notify(blk, [c1 for (_, c1), *_ in spans])
    total = pl.sum_horizontal((pl.col(c1) - pl.col(c0) for (c0, c1), *_ in spans),
                              ignore_nulls=False)  # fmt: skip
    m = own.select(total.alias("m")).drop_nulls()["m"].to_numpy().astype(np.float64)
    if len(m) < MIN_REQUESTS:
        return None
    return m, [(anchor, tk) for _, _, _, anchor, tk in spans]


SIGMA_BOUNDS = (0.05, 1.5)  # a fitted jitter: from near-constant to a p90 7x the median


def spread(x: np.ndarray) -> float:
    """How far an interval's slow requests lie from its typical one: log(p90 / p50)."""
    p50, p90 = np.percentile(x, [50, 90])
    return float(np.log(p90 / p50)) if p50 > 0 and p90 > p50 else 0.0


def _fitted_sigma(sigma: float, measured: list[np.ndarray], simulated: list[np.ndarray]) -> float:
    """The group's jitter for the next round: its sigma scaled by how much wider the
    measured intervals are than the simulated ones at the tail (log p90/p50, averaged over
    the group's intervals in log space), damped like the factor. A real host's interval is
    not the table's near-constant cost: under load or nested virtualization its p90 lies at
    2-4x its p50, and a model fitted on means alone put every p90 40-55 % short."""
    ratios = [spread(m) / spread(x) for m, x in zip(measured, simulated, strict=True)
              if spread(m) > 0 and spread(x) > 0]  # fmt: skip
    if not ratios:
        return sigma
    new = sigma * float(np.exp(np.mean(np.log(ratios))))
    new = float(np.sqrt(sigma * np.clip(new, sigma / 2, sigma * 2)))
    return float(np.clip(new, *SIGMA_BOUNDS))


def block_requests(req: pl.DataFrame) -> pl.DataFrame:
    """The complete reads and writes of a request table: what calibration fits."""
    return req.filter(pl.col("complete") & pl.col("op").is_in(["read", "write"]))


def observed_marks(blk: pl.DataFrame, path) -> list[tuple[int, bool, str, tuple[int, str]]]:
    """The anchors (`anchors`) the requests `blk` have stamps for, in path order: (boundary,
    is a start, timeline column, anchor). At one boundary an operation's end comes before
    the next one's start (a queue lies between them)."""
    view = blk["view"][0] if "view" in blk.columns and len(blk) else "device-model"
    marks = anchors(path, view)
    have = [c for c in marks if c in blk.columns and blk[c].null_count() < len(blk)]
    # a column that only stands in for another (the block view's fill without the response
    # probe is the completion) marks no point of its own
    same = {c for i, c in enumerate(have) for o in have[:i] if blk[c].equals(blk[o])}
    return sorted(
        (_boundary(a), a[1] == "start", c, a)
        for c, a in marks.items()
        if c in have and c not in same
    )


def at(sched, anchor: tuple[int, str]) -> np.ndarray:
    """Each request's time at an anchor of its path in an engine schedule."""
    k, where = anchor
    return sched.start[:, k] if where == "start" else sched.end[:, k]


def out_of_order(blk: pl.DataFrame, c0: str, c1: str, others: list[str]) -> bool:
    """Whether, for most requests with both ends, c1 comes before c0 or another anchor lies
    inside c0..c1: the path puts them the other way, so the interval measures other
    operations than the path's (a backend that completes the kick's IOREQ only after the
    I/O, or before its pop)."""
    both = blk.filter(pl.col(c0).is_not_null() & pl.col(c1).is_not_null())
    if len(both) < MIN_REQUESTS:
        return False  # too few to tell: the fit's own minimum decides
    share = [float((both[c1] < both[c0]).mean())]
    for c in others:
        inside = ((both[c0] < both[c]) & (both[c] < both[c1])).fill_null(False)
        share.append(float(inside.mean()))
    return max(share) > 0.5


def _share(sched, span) -> float:
    """The part of a simulated interval its operations take (the rest is queueing)."""
    _, ops, _, (a0, a1), _ = span
    total = (at(sched, a1) - at(sched, a0)).mean()
    return float(_work(sched, ops) / total) if total > 0 else 0.0


def _work(sched, ops, rows=slice(None)) -> float:
    """Mean time per request (of `rows`, else all) the operations `ops` ran (not queued)
    in a schedule."""
    ops = list(ops)
    return float((sched.end[rows][:, ops] - sched.start[rows][:, ops]).sum(axis=1).mean())


def _merge(spans, path) -> list[Group]:
    """Groups of intervals whose operations share cost keys (union by key)."""
    groups: list[Group] = []
    for cols, ops, m, _, _ in spans:
        keys = frozenset(path[k].cost for k in ops)
        hit = [g for g in groups if g.keys & keys]
        for g in hit:
            groups.remove(g)
        merged = Group(
            [*(c for h in hit for c in h.intervals), cols],
            tuple(sorted({*ops, *(k for h in hit for k in h.ops)})),
            keys.union(*(h.keys for h in hit)),
            min([len(m), *(h.requests for h in hit)]),
        )
        groups.append(merged)
    return groups


def _batch_se(x: np.ndarray, batches: int = BATCHES) -> float:
    """Standard error of the mean of a correlated series, from the means of contiguous
    batches."""
    if len(x) < 2 * batches:
        return float(np.std(x) / np.sqrt(max(len(x), 1)))
    means = np.array([b.mean() for b in np.array_split(x, batches)])  # per batch
    return float(means.std(ddof=1) / np.sqrt(batches))


def _boundary(anchor: tuple[int, str]) -> int:
    k, at = anchor
    return k if at == "start" else k + 1


def _stamp(phase: np.ndarray, t0: np.ndarray, t1: np.ndarray, ticks) -> np.ndarray:
    """t1 - t0 as a capture measures it: each end stamped by its clock's tick (truncated)."""
    return (
        np.floor((phase + t1) / ticks[1]) * ticks[1] - np.floor((phase + t0) / ticks[0]) * ticks[0]
    )


def block_sample(stream: Stream) -> Stream:
    """The stream's block requests (the first SAMPLE), jobs and depth kept."""
    return stream.take(np.flatnonzero(stream.is_op("read", "write"))[:SAMPLE])


def fitted_costs(
    groups: list[Group], transport: Transport, costs: dict[str, tuple[float, float]]
) -> pl.DataFrame:
    """One row per cost key of the transport's block path: current and fitted ns, 95 %
    interval, the intervals that constrained it (null: not constrained by this capture)."""
    path = transport.path("block")
    by_key = {k: g for g in groups for k in g.keys}
    rows = []
    fitted_slowdown = {SLOWDOWN} if SLOWDOWN in by_key else set()
    for key in sorted(
        ({o.cost for o in path} | fitted_slowdown) & set(costs)
    ):  # the device's time is the capture's
        ns, sigma = costs[key]
        g = by_key.get(key)
        rows.append({
            "key": key, "ns": ns, "sigma": sigma,
            "fitted_ns": ns * g.factor if g else None,
            "fitted_sigma": g.sigma if g else None,
            "ci_low": ns * g.low if g else None,
            "ci_high": ns * g.high if g else None,
            "interval": g.interval if g else None,
            "with": ", ".join(sorted(g.keys - {key})) if g else None,
            "requests": g.requests if g else 0,
        })  # fmt: skip
    return pl.DataFrame(rows, schema_overrides={"fitted_ns": pl.Float64, "fitted_sigma": pl.Float64, "ci_low": pl.Float64,
                                                 "ci_high": pl.Float64, "interval": pl.String,
                                                 "with": pl.String})  # fmt: skip


JOINT_ROUNDS = 12
JOINT_RIDGE = 5.0  # pull of each key toward its pooled per-capture value (see joint)
MIN_CLASS = 10  # requests of a size class an interval's mean is taken over


def joint(
    captures: list[tuple[pl.DataFrame, Stream, Transport]],
    costs: dict[str, tuple[float, float]],
    keys: set[str],
    *,
    seed: int = 0,
) -> dict[str, float]:
    """The costs of `keys` fitted to several captures of one host at once: (block
    requests, stream, transport) per capture, starting from `costs` (each capture's own
    fit, pooled). Per capture, per fitted interval and per request size class (one page,
    more), the measured mean less the simulated queueing is a sum over the keys of the
    interval: each key's simulated work times its factor. One least-squares solve over
    every capture's rows, weighted by requests over the squared interval (relative errors)
    and pulled toward the pooled values (JOINT_RIDGE) where the rows cannot tell keys
    apart; damped, the engine rerun, for JOINT_ROUNDS at most.

    What this separates that the per-capture fits cannot: a key two transports share (the
    EPAM backend's pop, shared by EPAM, SuSE and persistent grants) set beside each one's
    own work (its foreign maps, grant maps, pool lookups), and within a capture a
    per-request key from a per-buffer one, by the request sizes' mix. Each capture alone
    scales a stretch's costs by one factor, keeping the table's split."""
    start, costs = dict(costs), dict(costs)
    for _ in range(JOINT_ROUNDS):
        rows = [r for blk, sub, t in captures for r in _joint_rows(blk, sub, t, costs, keys, seed)]
        if not rows:
            break
        names = sorted({k for *_, work in rows for k in work})
        now = np.array([costs[k][0] / start[k][0] for k in names])  # factors on the pooled
        # a row: measured - rest = sum over keys of work at the pooled cost x factor
        a = np.array([[work.get(k, 0.0) for k in names] for *_, work in rows]) / now
        y = np.array([v for _, v, _, _ in rows])
        w = np.array([n / m**2 for n, _, m, _ in rows])  # relative to the interval
        lhs = a.T @ (w[:, None] * a) + JOINT_RIDGE * np.eye(len(names))
        f = np.linalg.solve(lhs, a.T @ (w * y) + JOINT_RIDGE)  # pulled toward the pooled
        f = np.sqrt(now * np.clip(f, 0.05 * now, 20.0 * now))  # damped, as the per-capture fit
        for k, fk in zip(names, f, strict=True):
            costs[k] = (start[k][0] * float(fk), costs[k][1])
        if np.abs(f / now - 1).max() < 5 * TOLERANCE:
            break
    return {k: costs[k][0] for k in keys}


def _joint_rows(blk, sub: Stream, transport: Transport, costs, keys, seed):
    """One capture's rows for `joint`: (requests, measured mean less the simulated rest,
    measured mean, {key: simulated work}) per fitted interval and size class; an interval
    whose keys' work is under MIN_SHARE of it (mostly queueing) is left out, as in `fit`."""
    path = transport.path("block")
    marks = observed_marks(blk, path)
    runs = [schedule(sub, transport, costs, seed=seed + r)[2] for r in range(REPLICAS)]
    out = []
    for (b0, _, c0, a0), (b1, _, c1, a1) in pairwise(marks):
        ops = list(range(b0, b1))
        mine = sorted({path[k].cost for k in ops} & keys)
        if not mine or any(path[k].resource == "device" for k in ops):
            continue
        if out_of_order(blk, c0, c1, [c for *_, c, _ in marks if c not in (c0, c1)]):
            continue
        own = _own_notify(blk, [c1])
        m = (own[c1] - own[c0]).to_numpy().astype(np.float64)
        sizes = np.maximum(1.0, np.ceil(own["bytes"].fill_null(0).to_numpy() / 4096))
        for big in (False, True):  # one page, and more
            sel_m = ((sizes > 1) == big) & np.isfinite(m)
            sel_s = (sub.pages > 1) == big
            if sel_m.sum() < MIN_CLASS or sel_s.sum() < MIN_CLASS:
                continue
            total = np.mean([(at(sc, a1) - at(sc, a0))[sel_s].mean() for sc in runs])
            work = {k: np.mean([_work(sc, [j for j in ops if path[j].cost == k], sel_s)
                                for sc in runs]) for k in mine}  # fmt: skip
            if total <= 0 or sum(work.values()) < MIN_SHARE * total:
                continue
            # the rest of the interval: its queueing and the steps of keys not fitted here
            rest = total - sum(work.values())
            mean = float(m[sel_m].mean())
            if mean > rest:
                out.append((int(sel_m.sum()), mean - rest, mean, work))
    return out


Z95 = 1.959964  # the normal quantile of a two-sided 95 % interval


def combine(fits: list[tuple[str, pl.DataFrame]]) -> pl.DataFrame:
    """One host's costs from the fits of several captures (`fitted_costs` rows, each with
    its capture's name): per key, a random-effects mean of the captures that constrained it
    (DerSimonian and Laird 1986, the meta-analysis estimator: captures of one host
    disagree by more than their own intervals when the host's load differed, and then the
    between-capture variance widens the interval instead of the most precise capture
    deciding alone). Rows: key, ns, ci_low, ci_high, captures (names, and the interval
    each fitted), requests (summed)."""
    fitted = [
        f.filter(pl.col("fitted_ns").is_not_null()).with_columns(pl.lit(name).alias("capture"))
        for name, f in fits
        if len(f)
    ]
    rows = pl.concat(fitted, how="diagonal_relaxed") if fitted else pl.DataFrame()
    out = []
    if not len(rows):
        return pl.DataFrame(schema={"key": pl.String, "ns": pl.Float64, "sigma": pl.Float64,
                                    "ci_low": pl.Float64, "ci_high": pl.Float64,
                                    "captures": pl.String, "requests": pl.Int64})  # fmt: skip
    for (key,), g in rows.group_by("key", maintain_order=True):  # per key, a few dozen
        x = g["fitted_ns"].to_numpy()
        se = np.maximum((g["ci_high"] - g["ci_low"]).to_numpy() / (2 * Z95), 1e-9 * x.max())
        mean, half = random_effects(x, se)
        named = [f"{c} ({i})" for c, i in zip(g["capture"], g["interval"], strict=True)]
        # the jitter: the captures' fitted spreads, averaged (a fit made before spreads were
        # fitted keeps the table's)
        spread_of = g["fitted_sigma"] if "fitted_sigma" in g.columns else g["sigma"]
        sigma = spread_of.fill_null(g["sigma"]).mean()
        out.append({"key": key, "ns": mean, "sigma": float(sigma),
                    "ci_low": max(mean - half, 0.0), "ci_high": mean + half,
                    "captures": "; ".join(named), "requests": int(g["requests"].sum())})  # fmt: skip
    return pl.DataFrame(out).sort("key")


def random_effects(x: np.ndarray, se: np.ndarray) -> tuple[float, float]:
    """DerSimonian-Laird: the pooled mean of estimates `x` with standard errors `se`, and
    the half-width of its 95 % interval (one estimate: itself and its own interval)."""
    w = 1.0 / se**2
    fixed = float((w * x).sum() / w.sum())
    q = float((w * (x - fixed) ** 2).sum())
    k = len(x)
    tau2 = max(0.0, (q - (k - 1)) / (w.sum() - (w**2).sum() / w.sum())) if k > 1 else 0.0
    w = 1.0 / (se**2 + tau2)
    return float((w * x).sum() / w.sum()), float(Z95 / np.sqrt(w.sum()))


IO_PATH = "io_path"  # the operation between a backend's submission and the device


def io_path_excess(measured: list[tuple[str, str, str, np.ndarray]]) -> pl.DataFrame:
    """Each backend's I/O path from captures of several backends on one host running one
    workload (`measured`: capture, io_path cost key, workload name, its requests' submission
    to completion in ns; a transport without an I/O path step has no key and is left out).
    The device under them is the host's, the same for all, so what a backend measures beyond
    the fastest one at the same workload is its own I/O path: the fastest key gets 0, the
    others their excess of the mean, with a 95 % interval from both means' batch standard
    errors. A single capture cannot separate its backend's path from the device."""
    rows = []
    by_workload: dict[str, dict[str, list]] = {}
    for capture, key, workload, x in measured:
        if key and workload and len(x) >= MIN_REQUESTS:
            by_workload.setdefault(workload, {}).setdefault(key, []).append((capture, x))
    for workload, keys in by_workload.items():  # a workload or two
        if len(keys) < 2:
            continue
        pooled = {k: np.concatenate([x for _, x in v]) for k, v in keys.items()}
        base = min(pooled, key=lambda k: pooled[k].mean())
        b_mean, b_se = pooled[base].mean(), _batch_se(pooled[base])
        names = {k: ", ".join(c for c, _ in v) for k, v in keys.items()}
        for key, x in pooled.items():
            ns = float(x.mean() - b_mean)
            half = Z95 * float(np.hypot(_batch_se(x), b_se)) if key != base else 0.0
            rows.append({
                "key": key, "ns": ns, "ci_low": max(ns - half, 0.0), "ci_high": ns + half,
                "captures": f"{names[key]} (handle_ns -> io_done_ns at {workload}) less "
                            f"{names[base]}'s",
                "requests": len(x),
            })  # fmt: skip
    return pl.DataFrame(rows, schema={"key": pl.String, "ns": pl.Float64, "ci_low": pl.Float64,
                                      "ci_high": pl.Float64, "captures": pl.String,
                                      "requests": pl.Int64})  # fmt: skip
