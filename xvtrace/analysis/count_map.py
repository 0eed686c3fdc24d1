"""A compiled group-by for the summary's folds: an open-addressing hash map from a key of
three int64 words to a count (`tally`) or, in a wide map, a count, a sum, and the least
and greatest of a time (`add`), fed one row at a time from numba loops and read back as
arrays (`used`).

An entry is one row of NARROW (32 bytes) or WIDE (64 bytes) int64, keys and count first,
so that a lookup touches one cache line: while a fold streams 100 bytes a record past the
cache, a lookup in a 12 k-address IO table that spread over three arrays (keys, values,
used flags) cost 300 ns, in 64-byte rows 160, in 32-byte rows 50. A count of 0 marks a
free entry. A loop that adds must leave room (`room`): it stops before a map would pass
half full, and its caller grows the map (`grown`) and calls it again from there (`fill`).

The functions run without numba's reference counts (_nrt=False: they allocate nothing):
with them, every call of a helper with arrays in a record loop counted their references
atomically, 100-150 ns a record.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

K0, K1, K2, COUNT, TOTAL, FIRST, LAST = range(7)
NARROW, WIDE = 4, 8  # int64 per entry: keys and count; and sum, first and last time
TIME_MAX, TIME_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min


FIRST_CAPACITY = 1 << 12  # entries of a new map (tests make it tiny, to grow it often)


def new(wide: bool, capacity: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(entries, filled): an empty map (`capacity` a power of two)."""
    rows = capacity or FIRST_CAPACITY
    return np.zeros((rows, WIDE if wide else NARROW), np.int64), np.zeros(1, np.int64)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _mix(x):
    """MurmurHash3's 64-bit finalizer: every bit of `x` moves the low ones (keys such as
    page-aligned addresses differ only in high bits; a plain product clusters them)."""
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _home(entries, k0, k1, k2):
    """The entry key (k0, k1, k2)'s search starts at."""
    h = _mix(np.uint64(k0) ^ _mix(np.uint64(k1) ^ _mix(np.uint64(k2))))
    return np.int64(h & np.uint64(entries.shape[0] - 1))


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _slot(entries, k0, k1, k2):
    """Key (k0, k1, k2)'s entry, or the free one where it goes."""
    mask = entries.shape[0] - 1
    s = _home(entries, k0, k1, k2)
    while entries[s, COUNT] and (
        entries[s, K0] != k0 or entries[s, K1] != k1 or entries[s, K2] != k2
    ):
        s = (s + 1) & mask
    return s


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _claim(entries, filled, k0, k1, k2):
    """Key (k0, k1, k2)'s entry, made if new (the keys taken as int64 bits)."""
    k0, k1, k2 = np.int64(k0), np.int64(k1), np.int64(k2)
    s = _slot(entries, k0, k1, k2)
    if not entries[s, COUNT]:
        entries[s, K0], entries[s, K1], entries[s, K2] = k0, k1, k2
        if entries.shape[1] == WIDE:
            entries[s, FIRST], entries[s, LAST] = TIME_MAX, TIME_MIN
        filled[0] += 1
    return s


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def tally(entries, filled, k0, k1, k2):
    """One more of key (k0, k1, k2)."""
    entries[_claim(entries, filled, k0, k1, k2), COUNT] += 1


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _sum_into(entries, s, count, total, first, last):
    """Wide entry s: `count` more, `total` added, times `first` and `last` to its least and
    greatest (compared: a time that is NaN, a null, is no time)."""
    entries[s, COUNT] += count
    entries[s, TOTAL] += total
    if first < entries[s, FIRST]:
        entries[s, FIRST] = first
    if last > entries[s, LAST]:
        entries[s, LAST] = last


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def add(entries, filled, k0, k1, k2, total, t):
    """One more of key (k0, k1, k2) in a wide map: `total` added to its sum, time `t` to
    its least and greatest."""
    _sum_into(entries, _claim(entries, filled, k0, k1, k2), 1, total, t, t)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def add_run(entries, filled, run, k0, k1, k2, total, t):
    """add() by way of `run` (new_run: a wide entry outside the map) holding the last
    key's sums: rows with the key of the row before (a pCPU's records, one vCPU and class
    after another) are summed there, and the run goes into the map when the key changes
    (one entry claimed then, as add claims one). `run` is flushed into the map by
    merge_run."""
    k0, k1, k2 = np.int64(k0), np.int64(k1), np.int64(k2)
    if not (run[0, COUNT] and run[0, K0] == k0 and run[0, K1] == k1 and run[0, K2] == k2):
        merge_run(entries, filled, run)
        run[0, K0], run[0, K1], run[0, K2] = k0, k1, k2
        run[0, TOTAL], run[0, FIRST], run[0, LAST] = 0, TIME_MAX, TIME_MIN
    _sum_into(run, 0, 1, total, t, t)


