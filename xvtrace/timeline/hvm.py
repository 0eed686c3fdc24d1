"""The HVM exit primitive: a guest's trap as the hypervisor records it, one VM exit, the
records its handler wrote (an emulated MMIO or port access, a VMCALL), and the vCPU's
next VM entry. Kicks (timeline.hypervisor), the device-model clock's pairs (timeline.clock)
and the IOREQ join (timeline.ioreqs) are all built on `handled`.

A handler record follows the exit it came in with on its vCPU, not always on its pCPU: a
read the device model serves is logged when the vCPU resumes after waiting for it, and a
vCPU of two may resume on the other pCPU, after the other vCPU's exits there. Its entry is
the vCPU's next one, on whichever pCPU. (Records of a pCPU whose vCPU is not known yet
pair on their pCPU.)
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl

from xvtrace.bundle import file_order
from xvtrace.bundle.frame_sink import SPILL_OPTIONS, batches_through, sink_frames
from xvtrace.parsers import fields

ACCESSES = ["hvm.mmio_read", "hvm.mmio_write", "hvm.ioport_read", "hvm.ioport_write"]
# an access's kind and direction as enums: a string per access took 30 bytes of 70 at a
# million requests (3 M accesses), in every frame, sort and join that carries them
KIND, DIR = pl.Enum(["mmio", "pio"]), pl.Enum(["read", "write"])
CALLS = ["hvm.vmmcall"]
HANDLERS = [*ACCESSES, *CALLS]
EXIT, ENTRY = "hvm.vmexit", "hvm.vmentry"
CHUNK_RECORDS = 1 << 20  # exit, entry and handler records paired at a time


def handled(ev: pl.LazyFrame) -> pl.DataFrame:
    """Every handler record (HANDLERS) after a VM exit of its vCPU: dom, vcpu, cpu, event,
    addr, hypercall (VMCALLs), exit_ns, entry_ns, src_offset, and `adjacent`: nothing else
    of the exit's (no other handler record, no other exit or entry) lies between the exit,
    the record and the entry on its vCPU. In order of pCPU, then the record's offset."""
    with tempfile.TemporaryDirectory(prefix="xvtrace-exits-") as scratch:
        write_handled(ev, Path(scratch) / "handled.parquet", Path(scratch))
        return pl.read_parquet(Path(scratch) / "handled.parquet")


SLICE_ROWS = 1 << 18  # handler records written at a time


def write_handled(ev: pl.LazyFrame, path: Path, scratch: Path, **options) -> None:
    """`handled(ev)` written to the parquet file `path` (`options`: sink_parquet's) a slice
    at a time: first in the table's order, each record's exit, entry and adjacency beside
    its columns, then a pCPU at a time in its offsets' order (file_order.batches). Held
    whole: three numbers per handler record (its columns, read whole and gathered into
    `handled`'s order, were 1.0 GiB at 5 M requests). `scratch`: a directory for the
    records on their way."""
    from xvtrace.timeline import hvm_kernel  # numba (0.25 s to import) only to build: a

    # stored timeline needs none
    from xvtrace.timeline.hvm_kernel import ENTRY_ROLE, EXIT_ROLE, HANDLER_ROLE, NONE

    xen = ev.filter(pl.col("source") == "xentrace")
    is_exit, is_entry = pl.col("event") == EXIT, pl.col("event") == ENTRY
    # two narrow passes in the table's time order, not a sort of every exit's columns: each
    # record's vCPU and role a chunk at a time through the pairing, then the handler
    # records' own columns (the same order)
    records = xen.filter(pl.col("event").is_in([EXIT, ENTRY, *HANDLERS]))
    vi, n_vcpus, n = _vcpu_index(records)
    exit_ns, entry_ns = np.full(n, NONE, np.int64), np.full(n, NONE, np.int64)
    after_exit, before_entry = np.zeros(n, np.bool_), np.zeros(n, np.bool_)
    link, state, done = np.empty(n, np.int64), hvm_kernel.new_state(n_vcpus), 0
    rows = records.select(
        "ts_ns", vi,
        pl.when(is_exit).then(EXIT_ROLE).when(is_entry).then(ENTRY_ROLE)
        .otherwise(HANDLER_ROLE).cast(pl.UInt8).alias("role"),
    )  # fmt: skip
    for chunk in batches_through(rows, scratch / "records.parquet", CHUNK_RECORDS):
        done = hvm_kernel.pair_chunk(
            chunk["vi"].to_numpy(), chunk["ts_ns"].to_numpy(), chunk["role"].to_numpy(), done,
            state, exit_ns, entry_ns, after_exit, before_entry, link,
        )  # fmt: skip
    del link, state
    adjacent = after_exit & before_entry
    del after_exit, before_entry
    # (VMCALL is the only handler record with a hypercall number)
    call = fields.xen("hvm.vmmcall", "hypercall")
    handlers = xen.filter(pl.col("event").is_in(HANDLERS))
    columns = scratch / "handlers.parquet"
    table_order = scratch / "handled-table-order.parquet"
    rows = partial(_in_table_order, pl.scan_parquet(columns), exit_ns, entry_ns, adjacent)
    del exit_ns, entry_ns, adjacent  # (`rows` holds them while they are written)
    try:
        handlers.select("dom", "vcpu", "cpu", "event", "addr", call, "src_offset").sink_parquet(
            columns, **SPILL_OPTIONS
        )
        schema = next(rows()).schema
        sink_frames(rows, schema, table_order, **SPILL_OPTIONS)
        del rows
        columns.unlink()
        found = pl.scan_parquet(table_order)
        cpus = found.select(pl.col("cpu").unique().sort()).collect()["cpu"]

        def in_cpu_order():  # (a pCPU's records: in its file's order, as the table has them)
            yield found.head(0).collect()
            for cpu in cpus:
                mine = found.filter(
                    pl.col("cpu").is_null() if cpu is None else pl.col("cpu") == cpu
                )
                yield from file_order.batches(mine, scratch / "handled-cpu.parquet")

        sink_frames(in_cpu_order, schema, path, **options)
    finally:
        columns.unlink(missing_ok=True)
        table_order.unlink(missing_ok=True)


