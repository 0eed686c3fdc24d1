"""The grant-based transport with persistent grants: the backend keeps each granted page
mapped after first use (as blkback does), so a request costs a lookup instead of a map and
an unmap with its TLB flush."""

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
            o.BACKEND_POP,
            o.PERSISTENT,
            o.IOREQ_COMPLETE,
        ),
        complete=(o.BACKEND_COMPLETE, o.BACKEND_PUSH, o.IRQ_DM_OP, *o.MMIO_ISR, o.GUEST_COMPLETE),
        rx_head=(o.BACKEND_POP, o.PERSISTENT, o.COPY_IN),
        io_path=o.QEMU_IO,
    ),
    guest="hvm",
    backend="qemu",
)
