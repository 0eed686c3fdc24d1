"""The baseline: Xen PV split drivers (blkfront/blkback, netfront/netback) with persistent
grants; the guest notifies over an event channel, the backend copies or uses its persistent
mappings, and responds with an event channel notification."""

from xvtrace.replay.transports import ops as o
from xvtrace.replay.transports.base import Transport
from xvtrace.replay.transports.ops import op, paths

POP = op("blkback_pop", "dispatch", "backend_thread", "backend", "blkback.ring_pop")
PUSH = op("blkback_push", "push", "backend_thread", "backend", "blkback.ring_push")
GRANT_COPY = op("grant_copy", "io", "hypervisor", "copy", "xen.grant_copy", "page")
_NOTIFY = (o.GUEST_SUBMIT, o.EVTCHN_SEND, o.BACKEND_WAKE, o.THREAD_WAKE, POP, o.PERSISTENT)
_COMPLETE = (PUSH, o.EVTCHN_BACK, o.GUEST_UPCALL, o.GUEST_COMPLETE)
_PATHS = paths(_NOTIFY, _COMPLETE, rx_head=(POP, GRANT_COPY), io_path=o.BLKBACK_IO)
_PATHS["net_tx"] = (*_NOTIFY, GRANT_COPY, o.WIRE_TX, *_COMPLETE)  # netback grant-copies tx data

TRANSPORT = Transport(
    name="pv-blkif",
    title="Xen PV blkif/netif with persistent grants (baseline)",
    summary=__doc__,
    **_PATHS,
    guest="hvm",
    backend="blkback",
)
