"""QEMU trace, log backend: text lines to the canonical event table.

Three line forms (QEMU util/log.c and scripts/tracetool/backend/log.py):

    10913@1795634138.004543:virtqueue_pop vq 0x7f.. elem 0x56.. in_num 2 out_num 1
    ^thread id @ host wall clock, epoch s.us  (QEMU 7.x with -msg timestamp=on)
    2025-01-01T10:00:00.123456Z virtio_notify vdev 0x.. vq 0x..   (newer QEMU, timestamp=on)
    virtio_notify vdev 0x.. vq 0x..                               (no timestamps)

The text after the name is the event's printf format applied to its arguments, so each
event is read back with a regex made from its trace-events definition (not a key/value
guess: `virtio_pci_notify_write` prints `0x4 = 0x1 (2)`). A compiled scan
(parsers.qemu_scan) reads the lines it can read exactly as those regexes do; the rest go
through them, vectorized per chunk with polars: one regex pass for the prefix, then one
per distinct event name.

`virtqueue_*` events name only the VirtQueue pointer; the device and queue index come from
`virtio_queue_notify vdev n vq` lines anywhere in the file (a first, cheap pass).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

from xvtrace.parsers import qemu_scan
from xvtrace.parsers.errors import DecodeStats, ParseError, Problem
from xvtrace.parsers.qemu_columns import ScanPlan
from xvtrace.parsers.qemu_events import QUEUE_MAP_EVENT, Roles, event_name, roles_for
from xvtrace.parsers.schema import EVENT_SCHEMA, N_ARGS, conform
from xvtrace.parsers.textlines import iter_blocks, line_bounds, lines_frame
from xvtrace.parsers.trace_events import EventDef, TraceEvents

SOURCE = "qemu"
DEFAULT_CHUNK_BYTES = 8 << 20

_PREFIX = (
    r"^(?:(?P<tid>\d+)@(?P<sec>\d+)\.(?P<usec>\d{6}):"
    r"|(?P<iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) )?"
    r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?: (?P<rest>.*))?$"
)


def sniff(head: bytes, defs: TraceEvents | None = None) -> bool:
    """True when most of the first complete lines are QEMU log-backend trace lines."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head.decode("utf-8", errors="replace")
    lines = [x for x in text.split("\n")[:-1] if x.strip()][:50]
    if not lines:
        return False
    defs = defs or TraceEvents.default()
    frame = pl.DataFrame({"line": lines}).select(pl.col("line").str.extract_groups(_PREFIX))
    parts = frame.unnest("line")
    stamped = parts["tid"].is_not_null() | parts["iso"].is_not_null()
    known = parts["name"].is_in(list(defs.events))
    good = (stamped & parts["name"].is_not_null()) | known
    return bool(good.sum() >= max(1, 0.8 * len(lines)))


