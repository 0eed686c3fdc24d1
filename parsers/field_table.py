"""Field accessors for compiled kernels, generated from the xentrace event catalogue as
parsers.fields generates polars expressions: a kernel names a *slot* (say "vector"), and
the slot's table says, for each event id, which of its layouts' fields to read and how.

A slot lists (event, field) pairs tried in order, as `pl.coalesce(fields.xen(...), ...)`
does: the first that the record's id declares and its words carry (Xen leaves short
records' words out) gives the value; none, and the value is missing (null).

    table = FieldTable.build({"vector": [("hvm.inj_virq", "vector"), ("hvm.intr", "vector")]})
    value, present = read(table.layouts, table.rows.get(code, 0), slot, code, nargs, words)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from xvtrace.parsers import xen_events as xe

# a candidate's columns in `layouts`: words needed (-1: no candidate), low word, high word
# (-1: none), bit offset, bit width (-1: the whole value), read from the id
NEEDS, WORD, HI_WORD, LO, WIDTH, FROM_CODE = range(6)


@dataclass(frozen=True)
class FieldTable:
    slots: tuple[str, ...]
    rows: dict[int, int]  # event id -> its row of `layouts` (ids not here: row 0, none)
    layouts: np.ndarray  # (row, slot, candidate, column) int64

    @classmethod
    def build(cls, slots: dict[str, list[tuple[str, str]]]) -> FieldTable:
        rows: dict[int, list[list[xe.Field]]] = {}
        for s, pairs in enumerate(slots.values()):
            for event, name in pairs:
                found = False
                for code, spec in xe.SPECS.items():
                    if spec.name != event:
                        continue
                    for f in spec.fields:
                        if f.name == name:
                            found = True
                            rows.setdefault(code, [[] for _ in slots])[s].append(f)
                if not found:  # a typo in analysis code, as fields.xen refuses it
                    raise KeyError(f"no layout of xentrace event {event!r} has a field {name!r}")
        depth = max((len(c) for r in rows.values() for c in r), default=1)
        layouts = np.full((len(rows) + 1, len(slots), depth, 6), -1, np.int64)
        for row, cands in enumerate(rows.values(), start=1):
            for s, fs in enumerate(cands):
                for k, f in enumerate(fs):
                    lo, hi = f.bits if f.bits is not None else (0, -1)
                    layouts[row, s, k] = (f.needs_words, f.word or 0,
                                          -1 if f.hi_word is None else f.hi_word, lo, hi - lo,
                                          int(f.from_code))  # fmt: skip
        return cls(tuple(slots), {code: row for row, code in enumerate(rows, start=1)}, layouts)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def read(layouts, row, slot, code, nargs, words):
    """(value, present) of slot `slot` for a record of id `code` (its row: `rows`) carrying
    `nargs` payload words `words`."""
    for k in range(layouts.shape[2]):  # (scalars, not a row's view: a view costs a refcount)
        needs = layouts[row, slot, k, NEEDS]
        if needs < 0:
            break
        if nargs < needs:
            continue
        if layouts[row, slot, k, FROM_CODE] == 1:
            v = np.uint64(code)
        else:
            v = np.uint64(words[layouts[row, slot, k, WORD]])
            hi = layouts[row, slot, k, HI_WORD]
            if hi >= 0:
                v = v | (np.uint64(words[hi]) << np.uint64(32))
        width = layouts[row, slot, k, WIDTH]
        if width >= 0:
            v = v >> np.uint64(layouts[row, slot, k, LO])
            if width < 64:
                v = v & ((np.uint64(1) << np.uint64(width)) - np.uint64(1))
        return v, True
    return np.uint64(0), False
