"""lines_frame: a chunk's chosen lines exactly as _frame reads the whole chunk."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from xvtrace.parsers.textlines import _frame, line_bounds, lines_frame

# short lines of bytes that matter: ASCII, '\r', a two-byte UTF-8 letter, invalid UTF-8
LINE = st.lists(st.sampled_from([b"A", b" ", b"\r", b"\xc3\xa9", b"\xc3", b"\xff"]), max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.lists(LINE, min_size=1, max_size=10), st.booleans(), st.data())
def test_chosen_lines_are_the_whole_chunks_rows(lines, final_newline, data):
    body = b"\n".join(b"".join(p) for p in lines) + (b"\n" if final_newline else b"")
    if not body:
        return
    starts, ends = line_bounds(body)
    chosen = np.array(
        data.draw(st.lists(st.booleans(), min_size=len(starts), max_size=len(starts)))
    )
    got = lines_frame(body, 7, starts[chosen], ends[chosen])
    assert got.equals(_frame(body, 7).filter(chosen))