class QemuLogDecoder:
    """Decode one QEMU log-backend trace file into canonical event frames, in file order."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        defs: TraceEvents | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        src_file: str | None = None,
        compiled: bool = True,
    ):
        """compiled=False reads every line with the regexes (what the scan is tested
        against)."""
        self.path = Path(path)
        self.defs = defs or TraceEvents.default()
        self.chunk_bytes = max(4096, int(chunk_bytes))
        self.src_file = src_file if src_file is not None else self.path.name
        self.stats = DecodeStats(str(self.path), SOURCE)
        self.plan = ScanPlan(self.defs if compiled else None)
        self.threads: set[int] = set()
        self.first_ts_ns: int | None = None
        self.last_ts_ns: int | None = None
        self.progress = None

    # The public entry point -----------------------------------------------------------
    def frames(self) -> Iterator[pl.DataFrame]:
        size = self.path.stat().st_size
        if size == 0:
            raise ParseError(str(self.path), 0, "empty file: no QEMU trace lines")
        queues = self.queue_map()
        for base, body in iter_blocks(self.path, self.chunk_bytes):
            frame = self._decode_block(base, body)
            if frame is not None:
                yield self._resolve_queues(frame, queues)
            if self.progress:
                self.progress(base + len(body))

    def describe(self) -> dict:
        """This file's entry in a bundle manifest (after decoding)."""
        return {
            "file": self.src_file,
            "format": "qemu-log",
            "bytes": self.path.stat().st_size,
            "definitions": self.defs.origin,
            "threads": sorted(self.threads),
            "first_ts_ns": self.first_ts_ns,
            "last_ts_ns": self.last_ts_ns,
            "clock": {
                "domain": "host wall clock (CLOCK_REALTIME)" if self.first_ts_ns else "none",
                "ts_ns": "ns since the Unix epoch, from the line's sec.usec",
            },
            **{k: v for k, v in self.stats.as_dict().items() if k != "path"},
        }

    def queue_map(self) -> pl.DataFrame:
        """vq pointer -> (vdev text, queue index), from the first virtio_queue_notify line
        naming it."""
        parts = []
        ev = self.defs.events.get(QUEUE_MAP_EVENT)
        kinds = {} if ev is None else {c.arg: c.kind for c in ev.conversions}
        if kinds.get("vdev") != "ptr" or "n" not in kinds or kinds.get("vq") != "ptr":
            # not QEMU's (vdev %p, n, vq %p): no map, and queues are known where logged
            return pl.DataFrame(schema={"_vq": pl.UInt64, "_vq_dev": pl.String, "_vq_n": pl.UInt16})
        needle = np.frombuffer((QUEUE_MAP_EVENT + " ").encode(), np.uint8)
        # the scan reads the notify lines it can (vq as addr), the regexes the rest
        plan = ScanPlan(self.defs, {QUEUE_MAP_EVENT: Roles(dev="vdev", queue="n", addr="vq")})
        for base, body in iter_blocks(self.path, self.chunk_bytes):
            raw = np.frombuffer(body, np.uint8)
            starts, ends = line_bounds(body)
            hit = qemu_scan.lines_containing(raw, starts, ends, needle)
            starts, ends = starts[hit], ends[hit]
            fast = plan.scan(raw, starts, ends, base)
            slow = fast.pop("_slow")
            found = []
            if len(fast["ev"]):
                f = plan.frame(fast)
                found.append(f.select("src_offset", _vq=pl.col("addr"), _vq_dev=pl.col("dev"),
                                      _vq_n=pl.col("queue")))  # fmt: skip
            hits = lines_frame(body, base, starts[slow], ends[slow])
            if len(hits):
                p = _split_prefix(hits).filter(pl.col("name") == QUEUE_MAP_EVENT)
                args = _extract(p, ev).with_columns(p["src_offset"])
                found.append(
                    args.select(
                        "src_offset",
                        pl.col("vq").alias("_vq"),
                        pl.col("vdev_text").alias("_vq_dev"),
                        pl.col("n").cast(pl.UInt16, strict=False).alias("_vq_n"),
                    )
                )
            if found:  # in line order: a vq's first line names its device and index
                lines = pl.concat(found).sort("src_offset").drop("src_offset")
                parts.append(lines.filter(pl.col("_vq").is_not_null()).unique(maintain_order=True))
        if not parts:
            return pl.DataFrame(schema={"_vq": pl.UInt64, "_vq_dev": pl.String, "_vq_n": pl.UInt16})
        return pl.concat(parts).unique(subset="_vq", keep="first", maintain_order=True)

    # Steps -----------------------------------------------------------------------------
    def _decode_block(self, base: int, body: bytes) -> pl.DataFrame | None:
        """A chunk's rows: the lines the scan reads, and the others through the regexes."""
        starts, ends = line_bounds(body)
        fast = self.plan.scan(np.frombuffer(body, np.uint8), starts, ends, base)
        slow = fast.pop("_slow")
        return self._decode(lines_frame(body, base, starts[slow], ends[slow]), fast)

    def _decode(self, lines: pl.DataFrame, fast: dict | None = None) -> pl.DataFrame | None:
        lines = lines.filter(pl.col("line").str.len_bytes() > 0)
        parts = _split_prefix(lines)
        unparsed = parts.filter(pl.col("name").is_null())
        if len(unparsed):
            self.stats.skipped += len(unparsed)
            first = int(unparsed["src_offset"][0])
            self.stats.add_problem(
                Problem(
                    first,
                    "garbage",
                    f"{len(unparsed)} line(s) that are not QEMU trace lines "
                    f"(first: {unparsed['line'][0][:60]!r})",
                    int(unparsed["line"].str.len_bytes().sum() + len(unparsed)),
                )
            )
        parts = parts.filter(pl.col("name").is_not_null())
        slow = parts.partition_by("name", as_dict=True, maintain_order=True)
        firsts = {name: int(rows["src_offset"][0]) for (name,), rows in slow.items()}
        fast_counts = {}
        if fast is not None and len(fast["src_offset"]):
            fast_counts = self.plan.counts(fast)
            for name, (first, _) in fast_counts.items():
                firsts[name] = min(first, firsts.get(name, first))
        frames = [self.plan.frame(fast)] if fast_counts else []
        # event by event in the order of their first line, as the regexes alone did (the
        # order of the counts and problems they report)
        for name in sorted(firsts, key=firsts.get):
            if (name,) in slow:
                frames.append(self._event_rows(name, slow[(name,)]))
            if name in fast_counts and self.plan.beyond_7(name):
                self.stats.extra["args_beyond_7"] = (
                    self.stats.extra.get("args_beyond_7", 0) + fast_counts[name][1]
                )
        if not frames:
            return None
        frame = pl.concat(frames, how="diagonal_relaxed")
        if len(frames) > 1:  # the scan's rows alone are in line order already
            frame = frame.sort("src_offset")
        if untimed := frame["ts_ns"].null_count():  # said once per file, counted always
            if "untimed" not in self.stats.extra:
                first = int(frame.filter(pl.col("ts_ns").is_null())["src_offset"][0])
                self.stats.add_problem(Problem(first, "untimed", UNTIMED, 0))
            self.stats.extra["untimed"] = self.stats.extra.get("untimed", 0) + untimed
        ts = frame["ts_ns"].drop_nulls()
        if len(ts):
            lo, hi = int(ts.min()), int(ts.max())
            self.first_ts_ns = lo if self.first_ts_ns is None else min(self.first_ts_ns, lo)
            self.last_ts_ns = hi if self.last_ts_ns is None else max(self.last_ts_ns, hi)
        self.threads.update(frame["thread"].drop_nulls().unique().to_list())
        self.stats.decoded += len(frame)
        return frame

    def _event_rows(self, name: str, rows: pl.DataFrame) -> pl.DataFrame:
        ev = self.defs.events.get(name)
        base = rows.select(
            "src_offset",
            "ts_ns",
            "ts_raw",
            "has_ts",
            "thread",
            pl.lit(event_name(name) if ev else "unknown").alias("event"),
            pl.lit(ev.number if ev else None, dtype=pl.UInt32).alias("code"),
        )
        if ev is None:
            self.stats.extra["unknown_events"] = self.stats.extra.get("unknown_events", 0) + len(
                rows
            )
            # kept, as "unknown": but a name the trace-events file lacks may be a damaged
            # line, and the request it belonged to is then missing a step (said, not silent)
            self.stats.add_problem(
                Problem(
                    int(rows["src_offset"][0]),
                    "unknown-event",
                    f"{len(rows)} line(s) of an event the trace-events file does not define: {name!r}",
                )
            )
            return base.with_columns(pl.lit(0, dtype=pl.UInt8).alias("nargs"))
        if event_name(name) == "unknown":
            self.stats.extra["uncatalogued_events"] = self.stats.extra.get(
                "uncatalogued_events", 0
            ) + len(rows)
        args = _extract(rows, ev)
        matched = args["_matched"]
        nbad = int((~matched).sum())
        if nbad:
            first = int(rows.filter(~matched)["src_offset"][0])
            self.stats.add_problem(
                Problem(
                    first, "bad-args", f"{nbad} {name} line(s) do not match its format {ev.fmt!r}"
                )
            )
        numeric = [c.arg for c in ev.numeric]
        if len(numeric) > N_ARGS:
            self.stats.extra["args_beyond_7"] = self.stats.extra.get("args_beyond_7", 0) + len(rows)
        roles = roles_for(name, tuple(a.name for a in ev.args))
        cols = [
            pl.when(pl.col("_matched")).then(len(numeric[:N_ARGS])).otherwise(0).cast(pl.UInt8).alias("nargs"),
            *[pl.col(a).fill_null(0).alias(f"arg{i}") for i, a in enumerate(numeric[:N_ARGS])],
        ]  # fmt: skip
        if roles.dev and roles.dev != "vq" and f"{roles.dev}_text" in args.columns:
            cols.append(pl.col(f"{roles.dev}_text").alias("dev"))  # printed as a pointer
        if roles.queue and roles.queue != "vq":
            cols.append(pl.col(roles.queue).cast(pl.UInt16, strict=False).alias("queue"))
        if "vq" in (roles.dev, roles.queue):
            cols.append(pl.col("vq").alias("_vq"))
        if roles.addr:
            cols.append(pl.col(roles.addr).alias("addr"))
        if roles.size:
            cols.append(
                (pl.col(roles.size) * roles.size_scale).cast(pl.UInt32, strict=False).alias("size")
            )
        return pl.concat([base, args.select(cols)], how="horizontal")

    def _resolve_queues(self, frame: pl.DataFrame, queues: pl.DataFrame) -> pl.DataFrame:
        if "_vq" in frame.columns:
            # the queue map's device and index of each vq (a lookup per row: vq is unique)
            vq = pl.col("_vq")
            vq_dev = vq.replace_strict(queues["_vq"], queues["_vq_dev"], default=None,
                                       return_dtype=pl.String)  # fmt: skip
            vq_n = vq.replace_strict(queues["_vq"], queues["_vq_n"], default=None,
                                     return_dtype=pl.UInt16)  # fmt: skip
            frame = frame.with_columns(
                pl.coalesce("dev", vq_dev).alias("dev") if "dev" in frame.columns else vq_dev.alias("dev"),
                pl.coalesce("queue", vq_n).alias("queue") if "queue" in frame.columns else vq_n.alias("queue"),
            )  # fmt: skip
        frame = frame.with_columns(
            pl.lit(SOURCE).alias("source"), pl.lit(self.src_file).alias("src_file")
        )
        return conform(frame)


