"""The xentrace records a Xen 4.17 host writes for each operation of a request path.

Only records Xen really emits, with its ids and payload layouts (parsers.xen_events, notes on
trace.h): in the HVM guest, VMEXIT64 / VMENTRY with TSC and their handler records without TSC
(NPF + IOMEM for MMIO traps, VMMCALL for hypercalls, INTR + INJ_VIRQ for interrupts); in the
PV dom0 running the backend, PV_HYPERCALL_V2 (op plus the arguments Xen records) and the
grant map/unmap MEM records. Xen has no trace points for event-channel sends, IOREQ
dispatch, grant copies or foreign mappings, so none are invented.

Layout: guest vCPU v runs on pCPU 1 + v, dom0's backend vCPU on pCPU 0. Everything is built
as whole columns per kind of operation, then sorted per pCPU and written by the project's
xentrace writer.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from xvtrace.parsers import xen_events as xe
from xvtrace.parsers.schema import N_ARGS
from xvtrace.parsers.xentrace import write_records
from xvtrace.replay.transports.base import buffers

GUEST_DOM, DOM0 = 1, 0
MMIO_BASE = 0xFEB00000  # the virtio-mmio window of the emulated device
PCI_NOTIFY = 0xF0003000  # a virtio-pci device's notify region (where QEMU put it on the real host)
NOTIFY, STATUS, ACK = 0x50, 0x60, 0x64  # virtio-mmio QueueNotify, InterruptStatus, InterruptACK
IRQ_VECTOR, UPCALL_VECTOR, PHYS_VECTOR = 0x25, 0xF3, 0xF2
# exit reasons: (VMX, SVM)
REASON = {"npf": (48, 1024), "vmcall": (18, 129), "intr": (1, 96), "hlt": (12, 120)}
IDLE_DOM = 32767
MIN_IDLE_NS = 1000.0  # shorter gaps between a vCPU's work stay "running" (the guest spins)
HC_GRANT, HC_EVTCHN, HC_ARGO, HC_DM_OP, HC_MMU_UPDATE = 20, 32, 39, 41, 1
NPF_WORDS = (0xFFFFFFFF, 0xFFFFFFFF, 0x182, 5)  # mfn ~0 (emulated MMIO), qualification, p2mt
GUEST_RIP = 0xFFFFFFFF81A0_0000  # where the guest's virtio driver pokes the device
GUEST_SIDE = (
    "mmio_notify",
    "pci_notify",
    "guest_irq",
    "mmio_isr_status",
    "mmio_isr_ack",
    "vmcall_evtchn",
    "vmcall_argo",
    "guest_upcall",
)


@dataclass(frozen=True)
class Table:
    """Records as numpy columns (what the writer and the expected counts read): pCPU, TSC,
    TSC flag, id, payload words (n x N_ARGS, row-major as the file lays them out) and the
    tie rank among records of one pCPU and TSC, which a later chunk's merge sorts on too."""

    cpu: np.ndarray
    tsc: np.ndarray
    has_ts: np.ndarray
    code: np.ndarray
    nargs: np.ndarray
    args: np.ndarray
    rank: np.ndarray

    def __len__(self) -> int:
        return len(self.code)

    def take(self, rows: np.ndarray) -> Table:
        """The rows a mask or an index array selects (compress and take: a fraction of
        fancy indexing's time on the n x 7 payload)."""
        if rows.dtype == bool:
            return Table(*(np.compress(rows, getattr(self, f.name), axis=0) for f in fields(self)))
        return Table(*(np.take(getattr(self, f.name), rows, axis=0) for f in fields(self)))

    @staticmethod
    def concat(tables: list[Table]) -> Table:
        return Table(*(np.concatenate([getattr(t, f.name) for t in tables]) for f in fields(Table)))

    def write(self, fh, *, round_cycles: int, rows: np.ndarray | None = None) -> int:
        """Append the records (or the `rows` listed, in that order: no gathered copy) to an
        open xentrace file, in rounds of `round_cycles`."""
        return write_records(fh, self.cpu, self.tsc, self.has_ts, self.code, self.args,
                             self.nargs, round_cycles=round_cycles, order=rows)  # fmt: skip


