"""The grant-based transport with persistent grants: the backend keeps each granted page
mapped after first use (as blkback does), so a request costs a lookup instead of a map and
an unmap with its TLB flush. The backend's work is EPAM's, as for suse-grant. No real guest
runs this here: Linux's grant DMA for virtio ends each buffer's grants when the request
completes and disables a device whose backend still maps one (docs/real-xen.md)."""

from xvtrace.replay.transports import ops as o
from xvtrace.replay.transports.base import Transport
from xvtrace.replay.transports.ops import paths

TRANSPORT = Transport(
    name="suse-grant-persistent",
    title="VirtIO with persistent grants",
    summary=__doc__,
    **paths(
        notify=(
            o.GUEST_SUBMIT,
            o.MMIO_NOTIFY,
            o.IOREQ_DISPATCH,
            o.EPAM_POP,
            o.PERSISTENT,
            o.IOREQ_COMPLETE,
        ),
        complete=(o.EPAM_COMPLETE, o.EPAM_PUSH, o.IRQ_DM_OP, *o.MMIO_ISR, o.GUEST_COMPLETE),
        rx_head=(o.EPAM_POP, o.PERSISTENT, o.COPY_IN),
        io_path=o.EPAM_IO,
    ),
    guest="hvm",
    backend="qemu",
)
