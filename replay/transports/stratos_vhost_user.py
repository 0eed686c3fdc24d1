"""Linaro Stratos: a hypervisor-agnostic vhost-user backend process, bridged from Xen IOREQs by
a frontend (xen-vhost-frontend style): the virtio-mmio trap is forwarded as an eventfd kick to
the backend process, and its call eventfd comes back as an interrupt."""

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
    op("frontend_kick", "dispatch", "backend_thread", "backend", "vhost.eventfd_kick"),
    op(
        "ioreq_complete",
        "dispatch",
        "hypervisor",
        "none",
        "xen.ioreq_complete",
        emits="vcpu_resume",
    ),
    op("backend_pop", "dispatch", "backend_process", "bproc", "vhost.backend_pop"),
    op("foreign_map", "map", "backend_process", "bproc", "dm.mapcache_lookup", "page"),
)
_COMPLETE = (
    op("backend_push", "push", "backend_process", "bproc", "vhost.backend_push"),
    op("call_eventfd", "irq", "backend_thread", "backend", "vhost.eventfd_call"),
    op("irq_inject", "irq", "backend_thread", "backend", "xen.dm_op_irq", emits="irq_dm_op"),
    op("isr_status_ack", "irq", "guest_vcpu", "vcpu", "epam.isr_traps", emits="mmio_isr_noqemu"),
    op("guest_complete", "complete", "guest_vcpu", "vcpu", "guest.ring_complete"),
)
TRANSPORT = Transport(
    name="stratos-vhost-user",
    title="Stratos vhost-user backend behind an IOREQ frontend",
    summary=__doc__,
    block=(*_NOTIFY, op("device_io", "io", "device", "device", "device.block"), *_COMPLETE),
    net_tx=(
        *_NOTIFY,
        op("wire_tx", "io", "wire", "none", "net.wire", "byte", emits="packet_out"),
        *_COMPLETE,
    ),
    net_rx=(
        op("wire_rx", "io", "wire", "none", "net.wire", "byte", emits="packet_in"),
        op("backend_pop", "dispatch", "backend_process", "bproc", "vhost.backend_pop"),
        op("copy_in", "io", "backend_process", "bproc", "mem.copy", "byte"),
        *_COMPLETE,
    ),
    guest="hvm",
    backend="vhost-user",
)