def _in_table_order(columns: pl.LazyFrame, exit_ns, entry_ns, adjacent) -> Iterator[pl.DataFrame]:
    """The handler records' `columns` (a scan, in the table's order) with their exit,
    entry and adjacency, SLICE_ROWS at a time, only the paired ones (an exit found), a
    missing entry (NONE) made null."""
    from xvtrace.timeline.hvm_kernel import NONE

    entry = pl.col("entry_ns")
    for lo in range(0, max(len(exit_ns), 1), SLICE_ROWS):
        part = columns.slice(lo, SLICE_ROWS).collect()
        at = slice(lo, lo + len(part))
        part = pl.DataFrame([
            *part.select("dom", "vcpu", "cpu", "event", "addr", "hypercall").get_columns(),
            pl.Series("exit_ns", exit_ns[at]),
            pl.Series("entry_ns", entry_ns[at]),
            part["src_offset"],
            pl.Series("adjacent", adjacent[at]),
        ])  # fmt: skip
        yield part.filter(pl.Series(exit_ns[at] != NONE)).with_columns(
            pl.when(entry != NONE).then(entry).alias("entry_ns")
        )


def _vcpu_index(records: pl.LazyFrame) -> tuple[pl.Expr, int, int]:
    """Each record's vCPU as a dense index (`vi`; a record whose vCPU is not known yet is
    its pCPU's: it pairs with that pCPU's records), how many indexes there are, and how
    many handler records."""
    known = pl.col("dom").is_not_null() & pl.col("vcpu").is_not_null()
    seen = records.select(
        pl.col("dom").filter(known).unique().sort().implode(),
        pl.col("vcpu").filter(known).max(),
        pl.col("cpu").max(),
        pl.col("event").is_in(HANDLERS).sum(),
    ).collect()
    doms, top, cpus, handlers = seen.row(0)
    doms = doms.to_list() if isinstance(doms, pl.Series) else list(doms)
    width = 1 if top is None else int(top) + 1
    index = pl.lit(0, pl.Int64)  # (a chain of whens streams: replace_strict held every row)
    for i, dom in enumerate(doms[1:], 1):  # (the first dom's index is the 0 otherwise)
        index = pl.when(pl.col("dom") == dom).then(pl.lit(i, pl.Int64)).otherwise(index)
    vi = (
        pl.when(known).then(index * width + pl.col("vcpu").cast(pl.Int64))
        .otherwise(len(doms) * width + pl.col("cpu").cast(pl.Int64))
        .alias("vi")
    )  # fmt: skip
    return vi, len(doms) * width + (0 if cpus is None else int(cpus) + 1), int(handlers or 0)


def accesses(exits: pl.DataFrame) -> pl.DataFrame:
    """The emulated accesses among `handled`: dom, vcpu, cpu, kind (mmio, pio), dir (read,
    write), addr, exit_ns, entry_ns, src_offset."""
    name = pl.col("event")
    return exits.filter(name.is_in(ACCESSES)).select(
        "dom", "vcpu", "cpu",
        pl.when(name.is_in(ACCESSES[:2])).then(pl.lit("mmio")).otherwise(pl.lit("pio")).cast(KIND).alias("kind"),
        pl.when(name.is_in(ACCESSES[1::2])).then(pl.lit("write")).otherwise(pl.lit("read")).cast(DIR).alias("dir"),
        "addr", "exit_ns", "entry_ns", "src_offset",
    )  # fmt: skip


NOTIFY_OFFSET = 0x50  # virtio-mmio QueueNotify
KICK_HYPERCALLS = (32, 39)  # event_channel_op, argo_op (a VMCALL from the guest)


def kicks(exits: pl.DataFrame) -> pl.DataFrame:
    """The guests' notifications among `handled`, each alone in its exit: a write to a
    virtio-mmio QueueNotify register or an event_channel_op / argo_op VMCALL. dom, vcpu,
    cpu (pCPU), exit_ns, entry_ns, kind (mmio or hypercall)."""
    mmio = (pl.col("event") == "hvm.mmio_write") & (pl.col("addr") % 0x1000 == NOTIFY_OFFSET)
    call = (pl.col("event") == "hvm.vmmcall") & (pl.col("hypercall") & 0xFFFFF).is_in(
        KICK_HYPERCALLS
    )
    return exits.filter((mmio | call) & pl.col("adjacent")).select(
        "dom", "vcpu", "cpu", "exit_ns", "entry_ns",
        pl.when(mmio).then(pl.lit("mmio")).otherwise(pl.lit("hypercall")).alias("kind"),
    )  # fmt: skip
