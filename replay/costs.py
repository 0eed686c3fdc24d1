"""The cost table: the duration of every operation the transports use, per platform profile,
each with the source of the number. One table, so every number is in one place.

`ns` columns are per unit of the key's scale (per request, per 4 KiB page, per byte); the
transports say which scale each operation uses. `calibrate` (issue 7) fits a table like this
one from a capture; `--costs FILE` replaces rows by key.
"""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl

from xvtrace.parsers.errors import XvtraceError

PROFILES = ("x86_64", "arm64")

# key | layer | x86_64 ns | arm64 ns | jitter (lognormal sigma) | source
# Layers: `host` is a primitive of the host that every transport on it shares (a VM exit and
# its decode, an IOREQ's dispatch to a dom0 process and its completion, a hypercall, event
# channel and virtual interrupt delivery, foreign and grant mappings, a dom0 thread's
# wake-up, a copy); `backend` the work of one backend implementation (QEMU's virtqueue
# handling, blkback, a vhost-user process, Argo's receiver); `guest` the guest driver's;
# `device` the device and the wire. A transport's path (replay.transports) is composed from
# them, so a host primitive fitted on one transport's capture prices it in every other.
# Only the numbers whose source says "measured" come from a publication; the rest are
# estimates with their reasoning, to be replaced by `xvtrace calibrate` on real captures.
# Arm64 estimates scale x86 by 1.15 (slower cores, faster traps where Xen runs in EL2).
_TABLE = """
key                         | layer   | x86_64   | arm64    | sigma | source
guest.ring_submit           | guest   | 300      | 350      | 0.2   | estimate: a few hundred instructions to add a split-ring descriptor chain and avail entry (Linux virtio_ring.c virtqueue_add_split)
guest.ring_complete         | guest   | 400      | 450      | 0.2   | estimate: used-ring walk, detach_buf and bio completion in the guest driver
guest.isr_work              | guest   | 200      | 230      | 0.2   | estimate: Linux vm_interrupt between its InterruptStatus read and its InterruptACK write: a few instructions (drivers/virtio/virtio_mmio.c)
guest.grant_entry           | guest   | 80       | 90       | 0.2   | estimate: one grant-table entry write per page (gnttab_grant_foreign_access_ref)
xen.mmio_trap               | host    | 1200     | 900      | 0.3   | measured + estimate: a VM exit's direct cost is 2,000 cycles = 680 ns on a Xeon X5570 at 2.93 GHz (Landau, Ben-Yehuda, Gordon, SplitX, IBM Research, KVM); plus EPT-violation decode and MMIO emulation (estimate). Arm stage-2 traps are cheaper for Xen in EL2 (estimate)
xen.ioreq_dispatch          | host    | 4000     | 4600     | 0.4   | proxy + estimate: a trap served by a user-space device model and back costs 6,209-6,856 cycles under KVM (kvm-unit-tests inl_from_qemu, Lutomirski, Linux commit b7ffc44d5b2e; CPU not stated); Xen adds an event channel to dom0 and its vCPU wake-up (estimate)
xen.ioreq_complete          | host    | 2000     | 2300     | 0.4   | estimate: the backend sets IORESP_READY and notifies; the guest vCPU unblocks and re-enters
xen.evtchn_send             | host    | 1500     | 1100     | 0.3   | measured: a Xen null hypercall takes about 3,300 cycles on an AMD Athlon X2 (Keir Fraser, xen.git f64b7618e1 "svm: Avoid VMSAVE/VMLOAD..."), ~1.5 us at 2.2 GHz; Arm estimate lower (hypercalls trap straight to EL2)
xen.evtchn_latency          | host    | 5000     | 5800     | 0.4   | estimate: event channel pending bit to the receiving vCPU running its upcall, including a wake-up from blocked (scheduler + VM entry)
xen.dm_op_irq               | host    | 1500     | 1700     | 0.3   | estimate: one dm_op(set_irq_level) hypercall from dom0 (see xen.evtchn_send) raising the line at the virtual interrupt controller
xen.virq_latency            | host    | 5000     | 5800     | 0.4   | estimate: as xen.evtchn_latency: the device model's interrupt line to the vCPU running the guest's ISR, including a wake-up from blocked (scheduler + VM entry injecting the vector)
epam.isr_trap               | host    | 7200     | 7800     | 0.4   | derived: the ISR's InterruptStatus read and its InterruptACK write are each an MMIO trap with an IOREQ round trip: xen.mmio_trap + xen.ioreq_dispatch + xen.ioreq_complete
xen.grant_map               | host    | 1500     | 1700     | 0.3   | estimate: GNTTABOP_map_grant_ref per page, a hypercall (xen.evtchn_send) plus a page-table update; blkback's persistent grants exist to avoid it (Citrix/Pau Monne 2012: unmap IPIs capped blkback at 650,000 IOPS with 5 guests on a 24-vCPU dom0)
xen.grant_unmap             | host    | 3000     | 3400     | 0.3   | estimate: GNTTABOP_unmap_grant_ref per page including the TLB-flush IPIs it forces (same 2012 measurement names them the bottleneck)
xen.grant_copy              | host    | 530      | 610      | 0.2   | measured: netback with pre-mapped grants does 3.6 Mpps against 1.24 Mpps with a grant operation per 64-byte packet on a Xeon E5-2699 v3 (Joao Martins, "xen-netback: use gref mappings for Tx requests"): 1/1.24M - 1/3.6M = 530 ns per packet (per page here)
xen.foreign_map             | host    | 2000     | 2300     | 0.3   | estimate: privcmd foreign mapping of one page (IOCTL_PRIVCMD_MMAPBATCH + PTE update)
xen.foreign_unmap           | host    | 3000     | 3400     | 0.3   | estimate: munmap of a foreign page including the TLB flush (as xen.grant_unmap)
xen.argo_sendv              | host    | 1800     | 1300     | 0.3   | estimate: argo_op sendv: a hypercall (xen.evtchn_send) plus MAC policy check and ring bookkeeping
xen.argo_copy               | host    | 0.2      | 0.25     | 0.2   | estimate: hypervisor memcpy into the destination ring at ~5 GB/s (x86) / ~4 GB/s (arm64), per byte
argo.backend_recv           | backend | 1500     | 1700     | 0.3   | estimate: backend reads the ring message and decodes the virtio request
dom0.thread_wake            | host    | 3000     | 3500     | 0.4   | estimate: a dom0 thread blocked on an event (blkback's kthread, QEMU's main loop) made runnable and switched to on dom0's vCPU: try_to_wake_up and a context switch, a few us on an idle CPU
dom0.process_wake           | host    | 10000    | 11500    | 0.4   | estimate: a dom0 process blocked in poll on the event's file descriptor (QEMU's main loop on an evtchn or ioeventfd fd) made runnable, back from poll and dispatching the handler: dom0.thread_wake plus the poll return and the main loop's dispatch
epam.virtqueue_pop          | backend | 1500     | 1700     | 0.3   | estimate: as dm.virtqueue_pop, for the EPAM backend (its descriptor walk and request setup)
epam.buffer_map             | backend | 150      | 170      | 0.3   | estimate: as dm.mapcache_lookup, the EPAM backend's way to a buffer page through mappings it keeps; a backend that maps each request's pages pays its foreign mappings here (calibrate fits it)
epam.buffer_unmap           | backend | 100      | 110      | 0.3   | estimate: releasing a kept mapping, a reference dropped (EPAM's design keeps the guest's memory mapped); a backend that maps each request's buffers (tests/xen/epam) pays a munmap with its TLB flush per buffer here, which calibrate fits
epam.request_complete       | backend | 800      | 900      | 0.3   | estimate: as dm.request_complete, the EPAM backend's completion work up to the used-ring update (status byte, buffers released)
epam.virtqueue_push         | backend | 1200     | 1400     | 0.3   | estimate: as dm.virtqueue_push, the EPAM backend's used-ring update and notify decision
dm.io_path                  | backend | 8000     | 9200     | 0.3   | estimate: QEMU's block layer between virtio_blk_handle_* and the device and back: the AIO request handed to its thread pool, the worker's preadv/pwritev, the completion bottom half in the main loop (calibrate fits it from captures of several backends on one host)
epam.io_path                | backend | 2000     | 2300     | 0.3   | estimate: the EPAM backend's pread/pwrite system call around the device's own time (calibrate fits it as for dm.io_path)
blkback.io_path             | backend | 0        | 0        | 0     | by definition: blkback submits bios straight to dom0's block layer, whose issue -> complete is the device; the other backends' I/O paths are fitted as their excess over it
dm.virtqueue_pop            | backend | 1500     | 1700     | 0.3   | estimate: QEMU virtqueue_pop and request setup (element allocation, descriptor walk)
dm.request_complete         | backend | 800      | 900      | 0.3   | estimate: QEMU's block completion callback up to the used-ring update: virtio_blk_rw_complete, the status byte stored, the request's buffers unmapped (dma_memory_unmap), virtio_blk_req_complete
dm.virtqueue_push           | backend | 1200     | 1400     | 0.3   | estimate: QEMU virtqueue_fill + flush + notify decision
dm.mapcache_lookup          | backend | 150      | 170      | 0.3   | estimate: QEMU Xen mapcache hit per page (hash lookup; buckets stay mapped)
dm.persistent_grant_lookup  | backend | 100      | 120      | 0.3   | estimate: persistent-grant tree lookup per page (blkback)
blkback.ring_pop            | backend | 800      | 900      | 0.3   | estimate: blkback copies a request off the shared ring
blkback.ring_push           | backend | 700      | 800      | 0.3   | estimate: blkback writes a response on the shared ring
vhost.eventfd_kick          | host    | 2000     | 2300     | 0.3   | estimate: eventfd write and backend-process wake-up on another core
vhost.eventfd_call          | host    | 2000     | 2300     | 0.3   | estimate: call eventfd from the backend process to the frontend
vhost.backend_pop           | backend | 1200     | 1400     | 0.3   | estimate: vhost-user backend (rust-vmm virtio-queue) descriptor walk
vhost.backend_push          | backend | 1000     | 1200     | 0.3   | estimate: vhost-user backend used-ring update
host.slowdown               | host    | 1        | 1        | 0     | by assumption 0 (a factor, not ns): a request's host-wide slowdown, one lognormal factor per request on all its host, backend and guest operations (not the device's): a host whose every step of a request is slow together (contention, a nested host's L1 vCPU descheduled) has whole requests spread wider than their independent steps allow; calibrate fits its sigma from the spread of whole requests
mem.copy                    | host    | 0.1      | 0.13     | 0.2   | estimate: memcpy at ~10 GB/s (x86) / ~8 GB/s (arm64), per byte
net.wire                    | device  | 0.8      | 0.8      | 0.1   | physics: 10 Gbit/s Ethernet serialization, 0.8 ns per byte
device.block_read           | device  | 85000    | 85000    | 0.3   | measured (vendor): Intel SSD DC P4500 1-2 TB, 4 KiB random read latency 85 us (Lenovo product guide for the P4500)
device.block_write          | device  | 20000    | 20000    | 0.3   | measured (vendor): same guide, 4 KiB random write latency 20 us
device.transfer             | device  | 0.3      | 0.3      | 0.1   | estimate: ~3.3 GB/s sequential transfer of a PCIe 3.0 x4 NVMe SSD, per byte beyond the first 4 KiB
"""


