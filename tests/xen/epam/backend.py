"""A VirtIO-EPAM backend for the real-Xen test host: a virtio-mmio (version 2) block device
served to an HVM guest by an IOREQ server of its own in dom0, the guest's memory reached
through foreign mappings. Python on Xen's libraries through ctypes; no QEMU involved (the
qemu-xen device model keeps serving everything else).

    backend.py --domid D --disk FILE --log LOG [--base 0xfe000000] [--size 0x200] [--irq 5]

Start it on the paused guest (`xl create -p`), then unpause. The sequence (Xen 4.17 public
headers: hvm/ioreq.h, hvm/dm_op.h, memory.h; the libraries' headers):
create_ioreq_server (no buffered ioreqs) -> map the ioreq page (map_resource,
XENMEM_resource_ioreq_server, frame 1) -> map_io_range_to_ioreq_server (MMIO window) ->
set_ioreq_server_state(1) -> one interdomain event channel per vCPU (vp_eport in its slot)
-> on each event: the slot's IOREQ_READY request is emulated, read data written, the state
set to IORESP_READY, the channel notified. A QueueNotify pops and maps the queue's requests
inside its IOREQ; their I/O, used-ring update and interrupt follow once it is answered, the
order of QEMU's virtio-blk (its AIO completes in the main loop after the IOREQ returns). The interrupt is an ISA IRQ with level semantics
(set_isa_irq_level): asserted while InterruptStatus is non-zero.

The log: QEMU's log-backend lines (`tid@sec.usec:event args`, stamps from CLOCK_REALTIME)
with QEMU's own event names and formats where the meaning is the same: handle_ioreq when a
request is taken (the slot pointer names the vCPU: slots sort in vCPU order), cpu_ioreq_move
when it is answered (with the data read), virtio_mmio_read / virtio_mmio_write_offset per
register, virtio_queue_notify, virtqueue_pop, virtio_blk_handle_read/write,
virtio_blk_rw_complete, virtio_blk_req_complete, virtqueue_fill, virtqueue_flush,
virtio_notify and virtio_mmio_setting_irq (every IRQ level change). The definitions are
written beside the log (LOG.trace-events), so `xvtrace ingest` decodes it as the device
model's side of each trap.
"""

from __future__ import annotations

import argparse
import ctypes as C
import mmap
import os
import select
import struct
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

PAGE = 4096
STATE_IOREQ_READY, STATE_IORESP_READY = 1, 3
IOREQ_TYPE_COPY = 1
RESOURCE_IOREQ_SERVER, FRAME_IOREQ = 0, 1
MAGIC, VERSION, DEVICE_BLOCK, VENDOR = 0x74726976, 2, 2, 0x52545658  # "XVTR"
F_VERSION_1 = 1 << 32
F_SEG_MAX = 1 << 2  # seg_max in the config (QEMU's default too): otherwise Linux sends 1 segment
# VIRTIO_F_ACCESS_PLATFORM: a grant-DMA guest refuses a device without it (Linux
# drivers/virtio/virtio.c, virtio_features_ok); offered in grant mode only
F_ACCESS_PLATFORM = 1 << 33
GRANT_DMA = 1 << 63  # Linux grant-dma-ops.c: dma = 1 << 63 | grant << 12 | offset in the page
# tests/xen/grant/persistent-grants.patch: a grant of the guest's persistent pool, which it
# never ends, so the backend may keep it mapped
PERSISTENT_DMA = 1 << 62
QUEUE_MAX = 64
DESC_NEXT, DESC_WRITE = 1, 2
BLK_IN, BLK_OUT, BLK_FLUSH, BLK_GET_ID = 0, 1, 4, 8
SLOT_BASE = 0x7F0000001000  # the log's "pointers": slot v at SLOT_BASE + 32 v
VDEV, VQ = 0x7F0000100000, 0x7F0000200000

