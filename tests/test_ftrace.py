"""dom0's ftrace text (block layer tracepoints) into the event table."""

import itertools

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xvtrace.parsers.errors import ParseError
from xvtrace.parsers.ftrace import FtraceDecoder, render, sniff

# the shapes Linux 6.1 prints: with and without tgid, counter and ns clocks
TSC_LINES = """\
# tracer: nop
#
  blkback.1.xvda-311     [001] d..1. 1000000024000: block_rq_insert: 259,0 WS 16384 () 861664 + 32 [blkback.1.xvda]
  blkback.1.xvda-311     [001] d..1. 1000000024000: block_rq_issue: 259,0 WS 16384 () 861664 + 32 [blkback.1.xvda]
          <idle>-0       [003] d.h1. 1000000048000: block_rq_complete: 259,0 WS () 861664 + 32 [0]
 qemu-system-i38-2101    (   2101) [000] ..... 1000000072000: block_rq_issue: 8,16 R 4096 () 2048 + 8 [qemu-system-i38]
           <...>-77      [000] ..... 1000000096000: block_rq_complete: 8,16 R () 2048 + 8 [-5]
          kworker-9      [000] ..... 1000000100000: sched_switch: prev_comm=a prev_pid=1
CPU:2 [LOST 7 EVENTS]
"""


def _decode(path, **kw):
    dec = FtraceDecoder(path, **kw)
    return pl.concat(list(dec.frames())), dec


