"""VirtIO-Argo (OpenXT): no shared memory. The guest driver sends each request with an argo_op
sendv hypercall; the hypervisor checks the MAC policy and copies it (and a write's data) into
the backend's ring, then raises VIRQ_ARGO; the response (and a read's data) comes back the
same way."""

from xvtrace.replay.transports.base import Transport, op

_SEND = (
    op("guest_submit", "submit", "guest_vcpu", "vcpu", "guest.ring_submit"),
    op(
        "argo_sendv",
        "notify",
        "hypervisor",
        "vcpu",
        "xen.argo_sendv",
        emits="vmcall_argo",
        hold_until="argo_copy_req",
    ),
    op("argo_copy_req", "notify", "hypervisor", "copy", "xen.argo_copy", "byte"),
    op(
        "virq_backend", "dispatch", "hypervisor", "none", "xen.evtchn_latency", emits="backend_wake"
    ),
    op(
        "backend_recv",
        "dispatch",
        "backend_thread",
        "backend",
        "argo.backend_recv",
        emits="argo_backend",
    ),
)
_REPLY = (
    op("argo_sendv_reply", "push", "backend_thread", "backend", "xen.argo_sendv", emits="pv_argo"),
    op("argo_copy_resp", "push", "hypervisor", "copy", "xen.argo_copy", "byte"),
    op("virq_guest", "irq", "guest_vcpu", "vcpu", "xen.evtchn_latency", emits="guest_upcall"),
    op("guest_complete", "complete", "guest_vcpu", "vcpu", "guest.ring_complete"),
)
TRANSPORT = Transport(
    name="argo",
    title="VirtIO-Argo (hypervisor-mediated copies over Argo rings)",
    summary=__doc__,
    block=(
        *_SEND,
        op("device_io", "io", "device", "device", "device.block", emits="device_io"),
        *_REPLY,
    ),
    net_tx=(
        *_SEND,
        op("wire_tx", "io", "wire", "none", "net.wire", "byte", emits="packet_out"),
        *_REPLY,
    ),
    net_rx=(
        op("wire_rx", "io", "wire", "none", "net.wire", "byte", emits="packet_in"),
        op("backend_recv", "dispatch", "backend_thread", "backend", "argo.backend_recv"),
        *_REPLY,
    ),
    guest="hvm",
    backend="argo",
)
