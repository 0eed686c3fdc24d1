"""One readable line per record, the working replacement for xentrace_format.

    12.345678901 cpu1 d1v0   hvm.vmexit         exit_reason=VMEXIT_NPF(1024) rip=0xffffffff81001234

Field names and layouts come from the event catalogue (parsers.xen_events); formatting is
done per event id over whole columns, not per record. Rows are printed by the compiled
line renderer (render_bytes); format_lines is the reference it must equal, and what
symbol naming uses.
"""

from __future__ import annotations

import fnmatch
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from itertools import chain
from typing import NamedTuple

import numpy as np
import polars as pl

from xvtrace.bundle.stages import prefetch
from xvtrace.parsers import xen_events as xe
from xvtrace.parsers.schema import EVENT_NAMES, OWN_ARG_NAMES
from xvtrace.parsers.trace_events import TraceEvents

# the table's columns a dump line shows (the others, such as the raw TSC and the source
# file and offset, are not read: a 500 MB trace's dump reads 2.35 -> 1.53 CPU-s)
PRINTED = ("source", "ts_ns", "cpu", "thread", "dom", "vcpu", "event", "code", "nargs",
           *(f"arg{i}" for i in range(7)), "dev", "queue", "head", "addr", "size")  # fmt: skip

DECIMAL_FIELDS = {
    "dom", "vcpu", "domid", "cpu", "lost", "count", "prev_dom", "prev_vcpu", "next_dom",
    "next_vcpu", "granting_dom", "dest_dom", "vector", "irq", "tn", "pos", "rq_id",
    "runtime_ns", "waited_ns", "r_time_ns", "cstate", "from", "new_cpu", "processor",
    "active", "intpending", "fake", "size", "cr",
}  # fmt: skip


def select_events(
    ev: pl.LazyFrame,
    *,
    events: tuple[str, ...] = (),
    codes: tuple[int, ...] = (),
    doms: tuple[int, ...] = (),
    cpus: tuple[int, ...] = (),
    start_ns: int | None = None,
    end_ns: int | None = None,
) -> pl.LazyFrame:
    """Filter the event table; event names accept shell globs (``hvm.*``)."""
    if events:
        names = [n for n in EVENT_NAMES if any(fnmatch.fnmatchcase(n, pat) for pat in events)]
        ev = ev.filter(pl.col("event").is_in(names))
    if codes:
        ev = ev.filter(pl.col("code").is_in(list(codes)))
    if doms:
        ev = ev.filter(pl.col("dom").is_in(list(doms)))
    if cpus:
        ev = ev.filter(pl.col("cpu").is_in(list(cpus)))
    if start_ns is not None:
        ev = ev.filter(pl.col("ts_ns") >= start_ns)
    if end_ns is not None:
        ev = ev.filter(pl.col("ts_ns") < end_ns)
    return ev