def test_block_events_on_the_tsc(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text(TSC_LINES)
    assert sniff(p.read_bytes())
    df, dec = _decode(p, cpu_khz=2_400_000, tsc_origin=1_000_000_000_000)
    assert df["event"].to_list() == ["block.rq_insert", "block.rq_issue", "block.rq_complete",
                                     "block.rq_issue", "block.rq_complete"]  # fmt: skip
    assert df["ts_ns"].to_list() == [10_000, 10_000, 20_000, 30_000, 40_000]  # 2.4 cycles per ns
    assert df["addr"].to_list() == [861664, 861664, 861664, 2048, 2048]  # sectors
    assert df["size"].to_list() == [16384, 16384, 16384, 4096, 4096]
    assert df["arg0"].to_list() == [1, 1, 1, 0, 0]  # write?
    assert df["dev"].to_list() == ["259,0"] * 3 + ["8,16"] * 2
    assert df["vcpu"].to_list() == [1, 1, 3, 0, 0] and set(df["dom"]) == {0}
    assert df["arg2"][4] == 2**64 - 5  # error -5 kept as C would cast it
    assert df["thread"].to_list() == [311, 311, 0, 2101, 77]
    assert dec.stats.lost == 7 and dec.stats.extra["other_events"] == 1
    assert dec.describe()["clock"]["domain"].startswith("TSC")


def test_nanosecond_clock_keeps_dom0s_clock(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("  fio-42 [000] ..... 12345.678901: block_rq_issue: 8,0 R 4096 () 8 + 8 [fio]\n")
    df, dec = _decode(p)
    assert df["ts_ns"][0] == 12345_678901_000
    assert "not aligned" in dec.describe()["clock"]["domain"]


def test_counter_clock_without_cpu_khz_is_an_error(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("  fio-42 [000] ..... 123456789: block_rq_issue: 8,0 R 4096 () 8 + 8 [fio]\n")
    with pytest.raises(ParseError, match="cpu_khz"):
        _decode(p)


def test_garbage_is_counted_with_its_offset(tmp_path):
    p = tmp_path / "t.txt"
    good = "  fio-42 [000] ..... 1.000001: block_rq_issue: 8,0 R 4096 () 8 + 8 [fio]\n"
    p.write_text(good + "this is not ftrace\n" + good)
    df, dec = _decode(p)
    assert len(df) == 2 and dec.stats.skipped == 1
    assert dec.stats.problems[0].offset == len(good)


def test_render_round_trips(tmp_path):
    rows = pl.DataFrame({
        "tsc": [1000, 2000, 3000], "comm": ["blkback.1.xvda", "blkback.1.xvda", "<idle>"],
        "pid": [311, 311, 0], "cpu": [0, 0, 1],
        "event": ["block_rq_insert", "block_rq_issue", "block_rq_complete"],
        "major": [259] * 3, "minor": [0] * 3, "write": [True] * 3, "sector": [64] * 3, "nr_sector": [8] * 3,
    })  # fmt: skip
    p = tmp_path / "t.txt"
    p.write_text("\n".join(render(rows).to_list()) + "\n")
    df, _ = _decode(p, cpu_khz=1_000_000, tsc_origin=0)
    assert df["ts_ns"].to_list() == [1000, 2000, 3000]
    assert df["event"].to_list() == ["block.rq_insert", "block.rq_issue", "block.rq_complete"]
    assert df["addr"].to_list() == [64] * 3 and df["size"].to_list() == [4096] * 3


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=400))
def test_arbitrary_bytes_raise_only_parse_errors(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("fz") / "t.txt"
    p.write_bytes(data)
    dec = FtraceDecoder(p, cpu_khz=1000)
    try:
        frames = list(dec.frames())
    except ParseError:
        return
    decoded = sum(len(f) for f in frames)
    assert decoded == dec.stats.decoded  # every line: decoded, or counted as skipped
    assert decoded + dec.stats.skipped <= data.count(b"\n") + 1


def test_render_keeps_row_order_across_tasks_and_any_comm():
    """Lines are rendered per (event, task) but come back in row order; a comm is text,
    braces included."""
    rows = pl.DataFrame({
        "tsc": [5, 6, 7], "comm": ["a{0}b", "<idle>", "a{0}b"], "pid": [9, 0, 9], "cpu": [2, 0, 2],
        "event": ["block_rq_issue", "block_rq_complete", "block_rq_insert"],
        "major": [8] * 3, "minor": [16] * 3, "write": [False, True, True], "sector": [1, 2, 3],
        "nr_sector": [1, 2, 4],
    })  # fmt: skip
    assert render(rows).to_list() == [
        "           a{0}b-9       [002] .....            5: block_rq_issue: 8,16 R 512 () 1 + 1 [a{0}b]",
        "          <idle>-0       [000] .....            6: block_rq_complete: 8,16 W () 2 + 2 [0]",
        "           a{0}b-9       [002] .....            7: block_rq_insert: 8,16 W 2048 () 3 + 4 [a{0}b]",
    ]


@given(
    event=st.sampled_from(["block_rq_insert", "block_rq_issue", "block_rq_complete"]),
    task=st.sampled_from([("qemu-system-i38", 2101), ("<idle>", 0), ("a-very-long-comm-name", 7)]),
    rows=st.lists(
        st.tuples(
            st.integers(0, 2**64 - 1),
            st.booleans(),
            st.integers(0, 2**64 - 1),
            st.integers(0, 2**54 - 1),  # bytes = 512 x this fits 64 bits
        ),
        max_size=30,
    ),
)
def test_compiled_block_lines_are_render_task_s(event, task, rows):
    """The emulator's compiled block-trace writer against the polars renderer: widths past
    the 12-column timestamp, zero, 2^64 - 1, both directions, every event."""
    import numpy as np

    from xvtrace.parsers.ftrace import render_block, render_task

    tsc, write, sector, nr = (np.array([r[i] for r in rows], dt) for i, dt in
                              enumerate([np.uint64, bool, np.uint64, np.uint64]))  # fmt: skip
    frame = pl.DataFrame({"tsc": tsc, "write": write, "sector": sector, "nr_sector": nr},
                         schema={"tsc": pl.UInt64, "write": pl.Boolean, "sector": pl.UInt64,
                                 "nr_sector": pl.UInt64})  # fmt: skip
    want = render_task(event, *task, 3, 259, 0, frame).to_list()
    data, offsets = render_block(event, *task, 3, 259, 0, tsc=tsc, write=write, sector=sector,
                                 nr_sector=nr)  # fmt: skip
    got = [bytes(data[a:b]).decode() for a, b in itertools.pairwise(offsets)]
    assert got == want


def test_compiled_block_lines_refuse_ragged_rows_and_take_any_nonzero_as_a_write():
    import numpy as np

    from xvtrace.parsers.ftrace import render_block

    u = np.array([7, 8], np.uint64)
    with pytest.raises(ValueError, match="a value per line"):
        render_block("block_rq_issue", "x", 1, 0, 259, 0, tsc=u, write=np.ones(1, bool),
                     sector=u, nr_sector=u)  # fmt: skip
    data, offsets = render_block("block_rq_issue", "x", 1, 0, 259, 0, tsc=u,
                                 write=np.array([2, 0], np.uint8), sector=u, nr_sector=u)  # fmt: skip
    lines = bytes(data).decode()
    assert lines.count(" W ") == 1 and lines.count(" R ") == 1 and offsets[-1] == len(data)
