"""QEMU trace-event definitions: the `trace-events` file syntax and what each event's
arguments look like in a log line and in a simpletrace record.

A definition (QEMU docs/devel/tracing.rst, scripts/tracetool/__init__.py):

    [disable] [vcpu] name(type1 arg1, type2 arg2, ...) "printf format" [PRI macros between
                                                                         string pieces]

The log backend prints `name ` + the format applied to the arguments, so each event's format
string, turned into an anchored regex, reads its arguments back; simpletrace stores them as
8-byte values, or length-prefixed bytes for `char *` arguments, in signature order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np
from numba import njit

from xvtrace.parsers.byte_copy import copy_bytes

DEFAULT_FILE = "qemu-7.2-trace-events"

_LINE = re.compile(
    r"^(?P<props>(?:(?:disable|vcpu|tcg|tcg-trans|tcg-exec)\s+)*)"
    r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)\((?P<args>[^)]*)\)\s*(?P<fmt>.*?)\s*$"
)
_PRI = re.compile(r"PRI([diouxX])(8|16|32|64|PTR|MAX|FAST\d+|LEAST\d+)")
_CONV = re.compile(
    r"%(?P<flags>[-+ #0']*)(?P<width>\d+|\*)?(?:\.(?P<prec>\d+|\*))?(?:hh|h|ll|l|z|j|t|L|q)?(?P<conv>[diouxXcspfeEgGaA%])"
)

# What each conversion looks like in text; `kind` says how to read it back as a number.
_CONV_REGEX = {
    "d": (r"-?\d+", "dec"),
    "i": (r"-?\d+", "dec"),
    "u": (r"\d+", "dec"),
    "o": (r"[0-7]+", "oct"),
    "x": (r"[0-9a-f]+", "hex"),
    "X": (r"[0-9A-F]+", "hex"),
    "p": (r"0x[0-9a-f]+|\(nil\)", "ptr"),
    "c": (r".", "text"),
    "s": (r".*?", "text"),
}
_FLOAT = (r"[-+0-9.eEinfa]+", "text")


class DefinitionError(ValueError):
    """A trace-events line that is not a valid definition."""


@dataclass(frozen=True)
class Arg:
    name: str
    ctype: str

    @property
    def is_string(self) -> bool:
        """simpletrace stores `char *` arguments as length-prefixed bytes."""
        return "char" in self.ctype and "*" in self.ctype


@dataclass(frozen=True)
class Conversion:
    """One printf conversion of the format, and the argument it prints."""

    arg: str
    kind: str  # dec | oct | hex | ptr | text


@dataclass(frozen=True)
class EventDef:
    name: str
    args: tuple[Arg, ...]
    fmt: str  # the format with PRI macros expanded, as one string
    number: int  # position in its file (simpletrace's event id for files of this layout)
    conversions: tuple[Conversion, ...] = field(default=())
    regex: str = ""

    @property
    def numeric(self) -> tuple[Conversion, ...]:
        """The conversions that carry numbers, in format order (the table's arg0..)."""
        return tuple(c for c in self.conversions if c.kind != "text")


def _join_format(text: str, where: str) -> str:
    """Concatenate the C string pieces and PRI macros of a format into one printf string."""
    out = []
    pos = 0
    token = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|(PRI[A-Za-z0-9_]+))')
    while pos < len(text):
        m = token.match(text, pos)
        if not m:
            if text[pos:].strip() == "":
                break
            raise DefinitionError(f"{where}: cannot read the format string at {text[pos:]!r}")
        if m.group(1) is not None:
            out.append(bytes(m.group(1), "utf-8").decode("unicode_escape"))
        else:
            pri = _PRI.fullmatch(m.group(2))
            if not pri:
                raise DefinitionError(f"{where}: unknown format macro {m.group(2)}")
            out.append(pri.group(1))
        pos = m.end()
    return "".join(out)