def _field_values(args: np.ndarray, nargs: np.ndarray, code: int, f: xe.Field):
    """(values, present) of one field for rows that all have event id `code`."""
    if f.from_code:
        lo, hi = f.bits
        v = np.full(len(nargs), (code >> lo) & ((1 << (hi - lo)) - 1), dtype=np.uint64)
        return v, np.ones(len(nargs), dtype=bool)
    v = args[:, f.word].copy()
    if f.wide:
        v |= args[:, f.hi_word] << np.uint64(32)
    if f.bits:
        lo, hi = f.bits
        v = (v >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
    return v, nargs >= f.needs_words


def _named(values: np.ndarray, namer) -> np.ndarray:
    uniq, inv = np.unique(values, return_inverse=True)
    labels = np.array([f"{namer(int(u))}({int(u)})" for u in uniq], dtype=object)
    return labels[inv]


CODE_ADDRESS_FIELDS = ("rip", "eip", "pc")


def name_addresses(values: np.ndarray, symbols) -> np.ndarray:
    """' <func+0xoff (file:line)>' from the first symbol table that knows each address."""
    out = np.full(len(values), "", dtype=object)
    for syms in symbols:
        todo = out == ""
        if not todo.any():
            break
        text = syms.describe(values[todo])
        out[np.flatnonzero(todo)] = np.where(text != "", " <" + text + ">", "")
    return out


HYPERCALL_CODES = (0x0020100D, 0x0020200E, 0x00082012, 0x00201001, 0x00201101)


def _runstate(s: int) -> str:
    return xe.RUNSTATES[s] if s < 4 else f"state{s}"


def _namer(f: xe.Field, code: int, vendor: str):
    """The function that names this field's values (shown as NAME(value)), or None."""
    if f.name == "exit_reason":
        return lambda r: xe.exit_reason_name(r, vendor)
    if f.name in ("op", "hypercall", "eax") and code in HYPERCALL_CODES:
        return xe.hypercall_name
    if f.name in ("old", "new"):
        return _runstate
    return None


def _format_field(
    values: np.ndarray, f: xe.Field, code: int, vendor: str, symbols=()
) -> np.ndarray:
    if f.name in CODE_ADDRESS_FIELDS and symbols:
        return np.char.mod("%#x", values).astype(object) + name_addresses(values, symbols)
    namer = _namer(f, code, vendor)
    if namer is not None:
        return _named(values, namer)
    if f.name in DECIMAL_FIELDS:
        return values.astype(np.int64).astype(str).astype(object)
    return np.char.mod("%#x", values).astype(object)


def format_lines(df: pl.DataFrame, vendor: str = "vmx", symbols=()) -> list[str]:
    """Format a frame of canonical xentrace rows as dump lines (row order kept)."""
    n = len(df)
    if n == 0:
        return []
    df = df.rechunk()  # a batch (a slice of a scan) can be multi-chunk
    ts = df["ts_ns"].fill_null(0).to_numpy()
    sec, ns = np.divmod(ts, 1_000_000_000)
    head = (
        pl.DataFrame(
            {
                "s": sec,
                "ns": ns,
                "has": df["ts_ns"].is_not_null(),
                "cpu": df["cpu"],
                "thread": df["thread"],
                "dom": df["dom"],
                "vcpu": df["vcpu"],
                "event": df["event"].cast(pl.String),
            }
        )
        .select(
            pl.format(
                "{} {} {} {}",
                pl.when(pl.col("has"))
                .then(
                    pl.format(
                        "{}.{}",
                        pl.col("s").cast(pl.String).str.pad_start(4),
                        pl.col("ns").cast(pl.String).str.zfill(9),
                    )
                )
                .otherwise(pl.lit("-".rjust(14))),
                pl.when(pl.col("cpu").is_not_null())
                .then(pl.format("cpu{}", pl.col("cpu")))
                .when(pl.col("thread").is_not_null())
                .then(pl.format("t{}", pl.col("thread")))
                .otherwise(pl.lit("-")),
                pl.format(
                    "d{}v{}",
                    pl.col("dom").cast(pl.String).fill_null("?"),
                    pl.col("vcpu").cast(pl.String).fill_null("?"),
                ).str.pad_end(9),
                pl.col("event").str.pad_end(26),
            )
        )
        .to_series()
        .to_numpy()
        .astype(object)
    )
    code = df["code"].to_numpy()
    nargs = df["nargs"].to_numpy()
    args = np.column_stack(
        [df[f"arg{i}"].fill_null(0).to_numpy().astype(np.uint64) for i in range(7)]
    )
    tails = np.full(n, "", dtype=object)
    source = df["source"].cast(pl.String).to_numpy()
    is_xen = source == "xentrace"
    qemu = np.flatnonzero(source == "qemu")
    if len(qemu):
        tails[qemu] = _qemu_tails(df[qemu], args[qemu], nargs[qemu])
    own = np.flatnonzero(~is_xen & (source != "qemu"))
    if len(own):
        tails[own] = _own_tails(df[own], args[own], nargs[own])
    for c in np.unique(code[is_xen]):
        rows = np.flatnonzero((code == c) & is_xen)
        spec = xe.spec_for(int(c))
        a, na = args[rows], nargs[rows]
        if spec is None:  # unknown id: show it and every raw word it carried
            parts = np.char.mod("code=%#010x", np.full(len(rows), c, dtype=np.int64)).astype(object)
            for i in range(7):
                present = na > i
                words = np.char.mod(f" w{i}=%s", np.zeros(len(rows), dtype=np.int64)).astype(object)
                vals = np.char.mod("%#x", a[:, i]).astype(object)
                parts = np.where(present, parts + words + vals, parts)
            tails[rows] = parts
            continue
        parts = np.full(len(rows), "", dtype=object)
        for f in spec.fields:
            if f.needs_words > 7:
                continue
            values, present = _field_values(a, na, int(c), f)
            text = f.name + "=" + _format_field(values, f, int(c), vendor, symbols)
            parts = np.where(present, parts + " " + text, parts)
        tails[rows] = parts
    return (head + tails).tolist()


def _qemu_tails(df: pl.DataFrame, args: np.ndarray, nargs: np.ndarray) -> np.ndarray:
    """`arg=value` for the numeric arguments of QEMU rows, named by their definitions."""
    defs = TraceEvents.default()
    tails = np.full(len(df), "", dtype=object)
    names = df["event"].cast(pl.String).to_numpy()
    for name in np.unique(names):
        rows = np.flatnonzero(names == name)
        ev = defs.events.get(name.removeprefix("qemu."))
        convs = ev.numeric if ev else ()
        parts = np.full(len(rows), "", dtype=object)
        for i, conv in enumerate(convs[:7]):
            fmt = "%d" if conv.kind == "dec" else "%#x"
            text = f" {conv.arg}=" + np.char.mod(fmt, args[rows, i]).astype(object)
            parts = np.where(nargs[rows] > i, parts + text, parts)
        tails[rows] = parts
    return tails


def _own_tails(df: pl.DataFrame, args: np.ndarray, nargs: np.ndarray) -> np.ndarray:
    """Shared columns and named arguments of the rows of xvtrace's own decoders."""
    n = len(df)
    parts = np.full(n, "", dtype=object)
    for col, fmt in (
        ("dev", "%s"),
        ("queue", "%d"),
        ("head", "%d"),
        ("addr", "%#x"),
        ("size", "%d"),
    ):
        s = df[col]
        present = s.is_not_null().to_numpy()
        if present.any():
            vals = s.fill_null(0 if col != "dev" else "").to_numpy()
            text = (
                f" {col}=" + np.char.mod(fmt, vals).astype(object)
                if col != "dev"
                else " dev=" + vals.astype(object)
            )
            parts = np.where(present, parts + text, parts)
    names = df["event"].cast(pl.String).to_numpy()
    for name in np.unique(names):
        rows = np.flatnonzero(names == name)
        for i, arg in enumerate(OWN_ARG_NAMES.get(name, ())):
            text = f" {arg}=" + np.char.mod("%d", args[rows, i]).astype(object)
            parts[rows] = np.where(nargs[rows] > i, parts[rows] + text, parts[rows])
    return parts


def iter_lines(
    ev: pl.LazyFrame,
    vendor: str = "vmx",
    batch: int = 200_000,
    limit: int | None = None,
    symbols=(),
    select: Callable[[pl.LazyFrame], pl.LazyFrame] | None = None,
) -> Iterator[str]:
    """Stream formatted lines from an event table, batch by batch (`select`: its filter,
    as select_events; see `batches`)."""
    for frame in batches(ev, batch, limit, select):
        yield from format_lines(frame, vendor, symbols)


def batches(
    ev: pl.LazyFrame,
    rows: int,
    limit: int | None = None,
    select: Callable[[pl.LazyFrame], pl.LazyFrame] | None = None,
) -> Iterator[pl.DataFrame]:
    """The rows of select(ev), the first `limit` of them, `rows` at a time (or fewer): `ev`
    is read a slice of SCAN_ROWS at a time (a slice of a scan reads only its row groups),
    filtered, and handed out in parts. A reader slower than the scan holds a slice:
    `collect_batches` ran ahead of it (a 500 MB trace's dump: 1.20-1.25 GB with it,
    0.97-1.00 GB by slices, at the same speed with the next slice read ahead)."""
    total = ev.select(pl.len()).collect().item()
    left, scan = limit, max(rows, SCAN_ROWS)
    for lo in range(0, total, scan):
        if left is not None and left <= 0:
            return
        part = ev.slice(lo, scan)
        frame = (select(part) if select else part).collect()
        if left is not None:
            frame = frame.head(left)
            left -= len(frame)
        for at in range(0, len(frame), rows):
            yield frame.slice(at, rows)


SCAN_ROWS = 1 << 19  # rows of the table read at once (200 k at a time: 0.6 s more a 500 MB
# trace's dump, each slice's row groups decoded twice)


# The compiled path: rows laid out by dump_kernel and rendered by line_render, one variant
# per distinct (layout, words carried, named field values, head shape, columns shown); the
# names and the layout become literal text, numbers are printed by the compiled renderer
# into one byte buffer.

AHEAD = 2  # batches rendered ahead of the one being written
RAMP_ROWS = (1_000, 4_000, 16_000, 64_000)  # the first batch's first slices, each alone
MAX_VARIANTS = 4096  # beyond this (garbage ids or names), building pieces costs more


def iter_chunks(
    ev: pl.LazyFrame,
    vendor: str = "vmx",
    batch: int = 200_000,
    limit: int | None = None,
    symbols=(),
    select: Callable[[pl.LazyFrame], pl.LazyFrame] | None = None,
) -> Iterator[bytes | np.ndarray]:
    """Stream the dump as byte buffers (newline-terminated lines), batch by batch (as
    `batches`). The first batch goes out in small growing slices, so a reader like `head`
    has its lines at once and, once it leaves, the next write (which fails) comes soon."""
    # (the next slice read while these render: 0.5 s of a 500 MB trace's dump)
    with closing(prefetch(batches(ev, batch, limit, select), depth=1)) as frames:
        yield from _rendered(frames, vendor, symbols)


def _rendered(frames: Iterator[pl.DataFrame], vendor: str, symbols) -> Iterator[bytes | np.ndarray]:
    first = next(frames, None)
    if first is None:
        return
    at = 0
    for n in RAMP_ROWS:
        if at >= len(first):
            break
        yield render_bytes(first.slice(at, n).rechunk(), vendor, symbols)
        at += n
    rest = chain([first.slice(at)] if at < len(first) else [], frames)
    # two batches render at once (numba, numpy and polars let go of the GIL), in order;
    # at most AHEAD wait, so a reader that stops early costs little
    with ThreadPoolExecutor(2) as pool:
        pending: deque = deque()
        for frame in rest:
            # rechunked in the worker too: in this thread it was 1.3 s of a 9.6 s dump
            pending.append(pool.submit(_render_rechunked, frame, vendor, symbols))
            if len(pending) > AHEAD:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _render_rechunked(df: pl.DataFrame, vendor: str, symbols) -> bytes | np.ndarray:
    return render_bytes(df.rechunk(), vendor, symbols)


def render_bytes(df: pl.DataFrame, vendor: str = "vmx", symbols=()) -> bytes | np.ndarray:
    """The lines of format_lines, newline-terminated, as one byte buffer."""
    fast = None if symbols or df["event"].null_count() else _render_compiled(df, vendor)
    return _joined(format_lines(df, vendor, symbols)) if fast is None else fast[0]


QEMU_LAYOUT = 1 << 32  # a QEMU row's layout id: this plus its event's number
OWN_LAYOUT = 2 << 32  # another source's row's (own decoders'): this plus its event's number


def _joined(lines: list[str]) -> np.ndarray:
    """Lines, each newline-terminated, as one byte buffer."""
    return np.frombuffer(("\n".join(lines) + "\n").encode() if lines else b"", np.uint8)


def _render_compiled(df: pl.DataFrame, vendor: str):
    """(data, offsets) of the rows by line_render, or None when it would not pay. A row's
    fields are laid out by its layout: a xentrace row's event id's catalogue entry, a QEMU
    row's event's numeric arguments (QEMU_LAYOUT + its event's number), another row's
    device, columns and named arguments (OWN_LAYOUT + its event's number)."""
    from xvtrace.analysis import dump_kernel as k
    from xvtrace.parsers.line_render import render_variants

    n = len(df)
    if n == 0:
        return np.zeros(0, np.uint8), np.zeros(1, np.int64)
    has = (("ts_ns", k.HAS_TS), ("cpu", k.HAS_CPU), ("thread", k.HAS_THREAD),
           ("dom", k.HAS_DOM), ("vcpu", k.HAS_VCPU),
           *((c, k.HAS_COLUMN << i) for i, c in enumerate(COLUMNS)))  # fmt: skip
    event = pl.col("event").to_physical().cast(pl.Int64)
    source = pl.col("source")
    cols = df.select(
        pl.sum_horizontal(
            pl.col(name).is_not_null().cast(pl.UInt16) * bit for name, bit in has
        ).cast(pl.UInt16).alias("flags"),
        *(pl.col(name).fill_null(0) for name, _ in has),
        pl.when(source == "xentrace").then(pl.col("code").fill_null(0).cast(pl.Int64))
        .when(source == "qemu").then(event + QEMU_LAYOUT)
        .otherwise(event + OWN_LAYOUT).alias("layout"),
        pl.col("nargs").fill_null(0), event.alias("event"),
        *(pl.col(f"arg{i}").fill_null(0) for i in range(7)),
        (pl.col("dev").rank("dense").cast(pl.Int64) - 1).fill_null(-1).alias("dev"),
    )  # fmt: skip
    c = {name: cols[name].to_numpy() for name in cols.columns}
    names = df["event"].dtype.categories.to_list()
    devs = df["dev"].drop_nulls().unique().sort().to_list()
    ids, at = k.distinct(c["layout"])
    layouts = [_layout(int(i), vendor, names) for i in ids]
    slots = _slot_table(ids, layouts)
    nnamed = max(len(named) for _, named in layouts)
    values, variant, keys, m = k.lay_out(
        c["ts_ns"], c["flags"], c["cpu"], c["thread"], c["dom"], c["vcpu"], c["layout"], at,
        c["nargs"], c["event"], *(c[f"arg{i}"] for i in range(7)),
        *(c[name] for name in COLUMNS), c["dev"], slots, nnamed, MAX_VARIANTS,
    )  # fmt: skip
    if m < 0:
        return None
    by_id = dict(zip(ids.tolist(), layouts, strict=True))
    width = slots.shape[1]
    built = [_variant(key, names, devs, by_id[int(key[0])], width) for key in keys[:m]]
    return render_variants([b[0] for b in built], [b[1] for b in built], values, variant)


def _layout(layout_id: int, vendor: str, names: list[str]):
    """_tail_layout of a layout id: a xentrace event id's; a QEMU event's numeric arguments
    (words 0-6, each printed as ` arg=` and its conversion, as _qemu_tails); or an own
    event's device, columns and named arguments (as _own_tails)."""
    if layout_id < QEMU_LAYOUT:
        return _tail_layout(layout_id, vendor)
    if layout_id < OWN_LAYOUT:
        name = names[layout_id - QEMU_LAYOUT]
        ev = TraceEvents.default().events.get(name.removeprefix("qemu."))
        convs = ev.numeric[:7] if ev else ()
        # ("u": unsigned, as %d prints a word in _qemu_tails)
        return [Slot(xe.Field(c.arg, word=i), None, "u" if c.kind == "dec" else "x")
                for i, c in enumerate(convs)], ()  # fmt: skip
    name = names[layout_id - OWN_LAYOUT]
    columns = [Slot(xe.Field(c), None, "x" if c == "addr" else "u", c) for c in COLUMNS]
    args = [Slot(xe.Field(a, word=i), None, "u") for i, a in enumerate(OWN_ARG_NAMES.get(name, ()))]
    return [Slot(xe.Field("dev"), None, "", "dev"), *columns, *args], ()


def _slot_table(ids: np.ndarray, layouts: list) -> np.ndarray:
    """Per layout id (in `ids`' order) and value column, where dump_kernel.lay_out reads
    the value: the kernel's slot rows (kind, word, high word, low bit, bit count, named
    index, words needed)."""
    from xvtrace.analysis import dump_kernel as k

    width = max(_tail_layout_width(lay) for lay in layouts)
    table = np.zeros((len(ids), width, k.SLOT), np.int64)
    table[:, :, 5] = -1
    for i, (code, (slots, names)) in enumerate(zip(ids.tolist(), layouts, strict=True)):
        if slots is None:
            table[i, :7, 0] = k.RAW
            continue
        for j, (f, _, _, column) in enumerate(slots):
            lo, hi = f.bits or (0, 0)
            if column == "dev":
                table[i, j, 0] = k.DEV
            elif column:
                table[i, j, :2] = k.COLUMN, COLUMNS.index(column)
            elif f.from_code:
                table[i, j, :2] = k.CONST, (code >> lo) & ((1 << (hi - lo)) - 1)
            else:
                hi_word = f.hi_word if f.wide else -1
                table[i, j, :5] = k.WORD, f.word, hi_word, lo, hi - lo
            table[i, j, 5] = names.index(j) if j in names else -1
            table[i, j, 6] = f.needs_words
    return table


def _tail_layout(code: int, vendor: str):
    """This event id's Slots (None for an unknown id: its raw words), and the indexes of
    the named ones."""
    spec = xe.spec_for(code)
    if spec is None:
        return None, ()
    slots = [
        Slot(f, _namer(f, code, vendor), "d" if f.name in DECIMAL_FIELDS else "x")
        for f in spec.fields
        if f.needs_words <= 7
    ]
    return slots, tuple(j for j, s in enumerate(slots) if s.namer is not None)


class Slot(NamedTuple):
    """A value column of a compiled line: its field (name, where its bits are), the
    function that names its values (or None), how its number prints ("d" signed decimal,
    "u" unsigned, "x" 0x-hex), and the table column it comes from instead of the words
    (one of COLUMNS, or "dev": the device name, printed as text)."""

    field: xe.Field
    namer: Callable[[int], str] | None
    conv: str
    column: str | None = None


COLUMNS = ("queue", "head", "addr", "size")  # the columns own rows show (after dev)


def _tail_layout_width(layout) -> int:
    return 7 if layout[0] is None else len(layout[0])


class _Pieces:
    """A variant being built: literal text and the fields between, left to right."""

    def __init__(self) -> None:
        self.pieces, self.fields = [""], []

    def text(self, s: str) -> None:
        self.pieces[-1] += s

    def field(self, f) -> None:
        self.fields.append(f)
        self.pieces.append("")


def _variant(key: np.ndarray, names: list[str], devs: list[str], layout, width: int):
    """(pieces, fields) of one variant from its key (see _render_compiled; `devs`: the
    batch's device names by id)."""
    from xvtrace.analysis.dump_kernel import HEAD, KEY
    from xvtrace.parsers.line_render import DEC, HEX, SIGNED, Field

    code, nargs, event, has, mode, dom_width, vcpu_unknown, shown = (int(x) for x in key[:KEY])
    named = key[KEY:].view(np.uint64)
    b = _Pieces()
    if has:
        b.field(Field(SIGNED, width=4))
        b.text(".")
        b.field(Field(DEC, width=9, pad="0"))
    else:
        b.text("-".rjust(14))
        b.field(None)
        b.field(None)
    b.text(" " + ("cpu", "t", "-")[mode])
    b.field(Field(SIGNED) if mode < 2 else None)
    b.text(" d" + ("" if dom_width else "?"))
    b.field(Field(SIGNED) if dom_width else None)
    b.text("v")
    used = 2 + max(dom_width, 1)  # "d" + dom + "v"
    if vcpu_unknown:
        b.text("?" + " " * max(0, 9 - used - 1))
        b.field(None)
    else:
        b.field(Field(SIGNED, width=max(0, 9 - used), left=True))
    b.text(" " + names[event].ljust(26))
    slots, named_at = layout
    if slots is None:  # unknown id: the id and every raw word (" wI=0" is the old text)
        b.text(f"code={code:#010x}")
        for i in range(7):
            if nargs > i:
                b.text(f" w{i}=0")
            b.field(Field(HEX, prefix="x") if nargs > i else None)
    else:
        for j, (f, namer, conv, column) in enumerate(slots):
            if column == "dev":
                if shown >> 4:
                    b.text(f" dev={devs[(shown >> 4) - 1]}")
                b.field(None)
                continue
            absent = not shown >> COLUMNS.index(column) & 1 if column else nargs < f.needs_words
            if absent:
                b.field(None)
                continue
            b.text(f" {f.name}=")
            if namer is not None:
                v = int(named[named_at.index(j)])
                b.text(f"{namer(v)}({v})")
                b.field(None)
            else:
                b.field({"d": Field(SIGNED), "u": Field(DEC), "x": Field(HEX, prefix="x")}[conv])
    for _ in range(width - len(b.fields) + HEAD):
        b.field(None)
    b.text("\n")
    return b.pieces, b.fields
