"""The real-Xen EPAM backend's device (tests/xen/epam/backend.py) without Xen: virtio-mmio
registers, a split ring in fake guest memory, a disk file; its log decodes as the device
model's side and reconstructs per request."""

from __future__ import annotations

import struct
from pathlib import Path

import polars as pl
import pytest
from epam.backend import (
    F_ACCESS_PLATFORM,
    F_VERSION_1,
    GRANT_DMA,
    PERSISTENT_DMA,
    GrantMemory,
    Log,
    VirtioBlock,
)
from virtio_driver import USED, chain, driver_init

from xvtrace import api, timeline


class FakeGuest:
    """Guest-physical memory as a bytearray; counts the mappings still held."""

    offered = 0

    def __init__(self, size=1 << 20):
        self.ram = bytearray(size)
        self.mapped: set[int] = set()
        self.next = 0

    def close(self):
        pass

    def view(self, gpa, length, write=True):
        if gpa + length > len(self.ram):
            raise OSError(f"gpa {gpa:#x}+{length:#x}: not guest memory")
        self.next += 1
        self.mapped.add(self.next)
        return memoryview(self.ram)[gpa : gpa + length], self.next

    def unmap(self, handle):
        self.mapped.remove(handle)  # an unknown or repeated handle is a bug


@pytest.fixture
def device(tmp_path):
    dev, guest, disk, levels = _device(tmp_path)
    yield dev, guest, disk, levels
    dev.close()
    assert not guest.mapped  # every mapping released: rings, headers, buffers, status bytes


def _device(tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(64 * 512))
    levels = []
    guest = FakeGuest()
    dev = VirtioBlock(str(disk), guest, Log(str(tmp_path / "epam.log")), levels.append)
    return dev, guest, disk, levels


def _submit(dev, guest, n, kind, sector, data_addr, length):
    """Request n, then the kick."""
    status = chain(guest.ram, n, kind, sector, data_addr, length)
    dev.write(0x050, 4, 0)  # QueueNotify: pops the request
    assert len(dev.pending) == 1 and guest.ram[status] == 0xFF  # nothing done yet
    dev.complete_pending()  # what the server does once the IOREQ is answered
    return status


def test_a_write_then_a_read_through_the_ring(device):
    dev, guest, disk, levels = device
    driver_init(dev, extra=dev.mem.offered)
    assert dev.read(0x100, 4) == 64 and dev.read(0x10C, 4) == 62  # capacity, seg_max
    pattern = bytes(range(256)) * 4
    guest.ram[0x40000 : 0x40000 + 1024] = pattern
    st = _submit(dev, guest, 0, 1, 2, 0x40000, 1024)  # write 2 sectors at sector 2
    assert disk.read_bytes()[1024:2048] == pattern and guest.ram[st] == 0
    assert struct.unpack_from("<HHII", guest.ram, USED) == (0, 1, 0, 1)  # id 0, len 1
    assert levels == [0, 1] and dev.read(0x060, 4) == 1  # (the reset deasserted it)
    dev.write(0x064, 4, 1)  # InterruptACK
    assert levels == [0, 1, 0]
    st = _submit(dev, guest, 1, 0, 2, 0x50000, 1024)  # read them back
    assert bytes(guest.ram[0x50000 : 0x50000 + 1024]) == pattern and guest.ram[st] == 0
    assert struct.unpack_from("<H", guest.ram, USED + 2) == (2,)
    assert struct.unpack_from("<II", guest.ram, USED + 12) == (3, 1025)  # head 3, data + status
    assert dev.requests == 2


def test_one_kick_for_several_requests_completes_each_with_its_own_notify(device):
    dev, guest, disk, levels = device
    driver_init(dev, extra=dev.mem.offered)
    for n in range(3):
        guest.ram[0x40000 + 0x1000 * n : 0x40000 + 0x1000 * n + 512] = bytes([n + 1]) * 512
        chain(guest.ram, n, 1, n, 0x40000 + 0x1000 * n, 512)
    dev.write(0x050, 4, 0)
    assert len(dev.pending) == 3
    dev.complete_pending()
    assert [disk.read_bytes()[512 * n] for n in range(3)] == [1, 2, 3]
    assert struct.unpack_from("<H", guest.ram, USED + 2) == (3,)
    assert levels == [0, 1]  # raised once, held until the ACK
    text = (dev.log.fh.flush(), Path(dev.log.fh.name).read_text())[1]
    assert (
        text.count("virtio_notify") == 3
        and text.count("virtqueue_flush vq 0x7f0000200000 count 1") == 3
    )


