"""What one request costs in resources on a transport, read off its request path: VM exits,
IOREQs, hypercalls, pages mapped and bytes copied, per operation.

The counts follow what each operation makes a real host record (`Op.emits`, the same cue
the emulator writes xentrace records from) and its cost key for copies, so replay's
accounting and an emulated bundle's records agree by construction.
"""

from __future__ import annotations

import numpy as np

from xvtrace.replay.transports.base import Op, buffers

COUNTERS = ("vm_exits", "ioreqs", "hypercalls", "pages_mapped", "bytes_copied")
# emits -> (vm exits, IOREQs, hypercalls) per request
_EVENTS = {
    "mmio_notify": (1, 1, 0),  # the QueueNotify write traps and becomes an IOREQ
    "pci_notify": (1, 1, 0),  # the notify BAR write, likewise
    "mmio_isr_status": (1, 1, 0),  # the ISR's InterruptStatus read
    "mmio_isr_ack": (1, 1, 0),  # and its InterruptACK write
    "vmcall_evtchn": (1, 0, 1),  # HVM guest hypercall: a VMCALL exit
    "vmcall_argo": (1, 0, 1),
    "pv_evtchn": (0, 0, 1),  # the backend domain's own hypercalls
    "pv_argo": (0, 0, 1),
    "irq_dm_op": (0, 0, 1),
    "grant_map": (0, 0, 1),  # one batched GNTTABOP per request
    "grant_unmap": (0, 0, 1),
    "foreign_map": (0, 0, 1),  # one mmu_update batch per request
    "foreign_unmap": (0, 0, 1),
}
_MAPS = ("grant_map", "foreign_map")
_BYTE_COPIES = ("mem.copy", "xen.argo_copy")  # byte-scaled copies
_PAGE_COPIES = ("xen.grant_copy",)  # page-scaled copies (a whole page each)
CPU_RESOURCES = ("vcpu", "backend", "bproc", "copy")  # resources that are a CPU's time


def counters(path: tuple[Op, ...], pages: np.ndarray, nbytes: np.ndarray) -> dict[str, np.ndarray]:
    """Per request of `path`: the COUNTERS as float arrays (pages and bytes scale)."""
    n = len(pages)
    out = {c: np.zeros(n) for c in COUNTERS}
    each = buffers(path, pages)
    for o in path:  # per operation, vectorized over requests
        exits, ioreqs, hcs = _EVENTS.get(o.emits, (0, 0, 0))
        out["vm_exits"] += exits
        out["ioreqs"] += ioreqs
        out["hypercalls"] += hcs
        if o.emits in _MAPS:  # a virtio backend maps its descriptors' pages too
            out["pages_mapped"] += each if o.scale == "buffer" else pages
        if o.cost in _BYTE_COPIES:
            out["bytes_copied"] += nbytes
        elif o.cost in _PAGE_COPIES:
            out["bytes_copied"] += pages * 4096
    return out
