"""The network side of an emulated run: a pcap of every frame the guest sent or received,
as QEMU's filter-dump writes it (classic pcap, microsecond timestamps, Ethernet).

Frames are built with scapy once per direction (Ether / IPv4 / UDP / payload of the
workload's size) and stamped into the file as whole numpy columns, one record per request.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GUEST_MAC, HOST_MAC = "52:54:00:12:34:56", "52:55:0a:00:02:02"
GUEST_IP, HOST_IP = "10.0.2.15", "10.0.2.2"
GUEST_PORT, HOST_PORT = 40000, 7


def _frame(tx: bool, payload: int) -> bytes:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    if tx:
        p = (
            Ether(src=GUEST_MAC, dst=HOST_MAC)
            / IP(src=GUEST_IP, dst=HOST_IP)
            / UDP(sport=GUEST_PORT, dport=HOST_PORT)
        )
    else:
        p = (
            Ether(src=HOST_MAC, dst=GUEST_MAC)
            / IP(src=HOST_IP, dst=GUEST_IP)
            / UDP(sport=HOST_PORT, dport=GUEST_PORT)
        )
    return bytes(p / Raw(b"x" * payload))


def write(path: Path, parts, epoch_ns: float) -> int:
    """One record per request: transmitted frames at their wire_tx start, received ones at
    their wire_rx start. Returns the number of packets."""
    times, frames = [], []
    for kind, path_ops, sched, req in parts:
        names = [o.name for o in path_ops]
        op = "wire_tx" if kind == "net_tx" else "wire_rx"
        if op not in names or not len(req.job):
            continue
        t = sched.start[:, names.index(op)]
        payload = int(req.nbytes[0]) - 42
        times.append(t)
        frames.append((_frame(kind == "net_tx", payload), len(t)))
    if not times:
        path.write_bytes(b"")
        return 0
    t = np.concatenate(times)
    template = np.concatenate([np.full(c, i) for i, (_, c) in enumerate(frames)])
    order = np.argsort(t, kind="stable")
    t, template = t[order], template[order]
    us = ((epoch_ns + t) // 1000).astype(np.int64)
    header = np.array([0xA1B2C3D4, 0x00040002, 0, 0, 65535, 1], "<u4").tobytes()  # v2.4, Ethernet
    out = [header]
    lens = np.array([len(f) for f, _ in frames])
    rec = np.zeros((len(t), 4), "<u4")
    rec[:, 0], rec[:, 1] = us // 1_000_000, us % 1_000_000
    rec[:, 2] = rec[:, 3] = lens[template]
    # records differ only in timestamp and template: lay them out as byte rows per template
    blobs = [np.frombuffer(f, np.uint8) for f, _ in frames]
    size = 16 + lens[template]
    pos = np.concatenate(([0], np.cumsum(size)[:-1]))
    buf = np.empty(int(size.sum()), np.uint8)
    hdr_bytes = rec.view(np.uint8).reshape(len(t), 16)
    for i, blob in enumerate(blobs):  # per template (two at most), not per packet
        m = np.flatnonzero(template == i)
        idx = pos[m, None] + np.arange(16 + len(blob))
        buf[idx] = np.hstack([hdr_bytes[m], np.broadcast_to(blob, (len(m), len(blob)))])
    out.append(buf.tobytes())
    path.write_bytes(b"".join(out))
    return len(t)
