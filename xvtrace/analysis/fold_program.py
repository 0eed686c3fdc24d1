"""What the summary's fold counts, declared: which events feed which of its tables, which
fields it reads (by name, from the catalogue), and the tables as frames once folded.

The loop is compiled (fold_kernel); this module is what it runs. The tables, by name:

- groups: records, bytes, first and last time per pCPU, event class, domain, vCPU and
  known or not (the totals, the log volume, the records per vCPU, each pCPU's end);
- lost_records: lost-record marks and the records they say were lost, per pCPU;
- hypercalls: per domain, kind (pv, pv-subcall, hvm) and hypercall number;
- pv_events: the PV events xenalyze counts, per domain;
- io: emulated IO port and MMIO accesses per domain, event and address;
- interrupts: virtual interrupts injected and physical ones that caused exits, per vCPU,
  kind and vector;
- grants: grant map/unmap/transfer per domain doing it, domain granting, and operation;

and the rows kept whole: every runstate change (ts_ns, cpu, sdom, svcpu, old, new) and
lost-record mark (ts_ns). The exit pairing's rows (ts_ns, role, vk, reason, port) go to
xen_fold.Exits as each chunk is folded.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import polars as pl

from xvtrace.analysis import count_map, exit_pairs
from xvtrace.analysis import fold_kernel as k
from xvtrace.parsers import fields
from xvtrace.parsers import xen_events as xe
from xvtrace.parsers import xentrace_scan as scan
from xvtrace.parsers.field_table import FieldTable
from xvtrace.parsers.schema import EVENT_NAMES, EVENT_SCHEMA

EXIT_EVENTS = list(fields.EXIT_EVENTS)
ENTRY_EVENTS = ["hvm.vmentry", "hvm.nested_vmentry"]
RUNSTATE = "sched.runstate_change"
RUNSTATE_EVENTS = [RUNSTATE, "sched.continue_running"]
INTERRUPT_EVENTS = ["hvm.inj_virq", "hvm.reinj_virq", "hvm.intr"]
IO_EVENTS = ["hvm.ioport_read", "hvm.ioport_write", "hvm.mmio_read", "hvm.mmio_write"]
GRANT_EVENTS = ["mem.grant_map", "mem.grant_unmap", "mem.grant_transfer"]
LOST = "gen.lost_records"
PV_EVENTS = {  # the PV events xenalyze counts, by its names (xenalyze.c pv_name), in its order
    "pv.hypercall": "hypercall",
    "pv.trap": "trap",
    "pv.page_fault": "page_fault",
    "pv.forced_invalid_op": "forced_invalid_op",
    "pv.emulate_privop": "emulate privop",
    "pv.emulate_4gb": "emulate 4g",
    "pv.math_state_restore": "math state restore",
    "pv.paging_fixup": "paging fixup",
    "pv.gdt_ldt_mapping_fault": "gdt/ldt mapping fault",
    "pv.ptwr_emulation": "ptwr",
    "pv.ptwr_emulation_pae": "ptwr(pae)",
    "pv.hypercall_subcall": "hypercall (subcall)",
}
HYPERCALL_KINDS = {"pv.hypercall": "pv", "pv.hypercall_subcall": "pv-subcall", "hvm.vmmcall": "hvm"}
KIND_NAMES = tuple(HYPERCALL_KINDS.values())

# Handler records that xenalyze credits to the exit they fall in (xenalyze.c, hvm_process):
# only while the exit is open, before its re-entry or the vCPU's wake-up. A read the device
# model serves is logged after the vCPU waited for it, so xenalyze counts no exit for it.
HANDLER_ROLES = {"hvm.npf": exit_pairs.NPF, "hvm.mmio_read": exit_pairs.MMIO,
                 "hvm.mmio_write": exit_pairs.MMIO, "hvm.ioport_read": exit_pairs.IO_READ,
                 "hvm.ioport_write": exit_pairs.IO_WRITE}  # fmt: skip
ROLES = (dict.fromkeys(EXIT_EVENTS, exit_pairs.EXIT) | dict.fromkeys(ENTRY_EVENTS, exit_pairs.ENTRY)
         | HANDLER_ROLES)  # fmt: skip

# the fields read, by slot (fold_kernel.S_*, in this order), each a coalesce of these
SLOTS = {
    "exit_reason": [(e, "exit_reason") for e in EXIT_EVENTS],
    "hypercall": [
        ("pv.hypercall", "op"),
        ("pv.hypercall", "eax"),
        ("pv.hypercall_subcall", "op"),
        ("hvm.vmmcall", "hypercall"),
    ],
    "vector": [(e, "vector") for e in INTERRUPT_EVENTS],
    "for_dom": [
        ("mem.grant_map", "granting_dom"),
        ("mem.grant_unmap", "granting_dom"),
        ("mem.grant_transfer", "dest_dom"),
    ],
    "lost": [(LOST, "lost")],
    "dom": [(e, "dom") for e in RUNSTATE_EVENTS],
    "vcpu": [(e, "vcpu") for e in RUNSTATE_EVENTS],
}
FEEDS = {  # event -> the tables and rows it feeds
    k.F_LOST: [LOST],
    k.F_HYPERCALL: list(HYPERCALL_KINDS),
    k.F_PV: list(PV_EVENTS),
    k.F_IO: IO_EVENTS,
    k.F_INTERRUPT: INTERRUPT_EVENTS,
    k.F_GRANT: GRANT_EVENTS,
    k.F_RUNSTATE: RUNSTATE_EVENTS,
    k.F_WAKE: [RUNSTATE],
    k.F_UNKNOWN: [xe.UNKNOWN],
}
TABLES = ("groups", "lost_records", "hypercalls", "pv_events", "io", "interrupts", "grants")


@cache
def program() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kernel's program: (ids, info, layouts). `ids`: scan.name_table of every event id
    to its row of `info` (an id not catalogued, and TRC_GUEST ids, their own rows); `info`:
    per id its event name index (the decoder's), what it feeds (FEEDS' flags), its exit
    pairing role, hypercall kind and row of `layouts`, the field slots' table (SLOTS).
    One probe of `ids` a record gives all of it."""
    fields_ = FieldTable.build(SLOTS)
    codes = sorted(xe.SPECS)
    names = [xe.SPECS[c].name for c in codes] + [xe.UNKNOWN, xe.GUEST_MARKER]
    index = {name: i for i, name in enumerate(EVENT_NAMES)}
    info = np.zeros((len(names), 5), np.int64)
    for r, name in enumerate(names):
        info[r, k.EV] = index[name]
        info[r, k.FLAGS] = sum(flag for flag, events in FEEDS.items() if name in events)
        info[r, k.ROLE] = ROLES.get(name, k.NO_ROLE)
        info[r, k.KIND] = KIND_NAMES.index(HYPERCALL_KINDS[name]) if name in HYPERCALL_KINDS else 0
        info[r, k.FIELD_ROW] = fields_.rows.get(codes[r], 0) if r < len(codes) else 0
    ids = scan.name_table(np.array(codes, np.uint32), np.arange(len(codes)), len(codes),
                          len(codes) + 1)  # fmt: skip
    return ids, info, fields_.layouts


