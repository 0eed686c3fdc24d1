"""QEMU simpletrace binary files (the `simple` trace backend), read with the trace-events
definitions they were produced with, and a writer of the same layout (for tests: Debian's
QEMU is built with the log backend only and cannot write these).

Layout (QEMU trace/simple.c, scripts/simpletrace.py), host byte order (little-endian here):

    header   u64 0xffffffffffffffff  u64 magic 0xf2b177cb0aa429b4  u64 version (4)
    record   u64 type, then
      type 0 (mapping)  u64 event id, u32 name length, name bytes
      type 1 (event)    u64 event id, u64 timestamp ns, u32 record length, u32 pid, args
    args     per argument of the event's signature: a u64, or u32 length + bytes for a
             `char *`; record length counts from the event id to the end of the args
    event id 0xfffffffffffffffe reports dropped records (one u64 arg: how many)

Version 4 names events through mapping records; in versions 2 and 3 an id is the event's
position in the trace-events file, which is why the definitions must be the same.
Record boundaries are a chain (each length is in the record), walked by a numba kernel;
numbers are then read with numpy per event type.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
from numba import njit

from xvtrace.parsers.errors import DecodeStats, ParseError, Problem
from xvtrace.parsers.qemu_events import roles_for
from xvtrace.parsers.qemu_log import event_name
from xvtrace.parsers.schema import N_ARGS, conform
from xvtrace.parsers.trace_events import TraceEvents

SOURCE = "qemu"
HEADER_EVENT_ID = 0xFFFFFFFFFFFFFFFF
HEADER_MAGIC = 0xF2B177CB0AA429B4
DROPPED_EVENT_ID = 0xFFFFFFFFFFFFFFFE
TYPE_MAPPING, TYPE_EVENT = 0, 1
HEADER = np.array([HEADER_EVENT_ID, HEADER_MAGIC, 4], dtype="<u8").tobytes()


def sniff(head: bytes) -> bool:
    if len(head) < 24:
        return False
    ident, magic, version = np.frombuffer(head[:24], dtype="<u8")
    return (
        int(ident) == HEADER_EVENT_ID and int(magic) == HEADER_MAGIC and int(version) in (2, 3, 4)
    )


@njit(cache=True, nogil=True)
def _u64(buf, p):
    v = np.uint64(0)
    for i in range(8):
        v |= np.uint64(buf[p + i]) << np.uint64(8 * i)
    return v


@njit(cache=True, nogil=True)
def _u32(buf, p):
    return (
        np.uint32(buf[p])
        | (np.uint32(buf[p + 1]) << 8)
        | (np.uint32(buf[p + 2]) << 16)
        | (np.uint32(buf[p + 3]) << 24)
    )


@njit(cache=True, nogil=True)
def _walk(buf, start):
    """Offsets of the records after the header: (offset, type, name_len or record_len);
    returns them and (stop, problem) where problem 1 = truncated, 2 = corrupt."""
    n = buf.shape[0]
    cap = 1024
    out = np.empty((cap, 3), dtype=np.int64)
    k = 0
    p = start
    while p < n:
        if p + 8 > n:
            return out[:k], p, 1
        t = _u64(buf, p)
        if t == 0:
            if p + 20 > n:
                return out[:k], p, 1
            ln = np.int64(_u32(buf, p + 16))
            nxt = p + 20 + ln
        elif t == 1:
            if p + 32 > n:
                return out[:k], p, 1
            ln = np.int64(_u32(buf, p + 24))
            if ln < 24:
                return out[:k], p, 2
            nxt = p + 8 + ln
        else:
            return out[:k], p, 2
        if nxt > n:
            return out[:k], p, 1
        if k == cap:
            cap *= 2
            grown = np.empty((cap, 3), dtype=np.int64)
            grown[:k] = out[:k]
            out = grown
        out[k, 0] = p
        out[k, 1] = t
        out[k, 2] = ln
        k += 1
        p = nxt
    return out[:k], p, 0


@njit(cache=True, nogil=True)
def _args(buf, offs, lens, kinds, nkinds):
    """Numeric arguments (up to 7) of event records whose argument kinds are `kinds`
    (0 number, 1 string), skipping strings; ok[i] False when they overrun the record."""
    m = offs.shape[0]
    out = np.zeros((7, m), dtype=np.uint64)
    nnum = np.zeros(m, dtype=np.uint8)
    ok = np.ones(m, dtype=np.bool_)
    for i in range(m):
        p = offs[i] + 32
        end = offs[i] + 8 + lens[i]
        j = 0
        for a in range(nkinds):
            if kinds[a] == 1:
                if p + 4 > end:
                    ok[i] = False
                    break
                p += 4 + np.int64(_u32(buf, p))
            else:
                if p + 8 > end:
                    ok[i] = False
                    break
                if j < 7:
                    out[j, i] = _u64(buf, p)
                j += 1
                p += 8
        nnum[i] = min(j, 7)
    return out, nnum, ok


class SimpletraceDecoder:
    def __init__(self, path: str | os.PathLike, *, defs: TraceEvents | None = None,
                 src_file: str | None = None):  # fmt: skip
        self.path = Path(path)
        self.defs = defs or TraceEvents.default()
        self.src_file = src_file if src_file is not None else self.path.name
        self.stats = DecodeStats(str(self.path), SOURCE)
        self.progress = None
        self.version = None
        self.pids: set[int] = set()

    def describe(self) -> dict:
        return {
            "file": self.src_file,
            "format": "qemu-simpletrace",
            "version": self.version,
            "bytes": self.path.stat().st_size,
            "definitions": self.defs.origin,
            "pids": sorted(self.pids),
            "clock": {"domain": "QEMU host clock (ns)", "ts_ns": "as recorded"},
            **{k: v for k, v in self.stats.as_dict().items() if k != "path"},
        }

    def frames(self) -> Iterator[pl.DataFrame]:
        size = self.path.stat().st_size
        if size == 0:
            raise ParseError(str(self.path), 0, "empty file: no simpletrace records")
        buf = np.fromfile(self.path, dtype=np.uint8)
        if not sniff(buf[:24].tobytes()):
            raise ParseError(str(self.path), 0, "not a QEMU simpletrace file (bad header or magic)")
        self.version = int(np.frombuffer(buf[16:24].tobytes(), "<u8")[0])
        recs, stop, problem = _walk(buf, 24)
        if problem:
            what = "file ends inside a record" if problem == 1 else "corrupt record type or length"
            self.stats.add_problem(
                Problem(
                    int(stop), "truncated" if problem == 1 else "corrupt", what, size - int(stop)
                )
            )
        names = self._mapping(buf, recs[recs[:, 1] == TYPE_MAPPING])
        ev = recs[recs[:, 1] == TYPE_EVENT]
        ids = self._u64_at(buf, ev[:, 0] + 8)
        ts = self._u64_at(buf, ev[:, 0] + 16)
        pid = self._u32_at(buf, ev[:, 0] + 28)
        frames = []
        for eid in np.unique(ids):
            rows = np.flatnonzero(ids == eid)
            frames.append(self._event_rows(buf, int(eid), names, ev[rows], ts[rows], pid[rows]))
        if self.progress:
            self.progress(size)
        if not frames:
            return
        df = pl.concat(frames, how="diagonal_relaxed").sort("src_offset")
        self.stats.decoded += len(df)
        self.pids.update(df["thread"].unique().to_list())
        yield conform(
            df.with_columns(pl.lit(SOURCE).alias("source"), pl.lit(self.src_file).alias("src_file"))
        )

    @staticmethod
    def _u64_at(buf, at) -> np.ndarray:
        return _le_at(buf, at, 8)

    @staticmethod
    def _u32_at(buf, at) -> np.ndarray:
        return _le_at(buf, at, 4)

    def _mapping(self, buf, maps) -> dict[int, str]:
        """Event id -> name from mapping records (version 4; a few hundred, not per event)."""
        names = {}
        for off, _, ln in maps.tolist():
            eid = int(self._u64_at(buf, np.array([off + 8]))[0])
            names[eid] = buf[off + 20 : off + 20 + ln].tobytes().decode("utf-8", errors="replace")
        if self.version in (2, 3):
            names.update({e.number: e.name for e in self.defs.events.values()})
        return names

    def _event_rows(self, buf, eid, names, recs, ts, pid) -> pl.DataFrame:
        offs, lens = recs[:, 0].astype(np.int64), recs[:, 2].astype(np.int64)
        n = len(offs)
        base = {
            "src_offset": offs.astype(np.uint64),
            "ts_ns": ts.astype(np.int64),
            "ts_raw": ts,
            "has_ts": np.ones(n, dtype=bool),
            "thread": pid.astype(np.uint32),
        }
        if eid == DROPPED_EVENT_ID:
            dropped = self._u64_at(buf, offs + 32)
            self.stats.lost += int(dropped.sum())
            return pl.DataFrame(
                {**base, "event": ["unknown"] * n, "nargs": np.ones(n, np.uint8), "arg0": dropped}
            )
        name = names.get(eid)
        ev = self.defs.events.get(name) if name else None
        if ev is None:
            key = "unknown_events" if name else "unmapped_ids"
            self.stats.extra[key] = self.stats.extra.get(key, 0) + n
            return pl.DataFrame({**base, "event": ["unknown"] * n, "code": np.full(n, eid & 0xFFFFFFFF, np.uint32),
                                 "nargs": np.zeros(n, np.uint8)})  # fmt: skip
        kinds = np.array([1 if a.is_string else 0 for a in ev.args], dtype=np.int64)
        args, nnum, ok = _args(buf, offs, lens, kinds, len(kinds))
        if (~ok).any():
            first = int(offs[~ok][0])
            self.stats.add_problem(
                Problem(
                    first,
                    "bad-args",
                    f"{int((~ok).sum())} {name} record(s) shorter than the arguments of its definition",
                )
            )
        numeric = [a.name for a in ev.args if not a.is_string]
        cols = {**base, "event": [event_name(name)] * n, "code": np.full(n, ev.number, np.uint32),
                "nargs": np.where(ok, nnum, 0).astype(np.uint8)}  # fmt: skip
        cols.update({f"arg{j}": args[j] for j in range(N_ARGS)})
        roles = roles_for(name, tuple(a.name for a in ev.args))
        by_name = {a: args[j] for j, a in enumerate(numeric[:N_ARGS])}
        if roles.addr in by_name:
            cols["addr"] = by_name[roles.addr]
        if roles.size in by_name:
            cols["size"] = (by_name[roles.size] * np.uint64(roles.size_scale)).astype(np.uint32)
        if roles.queue in by_name:
            cols["queue"] = by_name[roles.queue].astype(np.uint16)
        if roles.dev in by_name:
            cols["dev"] = np.char.mod("%#x", by_name[roles.dev]).astype(object).tolist()
        return pl.DataFrame(cols)


def _le_at(buf: np.ndarray, at: np.ndarray, width: int) -> np.ndarray:
    """Little-endian unsigned integers of `width` bytes at each offset (one gather)."""
    if not len(at):
        return np.zeros(0, np.uint64)
    b = buf[at[:, None] + np.arange(width)].astype(np.uint64)
    shifts = np.arange(width, dtype=np.uint64) * np.uint64(8)
    return (b << shifts).sum(axis=1, dtype=np.uint64)


def encode(
    defs: TraceEvents, records: list[tuple[str, int, int, list]], *, version: int = 4
) -> bytes:
    """A simpletrace file of (event name, timestamp ns, pid, args) records, laid out as QEMU
    writes it: header, one mapping record per event used (version 4), then the records."""
    out = bytearray(np.array([HEADER_EVENT_ID, HEADER_MAGIC, version], "<u8").tobytes())
    ids: dict[str, int] = {}
    for name, *_ in records:
        if name not in ids:
            ids[name] = defs.events[name].number if version < 4 else len(ids)
            if version == 4:
                b = name.encode()
                out += (
                    np.array([TYPE_MAPPING, ids[name]], "<u8").tobytes()
                    + np.array([len(b)], "<u4").tobytes()
                    + b
                )
    for name, ts, pid, args in records:
        body = bytearray()
        for a, v in zip(defs.events[name].args, args, strict=True):
            if a.is_string:
                b = v.encode()
                body += np.array([len(b)], "<u4").tobytes() + b
            else:
                body += np.array([v % 2**64], "<u8").tobytes()
        out += np.array([TYPE_EVENT, ids[name], ts], "<u8").tobytes()
        out += np.array([24 + len(body), pid], "<u4").tobytes() + body
    return bytes(out)
