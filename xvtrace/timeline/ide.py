"""Per-request timelines of an emulated IDE disk (PIIX bus-master DMA, what an HVM guest
without PV drivers gets from the qemu-xen device model), from QEMU's trace events.

One DMA command at a time per channel, so the events of a request follow each other in the
log (QEMU 7.2, hw/ide/core.c, hw/ide/pci.c, dma-helpers.c):

    ide_exec_cmd       the guest's write of READ/WRITE DMA [EXT] to the command register
    bmdma_cmd_writeb   the guest's write of the start bit to the bus master's command
                       register: the transfer starts (the kick)
    ide_dma_cb         QEMU starts the transfer (sector, sectors left)       -> pop
    dma_blk_io         the block I/O is submitted                            -> handle
    dma_complete       the block I/O is done; its callback (ide_dma_cb, which traces only
                       when sectors are left) ends the command, sets the status and raises
                       IRQ 14/15, untraced                        -> io_done, complete, fill
    ide_ioport_read    the guest's interrupt handler reads the Status register, which
                       acknowledges the interrupt                            -> notify

so `fill_to_notify_ns` is the time from the device's completion to the guest's
acknowledgement (interrupt delivery and handler entry), not to QEMU raising the line.
A command with a chunked transfer (scatter lists beyond one dma_blk_io) has one
ide_dma_cb/dma_blk_io/dma_complete per chunk: the first chunk's submission and the last
chunk's completion are kept. The table has the device-model view's columns.
"""

from __future__ import annotations

import polars as pl

from xvtrace.parsers import fields
from xvtrace.timeline.phases import intervals

VIEW = "ide"  # requests.parquet `view`
DMA_COMMANDS = {0xC8: "read", 0x25: "read", 0xCA: "write", 0x35: "write"}
EVENTS = ["qemu.ide_exec_cmd", "qemu.bmdma_cmd_writeb", "qemu.ide_dma_cb", "qemu.dma_blk_io",
          "qemu.dma_complete", "qemu.ide_ioport_read"]  # fmt: skip
STATUS_PORT_OFFSET = 7  # the Status register: command block base + 7 (0x1f7, 0x177)


def ide_requests(ev: pl.LazyFrame) -> pl.DataFrame | None:
    """One row per DMA command the guest issued (see the module doc); None without any."""
    q = (
        ev.filter(pl.col("source") == "qemu")
        .filter(pl.col("event").is_in(EVENTS))
        .select("src_file", "src_offset", "ts_ns", pl.col("event").cast(pl.Utf8), "dev",
                fields.qemu("ide_exec_cmd", "cmd").alias("command"), fields.qemu("bmdma_cmd_writeb", "val"),
                fields.qemu("ide_dma_cb", "sector_num"), fields.qemu("ide_dma_cb", "n"),
                fields.qemu("ide_ioport_read", "addr").alias("port"))
        .collect()
        .sort("src_file", "src_offset")
    )  # fmt: skip
    is_cmd = (pl.col("event") == "qemu.ide_exec_cmd") & pl.col("command").is_in(list(DMA_COMMANDS))
    if not len(q.filter(is_cmd)):
        return None
    # every event belongs to the last DMA command before it (file order)
    q = q.with_columns(
        pl.when(is_cmd).then(pl.int_range(pl.len())).forward_fill().over("src_file").alias("cmd")
    ).filter(pl.col("cmd").is_not_null())
    ev_ = pl.col("event")
    dma_cb = ev_ == "qemu.ide_dma_cb"
    done = ev_ == "qemu.dma_complete"
    status = (ev_ == "qemu.ide_ioport_read") & (pl.col("port") % 8 == STATUS_PORT_OFFSET)
    bm_start = (ev_ == "qemu.bmdma_cmd_writeb") & (pl.col("val") % 2 == 1)  # the Start bit
    req = q.group_by("src_file", "cmd").agg(
        pl.col("ts_ns").filter(ev_ == "qemu.ide_exec_cmd").first().alias("cmd_ns"),
        pl.col("command").filter(ev_ == "qemu.ide_exec_cmd").first().alias("code"),
        pl.col("dev").filter(ev_ == "qemu.ide_exec_cmd").first(),  # its IDEState
        pl.col("ts_ns").filter(bm_start).first().alias("kick_ns"),
        pl.col("src_offset").filter(bm_start).first().alias("kick_off"),
        pl.col("ts_ns").filter(dma_cb).first().alias("pop_ns"),
        pl.col("src_offset").filter(dma_cb).first().alias("pop_off"),
        pl.col("sector_num").filter(dma_cb).first().alias("sector"),
        pl.col("n").filter(dma_cb).first().alias("nsectors"),
        pl.col("ts_ns").filter(ev_ == "qemu.dma_blk_io").first().alias("handle_ns"),
        pl.col("ts_ns").filter(done).last().alias("io_done_ns"),
        pl.col("src_offset").filter(done).last().alias("fill_off"),
        pl.col("ts_ns").filter(status & (pl.col("src_offset") > pl.col("src_offset").filter(done).last())).first().alias("notify_ns"),
    )  # fmt: skip
    reason = (
        pl.when(pl.col("kick_ns").is_null()).then(pl.lit("no bus-master start (not a DMA transfer, or lost)"))
        .when(pl.col("io_done_ns").is_null()).then(pl.lit("no completion (in flight at the end, or lost)"))
        .when(pl.col("notify_ns").is_null()).then(pl.lit("no Status read by the guest after completion"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )  # fmt: skip
    return (
        req.sort("src_file", "cmd")
        .with_columns(reason.alias("reason"))
        .select(
            pl.int_range(pl.len()).alias("request"),
            "src_file",
            "dev",
            pl.lit(0, dtype=pl.UInt16).alias("queue"),
            pl.lit(None, dtype=pl.UInt64).alias("elem"),
            pl.col("code").replace_strict(DMA_COMMANDS, default="other", return_dtype=pl.Utf8).alias("op"),
            (pl.col("nsectors") * 512).cast(pl.UInt64).alias("bytes"),
            "sector",
            pl.lit(None, dtype=pl.UInt64).alias("in_num"),
            pl.lit(None, dtype=pl.UInt64).alias("out_num"),
            pl.lit(None, dtype=pl.UInt32).alias("fill_len"),
            "kick_ns", "pop_ns", "handle_ns", "io_done_ns",
            pl.col("io_done_ns").alias("complete_ns"), pl.col("io_done_ns").alias("fill_ns"), "notify_ns",
            *intervals(fill="io_done_ns"),  # the completion is the fill
            pl.col("reason").is_null().alias("complete"),
            "reason", "pop_off", "fill_off", "kick_off",
            pl.lit(VIEW).alias("view"),
        )
    )  # fmt: skip