def _format_regex(
    fmt: str, args: tuple[Arg, ...], where: str
) -> tuple[str, tuple[Conversion, ...]]:
    parts, convs = [], []
    pos = 0
    argi = 0
    for m in _CONV.finditer(fmt):
        parts.append(re.escape(fmt[pos : m.start()]))
        pos = m.end()
        conv = m.group("conv")
        if conv == "%":
            parts.append("%")
            continue
        if argi >= len(args):
            raise DefinitionError(f"{where}: format has more conversions than arguments")
        pattern, kind = _CONV_REGEX.get(conv, _FLOAT)
        if conv in "xX" and "#" in m.group("flags"):
            pattern = r"0x[0-9a-fA-F]+|0"
            kind = "ptr"
        # Padded widths print leading spaces.
        lead = r" *" if m.group("width") and "0" not in m.group("flags") else ""
        parts.append(f"{lead}(?P<a{len(convs)}>{pattern})")
        convs.append(Conversion(args[argi].name, kind))
        argi += 1
    parts.append(re.escape(fmt[pos:]))
    return "^" + "".join(parts) + "$", tuple(convs)


def parse_definition(line: str, number: int, where: str = "trace-events") -> EventDef | None:
    """One line of a trace-events file; None for comments and blank lines."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    m = _LINE.match(text)
    if not m:
        raise DefinitionError(f"{where}: not a trace-event definition: {text[:80]!r}")
    args = []
    raw_args = m.group("args").strip()
    if raw_args and raw_args != "void":
        for piece in raw_args.split(","):
            piece = piece.strip()
            am = re.match(r"^(.*?)([A-Za-z_][A-Za-z0-9_]*)$", piece)
            if not am or not am.group(1).strip():
                raise DefinitionError(f"{where}: cannot read argument {piece!r}")
            args.append(Arg(am.group(2), " ".join(am.group(1).split())))
    fmt = _join_format(m.group("fmt"), where)
    regex, convs = _format_regex(fmt, tuple(args), where)
    return EventDef(m.group("name"), tuple(args), fmt, number, convs, regex)


@dataclass
class TraceEvents:
    """The definitions of one trace-events file, by name and by number."""

    events: dict[str, EventDef]
    origin: str

    @classmethod
    def parse(cls, text: str, origin: str = "trace-events") -> TraceEvents:
        events: dict[str, EventDef] = {}
        for lineno, line in enumerate(text.splitlines(), 1):
            ev = parse_definition(line, len(events), f"{origin}:{lineno}")
            if ev is not None and ev.name not in events:
                events[ev.name] = ev
        if not events:
            raise DefinitionError(f"{origin}: no trace-event definitions")
        return cls(events, origin)

    @classmethod
    def load(cls, path: str | Path) -> TraceEvents:
        return cls.parse(Path(path).read_text(errors="replace"), str(path))

    @classmethod
    def default(cls) -> TraceEvents:
        text = resources.files("xvtrace.parsers").joinpath("data", DEFAULT_FILE).read_text()
        return cls.parse(text, DEFAULT_FILE)

    @cached_property
    def by_number(self) -> dict[int, EventDef]:
        return {e.number: e for e in self.events.values()}


def looks_like_definitions(head: bytes) -> bool:
    """Content test for a trace-events file: its first definition lines parse."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    lines = [x for x in text.splitlines()[:-1] if x.strip() and not x.lstrip().startswith("#")]
    if not lines:
        return False
    try:
        return all(parse_definition(x, 0) is not None for x in lines[:20])
    except DefinitionError:
        return False


# --- writing: the log backend's lines, vectorized ---------------------------------------


# how render_lines prints a field
_DEC, _SIGNED, _HEX, _PTR = 0, 1, 2, 3


