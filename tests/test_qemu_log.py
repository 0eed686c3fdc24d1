"""QEMU log-backend trace decoding: the real capture, the three line forms, every packaged
event's format read back exactly, and hostile input."""

from __future__ import annotations

import json
import re

import numpy as np
import polars as pl
import pytest
from helpers import QEMU_PCI
from hypothesis import given, settings
from hypothesis import strategies as st

from xvtrace.parsers import qemu_log
from xvtrace.parsers.errors import ParseError
from xvtrace.parsers.trace_events import EventDef, TraceEvents, parse_definition

DEFS = TraceEvents.default()
LOG = QEMU_PCI / "trace.log"


def test_real_capture_decodes_every_line_with_the_capture_own_counts():
    df, stats = qemu_log.decode_file(LOG)
    meta = json.loads((QEMU_PCI / "metadata.json").read_text())["trace"]
    assert stats.decoded == meta["lines_parsed"] == len(df)
    assert stats.skipped == stats.skipped_bytes == 0 and not stats.problems
    counts = dict(df.group_by("event").len().iter_rows())
    assert {k.removeprefix("qemu."): v for k, v in counts.items()} == meta["event_counts"]
    threads = dict(df.group_by("thread").len().iter_rows())
    assert {str(k): v for k, v in threads.items()} == meta["thread_ids"]
    # rows keep file order and point back at their lines
    text = LOG.read_bytes()
    assert df["src_offset"].is_sorted()
    for r in df.sample(20, seed=1).iter_rows(named=True):
        line = text[r["src_offset"] :].split(b"\n", 1)[0].decode()
        assert line.split(":", 1)[1].startswith(r["event"].removeprefix("qemu."))
        sec, usec = line.split("@")[1].split(":")[0].split(".")
        assert r["ts_ns"] == int(sec) * 10**9 + int(usec) * 1000


def test_roles_fill_device_queue_element_and_size():
    df, _ = qemu_log.decode_file(LOG)
    fill = df.filter(pl.col("event") == "qemu.virtqueue_fill").row(0, named=True)
    # 10913@1795634123.741752:virtqueue_fill vq 0x7f08206d1010 elem 0x56247f6e70c0 len 513 idx 0
    assert fill["arg0"] == 0x7F08206D1010 and fill["addr"] == 0x56247F6E70C0
    assert fill["size"] == 513 and fill["nargs"] == 4
    # the vq pointer resolves to the device and queue named by virtio_queue_notify
    assert fill["dev"] == "0x56247f3d6200" and fill["queue"] == 0
    read = df.filter(pl.col("event") == "qemu.virtio_blk_handle_read").row(1, named=True)
    assert read["size"] == read["arg3"] * 512 and read["addr"] == read["arg1"]
    # every virtqueue event of the capture found its device (all vqs are kicked at least once)
    vq = df.filter(pl.col("event").cast(pl.String).str.starts_with("qemu.virtqueue_"))
    assert vq.filter(pl.col("event") != "qemu.virtqueue_alloc_element")["dev"].null_count() == 0


def _strip_prefix(line: str) -> str:
    return line.split(":", 1)[1]


