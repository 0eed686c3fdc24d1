"""timeline.clock: the fit reads its pairs a slice at a time and keeps only those on the
hulls of their bounds (clock._hull); the clock is the one a fit of every pair gives."""

from __future__ import annotations

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from xvtrace.timeline import clock
from xvtrace.timeline.clock import _hull, align_device_model, fit_line

EPOCH = 1_800_000_000 * 10**9  # a device-model clock's epoch-sized values

points = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**5)), max_size=60)


@settings(max_examples=400, deadline=None)
@given(points, st.booleans(), st.lists(st.floats(-1e-2, 1e-2), min_size=1, max_size=5))
def test_the_hull_bounds_every_slope_as_every_point_does(pts, below, slopes):
    t = np.array([p[0] for p in pts], np.int64)
    v = np.array([p[1] for p in pts], np.int64) + EPOCH
    ht, hv = _hull(t, v, below=below)
    assert len(ht) <= len(t) and set(zip(ht.tolist(), hv.tolist(), strict=True)) <= set(pts_(t, v))
    base = int(v.min()) if len(v) else 0
    extreme = np.min if below else np.max
    for b in slopes:  # as fit_line evaluates them: float64 after a base
        if len(t):
            whole = extreme((v - base).astype(np.float64) - b * t.astype(np.float64))
            kept = extreme((hv - base).astype(np.float64) - b * ht.astype(np.float64))
            assert whole == kept


def pts_(t, v):
    return zip(t.tolist(), v.tolist(), strict=True)


def test_a_fit_of_pairs_read_in_slices_is_that_of_every_pair(monkeypatch):
    """5000 pairs on a drifting clock, read 64 at a time: the same clock as fit_line of all
    of them; and few are kept."""
    rng = np.random.default_rng(7)
    n = 5000
    exit_ns = np.sort(rng.integers(10**12, 10**12 + 5 * 10**9, n))
    entry_ns = exit_ns + rng.integers(2_000, 9_000, n)
    true = EPOCH + 250_000 + (exit_ns * 40e-6).astype(np.int64)
    handle_ns = (true + exit_ns + rng.integers(300, 1_500, n)) // 1000 * 1000
    last_ns = true + entry_ns - rng.integers(50, 900, n)
    pairs = pl.DataFrame({"dom": 1, "vcpu": 0, "cpu": 0, "exit_ns": exit_ns, "entry_ns": entry_ns,
                          "handle_off": np.arange(n), "handle_ns": handle_ns, "last_ns": last_ns})  # fmt: skip
    kept = []
    monkeypatch.setattr(clock, "PAIR_SLICE", 64)
    monkeypatch.setattr(clock, "fit_line", lambda *a: kept.append(len(a[0])) or fit_line(*a))
    got = align_device_model(pairs)
    up = handle_ns - exit_ns + 999
    drift, lo, hi = fit_line(exit_ns, up, entry_ns, last_ns - entry_ns)
    assert got.consistent and (got.lower_ns, got.upper_ns) == (lo, hi) and got.pairs == n
    assert got.drift_ppm == round(drift * 1e6, 4) and abs(got.drift_ppm - 40) < 1
    assert kept[0] < n // 4


def test_an_event_or_ioreq_of_no_offset_owns_or_is_owned_by_nothing():
    """clock._own: a handling event with no offset belongs to no IOREQ (numpy would place
    its NaN anywhere), and an IOREQ with no offset (sorted first) owns no event."""
    from xvtrace.timeline.clock import _own

    offsets = np.array([0, 10, 20], np.int64)  # the first: no offset (sorted first, as 0)
    unplaced = np.array([True, False, False])
    last, notified = np.array([500, 1000, 3000], np.int64), np.zeros(3, bool)
    events = pl.DataFrame({"ts_ns": [9000, 8000, 2000, 4000], "src_offset": [None, 5, 12, 25],
                           "notify": [True, True, False, True]},
                          schema_overrides={"src_offset": pl.UInt64})  # fmt: skip
    _own(offsets, unplaced, last, notified, events)
    assert last.tolist() == [500, 2000, 4000] and notified.tolist() == [False, False, True]
    # an IOREQ at offset 0 does not take an event of no offset
    last, notified = np.array([500, 3000], np.int64), np.zeros(2, bool)
    events = pl.DataFrame({"ts_ns": [9000, 4000], "src_offset": [None, 25], "notify": [True, True]},
                          schema_overrides={"src_offset": pl.UInt64})  # fmt: skip
    _own(np.array([0, 20], np.int64), np.zeros(2, bool), last, notified, events)
    assert last.tolist() == [500, 4000] and notified.tolist() == [False, True]
