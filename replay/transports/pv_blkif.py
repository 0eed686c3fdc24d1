"""The baseline: Xen PV split drivers (blkfront/blkback, netfront/netback) with persistent
grants; the guest notifies over an event channel, the backend copies or uses its persistent
mappings, and responds with an event channel notification."""

from xvtrace.replay.transports.base import Transport, op

_NOTIFY = (
    op("guest_submit", "submit", "guest_vcpu", "vcpu", "guest.ring_submit"),
    op("evtchn_send", "notify", "hypervisor", "vcpu", "xen.evtchn_send", emits="vmcall_evtchn"),
    op(
        "backend_wake", "dispatch", "hypervisor", "none", "xen.evtchn_latency", emits="backend_wake"
    ),
    op("blkback_pop", "dispatch", "backend_thread", "backend", "blkback.ring_pop"),
    op(
        "persistent_lookup",
        "map",
        "backend_thread",
        "backend",
        "dm.persistent_grant_lookup",
        "page",
    ),
)
_COMPLETE = (
    op("blkback_push", "push", "backend_thread", "backend", "blkback.ring_push"),
    op("evtchn_back", "irq", "backend_thread", "backend", "xen.evtchn_send", emits="pv_evtchn"),
    op("guest_upcall", "irq", "guest_vcpu", "vcpu", "xen.evtchn_latency", emits="guest_upcall"),
    op("guest_complete", "complete", "guest_vcpu", "vcpu", "guest.ring_complete"),
)
TRANSPORT = Transport(
    name="pv-blkif",
    title="Xen PV blkif/netif with persistent grants (baseline)",
    summary=__doc__,
    block=(*_NOTIFY, op("device_io", "io", "device", "device", "device.block"), *_COMPLETE),
    net_tx=(
        *_NOTIFY,
        op("grant_copy", "io", "hypervisor", "copy", "xen.grant_copy", "page"),
        op("wire_tx", "io", "wire", "none", "net.wire", "byte", emits="packet_out"),
        *_COMPLETE,
    ),
    net_rx=(
        op("wire_rx", "io", "wire", "none", "net.wire", "byte", emits="packet_in"),
        op("blkback_pop", "dispatch", "backend_thread", "backend", "blkback.ring_pop"),
        op("grant_copy", "io", "hypervisor", "copy", "xen.grant_copy", "page"),
        *_COMPLETE,
    ),
    guest="hvm",
    backend="blkback",
)