TRACE_EVENTS = """\
handle_ioreq(void *req, uint32_t type, uint32_t dir, uint32_t df, uint32_t data_is_ptr, uint64_t addr, uint64_t data, uint32_t count, uint32_t size) "I/O=%p type=%d dir=%d df=%d ptr=%d port=0x%"PRIx64" data=0x%"PRIx64" count=%d size=%d"
cpu_ioreq_move(void *req, uint32_t dir, uint32_t df, uint32_t data_is_ptr, uint64_t addr, uint64_t data, uint32_t count, uint32_t size) "I/O=%p copy dir=%d df=%d ptr=%d port=0x%"PRIx64" data=0x%"PRIx64" count=%d size=%d"
virtio_mmio_read(uint64_t offset) "virtio_mmio_read offset 0x%" PRIx64
virtio_mmio_write_offset(uint64_t offset, uint64_t value) "virtio_mmio_write offset 0x%" PRIx64 " value 0x%" PRIx64
virtio_mmio_setting_irq(int level) "virtio_mmio setting IRQ %d"
virtio_set_status(void *vdev, uint8_t val) "vdev %p val %u"
virtio_queue_notify(void *vdev, int n, void *vq) "vdev %p n %d vq %p"
virtqueue_pop(void *vq, void *elem, unsigned int in_num, unsigned int out_num) "vq %p elem %p in_num %u out_num %u"
virtio_blk_handle_read(void *vdev, void *req, uint64_t sector, size_t nsectors) "vdev %p req %p sector %"PRIu64" nsectors %zu"
virtio_blk_handle_write(void *vdev, void *req, uint64_t sector, size_t nsectors) "vdev %p req %p sector %"PRIu64" nsectors %zu"
virtio_blk_rw_complete(void *vdev, void *req, int ret) "vdev %p req %p ret %d"
virtio_blk_req_complete(void *vdev, void *req, int status) "vdev %p req %p status %d"
virtqueue_fill(void *vq, const void *elem, unsigned int len, unsigned int idx) "vq %p elem %p len %u idx %u"
virtqueue_flush(void *vq, unsigned int count) "vq %p count %u"
virtio_notify(void *vdev, void *vq) "vdev %p vq %p"
xen_map_cache(uint64_t phys_addr) "want 0x%"PRIx64
xen_map_cache_return(void* ptr) "%p"
xen_unmap_grant(void *ptr, uint32_t count) "%p count %u"
"""


class XenError(RuntimeError):
    pass


def _lib(name: str):
    try:
        return C.CDLL(name, use_errno=True)
    except OSError as e:
        raise XenError(f"{name}: {e} (Debian: apt-get install xen-utils-4.17)") from None


class Xen:
    """The three libraries, declared (ctypes) from their public headers."""

    def __init__(self):
        self.dm = _lib("libxendevicemodel.so.1")
        self.fm = _lib("libxenforeignmemory.so.1")
        self.ev = _lib("libxenevtchn.so.1")
        self.gt = _lib("libxengnttab.so.1")
        vp, u16, u32, u64, i = C.c_void_p, C.c_uint16, C.c_uint32, C.c_uint64, C.c_int
        for lib, name, res, args in [
            (self.dm, "xendevicemodel_open", vp, [vp, C.c_uint]),
            (self.dm, "xendevicemodel_create_ioreq_server", i, [vp, u16, i, C.POINTER(u16)]),
            (self.dm, "xendevicemodel_map_io_range_to_ioreq_server", i, [vp, u16, u16, i, u64, u64]),
            (self.dm, "xendevicemodel_set_ioreq_server_state", i, [vp, u16, u16, i]),
            (self.dm, "xendevicemodel_destroy_ioreq_server", i, [vp, u16, u16]),
            (self.dm, "xendevicemodel_set_isa_irq_level", i, [vp, u16, C.c_uint8, C.c_uint]),
            (self.fm, "xenforeignmemory_open", vp, [vp, C.c_uint]),
            (self.fm, "xenforeignmemory_map_resource", vp,
             [vp, u16, C.c_uint, C.c_uint, C.c_ulong, C.c_ulong, C.POINTER(vp), i, i]),
            (self.fm, "xenforeignmemory_map", vp, [vp, u32, i, C.c_size_t, C.POINTER(C.c_ulong), C.POINTER(i)]),
            (self.fm, "xenforeignmemory_unmap", i, [vp, vp, C.c_size_t]),
            (self.ev, "xenevtchn_open", vp, [vp, C.c_uint]),
            (self.ev, "xenevtchn_fd", i, [vp]),
            (self.ev, "xenevtchn_bind_interdomain", i, [vp, u32, u32]),
            (self.ev, "xenevtchn_pending", i, [vp]),
            (self.ev, "xenevtchn_unmask", i, [vp, u32]),
            (self.ev, "xenevtchn_notify", i, [vp, u32]),
            (self.gt, "xengnttab_open", vp, [vp, C.c_uint]),
            (self.gt, "xengnttab_map_domain_grant_refs", vp, [vp, u32, u32, C.POINTER(u32), i]),
            (self.gt, "xengnttab_unmap", i, [vp, vp, u32]),
        ]:  # fmt: skip
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        self.dmh = self.dm.xendevicemodel_open(None, 0)
        self.fmh = self.fm.xenforeignmemory_open(None, 0)
        self.evh = self.ev.xenevtchn_open(None, 0)
        self.gth = self.gt.xengnttab_open(None, 0)  # /dev/xen/gntdev (xen-gntdev)
        if not (self.dmh and self.fmh and self.evh and self.gth):
            raise XenError(
                f"cannot open Xen's interfaces: {os.strerror(C.get_errno())} (not dom0?)"
            )

    def check(self, rc: int, what: str) -> int:
        if rc < 0:
            raise XenError(f"{what}: {os.strerror(C.get_errno())}")
        return rc


