"""One readable line per record, the working replacement for xentrace_format.

    12.345678901 cpu1 d1v0   hvm.vmexit         exit_reason=VMEXIT_NPF(1024) rip=0xffffffff81001234

Field names and layouts come from the event catalogue (parsers.xen_events); formatting is
done per event id over whole columns, not per record.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator

import numpy as np
import polars as pl

from xvtrace.parsers import xen_events as xe
from xvtrace.parsers.schema import EVENT_NAMES, OWN_ARG_NAMES
from xvtrace.parsers.trace_events import TraceEvents

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


def _format_field(
    values: np.ndarray, f: xe.Field, code: int, vendor: str, symbols=()
) -> np.ndarray:
    if f.name in CODE_ADDRESS_FIELDS and symbols:
        return np.char.mod("%#x", values).astype(object) + name_addresses(values, symbols)
    if f.name == "exit_reason":
        return _named(values, lambda r: xe.exit_reason_name(r, vendor))
    if f.name in ("op", "hypercall", "eax") and code in (
        0x0020100D,
        0x0020200E,
        0x00082012,
        0x00201001,
        0x00201101,
    ):
        return _named(values, xe.hypercall_name)
    if f.name in ("old", "new"):
        return _named(values, lambda s: xe.RUNSTATES[s] if s < 4 else f"state{s}")
    if f.name in DECIMAL_FIELDS:
        return values.astype(np.int64).astype(str).astype(object)
    return np.char.mod("%#x", values).astype(object)


def format_lines(df: pl.DataFrame, vendor: str = "vmx", symbols=()) -> list[str]:
    """Format a frame of canonical xentrace rows as dump lines (row order kept)."""
    n = len(df)
    if n == 0:
        return []
    df = df.rechunk()  # batches from collect_batches can be multi-chunk
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
) -> Iterator[str]:
    """Stream formatted lines from a (filtered) event table, batch by batch."""
    if limit is not None:
        ev = ev.head(limit)
    for frame in ev.collect_batches(chunk_size=batch):
        yield from format_lines(frame, vendor, symbols)
