"""Synthetic xentrace record streams for tests, oracle comparisons and benchmarks.

The records are the ones Xen 4.17 emits around HVM exits (same ids, payloads and TSC
flags): per pCPU, the idle vCPU hands over to a guest vCPU (runstate changes), the guest
takes a run of exits -- each a VMEXIT64 with TSC, its handler records without TSC (NPF +
MMIO, IOPORT, VMMCALL, INTR, HLT, INJ_VIRQ) and a VMENTRY with TSC -- then hands back.
Everything is generated as whole numpy columns from a seed, then laid out by the writer.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from xvtrace.parsers import xen_events as xe
from xvtrace.parsers.schema import N_ARGS

IDLE_DOM = 32767

# exit kind -> (VMX reason, SVM reason, handler records as (code, nargs) without TSC)
EXIT_KINDS = {
    "mmio": (48, 1024, [(0x00082021, 6), (0x00082217, 2)]),
    "ioport": (30, 123, [(0x00082016, 2)]),
    "vmcall": (18, 129, [(0x00082012, 1)]),
    "intr": (1, 96, [(0x0008200F, 1), (0x00082004, 2)]),
    "hlt": (12, 120, [(0x00082013, 1)]),
}


def hvm_records(
    n_exits: int,
    *,
    seed: int = 0,
    ncpu: int = 2,
    vendor: str = "vmx",
    exits_per_slice: int = 50,
    start_tsc: int = 1_000_000_000,
    lost_every: int = 0,
) -> pl.DataFrame:
    """About `n_exits` HVM exits spread over `ncpu` pCPUs, as canonical xentrace rows.

    Columns: cpu, ts_raw, has_ts, code, nargs, arg0..arg6 (what parsers.xentrace writes).
    `lost_every` > 0 puts a LOST_RECORDS record after every that many slices.
    """
    rng = np.random.default_rng(seed)
    kinds = list(EXIT_KINDS)
    kind = rng.choice(len(kinds), size=n_exits, p=[0.4, 0.2, 0.15, 0.15, 0.1])
    cpu_of_exit = rng.integers(0, ncpu, size=n_exits)
    order = np.lexsort((np.arange(n_exits), cpu_of_exit))
    kind, cpu_of_exit = kind[order], cpu_of_exit[order]
    # slice index of each exit within its pCPU
    first_of_cpu = np.searchsorted(cpu_of_exit, np.arange(ncpu))
    idx_in_cpu = np.arange(n_exits) - first_of_cpu[cpu_of_exit]
    slice_no = idx_in_cpu // exits_per_slice
    new_slice = idx_in_cpu % exits_per_slice == 0
    last_in_slice = np.r_[new_slice[1:], True]

    # Records per exit: [slice prologue (2 runstate)] + VMEXIT + handlers + VMENTRY
    # + [slice epilogue (2 runstate) (+ lost)]
    n_handlers = np.array([len(EXIT_KINDS[k][2]) for k in kinds])[kind]
    lost_here = np.zeros(n_exits, dtype=bool)
    if lost_every:
        lost_here = last_in_slice & ((slice_no + 1) % lost_every == 0)
    per_exit = 2 * new_slice + 1 + n_handlers + 1 + 2 * last_in_slice + lost_here
    total = int(per_exit.sum())
    start = np.cumsum(per_exit) - per_exit
    code = np.zeros(total, np.uint32)
    nargs = np.zeros(total, np.uint8)
    has = np.zeros(total, bool)
    args = np.zeros((total, N_ARGS), np.uint32)
    cpu = np.repeat(cpu_of_exit, per_exit).astype(np.int16)
    dom = (cpu_of_exit + 1).astype(np.uint32)  # guest domain d(cpu+1) v0 runs on pCPU cpu

    def put(pos, c, n, tsc_flag, words=()):
        code[pos] = c
        nargs[pos] = n
        has[pos] = tsc_flag
        for j, w in enumerate(words):
            args[pos, j] = w

    def runstate(pos, old, new, d, v):
        put(pos, xe.TRC_SCHED_RUNSTATE_CHANGE | old << 8 | new << 4, 1, True, [(d << 16) | v])

    p = start[new_slice]
    runstate(
        p, 0, 1, np.full(len(p), IDLE_DOM, np.uint32), cpu_of_exit[new_slice].astype(np.uint32)
    )
    runstate(p + 1, 1, 0, dom[new_slice], np.zeros(len(p), np.uint32))
    p = start + 2 * new_slice
    vendor_col = 1 if vendor == "svm" else 0
    reasons = np.array([EXIT_KINDS[k][vendor_col] for k in kinds], np.uint32)[kind]
    rip = rng.integers(0xFFFFFFFF81000000, 0xFFFFFFFF81FFFFFF, size=n_exits, dtype=np.uint64)
    put(p, xe.TRC_HVM_VMEXIT64, 3, True,
        [reasons, (rip & np.uint64(0xFFFFFFFF)).astype(np.uint32), (rip >> np.uint64(32)).astype(np.uint32)])  # fmt: skip
    p = p + 1
    for ki, k in enumerate(kinds):
        m = kind == ki
        q = p[m]
        cnt = int(m.sum())
        for hi, (hcode, hn) in enumerate(EXIT_KINDS[k][2]):
            words = _handler_words(hcode, cnt, rng)
            put(q + hi, hcode, hn, False, words)
    p = p + n_handlers
    put(p, xe.TRC_HVM_VMENTRY, 0, True)
    p = p + 1
    q = p[last_in_slice]
    runstate(q, 0, 1, dom[last_in_slice], np.zeros(len(q), np.uint32))
    runstate(
        q + 1,
        1,
        0,
        np.full(len(q), IDLE_DOM, np.uint32),
        cpu_of_exit[last_in_slice].astype(np.uint32),
    )
    q = p[lost_here] + 2
    put(q, xe.TRC_LOST_RECORDS, 4, True,
        [rng.integers(1, 100, len(q)).astype(np.uint32),
         (IDLE_DOM | cpu_of_exit[lost_here].astype(np.uint32) << 16).astype(np.uint32),
         np.zeros(len(q), np.uint32), np.zeros(len(q), np.uint32)])  # fmt: skip

    # Time: every record with a TSC advances its pCPU's clock; the rest inherit it.
    step = rng.integers(200, 5000, size=total).astype(np.uint64) * has
    tsc = np.empty(total, np.uint64)
    for c in range(ncpu):  # per pCPU, not per record
        m = cpu == c
        tsc[m] = np.uint64(start_tsc) + np.cumsum(step[m])
    if lost_here.any():  # first_tsc of the lost records: a little before the marker
        lpos = (p[lost_here] + 2).astype(np.int64)
        first = tsc[lpos] - np.uint64(100)
        args[lpos, 2] = (first & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        args[lpos, 3] = (first >> np.uint64(32)).astype(np.uint32)
    return pl.DataFrame(
        {
            "cpu": cpu,
            "ts_raw": tsc,
            "has_ts": has,
            "code": code,
            "nargs": nargs,
            **{f"arg{i}": args[:, i].astype(np.uint64) for i in range(N_ARGS)},
        }
    )


def _handler_words(code: int, n: int, rng) -> list[np.ndarray]:
    u32 = np.uint32
    if code == 0x00082021:  # NPF: gpa (u64), mfn (u64, ~0 for emulated MMIO), qual, p2mt
        gpa = rng.integers(0xFE000000, 0xFE003000, n).astype(u32) & u32(~3 & 0xFFFFFFFF)
        return [gpa, np.zeros(n, u32), np.full(n, 0xFFFFFFFF, u32), np.full(n, 0xFFFFFFFF, u32),
                np.full(n, 0x182, u32), np.full(n, 5, u32)]  # fmt: skip
    if code == 0x00082217:  # MMIO write: gpa, data
        return [
            rng.integers(0xFE000000, 0xFE003000, n).astype(u32) & u32(0xFFFFFFFC),
            rng.integers(0, 1 << 16, n).astype(u32),
        ]
    if code == 0x00082016:  # IOPORT read: port, data
        return [
            rng.choice(np.array([0x60, 0x64, 0x3F8, 0xCFC], u32), n),
            rng.integers(0, 256, n).astype(u32),
        ]
    if code == 0x00082012:  # VMMCALL: hypercall number
        return [rng.choice(np.array([29, 32, 34, 41, 20], u32), n)]
    if code == 0x0008200F:  # INTR: physical vector
        return [rng.choice(np.array([0xF9, 0xFC, 0x31], u32), n)]
    if code == 0x00082004:  # INJ_VIRQ: vector, fake
        return [rng.choice(np.array([0xF3, 0x30], u32), n), np.zeros(n, u32)]
    if code == 0x00082013:  # HLT: intpending
        return [np.zeros(n, u32)]
    raise ValueError(hex(code))