class Records:
    """Columns of records being built: cpu, time (ns), tie order, TSC flag, id, payload."""

    def __init__(self):
        self.parts: list[dict] = []

    def add(self, cpu, t_ns, order, code, words=(), has_ts=True) -> None:
        n = len(t_ns)
        if n == 0:
            return
        args = np.zeros((n, N_ARGS), np.uint32)  # Xen's payload words are 32 bits
        for j, w in enumerate(words):
            args[:, j] = np.broadcast_to(np.asarray(w, dtype=np.uint64), n).astype(np.uint32)
        self.parts.append({
            "cpu": np.broadcast_to(cpu, n).astype(np.int16),
            "t": np.asarray(t_ns, np.float64),
            "order": np.broadcast_to(order, n).astype(np.float64),
            "code": np.full(n, code, np.uint32),
            "nargs": np.full(n, len(words), np.uint8),
            "has_ts": np.full(n, has_ts),
            "args": args,
        })  # fmt: skip

    def columns(self, cpu_khz: int, tsc0: int, carry: Table | None = None) -> Table:
        """The records as one table, `carry` (an earlier table's rows not yet written) first,
        in the order they were added: time_order() sorts them."""
        t = np.concatenate([p["t"] for p in self.parts])
        order = np.concatenate([p["order"] for p in self.parts])
        made = {
            "tsc": [np.uint64(tsc0) + np.round(t * cpu_khz / 1e6).astype(np.uint64)],
            # `order` breaks ties (an entry, then the next exit's records); it lies in [-2, 1)
            "rank": [np.round((order + 2) * 100).astype(np.uint16)],
        }
        carried = [carry] if carry is not None and len(carry) else []

        def column(name: str) -> np.ndarray:  # one concatenation, the carried rows first
            own = made[name] if name in made else [p[name] for p in self.parts]
            return np.concatenate([getattr(c, name) for c in carried] + own)

        return Table(*(column(f.name) for f in fields(Table)))


def time_order(t: Table) -> np.ndarray:
    """The rows per pCPU in time order, ties by rank, then as given (carried rows first).
    One sort on a packed key (pCPU | TSC | rank) where the TSCs span under 2^43 cycles (an
    hour at 2.4 GHz); a three-key sort where a slow-paced run's chunk spans more."""
    lo = t.tsc.min()
    if t.tsc.max() - lo < 1 << 43:
        key = (t.cpu.astype(np.uint64) << np.uint64(52)) | ((t.tsc - lo) << np.uint64(9)) | t.rank
        return np.argsort(key, kind="stable")
    return np.lexsort((t.rank, t.tsc, t.cpu))


def _reason(kind: str, vendor: str) -> int:
    return REASON[kind][1 if vendor == "svm" else 0]


def _exit(rec: Records, cpu, t, reason, handlers, order=0.0) -> None:
    """VMEXIT64 with TSC at t, then its handler records (no TSC), in this order."""
    rip = np.uint64(GUEST_RIP)
    rec.add(
        cpu,
        t,
        order,
        xe.TRC_HVM_VMEXIT64,
        (reason, rip & np.uint64(0xFFFFFFFF), rip >> np.uint64(32)),
    )
    for k, (code, words) in enumerate(handlers):
        rec.add(cpu, t, order + 0.01 * (k + 1), code, words, has_ts=False)


def _entry(rec: Records, cpu, t, handlers=(), order=-0.5) -> None:
    """Handler records traced at completion (no TSC), then VMENTRY with TSC at t. Entries
    sort before exits at the same instant: the next request's exit on that vCPU may start
    exactly when this one's entry ends it."""
    for k, (code, words) in enumerate(handlers):
        rec.add(cpu, t, order + 0.01 * k, code, words, has_ts=False)
    rec.add(cpu, t, order + 0.1, xe.TRC_HVM_VMENTRY)


def _hypercall(rec: Records, t, op, args=()) -> None:
    """PV_HYPERCALL_V2 from dom0: op | presence bits (01 = 32-bit arg) + the args Xen keeps."""
    word0 = op
    for i in range(len(args)):
        word0 |= 1 << (20 + 2 * i)
    rec.add(0, t, 0.0, xe.TRC_PV_HYPERCALL_V2, (word0, *args))


def _mmio_trap(
    rec, cpu, t0, t1, offset, data, vendor, write=True, order=0.0, base=MMIO_BASE
) -> None:
    gpa = base + offset
    npf = (0x00082021, (gpa, 0, *NPF_WORDS))
    if write:
        _exit(rec, cpu, t0, _reason("npf", vendor), [npf, (0x00082217, (gpa, data))], order)
        _entry(rec, cpu, t1)
    else:  # reads are traced when the data comes back, right before the entry
        _exit(rec, cpu, t0, _reason("npf", vendor), [npf], order)
        _entry(rec, cpu, t1, [(0x00082017, (gpa, data))])


def _interrupt(rec, cpu, t0, t1, vector, vendor, order=0.0) -> None:
    _exit(rec, cpu, t0, _reason("intr", vendor), [(0x0008200F, (PHYS_VECTOR,))], order)
    _entry(rec, cpu, t1, [(0x00082004, (vector, 0))])


