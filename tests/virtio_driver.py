"""A virtio-mmio block driver's side, as a test plays it against a device model of ours
(tests/xen/epam, tests/xen/stratos): the device's setup through its registers, requests
laid out in guest memory as a split ring."""

from __future__ import annotations

import struct

from epam.backend import DESC_NEXT, DESC_WRITE, F_SEG_MAX, F_VERSION_1, MAGIC

DESC, AVAIL, USED = 0x10000, 0x11000, 0x12000  # the ring, in guest-physical memory


def driver_init(dev, enc=lambda a: a, extra: int = 0) -> None:
    """Linux's virtio_mmio + virtio_blk probe, in short: the device must offer VERSION_1
    and SEG_MAX (and `extra`), a 16-entry queue is placed at DESC/AVAIL/USED (`enc`: how
    the guest writes an address: a grant-DMA guest encodes it), then DRIVER_OK."""
    assert dev.read(0x000, 4) == MAGIC and dev.read(0x004, 4) == 2 and dev.read(0x008, 4) == 2
    dev.write(0x070, 4, 0)
    dev.write(0x070, 4, 1 | 2)  # ACKNOWLEDGE | DRIVER
    offered = F_VERSION_1 | F_SEG_MAX | extra
    dev.write(0x014, 4, 1)
    assert dev.read(0x010, 4) == offered >> 32
    dev.write(0x014, 4, 0)
    assert dev.read(0x010, 4) == offered & 0xFFFFFFFF
    dev.write(0x024, 4, 1)
    dev.write(0x020, 4, 1)
    dev.write(0x070, 4, 1 | 2 | 8)  # FEATURES_OK
    dev.write(0x030, 4, 0)
    assert dev.read(0x034, 4) >= 8 and dev.read(0x044, 4) == 0
    dev.write(0x038, 4, 16)
    for off, addr in ((0x080, DESC), (0x090, AVAIL), (0x0A0, USED)):
        dev.write(off, 4, enc(addr) & 0xFFFFFFFF)
        dev.write(off + 4, 4, enc(addr) >> 32)
    dev.write(0x044, 4, 1)
    dev.write(0x070, 4, 1 | 2 | 8 | 4)  # DRIVER_OK


def chain(ram, n, kind, sector, data_addr, length, enc=lambda a: a) -> int:
    """Request n on the ring in `ram` (guest memory from address 0): header, one data
    buffer, status; descriptors 3n..3n+2. Its status byte's address."""
    hdr, status = 0x20000 + 0x100 * n, 0x30000 + 0x10 * n
    ram[status] = 0xFF  # the device writes 0 (OK), 1 or 2 there
    struct.pack_into("<IIQ", ram, hdr, kind, 0, sector)
    d = 3 * n
    data_flags = DESC_NEXT | (DESC_WRITE if kind == 0 else 0)
    for i, (addr, ln, fl) in enumerate(
        ((hdr, 16, DESC_NEXT), (data_addr, length, data_flags), (status, 1, DESC_WRITE))
    ):
        struct.pack_into("<QIHH", ram, DESC + 16 * (d + i), enc(addr), ln, fl, d + i + 1)
    struct.pack_into("<H", ram, AVAIL + 4 + 2 * n, d)
    struct.pack_into("<H", ram, AVAIL + 2, n + 1)
    return status
