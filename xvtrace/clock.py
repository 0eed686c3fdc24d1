"""Clock alignment between the hypervisor (xentrace TSC, through cpu_khz) and the device model
(QEMU's log clock), from causally ordered pairs of events, not from the clocks themselves.

For a virtio-mmio transport every guest kick is a trap the hypervisor records (a VMEXIT with
an MMIO write to QueueNotify) and an IOREQ the device model records (handle_ioreq for that
address) after it; and the vCPU re-enters (VMENTRY) only after the device model is done with
that IOREQ (its last event before the next one). With D = device-model time - hypervisor
time for the same instant:

    handle_ioreq(dm) >= exit(hv)          =>  D <= min(dm_handle - hv_exit)
    vmentry(hv) >= last event of the IOREQ(dm)  =>  D >= max(dm_last - hv_entry)

so D lies in [lower, upper]; the estimate is the middle and the bounds are its residual.
Pairs are taken per vCPU in order: the vCPU's k-th notify trap with the k-th IOREQ from its
ioreq slot (QEMU names the slot's ioreq_t pointer; slots are in vCPU order).
"""

from __future__ import annotations

import polars as pl

NOTIFY_OFFSET = 0x50  # virtio-mmio QueueNotify
# what QEMU does inside a QueueNotify IOREQ before it completes it
IOREQ_HANDLING = [
    "qemu.handle_ioreq", "qemu.virtio_mmio_write_offset", "qemu.virtio_queue_notify",
    "qemu.virtqueue_alloc_element", "qemu.virtqueue_pop", "qemu.virtio_blk_handle_read",
    "qemu.virtio_blk_handle_write", "qemu.xen_map_cache", "qemu.xen_map_cache_return",
]  # fmt: skip


def notify_pairs(ev: pl.LazyFrame) -> pl.DataFrame | None:
    """Each QueueNotify trap with its IOREQ: dom, vcpu, exit_ns, entry_ns (hypervisor clock)
    and handle_off, handle_ns, last_ns (device-model clock); None without both sides."""
    hv = (
        ev.filter(pl.col("source") == "xentrace")
        .filter(pl.col("event").is_in(["hvm.vmexit", "hvm.mmio_write", "hvm.vmentry"]))
        .select("ts_ns", "cpu", "dom", "vcpu", "event", "addr", "src_offset")
        .collect()
        .sort("cpu", "src_offset")
    )
    dm = (
        ev.filter(pl.col("source") == "qemu")
        .select("ts_ns", "event", "addr", "arg0", "src_offset")
        .collect()
        .sort("src_offset")
    )
    if not len(hv) or not len(dm.filter(pl.col("event") == "qemu.handle_ioreq")):
        return None
    # hypervisor: each notify trap = the exit before an mmio_write to QueueNotify, and the
    # entry after it, per pCPU in record order
    hv = hv.with_columns(
        pl.col("ts_ns").shift(1).over("cpu").alias("exit_ns"),
        pl.col("event").shift(1).over("cpu").alias("prev"),
        pl.col("ts_ns").shift(-1).over("cpu").alias("entry_ns"),
        pl.col("event").shift(-1).over("cpu").alias("next"),
    )
    traps = hv.filter(
        (pl.col("event") == "hvm.mmio_write") & (pl.col("addr") % 0x1000 == NOTIFY_OFFSET)
        & (pl.col("prev") == "hvm.vmexit") & (pl.col("next") == "hvm.vmentry")
    ).select("dom", "vcpu", "exit_ns", "entry_ns")  # fmt: skip
    # device model: each notify IOREQ's span = its handle_ioreq .. the last event of its
    # synchronous handling (the queue kick QEMU processes before completing the IOREQ)
    dm = dm.with_columns(pl.col("event").eq("qemu.handle_ioreq").cum_sum().alias("io"))
    last = (
        dm.filter(pl.col("event").is_in(IOREQ_HANDLING))
        .group_by("io")
        .agg(pl.col("ts_ns").max().alias("last_ns"))
    )
    spans = (
        dm.filter(
            (pl.col("event") == "qemu.handle_ioreq") & (pl.col("addr") % 0x1000 == NOTIFY_OFFSET)
        )
        .join(last, on="io")
        .sort("src_offset")
        .select(
            pl.col("arg0").alias("slot"),
            pl.col("src_offset").alias("handle_off"),
            pl.col("ts_ns").alias("handle_ns"),
            "last_ns",
        )
    )
    slots = sorted(spans["slot"].unique().to_list())
    vcpus = traps.select("dom", "vcpu").unique().sort("dom", "vcpu").rows()
    out = []
    for (dom, vcpu), slot in zip(vcpus, slots, strict=False):  # per vCPU, not per request
        t = traps.filter((pl.col("dom") == dom) & (pl.col("vcpu") == vcpu))
        s = spans.filter(pl.col("slot") == slot)
        k = min(len(t), len(s))
        out.append(pl.concat([t.head(k), s.head(k).drop("slot")], how="horizontal"))
    return pl.concat(out) if out else None


def align_device_model(pairs: pl.DataFrame | None) -> dict | None:
    """Offset of the device model's clock against the hypervisor's (ns), with bounds, from
    `notify_pairs`; None when the bundle lacks either side of the pairs (no MMIO notify
    traps)."""
    if pairs is None or not len(pairs):
        return None
    upper = int((pairs["handle_ns"] - pairs["exit_ns"]).min())
    lower = int((pairs["last_ns"] - pairs["entry_ns"]).max())
    return {
        "offset_ns": (lower + upper) // 2,  # add to a hypervisor time to get device-model time
        "lower_ns": lower,
        "upper_ns": upper,
        "consistent": lower <= upper,
        "pairs": len(pairs),
        "method": "MMIO QueueNotify traps (xentrace) before handle_ioreq (QEMU); VMENTRY after the IOREQ's last event",
    }
