"""The canonical event table: one long, time-sorted table that every decoder produces.

Every source (xentrace, QEMU trace, IOREQ, virtqueue, packets) is decoded into exactly this
schema; nothing downstream reads raw files. Columns, in order:

=============  =========  ==================================================================
column         dtype      meaning
=============  =========  ==================================================================
ts_ns          Int64      time in ns on the bundle's common clock (xentrace: TSC - origin,
                          scaled by cpu_khz); records that carry no TSC take their pCPU's last
ts_raw         UInt64     the timestamp exactly as the source wrote it (TSC, counter ticks)
has_ts         Boolean    the record carried its own timestamp (False: inherited, see ts_ns)
source         Enum       which decoder produced the row (SOURCES)
cpu            Int16      physical CPU that emitted the record (null where unknown)
thread         UInt32     host thread that emitted the record (QEMU log: the tid before '@';
                          null for hypervisor records)
dom            Int32      domain the record is attributed to: for xentrace, the domain whose
                          vCPU was running on that pCPU (null while unknown)
vcpu           Int32      vCPU id within `dom` (null while unknown)
event          Enum       dotted event name, e.g. ``hvm.vmexit``, ``sched.runstate_change``,
                          ``qemu.virtqueue_pop`` (QEMU trace events keep their own names)
code           UInt32     the source's raw event id (xentrace: the 28-bit event id; QEMU:
                          the event's position in its trace-events file)
nargs          UInt8      how many of arg0..arg6 the record carries
arg0..arg6     UInt64     payload: for xentrace the raw 32-bit extra words in record order;
                          the event catalogue (xen_events) names and combines them. Never
                          null: arguments the record does not carry (index >= nargs) are 0,
                          which keeps seven validity bitmaps out of the hottest write path
addr           UInt64     the address an event is about: IO port, MMIO/NPF guest physical
                          address, descriptor address; for QEMU virtqueue and block events
                          the element / request pointer, which identifies a request while it
                          is in flight (parsers.qemu_events); for dom0 block events
                          (ftrace) the request's first sector; null where none
dev            String     device identity for virtio events (QEMU: the VirtIODevice pointer
                          as text; ftrace block events: "major,minor"; null for hypervisor
                          records)
queue          UInt16     virtqueue index
head           UInt32     descriptor head index of the virtqueue element
size           UInt32     bytes moved by the event (element length, packet length)
src_file       String     file the row was decoded from (relative to the bundle's raw/)
src_offset     UInt64     byte offset of the record in src_file
=============  =========  ==================================================================
"""

from __future__ import annotations

import polars as pl

from xvtrace.parsers.schema_version import SCHEMA_VERSION  # noqa: F401  (re-exported)
from xvtrace.parsers.trace_events import TraceEvents
from xvtrace.parsers.xen_events import EVENT_NAMES as XEN_EVENT_NAMES

SOURCES = ("xentrace", "qemu", "ioreq", "virtqueue", "pcap", "emulator", "ftrace")
SourceEnum = pl.Enum(SOURCES)

# The Enum grows as decoders for more sources register their names; keep existing order.
# Names of the decoders that are not catalogues of someone else's events (parsers.pcap,
# parsers.virtqueue, parsers.ioreq), and of device-model events QEMU's catalogue lacks that
# a backend of the test host logs in its format (tests/xen/epam: a grant unmap;
# tests/xen/stratos: the vhost-user front-end's read of its call eventfd, and each
# vhost-user message as the back-end takes it).
OWN_EVENT_NAMES = (
    "net.packet",
    "virtqueue.status",
    "virtqueue.desc",
    "virtqueue.avail",
    "virtqueue.used",
    "ioreq.slot",
    "block.rq_issue",
    "block.rq_complete",
    "block.rq_insert",
    "irq.handler_entry",
    "irq.notify_remote",
    "qemu.xen_unmap_grant",
    "qemu.vhost_user_call_read",
    "qemu.vu_message",
)
# What arg0.. of those events hold (Xen's and QEMU's catalogues say it for theirs; the
# dump names arguments by it and parsers.fields reads fields by it).
_BLOCK_ARGS = ("write", "sectors", "error")  # write: 1 when rwbs has W; addr is the sector
OWN_ARG_NAMES: dict[str, tuple[str, ...]] = {
    "net.packet": ("caplen", "ethertype", "proto", "src_ip", "dst_ip", "ports", "iface"),
    "virtqueue.desc": ("flags", "next_or_id", "grant", "gref", "page_offset"),
    "virtqueue.avail": ("pos", "avail_idx", "flags"),
    "virtqueue.used": ("pos", "used_idx"),
    "virtqueue.status": ("last_avail_idx", "shadow_avail_idx", "used_idx", "signalled_used",
                         "inuse", "num"),
    "ioreq.slot": ("data", "count", "state", "dir", "type", "data_is_ptr", "vp_eport"),
    "block.rq_issue": _BLOCK_ARGS,
    "block.rq_complete": _BLOCK_ARGS,
    "block.rq_insert": _BLOCK_ARGS,
    "irq.handler_entry": ("irq",),  # dev: the handler's name (e.g. blkif-backend)
    "irq.notify_remote": ("irq",),  # dev: the probed function
    "qemu.xen_unmap_grant": ("ptr", "count"),
    "qemu.vhost_user_call_read": ("idx", "count"),
    "qemu.vu_message": ("req", "flags"),
}  # fmt: skip
EVENT_NAMES: tuple[str, ...] = (
    *XEN_EVENT_NAMES,
    *sorted(f"qemu.{name}" for name in TraceEvents.default().events),
    *OWN_EVENT_NAMES,
)
EventEnum = pl.Enum(EVENT_NAMES)

N_ARGS = 7
ARG_COLUMNS = tuple(f"arg{i}" for i in range(N_ARGS))

EVENT_SCHEMA: dict[str, pl.DataType] = {
    "ts_ns": pl.Int64(),
    "ts_raw": pl.UInt64(),
    "has_ts": pl.Boolean(),
    "source": SourceEnum,
    "cpu": pl.Int16(),
    "thread": pl.UInt32(),
    "dom": pl.Int32(),
    "vcpu": pl.Int32(),
    "event": EventEnum,
    "code": pl.UInt32(),
    "nargs": pl.UInt8(),
    **{c: pl.UInt64() for c in ARG_COLUMNS},
    "addr": pl.UInt64(),
    "dev": pl.String(),
    "queue": pl.UInt16(),
    "head": pl.UInt32(),
    "size": pl.UInt32(),
    "src_file": pl.String(),
    "src_offset": pl.UInt64(),
}

SORT_KEY = ("ts_ns", "src_file", "src_offset")  # ties: file position (merge order)


def timestamp_tick(ns) -> int:
    """The tick of a source's timestamps in ns: 1000 when every one is a whole microsecond
    (QEMU's log backend stamps gettimeofday, truncated), else 1."""
    import numpy as np

    ns = np.asarray(ns)
    return 1000 if len(ns) and not np.any(ns % 1000) else 1


def empty_events() -> pl.DataFrame:
    return pl.DataFrame(schema=EVENT_SCHEMA)


def conform(df: pl.DataFrame) -> pl.DataFrame:
    """Add missing columns as nulls, cast to the canonical dtypes and order the columns."""
    exprs = []
    for name, dtype in EVENT_SCHEMA.items():
        if name in df.columns:
            exprs.append(pl.col(name).cast(dtype))
        else:
            exprs.append(pl.lit(None, dtype=dtype).alias(name))
    return df.select(exprs)