UNTIMED = (
    "records without a timestamp: QEMU ran without `-msg timestamp=on` (add it to"
    " QEMU's command line); they decode, but no timeline can time them"
)


def _split_prefix(lines: pl.DataFrame) -> pl.DataFrame:
    """Thread, timestamp, event name and argument text of each line (null name: not a
    trace line)."""
    p = lines.with_columns(pl.col("line").str.extract_groups(_PREFIX).alias("_p")).unnest("_p")
    sec = pl.col("sec").cast(pl.Int64, strict=False)
    usec = pl.col("usec").cast(pl.Int64, strict=False)
    iso = pl.col("iso").str.to_datetime("%Y-%m-%dT%H:%M:%S%.fZ", time_unit="ns", strict=False)
    return p.select(
        "src_offset",
        "line",
        "name",
        pl.col("rest").fill_null(""),
        pl.col("tid").cast(pl.UInt32, strict=False).alias("thread"),
        pl.coalesce(sec * 1_000_000_000 + usec * 1_000, iso.dt.epoch("ns")).alias("ts_ns"),
        pl.coalesce(sec * 1_000_000 + usec, iso.dt.epoch("us")).cast(pl.UInt64).alias("ts_raw"),
        (pl.col("sec").is_not_null() | pl.col("iso").is_not_null()).alias("has_ts"),
    )