class GuestMemory:
    """Guest-physical ranges mapped through foreign mappings (privcmd): VirtIO-EPAM, the
    backend's privilege reaches all of the guest's memory."""

    offered = 0  # no feature bit of its own: the addresses are the guest's physical ones
    maps = unmaps = reused = 0  # GrantMemory's (a foreign map is no grant operation)

    def __init__(self, xen: Xen, domid: int, log=None, persistent: bool = False):
        self.xen, self.domid = xen, domid

    def close(self) -> None:
        pass

    def view(self, gpa: int, length: int, write: bool = True) -> tuple[memoryview, tuple]:
        first, last = gpa // PAGE, (gpa + max(length, 1) - 1) // PAGE
        n = last - first + 1
        pfns = (C.c_ulong * n)(*range(first, last + 1))
        errs = (C.c_int * n)()
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        addr = self.xen.fm.xenforeignmemory_map(self.xen.fmh, self.domid, prot, n, pfns, errs)
        if not addr or any(errs):
            raise XenError(f"cannot map guest frames {first:#x}..{last:#x}")
        buf = (C.c_char * (n * PAGE)).from_address(addr)
        return memoryview(buf).cast("B")[gpa % PAGE : gpa % PAGE + length], (addr, n)

    def unmap(self, handle) -> None:
        self.xen.fm.xenforeignmemory_unmap(self.xen.fmh, handle[0], handle[1])


class GrantMemory:
    """Grant references mapped through gntdev (libxengnttab): VirtIO-SuSE, the guest's
    xen-grant-dma puts `GRANT_DMA | grant << 12 | offset` in every address it gives the
    device (the rings' too), one grant per page, consecutive for one buffer. Each view maps
    the buffer's grants and its unmap unmaps them: the guest ends its grants when the
    request completes and stops using the device if the backend still holds one
    (grant-dma-ops.c, xen_grant_dma_unmap_page), so no data mapping outlives its request.
    Persistent (the guest's pool of tests/xen/grant/persistent-grants.patch, addresses
    with PERSISTENT_DMA): each buffer's grants are mapped the first time and the mapping
    kept until the backend closes, as blkback keeps persistent grants; only its first use
    is logged.
    Each map is logged as QEMU's map cache logs its own: xen_map_cache with the address
    asked for, xen_map_cache_return with where it landed; each unmap as xen_unmap_grant
    with that place and the grant count (our event: QEMU 7.2 has none for an unmap). Xen's
    own records of both, dom0's grant-table operations (TRC_MEM_PAGE_GRANT_MAP and
    _UNMAP), are in the xentrace capture."""

    offered = F_ACCESS_PLATFORM

    def __init__(self, xen: Xen, domid: int, log, persistent: bool = False):
        self.xen, self.domid, self.log, self.persistent = xen, domid, log, persistent
        self.maps = self.unmaps = 0  # grants mapped and unmapped, over the run
        self.kept: dict[tuple[int, int], int] = {}  # (first grant, count) -> its mapping
        self.reused = 0  # grants found mapped already (persistent)

    def view(self, dma: int, length: int, write: bool = True) -> tuple[memoryview, tuple | None]:
        if not dma & GRANT_DMA:
            raise XenError(
                f"address {dma:#x} is no grant reference (bit 63 clear): not a grant-DMA guest?"
            )
        off = dma & (PAGE - 1)
        first = (dma & ~(GRANT_DMA | PERSISTENT_DMA)) >> 12
        n = (off + max(length, 1) + PAGE - 1) // PAGE
        keep = self.persistent and bool(dma & PERSISTENT_DMA)
        addr = self.kept.get((first, n)) if keep else None
        if addr is not None:
            self.reused += n
        else:  # a kept mapping is writable: the pool's pages serve both directions
            addr = self._map(dma, first, n, write or keep)
            if keep:
                self.kept[first, n] = addr
        buf = (C.c_char * (n * PAGE)).from_address(addr)
        return memoryview(buf).cast("B")[off : off + length], None if keep else (addr, n)

    def _map(self, dma: int, first: int, n: int, write: bool) -> int:
        refs = (C.c_uint32 * n)(*range(first, first + n))
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if write else 0)
        self.log("xen_map_cache", f"want {dma:#x}")
        addr = self.xen.gt.xengnttab_map_domain_grant_refs(self.xen.gth, n, self.domid, refs, prot)
        if not addr:
            raise XenError(f"cannot map grants {first}..{first + n - 1} of d{self.domid}: "
                           f"{os.strerror(C.get_errno())}")  # fmt: skip
        self.log("xen_map_cache_return", f"{addr:#x}")
        self.maps += n
        return addr

    def unmap(self, handle) -> None:
        if handle is None:  # kept (persistent) until close
            return
        self.xen.gt.xengnttab_unmap(self.xen.gth, handle[0], handle[1])
        self.log("xen_unmap_grant", f"{handle[0]:#x} count {handle[1]}")
        self.unmaps += handle[1]

    def close(self) -> None:
        for (_, n), addr in self.kept.items():
            self.unmap((addr, n))
        self.kept = {}


