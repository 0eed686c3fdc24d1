"""End to end on a real guest: Debian's kernel under QEMU TCG, recorded by `xvtrace capture`,
decoded by `ingest`; the events must account for the I/O the guest says it issued.

Marked guest: the second stage of `make test`, which fetches the kernel first (make
test-assets); about 10 s per machine.
"""

from __future__ import annotations

import json

import polars as pl
import pytest
from run_guest import run

from xvtrace import api

pytestmark = pytest.mark.guest

SIZES = (4096, 16384, 65536)


@pytest.fixture(scope="module", params=["q35", "microvm"])
def guest(request, tmp_path_factory):
    # q35 is held after its work so that capture also dumps its memory (rings)
    hold = request.param == "q35"
    bundle = tmp_path_factory.mktemp(request.param) / "bundle"
    r = run(request.param, bundle, hold=hold)
    ev = api.load(bundle).events().collect()
    return request.param, r, ev


def test_guest_did_its_work(guest):
    _, r, _ = guest
    assert r.issued[-1] == "XVT done", r.console[-2000:]
    for bs in SIZES:
        assert f"XVT write bs={bs} count=4" in r.issued
        assert f"XVT read bs={bs} count=4" in r.issued


def test_capture_manifest_says_what_was_captured(guest):
    machine, r, _ = guest
    m = json.loads((r.bundle / "manifest.json").read_text())
    cap = m["capture"]
    (src,) = cap["sources"]
    assert src["ok"] and src["resumed"]
    assert cap["stop_reason"] == ("signal" if machine == "q35" else "every traced VM exited")
    assert {"raw/qemu-0.log", "raw/0-n0.pcap", "raw/virtqueues-0.jsonl", "raw/trace-events"} <= set(
        cap["files"]
    )
    formats = {s["format"] for s in m["sources"]}
    assert {"qemu-log", "pcap", "qmp-virtqueues"} <= formats
    assert all(s["skipped_bytes"] == 0 for s in m["sources"])


def _blk_dev(ev: pl.DataFrame) -> str:
    devs = ev.filter(pl.col("event") == "qemu.virtio_blk_handle_write")["dev"].unique()
    assert len(devs) == 1
    return devs[0]


def test_every_block_request_the_guest_issued_is_in_the_trace(guest):
    _, _, ev = guest
    for bs in SIZES:
        writes = ev.filter(
            (pl.col("event") == "qemu.virtio_blk_handle_write") & (pl.col("size") == bs)
        )
        # the guest writes nothing else: exactly its 4 O_DIRECT writes of each size
        assert len(writes) == 4, bs
        reads = ev.filter(
            (pl.col("event") == "qemu.virtio_blk_handle_read") & (pl.col("size") == bs)
        )
        assert len(reads) >= 4, bs  # plus the kernel's own reads (partition scan)


def test_pops_fills_and_completions_are_consistent(guest):
    _, _, ev = guest
    vq = api.virtqueues(ev.lazy())
    # every element popped was filled: nothing in flight once the guest is idle
    assert (vq["pops"] == vq["fills"]).all() and (vq["in_flight"] == 0).all()
    blk = vq.filter(pl.col("kind") == "blk").row(0, named=True)
    handled = ev.filter(
        pl.col("event").is_in(["qemu.virtio_blk_handle_read", "qemu.virtio_blk_handle_write"])
    )
    completed = ev.filter(pl.col("event") == "qemu.virtio_blk_req_complete")
    # each request is popped once; flushes complete without a handle_* event
    assert blk["pops"] == len(completed) >= len(handled)
    # a read's fill length is its data plus the status byte
    reads = ev.filter(pl.col("event") == "qemu.virtio_blk_handle_read").select("addr", "size")
    fills = ev.filter((pl.col("event") == "qemu.virtqueue_fill") & (pl.col("dev") == _blk_dev(ev)))
    assert set(reads["size"] + 1) <= set(fills["size"])


def test_net_rx_fills_match_received_packets(guest):
    _, _, ev = guest
    pkts = ev.filter(pl.col("event") == "net.packet")
    guest_mac = 0x525400123456
    rx = pkts.filter(pl.col("addr") != guest_mac)
    icmp_replies = rx.filter((pl.col("arg2") == 1) & (pl.col("arg3") == 0x0A000202))
    assert len(icmp_replies) == 3  # ping -c 3 10.0.2.2
    net = ev.filter(
        pl.col("event").cast(pl.String).str.starts_with("qemu.") & (pl.col("dev") != _blk_dev(ev))
    )
    rx_fills = net.filter((pl.col("event") == "qemu.virtqueue_fill") & (pl.col("queue") == 0))
    # each received frame fills one rx buffer: frame + 12-byte virtio_net_hdr_mrg_rxbuf
    assert sorted((rx["size"] + 12).to_list()) == sorted(rx_fills["size"].to_list())
    tx_pops = net.filter((pl.col("event") == "qemu.virtqueue_pop") & (pl.col("queue") == 1))
    assert len(tx_pops) == len(pkts) - len(rx)


def test_transport_specific_events(guest):
    machine, _, ev = guest
    names = set(ev["event"].cast(pl.String).unique())
    if machine == "microvm":
        # virtio-mmio: register accesses, a QueueNotify write (offset 0x50) per guest kick
        assert {"qemu.virtio_mmio_write_offset", "qemu.virtio_mmio_read"} <= names
        kicks = ev.filter(
            (pl.col("event") == "qemu.virtio_mmio_write_offset") & (pl.col("addr") == 0x50)
        )
        assert len(kicks) == len(ev.filter(pl.col("event") == "qemu.virtio_queue_notify"))
    else:
        assert "qemu.virtio_notify_irqfd" in names  # virtio-pci + ioeventfd completions


def test_memory_dump_rings_agree_with_qmp(guest):
    machine, _, ev = guest
    if machine != "q35":
        pytest.skip("only the held q35 guest is dumped")
    used = (
        ev.filter(pl.col("event") == "virtqueue.used")
        .group_by("dev", "queue")
        .agg(pl.col("arg1").max().alias("mem_used"))
    )
    polled = (
        ev.filter(pl.col("event") == "virtqueue.status")
        .group_by("dev", "queue")
        .agg(pl.col("arg2").max().alias("qmp_used"))
    )
    both = used.join(polled, on=["dev", "queue"])
    assert len(both) == 4  # blk + net rx/tx/ctrl
    # the dump is taken after the last poll: the ring is at or ahead of what QEMU reported
    assert (both["mem_used"] >= both["qmp_used"]).all()
    blk = used.filter(pl.col("dev").str.contains("vblk0"))["mem_used"][0]
    # The ring restarts at 0 when the driver resets the device (SeaBIOS used it before the
    # kernel): the used index counts the fills since the last reset.
    dev = _blk_dev(ev)
    log = ev.filter((pl.col("source") == "qemu") & (pl.col("dev") == dev)).sort("src_offset")
    resets = log.filter((pl.col("event") == "qemu.virtio_set_status") & (pl.col("arg1") == 0))
    since = log.filter(
        (pl.col("event") == "qemu.virtqueue_fill")
        & (pl.col("src_offset") > resets["src_offset"].max())
    )
    assert blk == len(since) > 0
    descs = ev.filter((pl.col("event") == "virtqueue.desc") & (pl.col("size") > 0))
    assert (descs["arg2"] == 0).all()  # plain guest physical addresses, no grants under KVM/TCG
    assert (descs["addr"] < 128 << 20).all()  # inside the guest's 128 MiB
