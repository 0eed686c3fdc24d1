"""A Xen vhost-user front-end for the real-Xen test host (Linaro Stratos's shape, as
xen-vhost-frontend is): the IOREQ server of a virtio-mmio block device that serves the
registers itself and hands the queue to a vhost-user back-end process (stratos/backend.py)
over a unix socket: the device's setup as vhost-user messages, each queue kick as a write
to the back-end's kick eventfd, each call the back-end writes on its call eventfd as the
guest's interrupt.

    frontend.py --domid D --socket PATH --log LOG [--memory-mb 256] [--base 0xfe000000]
                [--size 0x200] [--irq 5] [--vcpus 1]

The guest's memory goes to the back-end as one region per RAM range with the Xen mmap
extension (VHOST_USER_PROTOCOL_F_XEN_MMAP): foreign, the domain's id, guest-physical
addresses as the user addresses; the back-end maps the frames itself.

The log: QEMU's log-backend lines as the EPAM backend writes them for the IOREQs and the
registers (handle_ioreq, cpu_ioreq_move, virtio_mmio_read/write_offset, virtio_set_status,
virtio_queue_notify, virtio_mmio_setting_irq), QEMU's vhost_user_write / vhost_user_read
for every message sent and reply read (in QEMU's later format, which names the message), and vhost_user_call_read (ours: QEMU has none) when
the call eventfd is read, with the count of calls it gathered.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/xen: epam's register file and IOREQ server

from epam.backend import (  # noqa: E402
    F_SEG_MAX,
    F_VERSION_1,
    VDEV,
    VQ,
    Log,
    MmioRegisters,
    Server,
    Xen,
    XenError,
    ioreq_server_args,
    stop_on_signals,
)
from stratos import vhost_user as vu  # noqa: E402

FRONTEND_EVENTS = """\
vhost_user_read(uint32_t req, const char *req_name, uint32_t flags) "req:%d (%s) flags:0x%"PRIx32""
vhost_user_write(uint32_t req, const char *req_name, uint32_t flags) "req:%d (%s) flags:0x%"PRIx32""
vhost_user_call_read(int idx, uint64_t count) "idx:%d count:%"PRIu64
"""
DEVICE_FEATURES = F_VERSION_1 | F_SEG_MAX  # the ring features the guest may have
CONFIG_SIZE = 16  # capacity, size_max, seg_max: what the guest reads with those features
DRIVER_OK = 4


class VhostUserFront(MmioRegisters):
    """The register file of a virtio-mmio device whose queue a vhost-user back-end serves.
    `regions` (vhost_user.Region) and `region_fds` are the guest's memory as the back-end
    is to map it; `xen`: the regions use the Xen mmap extension."""

    def __init__(self, ch: vu.Channel, regions, region_fds, xen: bool, log: Log, irq_level):
        self.ch, self.regions, self.region_fds, self.xen = ch, regions, region_fds, xen
        self.kick_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.call_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.started = False
        self.calls = 0
        super().__init__(log, irq_level)
        self.backend_features = self._call(vu.GET_FEATURES).u64()
        self.protocol = 0
        if self.backend_features & vu.F_PROTOCOL_FEATURES:
            offered = self._call(vu.GET_PROTOCOL_FEATURES).u64()
            want = vu.PF_REPLY_ACK | vu.PF_CONFIG | (vu.PF_XEN_MMAP if xen else 0)
            # (no ack asked: REPLY_ACK applies once this message has negotiated it)
            self._send(vu.SET_PROTOCOL_FEATURES, struct.pack("<Q", offered & want), ack=False)
            self.protocol = offered & want
        if xen and not self.protocol & vu.PF_XEN_MMAP:
            raise vu.ProtocolError("the back-end does not map Xen guest memory (no XEN_MMAP)")
        self._send(vu.SET_OWNER)
        self.cfg = self._config()

    def close(self) -> None:
        with contextlib.suppress(vu.ProtocolError, OSError):  # (a back-end gone: no ring)
            self.reset()  # stops the back-end's ring
        self.ch.close()
        for fd in (self.kick_fd, self.call_fd, *self.region_fds):
            os.close(fd)
        self.region_fds = []
        self.log.fh.close()

    # -- the protocol
    def _write(self, request: int, flags: int, payload: bytes = b"", fds=()) -> None:
        self.log("vhost_user_write", f"req:{request} ({vu.NAMES[request]}) flags:{flags:#x}")
        self.ch.send(vu.Message(request, flags, payload, tuple(fds)))

    def _send(self, request: int, payload: bytes = b"", fds=(), ack: bool = True) -> None:
        """A request without a reply; with REPLY_ACK, one the back-end must ack."""
        flags = vu.VERSION | (vu.NEED_REPLY if ack and self.protocol & vu.PF_REPLY_ACK else 0)
        self._write(request, flags, payload, fds)
        if flags & vu.NEED_REPLY:
            got = self._read(request)
            if got.u64():
                raise vu.ProtocolError(f"{vu.NAMES[request]}: the back-end failed it ({got.u64()})")

    def _call(self, request: int, payload: bytes = b"") -> vu.Message:
        """A request with a reply, and the reply."""
        self._write(request, vu.VERSION, payload)
        return self._read(request)

    def _read(self, request: int) -> vu.Message:
        got = self.ch.recv()
        if got is None:
            raise vu.ProtocolError(f"{vu.NAMES[request]}: the back-end closed the connection")
        self.log("vhost_user_read", f"req:{got.request} ({got.name}) flags:{got.flags:#x}")
        if got.request != request or not got.flags & vu.REPLY:
            raise vu.ProtocolError(
                f"{vu.NAMES[request]}: answered by {got.name} flags {got.flags:#x}"
            )
        return got

    def _config(self) -> bytes:
        if not self.protocol & vu.PF_CONFIG:
            raise vu.ProtocolError("the back-end gives no config space (no CONFIG)")
        got = self._call(
            vu.GET_CONFIG, vu.CONFIG_HEADER.pack(0, CONFIG_SIZE, 0) + bytes(CONFIG_SIZE)
        )
        if len(got.payload) < vu.CONFIG_HEADER.size + CONFIG_SIZE:
            raise vu.ProtocolError(
                f"GET_CONFIG: {len(got.payload)}-byte reply (the back-end failed it)"
            )
        return got.payload[vu.CONFIG_HEADER.size :]

    def _user(self, gpa: int) -> int:
        for r in self.regions:
            if r.gpa <= gpa < r.gpa + r.size:
                return r.user + gpa - r.gpa
        raise XenError(f"the driver placed a ring at {gpa:#x}, in no memory region")

    def _start(self) -> None:
        """DRIVER_OK: the back-end gets the features, the memory and the ring, as QEMU's
        vhost_dev_start sends them."""
        feats = self.driver_features & DEVICE_FEATURES
        if self.backend_features & vu.F_PROTOCOL_FEATURES:
            feats |= vu.F_PROTOCOL_FEATURES
        self._send(vu.SET_FEATURES, struct.pack("<Q", feats))
        self._send(vu.SET_MEM_TABLE, vu.pack_regions(self.regions, self.xen), self.region_fds)
        self._send(vu.SET_VRING_NUM, vu.STATE.pack(0, self.num))
        self._send(vu.SET_VRING_BASE, vu.STATE.pack(0, 0))
        addrs = (self._user(a) for a in (self.desc, self.used, self.avail))
        self._send(vu.SET_VRING_ADDR, vu.ADDR.pack(0, 0, *addrs, 0))
        self._send(vu.SET_VRING_KICK, struct.pack("<Q", 0), [self.kick_fd])
        self._send(vu.SET_VRING_CALL, struct.pack("<Q", 0), [self.call_fd])
        if self.backend_features & vu.F_PROTOCOL_FEATURES:
            self._send(vu.SET_VRING_ENABLE, vu.STATE.pack(0, 1))
        self.started = True

    # -- the device
    def offered(self) -> int:
        return self.backend_features & DEVICE_FEATURES

    def config(self) -> bytes:
        return self.cfg

    def status_set(self, value: int) -> None:
        if value & DRIVER_OK and not self.started and self.ready:
            self._start()

    def reset(self) -> None:
        if self.started:  # stops the ring (its reply: where the back-end got to)
            self._call(vu.GET_VRING_BASE, vu.STATE.pack(0, 0))
            self.started = False
        super().reset()

    def notify(self, queue: int) -> None:
        """QueueNotify: the kick, to the back-end's eventfd; the vCPU's IOREQ is answered
        at once (the back-end runs the queue on its own)."""
        self.log("virtio_queue_notify", f"vdev {VDEV:#x} n {queue} vq {VQ:#x}")
        if queue == 0 and self.started:
            os.eventfd_write(self.kick_fd, 1)

    def complete_pending(self) -> None:
        pass  # (the EPAM device's; here the back-end completes on its own)

    def fds(self) -> list[int]:
        return [self.call_fd]

    def on_fd(self, fd: int) -> None:
        """The call eventfd: the back-end used buffers; the guest's interrupt."""
        try:
            count = os.eventfd_read(self.call_fd)
        except BlockingIOError:
            return
        self.calls += count
        self.log("vhost_user_call_read", f"idx:0 count:{count}")
        self.used_buffer()