def test_a_request_into_memory_the_guest_does_not_have_leaves_nothing_mapped(device):
    dev, guest, _, _ = device
    driver_init(dev, extra=dev.mem.offered)
    chain(guest.ram, 0, 0, 0, len(guest.ram) - 100, 512)  # its buffer runs past guest memory
    with pytest.raises(OSError, match="not guest memory"):
        dev.write(0x050, 4, 0)
    assert not dev.pending  # (the fixture checks that nothing stays mapped)


def test_unknown_request_types_are_answered_unsupported(device):
    dev, guest, _, _ = device
    driver_init(dev, extra=dev.mem.offered)
    st = _submit(dev, guest, 0, 99, 0, 0x40000, 512)
    assert guest.ram[st] == 2  # VIRTIO_BLK_S_UNSUPP


def test_its_log_decodes_and_reconstructs_each_request(tmp_path, device):
    dev, guest, _, _ = device
    driver_init(dev, extra=dev.mem.offered)
    for n in range(4):
        _submit(dev, guest, n, n % 2, 8 * n, 0x40000 + 0x1000 * n, 4096)
        dev.write(0x064, 4, dev.read(0x060, 4))
    dev.log.fh.flush()
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in ("epam.log", "epam.log.trace-events"):
        (raw / f).write_bytes((tmp_path / f).read_bytes())
    res = api.ingest(raw, tmp_path / "b", warn=lambda m: None)
    stats = {s["format"]: s for s in res.bundle.manifest["sources"]}
    assert stats["qemu-log"]["skipped"] == 0
    req = timeline.build(res.bundle)
    assert len(req) == 4 and req["complete"].all()
    assert req["op"].to_list() == ["read", "write", "read", "write"]
    assert (req["bytes"] == 4096).all() and req["sector"].to_list() == [0, 8, 16, 24]
    irq = res.bundle.events().filter(pl.col("event") == "qemu.virtio_mmio_setting_irq").collect()
    assert irq["arg0"].to_list() == [0] + [1, 0] * 4  # every level change (reset deasserts)


class FakeGnttab:
    """gntdev as libxengnttab shows it, over a guest whose grant r is its page r (so a
    grant-encoded address is the guest address with bit 63 set): every map is recorded
    with the protection it asked for, every unmap must match a map."""

    PAGE = 4096

    def __init__(self, size=1 << 20):
        import ctypes

        self._buf = (ctypes.c_char * size)()
        self.base = ctypes.addressof(self._buf)
        self.ram = memoryview(self._buf).cast("B")
        self.maps: list[tuple[int, int, int]] = []  # (first grant, count, prot)
        self.held: dict[int, int] = {}
        self.gt, self.gth = self, None

    def xengnttab_map_domain_grant_refs(self, _h, count, domid, refs, prot):
        first = refs[0]
        assert domid == 7 and list(refs) == list(range(first, first + count))  # consecutive
        self.maps.append((first, count, prot))
        addr = self.base + first * self.PAGE
        self.held[addr] = self.held.get(addr, 0) + count
        return addr

    def xengnttab_unmap(self, _h, addr, count):
        assert self.held.get(addr, 0) >= count  # only what was mapped
        self.held[addr] -= count
        if not self.held[addr]:
            del self.held[addr]
        return 0


