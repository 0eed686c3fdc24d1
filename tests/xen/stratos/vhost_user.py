"""The vhost-user protocol, both ends' shared part: message layouts, numbers and the socket
exchange with file descriptors in the ancillary data (QEMU docs/interop/vhost-user.rst).
Standard library only: it runs in the test host's dom0, whose CPU has no SSE4/AVX.

A message is a header of three u32 (request, flags, payload size) and its payload, in the
machine's byte order (little-endian on every host this runs on). Flags: the version (1) in
bits 0-1, bit 2 on a reply, bit 3 (need_reply) asks for an ack when REPLY_ACK was
negotiated.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

# front-end requests (vhost-user.rst, "Front-end message types")
GET_FEATURES, SET_FEATURES, SET_OWNER, RESET_OWNER, SET_MEM_TABLE = 1, 2, 3, 4, 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR = 12, 13, 14
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, SET_VRING_ENABLE = 15, 16, 17, 18
GET_CONFIG, SET_CONFIG = 24, 25
NAMES = {v: k for k, v in dict(globals()).items() if k.isupper() and isinstance(v, int)}

VERSION, REPLY, NEED_REPLY = 0x1, 0x4, 0x8
F_PROTOCOL_FEATURES = 1 << 30  # the feature bit that says protocol features are negotiable
# protocol features (vhost-user.rst, "Protocol features")
PF_MQ, PF_REPLY_ACK, PF_CONFIG, PF_XEN_MMAP = 1 << 0, 1 << 3, 1 << 9, 1 << 17
VRING_IDX_MASK, VRING_NOFD = 0xFF, 0x100  # in a SET_VRING_KICK/CALL/ERR u64
MAX_REGIONS = 8
XEN_FOREIGN, XEN_GRANT = 1, 2  # a region's xen mmap flags
HEADER = struct.Struct("<III")
STATE = struct.Struct("<II")  # vring index, num
ADDR = struct.Struct("<IIQQQQ")  # index, flags, descriptor, used, available, log
CONFIG_HEADER = struct.Struct("<III")  # offset, size, flags; then size bytes
REGION = struct.Struct("<QQQQ")  # guest address, size, user address, mmap offset
XEN_REGION = struct.Struct("<QQQQII")  # ... and, with XEN_MMAP, xen mmap flags, domid


class ProtocolError(RuntimeError):
    pass


@dataclass
class Region:
    """One memory region of SET_MEM_TABLE: guest-physical `gpa`, `size` bytes, at `user`
    in the front-end's address space (the rings' addresses are in that space), `offset`
    into the region's file descriptor; with XEN_MMAP, `xen_flags` and the domain."""

    gpa: int
    size: int
    user: int
    offset: int = 0
    xen_flags: int = 0
    domid: int = 0


def pack_regions(regions: list[Region], xen: bool) -> bytes:
    layout = XEN_REGION if xen else REGION
    body = b"".join(
        layout.pack(r.gpa, r.size, r.user, r.offset, *((r.xen_flags, r.domid) if xen else ()))
        for r in regions
    )
    return struct.pack("<II", len(regions), 0) + body


def unpack_regions(payload: bytes, xen: bool) -> list[Region]:
    layout = XEN_REGION if xen else REGION
    if len(payload) < 8:
        raise ProtocolError(f"SET_MEM_TABLE: {len(payload)} bytes, no region count")
    (n,) = struct.unpack_from("<I", payload)
    if n > MAX_REGIONS or len(payload) < 8 + n * layout.size:
        raise ProtocolError(f"SET_MEM_TABLE: {n} regions in {len(payload)} bytes")
    return [Region(*layout.unpack_from(payload, 8 + i * layout.size)) for i in range(n)]


@dataclass
class Message:
    request: int
    flags: int = VERSION
    payload: bytes = b""
    fds: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return NAMES.get(self.request, str(self.request))

    def u64(self) -> int:
        if len(self.payload) < 8:
            raise ProtocolError(f"{self.name}: {len(self.payload)}-byte payload, not a u64")
        return struct.unpack_from("<Q", self.payload)[0]


class Channel:
    """One end of a vhost-user connection: whole messages, with their descriptors."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def send(self, msg: Message) -> None:
        data = HEADER.pack(msg.request, msg.flags, len(msg.payload)) + msg.payload
        if msg.fds:
            socket.send_fds(self.sock, [data], list(msg.fds))
        else:
            self.sock.sendall(data)

    def recv(self) -> Message | None:
        """The next message, None when the other end has closed."""
        head, fds, _, _ = socket.recv_fds(self.sock, HEADER.size, MAX_REGIONS)
        if not head:
            return None
        while len(head) < HEADER.size:  # a stream socket may split even a header
            more = self.sock.recv(HEADER.size - len(head))
            if not more:
                raise ProtocolError(f"connection closed inside a header ({len(head)} bytes)")
            head += more
        request, flags, size = HEADER.unpack(head)
        if size > 4096:
            raise ProtocolError(f"request {request}: payload of {size} bytes")
        payload = b""
        while len(payload) < size:
            more = self.sock.recv(size - len(payload))
            if not more:
                raise ProtocolError(f"request {request}: connection closed in its payload")
            payload += more
        return Message(request, flags, payload, tuple(fds))

    def reply(self, to: Message, payload: bytes) -> None:
        self.send(Message(to.request, VERSION | REPLY, payload))