def build(
    parts, *, vendor: str, guest_exits: bool = True, gaps=None, start: bool = True
) -> Records:
    """The records of some requests of a run: `parts` is [(path, schedule, requests)], one
    per request path (block; or a network job's transmit and receive paths); `gaps` the
    vCPU idle stretches to write with them (start, end, job; engine.Simulation.gaps);
    `start`: the vCPUs' first runstates.
    Without `guest_exits` (an Arm host: Xen on Arm traces no VM exits or MMIO emulation)
    only the scheduler and dom0's hypercall and grant records are written."""
    rec = Records()
    if start:
        jobs = np.unique(np.concatenate([req.job for _, _, req in parts]))
        for j in jobs:  # the guest vCPUs and dom0 start running
            _runstate(rec, int(1 + j), [0.0], -1.0, GUEST_DOM, int(j), 1, 0)
        _runstate(rec, 0, [0.0], -1.0, DOM0, 0, 1, 0)
    if guest_exits and gaps is not None:
        emit_idle(rec, *gaps, vendor)
    for path, sched, req in parts:
        _emit_path(rec, path, sched, req, vendor, guest_exits)
    return rec


def _emit_path(rec: Records, path, sched, req, vendor: str, guest_exits: bool) -> None:
    names = [o.name for o in path]
    gcpu = 1 + req.job
    n = len(req.job)
    if n == 0:  # a path no request of this chunk took (a stream's other direction)
        return
    pages = req.pages.astype(np.uint64)
    # what a map step handles: pages, or (a virtio backend) buffers, descriptors included
    each = buffers(path, pages)
    for k, o in enumerate(path):
        s, e = sched.start[:, k], sched.end[:, k]
        until = sched.end[:, names.index(o.hold_until)] if o.hold_until else e
        if not guest_exits and o.emits in GUEST_SIDE:
            continue
        if o.emits == "mmio_notify":
            _mmio_trap(rec, gcpu, s, until, NOTIFY, np.zeros(n), vendor)
        elif o.emits == "pci_notify":
            _mmio_trap(rec, gcpu, s, until, 0, np.zeros(n), vendor, base=PCI_NOTIFY)
        elif o.emits == "guest_irq":
            _interrupt(rec, gcpu, s, e, IRQ_VECTOR, vendor)
        elif o.emits == "mmio_isr_status":
            _mmio_trap(rec, gcpu, s, e, STATUS, np.ones(n), vendor, write=False)
        elif o.emits == "mmio_isr_ack":
            _mmio_trap(rec, gcpu, s, e, ACK, np.ones(n), vendor)
        elif o.emits in ("vmcall_evtchn", "vmcall_argo"):
            hc = HC_EVTCHN if o.emits == "vmcall_evtchn" else HC_ARGO
            _exit(rec, gcpu, s, _reason("vmcall", vendor), [(0x00082012, (hc,))])
            _entry(rec, gcpu, until)
        elif o.emits == "guest_upcall":
            _interrupt(rec, gcpu, s, e, UPCALL_VECTOR, vendor)
        elif o.emits == "irq_dm_op":
            _hypercall(rec, s, HC_DM_OP)
        elif o.emits in ("pv_evtchn", "pv_argo"):
            _hypercall(rec, s, HC_EVTCHN if o.emits == "pv_evtchn" else HC_ARGO)
        elif o.emits in ("grant_map", "grant_unmap"):
            cmd = 0 if o.emits == "grant_map" else 1
            units = each if o.scale == "buffer" else pages
            _hypercall(rec, s, HC_GRANT, (np.full(n, cmd), units))
            code = 0x0010F001 if cmd == 0 else 0x0010F002
            for p in range(int(units.max())):  # per page of the largest request, not per request
                m = units > p
                rec.add(
                    0,
                    s[m] + (e[m] - s[m]) * (p + 1) / (units[m] + 1),
                    0.0,
                    code,
                    (np.full(int(m.sum()), GUEST_DOM),),
                )
        elif o.emits in ("foreign_map", "foreign_unmap"):
            _hypercall(rec, s, HC_MMU_UPDATE, (each if o.scale == "buffer" else pages,))


