"""Issue 23, point 1, as properties: a request is complete only when the stamps of its path
never go back in time. First the rule itself over arbitrary stamps, then the whole chain
(decode, timeline) over a real QEMU log that hypothesis edits the way a corrupt or misread
log differs: events renamed into one another, lines dropped, swapped or re-stamped."""

from __future__ import annotations

import itertools
import shutil

import polars as pl
import pytest
from helpers import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz import assert_causal

from xvtrace import api
from xvtrace.timeline.pipeline import CAUSAL_REASON, PATH, _causal

stamp = st.one_of(st.none(), st.integers(-(2**40), 2**40))
row = st.tuples(st.booleans(), *[stamp] * len(PATH))


def ordered(stamps) -> bool:
    seen = [s for s in stamps if s is not None]
    return all(a <= b for a, b in itertools.pairwise(seen))


@settings(max_examples=100, deadline=None)
@given(st.lists(row, min_size=1, max_size=30))
def test_complete_exactly_when_complete_and_in_order(rows):
    req = pl.DataFrame(
        {"complete": [r[0] for r in rows], "reason": [None] * len(rows)}
        | {c: [r[i + 1] for r in rows] for i, c in enumerate(PATH)},
        schema={"complete": pl.Boolean, "reason": pl.String} | dict.fromkeys(PATH, pl.Int64),
    )
    out = _causal(req)
    for r, complete, reason in zip(rows, out["complete"], out["reason"], strict=True):
        was, stamps = r[0], r[1:]
        assert complete == (was and ordered(stamps))
        assert (reason == CAUSAL_REASON) == (was and not ordered(stamps))


LOG = FIXTURES / "qemu" / "live-q35-pci"
LINES = (LOG / "qemu-0.log").read_text().splitlines(keepends=True)
NAMES = ("virtqueue_pop", "virtqueue_fill", "virtqueue_flush", "virtio_notify",
         "virtio_queue_notify", "virtio_blk_handle_write", "virtio_blk_rw_complete")  # fmt: skip

edit = st.one_of(
    st.tuples(st.just("rename"), st.integers(0, len(LINES) - 1), st.sampled_from(NAMES)),
    st.tuples(st.just("drop"), st.integers(0, len(LINES) - 1), st.just("")),
    st.tuples(st.just("swap"), st.integers(0, len(LINES) - 1), st.integers(0, len(LINES) - 1)),
    st.tuples(st.just("stamp"), st.integers(0, len(LINES) - 1), st.integers(0, 999999)),
)


def edited(lines: list[str], edits) -> str:
    lines = list(lines)
    for kind, i, arg in edits:
        head, sep, rest = lines[i].partition(":")
        if kind == "rename" and sep:
            lines[i] = f"{head}:{arg} {rest.partition(' ')[2]}"
        elif kind == "drop":
            lines[i] = ""
        elif kind == "swap":
            lines[i], lines[arg] = lines[arg], lines[i]
        elif kind == "stamp" and "." in head:
            lines[i] = f"{head.rpartition('.')[0]}.{arg:06d}{sep}{rest}"
    return "".join(lines)


@pytest.mark.slow
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(edit, min_size=1, max_size=6))
def test_an_edited_qemu_log_never_gives_a_complete_request_out_of_order(tmp_path, edits):
    src = tmp_path / "capture"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(LOG, src)
    (src / "qemu-0.log").write_text(edited(LINES, edits))
    b = tmp_path / "b"
    shutil.rmtree(b, ignore_errors=True)
    api.ingest(src, b, warn=lambda m: None)
    api.timeline(b)
    assert_causal(b)
