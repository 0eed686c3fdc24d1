"""timeline.asof_runs: a table kept on disk in runs answers an as-of join as polars'
join_asof of the whole table does, whatever the runs' sizes, the groups' interleaving, null
keys, or keys that step back (the fallback that sorts a group whole)."""

from __future__ import annotations

from itertools import pairwise

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from xvtrace.timeline.asof_runs import AsofRuns

keys = st.one_of(st.none(), st.integers(0, 60))


@st.composite
def tables(draw):
    """Right rows (group, key, value) mostly in key order per group, cut into slices; left
    rows (group, key) in any order."""
    n = draw(st.integers(0, 40))
    groups = draw(st.lists(st.sampled_from("ab"), min_size=n, max_size=n))
    ks = sorted(draw(st.lists(st.integers(0, 60), min_size=n, max_size=n)))
    if draw(st.booleans()):  # a key or a null out of place: the group is sorted when sealed
        ks = [*ks]
        for _ in range(draw(st.integers(1, 3))):
            if ks:
                ks[draw(st.integers(0, len(ks) - 1))] = draw(keys)
    right = pl.DataFrame(
        {"g": groups, "k": ks, "v": list(range(n))},
        schema={"g": pl.String, "k": pl.Int64, "v": pl.Int64},
    )
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
    m = draw(st.integers(0, 30))
    left = pl.DataFrame(
        {
            "g": draw(st.lists(st.sampled_from("abc"), min_size=m, max_size=m)),
            "q": draw(st.lists(keys, min_size=m, max_size=m)),
        },
        schema={"g": pl.String, "q": pl.Int64},
    )
    return right, [0, *cuts, n], left


@settings(max_examples=100, deadline=None)
@given(tables(), st.sampled_from(["backward", "forward"]))
def test_runs_answer_as_the_whole_tables_asof_join(tmp_path_factory, case, strategy):
    right, cuts, left = case
    runs = AsofRuns(tmp_path_factory.mktemp("runs"), "t", ["g"], "k")
    for lo, hi in pairwise(cuts):
        runs.add(right.slice(lo, hi - lo))
    runs.seal()
    left = left.sort("q", nulls_last=True)
    got = runs.asof(left, "q", strategy).sort("g", "q", "v", nulls_last=True)
    whole = right.sort("k", maintain_order=True)  # (the fallback's order: nulls first)
    want = []
    for (g,), rows in left.partition_by("g", as_dict=True, maintain_order=True).items():
        mine = whole.filter(pl.col("g") == g).drop("g")
        want.append(rows.join_asof(mine, left_on="q", right_on="k", strategy=strategy,
                                   check_sortedness=False))  # fmt: skip
    want = pl.concat(want) if want else left.with_columns(pl.lit(None, pl.Int64).alias("k"),
                                                          pl.lit(None, pl.Int64).alias("v"))  # fmt: skip
    assert got.select(want.columns).equals(want.sort("g", "q", "v", nulls_last=True))


def test_a_chunk_reads_only_the_runs_its_keys_fall_in(tmp_path):
    """Ten runs of one group; a key in the middle of the eighth reads that run alone."""
    runs = AsofRuns(tmp_path, "t", ["g"], "k")
    for i in range(10):
        runs.add(pl.DataFrame({"g": ["a"] * 3, "k": [10 * i, 10 * i + 2, 10 * i + 4]}))
    runs.seal()
    group = runs.groups[("a",)]
    assert len(group.files) == 10
    back = runs._files_for(group, pl.Series([73]), "backward")
    assert back["k"].to_list() == [70, 72, 74]
    forward = runs._files_for(group, pl.Series([75]), "forward")  # past the 8th run's last
    assert forward["k"].to_list() == [80, 82, 84]
