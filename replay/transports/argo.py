"""VirtIO-Argo (OpenXT): no shared memory. The guest driver sends each request with an argo_op
sendv hypercall; the hypervisor checks the MAC policy and copies it (and a write's data) into
the backend's ring, then raises VIRQ_ARGO; the response (and a read's data) comes back the
same way."""

from xvtrace.replay.transports import ops as o
from xvtrace.replay.transports.base import Transport
from xvtrace.replay.transports.ops import op, paths

SENDV = op("argo_sendv", "notify", "hypervisor", "vcpu", "xen.argo_sendv", emits="vmcall_argo",
           hold_until="argo_copy_req")  # fmt: skip
COPY_REQ = op("argo_copy_req", "notify", "hypervisor", "copy", "xen.argo_copy", "byte")
VIRQ_BACKEND = op(
    "virq_backend", "dispatch", "hypervisor", "none", "xen.evtchn_latency", emits="backend_wake"
)
RECV = op(
    "backend_recv",
    "dispatch",
    "backend_thread",
    "backend",
    "argo.backend_recv",
    emits="argo_backend",
)
REPLY = op(
    "argo_sendv_reply", "push", "backend_thread", "backend", "xen.argo_sendv", emits="pv_argo"
)
COPY_RESP = op("argo_copy_resp", "push", "hypervisor", "copy", "xen.argo_copy", "byte")
VIRQ_GUEST = op(
    "virq_guest", "irq", "guest_vcpu", "vcpu", "xen.evtchn_latency", emits="guest_upcall"
)

TRANSPORT = Transport(
    name="argo",
    title="VirtIO-Argo (hypervisor-mediated copies over Argo rings)",
    summary=__doc__,
    **paths(
        notify=(o.GUEST_SUBMIT, SENDV, COPY_REQ, VIRQ_BACKEND, RECV),
        complete=(REPLY, COPY_RESP, VIRQ_GUEST, o.GUEST_COMPLETE),
        rx_head=(RECV,),
    ),
    guest="hvm",
    backend="argo",
)
