"""Virtqueue rings from guest memory (split and packed), grant addresses, QMP polls, and the
stored live captures as a bundle."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
from helpers import FIXTURES
from hypothesis import given, settings
from hypothesis import strategies as st

from xvtrace import api
from xvtrace.parsers import virtqueue as vq
from xvtrace.parsers.errors import ParseError

LIVE_Q35 = FIXTURES / "qemu" / "live-q35-pci"
LIVE_MMIO = FIXTURES / "qemu" / "live-microvm-mmio"


def _split_ring(descs, avail_heads, used, num):
    d = np.zeros(num, dtype=vq.SPLIT_DESC)
    for i, (addr, ln, flags, nxt) in enumerate(descs):
        d[i] = (addr, ln, flags, nxt)
    avail = np.zeros(2 + num + 1, dtype="<u2")
    avail[1] = len(avail_heads)
    for i, h in enumerate(avail_heads):
        avail[2 + i % num] = h
    u = np.zeros(num, dtype=vq.USED_ELEM)
    for i, (id_, ln) in enumerate(used):
        u[i % num] = (id_, ln)
    used_bytes = np.array([0, len(used)], "<u2").tobytes() + u.tobytes() + b"\0\0"
    return d.tobytes(), avail.tobytes(), used_bytes


def test_a_persistent_pool_grant_decodes_to_its_reference():
    """Bit 62 marks the guest's persistent pool (tests/xen/grant/persistent-grants.patch):
    a flag beside the reference, not part of it."""
    addr = np.array([vq.grant_address(5, 8) | (1 << 62), vq.grant_address(5, 8), 0x1000],
                    dtype=np.uint64)  # fmt: skip
    is_grant, gref, off = vq.grant_parts(addr)
    assert is_grant.tolist() == [True, True, False]
    assert gref.tolist() == [5, 5, 0] and off.tolist() == [8, 8, 0]


@settings(max_examples=40, deadline=None)
@given(
    num=st.sampled_from([4, 8, 64, 256]),
    data=st.data(),
    grant=st.booleans(),
)
def test_split_ring_round_trip(tmp_path_factory, num, data, grant):
    n = data.draw(st.integers(0, num))
    descs = [
        (
            vq.grant_address(data.draw(st.integers(0, 2**20)), data.draw(st.integers(0, 4095)))
            if grant
            else data.draw(st.integers(0, 2**40)),
            data.draw(st.integers(0, 2**32 - 1)),
            data.draw(st.integers(0, 7)),
            data.draw(st.integers(0, num - 1)),
        )
        for _ in range(n)
    ]
    heads = data.draw(st.lists(st.integers(0, num - 1), max_size=3 * num))
    used = data.draw(
        st.lists(st.tuples(st.integers(0, num - 1), st.integers(0, 2**32 - 1)), max_size=3 * num)
    )
    d, a, u = _split_ring(descs, heads, used, num)
    path = tmp_path_factory.mktemp("core") / "m.elf"
    vq.write_core(path, [(0x10000, d), (0x20000, a), (0x30000, u)])
    mem = vq.GuestMemory(path)
    df, missing = vq.ring_rows(mem, vq.Ring("dev", 1, num, 0x10000, 0x20000, 0x30000))
    mem.close()
    assert missing == []
    got = df.filter(pl.col("event") == "virtqueue.desc").head(n)
    assert got["addr"].to_list() == [x[0] for x in descs]
    assert got["size"].to_list() == [x[1] for x in descs]
    assert got["arg0"].to_list() == [x[2] for x in descs]
    assert got["arg1"].to_list() == [x[3] for x in descs]
    assert (got["arg2"] == int(grant)).all()
    if grant:
        assert got["arg3"].to_list() == [((x[0] & ~(1 << 63)) >> 12) for x in descs]
        assert got["arg4"].to_list() == [x[0] & 0xFFF for x in descs]
    av = df.filter(pl.col("event") == "virtqueue.avail")
    assert av["head"].to_list() == heads[-num:] if heads else len(av) == 0
    us = df.filter(pl.col("event") == "virtqueue.used")
    assert list(zip(us["head"], us["size"], strict=True)) == [tuple(x) for x in used[-num:]]


def test_packed_ring_descriptors(tmp_path):
    num = 8
    d = np.zeros(num, dtype=vq.PACKED_DESC)
    d[0] = (0x1234000, 4096, 7, vq.F_AVAIL | vq.F_WRITE)
    d[1] = (vq.grant_address(99, 16), 512, 3, vq.F_AVAIL | vq.F_USED)
    path = tmp_path / "p.elf"
    vq.write_core(path, [(0x8000, d.tobytes())])
    mem = vq.GuestMemory(path)
    df, missing = vq.ring_rows(mem, vq.Ring("dev", 0, num, 0x8000, packed=True))
    mem.close()
    assert missing == []
    rows = df.filter(pl.col("event") == "virtqueue.desc").head(2)
    assert rows["arg1"].to_list() == [7, 3]  # buffer ids
    assert rows["arg0"].to_list() == [vq.F_AVAIL | vq.F_WRITE, vq.F_AVAIL | vq.F_USED]
    assert rows["arg3"].to_list() == [0, 99] and rows["arg4"].to_list() == [0, 16]


def test_rings_outside_the_dump_are_reported(tmp_path):
    path = tmp_path / "m.elf"
    vq.write_core(path, [(0x1000, bytes(4096))])
    mem = vq.GuestMemory(path)
    _, missing = vq.ring_rows(mem, vq.Ring("dev", 0, 256, 0x9000000, 0x9100000, 0x9200000))
    mem.close()
    assert len(missing) == 3 and "desc table at 0x9000000" in missing[0]


@pytest.mark.parametrize("blob", [b"", b"\x7fELF" + bytes(60), b"\x7fELF\x02\x01\x01" + bytes(100)])
def test_bad_cores_are_clear_errors(tmp_path, blob):
    path = tmp_path / "bad.elf"
    path.write_bytes(blob)
    with pytest.raises(ParseError):
        vq.GuestMemory(path)


def test_truncated_core_names_the_segment(tmp_path):
    path = tmp_path / "m.elf"
    vq.write_core(path, [(0x5000, bytes(8192))])
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ParseError, match="gpa 0x5000"):
        vq.GuestMemory(path)


def _bundle_from(fixture, tmp_path):
    raw = tmp_path / "b" / "raw"
    raw.mkdir(parents=True)
    for f in fixture.iterdir():
        if f.name not in ("console.txt", "metadata.json"):
            shutil.copy(f, raw / f.name)
    return api.ingest(tmp_path / "b").bundle


def test_live_q35_fixture_decodes_every_source(tmp_path):
    bundle = _bundle_from(LIVE_Q35, tmp_path)
    m = bundle.manifest
    assert {s["format"] for s in m["sources"]} == {
        "qemu-log",
        "pcap",
        "qmp-virtqueues",
        "guest-memory-core",
    }
    assert all(s["skipped_bytes"] == 0 and not s["first_problems"] for s in m["sources"])
    ev = bundle.events().collect()
    meta = json.loads((LIVE_Q35 / "metadata.json").read_text())
    assert meta["guest_issued"][-1] == "XVT done"
    used = ev.filter(pl.col("event") == "virtqueue.used").group_by("dev").agg(pl.col("arg1").max())
    polled = (
        ev.filter(pl.col("event") == "virtqueue.status")
        .group_by("dev")
        .agg(pl.col("arg2").max().alias("p"))
    )
    both = used.join(polled, on="dev")
    assert len(both) == 2 and (both["arg1"] >= both["p"]).all()


def test_live_microvm_fixture_has_mmio_register_traffic(tmp_path):
    ev = _bundle_from(LIVE_MMIO, tmp_path).events().collect()
    offsets = (
        ev.filter(pl.col("event") == "qemu.virtio_mmio_write_offset")["addr"].unique().to_list()
    )
    assert 0x50 in offsets and 0x64 in offsets  # QueueNotify, InterruptACK
    s = api.virtqueues(ev.lazy())
    assert (s["pops"] == s["fills"]).all()


def test_qmp_poll_lines_that_are_not_records_are_counted(tmp_path):
    lines = (LIVE_Q35 / "virtqueues-0.jsonl").read_text().splitlines()
    path = tmp_path / "v.jsonl"
    path.write_text(
        "\n".join([*lines[:5], '{"xvtrace": "qmp-virtqueue-status", "t_ns": 1, "pa', *lines[5:10]])
        + "\n"
    )
    dec = vq.QmpVirtqueueDecoder(path)
    df = pl.concat(list(dec.frames()))
    assert len(df) == 10 and dec.stats.skipped == 1
    assert dec.stats.problems[0].offset == sum(len(x) + 1 for x in lines[:5])


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=300))
def test_arbitrary_bytes_after_the_elf_magic_never_crash(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("f") / "m.elf"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(8) + b"\x04\x00" + blob)
    try:
        mem = vq.GuestMemory(path)
    except ParseError:
        return
    mem.read(0, 16)
    mem.close()


def test_qmp_element_records_become_descriptor_rows(tmp_path):
    # the shape of QEMU 7.2's x-query-virtio-queue-element reply (seen on a live guest)
    el = {"index": 3, "name": "virtio-blk", "avail": {"idx": 3, "flags": 0, "ring": 0}, "used": {"idx": 3, "flags": 0},
          "descs": [{"flags": ["next"], "len": 16, "addr": 4096},
                    {"flags": ["write", "next"], "len": 4096, "addr": vq.grant_address(77, 8)},
                    {"flags": ["write"], "len": 1, "addr": 8192}]}  # fmt: skip
    good = json.dumps(
        {"xvtrace": "qmp-virtqueue-element", "t_ns": 5, "path": "/x", "queue": 0, "element": el}
    )
    path = tmp_path / "v.jsonl"
    path.write_text(good + "\n" + '{"xvtrace": "qmp-virtqueue-element", "t_ns": 6, "pa\n')
    assert vq.sniff_qmp(path.read_bytes())
    dec = vq.QmpVirtqueueDecoder(path)
    df = pl.concat(list(dec.frames()))
    assert df["head"].to_list() == [3, 3, 3] and df["size"].to_list() == [16, 4096, 1]
    assert df["arg0"].to_list() == [vq.F_NEXT, vq.F_WRITE | vq.F_NEXT, vq.F_WRITE]
    assert df["arg2"].to_list() == [0, 1, 0] and df["arg3"][1] == 77 and df["arg4"][1] == 8
    assert dec.stats.skipped == 1 and dec.stats.problems[0].offset == len(good) + 1