class Log:
    """QEMU log-backend lines, stamped with CLOCK_REALTIME in microseconds."""

    def __init__(self, path: str, events: str = "", who: str = "the EPAM backend's"):
        """`events`: trace-events lines of the writer's own, beside QEMU's (TRACE_EVENTS)."""
        self.fh = Path(path).open("w", buffering=1 << 16)  # noqa: SIM115 (open for the run)
        self.tid = os.getpid()
        Path(path + ".trace-events").write_text(
            f"# {who} events: QEMU's formats, and its own where QEMU has none\n"
            + TRACE_EVENTS
            + events
        )

    def __call__(self, event: str, text: str) -> None:
        t = time.time_ns() // 1000
        self.fh.write(f"{self.tid}@{t // 1_000_000}.{t % 1_000_000:06d}:{event} {text}\n")


class MmioRegisters(ABC):
    """A one-queue virtio-mmio (version 2) register file. The device behind it says what it
    offers (`offered`, `config`) and does what a notify, a status change and a reset ask
    (`notify`, `status_set`, `reset`); the register state is here."""

    def __init__(self, log: Log, irq_level):
        self.log, self.irq_level = log, irq_level
        self.reset_registers()

    def reset_registers(self) -> None:
        self.status = self.isr = 0
        self.dev_sel = self.drv_sel = 0
        self.driver_features = 0
        self.num, self.ready, self.queue_sel = QUEUE_MAX, 0, 0
        self.desc = self.avail = self.used = 0

    @abstractmethod
    def offered(self) -> int:
        """The device's feature bits."""

    @abstractmethod
    def config(self) -> bytes:
        """The device's config space, from offset 0x100."""

    @abstractmethod
    def notify(self, queue: int) -> None:
        """A QueueNotify write."""

    def status_set(self, value: int) -> None:  # noqa: B027 (a hook: EPAM does nothing)
        """After a status write other than a reset (the value is in `status` already)."""

    def reset(self) -> None:
        self.reset_registers()

    def fds(self) -> list[int]:
        """Descriptors of the device's own for the server to wait on beside the IOREQs."""
        return []

    def on_fd(self, fd: int) -> None:  # noqa: B027 (a hook: EPAM has no fds of its own)
        """One of `fds()` is readable."""

    def read(self, off: int, size: int) -> int:
        self.log("virtio_mmio_read", f"virtio_mmio_read offset {off:#x}")
        if off >= 0x100:  # config space
            cfg = self.config() + bytes(0x40)
            return int.from_bytes(cfg[off - 0x100 : off - 0x100 + size], "little")
        feats = (self.offered() >> (32 * self.dev_sel)) & 0xFFFFFFFF if self.dev_sel < 2 else 0
        only = self.queue_sel == 0  # one queue
        return {0x000: MAGIC, 0x004: VERSION, 0x008: DEVICE_BLOCK, 0x00C: VENDOR, 0x010: feats,
                0x034: QUEUE_MAX if only else 0, 0x044: self.ready if only else 0, 0x060: self.isr, 0x070: self.status,
                0x0FC: 0}.get(off, 0)  # fmt: skip

    def write(self, off: int, size: int, value: int) -> None:
        self.log("virtio_mmio_write_offset", f"virtio_mmio_write offset {off:#x} value {value:#x}")
        if off == 0x014:
            self.dev_sel = value
        elif off == 0x020:
            self.driver_features |= value << (32 * self.drv_sel)
        elif off == 0x024:
            self.drv_sel = value
        elif off == 0x030:
            self.queue_sel = value
        elif self.queue_sel != 0 and 0x038 <= off <= 0x0A4:
            return  # no such queue
        elif off == 0x038:
            self.num = value
        elif off == 0x044:
            self.ready = value & 1
        elif off == 0x050:
            self.notify(value)
        elif off == 0x064:
            self.isr &= ~value
            if not self.isr:
                self.set_irq(0)
        elif off == 0x070:
            self.log("virtio_set_status", f"vdev {VDEV:#x} val {value}")
            if value == 0:
                self.reset()
                self.set_irq(0)
            self.status = value
            if value:
                self.status_set(value)
        elif 0x080 <= off <= 0x0A4:
            field = {0x080: "desc", 0x090: "avail", 0x0A0: "used"}[off & ~0x7]
            old = getattr(self, field)
            shift = 32 if off & 4 else 0
            setattr(self, field, (old & ~(0xFFFFFFFF << shift)) | (value << shift))

    def set_irq(self, level: int) -> None:
        self.log("virtio_mmio_setting_irq", f"virtio_mmio setting IRQ {level}")
        self.irq_level(level)

    def used_buffer(self) -> None:
        """The used-buffer interrupt: InterruptStatus bit 0, the line raised if it was low."""
        was = self.isr
        self.isr |= 1
        if not was:
            self.set_irq(1)


