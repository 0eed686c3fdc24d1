"""Packet captures (pcap and pcapng) to the canonical event table, and the virtio-net header.

Layouts: pcap (https://www.tcpdump.org/manpages/pcap-savefile.5.html) is a 24-byte file
header then records `ts_sec ts_frac incl_len orig_len data`; pcapng (IETF draft
draft-ietf-opsawg-pcapng) is a chain of blocks `type total_len body total_len`, with packets
in Enhanced (6) or Simple (3) Packet Blocks and link type / time resolution in Interface
Description Blocks (1). Both are chains (a record's length says where the next starts): a
small numba kernel walks them, as for xentrace; everything else is numpy on the headers.

One row per packet, event ``net.packet``: size = original length; arg0 captured length,
arg1 EtherType, arg2 IP protocol, arg3 IPv4 source, arg4 IPv4 destination, arg5 the L4
ports as (source << 16 | destination), arg6 the interface index; addr = the source MAC
(which tells a guest's transmissions from what it receives); dev = the interface name.

Frames that begin with a virtio-net header (struct virtio_net_hdr, virtio spec 5.1.6) are
recognised by link type DLT_USER0 (147), the convention xvtrace uses when it writes them;
scapy's `VirtioNetHdr` layer (below) dissects them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
from numba import njit

from xvtrace.parsers.errors import DecodeStats, ParseError, Problem
from xvtrace.parsers.schema import conform

SOURCE = "pcap"
EVENT = "net.packet"
LINKTYPE_ETHERNET = 1
LINKTYPE_VIRTIO_NET = 147  # DLT_USER0: frames prefixed by struct virtio_net_hdr
VNET_HDR_LEN = 10  # struct virtio_net_hdr; 12 with num_buffers (VIRTIO_NET_F_MRG_RXBUF)

PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000),  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (">", 1_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"


def sniff(head: bytes) -> bool:
    if len(head) >= 24 and head[:4] in PCAP_MAGIC:
        return True
    return (
        len(head) >= 12
        and head[:4] == PCAPNG_SHB
        and head[8:12]
        in (
            b"\x4d\x3c\x2b\x1a",
            b"\x1a\x2b\x3c\x4d",
        )
    )


# --- the chain walks ---------------------------------------------------------------


@njit(cache=True, nogil=True)
def _walk_pcap(buf, big):
    """Record offsets of a classic pcap body (after the 24-byte header); returns
    (offsets, stop, truncated) where stop is where the good records end."""
    n = buf.shape[0]
    cap = 1024
    offs = np.empty(cap, dtype=np.int64)
    k = 0
    p = 24
    while p + 16 <= n:
        if big:
            incl = (buf[p + 8] << 24) | (buf[p + 9] << 16) | (buf[p + 10] << 8) | buf[p + 11]
        else:
            incl = buf[p + 8] | (buf[p + 9] << 8) | (buf[p + 10] << 16) | (buf[p + 11] << 24)
        if incl > 0x4000000:  # 64 MiB: no capture has such packets; the file is corrupt here
            return offs[:k], p, 2
        if p + 16 + incl > n:
            return offs[:k], p, 1
        if k == cap:
            cap *= 2
            grown = np.empty(cap, dtype=np.int64)
            grown[:k] = offs[:k]
            offs = grown
        offs[k] = p
        k += 1
        p += 16 + incl
    return offs[:k], p, 1 if p != n else 0


@njit(cache=True, nogil=True)
def _walk_pcapng(buf):
    """Block offsets and types of a pcapng file; byte order is per section (SHB magic).
    Returns (offsets, types, big_endian, stop, problem)."""
    n = buf.shape[0]
    cap = 1024
    offs = np.empty(cap, dtype=np.int64)
    types = np.empty(cap, dtype=np.uint32)
    bigs = np.empty(cap, dtype=np.bool_)
    k = 0
    p = 0
    big = False
    while p + 12 <= n:
        if buf[p] == 0x0A and buf[p + 1] == 0x0D and buf[p + 2] == 0x0D and buf[p + 3] == 0x0A:
            if buf[p + 8] == 0x1A and buf[p + 9] == 0x2B:
                big = True
            elif buf[p + 8] == 0x4D and buf[p + 9] == 0x3C:
                big = False
            else:
                return offs[:k], types[:k], bigs[:k], p, 2
        if big:
            t = (buf[p] << 24) | (buf[p + 1] << 16) | (buf[p + 2] << 8) | buf[p + 3]
            ln = (buf[p + 4] << 24) | (buf[p + 5] << 16) | (buf[p + 6] << 8) | buf[p + 7]
        else:
            t = buf[p] | (buf[p + 1] << 8) | (buf[p + 2] << 16) | (buf[p + 3] << 24)
            ln = buf[p + 4] | (buf[p + 5] << 8) | (buf[p + 6] << 16) | (buf[p + 7] << 24)
        if ln < 12 or ln % 4 != 0:
            return offs[:k], types[:k], bigs[:k], p, 2
        if p + ln > n:
            return offs[:k], types[:k], bigs[:k], p, 1
        if k == cap:
            cap *= 2
            g1 = np.empty(cap, dtype=np.int64)
            g2 = np.empty(cap, dtype=np.uint32)
            g3 = np.empty(cap, dtype=np.bool_)
            g1[:k] = offs[:k]
            g2[:k] = types[:k]
            g3[:k] = bigs[:k]
            offs, types, bigs = g1, g2, g3
        offs[k] = p
        types[k] = t
        bigs[k] = big
        k += 1
        p += ln
    return offs[:k], types[:k], bigs[:k], p, 1 if p != n else 0


def _u32(buf: np.ndarray, at: np.ndarray, big) -> np.ndarray:
    b = [buf[at + i].astype(np.uint64) for i in range(4)]
    le = b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)
    be = (b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]
    return np.where(big, be, le)


def _u16be(buf: np.ndarray, at: np.ndarray, ok: np.ndarray) -> np.ndarray:
    at = np.where(ok, at, 0)
    return np.where(ok, (buf[at].astype(np.uint64) << 8) | buf[at + 1], 0)


# --- decoding --------------------------------------------------------------------


class PcapDecoder:
    """Decode a pcap or pcapng file into canonical `net.packet` rows."""

    def __init__(self, path: str | os.PathLike, *, src_file: str | None = None):
        self.path = Path(path)
        self.src_file = src_file if src_file is not None else self.path.name
        self.stats = DecodeStats(str(self.path), SOURCE)
        self.progress = None
        self.format = None
        self.linktypes: list[int] = []
        self.interfaces: list[str] = []

    def frames(self) -> Iterator[pl.DataFrame]:
        size = self.path.stat().st_size
        if size == 0:
            raise ParseError(str(self.path), 0, "empty file: no packets")
        buf = np.fromfile(self.path, dtype=np.uint8)
        head = buf[:24].tobytes()
        if head[:4] in PCAP_MAGIC:
            frame = self._pcap(buf)
        elif head[:4] == PCAPNG_SHB:
            frame = self._pcapng(buf)
        else:
            raise ParseError(str(self.path), 0, "not a pcap or pcapng file (no magic number)")
        if self.progress:
            self.progress(size)
        yield frame

    def describe(self) -> dict:
        return {
            "file": self.src_file,
            "format": self.format,
            "bytes": self.path.stat().st_size,
            "linktypes": self.linktypes,
            "interfaces": self.interfaces,
            "clock": {
                "domain": "capture clock (pcap timestamps)",
                "ts_ns": "ns since the Unix epoch",
            },
            **{k: v for k, v in self.stats.as_dict().items() if k != "path"},
        }

    def _pcap(self, buf: np.ndarray) -> pl.DataFrame:
        self.format = "pcap"
        if len(buf) < 24:
            raise ParseError(str(self.path), 0, "truncated pcap file header")
        order, unit = PCAP_MAGIC[buf[:4].tobytes()]
        big = order == ">"
        hdr = np.frombuffer(buf[:24].tobytes(), dtype=f"{order}u4")
        linktype = int(hdr[5] & 0x0FFFFFFF)
        self.linktypes = [linktype]
        offs, stop, problem = _walk_pcap(buf, big)
        self._note_end(len(buf), stop, problem)
        sec = _u32(buf, offs, big)
        frac = _u32(buf, offs + 4, big)
        caplen = _u32(buf, offs + 8, big)
        wirelen = _u32(buf, offs + 12, big)
        ts = sec.astype(np.int64) * 1_000_000_000 + frac.astype(np.int64) * unit
        raw = sec * (1_000_000_000 // unit) + frac
        lt = np.full(len(offs), linktype)
        return self._rows(
            buf, offs + 16, caplen, wirelen, ts, raw, lt, np.zeros(len(offs), np.int64), offs
        )

    def _pcapng(self, buf: np.ndarray) -> pl.DataFrame:
        self.format = "pcapng"
        offs, types, bigs, stop, problem = _walk_pcapng(buf)
        self._note_end(len(buf), stop, problem)
        # Interfaces, in order, per section (few blocks: a Python loop here is per interface).
        if_link, if_unit, if_name = [], [], []
        if_base = np.zeros(len(offs), dtype=np.int64)  # first interface id of the section
        base = 0
        for i, (o, t, big) in enumerate(
            zip(offs.tolist(), types.tolist(), bigs.tolist(), strict=True)
        ):
            if t == 0x0A0D0D0A:
                base = len(if_link)
            if_base[i] = base
            if t == 1:
                link, unit, name = _idb(buf, o, big)
                if_link.append(link)
                if_unit.append(unit)
                if_name.append(name)
        self.linktypes = sorted(set(if_link))
        self.interfaces = if_name
        epb = (types == 6) & (offs + 28 <= len(buf))
        spb = types == 3
        known = {0x0A0D0D0A, 1, 2, 3, 4, 5, 6, 0x00000BAD, 0x40000BAD, 9, 10}
        other = int(np.count_nonzero(~np.isin(types, list(known))))
        if other:
            self.stats.extra["unknown_blocks"] = other
        links = np.array(if_link or [LINKTYPE_ETHERNET], dtype=np.int64)
        units = np.array(if_unit or [1000], dtype=np.float64)
        # Enhanced Packet Blocks
        e = offs[epb]
        eb = bigs[epb]
        iface = (_u32(buf, e + 8, eb).astype(np.int64) + if_base[epb]).clip(0, len(links) - 1)
        hi = _u32(buf, e + 12, eb)
        lo = _u32(buf, e + 16, eb)
        raw = (hi << np.uint64(32)) | lo
        ts = (raw.astype(np.float64) * units[iface]).astype(np.int64)  # unit: ns per tick
        exact = units[iface] == np.round(units[iface])
        ts = np.where(exact, raw.astype(np.int64) * units[iface].astype(np.int64), ts)
        cap = _u32(buf, e + 20, eb)
        wire = _u32(buf, e + 24, eb)
        # Simple Packet Blocks: no timestamp, interface 0 of the section
        s = offs[spb]
        sb = bigs[spb]
        blen = _u32(buf, s + 4, sb)
        swire = _u32(buf, s + 8, sb)
        scap = np.minimum(swire, blen - 16)
        if len(s):
            self.stats.extra["simple_packet_blocks"] = len(s)
        rows = np.concatenate([e, s])
        data = np.concatenate([e + 28, s + 12])
        caplen = np.concatenate([cap, scap])
        wirelen = np.concatenate([wire, swire])
        tsn = np.concatenate([ts, np.full(len(s), -1, dtype=np.int64)])
        tsr = np.concatenate([raw, np.zeros(len(s), dtype=np.uint64)])
        ifc = np.concatenate([iface, if_base[spb]])
        order = np.argsort(rows, kind="stable")
        return self._rows(buf, data[order], caplen[order], wirelen[order], tsn[order], tsr[order],
                          links[ifc[order]], ifc[order], rows[order])  # fmt: skip

    def _note_end(self, n: int, stop: int, problem: int) -> None:
        if problem:
            text = "file ends inside a packet record" if problem == 1 else "corrupt record length"
            self.stats.add_problem(
                Problem(int(stop), "truncated" if problem == 1 else "corrupt", text, n - int(stop))
            )

    def _rows(self, buf, data, caplen, wirelen, ts, raw, linktype, iface, offs) -> pl.DataFrame:
        n = len(data)
        caplen = caplen.astype(np.int64)
        end = data + caplen
        ok = end <= len(buf)
        data = np.where(ok, data, 0)
        vnet = linktype == LINKTYPE_VIRTIO_NET
        eth = np.where(vnet, data + VNET_HDR_LEN, data)
        has_eth = ok & (eth + 14 <= end) & ((linktype == LINKTYPE_ETHERNET) | vnet)
        src_mac = np.zeros(n, dtype=np.uint64)
        for i in range(6):  # six byte gathers, not a loop over packets
            src_mac = (src_mac << np.uint64(8)) | np.where(
                has_eth, buf[np.where(has_eth, eth + 6 + i, 0)], 0
            ).astype(np.uint64)
        etype = _u16be(buf, eth + 12, has_eth)
        ip4 = has_eth & (etype == 0x0800) & (eth + 34 <= end)
        l3 = eth + 14
        proto = np.where(ip4, buf[np.where(ip4, l3 + 9, 0)], 0).astype(np.uint64)
        src_ip = np.where(ip4, _u32(buf, np.where(ip4, l3 + 12, 0), True), 0)
        dst_ip = np.where(ip4, _u32(buf, np.where(ip4, l3 + 16, 0), True), 0)
        ihl = (np.where(ip4, buf[np.where(ip4, l3, 0)], 0).astype(np.int64) & 0xF) * 4
        l4 = l3 + ihl
        has_ports = ip4 & np.isin(proto, [6, 17]) & (l4 + 4 <= end)
        ports = (_u16be(buf, l4, has_ports) << np.uint64(16)) | _u16be(buf, l4 + 2, has_ports)
        names = self.interfaces or [self.path.name]
        dev = (
            np.array(names, dtype=object)[np.clip(iface, 0, len(names) - 1)]
            if n
            else np.array([], dtype=object)
        )
        self.stats.decoded += n
        if (~ok).any():
            self.stats.add_problem(
                Problem(int(offs[~ok][0]), "truncated", "packet data past the end of the file")
            )
        df = pl.DataFrame(
            {
                "ts_ns": pl.Series(ts, dtype=pl.Int64),
                "ts_raw": raw.astype(np.uint64),
                "has_ts": ts >= 0,
                "event": pl.Series([EVENT] * n, dtype=pl.String),
                "code": linktype.astype(np.uint32),
                "nargs": np.full(n, 7, dtype=np.uint8),
                "arg0": caplen.astype(np.uint64),
                "arg1": etype.astype(np.uint64),
                "arg2": proto,
                "arg3": src_ip.astype(np.uint64),
                "arg4": dst_ip.astype(np.uint64),
                "arg5": ports.astype(np.uint64),
                "arg6": iface.astype(np.uint64),
                "addr": src_mac,
                "size": wirelen.astype(np.uint32),
                "dev": pl.Series(dev.tolist(), dtype=pl.String),
                "src_offset": offs.astype(np.uint64),
            }
        ).with_columns(
            pl.when(pl.col("has_ts")).then(pl.col("ts_ns")).alias("ts_ns"),
            pl.lit(SOURCE).alias("source"),
            pl.lit(self.src_file).alias("src_file"),
        )
        return conform(df)


def _idb(buf: np.ndarray, o: int, big: bool) -> tuple[int, float, str]:
    """Link type, ns per timestamp tick, and name of one Interface Description Block."""
    order = ">" if big else "<"
    blen = int(np.frombuffer(buf[o + 4 : o + 8].tobytes(), dtype=f"{order}u4")[0])
    link = int(np.frombuffer(buf[o + 8 : o + 10].tobytes(), dtype=f"{order}u2")[0])
    unit, name = 1000.0, ""
    p, end = o + 16, o + blen - 4
    while p + 4 <= end:
        code, ln = (int(x) for x in np.frombuffer(buf[p : p + 4].tobytes(), dtype=f"{order}u2"))
        if code == 0:
            break
        val = buf[p + 4 : p + 4 + ln].tobytes()
        if code == 2:
            name = val.decode("utf-8", errors="replace")
        elif code == 9 and ln >= 1:
            r = val[0]
            unit = 1e9 / (2 ** (r & 0x7F)) if r & 0x80 else 1e9 / (10 ** (r & 0x7F))
        p += 4 + ln + (-ln % 4)
    return link, unit, name


def decode_file(path: str | os.PathLike, **kw) -> tuple[pl.DataFrame, DecodeStats]:
    dec = PcapDecoder(path, **kw)
    frames = list(dec.frames())
    return pl.concat(frames), dec.stats


@functools.cache
def virtio_net_layer():
    """scapy's `VirtioNetHdr` layer (virtio spec 5.1.6 struct virtio_net_hdr, little-endian),
    bound to DLT_USER0 captures and followed by Ethernet. Built on first use so that
    decoding never imports scapy."""
    from scapy.config import conf
    from scapy.fields import ByteField, FlagsField, LEShortField
    from scapy.layers.l2 import Ether
    from scapy.packet import Packet, bind_layers

    class VirtioNetHdr(Packet):
        name = "virtio_net_hdr"
        fields_desc = [  # noqa: RUF012 (scapy's declarative layout)
            FlagsField("flags", 0, 8, ["NEEDS_CSUM", "DATA_VALID", "RSC_INFO"]),
            ByteField("gso_type", 0),  # 0 NONE, 1 TCPV4, 3 UDP, 4 TCPV6, 5 UDP_L4, 0x80 ECN
            LEShortField("hdr_len", 0),
            LEShortField("gso_size", 0),
            LEShortField("csum_start", 0),
            LEShortField("csum_offset", 0),
        ]

    bind_layers(VirtioNetHdr, Ether)
    conf.l2types.register(LINKTYPE_VIRTIO_NET, VirtioNetHdr)
    return VirtioNetHdr
