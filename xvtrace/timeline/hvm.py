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
    its columns, written as soon as they are final, then a pCPU at a time in its offsets'
    order (file_order.batches). Held: the pairing's numbers for the handler records still
    waiting for their vCPU's entry (for all of them, they were 0.4 GB at 5 M requests; their
    columns, read whole and gathered, 1.0 GiB). `scratch`: a directory for the records on
    their way."""
    xen = ev.filter(pl.col("source") == "xentrace")
    records = xen.filter(pl.col("event").is_in([EXIT, ENTRY, *HANDLERS]))
    # (VMCALL is the only handler record with a hypercall number)
    call = fields.xen("hvm.vmmcall", "hypercall")
    handlers = xen.filter(pl.col("event").is_in(HANDLERS))
    columns = scratch / "handlers.parquet"
    table_order = scratch / "handled-table-order.parquet"
    try:
        handlers.select("dom", "vcpu", "cpu", "event", "addr", call, "src_offset").sink_parquet(
            columns, **SPILL_OPTIONS
        )
        rows = partial(_in_table_order, records, pl.scan_parquet(columns), scratch)
        schema = _in_table_order_schema(pl.scan_parquet(columns))
        sink_frames(rows, schema, table_order, **SPILL_OPTIONS)
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


def _in_table_order(
    records: pl.LazyFrame, columns: pl.LazyFrame, scratch: Path
) -> Iterator[pl.DataFrame]:
    """The handler records' `columns` (a scan, in the table's order) with their exit,
    entry and adjacency, as soon as they are final, only the paired ones (an exit found), a
    missing entry made null: two narrow passes in the table's time order, not a sort of
    every exit's columns. Each record's vCPU and role go through the compiled pairing a
    chunk at a time (its state carried on); the handlers' numbers are kept in a window from
    the first one still waiting for its vCPU's next record or entry (`hvm_kernel.pending`)."""
    from xvtrace.timeline import hvm_kernel  # numba (0.25 s to import) only to build: a

    # stored timeline needs none
    from xvtrace.timeline.hvm_kernel import ENTRY_ROLE, EXIT_ROLE, HANDLER_ROLE

    is_exit, is_entry = pl.col("event") == EXIT, pl.col("event") == ENTRY
    vi, n_vcpus, _ = _vcpu_index(records)
    rows = records.select(
        "ts_ns", vi,
        pl.when(is_exit).then(EXIT_ROLE).when(is_entry).then(ENTRY_ROLE)
        .otherwise(HANDLER_ROLE).cast(pl.UInt8).alias("role"),
    )  # fmt: skip
    state = hvm_kernel.new_state(n_vcpus)
    window = _Window()  # the numbers of handlers base.. (the first `base` are written)
    for chunk in batches_through(rows, scratch / "records.parquet", CHUNK_RECORDS):
        role = chunk["role"].to_numpy()
        first = window.grow(int(np.count_nonzero(role == HANDLER_ROLE)))
        end = hvm_kernel.pair_chunk(
            chunk["vi"].to_numpy(), chunk["ts_ns"].to_numpy(), role, first, state,
            window.exit_ns, window.entry_ns, window.after_exit, window.before_entry, window.link,
        )  # fmt: skip
        final = hvm_kernel.pending(state, end)
        yield from window.written(columns, final)
        hvm_kernel.shift(state, window.link[: window.n], final)
    yield from window.written(columns, window.n)


class _Window:
    """The pairing's numbers of a run of handler records, base.. (`n` of them, in arrays
    grown by doubling), the first ones cut when final and the rest moved down."""

    NAMES = ("exit_ns", "entry_ns", "link", "after_exit", "before_entry")

    def __init__(self):
        from xvtrace.timeline.hvm_kernel import NONE

        self.base, self.n, self.none = 0, 0, NONE
        self.exit_ns = self.entry_ns = self.link = np.zeros(0, np.int64)
        self.after_exit = self.before_entry = np.zeros(0, np.bool_)

    def grow(self, k: int) -> int:
        """Room for `k` more handlers; where the first of them goes. (A handler that
        never sees its vCPU's entry keeps every later one in the window: doubling, not a
        copy per chunk.)"""
        at, self.n = self.n, self.n + k
        if self.n > len(self.exit_ns):
            size = max(self.n, 2 * len(self.exit_ns))
            for name in self.NAMES:
                old = getattr(self, name)
                new = np.empty(size, old.dtype)
                new[:at] = old[:at]
                setattr(self, name, new)
        self.exit_ns[at : self.n] = self.none
        self.entry_ns[at : self.n] = self.none
        self.after_exit[at : self.n] = False
        self.before_entry[at : self.n] = False
        return at

    def written(self, columns: pl.LazyFrame, final: int) -> Iterator[pl.DataFrame]:
        """The first `final` handlers of the window with their columns, SLICE_ROWS at a
        time, only the paired ones; then the window starts after them."""
        entry, none = pl.col("entry_ns"), self.none
        for lo in range(0, final, SLICE_ROWS):
            at = slice(lo, min(lo + SLICE_ROWS, final))
            part = columns.slice(self.base + lo, at.stop - lo).collect()
            # (copies: polars may keep numpy's memory, which the window then reuses)
            exit_ns = self.exit_ns[at].copy()
            part = pl.DataFrame([
                *part.select("dom", "vcpu", "cpu", "event", "addr", "hypercall").get_columns(),
                pl.Series("exit_ns", exit_ns),
                pl.Series("entry_ns", self.entry_ns[at].copy()),
                part["src_offset"],
                pl.Series("adjacent", self.after_exit[at] & self.before_entry[at]),
            ])  # fmt: skip
            yield part.filter(pl.Series(exit_ns != none)).with_columns(
                pl.when(entry != none).then(entry).alias("entry_ns")
            )
        if final:
            for name in self.NAMES:
                values = getattr(self, name)
                values[: self.n - final] = values[final : self.n]
            self.base, self.n = self.base + final, self.n - final


def _in_table_order_schema(columns: pl.LazyFrame) -> pl.Schema:
    """The schema of `_in_table_order`'s frames."""
    part = columns.head(0).collect()
    return pl.DataFrame([
        *part.select("dom", "vcpu", "cpu", "event", "addr", "hypercall").get_columns(),
        pl.Series("exit_ns", [], pl.Int64), pl.Series("entry_ns", [], pl.Int64),
        part["src_offset"], pl.Series("adjacent", [], pl.Boolean),
    ]).schema  # fmt: skip


def _vcpu_index(records: pl.LazyFrame) -> tuple[pl.Expr, int, int]:
    """Each record's vCPU as a dense index (`vi`; a record whose vCPU is not known yet is
    its pCPU's: it pairs with that pCPU's records), how many indexes there are, and how
    many handler records."""
    known = pl.col("dom").is_not_null() & pl.col("vcpu").is_not_null()
    # (streamed: read whole, the four columns of 60 M records at 5 M requests were 0.6 GiB)
    doms = records.filter(known).select(pl.col("dom").unique()).collect(engine="streaming")
    seen = records.select(
        pl.col("vcpu").filter(known).max(),
        pl.col("cpu").max(),
        pl.col("event").is_in(HANDLERS).sum(),
    ).collect(engine="streaming")
    top, cpus, handlers = seen.row(0)
    doms = doms.to_series().sort().to_list()
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
