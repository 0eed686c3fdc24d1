"""The compiled QEMU log scan reads every line exactly as the regexes do: the same rows,
counts and problems with it as without it, on formats and lines of every kind, chunked
anywhere."""

from __future__ import annotations

import json

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xvtrace.parsers import qemu_log, qemu_scan
from xvtrace.parsers.trace_events import TraceEvents, parse_definition

# Catalogued names (the table's event Enum) with formats that use every conversion the
# scan reads, and some it leaves to the regexes (%s, two numbers with no text between,
# hex followed by a hex letter).
DEFINITIONS = """
virtio_queue_notify(void *vdev, int n, void *vq) "vdev %p n %d vq %p"
virtqueue_pop(void *vq, void *elem, unsigned int in_num, unsigned int out_num) "vq %p elem %p in_num %u out_num %5u"
virtqueue_fill(void *vq, const void *elem, unsigned int len, unsigned int idx) "vq %p elem %#x len %o idx %08X"
virtio_blk_handle_write(void *vdev, void *req, uint64_t sector, size_t nsectors) "vdev %p req %p sector %"PRIu64" nsectors %zu"
handle_ioreq(void *req, uint32_t type, uint32_t dir, uint32_t df, uint32_t data_is_ptr, uint64_t addr, uint64_t data, uint32_t count, uint32_t size) "I/O=%p type=%d dir=%d df=%d ptr=%d port=0x%"PRIx64" data=0x%"PRIx64" count=%d size=%d"
virtio_set_status(void *vdev, uint8_t val) "vdev %#x val %u%%"
virtio_notify(void *vdev, void *vq) "vdev %p%p"
virtio_mmio_read(uint64_t offset) "offset 0x%xabc"
virtio_mmio_write_offset(uint64_t offset, const char *what) "offset 0x%" PRIx64 " %s"
virtio_input_queue_full(void) ""
virtio_notify_irqfd(void *vdev, void *vq) "vdev %p vq %p done"
"""
DEFS = TraceEvents.parse(DEFINITIONS, "test-trace-events")

numbers = st.one_of(
    st.integers(0, 300),
    st.integers(0, 2**64 - 1),
    st.integers(2**64, 2**70),  # too large: null, as the regexes' parse
    st.integers(-(2**63) - 5, -1),
)


@st.composite
def value_text(draw, conv):
    """A conversion's text: mostly as printf prints it, else nearly."""
    v = draw(numbers)
    m = abs(v)
    if draw(st.integers(0, 9)) < 8:
        kind, flags, width = conv.group("conv"), conv.group("flags"), conv.group("width")
        text = {
            "d": str(v), "i": str(v), "u": str(m), "x": f"{m:x}", "X": f"{m:X}", "o": f"{m:o}",
            "p": f"0x{m:x}" if m else "(nil)",
        }.get(kind, str(v))  # fmt: skip
        if kind in "xX" and "#" in flags:
            text = f"0x{text}" if m else "0"
        if width and width.isdigit():
            text = text.rjust(int(width), "0" if "0" in flags else " ")
        return text
    form = draw(st.sampled_from(["hex", "HEX", "0x", "0X", "nil", "lead0", "spaces", "junk"]))
    return {
        "hex": f"{m:x}", "HEX": f"{m:X}", "0x": f"0x{m:x}", "0X": f"0x{m:X}", "nil": "(nil)",
        "lead0": f"0x000{m:x}", "spaces": f"   {m}", "junk": draw(st.sampled_from(["", "-", "0x", "x1", "é", "0"])),
    }[form]  # fmt: skip


@st.composite
def line(draw):
    name = draw(st.sampled_from([*DEFS.events, "not_an_event", "virtio_blk_rw_complete"]))
    ev = DEFS.events.get(name)
    if ev is not None and draw(st.integers(0, 5)):
        # the format's conversions filled with texts
        out, pos = [], 0
        for m in qemu_scan._CONV.finditer(ev.fmt):
            out.append(ev.fmt[pos : m.start()])
            pos = m.end()
            out.append("%" if m.group("conv") == "%" else draw(value_text(m)))
        out.append(ev.fmt[pos:])
        rest = "".join(out)
    else:
        rest = draw(st.text(alphabet="0x1f (nil)-=vqelm%é", max_size=30))
    prefix = draw(st.sampled_from(["4242@1800000000.000014:"] * 4 + ["7@12.123456:", "", "1@2.3:",
                                   "2025-01-01T10:00:00.123456Z ", "99999999999@1.000001:",
                                   "12@99999999999999999999.000001:"]))  # fmt: skip
    sep = draw(st.sampled_from([" "] * 6 + ["", "  "]))
    end = draw(st.sampled_from(["\n"] * 6 + ["\r\n", "x\n"]))
    return f"{prefix}{name}{sep}{rest}{end}"


def decode(path, compiled: bool, chunk: int):
    dec = qemu_log.QemuLogDecoder(path, defs=DEFS, chunk_bytes=chunk, compiled=compiled)
    frames = list(dec.frames())
    return (pl.concat(frames) if frames else None), json.dumps(dec.describe())


@pytest.mark.slow  # (seconds: the real-system stage runs it)
@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(line(), st.sampled_from(["\n", "garbage line\n", "\r\n"])), min_size=1, max_size=40),
       st.integers(4096, 5000))  # fmt: skip
def test_compiled_scan_reads_lines_as_the_regexes_do(tmp_path_factory, lines, chunk):
    path = tmp_path_factory.mktemp("q") / "qemu.log"
    path.write_bytes("".join(lines).encode())
    fast, fast_stats = decode(path, True, chunk)
    slow, slow_stats = decode(path, False, chunk)
    assert (fast is None and slow is None) or fast.equals(slow)
    assert fast_stats == slow_stats


def test_scan_takes_the_lines_it_can_and_leaves_the_rest(tmp_path):
    """Most lines of an ordinary log go through the scan."""
    path = tmp_path / "qemu.log"
    path.write_text(
        "4242@1800000000.000014:virtio_queue_notify vdev 0x55d000001000 n 0 vq 0x7f0020000010\n"
        "4242@1800000000.000015:virtqueue_pop vq 0x7f0020000010 elem 0x55d010000000 in_num 1 out_num     2\n"
        "4242@1800000000.000016:virtio_mmio_write_offset offset 0x50 foo\n"
    )
    dec = qemu_log.QemuLogDecoder(path, defs=DEFS)
    import numpy as np

    from xvtrace.parsers.textlines import line_bounds

    body = path.read_bytes()
    starts, ends = line_bounds(body)
    got = dec.plan.scan(np.frombuffer(body, np.uint8), starts, ends, 0)
    assert got["_slow"].tolist() == [False, False, True]  # %s: the regexes read it
    df = pl.concat(list(dec.frames()))
    assert df["dev"].to_list() == ["0x55d000001000"] * 2 + [None]
    assert df["queue"].to_list() == [0, 0, None] and df["arg3"].to_list() == [None, 2, None]


def test_templates_refuse_formats_the_regex_could_read_otherwise():
    def t(fmt):
        return qemu_scan.template(parse_definition(f'e(int a, int b) "{fmt}"', 0))

    assert t("a %d b %d") is not None
    assert t("a %d%d") is None  # no text between two numbers
    assert t("a %x b %s") is None  # text arguments
    assert t("a %xf %d") is None  # a hex digit right after hex digits
    assert t("a %d1 %d") is None
