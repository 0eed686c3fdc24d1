"""Requests as the hypervisor alone sees them: the view of a capture made with xentrace only,
the most common kind, where no device model or backend logged anything.

The devices are found from the traps themselves. Xen emulates the IOAPIC, HPET and local
APIC pages itself; any other guest-physical page the guest traps on belongs to a device
model, and two kinds of register there are a virtio kick:
- a write at offset 0x50 of a page (virtio-mmio's QueueNotify);
- a page the guest only ever writes, never reads (a virtio-pci notify region: the driver
  writes a queue's index there and reads nothing).
Each kick is a row: its trap's VM exit and the vCPU's re-entry (the notify trap), the first
interrupt injected afterwards with the device's vector (the vector injected about once per
kick: kick -> irq is the device's whole service time as the hypervisor sees it), and on a
virtio-mmio device the guest's InterruptStatus read and InterruptACK write that follow.

Nothing here says what the device did between kick and interrupt, so no row is complete; the
reason names the sources that would say it, and the phases above are still measured.
"""

from __future__ import annotations

import polars as pl

from xvtrace.parsers import fields
from xvtrace.timeline import hvm

VIEW = "traps"  # requests.parquet `view`
VIEW_NAME = "hypervisor traps (xentrace alone)"
REASON = (
    "hypervisor only: what the device did between kick and interrupt is not in this capture "
    "(QEMU's events: capture --qmp SOCK, or --log FILE; dom0's block layer: --block-trace)"
)
PAGE = 0x1000
PLATFORM = (0xFEC00000, 0xFED00000, 0xFEE00000)  # IOAPIC, HPET, local APIC: Xen's own
NOTIFY, ISR, ACK = 0x50, 0x60, 0x64  # virtio-mmio registers


def trap_requests(ev: pl.LazyFrame, exits: pl.DataFrame) -> pl.DataFrame | None:
    """One row per kick found in the traps (see the module doc); None without any."""
    mmio = (
        hvm.accesses(exits)
        .filter(pl.col("kind") == "mmio")
        .with_columns((pl.col("addr") - pl.col("addr") % PAGE).alias("page"))
        .filter(~pl.col("page").is_in(PLATFORM))
    )
    pages = mmio.group_by("dom", "page").agg(
        (pl.col("dir") == "read").sum().alias("reads"), pl.len().alias("accesses")
    )
    write_only = pages.filter((pl.col("reads") == 0) & (pl.col("accesses") > 1))
    writes = mmio.filter(pl.col("dir") == "write").join(
        write_only.select("dom", "page", pl.lit(True).alias("_pci")), on=["dom", "page"], how="left"
    )
    kicks = writes.filter(pl.col("_pci").fill_null(False) | (pl.col("addr") % PAGE == NOTIFY))
    if not len(kicks):
        return None
    kicks = kicks.with_columns(
        pl.when(pl.col("_pci").fill_null(False))
        .then(pl.lit("virtio-pci"))
        .otherwise(pl.lit("virtio-mmio"))
        .alias("kick_kind")
    ).drop("_pci", "kind", "dir")
    req = _with_interrupt(kicks, ev)
    req = _after(req, mmio, "notify_ns", ISR, "read", "isr_read")
    req = _after(req, mmio, "isr_read_ns", ACK, "write", "ack")
    return req.sort("exit_ns").select(
        pl.int_range(pl.len()).alias("request"),
        device_name(req, exits).alias("dev"),
        pl.lit(None, pl.UInt16).alias("queue"),
        pl.lit("kick").alias("op"),
        pl.col("exit_ns").alias("kick_ns"),
        "notify_ns",
        (pl.col("notify_ns") - pl.col("exit_ns")).alias("kick_to_irq_ns"),
        pl.lit(False).alias("complete"),
        pl.lit(REASON).alias("reason"),
        pl.col("exit_ns").alias("trap_exit_ns"),
        pl.col("entry_ns").alias("trap_entry_ns"),
        pl.col("dom").alias("trap_dom"),
        pl.col("vcpu").alias("trap_vcpu"),
        pl.col("cpu").alias("trap_cpu"),
        "isr_read_ns", "isr_read_trap_exit_ns", "isr_read_trap_entry_ns",
        "ack_ns", "ack_trap_exit_ns", "ack_trap_entry_ns",
        "kick_kind", "vector", "injected",
        pl.lit(VIEW).alias("view"),
    )  # fmt: skip


def device_name(frame: pl.DataFrame, exits: pl.DataFrame, base: str = "page") -> pl.Expr:
    """A device is its page (or port): its address in hex, and its guest's domain too when
    several guests trap (identical guests have their devices at the same addresses)."""
    names = {p: hex(p) for p in frame[base].unique().to_list()}
    name = pl.col(base).replace_strict(names, return_dtype=pl.String)
    guests = exits.filter(pl.col("event").is_in(hvm.ACCESSES) & (pl.col("dom") != 0))["dom"]
    if guests.n_unique() > 1:
        name = pl.format("d{} {}", pl.col("dom"), name)
    return name


