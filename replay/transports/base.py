"""What a transport is: for each device kind, the ordered operations of one request.

Every operation names the actor that runs it, the resource it holds while it runs (so
requests contend for it), the cost key it takes its duration from (replay.costs), how the
cost scales (per request, per 4 KiB page, per byte, per buffer a virtio backend maps), the phase it belongs to (the timeline's
columns) and what a real host records while it happens (`emits`: the emulator's cue for
writing xentrace records and device-model trace lines; see xvtrace.emulate).
"""

from __future__ import annotations

from dataclasses import dataclass

ACTORS = ("guest_vcpu", "hypervisor", "backend_thread", "backend_process", "device", "wire")
# Resources: the guest vCPU (blocked across a trap), the backend thread, a separate backend
# process, the device (several servers), hypervisor copy bandwidth, and none (pure latency).
RESOURCES = ("vcpu", "backend", "bproc", "device", "copy", "none")
# buffer: what a virtio backend maps one by one: a request's data pages and, on a block
# path, its header and status descriptors (`buffers`)
SCALES = ("request", "page", "byte", "buffer")
PHASES = ("submit", "notify", "dispatch", "map", "io", "unmap", "push", "irq", "complete")
DEVICE_KINDS = ("block", "net_tx", "net_rx")


@dataclass(frozen=True)
class Op:
    name: str
    phase: str
    actor: str
    resource: str
    cost: str
    scale: str = "request"
    emits: str = ""
    hold_until: str = ""  # keep this op's resource until that later op ends (a blocked vCPU)

    def __post_init__(self):
        if self.actor not in ACTORS or self.resource not in RESOURCES:
            raise ValueError(f"{self.name}: unknown actor {self.actor} or resource {self.resource}")
        if self.scale not in SCALES or self.phase not in PHASES:
            raise ValueError(f"{self.name}: unknown scale {self.scale} or phase {self.phase}")


@dataclass(frozen=True)
class Transport:
    name: str
    title: str
    summary: str
    block: tuple[Op, ...]
    net_tx: tuple[Op, ...]
    net_rx: tuple[Op, ...]
    guest: str  # "hvm" (traps are VM exits) or "pv" (hypercalls and event channels)
    backend: str  # "qemu" (QEMU trace events), "blkback", "vhost-user", "argo"

    def path(self, kind: str) -> tuple[Op, ...]:
        if kind not in DEVICE_KINDS:
            raise ValueError(f"unknown device kind {kind!r}: {', '.join(DEVICE_KINDS)}")
        return getattr(self, kind)

    def cost_keys(self) -> set[str]:
        return {op.cost for kind in DEVICE_KINDS for op in self.path(kind)}


def submission(path: tuple[Op, ...]) -> tuple[int, int]:
    """(s, d): the index d of the device operation in a block path, and the index s of the
    last backend operation before it, at whose end the backend submits the request to the
    device (where QEMU logs virtio_blk_handle_read/write: after the pop and the mapping of
    the buffers, before blk_aio_*). Operations between s and d run after the submission,
    e.g. an IOREQ's completion."""
    d = next(k for k, o in enumerate(path) if o.resource == "device")
    backend = [k for k in range(d) if path[k].actor in ("backend_thread", "backend_process")]
    return (backend[-1] if backend else d - 1), d


def held(path: tuple[Op, ...]) -> set[int]:
    """Indices of the operations that run on a resource an earlier operation of the path
    still holds (its hold_until): they neither take it nor free it (the ISR's traps inside
    the interrupt, which nothing else on that vCPU can come between)."""
    names = [o.name for o in path]
    out: set[int] = set()
    for j, o in enumerate(path):
        if o.hold_until:
            last = names.index(o.hold_until)
            out |= {k for k in range(j + 1, last + 1) if path[k].resource == o.resource}
    return out


def op(name, phase, actor, resource, cost, scale="request", emits="", hold_until="") -> Op:
    """Terse constructor for the declarative tables of the transport modules."""
    return Op(name, phase, actor, resource, cost, scale, emits, hold_until)


BLOCK_DESCRIPTORS = 2  # a virtio-blk request's header and status: descriptors of their own


def buffers(path: tuple[Op, ...], pages):
    """A request's buffers as a virtio backend maps them one by one: its data pages and, on
    a block path (the one with the device's I/O), its header and status descriptors."""
    return pages + (BLOCK_DESCRIPTORS if any(o.resource == "device" for o in path) else 0)
