"""The compiled pass of timeline.hvm.handled (apart from it, so that reading a stored
timeline imports no numba)."""

from __future__ import annotations

import numpy as np
from numba import njit

EXIT_ROLE, ENTRY_ROLE, HANDLER_ROLE = 0, 1, 2
NONE = np.iinfo(np.int64).min  # no exit before, or no entry after


@njit(cache=True, nogil=True)
def pair_handlers(vi, ts, role):
    """For each handler record (in order): its vCPU's last exit before it and next entry
    after it (NONE: none), and whether the vCPU's records just before and after it are
    that exit and that entry."""
    n_vcpus = vi.max() + 1 if len(vi) else 0
    n = 0
    for i in range(len(role)):
        n += role[i] == HANDLER_ROLE
    exit_ns = np.full(n, NONE, np.int64)
    entry_ns = np.full(n, NONE, np.int64)
    after_exit = np.zeros(n, np.bool_)
    before_entry = np.zeros(n, np.bool_)
    last_exit = np.full(n_vcpus, NONE, np.int64)
    last_role = np.full(n_vcpus, -1, np.int64)
    last_handler = np.full(n_vcpus, -1, np.int64)  # the vCPU's previous record, a handler's
    k = 0
    for i in range(len(role)):
        v, r = vi[i], role[i]
        if last_handler[v] >= 0:
            before_entry[last_handler[v]] = r == ENTRY_ROLE
            last_handler[v] = -1
        if r == EXIT_ROLE:
            last_exit[v] = ts[i]
        elif r == HANDLER_ROLE:
            exit_ns[k] = last_exit[v]
            after_exit[k] = last_role[v] == EXIT_ROLE
            last_handler[v] = k
            k += 1
        last_role[v] = r
    next_entry = np.full(n_vcpus, NONE, np.int64)
    for i in range(len(role) - 1, -1, -1):
        v, r = vi[i], role[i]
        if r == ENTRY_ROLE:
            next_entry[v] = ts[i]
        elif r == HANDLER_ROLE:
            k -= 1
            entry_ns[k] = next_entry[v]
    return exit_ns, entry_ns, after_exit & before_entry