def default_table() -> pl.DataFrame:
    """The packaged cost table: key, layer, x86_64, arm64 (ns per unit), sigma, source."""
    rows = _TABLE.strip().splitlines()
    frame = pl.read_csv(
        io.StringIO("\n".join(rows)), separator="|", has_header=True, quote_char=None,
        infer_schema=False,
    )  # fmt: skip
    frame = frame.rename({c: c.strip() for c in frame.columns})
    frame = frame.with_columns(pl.all().str.strip_chars())
    return frame.with_columns(pl.col(*PROFILES, "sigma").cast(pl.Float64))


# keys earlier tables had, and what replaced them (so an old cost file's error says how to fix it)
RENAMED = {
    "epam.isr_traps": "epam.isr_trap (one trap: half the old value) plus xen.virq_latency "
    "(the interrupt's delivery)",
}


class CostFileError(XvtraceError, ValueError):
    """A cost file that cannot be used (the message names the file and the entries)."""


def load(path: str | Path | None = None) -> pl.DataFrame:
    """The default table, with rows replaced by key from a cost file: TOML as `xvtrace
    calibrate` writes it (`profile = "x86_64"` and one `[costs."key"]` table per cost with
    `ns`, optional `sigma` and `source`), or CSV with the table's columns
    (`key,x86_64,arm64,sigma,source`; `layer` optional, it is the key's). Unknown keys, missing values and negative or
    non-finite numbers are errors naming each entry."""
    table = default_table()
    if path is None:
        return table
    path = Path(path)
    extra = _read_toml(path, table) if path.suffix == ".toml" else _read_csv(path, table)
    unknown = sorted(set(extra["key"]) - set(table["key"]))
    if renamed := [f"{k} is now {RENAMED[k]}" for k in unknown if k in RENAMED]:
        raise CostFileError(f"{path}: key(s) of an earlier table: {'; '.join(renamed)}")
    if unknown:
        raise CostFileError(
            f"{path}: unknown cost key(s) {', '.join(unknown)}; valid: {', '.join(table['key'])}"
        )
    bad = extra.filter(
        pl.any_horizontal([pl.col(c).is_null() | pl.col(c).is_nan() | (pl.col(c) < 0)
                           for c in (*PROFILES, "sigma")])
    )  # fmt: skip
    if len(bad):
        raise CostFileError(
            f"{path}: missing, negative or non-numeric value for {', '.join(bad['key'])}"
            " (each cost needs ns >= 0 and sigma >= 0)"
        )
    return pl.concat([table.filter(~pl.col("key").is_in(extra["key"].to_list())), extra])


