"""Text lines from literal pieces and integer fields between them, compiled: what the
emulator's QEMU log (trace_events.render_lines) and dom0 block trace (ftrace.render_block)
are written from, straight into one byte buffer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from xvtrace.parsers.byte_copy import copy_bytes

DEC, SIGNED, HEX, PTR = 0, 1, 2, 3  # how a field is printed
SKIP = -1  # a field a variant does not print (its value is ignored)


@dataclass(frozen=True)
class Field:
    """A printf-like conversion of an unsigned 64-bit value: DEC, SIGNED (the value as
    int64), HEX, or PTR (0x-hex, "(nil)" for 0); right-aligned in `width` with `pad`;
    `prefix` "x" or "X" writes 0x / 0X before hex (printf's '#'); `left` pads after the
    text instead (printf's '-')."""

    kind: int = DEC
    width: int = 0
    pad: str = " "
    prefix: str = ""
    upper: bool = False
    left: bool = False


def _spec(f: Field | None) -> tuple[int, ...]:
    if f is None:
        return (SKIP, 0, 32, 0, 0, 0)
    return (f.kind, f.width, ord(f.pad), ord(f.prefix) if f.prefix else 0, f.upper, f.left)


def render(
    variants: list[list[str]], fields: list[Field], values: np.ndarray,
    variant: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per row r: the pieces of variants[variant[r]] (the first where `variant` is None;
    len(fields) + 1 texts each) with the fields' values of row r between them. One byte
    buffer and the offsets of its lines (line i is data[offsets[i]:offsets[i + 1]])."""
    return render_variants(variants, [fields] * len(variants), values, variant)


def render_variants(
    variants: list[list[str]], fields: list[list[Field | None]], values: np.ndarray,
    variant: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """render() where each variant has its own fields (fields[v], None where variant v
    prints nothing for that column)."""
    n, nf = len(values), values.shape[1] if values.ndim == 2 else -1
    if any(len(v) != nf + 1 for v in variants) or any(len(f) != nf for f in fields):
        raise ValueError("each variant needs a piece before, between and after the fields")
    if variant is None:
        variant = np.zeros(n, np.int64)
    variant = np.asarray(variant, np.int64)
    if len(variant) != n or (n and (variant.min() < 0 or variant.max() >= len(variants))):
        raise ValueError("a row's variant is not one of the variants")  # indexed unchecked
    texts = [p.encode() for v in variants for p in v]
    flat = np.cumsum([0] + [len(t) for t in texts]).astype(np.int64)
    ends = np.stack([flat[i * (nf + 1) : i * (nf + 1) + nf + 2] for i in range(len(variants))])
    spec = np.array([[_spec(f) for f in fs] for fs in fields], np.int64).reshape(len(fields), nf, 6)
    # (SHORT bytes readable past every piece: a short piece is copied as SHORT at once)
    data = np.frombuffer(b"".join(texts) + bytes(SHORT), np.uint8)
    return _render(data, ends, variant, np.ascontiguousarray(values, np.uint64), spec)


SHORT = 16  # pieces up to this long are copied by a fixed-size move, not a memcpy call
PAIRS = np.frombuffer("".join(f"{i:02d}" for i in range(100)).encode(), np.uint8).copy()


@njit(cache=True, nogil=True)
def _render(pdata, ends, variant, values, spec):
    """Per row: piece 0 of its variant v, then per field j its text and piece j + 1 (piece
    k is pdata[ends[v, k]:ends[v, k + 1]]); spec[j] = kind, width, pad byte, prefix letter
    (0 for none), upper-case hex, left-justified; all per variant (spec[v, j])."""
    n, nf = values.shape
    longest = 0
    for v in range(ends.shape[0]):
        longest = max(longest, ends[v, nf + 1] - ends[v, 0])
    bound = longest
    for j in range(nf):
        widest = 0
        for v in range(spec.shape[0]):
            widest = max(widest, spec[v, j, 1])
        bound += max(24, widest)  # 20 decimal digits and a sign, or "0x" and 16 hex
    out = np.empty(n * bound + SHORT, np.uint8)  # (a short copy writes up to SHORT past)
    offsets = np.zeros(n + 1, np.int64)
    tmp = np.empty(24, np.uint8)
    # uint64 throughout: mixed with int64, numba computes in floats
    ten, zero, fifteen, four = np.uint64(10), np.uint64(0), np.uint64(15), np.uint64(4)
    hundred = np.uint64(100)
    p = 0
    for r in range(n):
        v = variant[r]
        for j in range(nf + 1):
            a, b = ends[v, j], ends[v, j + 1]
            if b - a <= SHORT:  # inlined: a memcpy call per piece cost a tenth of a line
                copy_bytes(out, p, pdata, a, SHORT)
            else:
                copy_bytes(out, p, pdata, a, b - a)
            p += b - a
            if j == nf:
                break
            kind, width, pad, prefix, upper = spec[v, j, 0], spec[v, j, 1], spec[v, j, 2], spec[v, j, 3], spec[v, j, 4]  # fmt: skip
            if kind == SKIP:
                continue
            x = values[r, j]
            d = 0  # the field's text, backwards, in tmp
            if kind == PTR and x == zero:
                for c in (41, 108, 105, 110, 40):  # "(nil)" backwards
                    tmp[d] = c
                    d += 1
            elif kind >= HEX:
                letters = 55 if upper else 87  # 'A' - 10, 'a' - 10
                while True:
                    h = x & fifteen
                    tmp[d] = np.uint8(48 + h if h < 10 else letters + h)
                    x >>= four
                    d += 1
                    if x == zero:
                        break
                if kind == PTR or prefix:
                    tmp[d] = 120 if kind == PTR else prefix
                    tmp[d + 1] = 48
                    d += 2
            else:
                negative = kind == SIGNED and np.int64(x) < 0
                if negative:
                    x = ~x + np.uint64(1)
                while x >= hundred:  # two digits a division ("00".."99" in PAIRS)
                    q = x // hundred
                    t = 2 * (x - q * hundred)
                    tmp[d], tmp[d + 1] = PAIRS[t + 1], PAIRS[t]
                    d += 2
                    x = q
                if x >= ten:
                    tmp[d], tmp[d + 1] = PAIRS[2 * x + 1], PAIRS[2 * x]
                    d += 2
                else:
                    tmp[d] = np.uint8(48) + np.uint8(x)
                    d += 1
                if negative:
                    tmp[d] = 45
                    d += 1
            left = spec[v, j, 5]
            for _ in range(0 if left else width - d):
                out[p] = pad
                p += 1
            for k in range(d - 1, -1, -1):
                out[p] = tmp[k]
                p += 1
            for _ in range(width - d if left else 0):
                out[p] = pad
                p += 1
        offsets[r + 1] = p
    return out[:p], offsets
