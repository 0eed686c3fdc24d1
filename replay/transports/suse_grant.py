"""VirtIO-SuSE / Linux xen-grant-dma: descriptors carry grant references instead of guest
physical addresses, so the backend (in dom0 or an unprivileged driver domain) maps every data
page with GNTTABOP_map_grant_ref and unmaps it (with a TLB flush) after use. Notification is
virtio-mmio through an IOREQ server, as for EPAM."""

from xvtrace.replay.transports.base import Transport, op

GRANT = op("guest_grant", "submit", "guest_vcpu", "vcpu", "guest.grant_entry", "page")
MAP = op(
    "grant_map", "map", "backend_thread", "backend", "xen.grant_map", "page", emits="grant_map"
)
UNMAP = op(
    "grant_unmap",
    "unmap",
    "backend_thread",
    "backend",
    "xen.grant_unmap",
    "page",
    emits="grant_unmap",
)
_NOTIFY = (
    op("guest_submit", "submit", "guest_vcpu", "vcpu", "guest.ring_submit"),
    GRANT,
    op(
        "notify_trap",
        "notify",
        "hypervisor",
        "vcpu",
        "xen.mmio_trap",
        emits="mmio_notify",
        hold_until="ioreq_complete",
    ),
    op(
        "ioreq_dispatch", "dispatch", "hypervisor", "none", "xen.ioreq_dispatch", emits="ioreq_wait"
    ),
    op("backend_pop", "dispatch", "backend_thread", "backend", "dm.virtqueue_pop", emits="dm_pop"),
    MAP,
    op(
        "ioreq_complete",
        "dispatch",
        "hypervisor",
        "none",
        "xen.ioreq_complete",
        emits="vcpu_resume",
    ),
)
_COMPLETE = (
    UNMAP,
    op("backend_push", "push", "backend_thread", "backend", "dm.virtqueue_push", emits="dm_push"),
    op("irq_inject", "irq", "backend_thread", "backend", "xen.dm_op_irq", emits="irq_dm_op"),
    op("isr_status_ack", "irq", "guest_vcpu", "vcpu", "epam.isr_traps", emits="mmio_isr"),
    op("guest_complete", "complete", "guest_vcpu", "vcpu", "guest.ring_complete"),
)
TRANSPORT = Transport(
    name="suse-grant",
    title="VirtIO with grant references (SUSE, Linux xen-grant-dma)",
    summary=__doc__,
    block=(
        *_NOTIFY,
        op("device_io", "io", "device", "device", "device.block", emits="device_io"),
        *_COMPLETE,
    ),
    net_tx=(
        *_NOTIFY,
        op("wire_tx", "io", "wire", "none", "net.wire", "byte", emits="packet_out"),
        *_COMPLETE,
    ),
    net_rx=(
        op("wire_rx", "io", "wire", "none", "net.wire", "byte", emits="packet_in"),
        op(
            "backend_pop",
            "dispatch",
            "backend_thread",
            "backend",
            "dm.virtqueue_pop",
            emits="dm_pop",
        ),
        MAP,
        op("copy_in", "io", "backend_thread", "backend", "mem.copy", "byte"),
        *_COMPLETE,
    ),
    guest="hvm",
    backend="qemu",
)
