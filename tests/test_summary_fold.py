"""The summary's fold (xvtrace.analysis.xen_fold): one pass over decoded frames gives the
sections the bundle's table gives, whatever the frames' cuts; `summary RAW` of a plain
xentrace file is that pass, with no table written."""

from __future__ import annotations

import itertools
import json
import lzma

import polars as pl
import pytest
from helpers import ARM64, ARM_KHZ, FIXTURES, X86_KHZ, X86_PV
from hypothesis import given, settings
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
    """QEMU rows (event, dev, queue, addr, ts_ns, size, src_offset) as the table holds them."""
    names = ["event", "dev", "queue", "addr", "ts_ns", "size", "src_offset"]
    df = pl.DataFrame([dict(zip(names, r, strict=True)) for r in rows])
    return (
        pl.DataFrame(schema=summary.EVENT_SCHEMA)
        .vstack(
            df.with_columns(pl.lit("qemu").alias("source"), pl.lit("qemu.log").alias("src_file"))
            .select([pl.col(c) if c in df.columns or c in ("source", "src_file") else pl.lit(None).alias(c)
                     for c in summary.EVENT_SCHEMA])
            .cast(summary.EVENT_SCHEMA)
        )
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
