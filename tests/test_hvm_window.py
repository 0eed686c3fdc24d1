"""timeline.hvm: the exit pairing keeps the numbers of the handler records still waiting for
their vCPU's next record or entry, and writes the others as soon as they are final
(hvm_kernel.pending, shift): paired a few records at a time, with vCPUs that wait across
many chunks while others go on, the same records as paired in one chunk."""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from xvtrace.parsers.schema import conform
from xvtrace.timeline import hvm

ROLES = {"x": "hvm.vmexit", "e": "hvm.vmentry", "h": "hvm.mmio_write", "c": "hvm.vmmcall"}
records = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from("xxeehhhc"), st.integers(0, 1)), max_size=90
)


def events(recs) -> pl.LazyFrame:
    """xentrace records of dom 1: (vcpu, role, pCPU), in time order."""
    n = len(recs)
    return conform(
        pl.DataFrame(
            {
                "ts_ns": [10 * i for i in range(n)],
                "source": ["xentrace"] * n,
                "cpu": [c for _, _, c in recs],
                "dom": [1] * n,
                "vcpu": [v for v, _, _ in recs],
                "event": [ROLES[r] for _, r, _ in recs],
                "addr": [0xFE000050 + i for i in range(n)],
                "arg0": [32] * n,
                "src_file": ["trace.bin"] * n,
                "src_offset": [32 * i for i in range(n)],
            }
        )
    ).lazy()


@settings(max_examples=100, deadline=None)
@given(records, st.integers(1, 6))
def test_handled_paired_a_few_records_at_a_time_is_handled_in_one_chunk(recs, chunk):
    ev = events(recs)
    whole = hvm.handled(ev)
    saved = hvm.CHUNK_RECORDS
    hvm.CHUNK_RECORDS = chunk
    try:
        cut = hvm.handled(ev)
    finally:
        hvm.CHUNK_RECORDS = saved
    assert cut.equals(whole)


def test_a_vcpu_waiting_across_chunks_keeps_its_handlers():
    """vCPU 0 exits and logs three handlers, then vCPU 1 goes through many exits before
    vCPU 0's entry: its handlers get that entry, chained across the chunks."""
    recs = [(0, "x", 0), (0, "h", 0), (0, "h", 0), (0, "h", 0)]
    recs += [(1, r, 1) for _ in range(10) for r in "xhe"] + [(0, "e", 0)]
    saved = hvm.CHUNK_RECORDS
    hvm.CHUNK_RECORDS = 2
    try:
        got = hvm.handled(events(recs))
    finally:
        hvm.CHUNK_RECORDS = saved
    mine = got.filter(pl.col("vcpu") == 0)
    assert mine["entry_ns"].to_list() == [10 * (len(recs) - 1)] * 3
    assert mine["exit_ns"].to_list() == [0, 0, 0]
    assert mine["adjacent"].to_list() == [False, False, False]
    assert got.filter(pl.col("vcpu") == 1)["adjacent"].all()