def _with_interrupt(kicks: pl.DataFrame, ev: pl.LazyFrame) -> pl.DataFrame:
    """Each kick's device vector (of its domain's vectors, the one injected nearest once
    per kick of the device), how often it was injected, and notify_ns, the first injection
    of it after the kick."""
    inj = (
        ev.filter(pl.col("event") == "hvm.inj_virq")
        .select("ts_ns", "dom", fields.xen("hvm.inj_virq", "vector"))
        .collect()
    )
    per_vector = inj.group_by("dom", "vector").agg(pl.len().alias("injected"))
    device = (
        kicks.group_by("dom", "page")
        .agg(pl.len().alias("kicks"))
        .join(per_vector, on="dom", how="left")
        .with_columns((pl.col("injected").cast(pl.Int64) - pl.col("kicks")).abs().alias("_d"))
        .sort("dom", "page", "_d", "vector", nulls_last=True)
        .group_by("dom", "page", maintain_order=True)
        .first()
        .select("dom", "page", "vector", pl.col("injected").fill_null(0))
    )
    irqs = inj.select("dom", "vector", pl.col("ts_ns").alias("notify_ns")).sort("notify_ns")
    return (
        kicks.join(device, on=["dom", "page"], how="left")
        .sort("exit_ns")
        .join_asof(irqs, left_on="exit_ns", right_on="notify_ns", by=["dom", "vector"],
                   strategy="forward", check_sortedness=False)
    )  # fmt: skip


def _after(req, mmio, on: str, offset: int, direction: str, prefix: str) -> pl.DataFrame:
    """The first access of `direction` to the kick's page + `offset` after `on`: its trap
    exit (`prefix`_ns, when the guest made it) and exit and re-entry."""
    regs = (
        mmio.filter((pl.col("addr") % PAGE == offset) & (pl.col("dir") == direction))
        .select(
            "dom", "page",
            pl.col("exit_ns").alias(f"{prefix}_ns"),
            pl.col("exit_ns").alias(f"{prefix}_trap_exit_ns"),
            pl.col("entry_ns").alias(f"{prefix}_trap_entry_ns"),
        )
        .sort(f"{prefix}_ns")
    )  # fmt: skip
    return req.sort(on, nulls_last=True).join_asof(
        regs, left_on=on, right_on=f"{prefix}_ns", by=["dom", "page"], strategy="forward",
        check_sortedness=False,
    )  # fmt: skip


def devices(exits: pl.DataFrame, req: pl.DataFrame, top: int = 12) -> list[dict]:
    """The guests' device registers as their traps show them (MMIO pages Xen does not
    emulate itself, and I/O ports): per register and direction the accesses and their trap
    time, exit to re-entry (for a device model's register, the IOREQ's round trip); per
    kicked device its transport, kicks and interrupt vector with its injections. The `top`
    busiest registers."""
    acc = hvm.accesses(exits).filter(pl.col("dom") != 0)
    if not len(acc):
        return []
    mmio = pl.col("kind") == "mmio"
    acc = acc.with_columns(
        pl.when(mmio).then(pl.col("addr") - pl.col("addr") % PAGE).otherwise(pl.col("addr")).alias("base"),
        ((pl.col("entry_ns") - pl.col("exit_ns")) / 1e3).alias("trap_us"),
    ).filter(~(mmio & pl.col("base").is_in(PLATFORM)))  # fmt: skip
    regs = (
        acc.group_by("dom", "kind", "base", "addr", "dir")
        .agg(pl.len().alias("accesses"),
             pl.col("trap_us").quantile(0.5, "nearest").alias("p50_us"),
             pl.col("trap_us").quantile(0.99, "nearest").alias("p99_us"))
        .sort("accesses", "addr", descending=[True, False])
        .head(top)
    )  # fmt: skip
    kicked = {  # per kicked device (the trap view's rows carry its vector and injections)
        dev: {"transport": kind, "kicks": len(g), "vector": vector, "injected": injected}
        for (dev, kind, vector, injected), g in req.group_by("dev", "kick_kind", "vector", "injected")
    } if len(req) and "kick_kind" in req.columns else {}  # fmt: skip
    regs = regs.with_columns(device_name(regs, exits, "base").alias("device"))
    out = []
    for r in regs.iter_rows(named=True):
        dev = r["device"]
        out.append({
            "dom": r["dom"], "device": dev, "kind": str(r["kind"]),
            "register": hex(r["addr"] - r["base"]) if r["kind"] == "mmio" else hex(r["addr"]),
            "dir": str(r["dir"]), "accesses": r["accesses"],
            "trap_p50_us": r["p50_us"], "trap_p99_us": r["p99_us"], **kicked.get(dev, {}),
        })  # fmt: skip
    return out
