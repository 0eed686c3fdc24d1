"""Xen IOREQs: `ioreq_t` slots of shared ioreq pages (xen/include/public/hvm/ioreq.h, 4.17).

    struct ioreq {                       32 bytes, little-endian
        uint64_t addr;                   port, or guest physical address for MMIO
        uint64_t data;                   the value, or its guest address if data_is_ptr
        uint32_t count;                  rep count
        uint32_t size;                   access size in bytes
        uint32_t vp_eport;               event channel to the device model
        uint16_t _pad0;
        uint8_t  state:4, data_is_ptr:1, dir:1 (1 read), df:1, _pad1:1;
        uint8_t  type;                   0 PIO, 1 COPY (MMIO), 2 PCI config, 7 time offset,
    };                                   8 invalidate (mapcache)
    struct shared_iopage { struct ioreq vcpu_ioreq[]; }   one slot per vCPU, one 4 KiB page

A dump is a sequence of such pages (for instance one read of the ioreq server's page each
time a backend handles a request); each page is one snapshot. One ``ioreq.slot`` row per
slot in use: vcpu = slot, head = snapshot number, addr, size; arg0 data, arg1 count,
arg2 state, arg3 dir, arg4 type, arg5 data_is_ptr, arg6 vp_eport.

The device model's own record of IOREQs is its trace events (handle_ioreq*, cpu_ioreq_*),
decoded by parsers.qemu_log with the same addr/size columns.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

from xvtrace.parsers.errors import DecodeStats, ParseError, Problem
from xvtrace.parsers.schema import conform

SOURCE = "ioreq"
PAGE = 4096
IOREQ = np.dtype(
    [("addr", "<u8"), ("data", "<u8"), ("count", "<u4"), ("size", "<u4"), ("vp_eport", "<u4"),
     ("pad0", "<u2"), ("bits", "u1"), ("type", "u1")]
)  # fmt: skip
SLOTS = PAGE // IOREQ.itemsize
TYPES = (0, 1, 2, 7, 8)
STATES = ("none", "ioreq_ready", "ioreq_inprocess", "iorsp_ready")


def _valid(slots: np.ndarray) -> np.ndarray:
    """Slots that could be a real ioreq_t (empty slots are all zero)."""
    state = slots["bits"] & 0xF
    return (
        (slots["pad0"] == 0)
        & ((slots["bits"] & 0x80) == 0)
        & (state <= 3)
        & np.isin(slots["type"], TYPES)
        & np.isin(slots["size"], (0, 1, 2, 4, 8))
    )


def sniff(head: bytes) -> bool:
    """A whole page of plausible slots, at least one of them in use."""
    if len(head) < PAGE:
        return False
    slots = np.frombuffer(head[:PAGE], dtype=IOREQ)
    used = slots.view(np.uint8).reshape(SLOTS, -1).any(axis=1)
    return bool(_valid(slots).all() and used.any() and not used.all())


def encode(pages: list[list[dict]]) -> bytes:
    """Pages of slots (dicts of ioreq_t fields; missing fields 0) as a dump file."""
    out = np.zeros((len(pages), SLOTS), dtype=IOREQ)
    for p, slots in enumerate(pages):
        for v, s in enumerate(slots):
            bits = (
                (s.get("state", 0) & 0xF)
                | (s.get("data_is_ptr", 0) << 4)
                | (s.get("dir", 0) << 5)
                | (s.get("df", 0) << 6)
            )
            out[p, v] = (s.get("addr", 0), s.get("data", 0), s.get("count", 0), s.get("size", 0),
                         s.get("vp_eport", 0), 0, bits, s.get("type", 0))  # fmt: skip
    return out.tobytes()


class IoreqPageDecoder:
    def __init__(self, path: str | os.PathLike, *, src_file: str | None = None):
        self.path = Path(path)
        self.src_file = src_file if src_file is not None else self.path.name
        self.stats = DecodeStats(str(self.path), SOURCE)
        self.progress = None
        self.pages = 0

    def describe(self) -> dict:
        return {
            "file": self.src_file,
            "format": "ioreq-pages",
            "bytes": self.path.stat().st_size,
            "pages": self.pages,
            "clock": {"domain": "none (snapshots in order)"},
            **{k: v for k, v in self.stats.as_dict().items() if k != "path"},
        }

    def frames(self) -> Iterator[pl.DataFrame]:
        size = self.path.stat().st_size
        if size == 0:
            raise ParseError(str(self.path), 0, "empty file: no ioreq pages")
        whole = size // PAGE
        if size % PAGE:
            self.stats.add_problem(
                Problem(
                    whole * PAGE,
                    "truncated",
                    f"{size % PAGE} bytes after the last whole page",
                    size % PAGE,
                )
            )
        slots = np.fromfile(self.path, dtype=IOREQ, count=whole * SLOTS)
        self.pages = whole
        valid = _valid(slots)
        used = slots.view(np.uint8).reshape(len(slots), IOREQ.itemsize).any(axis=1)
        bad = used & ~valid
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            self.stats.skipped += int(bad.sum())
            self.stats.add_problem(
                Problem(first * IOREQ.itemsize, "bad-record",
                        f"{int(bad.sum())} slot(s) that are not a valid ioreq_t", int(bad.sum()) * IOREQ.itemsize)
            )  # fmt: skip
        keep = np.flatnonzero(used & valid)
        s = slots[keep]
        bits = s["bits"]
        self.stats.decoded += len(s)
        if self.progress:
            self.progress(size)
        yield conform(
            pl.DataFrame(
                {
                    "has_ts": np.zeros(len(s), dtype=bool),
                    "vcpu": (keep % SLOTS).astype(np.int32),
                    "head": (keep // SLOTS).astype(np.uint32),
                    "event": ["ioreq.slot"] * len(s),
                    "code": s["type"].astype(np.uint32),
                    "nargs": np.full(len(s), 7, np.uint8),
                    "arg0": s["data"],
                    "arg1": s["count"].astype(np.uint64),
                    "arg2": (bits & 0xF).astype(np.uint64),
                    "arg3": ((bits >> 5) & 1).astype(np.uint64),
                    "arg4": s["type"].astype(np.uint64),
                    "arg5": ((bits >> 4) & 1).astype(np.uint64),
                    "arg6": s["vp_eport"].astype(np.uint64),
                    "addr": s["addr"],
                    "size": s["size"],
                    "src_offset": (keep * IOREQ.itemsize).astype(np.uint64),
                }
            ).with_columns(pl.lit(SOURCE).alias("source"), pl.lit(self.src_file).alias("src_file"))
        )
