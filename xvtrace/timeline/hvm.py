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

import numpy as np
import polars as pl

from xvtrace.parsers import fields

ACCESSES = ["hvm.mmio_read", "hvm.mmio_write", "hvm.ioport_read", "hvm.ioport_write"]
# an access's kind and direction as enums: a string per access took 30 bytes of 70 at a
# million requests (3 M accesses), in every frame, sort and join that carries them
KIND, DIR = pl.Enum(["mmio", "pio"]), pl.Enum(["read", "write"])
CALLS = ["hvm.vmmcall"]
HANDLERS = [*ACCESSES, *CALLS]
EXIT, ENTRY = "hvm.vmexit", "hvm.vmentry"


def handled(ev: pl.LazyFrame) -> pl.DataFrame:
    """Every handler record (HANDLERS) after a VM exit of its vCPU: dom, vcpu, cpu, event,
    addr, hypercall (VMCALLs), exit_ns, entry_ns, src_offset, and `adjacent`: nothing else
    of the exit's (no other handler record, no other exit or entry) lies between the exit,
    the record and the entry on its vCPU."""
    # (VMCALL is the only handler record with a hypercall number)
    call = fields.xen("hvm.vmmcall", "hypercall")
    known = pl.col("dom").is_not_null() & pl.col("vcpu").is_not_null()
    vcpu_key = pl.col("dom").cast(pl.UInt64) * (1 << 16) + pl.col("vcpu").cast(pl.UInt64)
    hv = (
        ev.filter(pl.col("source") == "xentrace")
        .filter(pl.col("event").is_in([EXIT, ENTRY, *HANDLERS]))
        .select("ts_ns", "cpu", "dom", "vcpu", "event", "addr", call, "src_offset",
                pl.when(known).then(vcpu_key).otherwise((1 << 32) + pl.col("cpu").cast(pl.UInt64))
                .alias("_vk"))
        .collect()
    )  # fmt: skip
    # each vCPU's records in time order (the table's): a stable argsort of one u64 key and a
    # gather take half the memory of a two-column sort (11 M rows at 1 M requests)
    order = pl.Series(np.argsort(hv["_vk"].to_numpy(), kind="stable"))
    columns = hv.get_columns()
    del hv
    hv = gather_by_column(columns, order)
    # fills and shifts over the whole frame, sorted by vCPU, each kept only where it comes
    # from the row's own vCPU: the same as per-vCPU windows, without a window's copies
    is_exit, is_entry = pl.col("event") == EXIT, pl.col("event") == ENTRY
    vk = pl.col("_vk")
    hv = hv.with_columns(  # the vCPU of the last exit and of the next entry, once
        pl.when(is_exit).then(vk).forward_fill().alias("_exit_vk"),
        pl.when(is_entry).then(vk).backward_fill().alias("_entry_vk"),
    )
    own_exit, own_entry = pl.col("_exit_vk") == vk, pl.col("_entry_vk") == vk
    hv = hv.with_columns(
        pl.when(own_exit).then(pl.when(is_exit).then(pl.col("ts_ns")).forward_fill()).alias("exit_ns"),
        pl.when(own_entry).then(pl.when(is_entry).then(pl.col("ts_ns")).backward_fill()).alias("entry_ns"),
        ((pl.col("event").shift(1) == EXIT) & (vk.shift(1) == vk)).alias("_after_exit"),
        ((pl.col("event").shift(-1) == ENTRY) & (vk.shift(-1) == vk)).alias("_before_entry"),
    )  # fmt: skip
    found = hv.filter(pl.col("event").is_in(HANDLERS) & pl.col("exit_ns").is_not_null())
    del hv
    return found.sort("cpu", "src_offset").select(
        "dom", "vcpu", "cpu", "event", "addr", "hypercall",
        "exit_ns", "entry_ns", "src_offset",
        (pl.col("_after_exit") & pl.col("_before_entry")).fill_null(False).alias("adjacent"),
    )  # fmt: skip


def gather_by_column(columns: list[pl.Series], order: pl.Series) -> pl.DataFrame:
    """The frame of `columns` gathered in `order`, one column at a time, each dropped from
    the list once gathered: with the list the only reference to them, the frame is held
    once and one column twice, not the whole frame twice (0.4 GB at 1 M requests)."""
    out = []
    for i in range(len(columns)):
        out.append(columns[i].gather(order))
        columns[i] = None
    return pl.DataFrame(out)


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
