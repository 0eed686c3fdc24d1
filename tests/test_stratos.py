"""The real-Xen Stratos pair (tests/xen/stratos) without Xen: the vhost-user front-end's
register file drives a back-end process over a real unix socket, with kick and call as
eventfds and the guest's memory a memfd both sides map. The back-end is ours
(stratos/backend.py) or QEMU's own vhost-user-blk export (qemu-storage-daemon), the oracle
for the protocol the front-end speaks."""

from __future__ import annotations

import mmap
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from epam.backend import Log
from stratos import vhost_user as vu
from stratos.frontend import FRONTEND_EVENTS, VhostUserFront
from virtio_driver import USED, chain, driver_init

XEN_TESTS = Path(__file__).parent / "xen"
RAM = 1 << 20
USER = 0x7F5500000000  # where the front-end "has" guest address 0: the rings go by it
SECTORS = 64


class Guest:
    """The guest's memory: a memfd, mapped here, shared with the back-end."""

    def __init__(self):
        self.fd = os.memfd_create("guest-ram")
        os.ftruncate(self.fd, RAM)
        self.ram = mmap.mmap(self.fd, RAM)

    def close(self):
        self.ram.close()
        os.close(self.fd)


def _our_backend(tmp_path: Path, disk: Path):
    sock = tmp_path / "vu.sock"
    proc = subprocess.Popen(
        [sys.executable, str(XEN_TESTS / "stratos" / "backend.py"), "--socket", str(sock),
         "--disk", str(disk), "--log", str(tmp_path / "backend.log")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    line = proc.stdout.readline()  # printed once it listens
    assert "listening" in line, line + proc.stdout.read()
    return sock, proc


def _qemu_backend(tmp_path: Path, disk: Path):
    daemon = shutil.which("qemu-storage-daemon")
    if daemon is None:
        pytest.skip("qemu-storage-daemon (Debian: qemu-system-common) is not installed")
    sock, pid = tmp_path / "qsd.sock", tmp_path / "qsd.pid"
    subprocess.run(
        [
            daemon,
            "--blockdev",
            f"driver=file,node-name=disk,filename={disk}",
            "--export",
            f"type=vhost-user-blk,id=exp0,node-name=disk,addr.type=unix,"
            f"addr.path={sock},writable=on",
            "--daemonize",
            "--pidfile",
            str(pid),
        ],
        check=True,
        timeout=60,
    )  # fmt: skip  (--daemonize returns once the export listens)
    return sock, int(pid.read_text())


def _front(tmp_path: Path, sock: Path, guest: Guest, levels: list):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(sock))
    region = vu.Region(0, RAM, USER, 0)
    log = Log(str(tmp_path / "frontend.log"), FRONTEND_EVENTS, "the test front-end's")
    return VhostUserFront(vu.Channel(s), [region], [os.dup(guest.fd)], False, log, levels.append)


def _await_used(dev, guest: Guest, idx: int) -> None:
    """Calls until the used ring's index reaches `idx` and the interrupt is up (bounded: a
    back-end that never calls fails the test). The index moves before the call comes, and
    more than one call may come: libvhost-user calls once as the call eventfd is set, for
    a front-end that reconnects."""
    while struct.unpack_from("<H", guest.ram, USED + 2)[0] < idx or not dev.isr:
        assert select.select([dev.call_fd], [], [], 30)[0], "no call from the back-end in 30 s"
        dev.on_fd(dev.call_fd)


def _write_then_read(dev, guest: Guest, disk: Path, levels: list) -> None:
    driver_init(dev)
    assert dev.read(0x100, 4) == SECTORS  # capacity, from the back-end's GET_CONFIG
    pattern = bytes(range(256)) * 16
    guest.ram[0x40000 : 0x40000 + len(pattern)] = pattern
    st = chain(guest.ram, 0, 1, 8, 0x40000, len(pattern))  # write 8 sectors at sector 8
    dev.write(0x050, 4, 0)  # QueueNotify: the kick
    _await_used(dev, guest, 1)
    assert guest.ram[st] == 0 and disk.read_bytes()[4096:8192] == pattern
    assert struct.unpack_from("<HHII", guest.ram, USED) == (0, 1, 0, 1)  # id 0, len 1
    assert levels[-1] == 1 and dev.read(0x060, 4) == 1  # the used-buffer interrupt
    dev.write(0x064, 4, 1)
    assert levels[-1] == 0
    st = chain(guest.ram, 1, 0, 8, 0x50000, len(pattern))  # read it back
    dev.write(0x050, 4, 0)
    _await_used(dev, guest, 2)
    assert guest.ram[st] == 0 and guest.ram[0x50000 : 0x50000 + len(pattern)] == pattern
    assert struct.unpack_from("<HII", guest.ram, USED + 2 + 8)[1:] == (3, 4097)  # entry 1: head 3


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(SECTORS * 512))
    return path


