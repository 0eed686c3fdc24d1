"""VirtIO-EPAM: the standard virtio-mmio transport, MMIO traps forwarded by Xen's IOREQ server
to a user-space backend (QEMU) in dom0, which reaches guest memory through foreign mappings
(the mapcache). Interrupts are raised with dm_op set_irq_level; the guest's ISR then reads
InterruptStatus and writes InterruptACK: two more traps, two more IOREQ round trips."""

from xvtrace.replay.transports.base import Transport, op

_NOTIFY = (
    op("guest_submit", "submit", "guest_vcpu", "vcpu", "guest.ring_submit"),
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
    op(
        "mapcache",
        "map",
        "backend_thread",
        "backend",
        "dm.mapcache_lookup",
        "page",
        emits="mapcache",
    ),
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
    op("backend_push", "push", "backend_thread", "backend", "dm.virtqueue_push", emits="dm_push"),
    op("irq_inject", "irq", "backend_thread", "backend", "xen.dm_op_irq", emits="irq_dm_op"),
    op("isr_status_ack", "irq", "guest_vcpu", "vcpu", "epam.isr_traps", emits="mmio_isr"),
    op("guest_complete", "complete", "guest_vcpu", "vcpu", "guest.ring_complete"),
)
TRANSPORT = Transport(
    name="epam-mmio",
    title="VirtIO-EPAM (virtio-mmio + IOREQ server + foreign mappings)",
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
        op(
            "mapcache",
            "map",
            "backend_thread",
            "backend",
            "dm.mapcache_lookup",
            "page",
            emits="mapcache",
        ),
        op("copy_in", "io", "backend_thread", "backend", "mem.copy", "byte"),
        *_COMPLETE,
    ),
    guest="hvm",
    backend="qemu",
)
