"""Virtqueues: ring layouts read from guest memory, and QEMU's own view polled over QMP.

Layouts (virtio 1.2 spec, all little-endian):

    split (2.7)   desc table  num x {le64 addr; le32 len; le16 flags; le16 next}
                  avail ring  le16 flags; le16 idx; le16 ring[num]; le16 used_event
                  used ring   le16 flags; le16 idx; {le32 id; le32 len} ring[num]; le16 avail_event
    packed (2.8)  desc ring   num x {le64 addr; le32 len; le16 id; le16 flags}
                  flags: NEXT 1, WRITE 2, INDIRECT 4, AVAIL 1<<7, USED 1<<15

Descriptor addresses are guest physical addresses, or, under Linux's xen-grant-dma
(drivers/xen/grant-dma-ops.c), grant references: bit 63 set, grant << 12 above it, the
offset within the page below; bit 62 also set marks a grant of the guest's persistent pool
(tests/xen/grant/persistent-grants.patch), which is no part of the grant reference.

Rows: ``virtqueue.desc`` (head = slot, addr, size = len; arg0 flags, arg1 next / id, arg2 1
for a grant address, arg3 grant ref, arg4 offset in page), ``virtqueue.avail`` (head = the
descriptor made available; arg0 ring position, arg1 avail idx, arg2 flags),
``virtqueue.used`` (head = id, size = len; arg0 ring position, arg1 used idx) and, from
QMP polls, ``virtqueue.status`` (arg0 last_avail_idx, arg1 shadow_avail_idx, arg2 used_idx,
arg3 signalled_used, arg4 inuse, arg5 vring num; addr = desc table address).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from xvtrace.parsers.errors import DecodeStats, ParseError, Problem
from xvtrace.parsers.schema import conform
from xvtrace.parsers.textlines import iter_lines

SOURCE = "virtqueue"
GRANT_ADDR_FLAG = np.uint64(1 << 63)
GRANT_PERSISTENT_FLAG = np.uint64(1 << 62)
XEN_PAGE_SHIFT = 12

SPLIT_DESC = np.dtype([("addr", "<u8"), ("len", "<u4"), ("flags", "<u2"), ("next", "<u2")])
PACKED_DESC = np.dtype([("addr", "<u8"), ("len", "<u4"), ("id", "<u2"), ("flags", "<u2")])
USED_ELEM = np.dtype([("id", "<u4"), ("len", "<u4")])
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
F_AVAIL, F_USED = 1 << 7, 1 << 15


def grant_parts(addr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(is_grant, grant ref, offset in page) of descriptor addresses."""
    addr = np.asarray(addr, dtype=np.uint64)
    is_grant = (addr & GRANT_ADDR_FLAG) != 0
    low = addr & ~(GRANT_ADDR_FLAG | GRANT_PERSISTENT_FLAG)
    gref = np.where(is_grant, low >> np.uint64(XEN_PAGE_SHIFT), 0).astype(np.uint64)
    off = np.where(is_grant, low & np.uint64((1 << XEN_PAGE_SHIFT) - 1), 0).astype(np.uint64)
    return is_grant, gref, off


def grant_address(gref: int, offset: int = 0) -> int:
    """The DMA address Linux's xen-grant-dma gives a device for a granted page."""
    return (1 << 63) | (gref << XEN_PAGE_SHIFT) | offset


# --- guest memory -----------------------------------------------------------------