def test_front_end_and_our_back_end_write_and_read_through_the_ring(tmp_path, disk):
    sock, proc = _our_backend(tmp_path, disk)
    guest, levels = Guest(), []
    dev = _front(tmp_path, sock, guest, levels)
    try:
        _write_then_read(dev, guest, disk, levels)
        dev.write(0x070, 4, 0)  # a driver reset stops the ring: GET_VRING_BASE's reply
    finally:
        dev.close()  # the back-end sees the hang-up and exits
        out = proc.communicate(timeout=30)[0]
        guest.close()
    assert proc.returncode == 0, out
    assert "2 block requests" in out
    front = (tmp_path / "frontend.log").read_text()
    sent = [
        int(x.split("req:")[1].split()[0]) for x in front.splitlines() if ":vhost_user_write " in x
    ]
    # QEMU's vhost_dev_start order, then the reset's GET_VRING_BASE
    assert sent == [vu.GET_FEATURES, vu.GET_PROTOCOL_FEATURES, vu.SET_PROTOCOL_FEATURES,
                    vu.SET_OWNER, vu.GET_CONFIG, vu.SET_FEATURES, vu.SET_MEM_TABLE,
                    vu.SET_VRING_NUM, vu.SET_VRING_BASE, vu.SET_VRING_ADDR, vu.SET_VRING_KICK,
                    vu.SET_VRING_CALL, vu.SET_VRING_ENABLE, vu.GET_VRING_BASE]  # fmt: skip
    back = (tmp_path / "backend.log").read_text()
    for event in ("virtio_queue_notify", "virtqueue_pop", "virtio_blk_handle_write", "virtio_blk_handle_read",
                  "virtio_blk_rw_complete", "virtqueue_fill", "virtio_notify"):  # fmt: skip
        assert f":{event} " in back, event


def test_front_end_against_qemus_vhost_user_blk_back_end(tmp_path, disk):
    """The oracle: QEMU's vhost-user-blk export (libvhost-user) takes the front-end's
    messages, memory table and eventfds, and serves the ring the same."""
    sock, pid = _qemu_backend(tmp_path, disk)
    guest, levels = Guest(), []
    try:
        dev = _front(tmp_path, sock, guest, levels)
        try:
            _write_then_read(dev, guest, disk, levels)
        finally:
            dev.close()
    finally:
        os.kill(pid, 15)
        guest.close()


