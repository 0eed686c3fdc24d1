"""The compiled ftrace scan reads every line exactly as the regexes do: the same rows,
counts, problems and errors with it as without it, on lines of every shape, chunked
anywhere."""

from __future__ import annotations

import json

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xvtrace.parsers.errors import ParseError
from xvtrace.parsers.ftrace import FtraceDecoder

BIG = [2**31, 2**32, 2**55, 2**63, 2**64, 10**25]


def often(valid: list, odd: list):
    """Mostly a valid field, sometimes an odd one."""
    return st.one_of(st.sampled_from(valid), st.sampled_from(valid), st.sampled_from(valid),
                     st.sampled_from(odd))  # fmt: skip


num = st.one_of(st.integers(0, 5000), st.integers(0, 5000), st.sampled_from(BIG)).map(str)


@st.composite
def line(draw):
    comm = draw(often(["qemu-system-i38", "<idle>", "<...>", "kworker/0:1H", "blkback.1.xvda"],
                      ["a-12", "  x y", "-", ""]))  # fmt: skip
    pid = draw(num)
    tgid = draw(often(["", "(   2101) ", "(-------) "], ["( ) ", "(12)"]))
    cpu = draw(often(["[000]", "[3]"], ["[99999999999]", "[2147483648]", "[x]"]))
    flags = draw(often([" d..1.", " d.h1", ""], [" ......", " [x]", " 1234"]))
    ts = draw(often(["1000000024000", "999999999999", "1000000000000"],
                    ["12.345678", "12.", "9223372036854775808", "18446744073709551616"]))  # fmt: skip
    name = draw(often(["block_rq_issue", "block_rq_complete", "block_rq_insert", "irq_handler_entry"],
                      ["sched_switch", "block_rq_issue_x"]))  # fmt: skip
    complete = name == "block_rq_complete"
    major = draw(often(["259", "8", "0"], ["0259", "99999999999", "4294967296"]))
    rwbs = draw(often(["W", "WS", "R", "RA", "FWS"], ["", "W S"]))
    nbytes = draw(often([""] if complete else [" 4096", " 0"], [" 4096", ""]))
    cmd = draw(often(["()", "(x y)"], ["(", "())"]))
    sector, nr = draw(num), draw(num)
    who = draw(often(["[0]", "[-5]", "[-0]"] if complete else ["[qemu]", "[]", "[a]b]"],
                     ["[x", "[-99999999999999999999]", "[9223372036854775808]", "[0]", "[qemu]"]))  # fmt: skip
    sep = draw(often([" ", "    "], ["\t", ""]))
    fields = f"{major},0 {rwbs}{nbytes} {cmd} {sector} + {nr} {who}"
    if name == "irq_handler_entry":  # blkback's interrupt (the regexes read it)
        handler = draw(often(["blkif-backend", "timer0"], ["", "a b"]))
        fields = f"irq={draw(num)} name={handler}"
    text = f"{comm}-{pid}{sep}{tgid}{cpu}{flags} {ts}: {name}: {fields}"
    return text + draw(often(["\n"], ["\r\n", " \n"]))


def decode(path, compiled: bool, chunk: int, origin):
    dec = FtraceDecoder(path, cpu_khz=2_400_000, tsc_origin=origin, chunk_bytes=chunk,
                        compiled=compiled)  # fmt: skip
    try:
        frames, error = list(dec.frames()), None
    except ParseError as e:
        frames, error = [], str(e)
    except pl.exceptions.PolarsError as e:
        # numbers no kernel prints (a pid past 32 bits): a failed cast on both paths, whose
        # message counts the rows of the frame it was in
        frames, error = [], type(e).__name__
    return (pl.concat(frames) if frames else None), json.dumps(dec.describe()), error


@pytest.mark.slow  # (seconds: the real-system stage runs it)
@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(line(), st.sampled_from(["\n", "# tracer: nop\n", "CPU:2 [LOST 7 EVENTS]\n",
                                                   "garbage\n"])), min_size=1, max_size=40),
       st.integers(4096, 4400), st.sampled_from([None, 10**12]))  # fmt: skip
def test_compiled_scan_reads_lines_as_the_regexes_do(tmp_path_factory, lines, chunk, origin):
    path = tmp_path_factory.mktemp("f") / "trace.txt"
    path.write_bytes("".join(lines).encode())
    fast = decode(path, True, chunk, origin)
    slow = decode(path, False, chunk, origin)
    assert fast[2] == slow[2]
    if fast[2] is None:
        assert (fast[0] is None and slow[0] is None) or fast[0].equals(slow[0])
        assert fast[1] == slow[1]


@pytest.mark.parametrize("origin", [None, 10**12])
def test_an_ordinary_trace_goes_through_the_scan(tmp_path, origin):
    from xvtrace.parsers import ftrace_scan

    path = tmp_path / "trace.txt"
    text = (
        " qemu-system-i38-2101    [000] ..... 1000000038178: block_rq_insert: 259,0 W 4096 () 1783888 + 8 [qemu-system-i38]\n"
        "          <idle>-0       [003] d.h1. 1000000048000: block_rq_complete: 259,0 WS () 861664 + 32 [0]\n"
    )
    path.write_text(text * 3)
    import numpy as np

    from xvtrace.parsers.textlines import line_bounds

    body = path.read_bytes()
    starts, ends = line_bounds(body)
    status = ftrace_scan.scan(np.frombuffer(body, np.uint8), starts, ends, True)[0]
    assert (status == ftrace_scan.FAST).all()
    dec = FtraceDecoder(path, cpu_khz=2_400_000, tsc_origin=origin)
    df = pl.concat(list(dec.frames()))
    assert df["dev"].to_list() == ["259,0"] * 6 and df["thread"].to_list() == [2101, 0] * 3
