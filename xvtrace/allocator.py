"""Allocator settings for `xvtrace emulate`: keep freed memory for reuse instead of giving it
back to the kernel between chunks.

The emulator writes its streams in chunks of 100k requests: each chunk allocates tens of MB
of arrays afresh and frees them. By default both allocators return such blocks to the kernel
at once (glibc maps every block over 32 MiB on its own and unmaps it when freed; polars'
jemalloc purges dirty pages), so every chunk faults its memory in again and the kernel zeroes
it: on a 1M-request emulation that was a third of all CPU time. Here glibc serves every block
from one heap and keeps what is freed, and jemalloc never purges. The memory is held until the
process exits, and jemalloc keeps each thread arena's own peak, so other commands (timeline
and report read large bundles with many polars threads) do the opposite: a background thread
gives jemalloc's freed pages back after 0.3 s instead of 10, so each stage of a long command
does not leave its high-water mark behind for the next (the timeline of 1M requests: 2.38 ->
2.07 GiB at 1 s, at the same speed; of 5M requests: 1.51 -> 1.39 GiB from 1 s to 0.3 s, 5 %
slower; purging at once cost it 50 % more time).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

COMMANDS = ("emulate", "dump")  # the commands that get these settings (dump: per batch)
# and those that get them but jemalloc's (they may ingest through polars' threads): the
# summary of a raw xentrace file holds a few chunks' arrays, made afresh each chunk, which
# the kernel zeroed again each time (2.14 -> 2.05 s on a 500 MB trace, sys 0.58 -> 0.38 s)
HEAP_COMMANDS = ("summary",)
# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
TRIM_THRESHOLD = 1 << 30  # free memory kept at the heap's top before it is given back
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"  # polars' allocator never purges
RETURNING_CONF = "background_thread:true,dirty_decay_ms:300,muzzy_decay_ms:0"  # the others


def tune(argv: list[str]) -> None:
    """Apply the settings when `argv` (the command line after the program) runs one of
    COMMANDS. Call it before numpy and polars are imported (both read theirs once, jemalloc
    at its first allocation). A user's own settings in the environment win."""
    ours = bool(argv) and argv[0] in COMMANDS
    if "polars" not in sys.modules:
        os.environ.setdefault("_RJEM_MALLOC_CONF", JEMALLOC_CONF if ours else RETURNING_CONF)
    if not (ours or (argv and argv[0] in HEAP_COMMANDS)):
        return
    if "numpy" not in sys.modules:
        # numpy asks for transparent huge pages on large arrays: each first touch then zeroes
        # 2 MiB; without them the same 1M-request emulation spent 0.8 s less in the kernel
        os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
        # no command does linear algebra: OpenBLAS's threads, started with numpy, would
        # only spin, on the cores the run's own threads need (1-2 % of their CPU samples)
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    own = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_",
           "MALLOC_ARENA_MAX")  # fmt: skip
    if any(k in os.environ for k in own) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to tune
        return
    # no block gets a mapping of its own (glibc maps every block over 32 MiB afresh, and
    # unmaps it when freed): one heap, whose freed memory the next chunk reuses. On a 1M
    # request emulation: 696k page faults -> 451k (about its peak RSS), 0.5 s less kernel time
    mallopt(M_MMAP_MAX, 0)
    mallopt(M_ARENA_MAX, 1)
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
