"""VirtIO-GSOC (2011): virtio over XenBus with QEMU backends and two event channels; no
mapcache: the backend foreign-maps each buffer page for the request and unmaps it after."""

from xvtrace.replay.transports import ops as o
from xvtrace.replay.transports.base import Transport
from xvtrace.replay.transports.ops import paths

TRANSPORT = Transport(
    name="gsoc-xenbus",
    title="VirtIO over XenBus (2011 GSoC prototype)",
    summary=__doc__,
    **paths(
        notify=(
            o.GUEST_SUBMIT,
            o.EVTCHN_SEND,
            o.BACKEND_WAKE,
            o.PROCESS_WAKE,
            o.BACKEND_POP,
            o.FOREIGN_MAP,
        ),
        complete=(
            o.BACKEND_COMPLETE,
            o.FOREIGN_UNMAP,
            o.BACKEND_PUSH,
            o.EVTCHN_BACK,
            o.GUEST_UPCALL,
            o.GUEST_COMPLETE,
        ),
        rx_head=(o.BACKEND_POP, o.FOREIGN_MAP, o.COPY_IN),
        io_path=o.QEMU_IO,
    ),
    guest="hvm",
    backend="qemu",
)
