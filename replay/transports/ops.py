"""The operations transports share, named once (see base.Op for the fields)."""

from dataclasses import replace

from xvtrace.replay.transports.base import Op, op

# the guest
GUEST_SUBMIT = op("guest_submit", "submit", "guest_vcpu", "vcpu", "guest.ring_submit")
GUEST_GRANT = op("guest_grant", "submit", "guest_vcpu", "vcpu", "guest.grant_entry", "buffer")
GUEST_COMPLETE = op("guest_complete", "complete", "guest_vcpu", "vcpu", "guest.ring_complete")
# persistent grants in the guest (blkfront's, or our grant-DMA patch): each buffer copied
# through pages granted once, into them before the kick or out of them at completion
GUEST_BOUNCE = op("guest_bounce", "submit", "guest_vcpu", "vcpu", "mem.copy", "byte")
# a virtio-mmio interrupt: delivered to the vCPU, whose ISR reads InterruptStatus and writes
# InterruptACK, each a trap served through the IOREQ server like the QueueNotify write; the
# vCPU is the ISR's until the ACK (nothing else of the guest's runs in between)
GUEST_IRQ = op("guest_irq", "irq", "guest_vcpu", "vcpu", "xen.virq_latency", emits="guest_irq",
               hold_until="isr_ack")  # fmt: skip
ISR_STATUS = op("isr_status", "irq", "guest_vcpu", "vcpu", "epam.isr_trap", emits="mmio_isr_status")
ISR_WORK = op("isr_work", "irq", "guest_vcpu", "vcpu", "guest.isr_work")  # between the two
ISR_ACK = op("isr_ack", "irq", "guest_vcpu", "vcpu", "epam.isr_trap", emits="mmio_isr_ack")
MMIO_ISR = (GUEST_IRQ, ISR_STATUS, ISR_WORK, ISR_ACK)
GUEST_UPCALL = op(
    "guest_upcall", "irq", "guest_vcpu", "vcpu", "xen.evtchn_latency", emits="guest_upcall"
)

# virtio-mmio through an IOREQ server: the vCPU stays in the hypervisor until the backend
# completes the IOREQ of its QueueNotify write
MMIO_NOTIFY = op("notify_trap", "notify", "hypervisor", "vcpu", "xen.mmio_trap",
                 emits="mmio_notify", hold_until="ioreq_complete")  # fmt: skip
# virtio-pci through QEMU: the notify BAR write traps like QueueNotify, but QEMU answers
# the IOREQ at once (its ioeventfd) and handles the queue later from its main loop
PCI_NOTIFY = op("notify_trap", "notify", "hypervisor", "vcpu", "xen.mmio_trap",
                emits="pci_notify", hold_until="ioreq_complete")  # fmt: skip
# an MSI-X interrupt: delivered to the vCPU, no ISR register to read or acknowledge
GUEST_MSI = op("guest_irq", "irq", "guest_vcpu", "vcpu", "xen.virq_latency", emits="guest_irq")
IOREQ_DISPATCH = op(
    "ioreq_dispatch", "dispatch", "hypervisor", "none", "xen.ioreq_dispatch", emits="ioreq_wait"
)
IOREQ_COMPLETE = op(
    "ioreq_complete", "dispatch", "hypervisor", "none", "xen.ioreq_complete", emits="vcpu_resume"
)
IRQ_DM_OP = op("irq_inject", "irq", "backend_thread", "backend", "xen.dm_op_irq", emits="irq_dm_op")

# event channels
EVTCHN_SEND = op(
    "evtchn_send", "notify", "hypervisor", "vcpu", "xen.evtchn_send", emits="vmcall_evtchn"
)
BACKEND_WAKE = op(
    "backend_wake", "dispatch", "hypervisor", "none", "xen.evtchn_latency", emits="backend_wake"
)
# the backend woken by that event: pure latency on dom0's side, during which the backend
# is idle, not busy. A kernel thread (blkback's) is woken directly; a process (QEMU's main
# loop) returns from its poll on the event's file descriptor first
THREAD_WAKE = op("thread_wake", "dispatch", "backend_thread", "none", "dom0.thread_wake")
PROCESS_WAKE = op("thread_wake", "dispatch", "backend_thread", "none", "dom0.process_wake")
EVTCHN_BACK = op(
    "evtchn_back", "irq", "backend_thread", "backend", "xen.evtchn_send", emits="pv_evtchn"
)

