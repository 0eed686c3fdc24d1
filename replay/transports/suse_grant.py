"""VirtIO-SuSE / Linux xen-grant-dma: descriptors carry grant references instead of guest
physical addresses, so the backend (in dom0 or an unprivileged driver domain) maps every data
page with GNTTABOP_map_grant_ref and unmaps it (with a TLB flush) after use. Notification is
virtio-mmio through an IOREQ server, and the backend's own work is EPAM's (the same backend,
tests/xen/epam, serves both on the real test host), with the grant maps in place of its
mappings."""

from xvtrace.replay.transports import ops as o
from xvtrace.replay.transports.base import Transport
from xvtrace.replay.transports.ops import paths

TRANSPORT = Transport(
    name="suse-grant",
    title="VirtIO with grant references (SUSE, Linux xen-grant-dma)",
    summary=__doc__,
    **paths(
        notify=(
            o.GUEST_SUBMIT,
            o.GUEST_GRANT,
            o.MMIO_NOTIFY,
            o.IOREQ_DISPATCH,
            o.EPAM_POP,
            o.GRANT_MAP,
            o.IOREQ_COMPLETE,
        ),
        complete=(
            o.EPAM_COMPLETE,
            o.GRANT_UNMAP,
            o.EPAM_PUSH,
            o.IRQ_DM_OP,
            *o.MMIO_ISR,
            o.GUEST_COMPLETE,
        ),
        rx_head=(o.EPAM_POP, o.GRANT_MAP, o.COPY_IN),
        io_path=o.EPAM_IO,
    ),
    guest="hvm",
    backend="qemu",
)
