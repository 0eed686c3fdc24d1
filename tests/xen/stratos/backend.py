"""A vhost-user-blk back-end process for the real-Xen test host (Linaro Stratos's shape: a
hypervisor-agnostic device in its own process, as vhost-device's are): it serves one
front-end on a unix socket, maps the guest's memory itself from the memory table, and
serves the block queue on its kick eventfd, answering on its call eventfd.

    backend.py --socket PATH --disk FILE --log LOG

Memory: a region whose xen mmap flags say foreign (VHOST_USER_PROTOCOL_F_XEN_MMAP) is
mapped whole through Xen foreign mappings of the domain the region names, at
SET_MEM_TABLE, as vm-memory's Xen foreign regions are; any other region is the mmap of the
descriptor it came with (the front-end's shared memory, as under QEMU or in the tests).

The log: QEMU's log-backend lines with QEMU's virtio-blk event names (virtqueue_pop,
virtio_blk_handle_read/write, virtio_blk_rw_complete, virtio_blk_req_complete,
virtqueue_fill, virtqueue_flush, virtio_notify), and for the steps QEMU has no event for
virtio_queue_notify when a kick wakes the queue (the device's queue notified, as QEMU
logs it when a notify reaches a device), virtio_notify as the call eventfd is written, and
vu_message (ours, after libvhost-user's name) per front-end message: its number and name.
"""

from __future__ import annotations

import argparse
import ctypes as C
import mmap
import os
import select
import socket
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/xen: epam's device parts

from epam.backend import (  # noqa: E402
    F_SEG_MAX,
    F_VERSION_1,
    PAGE,
    VDEV,
    VQ,
    BlockQueue,
    Log,
    XenError,
    block_config,
    stop_on_signals,
)
from stratos import vhost_user as vu  # noqa: E402

BACKEND_EVENTS = """\
vu_message(uint32_t req, const char *req_name, uint32_t flags) "req:%d (%s) flags:0x%"PRIx32
"""
FEATURES = F_VERSION_1 | F_SEG_MAX | vu.F_PROTOCOL_FEATURES
PROTOCOL_FEATURES = vu.PF_MQ | vu.PF_REPLY_ACK | vu.PF_CONFIG | vu.PF_XEN_MMAP


class RegionMemory:
    """The guest's memory as the memory table gives it: guest-physical addresses to views
    of regions mapped once (fd-backed, or Xen foreign), front-end user addresses to
    guest-physical ones."""

    def __init__(self):
        self.regions: list[tuple[vu.Region, memoryview, object]] = []

    def set(self, regions: list[vu.Region], fds: tuple[int, ...]) -> None:
        self.close()
        try:
            self._map(regions, fds)
        finally:
            for fd in fds:  # each mapping holds its own reference
                os.close(fd)

    def _map(self, regions: list[vu.Region], fds: tuple[int, ...]) -> None:
        for i, r in enumerate(regions):
            fd = fds[i] if i < len(fds) else -1
            if r.xen_flags & vu.XEN_FOREIGN:
                view, keep = _foreign_map(r)
            elif r.xen_flags:
                raise XenError(f"region {i}: xen mmap flags {r.xen_flags:#x} (grants): not served")
            elif fd < 0:
                raise XenError(f"region {i} at {r.gpa:#x} came without a descriptor")
            else:
                m = mmap.mmap(fd, r.size + r.offset, offset=0)
                view, keep = memoryview(m)[r.offset : r.offset + r.size], m
            self.regions.append((r, view, keep))

    def gpa_of_user(self, user: int) -> int:
        for r, _, _ in self.regions:
            if r.user <= user < r.user + r.size:
                return r.gpa + user - r.user
        raise XenError(f"user address {user:#x} is in no region of the memory table")

    def view(self, gpa: int, length: int, write: bool = True) -> tuple[memoryview, None]:
        for r, view, _ in self.regions:
            if r.gpa <= gpa and gpa + length <= r.gpa + r.size:
                return view[gpa - r.gpa : gpa - r.gpa + length], None
        raise XenError(f"guest address {gpa:#x}+{length:#x} is in no region of the memory table")

    def unmap(self, handle) -> None:
        pass  # mapped for as long as the memory table stands

    def close(self) -> None:
        for _, view, keep in self.regions:
            view.release()
            if isinstance(keep, mmap.mmap):
                keep.close()
            elif keep is not None:
                keep()
        self.regions = []


