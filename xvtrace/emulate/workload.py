"""fio-like workloads for the emulated host: parsing, validation and the request stream.

A workload is a preset name or fio-style `key=value` pairs:

    rw=randread,bs=4k,iodepth=32,numjobs=2,rate=0,size=1g      block
    net=rr,bs=64,iodepth=1                                      network request/response
    net=stream,bs=1024,iodepth=8                                network streaming (guest sends)

For network jobs bs is the UDP payload of each frame (1..1472: one frame per request, no
segmentation offload); a request/response job alternates a transmitted request and the
received reply.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xvtrace.parsers.errors import XvtraceError

BLOCK_RW = ("read", "write", "randread", "randwrite", "randrw")
NET_MODES = ("rr", "stream")
FRAME_OVERHEAD = 14 + 20 + 8  # Ethernet + IPv4 + UDP headers
MAX_PAYLOAD = 1472
PRESETS = {
    "randread-4k-qd1": "rw=randread,bs=4k,iodepth=1",
    "randwrite-4k-qd32": "rw=randwrite,bs=4k,iodepth=32",
    "seqread-1m": "rw=read,bs=1m,iodepth=4",
    "randrw-16k-qd8": "rw=randrw,bs=16k,iodepth=8,numjobs=2",
    "net-rr-64": "net=rr,bs=64,iodepth=1",
    "net-stream-1k": "net=stream,bs=1024,iodepth=8",
}
RING_SIZE = 256  # virtqueue size of the emulated devices
MAX_BS = 4 << 20


class WorkloadError(XvtraceError, ValueError):
    """A workload that cannot run; the message lists the valid values."""


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # "block" or "net"
    rw: str  # block: read, write, randread, randwrite, randrw; net: rr, stream
    bs: int
    iodepth: int = 1
    numjobs: int = 1
    rate: float = 0.0  # requests per second per job; 0 = as fast as possible
    size: int = 1 << 30  # bytes of device (block) the offsets fall in
    rwmixread: int = 50

    @property
    def pages(self) -> int:
        return max(1, -(-self.request_bytes // 4096))

    @property
    def request_bytes(self) -> int:
        """Bytes one request moves: the block size, or the frame on the wire."""
        return self.bs + FRAME_OVERHEAD if self.kind == "net" else self.bs


def _size(text: str, key: str) -> int:
    t = text.strip().lower()
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    try:
        if t and t[-1] in mult:
            return int(float(t[:-1]) * mult[t[-1]])
        return int(t)
    except ValueError:
        raise WorkloadError(f"{key}={text}: not a size (e.g. 4096, 4k, 1m)") from None


def parse(spec: str) -> Workload:
    """A preset name or fio-style pairs; raises WorkloadError naming the valid values."""
    text = PRESETS.get(spec, spec)
    if "=" not in text:
        raise WorkloadError(
            f"unknown workload {spec!r}; presets: {', '.join(PRESETS)}; or fio-style pairs such "
            f"as rw=randread,bs=4k,iodepth=32 (rw: {', '.join(BLOCK_RW)}) or net=rr,bs=64 "
            f"(net: {', '.join(NET_MODES)})"
        )
    kv = {}
    for pair in text.split(","):
        if "=" not in pair:
            raise WorkloadError(f"{pair!r} is not key=value")
        k, v = pair.split("=", 1)
        kv[k.strip()] = v.strip()
    known = {"rw", "net", "bs", "iodepth", "numjobs", "rate", "size", "rwmixread"}
    unknown = set(kv) - known
    if unknown:
        raise WorkloadError(
            f"unknown workload keys {sorted(unknown)}; valid: {', '.join(sorted(known))}"
        )
    if "rw" in kv and "net" in kv:
        raise WorkloadError("give rw= (block) or net= (network), not both")
    kind = "net" if "net" in kv else "block"
    rw = kv["net"] if kind == "net" else kv.get("rw", "randread")
    valid = NET_MODES if kind == "net" else BLOCK_RW
    if rw not in valid:
        raise WorkloadError(
            f"{'net' if kind == 'net' else 'rw'}={rw}: valid values are {', '.join(valid)}"
        )
    bs = _size(kv.get("bs", "64" if kind == "net" else "4k"), "bs")
    if kind == "net" and not 1 <= bs <= MAX_PAYLOAD:
        raise WorkloadError(f"bs={bs}: network payloads are 1..{MAX_PAYLOAD} bytes (one frame)")
    if kind == "block" and not 0 < bs <= MAX_BS:
        raise WorkloadError(f"bs={bs}: must be between 1 and {MAX_BS} bytes")
    if kind == "block" and bs % 512:
        raise WorkloadError(f"bs={bs}: block sizes are multiples of 512")
    try:
        iodepth = int(kv.get("iodepth", 1))
        numjobs = int(kv.get("numjobs", 1))
        rate = float(kv.get("rate", 0))
        mix = int(kv.get("rwmixread", 50))
    except ValueError as e:
        raise WorkloadError(f"not a number: {e}") from None
    if not 1 <= iodepth <= RING_SIZE:
        raise WorkloadError(f"iodepth={iodepth}: must be 1..{RING_SIZE} (the virtqueue size)")
    if not 1 <= numjobs <= 64:
        raise WorkloadError(f"numjobs={numjobs}: must be 1..64")
    if rate < 0:
        raise WorkloadError(f"rate={rate}: must be >= 0 (0 = as fast as possible)")
    if not 0 <= mix <= 100:
        raise WorkloadError(f"rwmixread={mix}: must be 0..100")
    size = _size(kv.get("size", "1g"), "size")
    if size < bs:
        raise WorkloadError(f"size={size} is smaller than bs={bs}")
    return Workload(spec, kind, rw, bs, iodepth, numjobs, rate, size, mix)


@dataclass
class Requests:
    job: np.ndarray  # i8 job (= guest vCPU) of each request
    write: np.ndarray  # bool: a block write, or a frame the guest transmits
    offset: np.ndarray  # u8 byte offset on the device (block)
    nbytes: np.ndarray  # f8 bytes moved
    pages: np.ndarray  # f8 4 KiB pages touched
    not_before: np.ndarray  # f8 earliest issue time, ns (rate pacing)
    index: np.ndarray | None = None  # request numbers, when this is a subset of a run


def requests(w: Workload, n: int, rng: np.random.Generator) -> Requests:
    """n requests of the workload, round-robin over its jobs, as whole columns."""
    job = np.arange(n) % w.numjobs
    k = np.arange(n) // w.numjobs  # index within the job
    if w.kind == "net":
        write = np.ones(n, bool) if w.rw == "stream" else (k % 2 == 0)  # rr: request, reply
        nb = np.full(n, float(w.request_bytes))
        not_before = (k * (1e9 / w.rate)).astype(np.float64) if w.rate > 0 else np.zeros(n)
        return Requests(
            job.astype(np.int64), write, np.zeros(n, np.uint64), nb, np.ones(n), not_before
        )
    if w.rw in ("read", "randread"):
        write = np.zeros(n, bool)
    elif w.rw in ("write", "randwrite"):
        write = np.ones(n, bool)
    else:
        write = rng.random(n) >= w.rwmixread / 100
    blocks = w.size // w.bs
    if w.rw.startswith("rand"):
        offset = rng.integers(0, blocks, n).astype(np.uint64) * np.uint64(w.bs)
    else:
        offset = ((k + job * (blocks // max(1, w.numjobs))) % blocks).astype(np.uint64) * np.uint64(
            w.bs
        )
    nb = np.full(n, float(w.bs))
    pages = np.full(n, float(w.pages))
    not_before = (k * (1e9 / w.rate)).astype(np.float64) if w.rate > 0 else np.zeros(n)
    return Requests(job.astype(np.int64), write, offset, nb, pages, not_before)
