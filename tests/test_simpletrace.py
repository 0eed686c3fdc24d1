"""QEMU simpletrace files made to the documented layout, read back; and hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xvtrace.parsers import simpletrace
from xvtrace.parsers.errors import ParseError
from xvtrace.parsers.trace_events import TraceEvents

DEFS = TraceEvents.parse(
    """
virtqueue_pop(void *vq, void *elem, unsigned int in_num, unsigned int out_num) "vq %p elem %p in_num %u out_num %u"
virtqueue_fill(void *vq, const void *elem, unsigned int len, unsigned int idx) "vq %p elem %p len %u idx %u"
virtio_blk_handle_read(void *vdev, void *req, uint64_t sector, size_t nsectors) "vdev %p req %p sector %"PRIu64" nsectors %zu"
xen_device_frontend_state(const char *type, char *name, const char *state) "type: %s name: %s -> %s"
vhost_user_set_mem_table_withfd(int index, const char *name, uint64_t memory_size, uint64_t guest_phys_addr, uint64_t userspace_addr, uint64_t offset) "%d:%s: size:0x%"PRIx64" GPA:0x%"PRIx64" QVA/userspace:0x%"PRIx64" RB offset:0x%"PRIx64
""",
    "test-defs",
)
NAMES = list(DEFS.events)


@st.composite
def records(draw):
    name = draw(st.sampled_from(NAMES))
    args = [
        draw(st.text("abc/_0-9", max_size=20)) if a.is_string else draw(st.integers(0, 2**64 - 1))
        for a in DEFS.events[name].args
    ]
    return name, draw(st.integers(0, 2**63 - 1)), draw(st.integers(0, 2**32 - 1)), args


@settings(max_examples=60, deadline=None)
@given(st.data(), st.sampled_from([3, 4]))
def test_round_trip(tmp_path_factory, data, version):
    recs = data.draw(st.lists(records(), max_size=30))
    path = tmp_path_factory.mktemp("st") / "trace-1234"
    path.write_bytes(simpletrace.encode(DEFS, recs, version=version))
    dec = simpletrace.SimpletraceDecoder(path, defs=DEFS)
    frames = list(dec.frames())
    assert dec.stats.decoded == len(recs) and not dec.stats.problems
    if not recs:
        return
    (df,) = frames
    for row, (name, ts, pid, args) in zip(df.iter_rows(named=True), recs, strict=True):
        numeric = [v for a, v in zip(DEFS.events[name].args, args, strict=True) if not a.is_string]
        assert row["ts_ns"] == ts and row["thread"] == pid
        assert row["code"] == DEFS.events[name].number
        assert row["nargs"] == min(len(numeric), 7)
        assert [row[f"arg{i}"] for i in range(row["nargs"])] == numeric[:7]


def test_roles_and_dropped_records(tmp_path):
    recs = [
        ("virtqueue_pop", 10, 7, [0x7F00, 0x5500, 2, 1]),
        ("virtio_blk_handle_read", 20, 7, [0xABC0, 0x5500, 8, 8]),
        ("virtqueue_fill", 30, 7, [0x7F00, 0x5500, 4097, 0]),
    ]
    blob = simpletrace.encode(DEFS, recs)
    # a dropped-records record: id DROPPED_EVENT_ID, one u64 argument
    dropped = bytes(simpletrace.np.array([1, simpletrace.DROPPED_EVENT_ID, 40], "<u8").tobytes())
    dropped += (
        simpletrace.np.array([32, 7], "<u4").tobytes() + simpletrace.np.array([5], "<u8").tobytes()
    )
    path = tmp_path / "t"
    path.write_bytes(blob + dropped)
    dec = simpletrace.SimpletraceDecoder(path, defs=DEFS)
    (df,) = list(dec.frames())
    assert dec.stats.lost == 5
    fill = df.row(2, named=True)
    assert fill["addr"] == 0x5500 and fill["size"] == 4097
    read = df.row(1, named=True)
    assert read["size"] == 8 * 512 and read["dev"] == "0xabc0"


def test_truncated_file_keeps_whole_records(tmp_path):
    recs = [("virtqueue_pop", i, 1, [1, 2, 3, 4]) for i in range(10)]
    blob = simpletrace.encode(DEFS, recs)
    path = tmp_path / "t"
    path.write_bytes(blob[:-7])
    dec = simpletrace.SimpletraceDecoder(path, defs=DEFS)
    (df,) = list(dec.frames())
    assert len(df) == 9 and dec.stats.problems[0].kind == "truncated"
    assert dec.stats.problems[0].offset == len(blob) - 64


def test_wrong_file_is_a_clear_error(tmp_path):
    path = tmp_path / "t"
    path.write_bytes(b"not a trace at all, definitely not one")
    with pytest.raises(ParseError, match="simpletrace"):
        list(simpletrace.SimpletraceDecoder(path, defs=DEFS).frames())


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_after_the_header_never_crash(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("f") / "t"
    path.write_bytes(simpletrace.HEADER + blob)
    dec = simpletrace.SimpletraceDecoder(path, defs=DEFS)
    frames = list(dec.frames())
    assert dec.stats.decoded == sum(len(f) for f in frames)