def block_config(sectors: int) -> bytes:
    """virtio-blk's config space: capacity (u64), size_max, seg_max (u32)."""
    return struct.pack("<QII", sectors, 0, QUEUE_MAX - 2)


class VirtioBlock(MmioRegisters):
    """The device: virtio-mmio v2 registers, one split virtqueue, a file as the disk."""

    def __init__(self, disk: str, mem: GuestMemory, log: Log, irq_level):
        self.queue = BlockQueue(disk, mem, log, b"xvtrace-epam")
        self.mem = mem
        self.pending: list[Job] = []  # popped, to run once the kick's IOREQ is answered
        super().__init__(log, irq_level)

    @property
    def requests(self) -> int:  # over the device's life (a driver reset keeps the count)
        return self.queue.requests

    def close(self) -> None:
        self.reset()  # unmaps the rings and any popped request's buffers
        self.queue.close()  # and what the memory kept mapped
        self.log.fh.close()

    def reset(self) -> None:
        for job in self.pending:  # a reset drops what the driver never saw completed
            self.queue.release(job)
        self.pending = []
        self.queue.unmap_rings()  # a driver reset may place the queue elsewhere
        super().reset()

    def offered(self) -> int:
        return F_VERSION_1 | F_SEG_MAX | self.mem.offered

    def config(self) -> bytes:
        return block_config(self.queue.sectors)

    def notify(self, queue: int) -> None:
        """QueueNotify, as QEMU's virtio-blk takes it: pop every available request and map
        its buffers while the vCPU waits on the IOREQ; the I/O runs once it is answered
        (complete_pending), as QEMU's AIO completes in its main loop later."""
        self.log("virtio_queue_notify", f"vdev {VDEV:#x} n {queue} vq {VQ:#x}")
        if queue != 0 or not self.ready:
            return
        if self.queue.rings is None:
            self.queue.map_rings(self.desc, self.avail, self.used, self.num)
        self.pending.extend(self.queue.pop_available())

    def complete_pending(self) -> None:
        """Run the popped requests, each then put on the used ring with the interrupt raised,
        as QEMU's virtio_blk_req_complete does (push, then notify, per request)."""
        jobs, self.pending = self.pending, []
        self.queue.complete(jobs, self.used_buffer)


