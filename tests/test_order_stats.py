"""timeline.order_stats: order statistics kept in bounded memory equal those of one sort in
memory, whether a group's values stay held or go to disk as runs merged a chunk at a time;
the quantile rules equal numpy's and polars' own; group numbers are stable across slices."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xvtrace.gate import regress
from xvtrace.timeline import order_stats
from xvtrace.timeline.order_stats import Groups, OrderStats, linear_quantiles, nearest_rank


@st.composite
def grouped_values(draw):
    n = draw(st.integers(0, 400))
    groups = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    # few distinct values, so ties cross the runs' and chunks' edges
    values = draw(
        st.lists(st.integers(-50, 50) | st.integers(-(2**62), 2**62), min_size=n, max_size=n)
    )
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=8)))
    return np.array(groups, np.int64), np.array(values, np.int64), cuts


@settings(max_examples=100, deadline=None)
@given(grouped_values(), st.integers(1, 60), st.integers(1, 9))
def test_selected_ranks_are_those_of_one_sort(monkeypatch_module, data, held, chunk):
    groups, values, cuts = data
    monkeypatch_module.setattr(order_stats, "MERGE_VALUES", chunk)
    monkeypatch_module.setattr(order_stats, "MIN_CHUNK", 1)
    with OrderStats(held_values=held) as stats:
        for a, b in zip([0, *cuts], [*cuts, len(values)], strict=True):
            stats.add(groups[a:b], values[a:b])
        for g in range(4):
            want = np.sort(values[groups == g])
            assert stats.count(g) == len(want)
            assert np.array_equal(stats.select(g, np.arange(len(want))), want)
            if len(want):  # a few ranks, in any order, repeated
                ranks = np.array([len(want) - 1, 0, len(want) // 2, 0])
                assert np.array_equal(stats.select(g, ranks), want[ranks])


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_runs_go_to_disk_and_their_directory_goes_with_the_stats():
    rng = np.random.default_rng(1)
    values = rng.integers(0, 10**6, 5000)
    with OrderStats(held_values=100) as stats:
        for lo in range(0, len(values), 64):
            stats.add(np.zeros(len(values[lo : lo + 64]), np.int64), values[lo : lo + 64])
        where = stats._dir
        assert where is not None and len(stats._runs[0]) > 10  # many runs merged
        assert np.array_equal(stats.select(0, np.arange(5000)), np.sort(values))
    assert not where.exists()
    with OrderStats() as small:  # held: nothing written
        small.add(np.zeros(3, np.int64), np.array([3, 1, 2]))
        assert small.select(0, np.array([0, 2])).tolist() == [1, 3]
        assert small._dir is None


def test_a_rank_outside_the_group_is_refused():
    with OrderStats() as stats:
        stats.add(np.zeros(2, np.int64), np.array([5, 6]))
        with pytest.raises(IndexError):
            stats.select(0, np.array([2]))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-(10**12), 10**12), min_size=1, max_size=3000))
def test_linear_quantiles_are_numpys(values):
    v = np.sort(np.array(values, np.float64))
    qs = (np.arange(regress.SAMPLE) + 0.5) / regress.SAMPLE
    want = np.quantile(v, qs)
    got = linear_quantiles(len(v), qs, lambda ranks: v[ranks])
    assert np.array_equal(got, want)
    for q in (0.0, 0.5, 0.9, 0.99, 1.0):
        assert linear_quantiles(len(v), np.array([q]), lambda ranks: v[ranks])[0] == np.quantile(
            v, q
        )


@given(
    st.lists(st.integers(-1000, 1000), min_size=1, max_size=500),
    st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0, 0.25]),
)
def test_nearest_rank_is_polars(values, q):
    s = pl.Series(values, dtype=pl.Int64)
    assert np.sort(values)[nearest_rank(len(values), q)] == s.quantile(q, "nearest")


def test_regress_sample_is_the_sorted_values_quantiles():
    rng = np.random.default_rng(7)
    for n in (1, 2, 999, 1000, 1001, 54_321):
        v = np.sort(rng.integers(0, 10**7, n)).astype(np.float64)
        want = (
            v
            if n <= regress.SAMPLE
            else np.quantile(v, (np.arange(regress.SAMPLE) + 0.5) / regress.SAMPLE)
        )
        assert regress._sample(n, lambda ranks, v=v: v[ranks]) == [round(float(x), 1) for x in want]


def test_group_numbers_hold_across_slices_with_nulls():
    groups = Groups(["dev", "queue"])
    a = pl.DataFrame(
        {"dev": ["b", None, "a"], "queue": [1, 1, None]},
        schema={"dev": pl.String, "queue": pl.UInt16},
    )
    b = pl.DataFrame(
        {"dev": ["a", "b", None, "b"], "queue": [None, 1, 1, 0]},
        schema={"dev": pl.String, "queue": pl.UInt16},
    )
    assert groups.codes(a).tolist() == [0, 1, 2]
    assert groups.codes(b).tolist() == [2, 0, 1, 3]
    assert groups.names == [("b", 1), (None, 1), ("a", None), ("b", 0)]
    assert groups.codes(a.head(0)).tolist() == []


def test_keys_of_any_width_or_kind_stay_apart():
    """A signed 64-bit key spanning 2^63 (its range's product would wrap), a UInt64 past
    2^63, floats that share an integer part and a categorical of its own categories: each
    row's number names its own key, across slices."""

    def named(groups: Groups, part: pl.DataFrame) -> list[tuple]:
        return [groups.names[c] for c in groups.codes(part).tolist()]

    wide = pl.DataFrame({"d": ["a", "b", "a"], "q": [-(2**63), -(2**63), 2**63 - 1]})
    groups = Groups(["d", "q"])
    assert named(groups, wide) == wide.rows()
    later = pl.DataFrame({"d": ["b", "a"], "q": [2**63 - 1, 2**63 - 1]})
    assert named(groups, later) == later.rows() and len(groups.names) == 4
    floats = pl.DataFrame({"q": [0.5, 0.7, None, 0.5]})
    assert named(Groups(["q"]), floats) == floats.rows()
    big = pl.DataFrame({"q": [2**63 + 1, 1, 2**64 - 1]}, schema={"q": pl.UInt64})
    assert named(Groups(["q"]), big) == big.rows()
    own = pl.Categorical(pl.Categories("xvtrace-test"))
    ops = pl.DataFrame({"op": ["write", "read", "write"]}).cast({"op": own})
    assert named(Groups(["op"]), ops) == [("write",), ("read",), ("write",)]


def test_a_group_keeps_the_dtype_of_its_values():
    """Floats are not truncated, unsigned numbers past 2^63 do not wrap, on disk or held."""
    floats = np.array([2.7, 1.5, 0.25, 1.5])
    big = np.array([2**63 + 5, 3, 2**64 - 1], np.uint64)
    for held in (1, 1000):
        with OrderStats(held_values=held) as stats:
            stats.add(np.zeros(4, np.int64), floats)
            stats.add(np.ones(3, np.int64), big)
            assert stats.select(0, np.arange(4)).tolist() == [0.25, 1.5, 1.5, 2.7]
            assert stats.select(1, np.arange(3)).tolist() == sorted(big.tolist())
