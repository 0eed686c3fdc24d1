"""ioreq_t page dumps: layout round trip, recognition by content, bad input."""

from __future__ import annotations

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from xvtrace import api
from xvtrace.parsers import ioreq

SLOT = st.fixed_dictionaries(
    {
        "addr": st.integers(0, 2**64 - 1),
        "data": st.integers(0, 2**64 - 1),
        "count": st.integers(0, 2**32 - 1),
        "size": st.sampled_from([1, 2, 4, 8]),
        "vp_eport": st.integers(0, 2**32 - 1),
        "state": st.integers(1, 3),
        "data_is_ptr": st.integers(0, 1),
        "dir": st.integers(0, 1),
        "type": st.sampled_from(ioreq.TYPES),
    }
)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(SLOT, min_size=1, max_size=8), min_size=1, max_size=5))
def test_round_trip(tmp_path_factory, pages):
    path = tmp_path_factory.mktemp("io") / "ioreq.bin"
    blob = ioreq.encode(pages)
    path.write_bytes(blob)
    assert ioreq.sniff(blob[:4096])
    dec = ioreq.IoreqPageDecoder(path)
    (df,) = list(dec.frames())
    want = [(p, v, s) for p, slots in enumerate(pages) for v, s in enumerate(slots)]
    assert len(df) == len(want) and not dec.stats.problems
    for row, (p, v, s) in zip(df.iter_rows(named=True), want, strict=True):
        assert (row["head"], row["vcpu"], row["addr"], row["size"]) == (p, v, s["addr"], s["size"])
        assert (row["arg0"], row["arg1"], row["arg2"], row["arg3"], row["arg4"], row["arg5"], row["arg6"]) == (
            s["data"], s["count"], s["state"], s["dir"], s["type"], s["data_is_ptr"], s["vp_eport"])  # fmt: skip


def test_ingest_recognises_a_dump_by_content(tmp_path):
    raw = tmp_path / "b" / "raw"
    raw.mkdir(parents=True)
    (raw / "whatever.dat").write_bytes(
        ioreq.encode([[{"addr": 0xFEB00050, "size": 4, "state": 1, "type": 1}]])
    )
    ev = api.ingest(tmp_path / "b").bundle.events().collect()
    assert ev["event"].to_list() == ["ioreq.slot"]
    assert ev["addr"][0] == 0xFEB00050 and ev["source"][0] == "ioreq"


def test_invalid_slots_and_partial_pages_are_counted(tmp_path):
    blob = bytearray(
        ioreq.encode([[{"addr": 1, "size": 4, "state": 1}], [{"addr": 2, "size": 2, "state": 3}]])
    )
    blob[4096 + 32 + 31] = 99  # slot 1 of page 1: type 99 does not exist
    path = tmp_path / "io.bin"
    path.write_bytes(bytes(blob) + b"\x01\x02\x03")
    dec = ioreq.IoreqPageDecoder(path)
    (df,) = list(dec.frames())
    assert df["addr"].to_list() == [1, 2]
    assert dec.stats.skipped == 1
    kinds = {p.kind: p.offset for p in dec.stats.problems}
    assert kinds == {"truncated": 8192, "bad-record": 4096 + 32}


def test_text_and_random_pages_are_not_taken_for_ioreqs():
    assert not ioreq.sniff(b"virtio_notify vdev 0x1 vq 0x2\n" * 200)
    rng = np.random.default_rng(1)
    assert not ioreq.sniff(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert not ioreq.sniff(bytes(4096))  # nothing in use: nothing to decode


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=9000))
def test_arbitrary_bytes_never_crash(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("f") / "io.bin"
    path.write_bytes(blob)
    try:
        frames = list(ioreq.IoreqPageDecoder(path).frames())
    except ioreq.ParseError:
        return
    assert all(isinstance(f, pl.DataFrame) for f in frames)


def test_time_order_is_checked_across_the_slices_edges(monkeypatch):
    """`_time_ordered` checks KEY_SLICE rows at a time: an inversion between one slice's
    last row and the next one's first is still one; a tie goes by offset; a null time is in
    order with any."""
    from xvtrace.timeline import ioreqs

    monkeypatch.setattr(ioreqs, "KEY_SLICE", 4)

    def ordered(ns, off=None):
        off = list(range(len(ns))) if off is None else off
        return ioreqs._time_ordered(pl.DataFrame({"dm_ns": ns, "dm_off": off}))

    assert ordered([1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert not ordered([1, 2, 3, 5, 4, 6, 7, 8, 9])  # rows 3 and 4: two slices
    assert not ordered([1, 2, 3, 4, 4, 6], [0, 1, 2, 4, 3, 5])  # a tie, offsets back
    assert ordered([1, 2, 3, None, 2, 6])