def xen_regions(domid: int, memory_mb: int) -> tuple[list[vu.Region], list[int]]:
    """The guest's RAM as one foreign region from address 0 (the back-end's mapping skips
    the frames in holes), with a privcmd descriptor, as the extension passes one."""
    fd = os.open("/dev/xen/privcmd", os.O_RDWR | os.O_CLOEXEC)
    size = memory_mb << 20
    return [vu.Region(0, size, 0, 0, vu.XEN_FOREIGN, domid)], [fd]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ioreq_server_args(ap)
    ap.add_argument("--socket", required=True, help="the back-end's unix socket")
    ap.add_argument("--memory-mb", type=int, default=256, help="the guest's RAM (xl's memory)")
    args = ap.parse_args()
    stop = stop_on_signals()
    try:
        xen = Xen()
        log = Log(args.log, FRONTEND_EVENTS, "the Stratos vhost-user front-end's")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(args.socket)
        holder = {}
        regions, fds = xen_regions(args.domid, args.memory_mb)
        dev = VhostUserFront(vu.Channel(sock), regions, fds, True, log,
                             lambda lvl: holder["s"].irq_level(lvl))  # fmt: skip
        server = holder["s"] = Server(
            xen, args.domid, args.base, args.size, args.irq, args.vcpus, dev, log
        )
    except (XenError, vu.ProtocolError, OSError) as e:
        sys.exit(f"vhost-user frontend: {e}")
    print(f"vhost-user frontend: ioreq server {server.id} on d{args.domid}, MMIO {args.base:#x}+"
          f"{args.size:#x}, IRQ {args.irq}, back-end {args.socket}", flush=True)  # fmt: skip
    try:
        handled = server.serve(stop)
    except (XenError, vu.ProtocolError, OSError) as e:
        sys.exit(f"vhost-user frontend: {e}")
    finally:
        server.close()
        dev.close()
    print(f"vhost-user frontend: {handled} IOREQs, {dev.calls} calls", flush=True)


if __name__ == "__main__":
    main()
