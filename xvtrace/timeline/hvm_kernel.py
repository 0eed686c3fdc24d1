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
    chained back through `link`, 4: the first of them). `first`: the index of this chunk's
    first handler in the output arrays (which hold a window of the capture's handlers: all
    those still waiting, and this chunk's); returns the index after its last."""
    last_exit, last_role, last_handler, waiting = state[0], state[1], state[2], state[3]
    oldest = state[4]
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
            oldest[v] = -1
        else:
            exit_ns[k] = last_exit[v]
            after_exit[k] = last_role[v] == EXIT_ROLE
            last_handler[v] = k
            link[k] = waiting[v]
            if waiting[v] < 0:
                oldest[v] = k
            waiting[v] = k
            k += 1
        last_role[v] = r
    return k


def new_state(n_vcpus: int) -> np.ndarray:
    """`pair_chunk`'s state before the first record."""
    state = np.full((5, n_vcpus), -1, np.int64)
    state[0] = NONE
    return state


# the state's rows that hold handler indexes: the handler waiting for its vCPU's next
# record, the last and the first of those waiting for its entry
NEXT_RECORD, LAST_WAITING, FIRST_WAITING = 2, 3, 4
HANDLER_ROWS = (NEXT_RECORD, LAST_WAITING, FIRST_WAITING)


def pending(state: np.ndarray, end: int) -> int:
    """The first handler not final yet (still waiting for its vCPU's next record or entry),
    `end` when none is."""
    waiting = state[[NEXT_RECORD, FIRST_WAITING]]
    waiting = waiting[waiting >= 0]
    return int(waiting.min()) if len(waiting) else end


def shift(state: np.ndarray, link: np.ndarray, by: int) -> None:
    """The handler indexes in `state` and `link` moved down `by` (the window's first
    handlers written out): an index that falls below 0 is one no chain reaches."""
    for row in HANDLER_ROWS:
        state[row] = np.where(state[row] >= 0, state[row] - by, -1)
    np.subtract(link, by, out=link, where=link >= 0)