_EVENT = EVENT_SCHEMA["event"]


def _nullable(values: np.ndarray, dtype) -> pl.Series:
    """A key field stored one more than its value (0: null) back to its value."""
    return pl.Series(values.astype(np.int64) - 1).cast(dtype).set(pl.Series(values == 0), None)


def _present(values: np.ndarray, present: np.ndarray, dtype) -> pl.Series:
    return pl.Series(values).set(pl.Series(~present), None).cast(dtype)


def tables(wide, narrow) -> dict[str, pl.DataFrame]:
    """The folded maps (fold_kernel's `wide` and `narrow`) as the summary's tables (their
    columns and dtypes as named in this module's docstring; rows in no particular order)."""
    out = {}
    for m in (wide, narrow):
        used = count_map.used(m)
        k0, k1 = used[:, count_map.K0].view(np.uint64), used[:, count_map.K1].view(np.uint64)
        table = (k1 >> np.uint64(56)).astype(np.int64)
        for t in np.unique(table):
            sel = table == t
            out[TABLES[t]] = _TABLE[TABLES[t]](k0[sel], k1[sel], used[sel, count_map.COUNT :])
    empty = np.zeros(0, np.uint64)
    for name in TABLES:
        if name not in out:
            out[name] = _TABLE[name](empty, empty, np.zeros((0, 4), np.int64))
    return out