@njit(cache=True, nogil=True, _nrt=False)
def merge_run(entries, filled, run):
    """A run (add_run's) into a wide map, and the run emptied."""
    if not run[0, COUNT]:
        return
    s = _claim(entries, filled, run[0, K0], run[0, K1], run[0, K2])
    _sum_into(entries, s, run[0, COUNT], run[0, TOTAL], run[0, FIRST], run[0, LAST])
    run[0, COUNT] = 0


def new_run() -> np.ndarray:
    """An empty run for add_run: one wide entry."""
    return np.zeros((1, WIDE), np.int64)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def room(entries, filled, adds):
    """Whether `adds` more keys keep the map at most half full."""
    return 2 * (filled[0] + adds) <= entries.shape[0]


@njit(cache=True, nogil=True)
def grown(entries, filled):
    """The map's entries in one of twice the size."""
    out = np.zeros((2 * entries.shape[0], entries.shape[1]), np.int64)
    for i in range(entries.shape[0]):
        if entries[i, COUNT]:
            out[_slot(out, entries[i, K0], entries[i, K1], entries[i, K2])] = entries[i]
    return out, filled.copy()


AHEAD = 8  # rows ahead of the one counted whose entries tally_rows asks the cache for


@njit(cache=True, nogil=True, _nrt=False)
def tally_rows(entries, filled, k0, k1, k2, start):
    """Count rows [start:] of the key columns k0, k1, k2 (int64) into a map; returns where
    it stopped (len(k0), or a row the map may not have room for). Each row's entry is
    asked for AHEAD rows early: a map past the cache (the 64 k exit durations of a 500 MB
    trace, 4 MB) then has several misses in flight, not one (its 8.4 M exits: 0.26-0.28 ->
    0.18-0.19 s)."""
    n = k0.shape[0]
    for i in range(start, n):
        if not room(entries, filled, 1):
            return i
        if i + AHEAD < n:
            _prefetch_row(entries, _home(entries, k0[i + AHEAD], k1[i + AHEAD], k2[i + AHEAD]))
        tally(entries, filled, k0[i], k1[i], k2[i])
    return n


@intrinsic
def _prefetch_row(typingctx, entries, row):
    """A hint to bring entries[row] (a row of a 2-D C array) into the cache, to be written
    (llvm.prefetch): it changes no value."""

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        at = [args[1], context.get_constant(types.intp, 0)]
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, at, wraparound=False)
        byte_ptr = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32])
        fetch = builder.module.declare_intrinsic("llvm.prefetch", [byte_ptr], fnty)
        # (write, high locality, data cache)
        builder.call(
            fetch, [builder.bitcast(ptr, byte_ptr), *(ir.Constant(i32, v) for v in (1, 3, 1))]
        )
        return context.get_dummy_value()

    return types.void(entries, row), codegen


def used(m: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The map's entries in use (rows, in no order)."""
    entries = m[0]
    return entries[entries[:, COUNT] != 0]


def fill(maps: tuple, n: int, adds: int, step) -> tuple:
    """Run `step(maps, start) -> stop`, a loop over `n` rows that adds to the `maps` (at
    most `adds` keys a row), to its end, growing each map without room for a row each
    time it stops; returns the maps, grown or not."""
    start = 0
    while (start := step(maps, start)) < n:
        maps = tuple(m if room(*m, adds) else grown(*m) for m in maps)
    return maps