def _iso(line: str) -> str:
    head, rest = line.split(":", 1)
    sec, usec = head.split("@")[1].split(".")
    import datetime as dt

    t = dt.datetime.fromtimestamp(int(sec), dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{t}.{usec}Z {rest}"


@pytest.mark.parametrize("form", ["bare", "iso"])
def test_three_line_forms_decode_to_the_same_events(tmp_path, form):
    lines = LOG.read_text().splitlines()[:400]
    conv = _strip_prefix if form == "bare" else _iso
    path = tmp_path / f"{form}.log"
    path.write_text("\n".join(conv(x) for x in lines) + "\n")
    stamped = tmp_path / "stamped.log"
    stamped.write_text("\n".join(lines) + "\n")
    want, _ = qemu_log.decode_file(stamped)
    got, stats = qemu_log.decode_file(path)
    assert stats.decoded == 400
    if form == "bare":  # decoded, and the fix said once (issue 24: it read as "pops 0")
        assert [(p.kind, p.offset) for p in stats.problems] == [("untimed", 0)]
        assert "-msg timestamp=on" in stats.warning_text() and stats.extra["untimed"] == 400
    else:
        assert not stats.problems
    cols = ["event", "nargs", *[f"arg{i}" for i in range(7)], "addr", "dev", "queue", "size"]
    assert got.select(cols).equals(want.select(cols))
    if form == "bare":
        assert got["ts_ns"].null_count() == 400 and not got["has_ts"].any()
        assert got["thread"].null_count() == 400
    else:
        assert got["ts_ns"].equals(want["ts_ns"])


# --- every packaged event's format, printed as QEMU would, reads back exactly ----------

_LENGTH = re.compile(r"(?<=%)([-+ #0]*\d*(?:\.\d+)?)(?:hh|h|ll|l|z|j|t|L|q)")


def _bits(ctype: str) -> int:
    if any(t in ctype for t in ("int64", "size_t", "long", "uint64", "hwaddr", "ram_addr")):
        return 64
    if "int16" in ctype or "short" in ctype:
        return 16
    if "int8" in ctype or "bool" in ctype:
        return 8
    return 32


def _render(ev: EventDef, values: list) -> str:
    """The line body QEMU's printf would produce (Python % after dropping C length
    modifiers; %p as glibc prints it)."""
    fmt = _LENGTH.sub(r"\1", ev.fmt)
    out_vals = []
    it = iter(values)
    for m in re.finditer(r"%[-+ #0]*\d*(?:\.\d+)?([a-zA-Z%])", fmt):
        if m.group(1) == "%":
            continue
        v = next(it)
        out_vals.append((f"0x{v:x}" if v else "(nil)") if m.group(1) == "p" else v)
    return re.sub(r"%([-+ #0]*\d*(?:\.\d+)?)p", r"%\1s", fmt) % tuple(out_vals)


def _value(conv_char: str, ctype: str):
    bits = _bits(ctype)
    if conv_char in "di":
        return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if conv_char in "sc":
        return st.text("abcdefxyz_0123456789", min_size=1 if conv_char == "c" else 0,
                       max_size=1 if conv_char == "c" else 12)  # fmt: skip
    return st.integers(0, 2**bits - 1)


NUMERIC_EVENTS = [
    e for e in DEFS.events.values() if not re.search(r"%[-+ #0]*\d*(?:\.\d+)?[eEfgGaA]", e.fmt)
]


@settings(max_examples=30, deadline=None)
@given(data=st.data())
@pytest.mark.parametrize("ev", NUMERIC_EVENTS, ids=lambda e: e.name)
def test_every_packaged_event_reads_back_what_qemu_prints(tmp_path_factory, ev, data):
    chars = [
        m.group(1)
        for m in re.finditer(
            r"%[-+ #0']*[\d*]*(?:\.\d+)?(?:hh|h|ll|l|z|j|t|L|q)?([a-zA-Z%])", ev.fmt
        )
    ]
    chars = [c for c in chars if c != "%"]
    values = [
        data.draw(_value(c, next(a.ctype for a in ev.args if a.name == conv.arg)))
        for c, conv in zip(chars, ev.conversions, strict=True)
    ]
    body = _render(ev, values)
    path = tmp_path_factory.mktemp("ev") / "t.log"
    path.write_text(f"77@1700000000.000001:{ev.name}{' ' + body if body else ''}\n")
    df, stats = qemu_log.decode_file(path, defs=DEFS)  # parsed once, not per example
    assert stats.decoded == 1 and not stats.problems, stats.problems
    row = df.row(0, named=True)
    numeric = [v for c, v in zip(chars, values, strict=True) if c not in "sc"]
    assert row["nargs"] == min(len(numeric), 7)
    assert [row[f"arg{i}"] for i in range(row["nargs"])] == [v % 2**64 for v in numeric[:7]]


# --- bad input ---------------------------------------------------------------------------


def test_garbage_lines_are_counted_with_their_offset(tmp_path):
    lines = LOG.read_text().splitlines()[:50]
    body = "\n".join(lines[:20]) + "\n\x00\x00garbage !!\n" + "\n".join(lines[20:]) + "\n"
    path = tmp_path / "t.log"
    path.write_text(body)
    _, stats = qemu_log.decode_file(path)
    assert stats.decoded == 50 and stats.skipped == 1
    assert stats.problems[0].offset == body.index("\x00")


def test_arguments_that_do_not_match_the_format_are_reported(tmp_path):
    path = tmp_path / "t.log"
    path.write_text("1@1.000001:virtqueue_pop vq 0x1 elem zzz in_num 1 out_num 2\n")
    df, stats = qemu_log.decode_file(path)
    assert len(df) == 1 and df["nargs"][0] == 0
    assert stats.problems[0].kind == "bad-args" and stats.problems[0].offset == 0


def test_truncated_last_line_and_invalid_utf8_do_not_crash(tmp_path):
    path = tmp_path / "t.log"
    path.write_bytes(b"1@1.000001:virtio_notify vdev 0x1 vq 0x2\n1@1.000002:virtio_no\xfftify vd")
    df, stats = qemu_log.decode_file(path)
    assert len(df) == 1 and stats.skipped == 1


def test_empty_file_is_a_clear_error(tmp_path):
    path = tmp_path / "t.log"
    path.write_bytes(b"")
    with pytest.raises(ParseError, match="empty"):
        qemu_log.decode_file(path)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_never_crash(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("fuzz") / "t.log"
    path.write_bytes(blob)
    try:
        df, stats = qemu_log.decode_file(path, chunk_bytes=4096)
    except ParseError:
        return
    assert stats.decoded == len(df)


def test_definition_parser_reads_pri_macros_and_odd_formats():
    ev = parse_definition(
        "virtio_pci_notify_write(uint64_t addr, uint64_t val, unsigned int size) "
        '"0x%" PRIx64" = 0x%" PRIx64 " (%d)"',
        0,
    )
    assert ev.fmt == "0x%x = 0x%x (%d)"
    assert re.fullmatch(ev.regex, "0x4 = 0x1 (2)")
    assert [c.arg for c in ev.conversions] == ["addr", "val", "size"]


# every kind of conversion render_lines prints: pointer, hex, signed, '#', width, '%%'
ALL_KINDS = (
    "all_kinds(void *a, uint64_t b, int c, uint64_t d, uint64_t e, unsigned f) "
    '"a %p b 0x%" PRIx64 " c %d d %#x e %08X f %5u %%"'
)


def _printed(v: int, conv: str) -> str:
    """What the emulator's QEMU lines print for v under `conv` (Python's format(): a 0 with
    '#' is 0x0), the reference the compiled renderer is held to."""
    signed = v - 2**64 if v >= 2**63 else v
    return {"p": "(nil)" if v == 0 else format(v, "#x"), "x": format(v, "x"), "d": str(signed),
            "#x": format(v, "#x"), "08X": format(v, "X").rjust(8, "0"), "5u": str(v).rjust(5),
            }[conv]  # fmt: skip


@given(
    st.lists(
        st.lists(st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 2**63, 2**64 - 1]),
                 min_size=6, max_size=6),
        max_size=20,
    ),
)  # fmt: skip
def test_compiled_lines_are_printf_of_every_conversion(rows):
    from xvtrace.emulate.pending import Texts
    from xvtrace.parsers.trace_events import parse_definition, render_lines

    ev = parse_definition(ALL_KINDS, 0)
    cols = {a.name: np.array([r[i] for r in rows], np.uint64) for i, a in enumerate(ev.args)}
    got = Texts(*render_lines(ev, cols, len(rows))).to_list()
    convs = ("p", "x", "d", "#x", "08X", "5u")
    want = [
        "all_kinds "
        + "a {} b 0x{} c {} d {} e {} f {} %".format(
            *(_printed(v, c) for v, c in zip(r, convs, strict=True))
        )
        for r in rows
    ]
    assert got == want
    assert all(re.fullmatch(ev.regex, line.removeprefix("all_kinds ")) for line in got)