class GuestMemory:
    """Guest-physical memory from an ELF core (QMP dump-guest-memory, or `write_core`):
    PT_LOAD segments placed at their p_paddr."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fh = self.path.open("rb")
        try:
            self.segments = sorted(self._segments())
            self._map = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
        except BaseException:
            self._fh.close()
            raise

    def _segments(self) -> list[tuple[int, int, int]]:
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile

        if self.path.stat().st_size == 0:
            raise ParseError(str(self.path), 0, "empty file: no ELF core")
        try:
            elf = ELFFile(self._fh)
            if elf["e_type"] != "ET_CORE":
                raise ParseError(str(self.path), 16, f"ELF type {elf['e_type']}, not a core dump")
            segs = [
                (s["p_paddr"], s["p_filesz"], s["p_offset"])
                for s in elf.iter_segments()
                if s["p_type"] == "PT_LOAD" and s["p_filesz"]
            ]
        except (ELFError, ValueError, KeyError, OSError) as e:  # pyelftools on garbage
            raise ParseError(str(self.path), 0, f"not a readable ELF core: {e}") from e
        size = self.path.stat().st_size
        for paddr, filesz, off in segs:
            if off + filesz > size:
                raise ParseError(
                    str(self.path), off, f"segment at gpa {paddr:#x} runs past the end of the file"
                )
        return segs

    def read(self, gpa: int, n: int) -> bytes | None:
        """n bytes at a guest physical address, or None when the dump does not hold them."""
        for paddr, filesz, off in self.segments:
            if paddr <= gpa and gpa + n <= paddr + filesz:
                start = off + gpa - paddr
                return self._map[start : start + n]
        return None

    def close(self) -> None:
        self._map.close()
        self._fh.close()


def write_core(path: str | os.PathLike, regions: list[tuple[int, bytes]]) -> None:
    """An ELF64 little-endian x86-64 core holding `regions` (gpa, bytes) as PT_LOAD
    segments: the layout dump-guest-memory writes, reduced to what is given."""
    ehsize, phsize = 64, 56
    data_off = ehsize + phsize * len(regions)
    out = bytearray()
    out += b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    out += np.array([4, 62], "<u2").tobytes() + np.array([1], "<u4").tobytes()  # ET_CORE, x86-64
    out += np.array([0, ehsize, 0], "<u8").tobytes() + np.array([0], "<u4").tobytes()
    out += np.array([ehsize, phsize, len(regions), 64, 0, 0], "<u2").tobytes()
    off = data_off
    for gpa, blob in regions:
        out += np.array([1, 4], "<u4").tobytes()  # PT_LOAD, PF_R
        out += np.array([off, gpa, gpa, len(blob), len(blob), 0], "<u8").tobytes()
        off += len(blob)
    for _, blob in regions:
        out += blob
    Path(path).write_bytes(bytes(out))


def sniff_core(head: bytes) -> bool:
    return len(head) >= 18 and head[:4] == b"\x7fELF" and head[16:18] == b"\x04\x00"


# --- rings ------------------------------------------------------------------------


@dataclass(frozen=True)
class Ring:
    """Where one virtqueue lives in guest memory."""

    dev: str
    queue: int
    num: int
    desc: int
    avail: int = 0  # split: avail ring; packed: driver event suppression area
    used: int = 0  # split: used ring; packed: device event suppression area
    packed: bool = False


def ring_rows(mem: GuestMemory, ring: Ring) -> tuple[pl.DataFrame, list[str]]:
    """The rows of one ring as the dump holds it, and the parts the dump lacks."""
    missing = []
    frames = []
    n = ring.num
    desc_dtype = PACKED_DESC if ring.packed else SPLIT_DESC
    raw = mem.read(ring.desc, n * desc_dtype.itemsize)
    if raw is None:
        missing.append(f"desc table at {ring.desc:#x}")
    else:
        d = np.frombuffer(raw, dtype=desc_dtype)
        is_grant, gref, off = grant_parts(d["addr"])
        frames.append(
            pl.DataFrame(
                {
                    "event": ["virtqueue.desc"] * n,
                    "head": np.arange(n, dtype=np.uint32),
                    "addr": d["addr"].astype(np.uint64),
                    "size": d["len"].astype(np.uint32),
                    "nargs": np.full(n, 5, np.uint8),
                    "arg0": d["flags"].astype(np.uint64),
                    "arg1": (d["id"] if ring.packed else d["next"]).astype(np.uint64),
                    "arg2": is_grant.astype(np.uint64),
                    "arg3": gref,
                    "arg4": off,
                }
            )
        )
    if not ring.packed:
        avail = mem.read(ring.avail, 4 + 2 * n)
        if avail is None:
            missing.append(f"avail ring at {ring.avail:#x}")
        else:
            flags, idx = np.frombuffer(avail[:4], "<u2")
            entries = np.frombuffer(avail[4:], "<u2")
            pos = _recent_positions(int(idx), n)
            frames.append(
                pl.DataFrame(
                    {
                        "event": ["virtqueue.avail"] * len(pos),
                        "head": entries[pos % n].astype(np.uint32),
                        "nargs": np.full(len(pos), 3, np.uint8),
                        "arg0": pos.astype(np.uint64),
                        "arg1": np.full(len(pos), idx, np.uint64),
                        "arg2": np.full(len(pos), flags, np.uint64),
                    }
                )
            )
        used = mem.read(ring.used, 4 + 8 * n)
        if used is None:
            missing.append(f"used ring at {ring.used:#x}")
        else:
            _, uidx = np.frombuffer(used[:4], "<u2")
            elems = np.frombuffer(used[4:], USED_ELEM)
            pos = _recent_positions(int(uidx), n)
            frames.append(
                pl.DataFrame(
                    {
                        "event": ["virtqueue.used"] * len(pos),
                        "head": elems["id"][pos % n].astype(np.uint32),
                        "size": elems["len"][pos % n].astype(np.uint32),
                        "nargs": np.full(len(pos), 2, np.uint8),
                        "arg0": pos.astype(np.uint64),
                        "arg1": np.full(len(pos), uidx, np.uint64),
                    }
                )
            )
    if not frames:
        return conform(pl.DataFrame(schema={"ts_ns": pl.Int64})), missing
    df = pl.concat(frames, how="diagonal_relaxed").with_columns(
        pl.lit(ring.dev).alias("dev"), pl.lit(ring.queue, dtype=pl.UInt16).alias("queue")
    )
    return df, missing


def _recent_positions(idx: int, num: int) -> np.ndarray:
    """The free-running ring positions still visible: the last min(idx, num) before idx."""
    count = min(idx, num)
    return (np.arange(idx - count, idx) % 65536).astype(np.int64)


# --- QMP polls --------------------------------------------------------------------

STATUS_TAG = '"xvtrace": "qmp-virtqueue-status"'
ELEMENT_TAG = '"xvtrace": "qmp-virtqueue-element"'
FLAG_BITS = {
    "next": F_NEXT,
    "write": F_WRITE,
    "indirect": F_INDIRECT,
    "avail": F_AVAIL,
    "used": F_USED,
}
ELEMENT_DTYPE = pl.Struct(
    {
        "t_ns": pl.Int64,
        "path": pl.String,
        "queue": pl.UInt16,
        "element": pl.Struct(
            {
                "index": pl.UInt32,
                "descs": pl.List(
                    pl.Struct({"flags": pl.List(pl.String), "len": pl.UInt64, "addr": pl.UInt64})
                ),
            }
        ),
    }
)
_STATUS_FIELDS = {
    "last-avail-idx": "arg0",
    "shadow-avail-idx": "arg1",
    "used-idx": "arg2",
    "signalled-used": "arg3",
    "inuse": "arg4",
    "vring-num": "arg5",
    "vring-desc": "addr",
}


def sniff_qmp(head: bytes) -> bool:
    first = head.split(b"\n", 1)[0]
    return first.startswith(b"{") and (
        STATUS_TAG.encode() in first or ELEMENT_TAG.encode() in first
    )


class QmpVirtqueueDecoder:
    """Decode the virtqueue polls `xvtrace capture` writes, one JSON object per line:
    {"xvtrace": "qmp-virtqueue-status", "t_ns", "path", "queue", "status": {QMP reply}}, and
    elements: {"xvtrace": "qmp-virtqueue-element", ..., "element": {x-query-virtio-queue-element
    reply}} (capture does not poll elements: see xvtrace.capture; a user may add them)."""

    def __init__(self, path: str | os.PathLike, *, src_file: str | None = None):
        self.path = Path(path)
        self.src_file = src_file if src_file is not None else self.path.name
        self.stats = DecodeStats(str(self.path), SOURCE)
        self.progress = None
        self.rings: dict[tuple[str, int], Ring] = {}

    def describe(self) -> dict:
        return {
            "file": self.src_file,
            "format": "qmp-virtqueues",
            "bytes": self.path.stat().st_size,
            "queues": [f"{d}#{q}" for d, q in sorted(self.rings)],
            "clock": {
                "domain": "host wall clock (CLOCK_REALTIME)",
                "ts_ns": "ns since the Unix epoch",
            },
            **{k: v for k, v in self.stats.as_dict().items() if k != "path"},
        }

    def frames(self) -> Iterator[pl.DataFrame]:
        if self.path.stat().st_size == 0:
            raise ParseError(str(self.path), 0, "empty file: no QMP virtqueue records")
        for pos, lines in iter_lines(self.path):
            lines = lines.filter(pl.col("line").str.len_bytes() > 0)
            num = r'"{}": (\d+)'
            cols = [
                pl.col("src_offset"),
                pl.col("line").str.extract(r'"t_ns": (\d+)').cast(pl.Int64, strict=False).alias("ts_ns"),
                pl.col("line").str.extract(r'"path": "([^"]*)"').alias("dev"),
                pl.col("line").str.extract(r'"queue": (\d+)').cast(pl.UInt16, strict=False).alias("queue"),
                *[
                    pl.col("line").str.extract(num.format(k)).cast(pl.UInt64, strict=False).alias(v)
                    for k, v in _STATUS_FIELDS.items()
                ],
                pl.col("line").str.extract(num.format("vring-avail")).cast(pl.UInt64, strict=False).alias("_avail"),
                pl.col("line").str.extract(num.format("vring-used")).cast(pl.UInt64, strict=False).alias("_used"),
                pl.col("line").str.contains(STATUS_TAG, literal=True).alias("_status"),
            ]  # fmt: skip
            elements = lines.filter(pl.col("line").str.contains(ELEMENT_TAG, literal=True))
            lines = lines.filter(~pl.col("line").str.contains(ELEMENT_TAG, literal=True))
            if len(elements):
                yield self._elements(elements)
            rows = lines.select(cols)
            good = rows["_status"] & rows["ts_ns"].is_not_null() & rows["arg0"].is_not_null()
            bad = rows.filter(~good)
            if len(bad):
                self.stats.skipped += len(bad)
                self.stats.add_problem(
                    Problem(int(bad["src_offset"][0]), "bad-record",
                            f"{len(bad)} line(s) that are not QMP virtqueue status records")
                )  # fmt: skip
            rows = rows.filter(good)
            self.stats.decoded += len(rows)
            last = rows.unique(subset=["dev", "queue"], keep="last", maintain_order=True)
            for r in last.iter_rows(named=True):  # one per queue, not per record
                if r["addr"]:
                    self.rings[(r["dev"], r["queue"])] = Ring(
                        r["dev"], r["queue"], int(r["arg5"] or 0), int(r["addr"]),
                        int(r["_avail"] or 0), int(r["_used"] or 0),
                    )  # fmt: skip
            if self.progress:
                self.progress(pos)
            yield conform(
                rows.drop("_status", "_avail", "_used").with_columns(
                    pl.col("ts_ns").cast(pl.UInt64).alias("ts_raw"),
                    pl.lit(True).alias("has_ts"),
                    pl.lit("virtqueue.status").alias("event"),
                    pl.lit(6, dtype=pl.UInt8).alias("nargs"),
                    pl.lit(SOURCE).alias("source"),
                    pl.lit(self.src_file).alias("src_file"),
                )
            )

    def _elements(self, lines: pl.DataFrame) -> pl.DataFrame:
        """One virtqueue.desc row per descriptor of each polled element."""
        try:
            rec = lines.select(
                "src_offset", pl.col("line").str.json_decode(ELEMENT_DTYPE).alias("r")
            )
        except pl.exceptions.PolarsError:
            # A malformed line (a capture killed mid-write): find it, keep the rest.
            ok = [_json_ok(x) for x in lines["line"].to_list()]  # only on this error path
            bad = lines.filter(~pl.Series(ok))
            self.stats.skipped += len(bad)
            self.stats.add_problem(
                Problem(
                    int(bad["src_offset"][0]),
                    "bad-record",
                    f"{len(bad)} malformed QMP element line(s)",
                )
            )
            rec = lines.filter(pl.Series(ok)).select(
                "src_offset", pl.col("line").str.json_decode(ELEMENT_DTYPE).alias("r")
            )
        flat = (
            rec.unnest("r")
            .unnest("element")
            .explode("descs")
            .filter(pl.col("descs").is_not_null())
            .unnest("descs")
        )
        bits = pl.lit(0, dtype=pl.UInt64)
        for name, bit in FLAG_BITS.items():
            bits = bits | pl.when(pl.col("flags").list.contains(name)).then(
                pl.lit(bit, dtype=pl.UInt64)
            ).otherwise(0)
        # polars has no shift operators: divide by powers of two (exact on UInt64)
        is_grant = pl.col("addr") >= (1 << 63)
        low = pl.col("addr") & ((1 << 62) - 1)  # without the grant and persistent flags
        self.stats.decoded += len(flat)
        return conform(
            flat.select(
                "src_offset",
                pl.col("t_ns").alias("ts_ns"),
                pl.col("t_ns").cast(pl.UInt64).alias("ts_raw"),
                pl.lit(True).alias("has_ts"),
                pl.col("path").alias("dev"),
                "queue",
                pl.col("index").alias("head"),
                "addr",
                pl.col("len").cast(pl.UInt32).alias("size"),
                pl.lit("virtqueue.desc").alias("event"),
                pl.lit(5, dtype=pl.UInt8).alias("nargs"),
                bits.alias("arg0"),
                pl.lit(0, dtype=pl.UInt64).alias("arg1"),
                is_grant.cast(pl.UInt64).alias("arg2"),
                pl.when(is_grant).then(low // (1 << XEN_PAGE_SHIFT)).otherwise(0).alias("arg3"),
                pl.when(is_grant)
                .then(low & ((1 << XEN_PAGE_SHIFT) - 1))
                .otherwise(0)
                .alias("arg4"),
                pl.lit(SOURCE).alias("source"),
                pl.lit(self.src_file).alias("src_file"),
            )
        )


def _json_ok(line: str) -> bool:
    import json

    try:
        json.loads(line)
        return True
    except ValueError:
        return False


class RingDumpDecoder:
    """Decode the virtqueue rings held in a guest-memory dump (ELF core), at the addresses
    QEMU reported for each queue (from the QMP polls of the same bundle, or given)."""

    def __init__(
        self,
        path: str | os.PathLike,
        rings: list[Ring] | Callable[[], list[Ring]],
        *,
        src_file: str | None = None,
    ):
        self.path = Path(path)
        self._rings = rings  # a callable: known once the bundle's QMP polls are decoded
        self.src_file = src_file if src_file is not None else self.path.name
        self.stats = DecodeStats(str(self.path), SOURCE)
        self.progress = None

    def describe(self) -> dict:
        return {
            "file": self.src_file,
            "format": "guest-memory-core",
            "bytes": self.path.stat().st_size,
            "rings": [f"{r.dev}#{r.queue}" for r in self.rings],
            "clock": {"domain": "none (a snapshot)"},
            **{k: v for k, v in self.stats.as_dict().items() if k != "path"},
        }

    @property
    def rings(self) -> list[Ring]:
        return self._rings() if callable(self._rings) else self._rings

    def frames(self) -> Iterator[pl.DataFrame]:
        mem = GuestMemory(self.path)
        try:
            if not self.rings:
                self.stats.extra["no_ring_addresses"] = 1
            for ring in self.rings:
                df, missing = ring_rows(mem, ring)
                for m in missing:
                    self.stats.add_problem(
                        Problem(
                            0, "not-in-dump", f"{ring.dev}#{ring.queue}: {m} is not in the dump"
                        )
                    )
                if len(df):
                    self.stats.decoded += len(df)
                    yield conform(
                        df.with_columns(
                            pl.lit(False).alias("has_ts"),
                            pl.lit(SOURCE).alias("source"),
                            pl.lit(self.src_file).alias("src_file"),
                        )
                    )
        finally:
            mem.close()
