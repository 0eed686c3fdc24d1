"""VirtIO-GSOC (2011): virtio over XenBus with QEMU backends and two event channels; no
mapcache: the backend foreign-maps each buffer page for the request and unmaps it after."""

from xvtrace.replay.transports.base import Transport, op

_NOTIFY = (
    op("guest_submit", "submit", "guest_vcpu", "vcpu", "guest.ring_submit"),
    op("evtchn_send", "notify", "hypervisor", "vcpu", "xen.evtchn_send", emits="vmcall_evtchn"),
    op(
        "backend_wake", "dispatch", "hypervisor", "none", "xen.evtchn_latency", emits="backend_wake"
    ),
    op("backend_pop", "dispatch", "backend_thread", "backend", "dm.virtqueue_pop", emits="dm_pop"),
    op(
        "foreign_map",
        "map",
        "backend_thread",
        "backend",
        "xen.foreign_map",
        "page",
        emits="foreign_map",
    ),
)
_COMPLETE = (
    op(
        "foreign_unmap",
        "unmap",
        "backend_thread",
        "backend",
        "xen.foreign_unmap",
        "page",
        emits="foreign_unmap",
    ),
    op("backend_push", "push", "backend_thread", "backend", "dm.virtqueue_push", emits="dm_push"),
    op("evtchn_back", "irq", "backend_thread", "backend", "xen.evtchn_send", emits="pv_evtchn"),
    op("guest_upcall", "irq", "guest_vcpu", "vcpu", "xen.evtchn_latency", emits="guest_upcall"),
    op("guest_complete", "complete", "guest_vcpu", "vcpu", "guest.ring_complete"),
)
TRANSPORT = Transport(
    name="gsoc-xenbus",
    title="VirtIO over XenBus (2011 GSoC prototype)",
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
            "foreign_map",
            "map",
            "backend_thread",
            "backend",
            "xen.foreign_map",
            "page",
            emits="foreign_map",
        ),
        op("copy_in", "io", "backend_thread", "backend", "mem.copy", "byte"),
        *_COMPLETE,
    ),
    guest="hvm",
    backend="qemu",
)