@pytest.mark.parametrize("spread", ["repeats", "distinct", "both"])
def test_a_sample_tells_columns_of_mostly_distinct_values(spread):
    from xvtrace.emulate.qemu_lines import looks_distinct

    rng = np.random.default_rng(4)
    few = 0x55D0_1000_0000 + rng.integers(0, 32, 20_000).astype(np.uint64) * np.uint64(0x140)
    wide = rng.integers(0, 2**63, 20_000, dtype=np.uint64)
    values = {
        "repeats": few,
        "distinct": wide,
        "both": np.where(rng.random(20_000) < 0.5, few, wide),
    }[spread]
    assert looks_distinct(values) == (spread != "repeats")


@given(
    st.lists(st.integers(0, 2**64 - 1), max_size=40)
    | st.lists(st.integers(2**64 - 300, 2**64 - 1), max_size=40)
    | st.lists(st.integers(-(2**63), 2**63 - 1), max_size=40)
    | st.lists(st.integers(-50, 50), max_size=40),
)
def test_factorize_is_np_unique(values):
    from xvtrace.emulate.qemu_lines import factorize

    v = np.array(values, np.int64 if values and min(values) < 0 else np.uint64)
    uniq, inv = factorize(v)
    want, want_inv = np.unique(v, return_inverse=True)
    assert uniq.dtype == v.dtype and np.array_equal(uniq, want)
    assert np.array_equal(inv, want_inv.reshape(-1))


def test_line_render_refuses_variants_it_does_not_have():
    from xvtrace.parsers import line_render

    values = np.array([[1], [2]], np.uint64)
    pieces = [["a ", " b"], ["c ", " d"]]
    data, offsets = line_render.render(pieces, [line_render.Field()], values, np.array([1, 0]))
    assert bytes(data) == b"c 1 da 2 b" and offsets.tolist() == [0, 5, 10]
    with pytest.raises(ValueError, match="variant"):
        line_render.render(pieces, [line_render.Field()], values, np.array([0, 2]))
    with pytest.raises(ValueError, match="piece"):
        line_render.render([["a "]], [line_render.Field()], values)
