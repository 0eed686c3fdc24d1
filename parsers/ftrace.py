"""Linux ftrace text (tracefs `trace_pipe` / `trace`) from dom0: the block layer's view of
the backend's I/O, to the canonical event table.

A backend that is not QEMU (blkback, a vhost-user process, an Argo backend) logs nothing
per request, but its I/O goes through dom0's block layer, whose tracepoints every Linux
kernel has (include/trace/events/block.h, Linux 6.1):

    block_rq_insert:   "%d,%d %s %u (%s) %llu + %u [%s]"   queued for the device (same fields as issue)
    block_rq_issue:    "%d,%d %s %u (%s) %llu + %u [%s]"   dev, rwbs, bytes, cmd, sector, nr_sector, comm
    block_rq_complete: "%d,%d %s (%s) %llu + %u [%d]"      dev, rwbs, cmd, sector, nr_sector, error

and, for a PV guest's kicks as dom0 takes them, its interrupt handlers' entries
(include/trace/events/irq.h), which `capture` filters to blkback's event channel:

    irq_handler_entry: "irq=%d name=%s"

and the backend's answer, a dynamic probe `capture` places on the function a PV backend
sends the guest its event with (drivers/xen/events/events_base.c):

    notify_remote_via_irq: "(notify_remote_via_irq+0x0/0x40) irq=%d"   (kprobe_events)

Each line has ftrace's context prefix (kernel/trace/trace_output.c):

    <comm>-<pid> [(<tgid>)] [<cpu>] [<irq flags>] <timestamp>: <event>: <fields>

The timestamp is seconds.microseconds for the nanosecond clocks (local, global, mono) and a
raw count for the counter clocks; `xvtrace capture` selects `x86-tsc`, which in a PV dom0
reads the same TSC xentrace stamps, so with the host's cpu_khz these events land on the
hypervisor's clock exactly (ts_ns as for xentrace). With a nanosecond clock the events keep
dom0's own clock (the manifest says which). The `[cpu]` field is dom0's vCPU.

A compiled scan (parsers.ftrace_scan) reads the lines it can read exactly as the regexes
below do; the rest go through the regexes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import polars as pl

from xvtrace.parsers import ftrace_scan, line_render
from xvtrace.parsers.errors import DecodeStats, ParseError, Problem
from xvtrace.parsers.schema import conform
from xvtrace.parsers.textlines import iter_blocks, line_bounds, lines_frame

SOURCE = "ftrace"
DEFAULT_CHUNK_BYTES = 8 << 20
EVENTS = {
    "block_rq_issue": ("block.rq_issue", 0),
    "block_rq_complete": ("block.rq_complete", 1),
    "block_rq_insert": ("block.rq_insert", 2),
    "irq_handler_entry": ("irq.handler_entry", 3),
    "notify_remote_via_irq": ("irq.notify_remote", 4),
}

_PREFIX = (
    r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+(?:\(\s*(?:\d+|-+)\)\s+)?\[(?P<cpu>\d+)\]\s+"
    r"(?:[^\s\[\]:]{4,5}\s+)?(?P<ts>\d+(?:\.\d+)?):\s+(?P<name>\w+):\s?(?P<rest>.*)$"
)
_ISSUE = (
    r"^(?P<major>\d+),(?P<minor>\d+) (?P<rwbs>\S+) (?P<bytes>\d+) \((?P<cmd>[^)]*)\) "
    r"(?P<sector>\d+) \+ (?P<nr>\d+) \[(?P<who>.*)\]$"
)
_FIELDS = {
    "block_rq_insert": _ISSUE,
    "block_rq_issue": _ISSUE,
    "block_rq_complete": r"^(?P<major>\d+),(?P<minor>\d+) (?P<rwbs>\S+) \((?P<cmd>[^)]*)\) "
    r"(?P<sector>\d+) \+ (?P<nr>\d+) \[(?P<err>-?\d+)\]$",
    "irq_handler_entry": r"^irq=(?P<irq>\d+) name=(?P<handler>\S+)$",
    "notify_remote_via_irq": r"^\((?P<handler>[^)\s]*)\) irq=(?P<irq>\d+)$",
}


def sniff(head: bytes) -> bool:
    """True when most of the first lines (comments aside) are ftrace event lines."""
    text = head.decode("utf-8", errors="replace")
    lines = [x for x in text.split("\n")[:-1] if x.strip() and not x.startswith("#")][:50]
    if not lines:
        return text.startswith("# tracer:")
    hits = pl.Series(lines).str.contains(_PREFIX)
    return bool(hits.sum() >= max(1, 0.8 * len(lines)))


class FtraceDecoder:
    """Decode one ftrace text file's block events into canonical frames, in file order.

    cpu_khz and tsc_origin convert a counter clock (x86-tsc) to ns as xentrace's are; the
    origin may be a callable, read when the first counter stamp is converted (the bundle's
    xentrace origin is known once its decoder has started).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        cpu_khz: int | None = None,
        tsc_origin: int | Callable[[], int | None] | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        src_file: str | None = None,
        compiled: bool = True,
    ):
        self.path = Path(path)
        self.compiled = compiled  # False: every line through the regexes (tests compare)
        self.cpu_khz = cpu_khz
        self._origin = tsc_origin
        self.chunk_bytes = max(4096, int(chunk_bytes))
        self.src_file = src_file if src_file is not None else self.path.name
        self.stats = DecodeStats(str(self.path), SOURCE)
        self.clock: str | None = None  # "counter" or "ns"
        self.progress = None

    @property
    def tsc_origin(self) -> int | None:
        return self._origin() if callable(self._origin) else self._origin

    def frames(self) -> Iterator[pl.DataFrame]:
        if self.path.stat().st_size == 0:
            raise ParseError(str(self.path), 0, "empty file: no ftrace lines")
        for base, body in iter_blocks(self.path, self.chunk_bytes):
            frame = self._decode_block(base, body)
            if frame is not None and len(frame):
                yield frame
            if self.progress:
                self.progress(base + len(body))

    def describe(self) -> dict:
        domain = {
            "counter": "TSC (trace_clock x86-tsc): the hypervisor's clock",
            "ns": "dom0 kernel clock (trace_clock local/global/mono): not aligned to the hypervisor's",
            None: "none",
        }[self.clock]
        return {
            "file": self.src_file,
            "format": "ftrace",
            "bytes": self.path.stat().st_size,
            "clock": {"domain": domain, "cpu_khz": self.cpu_khz, "tsc_origin": self.tsc_origin},
            **{k: v for k, v in self.stats.as_dict().items() if k != "path"},
        }

    def _decode_block(self, base: int, body: bytes) -> pl.DataFrame | None:
        """A chunk's rows: the lines the scan reads, and the others through the regexes."""
        starts, ends = line_bounds(body)
        if not (self.compiled and self.cpu_khz) or self.tsc_origin is None:
            # the regexes read the chunk and set the clock facts
            return self._decode(lines_frame(body, base, starts, ends))
        raw = np.frombuffer(body, np.uint8)
        scanned = ftrace_scan.scan(raw, starts, ends, bool(raw.max(initial=0) < 128))
        status = scanned[0]
        fast = status == ftrace_scan.FAST
        rows = dict(zip(_SCANNED, (a[fast] for a in scanned[1:]), strict=True))
        rows["src_offset"] = starts[fast].astype(np.uint64) + np.uint64(base)
        rows["other"] = int(np.count_nonzero(status == ftrace_scan.OTHER))
        slow = status == ftrace_scan.SLOW
        return self._decode(lines_frame(body, base, starts[slow], ends[slow]), rows)

    def _decode(self, lines: pl.DataFrame, fast: dict | None = None) -> pl.DataFrame | None:
        lines = lines.filter(
            (pl.col("line").str.len_bytes() > 0) & ~pl.col("line").str.starts_with("#")
        )
        # ftrace's own report of a full buffer: "CPU:1 [LOST 42 EVENTS]"
        lost = lines["line"].str.extract(r"^CPU:\d+ \[LOST (\d+) EVENTS\]$", 1)
        if lost.null_count() < len(lost):
            self.stats.lost += int(lost.cast(pl.Int64).sum())
            lines = lines.filter(lost.is_null())
        p = lines.with_columns(pl.col("line").str.extract_groups(_PREFIX).alias("_p")).unnest("_p")
        bad = p.filter(pl.col("name").is_null())
        if len(bad):
            self.stats.skipped += len(bad)
            self.stats.add_problem(Problem(
                int(bad["src_offset"][0]), "garbage",
                f"{len(bad)} line(s) that are not ftrace event lines (first: {bad['line'][0][:60]!r})",
                int(bad["line"].str.len_bytes().sum() + len(bad)),
            ))  # fmt: skip
        p = p.filter(pl.col("name").is_not_null())
        other = len(p.filter(~pl.col("name").is_in(list(EVENTS)))) + (fast or {}).get("other", 0)
        if other:  # events xvtrace does not use: counted, not kept
            self.stats.skipped += other
            self.stats.extra["other_events"] = self.stats.extra.get("other_events", 0) + other
        slow = {r["name"][0]: r for r in p.filter(pl.col("name").is_in(list(EVENTS)))
                .partition_by("name", maintain_order=True)}  # fmt: skip
        firsts = {name: int(rows["src_offset"][0]) for name, rows in slow.items()}
        scanned = {}
        if fast and len(fast["src_offset"]):
            names = {code: name for name, (_, code) in EVENTS.items()}
            codes, first = np.unique(fast["code"], return_index=True)
            scanned = {names[int(c)]: int(fast["src_offset"][i]) for c, i in zip(codes, first, strict=True)}  # fmt: skip
            for name, offset in scanned.items():
                firsts[name] = min(offset, firsts.get(name, offset))
        # event by event in the order of their first line, scanned or not, as the regexes
        # alone did (the order of the problems they report, and of the errors they raise);
        # the scanned rows where their first event comes (their clock is checked there)
        frames = []
        for name in sorted(firsts, key=firsts.get):
            if name in scanned:
                frames.append(self._scanned_rows(fast))
                scanned = {}  # all of them, once
            if name in slow:
                frames.append(self._rows(name, slow[name]))
        frames = [f for f in frames if f is not None]
        if not frames:
            return None
        frame = pl.concat(frames)
        if len(frames) > 1:  # each is in line order already
            frame = frame.sort("src_offset")
        self.stats.decoded += len(frame)
        return conform(frame)

    def _scanned_rows(self, fast: dict) -> pl.DataFrame:
        """_rows' columns for the lines the scan read (all stamped by the counter clock)."""
        names = pl.Series([name for name, _ in sorted(EVENTS.values(), key=lambda v: v[1])])
        pairs = pl.DataFrame({"major": fast["major"], "minor": fast["minor"]})
        nr = pl.Series(fast["nr"])
        return pl.DataFrame({
            **dict(zip(("ts_ns", "ts_raw"), self._counter_times(pl.Series(fast["tsc"])), strict=True)),
            "has_ts": pl.Series(np.ones(len(nr), bool)),
            "source": pl.Series([SOURCE]).new_from_index(0, len(nr)),
            "thread": pl.Series(fast["pid"].astype(np.uint32)),
            "dom": pl.Series(np.zeros(len(nr), np.int32)),
            "vcpu": pl.Series(fast["cpu"].astype(np.int32)),
            "event": names.gather(fast["code"]),
            "code": pl.Series(fast["code"].astype(np.uint32)),
            "nargs": pl.Series(np.full(len(nr), 3, np.uint8)),
            "arg0": pl.Series(fast["write"].astype(np.uint64)),
            "arg1": nr,
            "arg2": pl.Series(fast["err"].view(np.uint64)),
            "addr": pl.Series(fast["sector"]),
            "dev": pairs.select(pl.format("{},{}", "major", "minor")).to_series(),
            "size": (nr * 512).cast(pl.UInt32, strict=False),
            "src_file": pl.Series([self.src_file]).new_from_index(0, len(nr)),
            "src_offset": pl.Series(fast["src_offset"]),
        })  # fmt: skip

    def _rows(self, name: str, rows: pl.DataFrame) -> pl.DataFrame | None:
        if name in ("irq_handler_entry", "notify_remote_via_irq"):
            return self._irq_rows(name, rows)
        f = _fields_of(rows, name)
        f = self._keep(f, f["major"].is_not_null(), f"{name} line(s) do not match its format")
        # numbers the regex took that no column can hold (a damaged line's 24-digit stamp or
        # CPU): skipped like any bad line, not a failed cast (exit 3) for the whole file
        f = self._keep(f, f.select(_fits(f.columns)).to_series(),
                       f"{name} line(s) with a number out of range")  # fmt: skip
        if not len(f):
            return None
        nr = pl.col("nr").cast(pl.UInt64)
        write = pl.col("rwbs").str.contains("W").cast(pl.UInt64)
        err = (
            pl.col("err").cast(pl.Int64).cast(pl.UInt64, wrap_numerical=True)
            if "err" in f.columns
            else pl.lit(0, pl.UInt64)
        )
        return f.select(
            *self._context(f, name, 3),
            write.alias("arg0"),  # 1: a write (rwbs has W)
            nr.alias("arg1"),  # sectors
            err.alias("arg2"),  # completion: the error (0 = success)
            pl.col("sector").cast(pl.UInt64).alias("addr"),
            pl.format("{},{}", "major", "minor").alias("dev"),
            (nr * 512).cast(pl.UInt32, strict=False).alias("size"),
            pl.lit(self.src_file).alias("src_file"),
            pl.col("src_offset"),
        )  # fmt: skip

    def _keep(self, f: pl.DataFrame, ok: pl.Series, what: str) -> pl.DataFrame:
        """The lines of `f` that are `ok`; the others counted as skipped, with a problem at
        the first one's offset ("N <what>")."""
        if ok.all():
            return f
        bad = f.filter(~ok)
        self.stats.skipped += len(bad)
        self.stats.add_problem(Problem(int(bad["src_offset"][0]), "bad-args", f"{len(bad)} {what}"))
        return f.filter(ok)

    def _context(self, f: pl.DataFrame, name: str, nargs: int) -> list:
        """The columns every row of event `name` has from its line's prefix."""
        event, code = EVENTS[name]
        return [
            *self._times(f["ts"]),
            pl.lit(True).alias("has_ts"),
            pl.lit(SOURCE).alias("source"),
            pl.col("pid").cast(pl.UInt32).alias("thread"),
            pl.lit(0, pl.Int32).alias("dom"),
            pl.col("cpu").cast(pl.Int32).alias("vcpu"),
            pl.lit(event).alias("event"),
            pl.lit(code, pl.UInt32).alias("code"),
            pl.lit(nargs, pl.UInt8).alias("nargs"),
        ]

    def _irq_rows(self, name: str, rows: pl.DataFrame) -> pl.DataFrame | None:
        """irq_handler_entry and notify_remote_via_irq lines: arg0 the IRQ number, dev the
        handler's name (the probe's place for the notification)."""
        f = _fields_of(rows, name)
        fits = (
            f["irq"].cast(pl.UInt32, strict=False).is_not_null()
            & f.select(_fits_prefix()).to_series()
        )
        f = self._keep(f, fits, f"{name} line(s) do not match its format")
        if not len(f):
            return None
        return f.select(
            *self._context(f, name, 1),
            pl.col("irq").cast(pl.UInt64).alias("arg0"),
            pl.lit(None, pl.UInt64).alias("arg1"),  # the block rows' columns, in their order
            pl.lit(None, pl.UInt64).alias("arg2"),
            pl.lit(None, pl.UInt64).alias("addr"),
            pl.col("handler").alias("dev"),
            pl.lit(None, pl.UInt32).alias("size"),
            pl.lit(self.src_file).alias("src_file"),
            pl.col("src_offset"),
        )

    def _times(self, ts: pl.Series) -> list[pl.Series]:
        counter = ~ts.str.contains(".", literal=True)
        clock = "counter" if bool(counter.all()) else "ns" if not bool(counter.any()) else "mixed"
        if clock == "mixed" or (self.clock and clock != self.clock):
            raise self._two_clocks()
        self.clock = clock
        if clock == "ns":
            sec = ts.str.split_exact(".", 1).struct.unnest()
            ns = sec["field_0"].cast(pl.Int64) * 1_000_000_000 + sec["field_1"].str.pad_end(
                9, "0"
            ).cast(pl.Int64)
            return [ns.alias("ts_ns"), ns.cast(pl.UInt64).alias("ts_raw")]
        if not self.cpu_khz:
            raise ParseError(
                str(self.path),
                0,
                "counter timestamps (trace_clock x86-tsc) need cpu_khz: give --cpu-khz",
            )
        raw = ts.cast(pl.UInt64)
        if self.tsc_origin is None:
            self._origin = int(raw.min())
        return self._counter_times(raw)

    def _two_clocks(self) -> ParseError:
        return ParseError(
            str(self.path), 0, "ftrace lines with two kinds of timestamp (one trace_clock per file)"
        )

    def _counter_times(self, raw: pl.Series) -> list[pl.Series]:
        """ts_ns and ts_raw of TSC stamps (the clock checks are the caller's)."""
        if self.clock == "ns":
            raise self._two_clocks()
        self.clock = "counter"
        dt = raw.cast(pl.Int64) - self.tsc_origin
        khz = self.cpu_khz
        ns = (dt // khz) * 1_000_000 + ((dt % khz) * 1_000_000) // khz  # exact, as xentrace
        return [ns.alias("ts_ns"), raw.alias("ts_raw")]


_SCANNED = ("code", "pid", "cpu", "tsc", "major", "minor", "write", "sector", "nr", "err")


def render(frame: pl.DataFrame) -> pl.Series:
    """trace_pipe lines (x86-tsc clock) for rows of: tsc, comm, pid, cpu, event
    (block_rq_insert / block_rq_issue / block_rq_complete), major, minor, write, sector,
    nr_sector; a line per row, in row order."""
    keys = ["event", "comm", "pid", "cpu", "major", "minor"]
    parts = []
    at = "__render_row"
    for key, rows in frame.with_row_index(at).group_by(keys, maintain_order=True):
        parts.append(rows.select(at, render_task(*key, rows).alias("line")))
    return pl.concat(parts).sort(at)["line"] if parts else pl.Series("line", [], pl.String)


TSC_WIDTH = 12  # the x86-tsc timestamp, right-aligned as the emulator writes it


def block_pieces(
    event: str, comm: str, pid: int, cpu: int, major: int, minor: int, write: bool
) -> tuple[list[str], list[str]]:
    """A block event's trace_pipe line (x86-tsc clock) as literal texts and the fields
    between them: texts[0] field[0] texts[1] ... field[-1] texts[-1]. The fields, decimal:
    tsc (right-aligned in TSC_WIDTH), bytes (insert and issue only), sector, nr_sector."""
    head = f"{comm:>16}-{pid:<7} [{cpu:03d}] ..... "
    dev = f": {event}: {major},{minor} {'W' if write else 'R'}"
    if event == "block_rq_complete":
        return [head, dev + " () ", " + ", " [0]"], ["tsc", "sector", "nr_sector"]
    return [head, dev + " ", " () ", " + ", f" [{comm}]"], ["tsc", "bytes", "sector", "nr_sector"]


def render_task(
    event: str, comm: str, pid: int, cpu: int, major: int, minor: int, rows: pl.DataFrame
) -> pl.Series:
    """The lines of one block event from one task on one CPU and device, for rows of: tsc,
    write, sector, nr_sector (everything else is text they share)."""
    fields = {
        "tsc": pl.col("tsc").cast(pl.String).str.pad_start(TSC_WIDTH),
        "bytes": (pl.col("nr_sector") * 512).cast(pl.String),
        "sector": pl.col("sector").cast(pl.String),
        "nr_sector": pl.col("nr_sector").cast(pl.String),
    }

    def line(write: bool) -> pl.Expr:
        texts, names = block_pieces(event, comm, pid, cpu, major, minor, write)
        pieces = [pl.lit(texts[0])]
        for name, text in zip(names, texts[1:], strict=True):
            pieces += [fields[name], pl.lit(text)]
        return pl.concat_str(pieces)

    either = pl.when(pl.col("write")).then(line(True)).otherwise(line(False))
    return rows.select(either.alias("line"))["line"]


def render_block(
    event: str, comm: str, pid: int, cpu: int, major: int, minor: int, *, tsc: np.ndarray,
    write: np.ndarray, sector: np.ndarray, nr_sector: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """render_task's lines, compiled, as one byte buffer and the offsets of its lines (line
    i is data[offsets[i]:offsets[i + 1]], no newline): the emulator writes a trace of
    300k lines per 100k requests from these."""
    n = len(tsc)
    if not len(write) == len(sector) == len(nr_sector) == n:
        raise ValueError("tsc, write, sector and nr_sector must have a value per line")
    values = {"tsc": tsc, "bytes": nr_sector * np.uint64(512), "sector": sector,
              "nr_sector": nr_sector}  # fmt: skip
    variants = [block_pieces(event, comm, pid, cpu, major, minor, w) for w in (False, True)]
    names = variants[0][1]
    matrix = np.empty((n, len(names)), np.uint64)
    for j, name in enumerate(names):
        matrix[:, j] = values[name]
    fields = [line_render.Field(width=TSC_WIDTH if name == "tsc" else 0) for name in names]
    return line_render.render([v[0] for v in variants], fields, matrix, np.asarray(write) != 0)


MAX_SECONDS = 9_000_000_000  # a "sec.frac" stamp whose nanoseconds still fit an Int64


def _fields_of(rows: pl.DataFrame, name: str) -> pl.DataFrame:
    """`rows` with the fields of event `name` its regex takes from each line's rest (nulls
    where the line does not match)."""
    return rows.with_columns(pl.col("rest").str.extract_groups(_FIELDS[name]).alias("_f")).unnest(
        "_f"
    )


def _fits_prefix() -> pl.Expr:
    """Per line: the stamp, CPU and pid the prefix regex took fit their columns."""
    ts = pl.col("ts")
    seconds = ts.str.split(".").list.first().cast(pl.Int64, strict=False)
    stamp = (
        pl.when(ts.str.contains(".", literal=True))
        .then(seconds.is_not_null() & (seconds < MAX_SECONDS))
        .otherwise(ts.cast(pl.Int64, strict=False).is_not_null())
    )
    return stamp & _fits_as("cpu", pl.Int32) & _fits_as("pid", pl.UInt32)


def _fits_as(col: str, dtype) -> pl.Expr:
    return pl.col(col).cast(dtype, strict=False).is_not_null()


def _fits(columns: list[str]) -> pl.Expr:
    """Per line: every number the regex took fits the column it goes to."""
    checks = [_fits_prefix(), _fits_as("sector", pl.UInt64), _fits_as("nr", pl.UInt64)]
    if "err" in columns:
        checks.append(_fits_as("err", pl.Int64))
    return pl.all_horizontal(checks).alias("fits")