def render_lines(
    ev: EventDef, cols: dict[str, np.ndarray], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """`{event} {text}` (the event alone where its format is empty) for n rows of unsigned-
    integer arguments (arrays or scalars), as QEMU's log backend prints it, compiled: one
    byte buffer and the offsets of its lines (line i is data[offsets[i]:offsets[i + 1]])."""
    pieces, fields = [ev.name + (" " if ev.fmt else "")], []
    pos = 0
    it = iter(ev.args)
    for m in _CONV.finditer(ev.fmt):
        pieces[-1] += ev.fmt[pos : m.start()]
        pos = m.end()
        conv, flags, width = m.group("conv"), m.group("flags"), m.group("width")
        if conv == "%":
            pieces[-1] += "%"
            continue
        kind = {"p": _PTR, "x": _HEX, "X": _HEX, "d": _SIGNED, "i": _SIGNED}.get(conv, _DEC)
        prefix = ord(conv) if conv in "xX" and "#" in flags else 0
        pad = ord("0") if "0" in flags else ord(" ")
        fields.append((next(it).name, kind, int(width) if width and width.isdigit() else 0,
                       pad, prefix, conv == "X"))  # fmt: skip
        pieces.append("")
    pieces[-1] += ev.fmt[pos:]
    texts = [p.encode() for p in pieces]
    data = np.frombuffer(b"".join(texts), np.uint8)
    ends = np.cumsum([0] + [len(t) for t in texts]).astype(np.int64)
    values = np.empty((n, len(fields)), np.uint64)
    for j, (name, *_) in enumerate(fields):
        values[:, j] = np.asarray(cols[name]).astype(np.uint64, copy=False)
    spec = np.array([(*f[1:5], int(f[5])) for f in fields], np.int64).reshape(-1, 5)
    return _render_fields(data, ends, values, spec)


@njit(cache=True, nogil=True)
def _render_fields(pdata, ends, values, spec):
    """Per row: piece 0, then per field j its text and piece j + 1 (piece k is
    pdata[ends[k]:ends[k + 1]]); spec[j] = kind, width, pad byte, '#' prefix letter (0 for
    none), upper-case hex."""
    n, nf = values.shape
    bound = ends[-1]
    for j in range(nf):
        bound += max(24, spec[j, 1])
    out = np.empty(n * bound, np.uint8)
    offsets = np.zeros(n + 1, np.int64)
    tmp = np.empty(24, np.uint8)
    ten, zero, fifteen = np.uint64(10), np.uint64(0), np.uint64(15)
    p = 0
    for r in range(n):
        for j in range(nf + 1):
            copy_bytes(out, p, pdata, ends[j], ends[j + 1] - ends[j])
            p += ends[j + 1] - ends[j]
            if j == nf:
                break
            kind, width, pad, prefix, upper = (
                spec[j, 0],
                spec[j, 1],
                spec[j, 2],
                spec[j, 3],
                spec[j, 4],
            )
            v = values[r, j]
            d = 0  # the field's text, backwards, in tmp
            if kind == 3 and v == zero:
                for c in (41, 108, 105, 110, 40):  # "(nil)" backwards
                    tmp[d] = c
                    d += 1
            elif kind >= 2:
                letters = 55 if upper else 87  # 'A' - 10, 'a' - 10
                while True:
                    x = v & fifteen
                    tmp[d] = np.uint8(48 + x if x < 10 else letters + x)
                    v >>= np.uint64(4)
                    d += 1
                    if v == zero:
                        break
                if kind == 3 or prefix:
                    tmp[d] = 120 if kind == 3 else prefix
                    tmp[d + 1] = 48
                    d += 2
            else:
                negative = kind == 1 and np.int64(v) < 0
                if negative:
                    v = ~v + np.uint64(1)
                while True:
                    tmp[d] = np.uint8(48) + np.uint8(v % ten)
                    v //= ten
                    d += 1
                    if v == zero:
                        break
                if negative:
                    tmp[d] = 45
                    d += 1
            for _ in range(width - d):
                out[p] = pad
                p += 1
            for k in range(d - 1, -1, -1):
                out[p] = tmp[k]
                p += 1
        offsets[r + 1] = p
    return out[:p], offsets