def test_both_logs_ingest_and_each_request_joins_across_the_hop(tmp_path, disk):
    """The two processes' logs, ingested together: each back-end request (pop to fill, in
    the back-end's log) takes the front-end's kick before the back-end woke, and the
    front-end's read of the back-end's call (timeline.vhost_user); the phases show both
    eventfd hops."""
    from xvtrace import api, timeline
    from xvtrace.output.report import Report

    sock, proc = _our_backend(tmp_path, disk)
    guest, levels = Guest(), []
    dev = _front(tmp_path, sock, guest, levels)
    try:
        _write_then_read(dev, guest, disk, levels)
    finally:
        dev.close()
        proc.communicate(timeout=30)
        guest.close()
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in ("frontend.log", "backend.log"):
        for name in (f, f + ".trace-events"):
            shutil.copy(tmp_path / name, raw / name)
    res = api.ingest(raw, tmp_path / "b", warn=lambda m: None)
    defs = {s["file"]: Path(s["definitions"]).name for s in res.bundle.manifest["sources"]}
    assert defs == {"raw/frontend.log": "frontend.log.trace-events",  # each log its own
                    "raw/backend.log": "backend.log.trace-events"}  # fmt: skip
    req = timeline.build(res.bundle)
    assert req["op"].to_list() == ["write", "read"] and req["complete"].all()
    assert (req["src_file"] == "raw/frontend.log").all()
    assert (req["backend_file"] == "raw/backend.log").all()
    assert (req["kick_ns"] <= req["vu_kick_ns"]).all() and (
        req["vu_kick_ns"] <= req["pop_ns"]
    ).all()
    assert (req["notify_ns"] <= req["vu_call_ns"]).all()
    # the kick is the front-end's: the offset of its virtio_queue_notify in its own log
    front = (raw / "frontend.log").read_bytes()
    for off in req["kick_off"].to_list():
        assert front[off:].split(b"\n", 1)[0].split(b":", 1)[1].startswith(b"virtio_queue_notify ")
    text = Report.of(res.bundle).render()
    assert "kick eventfd" in text and "call eventfd" in text


@pytest.mark.guest
def test_our_back_end_serves_qemus_front_end_and_a_real_guest(tmp_path):
    """The back-end's oracle: QEMU's own vhost-user front-end (vhost-user-blk-pci, memory
    shared as a memfd) sets it up and a real Linux guest (tests/guest) does its O_DIRECT
    writes and reads through it."""
    from run_guest import build_guest

    kernel, initrd = build_guest()
    disk = tmp_path / "disk.img"
    with disk.open("wb") as fh:
        fh.truncate(64 << 20)
    sock, proc = _our_backend(tmp_path, disk)
    console = tmp_path / "console.txt"
    argv = [
        shutil.which("qemu-system-x86_64") or "qemu-system-x86_64", "-M", "q35,memory-backend=mem",
        "-accel", "tcg", "-smp", "1", "-m", "128M", "-display", "none", "-no-reboot",
        "-object", "memory-backend-memfd,id=mem,size=128M,share=on",
        "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", "console=ttyS0 panic=-1 loglevel=4",
        "-chardev", f"socket,id=vu,path={sock}", "-device", "vhost-user-blk-pci,chardev=vu,num-queues=1",
        "-serial", f"file:{console}",
    ]  # fmt: skip
    qemu = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    out = proc.communicate(timeout=60)[0]  # QEMU's hang-up ends the back-end
    said = console.read_text(errors="replace")
    assert qemu.returncode == 0, qemu.stderr
    assert proc.returncode == 0, out
    for bs in (4096, 16384, 65536):
        assert f"XVT write bs={bs} count=4" in said and f"XVT read bs={bs} count=4" in said, said
    # the guest's random blocks, at its offsets (tests/guest/init: 1, 2 and 3 MiB)
    data = disk.read_bytes()
    for at, bs in ((1 << 20, 4096), (2 << 20, 16384), (3 << 20, 65536)):
        assert data[at : at + 4 * bs].count(0) < bs, at
    blocks = int(out.rsplit(" block requests", 1)[0].rsplit(" ", 1)[1])
    assert blocks >= 24  # the guest's own 24, and its probing reads
    log = (tmp_path / "backend.log").read_text()
    taken = {int(x.split("req:")[1].split()[0]) for x in log.splitlines() if ":vu_message " in x}
    assert {
        vu.GET_FEATURES,
        vu.GET_CONFIG,
        vu.SET_MEM_TABLE,
        vu.SET_VRING_KICK,
        vu.SET_VRING_CALL,
    } <= taken
