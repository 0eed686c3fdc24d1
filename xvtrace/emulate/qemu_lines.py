"""The device model's side: QEMU log-backend trace lines (`tid@sec.usec:event args`), with
QEMU's real event names and format strings, for transports whose backend is QEMU.

For each request: the IOREQ of the QueueNotify write (handle_ioreq, virtio_mmio_write_offset;
virtio-mmio transports), virtio_queue_notify, virtqueue_alloc_element / virtqueue_pop,
virtio_blk_handle_read|write, xen_map_cache per page (EPAM's mapcache), then at completion
virtio_blk_rw_complete, virtio_blk_req_complete, virtqueue_fill, virtqueue_flush,
virtio_notify, the interrupt line (virtio_mmio_setting_irq) and the ISR's two IOREQs.
Lines are rendered per event from the trace-events format strings (parsers.trace_events),
so the decoder reads them back with the same definitions.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numba import njit

from xvtrace.emulate.pending import Batch, Pending, Texts
from xvtrace.emulate.xen_records import ACK, MMIO_BASE, NOTIFY, PCI_NOTIFY, STATUS
from xvtrace.parsers.trace_events import TraceEvents, render_lines
from xvtrace.replay.costs import costs_for, default_table
from xvtrace.replay.transports.base import submission

VDEV = 0x55D0_0000_1000  # VirtIOBlock *
VQ = 0x7F00_2000_0010  # VirtQueue *
VDEV_NET = 0x55D0_0000_8000  # VirtIONet *
VQ_NET_RX, VQ_NET_TX = 0x7F00_2100_0010, 0x7F00_2100_00A8
ELEM_BASE = 0x55D0_1000_0000  # VirtQueueElement * pool; pointers are reused as in QEMU
IOREQ_PTR = 0x7F00_3000_0000  # the vCPU's ioreq_t in the shared page
MAPCACHE = 0x7F10_0000_0000
MAIN_TID = 4242


@cache
def isr_dispatched() -> float:
    """Where in an ISR trap QEMU takes up its IOREQ: after the exit and the dispatch, the
    share of xen.mmio_trap + xen.ioreq_dispatch in epam.isr_trap (the packaged cost table's
    x86 numbers, read from the table rather than repeated here)."""
    c = costs_for(default_table(), "x86_64")
    return (c["xen.mmio_trap"][0] + c["xen.ioreq_dispatch"][0]) / c["epam.isr_trap"][0]


class Lines(Batch):
    """QEMU's lines of a chunk, an event at a time. A text is rendered once per distinct
    argument tuple of an event: most events repeat a few pointers and flags, so most lines
    only refer to a shared text."""

    def __init__(self, defs: TraceEvents):
        super().__init__()
        self.defs = defs

    def add(self, event: str, t_ns: np.ndarray, order: float, **args) -> None:
        n = len(t_ns)
        if n == 0:
            return
        ev = self.defs.events[event]
        # QEMU's arguments are unsigned integers (flags and levels given as floats too)
        cols = {a.name: np.asarray(args[a.name]).astype(np.uint64, copy=False) for a in ev.args}
        ids, rows = _distinct(cols, n)
        picked = {
            k: np.broadcast_to(v, n)[rows] if v.ndim else np.full(len(rows), v)
            for k, v in cols.items()
        }
        self.add_group(t_ns, order, ids, Texts(*render_lines(ev, picked, len(rows))))


def _distinct(cols: dict[str, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(per row, the id of its argument tuple; a row per id). Rows whose arguments are
    mostly distinct (a sector, a guest address) keep a tuple each."""
    key = np.zeros(n, np.int64)
    radix = 1  # the tuple's id is mixed-radix in the arguments' distinct values
    for v in cols.values():
        if v.ndim == 0:
            continue
        if looks_distinct(v):
            return np.arange(n), np.arange(n)
        uniq, inv = factorize(v)
        k = len(uniq)
        if radix * k > n // 4:
            return np.arange(n), np.arange(n)
        if k > 1:
            key += inv * radix
            radix *= k
    if radix == 1:
        return np.zeros(n, np.int64), np.zeros(1, np.int64)
    uniq, ids = factorize(key)
    rows = np.empty(len(uniq), np.int64)
    rows[ids] = np.arange(n)  # any row of a tuple renders its text
    return ids, rows


def factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct values in ascending order, per row the index of its value among them),
    as np.unique(values, return_inverse=True) gives them. Most arguments are a pointer,
    flag or count from a small range (an element pool, a vCPU's ioreq slot): integers are
    counted in a table over their range, not sorted, where that range is small."""
    small = values.dtype.kind in "iu" and len(values)
    lo = values.min() if small else 0
    span = int(values.max()) - int(lo) if small else 0  # in Python: no wrap-around
    if not small or span > 4 * len(values):
        uniq, inv = np.unique(values, return_inverse=True)
        return uniq, inv.astype(np.int64).reshape(-1)
    off = (values - lo).astype(np.int64)
    seen = np.zeros(span + 1, np.int64)
    seen[off] = 1
    rank = np.cumsum(seen) - 1
    return lo + np.flatnonzero(seen).astype(values.dtype), rank[off]


def looks_distinct(values: np.ndarray, sample: int = 4096) -> bool:
    """Whether most of many values spread over a wide range are values of their own, by a
    sample: where they are, finding the distinct ones (a sort) costs more than it saves.
    A wrong guess only costs time."""
    n = len(values)
    if n < 4 * sample or int(values.max()) - int(values.min()) <= 4 * n:
        return False
    return len(np.unique(values[:: n // sample])) > sample // 4


def write_lines(fh, lines: Pending, epoch_ns: int, offset_ns: float, drift_ppm: float) -> int:
    """Append time-ordered lines to an open file with the `tid@sec.usec:` prefix on the
    device model's clock: epoch + t * (1 + drift) + offset."""
    if not len(lines):
        return 0
    clock = np.round(lines.t * (1 + drift_ppm * 1e-6) + offset_ns).astype(np.int64) + epoch_ns
    return lines.write(fh, f"{MAIN_TID}@".encode(), clock // 1000)


# per device kind: (VirtIODevice *, VirtQueue *, queue index)
DEVICES = {
    "block": (VDEV, VQ, 0),
    "net_tx": (VDEV_NET, VQ_NET_TX, 1),
    "net_rx": (VDEV_NET, VQ_NET_RX, 0),
}


class ElementSlots:
    """QEMU's VirtQueueElement pointers of one queue: each request takes the lowest slot
    free at its pop and gives it back at its push, as malloc reuses a freed block; carried
    from chunk to chunk. Requests are taken in the run's order (not by pop time), so the
    chunks write what one pass does; a slot's users never overlap either way, since each
    takes it only once its last user gave it back. Slots by `job * iodepth + k % iodepth`
    handed a pointer still in flight to a new request whenever requests completed out of
    order, and the timeline then gave one request another's completion (1 MiB reads at
    depth 4: 6 of 2000)."""

    def __init__(self) -> None:
        self.free_at = np.zeros(0)  # per slot: when its last request gave it back

    def take(self, pop: np.ndarray, push: np.ndarray) -> np.ndarray:
        free_at = np.concatenate([self.free_at, np.zeros(len(pop))])
        slot = np.empty(len(pop), np.int64)
        used = _take_slots(pop.astype(np.float64), push.astype(np.float64), free_at,
                           len(self.free_at), slot)  # fmt: skip
        self.free_at = free_at[:used]
        return slot


@njit(cache=True, nogil=True)
def _take_slots(pop, push, free_at, used, slot):  # pragma: no cover (compiled)
    for i in range(len(pop)):  # a request at a time: the lowest slot free by its pop
        chosen = used
        for j in range(used):
            if free_at[j] <= pop[i]:
                chosen = j
                break
        if chosen == used:
            used += 1
        free_at[chosen] = push[i]
        slot[i] = chosen
    return used


def build(parts, *, defs: TraceEvents, first: bool = True, slots: dict | None = None) -> Lines:
    """The QEMU lines of some requests of a run; `parts` is [(kind, path, schedule,
    requests)] with kind block, net_tx or net_rx; `first`: the run's start is among them;
    `slots`: the run's ElementSlots per kind, kept from chunk to chunk."""
    slots = {} if slots is None else slots
    out = Lines(defs)
    if first and any(kind == "net_rx" for kind, *_ in parts):
        # the guest driver posts its receive buffers and kicks the rx queue once at start
        vdev, vq, queue = DEVICES["net_rx"]
        out.add("virtio_queue_notify", np.zeros(1), -1.0, vdev=vdev, n=queue, vq=vq)
    for kind, path, sched, req in parts:
        _path_lines(out, kind, path, sched, req, slots.setdefault(kind, ElementSlots()))
    return out


def _path_lines(out: Lines, kind: str, path, sched, req, slots: ElementSlots) -> None:
    names = {o.name: k for k, o in enumerate(path)}
    emits = {o.emits for o in path}
    vdev, vq, queue = DEVICES[kind]
    n = len(req.job)
    if n == 0:  # a path no request of this chunk took (a stream's other direction)
        return
    base = {"block": ELEM_BASE, "net_tx": ELEM_BASE + 0x100000, "net_rx": ELEM_BASE + 0x200000}[
        kind
    ]
    ioreq = (IOREQ_PTR + req.job.astype(np.uint64) * np.uint64(32)).astype(np.uint64)
    pages = req.pages.astype(np.uint64)
    w = req.write

    def t(op: str, at: str = "start") -> np.ndarray:
        k = names[op]
        return (sched.start if at == "start" else sched.end)[:, k]

    pop_t = t("backend_pop")
    slot = slots.take(pop_t, t("backend_push"))  # unique among requests in flight
    elem = (base + slot.astype(np.uint64) * np.uint64(0x140)).astype(np.uint64)
    if kind != "net_rx":  # the guest kicked the queue
        if "mmio_notify" in emits:
            out.add("handle_ioreq", pop_t, 0.0, req=ioreq, type=1, dir=0, df=0, data_is_ptr=0,
                    addr=MMIO_BASE + NOTIFY, data=queue, count=1, size=4)  # fmt: skip
            out.add("virtio_mmio_write_offset", pop_t, 0.1, offset=NOTIFY, value=queue)
        elif "pci_notify" in emits:  # QEMU answers the IOREQ at once (ioeventfd), pops later
            at = t("ioreq_dispatch", "end")
            fields = {"req": ioreq, "df": 0, "data_is_ptr": 0, "addr": PCI_NOTIFY, "data": queue,
                      "count": 1, "size": 2}  # fmt: skip
            out.add("handle_ioreq", at, 0.0, type=1, dir=0, **fields)
            out.add("cpu_ioreq_move", at, 0.1, dir=0, **fields)
        out.add("virtio_queue_notify", pop_t, 0.2, vdev=vdev, n=queue, vq=vq)
    if kind == "block":
        in_num, out_num = np.where(w, 1, 1 + pages), np.where(w, 1 + pages, 1)
    elif kind == "net_tx":  # virtio_net_hdr + frame in one descriptor
        in_num, out_num = np.zeros(n), np.ones(n)
    else:
        in_num, out_num = np.ones(n), np.zeros(n)
    out.add("virtqueue_alloc_element", pop_t, 0.3, elem=elem, sz=240 if kind == "block" else 56,
            in_num=in_num, out_num=out_num)  # fmt: skip
    out.add("virtqueue_pop", pop_t, 0.4, vq=vq, elem=elem, in_num=in_num, out_num=out_num)
    if kind == "block":
        sectors = (req.nbytes // 512).astype(np.uint64)
        sector = (req.offset // np.uint64(512)).astype(np.uint64)
        # QEMU logs the request once its buffers are mapped, right before submitting it
        sub_t = sched.end[:, submission(path)[0]]
        out.add(
            "virtio_blk_handle_write",
            sub_t[w],
            0.5,
            vdev=vdev,
            req=elem[w],
            sector=sector[w],
            nsectors=sectors[w],
        )
        out.add(
            "virtio_blk_handle_read",
            sub_t[~w],
            0.5,
            vdev=vdev,
            req=elem[~w],
            sector=sector[~w],
            nsectors=sectors[~w],
        )
    if "mapcache" in emits:
        s, e = t("mapcache"), t("mapcache", "end")
        for p in range(int(pages.max())):  # per page of the largest request
            m = pages > p
            at = s[m] + (e[m] - s[m]) * p / pages[m]
            gpa = (
                (req.offset[m] % np.uint64(1 << 27))
                + np.uint64(p * 4096)
                + np.uint64(0x100000 * queue)
            )
            out.add("xen_map_cache", at, 0.6, phys_addr=gpa)
            out.add("xen_map_cache_return", at, 0.61, ptr=MAPCACHE + gpa)
    if kind == "block":
        out.add("virtio_blk_rw_complete", t("device_io", "end"), 0.0, vdev=vdev, req=elem, ret=0)
    push = t("backend_push")
    if kind == "block":
        out.add("virtio_blk_req_complete", push, 0.1, vdev=vdev, req=elem, status=0)
        fill_len = np.where(w, 1, req.nbytes.astype(np.uint64) + 1)
    elif kind == "net_tx":
        fill_len = np.zeros(n, np.uint64)
    else:  # a received frame plus the 12-byte virtio_net_hdr_mrg_rxbuf
        fill_len = req.nbytes.astype(np.uint64) + 12
    out.add("virtqueue_fill", push, 0.2, vq=vq, elem=elem, len=fill_len, idx=0)
    out.add("virtqueue_flush", push, 0.3, vq=vq, count=1)
    # virtio_notify comes once the used ring is flushed: the push's end
    irq = "virtio_notify_irqfd" if "pci_notify" in emits else "virtio_notify"  # MSI-X: irqfd
    out.add(irq, t("backend_push", "end"), -0.1, vdev=vdev, vq=vq)
    if "mmio_isr_status" in emits:
        out.add("virtio_mmio_setting_irq", t("irq_inject"), 0.0, level=1)
        # the ISR's two IOREQs, taken up once each trap is dispatched to the device model
        status, ack = (
            t(k) + isr_dispatched() * (t(k, "end") - t(k)) for k in ("isr_status", "isr_ack")
        )
        out.add("handle_ioreq", status, 0.0, req=ioreq, type=1, dir=1, df=0, data_is_ptr=0,
                addr=MMIO_BASE + STATUS, data=1, count=1, size=4)  # fmt: skip
        out.add("virtio_mmio_read", status, 0.1, offset=STATUS)
        out.add("handle_ioreq", ack, 0.0, req=ioreq, type=1, dir=0, df=0, data_is_ptr=0,
                addr=MMIO_BASE + ACK, data=1, count=1, size=4)  # fmt: skip
        out.add("virtio_mmio_write_offset", ack, 0.1, offset=ACK, value=1)
        out.add("virtio_mmio_setting_irq", ack, 0.2, level=0)