def test_grant_mode_maps_each_buffer_by_its_grants_read_only_where_the_device_only_reads(tmp_path):
    """VirtIO-SuSE: every address is `1 << 63 | grant << 12 | offset`, the rings' included;
    the device offers ACCESS_PLATFORM (or a grant-DMA guest refuses it), maps a buffer's
    consecutive grants, read-only where the guest granted read-only, and unmaps all."""
    import mmap

    gnt = FakeGnttab()
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(64 * 512))
    mem = GrantMemory(gnt, 7, Log(str(tmp_path / "epam.log")))
    dev = VirtioBlock(str(disk), mem, mem.log, [].append)
    enc = lambda a: GRANT_DMA | a  # noqa: E731 (grant r is page r)
    dev.write(0x014, 4, 1)
    assert dev.read(0x010, 4) == (F_VERSION_1 | F_ACCESS_PLATFORM) >> 32
    driver_init(dev, enc, extra=dev.mem.offered)
    pattern = bytes(range(256)) * 24
    gnt.ram[0x40F00 : 0x40F00 + len(pattern)] = pattern  # 6 KiB from 0xf00: grants 0x40..0x42
    status = chain(gnt.ram, 0, 1, 2, 0x40F00, len(pattern), enc)
    dev.write(0x050, 4, 0)
    dev.complete_pending()
    assert disk.read_bytes()[1024 : 1024 + len(pattern)] == pattern and gnt.ram[status] == 0
    ro, rw = mmap.PROT_READ, mmap.PROT_READ | mmap.PROT_WRITE
    data = [m for m in gnt.maps if m[0] == 0x40]
    assert data == [(0x40, 3, ro)]  # the write's data: 3 pages, read-only
    header = [m for m in gnt.maps if m[0] == 0x20]
    assert header == [(0x20, 1, ro)] and (0x30, 1, rw) in gnt.maps  # header ro, status rw
    assert {(0x10, 1, rw), (0x11, 1, rw), (0x12, 1, rw)} <= set(gnt.maps)  # the rings
    assert mem.maps == sum(c for _, c, _ in gnt.maps) and mem.unmaps == mem.maps - 3
    dev.close()  # the rings too
    assert not gnt.held and mem.unmaps == mem.maps
    log = (tmp_path / "epam.log").read_text()
    assert f"xen_map_cache want {enc(0x40F00):#x}" in log and "xen_map_cache_return" in log
    # each map call's unmap too, with where it was and how many grants
    assert log.count(":xen_unmap_grant ") == log.count(":xen_map_cache ") == len(gnt.maps)
    assert f"xen_unmap_grant {gnt.base + 0x40 * 4096:#x} count 3" in log


def test_persistent_mode_keeps_pool_grants_mapped_and_maps_the_others_per_request(tmp_path):
    """Persistent grants (tests/xen/grant/persistent-grants.patch): an address with bit 62
    is a grant of the guest's pool, mapped writable at its first use and kept until the
    backend closes; the rings' grants (no bit 62) stay per mapping; all unmapped at close."""
    import mmap

    gnt = FakeGnttab()
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(64 * 512))
    mem = GrantMemory(gnt, 7, Log(str(tmp_path / "epam.log")), persistent=True)
    dev = VirtioBlock(str(disk), mem, mem.log, [].append)
    driver_init(dev, lambda a: GRANT_DMA | a, extra=dev.mem.offered)
    pool = lambda a: GRANT_DMA | PERSISTENT_DMA | a  # noqa: E731
    pattern = bytes(range(256)) * 16  # 4 KiB at 0x40000: grant 0x40
    gnt.ram[0x40000 : 0x40000 + len(pattern)] = pattern
    statuses = []
    for n in range(3):  # the same pool pages for three writes, as a guest's free pool reuses
        statuses.append(chain(gnt.ram, n, 1, 8 * n, 0x40000, len(pattern), pool))
        dev.write(0x050, 4, 0)
        dev.complete_pending()
    rw = mmap.PROT_READ | mmap.PROT_WRITE
    for n in range(3):
        assert disk.read_bytes()[4096 * n : 4096 * (n + 1)] == pattern
    pool_maps = [m for m in gnt.maps if m[0] in (0x40, 0x20, 0x21, 0x22, 0x30)]
    # each buffer's grants mapped once, writable; header n at 0x20000 + 0x100 n shares page 0x20
    assert sorted(pool_maps) == [(0x20, 1, rw), (0x30, 1, rw), (0x40, 1, rw)]
    assert mem.reused == 3 * 3 - 3 and len(mem.kept) == 3
    assert all(gnt.ram[s] == 0 for s in statuses)
    rings = mem.maps - 3
    assert mem.unmaps == 0 and rings == 3  # nothing unmapped yet but per-request maps: none
    dev.close()
    assert not gnt.held and mem.unmaps == mem.maps and not mem.kept


def test_without_persistent_mode_a_pool_address_is_mapped_per_request(tmp_path):
    gnt = FakeGnttab()
    mem = GrantMemory(gnt, 7, Log(str(tmp_path / "epam.log")))
    for _ in range(2):
        view, handle = mem.view(GRANT_DMA | PERSISTENT_DMA | 0x40010, 16, write=False)
        assert len(view) == 16 and handle is not None
        mem.unmap(handle)
    mem.log.fh.close()
    assert [m[0] for m in gnt.maps] == [0x40, 0x40] and not gnt.held  # bit 62 not in the ref


def test_grant_mode_refuses_an_address_that_is_no_grant(tmp_path):
    gnt = FakeGnttab()
    mem = GrantMemory(gnt, 7, Log(str(tmp_path / "epam.log")))
    with pytest.raises(Exception, match="no grant reference"):
        mem.view(0x40000, 16)
    mem.log.fh.close()
    assert not gnt.maps