def _extract(rows: pl.DataFrame, ev: EventDef) -> pl.DataFrame | None:
    """The event's arguments as columns named like its signature (numbers as UInt64, plus
    `<arg>_text` for pointers) and `_matched`."""
    if not ev.conversions:
        return rows.select(pl.col("rest").str.contains(ev.regex).alias("_matched"))
    groups = rows.select(pl.col("rest").str.extract_groups(ev.regex).alias("g")).unnest("g")
    cols = [groups["a0"].is_not_null().alias("_matched")]
    for i, conv in enumerate(ev.conversions):
        text = groups[f"a{i}"]
        if conv.kind == "text":
            cols.append(text.alias(conv.arg))
            continue
        cols.append(_number(text, conv.kind).alias(conv.arg))
        if conv.kind == "ptr":
            cols.append(text.str.replace(r"^\(nil\)$", "0x0").alias(f"{conv.arg}_text"))
    return pl.DataFrame(cols)


def _number(text: pl.Series, kind: str) -> pl.Series:
    if kind == "hex":
        return text.str.to_integer(base=16, dtype=pl.UInt64, strict=False)
    if kind == "oct":
        return text.str.to_integer(base=8, dtype=pl.UInt64, strict=False)
    if kind == "ptr":
        body = text.str.replace(r"^\(nil\)$", "0x0").str.strip_prefix("0x")
        return body.str.to_integer(base=16, dtype=pl.UInt64, strict=False)
    # decimal: negative values keep their two's complement bits, as C's (uint64_t) cast
    neg = text.str.starts_with("-")
    signed = text.str.to_integer(dtype=pl.Int64, strict=False).cast(pl.UInt64, wrap_numerical=True)
    unsigned = text.str.to_integer(dtype=pl.UInt64, strict=False)
    return pl.select(pl.when(neg).then(signed).otherwise(unsigned)).to_series()


def decode_file(path: str | os.PathLike, **kw) -> tuple[pl.DataFrame, DecodeStats]:
    dec = QemuLogDecoder(path, **kw)
    frames = list(dec.frames())
    df = pl.concat(frames) if frames else conform(pl.DataFrame(schema={"ts_ns": pl.Int64}))
    return df, dec.stats


__all__ = ["EVENT_SCHEMA", "QemuLogDecoder", "decode_file", "event_name", "sniff"]