def _foreign_map(r: vu.Region):
    """The region's guest frames mapped through libxenforeignmemory, whole. Frames the
    guest lacks (holes) map as errors: an access to one is refused, the rest serve."""
    fm = C.CDLL("libxenforeignmemory.so.1", use_errno=True)
    fm.xenforeignmemory_open.restype = C.c_void_p
    fm.xenforeignmemory_map.restype = C.c_void_p
    fm.xenforeignmemory_map.argtypes = [C.c_void_p, C.c_uint32, C.c_int, C.c_size_t,
                                        C.POINTER(C.c_ulong), C.POINTER(C.c_int)]  # fmt: skip
    fm.xenforeignmemory_unmap.argtypes = [C.c_void_p, C.c_void_p, C.c_size_t]
    fm.xenforeignmemory_close.argtypes = [C.c_void_p]
    h = fm.xenforeignmemory_open(None, 0)
    if not h:
        raise XenError(f"xenforeignmemory_open: {os.strerror(C.get_errno())} (not dom0?)")
    n = r.size // PAGE
    pfns = (C.c_ulong * n)(*range(r.gpa // PAGE, r.gpa // PAGE + n))
    errs = (C.c_int * n)()
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    addr = fm.xenforeignmemory_map(h, r.domid, prot, n, pfns, errs)
    if not addr:
        err = os.strerror(C.get_errno())
        fm.xenforeignmemory_close(h)
        raise XenError(f"cannot map d{r.domid}'s frames {r.gpa // PAGE:#x}+{n:#x}: {err}")
    view = memoryview((C.c_char * (n * PAGE)).from_address(addr)).cast("B")

    def unmap() -> None:
        fm.xenforeignmemory_unmap(h, addr, n)
        fm.xenforeignmemory_close(h)

    return view, unmap


class Backend:
    """The vhost-user-blk device: the protocol's state and the queue."""

    def __init__(self, disk: str, log: Log):
        self.log = log
        self.mem = RegionMemory()
        self.queue = BlockQueue(disk, self.mem, log, b"xvtrace-stratos")
        self.features = self.protocol = 0
        self.num = 0
        self.addr = (0, 0, 0)
        self.base = 0
        self.kick = self.call = -1
        self.started = False
        self.enabled = True  # until protocol features say rings start disabled

    def close(self) -> None:
        self._stop()
        for fd in (self.kick, self.call):
            if fd >= 0:
                os.close(fd)
        self.kick = self.call = -1
        self.queue.close()
        self.log.fh.close()

    def _stop(self) -> None:
        self.started = False
        self.queue.unmap_rings()

    def handle(self, ch: vu.Channel, msg: vu.Message) -> None:
        """One front-end message, answered as the protocol says."""
        self.log("vu_message", f"req:{msg.request} ({msg.name}) flags:{msg.flags:#x}")
        q = vu
        reply = None
        acks = bool(self.protocol & q.PF_REPLY_ACK)  # as negotiated before this message
        if msg.request == q.GET_FEATURES:
            reply = struct.pack("<Q", FEATURES)
        elif msg.request == q.SET_FEATURES:
            self.features = msg.u64()
            if self.features & q.F_PROTOCOL_FEATURES and not self.started:
                self.enabled = False  # a ring starts disabled until SET_VRING_ENABLE
        elif msg.request == q.GET_PROTOCOL_FEATURES:
            reply = struct.pack("<Q", PROTOCOL_FEATURES)
        elif msg.request == q.SET_PROTOCOL_FEATURES:
            self.protocol = msg.u64() & PROTOCOL_FEATURES
        elif msg.request == q.GET_QUEUE_NUM:
            reply = struct.pack("<Q", 1)
        elif msg.request == q.GET_CONFIG:
            off, size, flags = q.CONFIG_HEADER.unpack_from(msg.payload)
            cfg = block_config(self.queue.sectors).ljust(0x40, b"\0")
            reply = q.CONFIG_HEADER.pack(off, size, flags) + cfg[off : off + size].ljust(
                size, b"\0"
            )
        elif msg.request == q.SET_MEM_TABLE:  # (QEMU sends one whenever its memory map
            # changes, rings running or not: a running ring goes on from where it was)
            running = self.started
            if running:
                self.base = self.queue.last_avail
            self._stop()  # the rings' views go with the old table
            xen = bool(self.protocol & q.PF_XEN_MMAP)
            self.mem.set(q.unpack_regions(msg.payload, xen), msg.fds)
            msg.fds = ()
            if running:
                self._start()
        elif msg.request == q.SET_VRING_NUM:
            self.num = q.STATE.unpack_from(msg.payload)[1]
        elif msg.request == q.SET_VRING_ADDR:
            _, _, desc, used, avail, _ = q.ADDR.unpack_from(msg.payload)
            self.addr = (desc, avail, used)
        elif msg.request == q.SET_VRING_BASE:
            self.base = q.STATE.unpack_from(msg.payload)[1]
        elif msg.request == q.GET_VRING_BASE:  # stops the ring
            base = self.queue.last_avail if self.started else self.base
            self._stop()
            reply = q.STATE.pack(0, base)
        elif msg.request in (q.SET_VRING_KICK, q.SET_VRING_CALL, q.SET_VRING_ERR):
            fd = -1
            if msg.fds and not msg.u64() & q.VRING_NOFD:
                fd, msg.fds = msg.fds[0], msg.fds[1:]
            if msg.request == q.SET_VRING_ERR:
                if fd >= 0:
                    os.close(fd)
            else:
                which = "kick" if msg.request == q.SET_VRING_KICK else "call"
                old = getattr(self, which)
                if old >= 0:
                    os.close(old)
                setattr(self, which, fd)
                if which == "kick":
                    self._start()
        elif msg.request == q.SET_VRING_ENABLE:
            self.enabled = bool(q.STATE.unpack_from(msg.payload)[1])
        elif msg.request in (q.SET_OWNER, q.RESET_OWNER):
            if msg.request == q.RESET_OWNER:
                self._stop()
        else:
            for fd in msg.fds:
                os.close(fd)
            raise vu.ProtocolError(f"request {msg.name} not served")
        for fd in msg.fds:  # descriptors a message brought but does not use
            os.close(fd)
        if reply is not None:
            ch.reply(msg, reply)
        elif msg.flags & q.NEED_REPLY and acks:
            ch.reply(msg, struct.pack("<Q", 0))

    def _start(self) -> None:
        """A kick descriptor starts the ring: its addresses, in the front-end's space, are
        mapped through the memory table."""
        desc, avail, used = (self.mem.gpa_of_user(a) for a in self.addr)
        self.queue.map_rings(desc, avail, used, self.num, self.base)
        self.started = True

    def kicked(self) -> None:
        """The kick eventfd is readable: pop what is available, run it, push it, call."""
        os.read(self.kick, 8)
        self.log("virtio_queue_notify", f"vdev {VDEV:#x} n 0 vq {VQ:#x}")
        if not (self.started and self.enabled):
            return
        self.queue.complete(self.queue.pop_available(), self._call)

    def _call(self) -> None:
        if self.call >= 0:
            os.write(self.call, struct.pack("<Q", 1))


def serve(listener: socket.socket, backend: Backend, stop) -> int:
    """Serve one front-end until it hangs up or `stop()`; the messages handled."""
    listener.settimeout(0.5)
    conn = None
    while conn is None and not stop():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
    if conn is None:
        return 0
    conn.settimeout(None)
    ch = vu.Channel(conn)
    handled = 0
    try:
        while not stop():
            fds = [ch.fileno()] + ([backend.kick] if backend.kick >= 0 else [])
            ready = select.select(fds, [], [], 0.5)[0]
            if backend.kick in ready:
                backend.kicked()
            if ch.fileno() in ready:
                msg = ch.recv()
                if msg is None:
                    break
                backend.handle(ch, msg)
                handled += 1
    finally:
        ch.close()
    return handled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", required=True, help="the unix socket to listen on")
    ap.add_argument("--disk", required=True, help="the file the device serves")
    ap.add_argument("--log", required=True, help="the QEMU log-backend trace to write")
    args = ap.parse_args()
    stop = stop_on_signals()
    try:
        log = Log(args.log, BACKEND_EVENTS, "the Stratos vhost-user-blk back-end's")
        backend = Backend(args.disk, log)
        Path(args.socket).unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(args.socket)
        listener.listen(1)
    except OSError as e:
        sys.exit(f"vhost-user-blk backend: {e}")
    print(f"vhost-user-blk backend: listening on {args.socket}, disk {args.disk}", flush=True)
    try:
        handled = serve(listener, backend, stop)
    except (XenError, vu.ProtocolError, OSError) as e:
        sys.exit(f"vhost-user-blk backend: {e}")
    finally:
        listener.close()
        backend.close()
    print(f"vhost-user-blk backend: {handled} messages, {backend.queue.requests} block requests",
          flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
