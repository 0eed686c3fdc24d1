"""The summary's fold (xvtrace.analysis.xen_fold): one pass over decoded frames gives the
sections the bundle's table gives, whatever the frames' cuts; `summary RAW` of a plain
xentrace file is that pass, with no table written."""

from __future__ import annotations

import itertools
import json
import lzma

import numpy as np
import polars as pl
import pytest
from helpers import ARM64, ARM_KHZ, FIXTURES, X86_KHZ, X86_PV
from hypothesis import example, given, settings
from hypothesis import strategies as st

from xvtrace import api
from xvtrace.analysis import summary
from xvtrace.analysis.summary import Summary
from xvtrace.parsers.xentrace import XentraceDecoder, write_frame
from xvtrace.testing.synth import hvm_records


def assert_same_sections(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for name, frame in theirs.items():
        assert ours[name].equals(frame), name  # values, nulls and dtypes


@pytest.mark.parametrize(
    ("trace", "khz", "vendor"),
    [
        (X86_PV / "trace.bin", X86_KHZ, None),
        (ARM64 / "trace.bin", ARM_KHZ, None),
        (FIXTURES / "xen" / "hvm-epam-smp" / "raw" / "xentrace.bin.xz", 2_596_139, "svm"),
    ],
    ids=["x86-pv", "arm64-pvh", "hvm-epam-smp"],
)
def test_raw_summary_is_the_bundles(tmp_path, trace, khz, vendor):
    """Real captures (PV and PVH guests, an HVM guest of two vCPUs with its IOREQs): the
    summary of the raw file, decoded and folded in one pass, equals the bundle's, computed
    from its table, section for section, to the dtype; its text and JSON too."""
    if trace.suffix == ".xz":
        plain = tmp_path / "xentrace.bin"
        plain.write_bytes(lzma.decompress(trace.read_bytes()))
        trace = plain
    raw = api.summarize(trace, cpu_khz=khz, hvm_vendor=vendor)
    bundle = api.ingest(trace, tmp_path / "b", cpu_khz=khz, hvm_vendor=vendor).bundle
    table = api.summarize(bundle.path)
    assert raw.sections["totals"]["records"][0] > 1000
    assert_same_sections(raw.sections, table.sections)
    assert raw.render() == table.render()
    assert json.dumps(raw.to_json(), default=str) == json.dumps(table.to_json(), default=str)


@pytest.fixture(scope="module")
def decoded(tmp_path_factory) -> pl.DataFrame:
    """A two-pCPU HVM trace with lost records, decoded: the rows a fold takes."""
    path = tmp_path_factory.mktemp("fold") / "t.bin"
    write_frame(path, hvm_records(3000, seed=5, ncpu=2, lost_every=10), round_cycles=2_400_000)
    return pl.concat(list(XentraceDecoder(path, cpu_khz=2_400_000).frames()))


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_the_fold_is_the_same_however_the_frames_are_cut(decoded, data):
    """Sections from frames cut anywhere (an exit and its entry apart, an instant across
    two frames, empty frames) equal the sections from the whole table."""
    n = len(decoded)
    bounds = sorted({0, n, *data.draw(st.lists(st.integers(0, n), max_size=12))})
    frames = [decoded[a:b] for a, b in itertools.pairwise(bounds)] + [decoded[:0]]
    whole = summary.xen_sections(summary.fold(decoded.lazy()), "vmx")
    assert whole["exits"]["count"].sum() > 2000 and whole["lost_records"]["markers"].sum() > 0
    assert_same_sections(summary.xen_sections(summary.fold(frames), "vmx"), whole)


@pytest.mark.parametrize(("trace", "khz"), [(X86_PV / "trace.bin", X86_KHZ), (ARM64 / "trace.bin", ARM_KHZ)],
                         ids=["x86-pv", "arm64-pvh"])  # fmt: skip
@pytest.mark.parametrize("batch", [1, 3, 1000])
def test_runstate_intervals_made_whole_vcpus_at_a_time_are_the_same(monkeypatch, trace, khz, batch):
    """Real captures' runstate changes (several domains and vCPUs, thousands of changes
    each) turned into intervals a few vCPUs at a time, or one at a time (a vCPU with more
    changes than a batch alone), give the intervals and sums of all at once, to the dtype."""
    folded = summary.fold_file(XentraceDecoder(trace, cpu_khz=khz))
    whole = summary.runstate_intervals(folded), summary.runstates(folded)
    monkeypatch.setattr(summary, "INTERVAL_BATCH", batch)
    batches = list(summary._intervals(folded))
    vcpus = whole[1].select("dom", "vcpu").n_unique()
    assert vcpus > 3 and len(batches) >= min(vcpus, len(whole[0]) // batch)
    assert summary.runstate_intervals(folded).equals(whole[0])
    assert summary.runstates(folded).equals(whole[1])


def test_raw_summary_names_a_bad_file_and_counts_its_losses(tmp_path, capsys):
    """A corrupt stretch in the middle of a raw file: the summary still comes, and the
    warning names the file and counts what was decoded and skipped (as ingest's does)."""
    path = tmp_path / "t.bin"
    write_frame(path, hvm_records(2000, seed=3), round_cycles=2_400_000)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    got = Summary.of_xentrace(path, cpu_khz=2_400_000, vendor=None, warn=print)
    out = capsys.readouterr().out
    assert str(path) in out and "skipped" in out
    assert got.vendor == "vmx" and got.sections["totals"]["records"][0] > 1000


def test_summary_of_a_raw_file_through_the_cli(tmp_path):
    """`xvtrace summary RAW --progress`: the bar on stderr runs to the file's end, stdout is
    the summary alone, as the bundle's."""
    from click.testing import CliRunner

    from xvtrace.cli import cli

    path = tmp_path / "t.bin"
    write_frame(path, hvm_records(2000, seed=4), round_cycles=2_400_000)
    got = CliRunner().invoke(cli, ["summary", str(path), "--cpu-khz", "2400000", "--progress"])
    assert got.exit_code == 0, got.output
    assert "decode" in got.stderr and "100%" in got.stderr
    api.ingest(path, tmp_path / "b", cpu_khz=2_400_000)
    assert got.stdout == api.summarize(tmp_path / "b").render()


def _qemu_rows(rows: list[tuple]) -> pl.LazyFrame:
    """QEMU rows (event, dev, queue, addr, ts_ns, size, src_offset[, src_file]) as the table
    holds them, in time order."""
    names = ["event", "dev", "queue", "addr", "ts_ns", "size", "src_offset", "src_file"]
    rows = [(*r, "qemu.log") if len(r) == 7 else r for r in rows]
    df = pl.DataFrame([dict(zip(names, r, strict=True)) for r in rows], schema_overrides={
        "dev": pl.String, "queue": pl.UInt16, "addr": pl.UInt64, "size": pl.UInt32})  # fmt: skip
    return (
        pl.DataFrame(schema=summary.EVENT_SCHEMA)
        .vstack(
            df.with_columns(pl.lit("qemu").alias("source"))
            .select([pl.col(c) if c in df.columns or c == "source" else pl.lit(None).alias(c)
                     for c in summary.EVENT_SCHEMA])
            .cast(summary.EVENT_SCHEMA)
        )
        .sort("ts_ns", "src_file", "src_offset", maintain_order=True)
        .lazy()
    )  # fmt: skip


def test_virtqueues_pair_each_elements_kth_pop_with_its_kth_fill():
    """Pops and fills matched per (device, queue, element) in file order, whatever their
    time order; a queue with no kick or interrupt counts none (0, not unknown)."""
    pop, fill, kick = "qemu.virtqueue_pop", "qemu.virtqueue_fill", "qemu.virtio_queue_notify"
    rows = [(pop, "blk0", 0, 0xA, 100, None, 1), (pop, "blk0", 0, 0xA, 150, None, 2),
            (fill, "blk0", 0, 0xA, 400, 512, 3), (pop, "blk0", 0, 0xB, 160, None, 4),
            (fill, "blk0", 0, 0xA, 300, 4096, 5), (kick, "blk0", 0, None, 90, None, 0),
            (pop, "net0", 1, 0xC, 10, None, 6)]  # fmt: skip
    got = summary.virtqueues(_qemu_rows(rows)).rows(named=True)
    blk, net = got
    assert (blk["pops"], blk["fills"], blk["in_flight"], blk["bytes_filled"]) == (3, 2, 1, 4608)
    # by file order 400-100 and 300-150 (by time order 300-100 and 400-150: 0.25 at most)
    assert (blk["p50_us"], blk["max_us"]) == (0.3, 0.3)
    assert (blk["kicks"], net["kicks"], net["irqs"], net["in_flight"]) == (1, 0, 0, 1)


def reference_virtqueues(ev: pl.LazyFrame) -> pl.DataFrame:
    """The section as it was computed before it streamed: every QEMU row sorted by file
    and offset, each element's pops and fills numbered, one full join."""
    q = ev.filter(pl.col("source") == "qemu").sort("src_file", "src_offset")
    key = ["dev", "queue", "addr"]
    pops = (q.filter(pl.col("event") == "qemu.virtqueue_pop")
            .select(*key, pl.col("ts_ns").alias("pop_ns"))
            .with_columns(pl.int_range(pl.len()).over(key).alias("k")))  # fmt: skip
    fills = (q.filter(pl.col("event") == "qemu.virtqueue_fill")
             .select(*key, pl.col("ts_ns").alias("fill_ns"), "size")
             .with_columns(pl.int_range(pl.len()).over(key).alias("k")))  # fmt: skip
    matched = pops.join(fills, on=[*key, "k"], how="full", coalesce=True)
    lat = (pl.col("fill_ns") - pl.col("pop_ns")) / 1000
    return (
        matched.group_by("dev", "queue")
        .agg(pl.col("pop_ns").is_not_null().sum().alias("pops"),
             pl.col("fill_ns").is_not_null().sum().alias("fills"),
             (pl.col("pop_ns").is_not_null() & pl.col("fill_ns").is_null()).sum().alias("in_flight"),
             pl.col("size").sum().alias("bytes_filled"),
             lat.quantile(0.5, "nearest").alias("p50_us"),
             lat.quantile(0.95, "nearest").alias("p95_us"), lat.max().alias("max_us"))
        .filter(pl.col("dev").is_not_null())
        .sort("dev", "queue")
        .collect()
    )  # fmt: skip


POP_A = ("qemu.virtqueue_pop", "blk0", 0, 0xA)
FILL_A = ("qemu.virtqueue_fill", "blk0", 0, 0xA)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["qemu.virtqueue_pop", "qemu.virtqueue_fill"]),
            st.sampled_from(["blk0", "blk0", "net0", None]),
            st.sampled_from([0, 0, 1, None]),
            st.sampled_from([0xA, 0xA, 0xB, None]),
            st.integers(0, 40),
            st.integers(0, 9000),
            st.sampled_from(["a.log", "b.log"]),
        ),
        max_size=80,
    ),
    batch=st.integers(1, 7),
    shuffled=st.booleans(),
)
@example(  # an element popped twice before its fills, each in a batch of its own
    rows=[(*POP_A, 0, 0, "a.log"), (*POP_A, 1, 0, "a.log"), (*FILL_A, 9, 5, "a.log"),
          (*FILL_A, 12, 7, "a.log")],
    batch=1,
    shuffled=False,
)  # fmt: skip
@example(  # the same element's pops in file order are not in time order
    rows=[(*POP_A, 5, 0, "a.log"), (*POP_A, 1, 0, "a.log"), (*FILL_A, 9, 5, "a.log"),
          (*FILL_A, 12, 7, "a.log")],
    batch=2,
    shuffled=True,
)  # fmt: skip
def test_streamed_virtqueues_are_the_full_joins(rows, batch, shuffled):
    """Pops and fills of two logs, elements with null keys, times that step back within a
    log (so that its file order is not its time order), cut into batches of a few rows:
    the streamed pairing gives the full join's counts, bytes and times."""
    from xvtrace.analysis import virtqueues
    from xvtrace.bundle import file_order

    offsets = list(range(len(rows)))
    if not shuffled:  # times rise with the file offset in each log
        rows = sorted(rows, key=lambda r: r[4])
    table = _qemu_rows([(e, d, q, a, t, sz if e.endswith("fill") else None, off, f)
                        for (e, d, q, a, t, sz, f), off in zip(rows, offsets, strict=True)])  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(file_order, "BATCH_ROWS", batch)
        ours = virtqueues.virtqueues(table)
    want = reference_virtqueues(table)
    ours = ours.select(want.columns)
    assert ours.schema == want.schema
    ints = [c for c, t in want.schema.items() if not t.is_float()]
    assert ours.select(ints).equals(want.select(ints))
    # polars' `/ 1000` multiplies by 0.001 on a column, and divides on a column of one row
    # (a queue with one element, paired): one unit in the last place apart then
    floats = [c for c, t in want.schema.items() if t.is_float()]
    for a, b in zip(ours.select(floats).rows(), want.select(floats).rows(), strict=True):
        assert [x is None for x in a] == [x is None for x in b]
        assert [x for x in a if x is not None] == pytest.approx(
            [x for x in b if x is not None], rel=3e-16, abs=0
        )


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 12), max_size=30), min_size=1, max_size=4),
       st.integers(1, 40))  # fmt: skip
def test_the_earliest_exits_are_the_first_of_a_stable_sort_by_start(starts, first):
    """xen_fold._earliest (the exits a bounded fold keeps: those before the first-th start
    and the earliest closed at it, then sorted) is the first `first` of every part's exits
    sorted stably by start (ties in the order they closed), every array along."""
    from xvtrace.analysis import xen_fold

    parts = [(np.arange(len(s), dtype=np.uint64) + 100 * i, np.array(s, np.int64),
              np.full(len(s), i), np.arange(len(s), dtype=np.uint8), np.zeros(len(s), np.uint32))
             for i, s in enumerate(starts)]  # fmt: skip
    joint = [np.concatenate(a) for a in zip(*parts, strict=True)]
    order = np.argsort(joint[1], kind="stable")[:first]
    got = xen_fold._earliest(parts, first)
    assert all(
        np.array_equal(g, a[order]) and g.dtype == a.dtype for g, a in zip(got, joint, strict=True)
    )