def _read_csv(path: Path, table: pl.DataFrame) -> pl.DataFrame:
    try:
        extra = pl.read_csv(path, infer_schema=False)
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError) as e:
        raise CostFileError(f"{path}: not a readable CSV cost file ({e})") from e
    need = [c for c in table.columns if c != "layer"]
    missing = [c for c in need if c not in extra.columns]
    if missing:
        raise CostFileError(
            f"{path}: missing column(s) {', '.join(missing)} (need {','.join(need)})"
        )
    nums = [
        pl.col(c).str.strip_chars().cast(pl.Float64, strict=False) for c in (*PROFILES, "sigma")
    ]
    extra = extra.select(need).with_columns(*nums)
    return extra.join(table.select("key", "layer"), on="key", how="left").select(table.columns)


def _read_toml(path: Path, table: pl.DataFrame) -> pl.DataFrame:
    import tomllib

    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CostFileError(f"{path}: not valid TOML ({e})") from e
    profile = doc.get("profile", "x86_64")
    if profile not in PROFILES:
        raise CostFileError(f"{path}: profile {profile!r}; valid: {', '.join(PROFILES)}")
    entries = doc.get("costs")
    if not isinstance(entries, dict) or not entries:
        raise CostFileError(f'{path}: no [costs."key"] tables')
    default = {r["key"]: r for r in table.iter_rows(named=True)}
    rows = []
    for key, e in entries.items():  # per cost entry, a few dozen
        e = e if isinstance(e, dict) else {}
        row = dict(default.get(key, {"key": key, "layer": None, "x86_64": 0.0, "arm64": 0.0,
                                     "sigma": 0.0, "source": ""}))  # fmt: skip
        row[profile] = _number(e.get("ns"))
        row["sigma"] = _number(e.get("sigma", row["sigma"]))
        row["source"] = str(e.get("source", f"{path.name}"))
        rows.append(row)
    return pl.DataFrame(rows, schema=table.schema)


