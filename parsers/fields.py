"""Field accessors generated from the event catalogues, so analysis code names an event's
fields and never reads the raw argument columns (arg0..arg6) itself.

    xen("hvm.vmexit", "reason")          the exit reason, from whichever layout the id has
    qemu("virtqueue_pop", "in_num")      an argument of a QEMU trace event, by its name
    own("block.rq_issue", "write")       a field of the decoders' own events (schema)
    hypercall()                          the hypercall number of every record that has one

An event can have several layouts under one name (pv.hypercall: PV_HYPERCALL 32- and
64-bit, PV_HYPERCALL_V2): the expression picks by the record's `code`. A row of another
event, or one whose layout lacks the field, gives null.
"""

from __future__ import annotations

from functools import cache

import polars as pl

from xvtrace.parsers import xen_events as xe
from xvtrace.parsers.schema import N_ARGS, OWN_ARG_NAMES
from xvtrace.parsers.trace_events import TraceEvents


class FieldError(KeyError):
    """A field no layout of the event declares (a typo in analysis code, not bad input)."""


def _word(i: int) -> pl.Expr:
    return pl.col(f"arg{i}")


def _read(f: xe.Field) -> pl.Expr:
    """One layout's field from the raw words (or the event id), as an unsigned 64-bit
    (shifts as divisions: polars expressions have no shift operator)."""
    if f.from_code:
        lo, hi = f.bits
        return (pl.col("code").cast(pl.UInt64) // (1 << lo)) & ((1 << (hi - lo)) - 1)
    value = _word(f.word)
    if f.hi_word is not None:
        value = value | (_word(f.hi_word) * (1 << 32))
    if f.bits is not None:
        lo, hi = f.bits
        value = (value // (1 << lo)) & ((1 << (hi - lo)) - 1)
    return value


@cache
def _xen_layouts(event: str, field: str) -> tuple[tuple[tuple[int, ...], xe.Field], ...]:
    """(the ids of one layout, the field in it) for each distinct layout of the field."""
    by_field: dict[xe.Field, list[int]] = {}
    for code, spec in xe.SPECS.items():
        if spec.name != event:
            continue
        for f in spec.fields:
            if f.name == field:
                by_field.setdefault(f, []).append(code)
    if not by_field:
        raise FieldError(f"no layout of xentrace event {event!r} has a field {field!r}")
    return tuple((tuple(codes), f) for f, codes in by_field.items())


@cache
def _xen_codes(event: str) -> frozenset[int]:
    """Every id the catalogue names `event`."""
    return frozenset(code for code, spec in xe.SPECS.items() if spec.name == event)


def xen(event: str, field: str) -> pl.Expr:
    """Field `field` of xentrace event `event` (xen_events' catalogue), null on other rows,
    on ids whose layout lacks the field and on records too short to carry it (Xen leaves
    such words out)."""
    layouts = _xen_layouts(event, field)
    # the id decides the layout unless one layout holds every id of the event
    by_code = len(layouts) > 1 or frozenset(layouts[0][0]) != _xen_codes(event)
    is_event = pl.col("event") == event
    expr = None
    for codes, f in layouts:
        here = is_event & (pl.col("nargs") >= f.needs_words)
        if by_code:
            here = here & pl.col("code").is_in(list(codes))
        expr = (pl.when(here) if expr is None else expr.when(here)).then(_read(f))
    return expr.otherwise(None).alias(field)


@cache
def _qemu_index(event: str, arg: str) -> int:
    ev = TraceEvents.default().events.get(event)
    if ev is None:
        raise FieldError(f"no QEMU trace event {event!r} in the packaged trace-events")
    names = [c.arg for c in ev.numeric][:N_ARGS]  # the decoders keep the first N_ARGS
    if arg not in names:
        raise FieldError(f"QEMU trace event {event!r} has no numeric argument {arg!r}: {names}")
    return names.index(arg)


def qemu(event: str, arg: str) -> pl.Expr:
    """Numeric argument `arg` of QEMU trace event `event` (its trace-events signature: the
    decoders put numeric arguments in arg0.. in format order), null on other rows."""
    i = _qemu_index(event, arg)
    return pl.when(pl.col("event") == f"qemu.{event}").then(_word(i)).alias(arg)


def own(event: str, field: str) -> pl.Expr:
    """Field `field` of one of the decoders' own events (schema.OWN_ARG_NAMES: dom0's block
    layer, packets, virtqueue dumps, IOREQ pages), null on other rows."""
    names = OWN_ARG_NAMES.get(event, ())
    if field not in names:
        raise FieldError(f"event {event!r} has no field {field!r}: {names}")
    return pl.when(pl.col("event") == event).then(_word(names.index(field))).alias(field)


HYPERCALL_EVENTS = ("pv.hypercall", "pv.hypercall_subcall", "hvm.vmmcall")


def hypercall() -> pl.Expr:
    """The hypercall number of every record that carries one: PV_HYPERCALL's eax (32- and
    64-bit layouts), PV_HYPERCALL_V2's and a multicall's subcall op (the low 20 bits: the
    upper ones flag which arguments follow), an HVM guest's VMCALL/VMMCALL eax."""
    return pl.coalesce(
        xen("pv.hypercall", "op"),
        xen("pv.hypercall", "eax"),
        xen("pv.hypercall_subcall", "op"),
        xen("hvm.vmmcall", "hypercall"),
    ).alias("hypercall")


EXIT_EVENTS = ("hvm.vmexit", "hvm.nested_vmexit")


def exit_reason() -> pl.Expr:
    """An HVM exit's reason (VMX basic reason or SVM exit code, as the record has it), from
    a VM exit or a nested one."""
    return pl.coalesce(*[xen(e, "exit_reason") for e in EXIT_EVENTS]).alias("exit_reason")
