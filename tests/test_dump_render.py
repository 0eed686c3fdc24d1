"""The compiled dump (render_bytes) against format_lines, the reference formatting: any
field printed differently on any row of the catalogue's events fails here."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xvtrace.analysis.dump import format_lines, render_bytes
from xvtrace.parsers import xen_events as xe
from xvtrace.parsers.schema import EVENT_NAMES, OWN_EVENT_NAMES, conform

# every catalogue id, guest markers, ids nobody knows, and the named fields' events
CODES = [*sorted(xe.SPECS), xe.TRC_GUEST | 0x12, 0x00ABC123, 0x0001F00F]
WORD = st.one_of(
    st.integers(0, 2**32 - 1),
    st.sampled_from([0, 1, 2, 3, 4, 9, 10, 99, 2**31, 2**32 - 1, 2**63, 2**64 - 1]),
)
OPTIONAL_INT = st.one_of(st.none(), st.sampled_from([0, 1, 7, 9, 10, 99, 32767, 65535]))


@st.composite
def xen_row(draw):
    code = draw(st.sampled_from(CODES))
    ts = draw(st.one_of(st.none(), st.integers(-(10**10), 10**12)))
    row = {
        "source": "xentrace",
        "ts_ns": ts,
        "cpu": draw(st.one_of(st.none(), st.integers(0, 300))),
        "thread": draw(st.one_of(st.none(), st.integers(0, 70000))),
        "dom": draw(OPTIONAL_INT),
        "vcpu": draw(OPTIONAL_INT),
        "event": xe.event_name(code),
        "code": code,
        "nargs": draw(st.integers(0, 7)),
    }
    row |= {f"arg{i}": draw(WORD) for i in range(7)}
    return row


QEMU_EVENTS = [n for n in EVENT_NAMES if n.startswith("qemu.")]


@st.composite
def other_row(draw):
    """A QEMU row (any event of the catalogue: printed by its definition's numeric
    arguments) or a row of xvtrace's own decoders (any own event, its device name, columns
    and named arguments)."""
    source = draw(st.sampled_from(["qemu", "ftrace", "virtqueue", "pcap", "ioreq", "emulator"]))
    event = draw(st.sampled_from(QEMU_EVENTS if source == "qemu" else OWN_EVENT_NAMES))
    return {
        "source": source,
        "ts_ns": draw(st.one_of(st.none(), st.integers(0, 10**12))),
        "cpu": draw(st.one_of(st.none(), st.integers(0, 300))),
        "thread": draw(st.one_of(st.none(), st.integers(0, 70000))),
        "dom": draw(OPTIONAL_INT),
        "event": event,
        "nargs": draw(st.integers(0, 7)),
        **{f"arg{i}": draw(WORD) for i in range(7)},
        "dev": draw(st.sampled_from([None, "8,0", "blkif-backend", "/machine/vblk0", ""])),
        "queue": draw(st.one_of(st.none(), st.integers(0, 65535))),
        "head": draw(st.one_of(st.none(), st.integers(0, 2**32 - 1))),
        "addr": draw(st.one_of(st.none(), WORD)),
        "size": draw(st.one_of(st.none(), st.integers(0, 2**32 - 1))),
    }


def _reference(df: pl.DataFrame, vendor: str) -> bytes:
    """format_lines' lines, newline-terminated: what render_bytes must give."""
    return ("\n".join(format_lines(df, vendor)) + "\n").encode()


def _frame(rows):
    return conform(pl.DataFrame(rows, infer_schema_length=None))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(st.one_of(xen_row(), xen_row(), other_row()), min_size=1, max_size=60),
    vendor=st.sampled_from(["vmx", "svm"]),
)
def test_compiled_dump_is_format_lines_byte_for_byte(rows, vendor):
    df = _frame(rows)
    expected = _reference(df, vendor)
    assert bytes(render_bytes(df, vendor)) == expected


@pytest.mark.parametrize("vendor", ["vmx", "svm"])
def test_every_catalogue_event_with_every_word_count(vendor):
    """Each id with 0..7 words, exit reasons and hypercall numbers across their range."""
    rng = np.random.default_rng(21)
    rows = []
    for code in CODES:
        for nargs in range(8):
            words = rng.integers(0, 2**32, 7).tolist()
            words[0] = int(rng.integers(0, 80))  # a named value most of the time
            rows.append({"source": "xentrace", "ts_ns": int(rng.integers(0, 10**11)),
                         "cpu": nargs, "dom": int(rng.integers(0, 12)), "vcpu": nargs,
                         "event": xe.event_name(code), "code": code, "nargs": nargs}
                        | {f"arg{i}": w for i, w in enumerate(words)})  # fmt: skip
    df = _frame(rows)
    expected = _reference(df, vendor)
    assert bytes(render_bytes(df, vendor)) == expected


