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

from xvtrace.parsers.errors import XvtraceError

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


class DefinitionError(XvtraceError, ValueError):
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


def render_lines(
    ev: EventDef, cols: dict[str, np.ndarray], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """`{event} {text}` (the event alone where its format is empty) for n rows of unsigned-
    integer arguments (arrays or scalars), as QEMU's log backend prints it, compiled: one
    byte buffer and the offsets of its lines (line i is data[offsets[i]:offsets[i + 1]])."""
    # here, not at the top: the compiled renderer loads numba (0.2-0.5 s), which only the
    # emulator's writers need, not every command that reads trace-event definitions
    from xvtrace.parsers.line_render import DEC, HEX, PTR, SIGNED, Field, render

    pieces, fields, names = [ev.name + (" " if ev.fmt else "")], [], []
    pos = 0
    it = iter(ev.args)
    for m in _CONV.finditer(ev.fmt):
        pieces[-1] += ev.fmt[pos : m.start()]
        pos = m.end()
        conv, flags, width = m.group("conv"), m.group("flags"), m.group("width")
        if conv == "%":
            pieces[-1] += "%"
            continue
        kind = {"p": PTR, "x": HEX, "X": HEX, "d": SIGNED, "i": SIGNED}.get(conv, DEC)
        fields.append(Field(kind, int(width) if width and width.isdigit() else 0,
                            "0" if "0" in flags else " ",
                            conv if conv in "xX" and "#" in flags else "", conv == "X"))  # fmt: skip
        names.append(next(it).name)
        pieces.append("")
    pieces[-1] += ev.fmt[pos:]
    values = np.empty((n, len(fields)), np.uint64)
    for j, name in enumerate(names):
        values[:, j] = np.asarray(cols[name]).astype(np.uint64, copy=False)
    return render([pieces], fields, values)
