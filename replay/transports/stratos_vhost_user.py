"""Linaro Stratos: a hypervisor-agnostic vhost-user backend process, bridged from Xen IOREQs by
a frontend (xen-vhost-frontend style): the virtio-mmio trap is forwarded as an eventfd kick to
the backend process, and its call eventfd comes back as an interrupt."""

from xvtrace.replay.transports import ops as o
from xvtrace.replay.transports.base import Transport
from xvtrace.replay.transports.ops import op, paths

KICK = op("frontend_kick", "dispatch", "backend_thread", "backend", "vhost.eventfd_kick")
POP = op("backend_pop", "dispatch", "backend_process", "bproc", "vhost.backend_pop")
MAP = op("foreign_map", "map", "backend_process", "bproc", "dm.mapcache_lookup", "buffer")
PUSH = op("backend_push", "push", "backend_process", "bproc", "vhost.backend_push")
CALL = op("call_eventfd", "irq", "backend_thread", "backend", "vhost.eventfd_call")
COPY_IN = op("copy_in", "io", "backend_process", "bproc", "mem.copy", "byte")

TRANSPORT = Transport(
    name="stratos-vhost-user",
    title="Stratos vhost-user backend behind an IOREQ frontend",
    summary=__doc__,
    **paths(
        notify=(o.GUEST_SUBMIT, o.MMIO_NOTIFY, o.IOREQ_DISPATCH, KICK, o.IOREQ_COMPLETE, POP, MAP),
        complete=(PUSH, CALL, o.IRQ_DM_OP, *o.MMIO_ISR, o.GUEST_COMPLETE),
        rx_head=(POP, COPY_IN),
        device=op("device_io", "io", "device", "device", "device.block"),
    ),
    guest="hvm",
    backend="vhost-user",
)
