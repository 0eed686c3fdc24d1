"""The compiled pass of timeline.hvm.handled (apart from it, so that reading a stored
timeline imports no numba)."""

from __future__ import annotations

import numpy as np
from numba import njit

EXIT_ROLE, ENTRY_ROLE, HANDLER_ROLE = 0, 1, 2
NONE = np.iinfo(np.int64).min  # no exit before, or no entry after


@njit(cache=True, nogil=True)
def pair_chunk(vi, ts, role, first, state, exit_ns, entry_ns, after_exit, before_entry, link):
    """For each handler record (in order): its vCPU's last exit before it and next entry
    after it (left NONE: none), and whether the vCPU's records just before and after it
    are that exit and that entry (`after_exit`, `before_entry`). One chunk of the records
    (`vi`: each one's vCPU index, `ts`, `role`) at a time, the pairing's state carried
    from chunk to chunk: `state` rows per vCPU (0: last exit time, 1: last role, 2: its
    handler waiting for the next record, 3: the last of its handlers waiting for an entry,
    chained back through `link`). `first`: the handlers before this chunk; returns those
    after it. The output arrays hold every handler of the capture."""
    last_exit, last_role, last_handler, waiting = state[0], state[1], state[2], state[3]
    k = first
    for i in range(len(role)):
        v, r = vi[i], role[i]
        if last_handler[v] >= 0:
            before_entry[last_handler[v]] = r == ENTRY_ROLE
            last_handler[v] = -1
        if r == EXIT_ROLE:
            last_exit[v] = ts[i]
        elif r == ENTRY_ROLE:
            h = waiting[v]  # every handler since the vCPU's last entry: this is theirs
            while h >= 0:
                entry_ns[h] = ts[i]
                h = link[h]
            waiting[v] = -1
        else:
            exit_ns[k] = last_exit[v]
            after_exit[k] = last_role[v] == EXIT_ROLE
            last_handler[v] = k
            link[k] = waiting[v]
            waiting[v] = k
            k += 1
        last_role[v] = r
    return k


def new_state(n_vcpus: int) -> np.ndarray:
    """`pair_chunk`'s state before the first record."""
    state = np.full((4, n_vcpus), -1, np.int64)
    state[0] = NONE
    return state
