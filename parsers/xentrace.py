"""xentrace binary files (Xen 4.17): decoder to the canonical event table, and a writer.

The format (xen/include/public/trace.h, tools/xentrace/xentrace.c), in host byte order:

    file   := window*                       no header, no magic, no trailer
    window := u32 0x2001f003  i32 cpu  u32 size  byte[size]   (a TRC_TRACE_CPU_CHANGE record)
    record := u32 hdr  [u32 tsc_lo, u32 tsc_hi]  u32 extra[hdr.extra_u32]
    hdr    := event:28  extra_u32:3  cycles_included:1

xentrace writes one window per pCPU with unread ring data, in ascending pCPU order, each
poll ("round"). Records without a TSC take the last TSC of their pCPU, which may sit in that
pCPU's previous window. Per-pCPU streams are merged into one time order here, streaming:
after each complete round, every record older than the oldest last-TSC of that round's
windows is final (a pCPU read later in the round can only hold newer records).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import polars as pl

from xvtrace.parsers import xen_events as xe
from xvtrace.parsers import xentrace_scan as scan
from xvtrace.parsers.errors import DecodeStats, ParseError, Problem, XvtraceError
from xvtrace.parsers.schema import EVENT_NAMES, EVENT_SCHEMA, N_ARGS, conform

MAX_CPUS = 4096  # Xen's NR_CPUS upper bound; a CPU_CHANGE naming more is corrupt
DEFAULT_CHUNK_BYTES = 8 << 20
SOURCE = "xentrace"
CPU_CHANGE_HEADER = xe.CPU_CHANGE_HEADER

_PROBLEM_TEXT = {
    scan.P_RESYNC: ("resync", "expected a CPU_CHANGE window header; skipped garbage to the next one"),
    scan.P_NO_HEADER_FOUND: ("garbage", "no valid CPU_CHANGE window header up to the end of the file"),
    scan.P_BAD_RECORD: ("bad-record", "invalid record header (no Xen trace class) inside a window; rest of window skipped"),
    scan.P_OVERRUN: ("overrun", "record runs past the end of its window; rest of window skipped"),
    scan.P_TRUNCATED: ("truncated", "file ends inside a window"),
    scan.P_TSC_BACKWARD: ("tsc-backward", "TSC stepped backward on a pCPU"),
}  # fmt: skip


def header_problem(head: bytes) -> str | None:
    """Why these first bytes are not a xentrace window header (None when they are)."""
    if len(head) < 12:
        return f"too short for a xentrace window header ({len(head)} bytes)"
    hdr, cpu, size = (int(x) for x in np.frombuffer(head[:12], dtype="<u4"))
    if hdr != CPU_CHANGE_HEADER:
        return (
            f"not a xentrace file: it must start with a CPU_CHANGE record 0x{CPU_CHANGE_HEADER:08x}, "
            f"found 0x{hdr:08x}"
        )
    if cpu >= MAX_CPUS:
        return f"first CPU_CHANGE names cpu {np.int32(np.uint32(cpu))}, outside 0..{MAX_CPUS - 1}"
    if size % 4:
        return f"first CPU_CHANGE declares {size} bytes, not a whole number of 32-bit words"
    return None


def sniff(head: bytes) -> bool:
    """True when bytes look like the start of a xentrace file (a CPU_CHANGE window header)."""
    return header_problem(head) is None


# --- event naming (lookup tables built once from the catalogue) -------------------------

_NAME_INDEX = {name: i for i, name in enumerate(EVENT_NAMES)}
_CODES = np.array(sorted(xe.SPECS), dtype=np.uint32)
# The kernel's naming tables: id -> name index, and the ids whose payload starts with an
# address (IO port / MMIO gpa in w0, or 64-bit in w1:w0; all HVM handler ids 0x00082xxx).
_NAMES = (
    scan.name_table(
        _CODES,
        np.array([_NAME_INDEX[xe.SPECS[int(c)].name] for c in _CODES]),
        _NAME_INDEX[xe.UNKNOWN],
        _NAME_INDEX[xe.GUEST_MARKER],
    ),
    np.array([0x00082016, 0x00082216, 0x00082017, 0x00082217], dtype=np.uint32),
    np.array([0x00082117, 0x00082317, 0x00082021], dtype=np.uint32),
)
_EVENT_CATEGORIES = pl.Series("event", EVENT_NAMES, dtype=EVENT_SCHEMA["event"])
_SOURCE = pl.Series("source", [SOURCE], dtype=EVENT_SCHEMA["source"])


MADV_POPULATE_READ = 22  # (Linux 5.14) map a range's file pages in one call, not a fault each
# chunks a consumer may still read behind the decoder (the summary's stages run a chunk or
# two apart): their pages are let go this far behind, not refaulted from the page cache
RELEASE_LAG = 4


def _populate(mm: mmap.mmap, start: int, length: int) -> None:
    """Map the file's pages [start, start + length) ahead of the scan (best effort: an
    older kernel refuses, and each page then faults in as it is first read)."""
    end = min(start + length, len(mm))
    start -= start % mmap.PAGESIZE
    if end > start:
        with contextlib.suppress(OSError, ValueError):
            mm.madvise(MADV_POPULATE_READ, start, end - start)


# --- decoding --------------------------------------------------------------------------


class Records(NamedTuple):
    """A chunk of a xentrace file's records, as the decoder hands them over."""

    words: np.ndarray  # the file's 32-bit words
    index: scan.Index  # where each record is, its pCPU, TSC and running vCPU
    # the records handed over (of `index`), in time order; None from records(ordered=False):
    # every record of `index`, in file order
    order: np.ndarray | None
    origin: int  # the TSC that is time 0 (0 while no record has shown one)
    # (ordered=False) the records up to this TSC, of this chunk and those before, are all
    # here: those not yet taken can be put in time order; None: every record is here
    due: int | None = None