class BlockQueue:
    """One split virtqueue of block requests over a file: pop, map, run, push. `mem` maps
    the guest's addresses (view/unmap); the log names each step as QEMU's virtio-blk does."""

    def __init__(self, disk: str, mem, log: Log, ident: bytes):
        self.fd = os.open(disk, os.O_RDWR)
        self.sectors = os.fstat(self.fd).st_size // 512
        self.mem, self.log, self.ident = mem, log, ident
        self.requests = 0
        self.rings, self.ring_maps, self.num = None, [], 0
        self.last_avail = self.used_idx = 0

    def close(self) -> None:
        self.unmap_rings()
        self.mem.close()
        os.close(self.fd)

    def map_rings(self, desc: int, avail: int, used: int, num: int, base: int = 0) -> None:
        """The queue's descriptor table, available and used rings, mapped for as long as
        the driver keeps them (until a reset); indices from `base`."""
        self.num, self.last_avail, self.used_idx = num, base, base
        mapped = [self.mem.view(desc, 16 * num), self.mem.view(avail, 6 + 2 * num),
                  self.mem.view(used, 6 + 8 * num)]  # fmt: skip
        self.rings = tuple(view for view, _ in mapped)
        self.ring_maps = [handle for _, handle in mapped]

    def unmap_rings(self) -> None:
        for handle in self.ring_maps:
            self.mem.unmap(handle)
        self.rings, self.ring_maps = None, []

    def pop_available(self) -> list[Job]:
        """Every request the driver made available since the last pop, buffers mapped."""
        desc, avail, _ = self.rings
        jobs = []
        try:
            while self.last_avail != struct.unpack_from("<H", avail, 2)[0]:
                head = struct.unpack_from("<H", avail, 4 + 2 * (self.last_avail % self.num))[0]
                self.last_avail = (self.last_avail + 1) & 0xFFFF
                jobs.append(self.pop(desc, head))
        except BaseException:
            for job in jobs:
                self.release(job)
            raise
        return jobs

    def complete(self, jobs: list[Job], notify) -> None:
        """Run each request, put it on the used ring and call `notify()`, as QEMU's
        virtio_blk_req_complete does (push, then notify, per request)."""
        try:
            while jobs:
                job = jobs.pop(0)
                written = self.run(job)
                used = self.rings[2]
                struct.pack_into("<II", used, 4 + 8 * (self.used_idx % self.num), job.head, written)
                self.log(
                    "virtqueue_fill",
                    f"vq {VQ:#x} elem {self.elem(job.head):#x} len {written} idx 0",
                )
                self.used_idx = (self.used_idx + 1) & 0xFFFF
                struct.pack_into("<H", used, 2, self.used_idx)  # after the entry (x86: in order)
                self.log("virtqueue_flush", f"vq {VQ:#x} count 1")
                self.log("virtio_notify", f"vdev {VDEV:#x} vq {VQ:#x}")
                notify()
        finally:  # a failure leaves no request's buffers mapped
            for job in jobs:
                self.release(job)

    def release(self, job: Job) -> None:
        for _, handle in job.bufs:
            self.mem.unmap(handle)
        job.bufs = []

    @staticmethod
    def elem(head: int) -> int:
        return 0x7F0000300000 + 0x100 * head

    def pop(self, desc, head: int) -> Job:
        """Walk a descriptor chain, read its header and map its buffers."""
        chain, i = [], head
        while True:
            if i >= self.num:  # a guest bug or a hostile ring: never read past the table
                raise XenError(f"descriptor {i} beyond the queue's {self.num}")
            addr, length, flags, nxt = struct.unpack_from("<QIHH", desc, 16 * i)
            chain.append((addr, length, flags))
            if not flags & DESC_NEXT or len(chain) > self.num:
                break
            i = nxt
        ins = sum(1 for c in chain if c[2] & DESC_WRITE)
        elem = self.elem(head)
        self.log(
            "virtqueue_pop", f"vq {VQ:#x} elem {elem:#x} in_num {ins} out_num {len(chain) - ins}"
        )
        hdr, h = self.mem.view(chain[0][0], 16, write=False)
        try:
            kind, _, sector = struct.unpack("<IIQ", hdr)
        finally:
            self.mem.unmap(h)
        data, status = chain[1:-1], chain[-1]
        job = Job(head, kind, sector, [], status[0])
        try:
            for addr, length, flags in data:
                job.bufs.append(self.mem.view(addr, length, write=bool(flags & DESC_WRITE)))
        except BaseException:
            self.release(job)
            raise
        if kind in (BLK_IN, BLK_OUT):
            name = "virtio_blk_handle_read" if kind == BLK_IN else "virtio_blk_handle_write"
            nbytes = sum(c[1] for c in data)
            self.log(name, f"vdev {VDEV:#x} req {elem:#x} sector {sector} nsectors {nbytes // 512}")
        return job

    def run(self, job: Job) -> int:
        """Do one popped request; the bytes written into the guest's buffers plus status."""
        elem = self.elem(job.head)
        written, rc = 0, 0
        try:
            if job.kind in (BLK_IN, BLK_OUT):
                pos = job.sector * 512
                for buf, _ in job.bufs:
                    try:
                        if job.kind == BLK_IN:
                            buf[:] = os.pread(self.fd, len(buf), pos).ljust(len(buf), b"\0")
                            written += len(buf)
                        else:
                            os.pwrite(self.fd, bytes(buf), pos)
                    except OSError:
                        rc = -5
                    pos += len(buf)
                self.log("virtio_blk_rw_complete", f"vdev {VDEV:#x} req {elem:#x} ret {rc}")
            elif job.kind == BLK_FLUSH:
                os.fsync(self.fd)
            elif job.kind == BLK_GET_ID and job.bufs:
                buf = job.bufs[0][0]
                ident = self.ident.ljust(len(buf), b"\0")[: len(buf)]
                buf[:] = ident
                written += len(ident)
            else:
                rc = -95
        except OSError:  # fsync
            rc = -5
        finally:
            self.release(job)
        code = 0 if rc == 0 else (2 if rc == -95 else 1)
        st, h = self.mem.view(job.status, 1)
        st[0] = code
        self.mem.unmap(h)
        self.log("virtio_blk_req_complete", f"vdev {VDEV:#x} req {elem:#x} status {code}")
        self.requests += 1
        return written + 1


