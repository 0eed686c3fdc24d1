"""virtio-pci on an HVM guest, served by QEMU (the qemu-xen device model): the notify BAR
write traps and becomes an IOREQ, which QEMU completes at once (the write only sets its
ioeventfd), so the vCPU resumes before the queue is handled; QEMU's main loop wakes, pops
the queue through its mapcache, and raises an MSI-X interrupt when done (no ISR register
traps). The path of the real `hvm-virtio` scenario (tests/xen/dom0-run.sh)."""

from xvtrace.replay.transports import ops as o
from xvtrace.replay.transports.base import Transport
from xvtrace.replay.transports.ops import paths

TRANSPORT = Transport(
    name="qemu-virtio-pci",
    title="virtio-pci through QEMU (IOREQ server + ioeventfd + mapcache + MSI-X)",
    summary=__doc__,
    **paths(
        notify=(
            o.GUEST_SUBMIT,
            o.PCI_NOTIFY,
            o.IOREQ_DISPATCH,
            o.IOREQ_COMPLETE,
            o.PROCESS_WAKE,
            o.BACKEND_POP,
            o.MAPCACHE,
        ),
        complete=(o.BACKEND_COMPLETE, o.BACKEND_PUSH, o.IRQ_DM_OP, o.GUEST_MSI, o.GUEST_COMPLETE),
        rx_head=(o.BACKEND_POP, o.MAPCACHE, o.COPY_IN),
        io_path=o.QEMU_IO,
    ),
    guest="hvm",
    backend="qemu",
)