def drop_bursts(table: Table, rate: float, rng: np.random.Generator, burst: int = 64) -> Table:
    """Lose about `rate` of the records in bursts of `burst` consecutive records of a pCPU,
    as a full per-CPU trace buffer does, with the LOST_RECORDS record Xen writes after
    each gap (lost count, the running vCPU, the first lost record's TSC)."""
    if rate <= 0 or len(table) == 0:
        return table
    n = len(table)
    cpu, tsc = table.cpu, table.tsc
    starts = np.flatnonzero(rng.random(n) < rate / burst)
    lost = np.zeros(n, bool)
    for s in starts:  # per burst, not per record
        e = s + burst
        same = cpu[s:e] == cpu[s]
        lost[s:e] |= same & (np.cumsum(~same) == 0)
    lost[:1] = False  # keep each pCPU's first record (its window header needs a TSC)
    first = np.r_[True, cpu[1:] != cpu[:-1]]
    lost &= ~first
    gap_start = lost & ~np.r_[False, lost[:-1]]
    gap_id = np.cumsum(gap_start)
    # one LOST_RECORDS record right after each gap, on the gap's pCPU, with the time of its
    # next record there (the gap's last one where the pCPU has none after it in this table)
    ends = np.flatnonzero(lost & ~np.r_[lost[1:], False])
    after = np.minimum(ends + 1, n - 1)
    after = np.where(cpu[after] == cpu[ends], after, ends)
    counts = np.bincount(gap_id[lost], minlength=gap_id.max() + 1)[gap_id[ends]]
    first_tsc = tsc[np.flatnonzero(gap_start)]
    m = len(ends)
    args = np.zeros((m, N_ARGS), np.uint32)
    args[:, 0] = counts
    args[:, 1] = 0x7FFF
    args[:, 2] = first_tsc & np.uint64(0xFFFFFFFF)
    args[:, 3] = first_tsc >> np.uint64(32)
    markers = Table(cpu[after], tsc[after], np.ones(m, bool),
                    np.full(m, xe.TRC_LOST_RECORDS, np.uint32), np.full(m, 4, np.uint8), args,
                    np.zeros(m, np.uint16))  # fmt: skip
    kept = np.flatnonzero(~lost)
    # each marker goes in the place of its gap's last record, after the records kept before
    pos = np.concatenate([kept, ends])
    return Table.concat([table.take(kept), markers]).take(np.argsort(pos, kind="stable"))


def _runstate(rec, cpu, t, order, dom, vcpu, old, new) -> None:
    rec.add(
        cpu, t, order, xe.TRC_SCHED_RUNSTATE_CHANGE | old << 8 | new << 4, ((dom << 16) | vcpu,)
    )


def emit_idle(rec: Records, t0: np.ndarray, t1: np.ndarray, vj: np.ndarray, vendor: str) -> None:
    """Between its requests' work a guest vCPU halts: HLT exit, it blocks and the idle vCPU
    runs; when work arrives it is woken, runs again and re-enters (what an idle HVM guest
    does on Xen, and what keeps xenalyze's vCPU states in step)."""
    cpu = 1 + vj
    third = (t1 - t0) / 3
    _exit(rec, cpu, t0, _reason("hlt", vendor), [(0x00082013, (np.zeros(len(t0)),))], order=0.5)
    _runstate(rec, cpu, t0 + 1, 0.0, GUEST_DOM, vj, 0, 2)  # running -> blocked
    _runstate(rec, cpu, t0 + 1, 0.1, IDLE_DOM, cpu, 1, 0)  # the pCPU's idle vCPU runs
    _runstate(rec, 0, t1 - third, 0.3, GUEST_DOM, vj, 2, 1)  # woken from dom0's pCPU
    _runstate(rec, cpu, t1 - 1, 0.0, IDLE_DOM, cpu, 0, 1)
    _runstate(rec, cpu, t1 - 1, 0.1, GUEST_DOM, vj, 1, 0)
    _entry(rec, cpu, t1, order=-0.3)


def expected_counts(table: Table, rows: np.ndarray | None = None) -> dict:
    """What xenalyze must find: exits per reason of the guest, hypercalls per op of dom0
    (in the table, or in the rows a mask selects)."""
    code, arg0 = table.code, table.args[:, 0]
    if rows is not None:
        code, arg0 = code[rows], arg0[rows]
    reasons, counts = np.unique(arg0[code == xe.TRC_HVM_VMEXIT64], return_counts=True)
    ops, hcounts = np.unique(arg0[code == xe.TRC_PV_HYPERCALL_V2] & 0xFFFFF, return_counts=True)
    return {
        "guest_exits": {int(r): int(c) for r, c in zip(reasons, counts, strict=True)},
        "dom0_hypercalls": {
            xe.hypercall_name(int(o)): int(c) for o, c in zip(ops, hcounts, strict=True)
        },
        "records": len(code),
        "lost_records": int(arg0[code == xe.TRC_LOST_RECORDS].astype(np.int64).sum()),
    }