# a QEMU-style backend thread in dom0
BACKEND_POP = op(
    "backend_pop", "dispatch", "backend_thread", "backend", "dm.virtqueue_pop", emits="dm_pop"
)
# the device's completion callback until the used-ring update (QEMU: virtio_blk_rw_complete
# to virtio_blk_req_complete: the status byte written, the buffers released)
BACKEND_COMPLETE = op(
    "backend_complete", "push", "backend_thread", "backend", "dm.request_complete"
)
BACKEND_PUSH = op(
    "backend_push", "push", "backend_thread", "backend", "dm.virtqueue_push", emits="dm_push"
)
MAPCACHE = op(
    "mapcache", "map", "backend_thread", "backend", "dm.mapcache_lookup", "buffer", emits="mapcache"
)
GRANT_MAP = op(
    "grant_map", "map", "backend_thread", "backend", "xen.grant_map", "buffer", emits="grant_map"
)
GRANT_UNMAP = op(
    "grant_unmap",
    "unmap",
    "backend_thread",
    "backend",
    "xen.grant_unmap",
    "buffer",
    emits="grant_unmap",
)
PERSISTENT = op(
    "persistent_lookup", "map", "backend_thread", "backend", "dm.persistent_grant_lookup", "page"
)
# a virtio backend's lookup of its kept mappings: one per buffer, descriptors included
POOL_LOOKUP = replace(PERSISTENT, scale="buffer")
FOREIGN_MAP = op(
    "foreign_map",
    "map",
    "backend_thread",
    "backend",
    "xen.foreign_map",
    "buffer",
    emits="foreign_map",
)
FOREIGN_UNMAP = op("foreign_unmap", "unmap", "backend_thread", "backend", "xen.foreign_unmap", "buffer",
                   emits="foreign_unmap")  # fmt: skip
COPY_IN = op("copy_in", "io", "backend_thread", "backend", "mem.copy", "byte")

# the device and the wire; before the device, the backend's own I/O path down to it (QEMU's
# block layer: its AIO thread pool and completion bottom half; blkback's bios go straight to
# dom0's block layer): latency in which the backend's thread is free
QEMU_IO = op("io_path", "io", "device", "none", "dm.io_path")
BLKBACK_IO = op("io_path", "io", "device", "none", "blkback.io_path")

# The EPAM backend's own work (tests/xen/epam on the real host): QEMU's steps, priced by its
# own keys, so a host's captures fit them apart from a QEMU device model's on the same host.
# VirtIO-SuSE is the same backend with grants in the descriptors (its map and unmap steps).
EPAM_POP = replace(BACKEND_POP, cost="epam.virtqueue_pop")
EPAM_MAP = replace(MAPCACHE, cost="epam.buffer_map")
# ... and its unmap of each buffer once the request is done (a munmap); nothing the
# emulator writes a record for, as the map has none of its own either
EPAM_UNMAP = op("buffer_unmap", "unmap", "backend_thread", "backend", "epam.buffer_unmap", "buffer")
EPAM_COMPLETE = replace(BACKEND_COMPLETE, cost="epam.request_complete")
EPAM_PUSH = replace(BACKEND_PUSH, cost="epam.virtqueue_push")
EPAM_IO = replace(QEMU_IO, cost="epam.io_path")
DEVICE_IO = op("device_io", "io", "device", "device", "device.block", emits="device_io")
WIRE_TX = op("wire_tx", "io", "wire", "none", "net.wire", "byte", emits="packet_out")
WIRE_RX = op("wire_rx", "io", "wire", "none", "net.wire", "byte", emits="packet_in")


def paths(
    notify, complete, rx_head, *, device: Op | None = None, io_path: Op | None = None,
    wire_tx=None, wire_rx=None,
) -> dict:  # fmt: skip
    """The three request paths of a transport from its pieces: block = notify, the
    backend's I/O path, device I/O, complete; transmit = notify, wire, complete; receive =
    wire, the backend's receive steps (rx_head), complete."""
    return {
        "block": (*notify, *((io_path,) if io_path else ()), device or DEVICE_IO, *complete),
        "net_tx": (*notify, wire_tx or WIRE_TX, *complete),
        "net_rx": (wire_rx or WIRE_RX, *rx_head, *complete),
    }
