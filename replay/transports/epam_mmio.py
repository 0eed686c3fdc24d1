"""VirtIO-EPAM: the standard virtio-mmio transport, MMIO traps forwarded by Xen's IOREQ server
to a user-space backend (QEMU) in dom0, which reaches guest memory through foreign mappings
(the mapcache). Interrupts are raised with dm_op set_irq_level; the guest's ISR then reads
InterruptStatus and writes InterruptACK: two more traps, two more IOREQ round trips."""

from xvtrace.replay.transports import ops as o
from xvtrace.replay.transports.base import Transport
from xvtrace.replay.transports.ops import paths

TRANSPORT = Transport(
    name="epam-mmio",
    title="VirtIO-EPAM (virtio-mmio + IOREQ server + foreign mappings)",
    summary=__doc__,
    **paths(
        notify=(
            o.GUEST_SUBMIT,
            o.MMIO_NOTIFY,
            o.IOREQ_DISPATCH,
            o.EPAM_POP,
            o.EPAM_MAP,
            o.IOREQ_COMPLETE,
        ),
        complete=(
            o.EPAM_COMPLETE,
            o.EPAM_UNMAP,
            o.EPAM_PUSH,
            o.IRQ_DM_OP,
            *o.MMIO_ISR,
            o.GUEST_COMPLETE,
        ),
        rx_head=(o.EPAM_POP, o.EPAM_MAP, o.COPY_IN),
        io_path=o.EPAM_IO,
    ),
    guest="hvm",
    backend="qemu",
)