@dataclass
class _State:
    """Per-pCPU state carried across chunks (owned here, updated in place by the kernel)."""

    last_tsc: np.ndarray = field(default_factory=lambda: np.zeros(MAX_CPUS, np.uint64))
    tsc_seen: np.ndarray = field(default_factory=lambda: np.zeros(MAX_CPUS, np.bool_))
    cur_dom: np.ndarray = field(default_factory=lambda: np.full(MAX_CPUS, -1, np.int32))
    cur_vcpu: np.ndarray = field(default_factory=lambda: np.full(MAX_CPUS, -1, np.int32))
    prev_win_cpu: int = MAX_CPUS  # so that the first window starts a round
    round_min_tsc: int | None = None  # min last-TSC of the windows of the round in progress
    watermark: int = 0
    per_record: float = 1.0  # words a record takes, as the last chunk's did


class XentraceDecoder:
    """Decode one xentrace file into canonical event frames, in time order, chunk by chunk.

    >>> dec = XentraceDecoder("trace.bin", cpu_khz=2_400_000)
    >>> for frame in dec.frames(): ...
    >>> dec.stats.decoded, dec.stats.lost
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        cpu_khz: int,
        tsc_origin: int | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        src_file: str | None = None,
        progress: Callable[[int], None] | None = None,
    ):
        if cpu_khz is None or cpu_khz <= 0:
            raise XvtraceError("cpu_khz must be a positive number of kHz")
        self.path = Path(path)
        self.cpu_khz = int(cpu_khz)
        self.tsc_origin = tsc_origin
        self.chunk_bytes = max(4096, int(chunk_bytes))
        self.src_file = src_file if src_file is not None else self.path.name
        self.progress = progress
        self.stats = DecodeStats(str(self.path), "xentrace")
        self.windows = 0
        self.cpus: set[int] = set()
        self.first_tsc: int | None = None
        self.last_tsc: int | None = None
        self._tallied = (0, 0)  # (lost, wrap) of the last chunk indexed (index_records)

    # The public entry points ----------------------------------------------------------
    def frames(self, seen: Callable[[Records], None] | None = None) -> Iterator[pl.DataFrame]:
        """The file's rows a chunk at a time, in time order; `seen`: shown each chunk's
        records first (records())."""
        for chunk in self.records():
            if seen is not None:
                seen(chunk)
            yield self._to_frame(chunk)

    def records(self, ordered: bool = True) -> Iterator[Records]:
        """The file's records a chunk at a time, undecoded (Records), for a kernel that reads
        them where they lie (frames() decodes them into the table's columns); `stats` count
        what was handed over. The words stay readable as long as the consumer holds them
        (a shared read-only mapping: pages the decoder lets go once it is past them are
        read in again from the page cache).

        Not `ordered`: each chunk's records as they lie in the file, with the TSC up to
        which every record has been handed over (Records.due), for a consumer that puts in
        time order only the few rows it keeps (the summary's fold: sorting every record,
        and holding back those not yet due, was a fifth of its work)."""
        size = self.path.stat().st_size
        if size == 0:
            raise ParseError(str(self.path), 0, "empty file: no xentrace records")
        with self.path.open("rb") as fh:
            head = fh.read(12)
        problem = header_problem(head)
        if problem:
            raise ParseError(str(self.path), 0, problem)
        nwords = size // 4
        fh = self.path.open("rb")
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        words = np.frombuffer(mm, dtype="<u4", count=nwords)
        try:
            state = _State()
            pending: list[scan.Index] = []
            pos = 0
            chunk_words = self.chunk_bytes // 4
            last_emitted = None
            held = np.zeros(0, np.uint64)  # (not ordered) the TSCs of records not yet due
            while pos < nwords:
                _populate(mm, pos * 4, chunk_words * 4)
                win, probs, new_pos = scan.frame_windows(
                    words, pos, pos + chunk_words, nwords, MAX_CPUS
                )
                index = self._fill(words, win, probs, state)
                self.windows += len(win)
                if len(index.word):
                    if ordered:
                        pending.append(index)
                    self._advance_watermark(win, index, state)
                final = new_pos >= nwords
                if not ordered:
                    due = None if final else state.watermark
                    if len(index.word):
                        held, last_emitted = self._count_due(words, index, held, due, last_emitted)
                        yield Records(words, index, None, self.tsc_origin or 0, due)
                    elif final and len(held):  # (the last records' TSCs, counted as due)
                        held, last_emitted = self._count_due(words, index, held, due, last_emitted)
                    ready = None
                else:
                    ready, pending = self._split_ready(pending, None if final else state.watermark)
                if ready is not None and len(ready[1]):
                    # in TSC order: none is earlier than the last handed over unless the
                    # first is (each chunk's TSCs gathered to count them: 30-60 ms, 500 MB)
                    tsc, order = ready[0].tsc, ready[1]
                    if last_emitted is not None and tsc[order[0]] < last_emitted:
                        early = int(np.count_nonzero(tsc[order] < last_emitted))
                        self.stats.extra["out_of_order"] = (
                            self.stats.extra.get("out_of_order", 0) + early
                        )
                    last_emitted = tsc[order[-1]]
                if ready is not None:
                    self._count(words, *ready)
                    # (the origin as it stands now: a later chunk may be the first to set it)
                    yield Records(words, *ready, self.tsc_origin or 0)
                pos = new_pos
                # Let the kernel drop the file pages no pending record needs, so resident
                # memory stays bounded by the chunk size, not the file size.
                keep = min(
                    [max(0, pos - RELEASE_LAG * chunk_words)]
                    + [int(p.word[0]) for p in pending if len(p.word)]
                )
                done = (keep * 4) // mmap.PAGESIZE * mmap.PAGESIZE
                if done and hasattr(mmap, "MADV_DONTNEED"):
                    mm.madvise(mmap.MADV_DONTNEED, 0, done)
                if self.progress:
                    self.progress(min(pos, nwords) * 4)
            if size % 4:
                self.stats.add_problem(
                    Problem(nwords * 4, "truncated", f"{size % 4} trailing byte(s) after the last word",
                            size % 4)
                )  # fmt: skip
        finally:
            del words
            # (a consumer that holds the last chunk's words: unmapped as it lets them go)
            with contextlib.suppress(BufferError):
                mm.close()
            fh.close()

    @property
    def address_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """The ids whose payload starts with an address, in w0 and in w1:w0
        (scan.record_address's addr32, addr64)."""
        return _NAMES[1], _NAMES[2]

    def describe(self) -> dict:
        """This file's entry in a bundle manifest (after decoding)."""
        return {
            "file": self.src_file,
            "format": "xentrace",
            "bytes": self.path.stat().st_size,
            "windows": self.windows,
            "cpus": sorted(self.cpus),
            "first_tsc": self.first_tsc,
            "last_tsc": self.last_tsc,
            "clock": {"domain": "tsc", "cpu_khz": self.cpu_khz, "tsc_origin": self.tsc_origin},
            **{k: v for k, v in self.stats.as_dict().items() if k != "path"},
        }

    # Steps -----------------------------------------------------------------------------
    def _fill(self, words, win, resync: np.ndarray, state: _State) -> scan.Index:
        """The Index of the records in windows `win` (frame_windows'; `resync`: the problems
        it found between them), its problems noted in file order."""
        index, missing, probs, self._tallied = scan.index_records(
            words, win, state.last_tsc, state.tsc_seen, state.cur_dom, state.cur_vcpu,
            state.per_record,
        )  # fmt: skip
        if len(index[0]):  # (the next chunk's columns are sized by this one's records)
            state.per_record = float((win[:, 2] - win[:, 1]).sum() / len(index[0]))
        index = scan.Index(*index)
        probs = np.concatenate((resync, probs))
        self._note_problems(probs[np.argsort(probs[:, 1], kind="stable")])
        tsc = index.tsc
        if self.tsc_origin is None and not missing.all():
            self.tsc_origin = int(tsc[~missing].min())
        if missing.any():
            tsc[missing] = self.tsc_origin if self.tsc_origin is not None else 0
        self.cpus.update(np.unique(win[win[:, 4] > 0, 0]).tolist())  # the pCPUs with records
        return index

    def _advance_watermark(self, win: np.ndarray, index: scan.Index, state: _State) -> None:
        """Raise the watermark to the oldest window-end TSC of each completed round."""
        counts = win[:, 4]
        has = counts > 0
        if not has.any():
            return
        wcpu = win[has, 0]
        last_idx = np.cumsum(counts)[has] - 1
        wlast = index.tsc[last_idx]
        prev = np.concatenate(([state.prev_win_cpu], wcpu[:-1]))
        new_round = wcpu <= prev
        round_id = np.cumsum(new_round)  # 0 = continues the round in progress
        state.prev_win_cpu = int(wcpu[-1])
        mins = {}
        for rid in np.unique(round_id):  # one iteration per round, not per record
            mins[int(rid)] = int(wlast[round_id == rid].min())
        if 0 in mins and state.round_min_tsc is not None:
            mins[0] = min(mins[0], state.round_min_tsc)
        elif 0 not in mins and state.round_min_tsc is not None:
            mins[0] = state.round_min_tsc
        last_round = int(round_id[-1])
        complete = [v for k, v in mins.items() if k < last_round]
        if complete:
            state.watermark = max(state.watermark, max(complete))
        state.round_min_tsc = mins[last_round]

    @staticmethod
    def _split_ready(
        pending: list[scan.Index], watermark: int | None
    ) -> tuple[tuple[scan.Index, np.ndarray] | None, list[scan.Index]]:
        """The rows that can be final (everything, at EOF) with their time order, and the
        rest for later."""
        if not pending:
            return None, pending
        index = scan.Index.concat(pending)
        # Pending rows are in file order, so a stable sort on the TSC orders ties by file
        # offset: the table's (ts_ns, src_offset) order, independent of chunking. Windows are
        # already sorted runs, which timsort merges cheaply.
        order = np.argsort(index.tsc, kind="stable")
        if watermark is None:
            return (index, order), []
        cut = int(np.count_nonzero(index.tsc <= np.uint64(watermark)))  # (the first `cut` of order)
        if cut == 0:
            return None, [index]
        if cut == len(order):
            return (index, order), []
        rest = index.take(np.sort(order[cut:]))  # file order for the next merge
        return (index, order[:cut]), [rest]

    def _note_problems(self, probs: np.ndarray) -> None:
        for kind, word_off, skipped_words, aux in probs:
            name, text = _PROBLEM_TEXT[int(kind)]
            if kind == scan.P_TSC_BACKWARD:
                self.stats.extra["tsc_backward"] = self.stats.extra.get("tsc_backward", 0) + int(
                    aux
                )
                continue
            if kind == scan.P_TRUNCATED and aux:
                text = f"{text}: {aux * 4} declared bytes are missing"
            self.stats.add_problem(Problem(int(word_off) * 4, name, text, int(skipped_words) * 4))

    def _count(self, words: np.ndarray, index: scan.Index, order: np.ndarray) -> None:
        """What `stats` and the file's entry count of records handed over, in time order."""
        if not len(order):
            return
        first, last = int(index.tsc[order[0]]), int(index.tsc[order[-1]])
        self.first_tsc = first if self.first_tsc is None else min(self.first_tsc, first)
        self.last_tsc = last if self.last_tsc is None else max(self.last_tsc, last)
        lost, wrap = scan.tally(words, index.word, order, xe.TRC_LOST_RECORDS,
                                xe.TRC_TRACE_WRAP_BUFFER)  # fmt: skip
        self.stats.lost += int(lost)
        # Wrap-buffer filler is ring padding (garbage payload): kept as a row so every
        # record of the file has one, but analyses ignore it.
        if wrap:
            self.stats.extra["wrap_buffer"] = self.stats.extra.get("wrap_buffer", 0) + int(wrap)
        self.stats.decoded += len(order)

    def _count_due(self, words, index: scan.Index, held: np.ndarray, due: int | None,
                   last_emitted: int | None) -> tuple[np.ndarray, int | None]:  # fmt: skip
        """records(ordered=False)'s count of a chunk: `stats` as records() counts the same
        records handed over in time order (records out of order among them: the records
        now due, `held` from before and this chunk's, earlier than the last one due
        before); the TSCs still held, and the last one due."""
        n = len(index.word)
        lost, wrap = self._tallied if n else (0, 0)  # (index_records', of the chunk's records)
        early, any_due, top, held, first, last = scan.count_due(
            held, index.tsc, np.uint64(due or 0), due is None, np.uint64(last_emitted or 0),
            last_emitted is not None,
        )  # fmt: skip
        if n:
            first, last = int(first), int(last)
            self.first_tsc = first if self.first_tsc is None else min(self.first_tsc, first)
            self.last_tsc = last if self.last_tsc is None else max(self.last_tsc, last)
        self.stats.lost += int(lost)
        if wrap:  # (ring padding, as records() counts it)
            self.stats.extra["wrap_buffer"] = self.stats.extra.get("wrap_buffer", 0) + int(wrap)
        self.stats.decoded += n
        if early:
            self.stats.extra["out_of_order"] = self.stats.extra.get("out_of_order", 0) + int(early)
        return held, (int(top) if any_due else last_emitted)

    def _to_frame(self, chunk: Records) -> pl.DataFrame:
        words, index, order, origin, _ = chunk
        cols = dict(
            zip(
                scan.EMITTED,
                scan.emit_records(words, order, index, np.uint64(origin), self.cpu_khz, _NAMES),
                strict=True,
            )
        )
        args = cols.pop("args")
        n = len(cols["code"])
        cols["event"] = _EVENT_CATEGORIES.gather(cols["event"])
        cols["source"] = _SOURCE.new_from_index(0, n)
        cols.update({f"arg{i}": args[i] for i in range(N_ARGS)})
        # Unknown vCPU and absent address are nulls in the table (-1 / flag from the kernel).
        df = pl.DataFrame(cols).with_columns(
            pl.when(pl.col("dom") >= 0).then(pl.col("dom")).alias("dom"),
            pl.when(pl.col("vcpu") >= 0).then(pl.col("vcpu")).alias("vcpu"),
            pl.when(pl.col("has_addr")).then(pl.col("addr")).alias("addr"),
            pl.lit(self.src_file, dtype=pl.String).alias("src_file"),
        )
        return conform(df)


def decode_file(path: str | os.PathLike, *, cpu_khz: int, **kw) -> tuple[pl.DataFrame, DecodeStats]:
    """Decode a whole file at once (small files, tests, notebooks)."""
    dec = XentraceDecoder(path, cpu_khz=cpu_khz, **kw)
    frames = list(dec.frames())
    df = pl.concat(frames) if frames else conform(pl.DataFrame(schema={"ts_ns": pl.Int64}))
    return df, dec.stats


# --- writing ---------------------------------------------------------------------------

DEFAULT_DATA_SIZE = 32 * 4096 - 8  # xentrace's default -S 32 pages, minus struct t_buf
WRITE_SLICE = 1 << 20


def encode_windows(
    cpu: np.ndarray,
    tsc: np.ndarray,
    has_tsc: np.ndarray,
    code: np.ndarray,
    args: np.ndarray,
    nargs: np.ndarray,
    *,
    round_cycles: int,
    window_bytes: int = DEFAULT_DATA_SIZE,
    order: np.ndarray | None = None,
) -> np.ndarray:
    """Lay records out as xentrace writes them and return the file's u32 words.

    Records are given per pCPU in order (any interleaving of pCPUs), or are the rows
    `order` lists in that order; `tsc` is each record's time (for records without their
    own TSC, their pCPU's last one). Each `round_cycles` of
    TSC is one xentrace poll: it writes one window per pCPU in ascending pCPU order, split
    into several rounds where a pCPU's data exceeds `window_bytes` (the ring's data size).
    """
    n = len(code)
    order = np.arange(n) if order is None else np.asarray(order, dtype=np.int64)
    if len(order) == 0:
        return np.zeros(0, dtype=np.uint32)
    if order.min() < 0 or order.max() >= n:
        raise ValueError("order lists rows that are not there")
    cpu = np.asarray(cpu, dtype=np.int64)
    tsc = np.asarray(tsc, dtype=np.uint64)
    has = np.asarray(has_tsc, dtype=bool)
    code = np.asarray(code, dtype=np.uint32)
    nargs = np.asarray(nargs, dtype=np.int64)
    args = np.asarray(args, dtype=np.uint32).reshape(n, -1)
    if np.any(code > 0x0FFFFFFF) or np.any(nargs > 7) or np.any(nargs < 0):
        raise ValueError("event ids must fit 28 bits and records carry at most 7 extra words")
    if np.any(code == xe.TRC_TRACE_CPU_CHANGE) or np.any(cpu < 0) or np.any(cpu >= MAX_CPUS):
        raise ValueError("records cannot be CPU_CHANGE and cpu must be in [0, 4096)")
    if args.shape[1] < int(nargs.max()):
        raise ValueError("args has fewer columns than nargs asks for")
    return scan.layout_windows(
        cpu, tsc, has, code, nargs, args, order, np.uint64(max(1, round_cycles)),
        int(window_bytes), int(cpu.max()) + 1,
    )  # fmt: skip


def write_frame(
    dest: str | os.PathLike | BinaryIO,
    df: pl.DataFrame,
    *,
    round_cycles: int,
    window_bytes: int = DEFAULT_DATA_SIZE,
) -> int:
    """Write canonical xentrace rows (cpu, ts_raw, has_ts, code, nargs, arg0..6) as a file.

    Returns the number of bytes written. Appends when `dest` is an open binary file, so a
    large trace can be written in chunks of whole rounds.
    """
    args = np.column_stack(
        [df[f"arg{i}"].fill_null(0).to_numpy().astype(np.uint32) for i in range(N_ARGS)]
    )
    columns = (df[k].to_numpy() for k in ("cpu", "ts_raw", "has_ts", "code"))
    return write_records(dest, *columns, args, df["nargs"].to_numpy(),
                         round_cycles=round_cycles, window_bytes=window_bytes)  # fmt: skip


def write_records(
    dest: str | os.PathLike | BinaryIO,
    *columns: np.ndarray,
    round_cycles: int,
    window_bytes: int = DEFAULT_DATA_SIZE,
    order: np.ndarray | None = None,
) -> int:
    """write_frame for records already held as arrays: encode_windows' cpu, tsc, has_tsc,
    code, args and nargs (and its `order`)."""
    out = encode_windows(*columns, round_cycles=round_cycles, window_bytes=window_bytes,
                         order=order)  # fmt: skip
    out = out.astype("<u4", copy=False)
    if hasattr(dest, "write"):
        # a MiB per call: one 18 MB write() into ext4's page cache measured 5x slower than
        # the same bytes a MiB at a time
        view = memoryview(out).cast("B")
        for at in range(0, len(view), WRITE_SLICE):
            dest.write(view[at : at + WRITE_SLICE])
    else:
        Path(dest).write_bytes(out.tobytes())
    return out.nbytes