@dataclass
class Job:
    """A popped request: descriptor head, type, sector, mapped buffers, status address."""

    head: int
    kind: int
    sector: int
    bufs: list  # (memoryview, mapping handle)
    status: int


class Server:
    """The IOREQ server and its event loop."""

    def __init__(self, xen: Xen, domid: int, base: int, size: int, irq: int, vcpus: int, dev, log):
        self.xen, self.domid, self.base, self.dev, self.log, self.irq = (
            xen,
            domid,
            base,
            dev,
            log,
            irq,
        )
        sid = C.c_uint16()
        xen.check(
            xen.dm.xendevicemodel_create_ioreq_server(xen.dmh, domid, 0, C.byref(sid)),
            "create_ioreq_server",
        )
        self.id = sid.value
        page = C.c_void_p()
        res = xen.fm.xenforeignmemory_map_resource(
            xen.fmh, domid, RESOURCE_IOREQ_SERVER, self.id, FRAME_IOREQ, 1, C.byref(page),
            mmap.PROT_READ | mmap.PROT_WRITE, 0)  # fmt: skip
        if not res:
            raise XenError(f"map_resource(ioreq server {self.id}): {os.strerror(C.get_errno())}")
        self.page = memoryview((C.c_char * PAGE).from_address(page.value)).cast("B")
        xen.check(xen.dm.xendevicemodel_map_io_range_to_ioreq_server(xen.dmh, domid, self.id, 1, base, base + size - 1),
                  "map_io_range_to_ioreq_server")  # fmt: skip
        xen.check(
            xen.dm.xendevicemodel_set_ioreq_server_state(xen.dmh, domid, self.id, 1),
            "set_ioreq_server_state",
        )
        self.ports = {}
        for v in range(vcpus):
            remote = struct.unpack_from("<I", self.page, 32 * v + 24)[0]
            local = xen.check(
                xen.ev.xenevtchn_bind_interdomain(xen.evh, domid, remote), f"bind vCPU {v}"
            )
            self.ports[local] = v

    def irq_level(self, level: int) -> None:
        self.xen.check(self.xen.dm.xendevicemodel_set_isa_irq_level(self.xen.dmh, self.domid, self.irq, level),
                       "set_isa_irq_level")  # fmt: skip

    def serve(self, stop) -> int:
        fd = self.xen.ev.xenevtchn_fd(self.xen.evh)
        handled = 0
        while not stop():
            ready = select.select([fd, *self.dev.fds()], [], [], 0.5)[0]
            for other in ready:  # the device's own (a vhost-user call eventfd)
                if other != fd:
                    self.dev.on_fd(other)
            if fd not in ready:
                continue
            port = self.xen.ev.xenevtchn_pending(self.xen.evh)
            if port < 0:
                continue
            self.xen.ev.xenevtchn_unmask(self.xen.evh, port)
            v = self.ports.get(port)
            if v is None:
                continue
            if self.handle(v):  # a spurious event (state 0) follows each bind
                self.xen.ev.xenevtchn_notify(self.xen.evh, port)
                handled += 1
                self.dev.complete_pending()  # the vCPU runs on meanwhile
        return handled

    def handle(self, v: int) -> bool:
        off = 32 * v
        flags = self.page[off + 30]
        if flags & 0xF != STATE_IOREQ_READY:
            return False
        addr, data, count, size = struct.unpack_from("<QQII", self.page, off)
        is_ptr, read, df, kind = (
            (flags >> 4) & 1,
            (flags >> 5) & 1,
            (flags >> 6) & 1,
            self.page[off + 31],
        )
        slot = SLOT_BASE + off
        self.log("handle_ioreq", f"I/O={slot:#x} type={kind} dir={read} df={df} ptr={is_ptr} port={addr:#x} "
                                 f"data={data:#x} count={count} size={size}")  # fmt: skip
        if kind == IOREQ_TYPE_COPY and not is_ptr and count == 1:
            if read:
                data = self.dev.read(addr - self.base, size) & ((1 << (8 * size)) - 1)
                struct.pack_into("<Q", self.page, off + 8, data)
            else:
                self.dev.write(addr - self.base, size, data & ((1 << (8 * size)) - 1))
        self.log("cpu_ioreq_move", f"I/O={slot:#x} copy dir={read} df={df} ptr={is_ptr} port={addr:#x} "
                                   f"data={data:#x} count={count} size={size}")  # fmt: skip
        self.page[off + 30] = (flags & 0xF0) | STATE_IORESP_READY  # after the data (x86: in order)
        return True

    def close(self) -> None:
        self.xen.dm.xendevicemodel_set_ioreq_server_state(self.xen.dmh, self.domid, self.id, 0)
        self.xen.dm.xendevicemodel_destroy_ioreq_server(self.xen.dmh, self.domid, self.id)