@pytest.mark.parametrize("limit", [None, 4, 8, 40])
def test_streamed_chunks_are_the_whole_dump(monkeypatch, limit):
    """The first rows come in small slices (a reader like `head` gets them at once), then
    in batches: every row once, in order, whatever the limit."""
    from xvtrace.analysis import dump

    monkeypatch.setattr(dump, "RAMP_ROWS", (3, 5))
    rng = np.random.default_rng(5)
    rows = [{"source": "xentrace", "ts_ns": i * 10, "cpu": 0, "dom": 1, "vcpu": 0,
             "event": xe.event_name(code), "code": code, "nargs": 2, "arg0": int(rng.integers(0, 50)),
             "arg1": i} for i, code in enumerate(CODES * 3)]  # fmt: skip
    df = _frame(rows)
    chunks = [bytes(c) for c in dump.iter_chunks(df.lazy(), "vmx", batch=7, limit=limit)]
    whole = df if limit is None else df.head(limit)
    assert b"".join(chunks) == bytes(render_bytes(whole, "vmx"))
    assert chunks[0].count(b"\n") == min(3, len(whole))  # the first slice alone


@pytest.mark.parametrize("limit", [None, 0, 5, 13, 1000])
def test_a_filtered_dump_is_read_a_slice_at_a_time(limit):
    """The table is read `batch` rows at a time and each slice filtered (so a slow reader
    holds one slice): the rows of the filter over the whole table, the first `limit` of
    them, in order, none empty."""
    from xvtrace.analysis import dump

    df = pl.DataFrame({"cpu": [i % 3 for i in range(100)], "ts_ns": range(100)})
    keep = lambda ev: ev.filter((pl.col("cpu") == 1) & (pl.col("ts_ns") > 20))  # noqa: E731
    got = list(dump.batches(df.lazy(), 7, limit, keep))
    whole = keep(df.lazy()).collect()
    whole = whole if limit is None else whole.head(limit)
    assert all(len(f) for f in got) and all(len(f) <= 7 for f in got)
    assert (pl.concat(got) if got else whole.head(0)).equals(whole)


@pytest.mark.parametrize("max_variants", [2, 4096])
def test_many_ids_and_too_many_variants_print_as_format_lines(monkeypatch, max_variants):
    """700 distinct ids in one batch (the compiled pass's id table grows past its first
    room), and, with room for 2 line shapes only, the fallback to format_lines: the same
    bytes either way."""
    from xvtrace.analysis import dump

    monkeypatch.setattr(dump, "MAX_VARIANTS", max_variants)
    codes = [*sorted(xe.SPECS)[:50], *range(0x00ABC000, 0x00ABC000 + 650)]
    rows = [{"source": "xentrace", "ts_ns": i, "cpu": i % 4, "dom": i % 3, "vcpu": 0,
             "event": xe.event_name(code), "code": code, "nargs": i % 8, "arg0": i % 70,
             "arg1": 2**32 - i} for i, code in enumerate(codes * 2)]  # fmt: skip
    df = _frame(rows)
    expected = _reference(df, "vmx")
    assert bytes(render_bytes(df, "vmx")) == expected
    assert (dump._render_compiled(df, "vmx") is None) == (max_variants == 2)


def test_the_line_shapes_table_is_sized_by_their_limit(monkeypatch):
    """More shapes than a limit above the table's first fixed size (8192 slots): the pass
    gives up and format_lines prints them. With the table fixed, a full table never ended
    its search (the pass hung without the GIL)."""
    from xvtrace.analysis import dump

    monkeypatch.setattr(dump, "MAX_VARIANTS", 8192)
    n = 8193
    df = _frame([{"source": "xentrace", "ts_ns": i, "cpu": 0, "event": "unknown",
                  "code": 0x00A00000 + i, "nargs": 1, "arg0": i} for i in range(n)])  # fmt: skip
    assert dump._render_compiled(df, "vmx") is None
    assert bytes(render_bytes(df, "vmx")) == _reference(df, "vmx")
