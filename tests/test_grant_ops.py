"""dom0's grant records joined to requests (xvtrace.analysis.grant_ops), on made-up tables
whose answer is known: a record belongs to the request whose pop..submit or I/O
done..fill stretch holds it once the hypervisor's time is on the device model's clock."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xvtrace.analysis import grant_ops
from xvtrace.timeline.clock import Clock

OFFSET = 1_000_000  # the device model's clock runs this far ahead of the hypervisor's
CLOCK = Clock(offset_ns=OFFSET, drift_ppm=0.0, lower_ns=OFFSET, upper_ns=OFFSET,
              consistent=True, pairs=10)  # fmt: skip


def _requests() -> pl.DataFrame:
    # two requests overlapping in time (both popped in one kick), their stretches not:
    # pops 100..200 and 200..300, completions 500..600 and 600..700 (a flush: no submit)
    return pl.DataFrame({
        "request": [0, 1],
        "pop_ns": [100, 200], "handle_ns": [200, None],
        "io_done_ns": [500, None], "fill_ns": [600, 700],
    })  # fmt: skip


def _events(rows: list[tuple[str, int | None]]) -> pl.LazyFrame:
    return pl.DataFrame(
        {
            "event": [e for e, _ in rows],
            "ts_ns": [None if t is None else t - OFFSET for _, t in rows],
        },
        schema={"event": pl.String, "ts_ns": pl.Int64},
    ).lazy()


def test_each_record_goes_to_the_request_whose_stretch_holds_it():
    ev = _events([
        ("mem.grant_map", 150), ("mem.grant_map", 160),  # request 0's pop..submit
        ("mem.grant_map", 250),  # request 1's (below)
        ("mem.grant_map", 650),  # inside two stretches that overlap: no one's
        ("mem.grant_unmap", 550),  # request 0's I/O done..fill
        ("mem.grant_unmap", 50), ("mem.grant_unmap", 900),  # before and after everything
        ("hvm.vmentry", 150),  # not a grant record
    ])  # fmt: skip
    per, outside = grant_ops.per_request(ev, _requests(), CLOCK)
    got = {r: (m, u) for r, m, u in per.iter_rows()}
    assert got[0] == (2, 1)
    # request 1 has no submit and no I/O done: its one stretch runs from its pop (200) to
    # its fill (700), cut where request 0's completion starts (500): 250 is its, 650 no one's
    assert got[1] == (1, 0)
    assert outside == {"grant_maps": 1, "grant_unmaps": 2}


def test_no_clock_no_requests_or_no_grant_records_give_none():
    ev = _events([("mem.grant_map", 150)])
    assert grant_ops.per_request(ev, _requests(), None) is None
    assert grant_ops.per_request(ev, _requests().clear(), CLOCK) is None
    assert grant_ops.per_request(_events([("hvm.vmentry", 1)]), _requests(), CLOCK) is None


def test_the_offset_is_settled_within_the_clocks_bounds_by_the_records():
    # the fit's bounds allow offsets -60..+140 around the truth and their middle (+40) is
    # off: request 0's last map (195) would land in request 1's stretch and its last unmap
    # (595) in request 1's completion. Every record is in a stretch only for -5..+5.
    off = Clock(offset_ns=OFFSET + 40, drift_ppm=0.0, lower_ns=OFFSET - 60,
                upper_ns=OFFSET + 140, consistent=True, pairs=10)  # fmt: skip
    ev = _events([("mem.grant_map", 105), ("mem.grant_map", 195), ("mem.grant_map", 295),
                  ("mem.grant_unmap", 505), ("mem.grant_unmap", 595)])  # fmt: skip
    per, outside = grant_ops.per_request(ev, _requests(), off)
    assert {r: (m, u) for r, m, u in per.iter_rows()} == {0: (2, 2), 1: (1, 0)}
    assert outside == {"grant_maps": 0, "grant_unmaps": 0}


def test_the_settled_shift_is_the_middle_of_the_widest_run_that_holds_the_most():
    import numpy as np

    start, end = np.array([100, 300]), np.array([200, 400])
    # within -80..+80: 150 is in stretch 0 for -50..+50, 190 for -80..+10; 250 is in none
    # but at -50 (stretch 0) and +50 (stretch 1)
    assert grant_ops.settled_shift(np.array([150]), start, end, -80, 80) == 0
    assert grant_ops.settled_shift(np.array([190]), start, end, -80, 80) == -35
    assert grant_ops.settled_shift(np.array([150, 190]), start, end, -80, 80) == -20
    # both held only at -50 and at +50: two runs of one shift each
    assert grant_ops.settled_shift(np.array([150, 250]), start, end, -80, 80) in (-50, 50)
    assert grant_ops.settled_shift(np.array([150]), start, end, 0, 0) == 0  # no room
    assert grant_ops.settled_shift(np.array([1000]), start, end, -80, 80) == 0  # out of reach


def test_a_time_where_two_stretches_touch_counts_once_as_the_join_gives_it():
    import numpy as np

    # stretches that touch at 200 (a request without an I/O done: its completion's stretch
    # starts where its submission's ends); two records at 150 (a PV dom0's two per grant)
    # and one at 470: every record is in a stretch for -50..+30, but counted in both
    # stretches at +50 the two at 150 would make that shift look best
    start, end = np.array([100, 200, 400]), np.array([200, 300, 500])
    assert grant_ops.settled_shift(np.array([150, 150, 470]), start, end, -80, 80) == -10


def test_a_wide_bound_among_short_stretches_settles_the_same_on_fewer_records(monkeypatch):
    import numpy as np

    start = np.arange(0, 10_000, 10)
    end = start + 5
    t = np.arange(2, 10_000, 10)  # each 2 after its stretch's start: at home for -2..+3
    monkeypatch.setattr(grant_ops, "SETTLING_PAIRS", 500)
    assert grant_ops.settled_shift(t, start, end, -2000, 2000) in (0, 1)


STAMPS = st.one_of(st.none(), st.integers(-60, 400))  # (a time before the origin too)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(STAMPS, STAMPS, STAMPS, STAMPS), min_size=1, max_size=12),
    st.lists(st.tuples(st.sampled_from(list(grant_ops.COLUMNS)),
                       st.one_of(st.none(), st.integers(-20, 420))), min_size=1, max_size=30),
    st.tuples(st.integers(0, 60), st.integers(0, 60)),
    st.booleans(),
    st.tuples(st.integers(1, 7), st.integers(1, 5), st.integers(1, 3),
              st.sampled_from([1, 2, 3, 1 << 22])),
)  # fmt: skip
def test_the_search_counts_what_polars_join_asof_and_pivot_count(
    stamps, records, bounds, in_order, sizes
):
    """per_request's search of the stretches' starts, the records read a few at a time from
    their file (in time order, or not: sorted once), the stretches made a few requests at a
    time in sorted runs merged a few rows at a time, against the polars join it replaced
    (join_asof backward on the sorted stretches, the records past their stretch's end or
    of no time dropped, a pivot of the rest per request), on the same stretches and
    settled shift; the shift settled on the stretches near the records is the one settled
    on all of them, however few pairs settled_shift may take."""
    if in_order:
        records = sorted(records, key=lambda r: (r[1] is not None, r[1] or 0))
    req = pl.DataFrame(
        {"request": list(range(len(stamps))),
         **{c: [s[i] for s in stamps] for i, c in enumerate(grant_ops.READS[1:])}},
        schema={"request": pl.Int64, **dict.fromkeys(grant_ops.READS[1:], pl.Int64)},
    )  # fmt: skip
    below, above = bounds
    clock = Clock(offset_ns=OFFSET, drift_ppm=0.0, lower_ns=OFFSET - below,
                  upper_ns=OFFSET + above, consistent=True, pairs=10)  # fmt: skip
    join_records, request_rows, merge_rows, pairs = sizes
    # the records' times as the spread gives them: those of no time first, as NaN
    timed = sorted(t for _, t in records if t is not None)
    untimed = len(records) - len(timed)
    t = np.concatenate([np.full(untimed, np.nan), timed]) if untimed else np.array(timed)
    with pytest.MonkeyPatch.context() as mp:  # (slices of records, and a spread of them)
        mp.setattr(grant_ops, "JOIN_RECORDS", join_records)
        mp.setattr(grant_ops, "SETTLING_RECORDS", 2)
        mp.setattr(grant_ops, "SETTLING_PAIRS", pairs)
        mp.setattr(grant_ops, "REQUEST_ROWS", request_rows)
        mp.setattr(grant_ops, "MERGE_ROWS", merge_rows)
        got = grant_ops.per_request(_events(records), req, clock)
        start, end, owner = grant_ops._stretches(req)
        shift = grant_ops.settled_shift(t, start, end, -below, above)
        with tempfile.TemporaryDirectory() as tmp:
            pieces, near = grant_ops._sorted_stretches(req.lazy(), Path(tmp), t, -below, above)
            made = [np.fromfile(path, np.int64).reshape(3, -1) for path, _ in pieces]
        near_shift = grant_ops.settled_shift(t, *near, -below, above)
    made = np.concatenate([np.zeros((3, 0), np.int64), *made], axis=1)
    assert made.dtype == np.int64
    assert [list(c) for c in made] == [list(start), list(end), list(owner)]
    assert near_shift == shift
    stretches = pl.DataFrame({"start": start, "end": end, "request": owner})
    grants = pl.DataFrame(
        {"column": [grant_ops.COLUMNS[c] for c, _ in records],
         "t": [None if t is None else t + shift for _, t in records]},
        schema={"column": pl.String, "t": pl.Int64},
    ).drop_nulls().sort("t")  # fmt: skip
    hit = grants.join_asof(stretches, left_on="t", right_on="start", strategy="backward")
    hit = hit.filter(pl.col("t") <= pl.col("end"))
    want = {r: [0, 0] for r in range(len(stamps))}
    for r, c in hit.select("request", "column").iter_rows():
        want[r][list(grant_ops.COLUMNS.values()).index(c)] += 1
    per, outside = got
    assert per.columns == ["request", *grant_ops.COLUMNS.values()]
    assert per.dtypes[1:] == [pl.UInt32, pl.UInt32]
    assert {r: [m, u] for r, m, u in per.iter_rows()} == want
    for i, c in enumerate(grant_ops.COLUMNS.values()):
        recorded = sum(grant_ops.COLUMNS[name] == c for name, _ in records)
        assert outside[c] == recorded - sum(w[i] for w in want.values())