def _number(v) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def write_toml(path: Path, profile: str, rows: list[dict]) -> None:
    """A cost file `load` reads: rows of key, ns, sigma, source and optional ci_low/ci_high."""
    lines = [f'profile = "{profile}"', ""]
    for r in rows:
        lines.append(f'[costs."{r["key"]}"]')
        lines.append(f"ns = {r['ns']:.3f}")
        lines.append(f"sigma = {r['sigma']:.3f}")
        if r.get("ci_low") is not None:
            lines.append(f"ci95 = [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
        lines.append(f"source = {_toml_string(r['source'])}")
        lines.append("")
    path.write_text("\n".join(lines))


def _toml_string(s: str) -> str:
    import json

    return json.dumps(s, ensure_ascii=False)  # JSON's string escapes are TOML's


def costs_for(table: pl.DataFrame, profile: str) -> dict[str, tuple[float, float]]:
    """key -> (ns per unit, jitter sigma) for one platform profile."""
    if profile not in PROFILES:
        raise XvtraceError(f"unknown cost profile {profile!r}; valid: {', '.join(PROFILES)}")
    return {k: (v, s) for k, v, s in table.select("key", profile, "sigma").iter_rows()}


SLOWDOWN = "host.slowdown"  # not an operation's cost: the per-request factor's jitter (sigma)
CALIBRATED = "calibrated from"  # how a fitted cost's source begins (xvtrace calibrate)


def calibrated_keys(table: pl.DataFrame) -> frozenset[str]:
    """The keys whose number was fitted to a capture, not estimated."""
    return frozenset(table.filter(pl.col("source").str.starts_with(CALIBRATED))["key"].to_list())
