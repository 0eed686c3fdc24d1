"""The grant-based transport with persistent grants: the guest copies each buffer through a
pool of pages granted to the backend once (as blkfront's feature-persistent does), and the
backend keeps each pool grant mapped after its first use (as blkback does), so a request
costs the guest a copy and the backend a lookup instead of a map and an unmap with its TLB
flush. The backend's work is EPAM's, as for suse-grant. The real test host runs it
(scenario hvm-suse-grant-persistent): Linux's grant DMA for virtio with our pool
(tests/xen/grant/persistent-grants.patch) and tests/xen/epam's backend with --persistent."""

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
            o.GUEST_BOUNCE,
            o.MMIO_NOTIFY,
            o.IOREQ_DISPATCH,
            o.EPAM_POP,
            o.POOL_LOOKUP,
            o.IOREQ_COMPLETE,
        ),
        complete=(o.EPAM_COMPLETE, o.EPAM_PUSH, o.IRQ_DM_OP, *o.MMIO_ISR, o.GUEST_COMPLETE),
        rx_head=(o.EPAM_POP, o.POOL_LOOKUP, o.COPY_IN),
        io_path=o.EPAM_IO,
    ),
    guest="hvm",
    backend="qemu",
)
