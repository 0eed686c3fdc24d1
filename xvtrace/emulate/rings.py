"""The guest's virtqueue as the run leaves it: a split ring in guest memory (an ELF core, as
QMP dump-guest-memory writes) and the QMP status line that says where it is, so the bundle
has the descriptor view a live capture with --dump-memory has. Under the grant-based
transports the descriptors carry grant references (Linux xen-grant-dma encoding)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from xvtrace.parsers import virtqueue as vq

NUM = 256
DESC_GPA, AVAIL_GPA, USED_GPA = 0x0100_0000, 0x0100_1000, 0x0100_2000
DATA_GPA = 0x0200_0000  # guest pages the requests' buffers live in
QUEUE_PATH = "/machine/peripheral/vblk0/virtio-backend"


def write(raw: Path, req, epoch_ns: int, end_ns: float, *, grants: bool) -> int:
    """Write raw/memory-0.elf and raw/virtqueues-0.jsonl; returns descriptors written."""
    n = len(req.job)
    per = int(req.pages.max()) + 2  # header + data pages + status byte
    k = min(n, NUM // per)  # the last k requests still have their chains in the table
    desc = np.zeros(NUM, dtype=vq.SPLIT_DESC)
    heads = []
    for i in range(k):  # per chain of the last k requests (at most 256 / per)
        r = n - k + i
        head = i * per
        pages = int(req.pages[r])
        slots = [head + j for j in range(pages + 2)]
        addrs = [DATA_GPA + (r % 1024) * 0x10000 + j * 4096 for j in range(pages + 2)]
        if grants:
            addrs = [vq.grant_address(8 + (r % 1024) * per + j) for j in range(pages + 2)]
        lens = [16, *[min(4096, int(req.nbytes[r]) - 4096 * j) for j in range(pages)], 1]
        write_data = bool(req.write[r])
        for j, s in enumerate(slots):
            last = j == len(slots) - 1
            device_writes = last or (j > 0 and not write_data)
            flags = (0 if last else vq.F_NEXT) | (vq.F_WRITE if device_writes else 0)
            desc[s] = (addrs[j], lens[j], flags, 0 if last else slots[j + 1])
        heads.append(head)
    idx = n % 65536
    avail = np.zeros(2 + NUM + 1, "<u2")
    avail[1] = idx
    used = np.zeros(NUM, dtype=vq.USED_ELEM)
    for i, h in enumerate(heads):
        pos = (idx - k + i) % NUM
        avail[2 + pos] = h
        r = n - k + i
        used[pos] = (h, 1 if req.write[r] else int(req.nbytes[r]) + 1)
    used_bytes = np.array([0, idx], "<u2").tobytes() + used.tobytes() + b"\0\0"
    vq.write_core(
        raw / "memory-0.elf",
        [(DESC_GPA, desc.tobytes()), (AVAIL_GPA, avail.tobytes()), (USED_GPA, used_bytes)],
    )
    status = {
        "last-avail-idx": idx, "shadow-avail-idx": idx, "used-idx": idx, "signalled-used": idx, "inuse": 0,
        "vring-num": NUM, "vring-desc": DESC_GPA, "vring-avail": AVAIL_GPA, "vring-used": USED_GPA,
        "queue-index": 0, "name": "virtio-blk", "vring-align": 4096, "vring-num-default": NUM,
        "signalled-used-valid": True,
    }  # fmt: skip
    line = {
        "xvtrace": "qmp-virtqueue-status",
        "t_ns": int(epoch_ns + end_ns),
        "path": QUEUE_PATH,
        "queue": 0,
        "status": status,
    }
    (raw / "virtqueues-0.jsonl").write_text(json.dumps(line) + "\n")
    return int(sum(int(req.pages[n - k + i]) + 2 for i in range(k)))
