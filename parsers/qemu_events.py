"""Which argument of a QEMU trace event fills which column of the canonical table.

Every numeric argument lands in arg0..arg6 in format order; the table below also copies the
ones that identify a request or device into the shared columns, so requests can be matched
across sources without knowing each event's argument list:

    dev    the VirtIODevice (`vdev` pointer, as text; `vq`: resolved through the queue map)
    queue  the virtqueue index (`n` of virtio_queue_notify; `vq`: resolved)
    addr   what the event is about: a virtqueue element / block request pointer (the
           request's identity in QEMU: `req` == the popped `elem`), an IO port, a guest
           physical address, a register offset
    size   bytes: a fill's written length, a block request's nsectors * 512, an access size

Argument names are those of the event's signature in trace-events. `x*512` scales.
"""

from __future__ import annotations

from dataclasses import dataclass

from xvtrace.parsers.schema import EVENT_NAMES

_ROLES = """
# event                        dev    queue  addr       size
virtqueue_alloc_element        -      -      elem       -
virtqueue_pop                  vq     vq     elem       -
virtqueue_fill                 vq     vq     elem       len
virtqueue_flush                vq     vq     -          -
virtio_queue_notify            vdev   n      -          -
virtio_notify                  vdev   vq     -          -
virtio_notify_irqfd            vdev   vq     -          -
virtio_set_status              vdev   -      -          -
virtio_blk_handle_read         vdev   -      req        nsectors*512
virtio_blk_handle_write        vdev   -      req        nsectors*512
virtio_blk_rw_complete         vdev   -      req        -
virtio_blk_req_complete        vdev   -      req        -
virtio_blk_submit_multireq     vdev   -      offset     size
virtio_mmio_read               -      -      offset     -
virtio_mmio_write_offset       -      -      offset     -
virtio_pci_notify_write        -      -      addr       size
virtio_pci_notify_write_pio    -      -      addr       size
handle_ioreq                   -      -      addr       size
handle_ioreq_read              -      -      addr       size
handle_ioreq_write             -      -      addr       size
cpu_ioreq_pio                  -      -      addr       size
cpu_ioreq_pio_read_reg         -      -      addr       size
cpu_ioreq_pio_write_reg        -      -      addr       size
cpu_ioreq_move                 -      -      addr       size
cpu_ioreq_config_read          -      -      reg        size
cpu_ioreq_config_write         -      -      reg        size
xen_map_cache                  -      -      phys_addr  -
ide_exec_cmd                   state  -      -          -
ide_dma_cb                     s      -      sector_num n*512
ide_ioport_read                -      -      addr       -
ide_ioport_write               -      -      addr       -
dma_blk_io                     -      -      offset     -
xen_map_cache_return           -      -      ptr        -
"""


@dataclass(frozen=True)
class Roles:
    dev: str | None = None
    queue: str | None = None
    addr: str | None = None
    size: str | None = None
    size_scale: int = 1


def _parse(text: str) -> dict[str, Roles]:
    out = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, dev, queue, addr, size = line.split()
        scale = 1
        if "*" in size:
            size, factor = size.split("*")
            scale = int(factor)
        out[name] = Roles(
            *(None if v == "-" else v for v in (dev, queue, addr, size)), size_scale=scale
        )
    return out


ROLES = _parse(_ROLES)
QUEUE_MAP_EVENT = "virtio_queue_notify"  # (vdev, n, vq): the only event naming all three


def roles_for(name: str, arg_names: tuple[str, ...]) -> Roles:
    """The table's roles, each only where the event has an argument of that name (a
    trace-events file may name them otherwise than QEMU's: that role is then unknown, not a
    missing column); events not in the table still name their device when they have `vdev`."""
    if name in ROLES:
        r = ROLES[name]
        have = [
            v if v is None or v in arg_names else None for v in (r.dev, r.queue, r.addr, r.size)
        ]
        return Roles(*have, size_scale=r.size_scale)
    return Roles(dev="vdev" if "vdev" in arg_names else None)


_KNOWN = frozenset(EVENT_NAMES)


def event_name(name: str) -> str:
    """The table's name for a QEMU trace event."""
    full = f"qemu.{name}"
    return full if full in _KNOWN else "unknown"
