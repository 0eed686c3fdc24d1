"""pcap / pcapng decoding against scapy as the oracle, and hostile input."""

from __future__ import annotations

import pytest
from helpers import QEMU_PCI
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import PcapNgWriter, PcapWriter, rdpcap

from xvtrace.parsers import pcap
from xvtrace.parsers.errors import ParseError


def _expected(pkts) -> list[tuple]:
    out = []
    for p in pkts:
        e = Ether(bytes(p))
        ip = e.getlayer(IP)
        l4 = e.getlayer(TCP) or e.getlayer(UDP)
        out.append(
            (
                round(float(p.time) * 1e6),
                p.wirelen if p.wirelen is not None else len(p),
                len(p),
                e.type,
                ip.proto if ip else 0,
                int.from_bytes(bytes(map(int, ip.src.split("."))), "big") if ip else 0,
                int.from_bytes(bytes(map(int, ip.dst.split("."))), "big") if ip else 0,
                (l4.sport << 16 | l4.dport) if l4 else 0,
                int(e.src.replace(":", ""), 16),
            )
        )
    return out


def _got(df) -> list[tuple]:
    cols = ["size", "arg0", "arg1", "arg2", "arg3", "arg4", "arg5", "addr"]
    return [(r["ts_ns"] // 1000, *(r[c] for c in cols)) for r in df.iter_rows(named=True)]


def test_real_filter_dump_capture_matches_scapy():
    df, stats = pcap.decode_file(QEMU_PCI / "net.pcap")
    pkts = rdpcap(str(QEMU_PCI / "net.pcap"))
    assert stats.decoded == len(pkts) == 1235 and not stats.problems
    assert _got(df) == _expected(pkts)
    assert (df["event"] == "net.packet").all() and (df["source"] == "pcap").all()


def _packets(draw_sizes, t0=1_700_000_000.0):
    out = []
    for i, (size, kind) in enumerate(draw_sizes):
        payload = Raw(b"x" * size)
        if kind == 0:
            p = (
                Ether(src="52:54:00:12:34:56")
                / IP(src="10.0.2.15", dst="10.0.2.2")
                / TCP(sport=1000 + i, dport=80)
                / payload
            )
        elif kind == 1:
            p = Ether() / IP(src="1.2.3.4", dst="5.6.7.8") / UDP(sport=53, dport=999 + i) / payload
        else:
            p = Ether(type=0x86DD) / payload
        p.time = t0 + i * 0.001 + 0.000001 * i
        out.append(p)
    return out


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1500), st.integers(0, 2)), min_size=1, max_size=40),
       st.sampled_from(["pcap", "pcapng"]))  # fmt: skip
def test_round_trip_through_scapy_writers(tmp_path_factory, spec, fmt):
    pkts = _packets(spec)
    path = tmp_path_factory.mktemp("p") / f"t.{fmt}"
    writer = PcapWriter if fmt == "pcap" else PcapNgWriter
    w = writer(str(path))
    for p in pkts:
        w.write(p)
    w.close()
    df, stats = pcap.decode_file(path)
    assert stats.decoded == len(pkts) and not stats.problems
    assert _got(df) == _expected(rdpcap(str(path)))


def test_truncated_file_keeps_whole_packets_and_reports_the_offset(tmp_path):
    data = (QEMU_PCI / "net.pcap").read_bytes()
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[:100_001])
    df, stats = pcap.decode_file(path)
    assert 0 < len(df) < 1235
    assert stats.problems[0].kind == "truncated"
    assert stats.problems[0].offset + stats.problems[0].skipped_bytes == 100_001


def test_virtio_net_header_layer_dissects_dlt_user0(tmp_path):
    hdr_cls = pcap.virtio_net_layer()
    frame = hdr_cls(flags=1, gso_type=1, hdr_len=54, gso_size=1448, csum_start=34, csum_offset=16)
    frame = frame / Ether(src="52:54:00:12:34:56") / IP(src="10.0.2.15", dst="10.0.2.2") / TCP()
    path = tmp_path / "vnet.pcap"
    w = PcapWriter(str(path), linktype=pcap.LINKTYPE_VIRTIO_NET)
    w.write(frame)
    w.close()
    back = rdpcap(str(path))[0]
    assert back.haslayer(hdr_cls) and back[hdr_cls].gso_size == 1448
    assert back[hdr_cls].csum_offset == 16 and back[IP].dst == "10.0.2.2"
    df, _ = pcap.decode_file(path)
    row = df.row(0, named=True)
    # the Ethernet fields are read after the 10-byte header
    assert row["arg1"] == 0x0800 and row["arg2"] == 6 and row["addr"] == 0x525400123456


def test_empty_and_wrong_files_are_clear_errors(tmp_path):
    empty = tmp_path / "e.pcap"
    empty.write_bytes(b"")
    with pytest.raises(ParseError, match="empty"):
        pcap.decode_file(empty)
    wrong = tmp_path / "w.pcap"
    wrong.write_bytes(b"hello world, not a capture at all")
    with pytest.raises(ParseError, match="not a pcap"):
        pcap.decode_file(wrong)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([b"\xd4\xc3\xb2\xa1", b"\x0a\x0d\x0d\x0a"]), st.binary(max_size=600))
def test_arbitrary_bytes_after_a_magic_never_crash(tmp_path_factory, magic, blob):
    path = tmp_path_factory.mktemp("f") / "t.pcap"
    path.write_bytes(magic + blob)
    try:
        df, stats = pcap.decode_file(path)
    except ParseError:
        return
    assert stats.decoded == len(df)