def ioreq_server_args(ap: argparse.ArgumentParser) -> None:
    """The options of a process that serves the guest's device window over IOREQs."""
    ap.add_argument("--domid", type=int, required=True)
    ap.add_argument("--log", required=True, help="the QEMU log-backend trace to write")
    ap.add_argument("--base", type=lambda s: int(s, 0), default=0xFE000000)
    ap.add_argument("--size", type=lambda s: int(s, 0), default=0x200)
    ap.add_argument("--irq", type=int, default=5)
    ap.add_argument("--vcpus", type=int, default=1)


def stop_on_signals():
    """A function saying whether SIGTERM or SIGINT came (the serve loops poll it)."""
    import signal

    stopping = []
    signal.signal(signal.SIGTERM, lambda *a: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *a: stopping.append(1))
    return lambda: bool(stopping)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ioreq_server_args(ap)
    ap.add_argument("--disk", required=True)
    ap.add_argument("--grants", action="store_true",
                    help="VirtIO-SuSE: the guest's addresses are grant references (xen-grant-dma), "
                         "mapped per request through gntdev, not guest frames")  # fmt: skip
    ap.add_argument("--persistent", action="store_true",
                    help="with --grants: keep the guest's persistent grants (its pool's addresses, "
                         "bit 62) mapped after their first use")  # fmt: skip
    args = ap.parse_args()
    stop = stop_on_signals()
    try:
        xen = Xen()
        log = Log(args.log)
        holder = {}
        memory = (GrantMemory if args.grants else GuestMemory)(
            xen, args.domid, log, persistent=args.persistent
        )
        dev = VirtioBlock(args.disk, memory, log, lambda lvl: holder["s"].irq_level(lvl))
        server = holder["s"] = Server(
            xen, args.domid, args.base, args.size, args.irq, args.vcpus, dev, log
        )
    except (XenError, OSError) as e:
        sys.exit(f"epam backend: {e}")
    print(f"epam backend: ioreq server {server.id} on d{args.domid}, MMIO {args.base:#x}+{args.size:#x}, "
          f"IRQ {args.irq}, {len(server.ports)} vCPU channel(s)", flush=True)  # fmt: skip
    try:
        handled = server.serve(stop)
    except XenError as e:
        sys.exit(f"epam backend: {e}")
    finally:
        server.close()
        dev.close()  # unmaps the rings and any popped request's buffers, closes the log
    print(
        f"epam backend: {handled} IOREQs, {dev.requests} block requests, "
        f"{memory.maps} grants mapped, {memory.unmaps} unmapped, {memory.reused} reused mapped",
        flush=True,
    )


if __name__ == "__main__":
    main()