def _field(x: np.ndarray, shift: int, bits: int) -> np.ndarray:
    return (x >> np.uint64(shift)) & np.uint64((1 << bits) - 1)


def _count(v: np.ndarray) -> pl.Series:
    return pl.Series("count", v[:, 0].astype(np.uint32))


def _events(x: np.ndarray) -> pl.Series:
    return pl.Series(np.asarray(EVENT_NAMES, dtype=object)[x.astype(np.int64)]).cast(_EVENT)


_TABLE = {
    "groups": lambda k0, k1, v: pl.DataFrame({
        "cpu": _field(k1, 0, 16).astype(np.int16),
        "cls": _field(k1, 32, 12).astype(np.uint32),
        "dom": _nullable(_field(k0, 32, 32), pl.Int32),
        "vcpu": _nullable(_field(k0, 0, 32), pl.Int32),
        "unknown": _field(k1, 48, 1).astype(np.bool_),
        "records": v[:, 0].astype(np.uint32), "bytes": v[:, 1].astype(np.uint64),
        "first_ns": v[:, 2], "last_ns": v[:, 3],
    }),
    "lost_records": lambda k0, k1, v: pl.DataFrame({
        "cpu": _field(k1, 0, 16).astype(np.int16),
        "markers": v[:, 0].astype(np.uint32), "lost": v[:, 1].astype(np.uint64),
    }),
    "hypercalls": lambda k0, k1, v: pl.DataFrame({
        "dom": _nullable(_field(k1, 0, 32), pl.Int32),
        "kind": pl.Series(np.asarray(KIND_NAMES, dtype=object)[_field(k1, 32, 8).astype(np.int64)],
                          dtype=pl.String),
        "op": _present(k0, _field(k1, 40, 1) == 1, pl.UInt64),
        "count": _count(v),
    }),
    "pv_events": lambda k0, k1, v: pl.DataFrame({
        "dom": _nullable(_field(k1, 0, 32), pl.Int32),
        "event": _events(_field(k1, 32, 16)), "count": _count(v),
    }),
    "io": lambda k0, k1, v: pl.DataFrame({
        "dom": _nullable(_field(k1, 0, 32), pl.Int32),
        "event": _events(_field(k1, 32, 16)),
        "addr": _present(k0, _field(k1, 48, 1) == 1, pl.UInt64), "count": _count(v),
    }),
    "interrupts": lambda k0, k1, v: pl.DataFrame({
        "dom": _nullable(_field(k1, 17, 17), pl.Int32),
        "vcpu": _nullable(_field(k1, 0, 17), pl.Int32),
        "kind": _events(_field(k1, 34, 16)),
        "vector": _present(k0, _field(k1, 50, 1) == 1, pl.UInt64), "count": _count(v),
    }),
    "grants": lambda k0, k1, v: pl.DataFrame({
        "by_dom": _nullable(_field(k1, 0, 34), pl.Int32),
        # (a value past a domain id's range, from a damaged record, is none: null)
        "for_dom": _present(k0, _field(k1, 50, 1) == 1, pl.UInt64).cast(pl.Int32, strict=False),
        "op": _events(_field(k1, 34, 16)), "count": _count(v),
    }),
}  # fmt: skip

RUNSTATE_SCHEMA = {"ts_ns": pl.Int64, "cpu": pl.Int16, "sdom": pl.Int32, "svcpu": pl.Int32,
                   "old": pl.UInt32, "new": pl.UInt32}  # fmt: skip


def runstate_rows(parts: list[tuple[np.ndarray, ...]]) -> pl.DataFrame:
    """The runstate changes kept (fold_kernel.RUNSTATE_ROWS, cast), as a frame."""
    if not parts:
        return pl.DataFrame(schema=RUNSTATE_SCHEMA)
    cols = [np.concatenate(c) for c in zip(*parts, strict=True)]
    df = pl.DataFrame(dict(zip(RUNSTATE_SCHEMA, cols, strict=True)), schema=RUNSTATE_SCHEMA)
    return df.with_columns(
        pl.when(pl.col(c) >= 0).then(pl.col(c)).alias(c) for c in ("sdom", "svcpu")
    )
