"""VirtIO-EPAM: the standard virtio-mmio transport, MMIO traps forwarded by Xen's IOREQ server
to a user-space backend (QEMU) in dom0, which reaches guest memory through foreign mappings
(the mapcache). Interrupts are raised with dm_op set_irq_level; the guest's ISR then reads
InterruptStatus and writes InterruptACK: two more traps, two more IOREQ round trips."""

from dataclasses import replace

from xvtrace.replay.transports import ops as o
from xvtrace.replay.transports.base import Transport
from xvtrace.replay.transports.ops import paths

# the EPAM backend's own work: QEMU's steps, priced by the EPAM backend's keys (a host's
# captures fit them apart from a QEMU device model's on the same host)
POP = replace(o.BACKEND_POP, cost="epam.virtqueue_pop")
MAP = replace(o.MAPCACHE, cost="epam.buffer_map")
COMPLETE = replace(o.BACKEND_COMPLETE, cost="epam.request_complete")
PUSH = replace(o.BACKEND_PUSH, cost="epam.virtqueue_push")
IO = replace(o.QEMU_IO, cost="epam.io_path")

TRANSPORT = Transport(
    name="epam-mmio",
    title="VirtIO-EPAM (virtio-mmio + IOREQ server + foreign mappings)",
    summary=__doc__,
    **paths(
        notify=(o.GUEST_SUBMIT, o.MMIO_NOTIFY, o.IOREQ_DISPATCH, POP, MAP, o.IOREQ_COMPLETE),
        complete=(COMPLETE, PUSH, o.IRQ_DM_OP, *o.MMIO_ISR, o.GUEST_COMPLETE),
        rx_head=(POP, MAP, o.COPY_IN),
        io_path=IO,
    ),
    guest="hvm",
    backend="qemu",
)
