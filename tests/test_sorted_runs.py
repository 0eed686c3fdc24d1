"""The bundle's row order from sorted runs and their merge equals one stable sort of every
decoded row by SORT_KEY (polars' nulls-first order), however the streams are disordered,
chunked or split into runs."""

from __future__ import annotations

import shutil
from itertools import pairwise
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from xvtrace import api
from xvtrace.analysis import summary
from xvtrace.bundle import Bundle, sorted_runs
from xvtrace.bundle import ingest as ingest_mod
from xvtrace.bundle.row_order import SEQ, file_ranks, keys_of, merge_order, sort_order
from xvtrace.bundle.sorted_runs import OutOfOrder, RunWriter, live, merge
from xvtrace.parsers import ftrace, qemu_log
from xvtrace.parsers.errors import ParseError
from xvtrace.parsers.schema import SORT_KEY

FIXTURES = Path(__file__).parent.parent / "fixtures"
NAMES = ["raw/b.log", "raw/a.bin", "raw/é.txt", "raw/a.bin2"]

# A row: time (None: no timestamp), file, offset (None: no offset). Small ranges so that
# equal keys, equal times across files and nulls are common.
row = st.tuples(
    st.one_of(st.none(), st.integers(-3, 40), st.sampled_from([-(2**63), 2**63 - 1])),
    st.sampled_from(NAMES),
    st.one_of(st.none(), st.integers(0, 30)),
)
streams = st.lists(st.lists(row, max_size=60), min_size=1, max_size=5)


def frame(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "ts_ns": [r[0] for r in rows],
            "src_file": [r[1] for r in rows],
            "src_offset": [r[2] for r in rows],
        },
        schema={"ts_ns": pl.Int64, "src_file": pl.String, "src_offset": pl.UInt64},
    )


def reference(all_rows: list[pl.DataFrame]) -> pl.DataFrame:
    """What the table's order means: a stable sort of the rows in the order decoded."""
    whole = pl.concat(all_rows).with_row_index("arrival")
    return whole.sort(list(SORT_KEY), maintain_order=True)


@pytest.mark.slow  # (seconds: the real-system stage runs it)
@settings(max_examples=150, deadline=None)
@given(
    streams,
    st.integers(1, 25),  # rows per decoder frame
    st.integers(1, 12),  # rows per chunk file
    st.integers(0, 15),  # lookahead
    st.integers(2, 4),  # fan-in
    st.booleans(),  # the last stream merged live, as ingest merges its largest
)
def test_merge_equals_a_stable_full_sort(tmp_path_factory, data, per_frame, chunk, ahead, fan_in,
                                         last_live):  # fmt: skip
    tmp = tmp_path_factory.mktemp("runs")
    ranks = file_ranks(NAMES)
    writer = RunWriter(tmp, ranks, chunk_rows=chunk, lookahead_rows=ahead)
    decoded, streams_ = [], []
    for rows in data:
        frames = []
        for at in range(0, len(rows), per_frame):
            f = frame(rows[at : at + per_frame])
            f = f.with_row_index("arrival", offset=sum(map(len, decoded)))
            decoded.append(f.drop("arrival"))
            frames.append(f)
        streams_.append(frames)
    live_frames = streams_.pop() if last_live else None
    for i, frames in enumerate(streams_):
        for f in frames:
            writer.add(f, stream=i)
    runs = writer.close()
    merged = lambda **kw: list(merge(runs, tmp, ranks, fan_in=fan_in, chunk_rows=chunk, **kw))  # noqa: E731
    if live_frames is None:
        out = merged()
    else:
        try:
            stream = live(
                iter(live_frames), ranks, writer.rows, chunk_rows=chunk, lookahead_rows=ahead
            )
            out = merged(live=stream, keep=True)
        except OutOfOrder:  # as ingest: the stream to runs too, and merge again
            before = len(runs)
            for f in live_frames:
                writer.add(f, stream="live")
            runs = writer.close()
            assert len(runs) > before + 1  # it did need two runs
            event("live stream out of order: runs instead")
            out = merged()
    got = pl.concat(out) if out else None
    want = reference(decoded) if decoded else None
    if want is None or not len(want):
        assert got is None or not len(got)
    else:
        assert SEQ not in got.columns
        assert got["arrival"].to_list() == want["arrival"].to_list()
    if not last_live:
        assert not any(tmp.iterdir())  # the merge consumes its files


def test_a_live_stream_out_of_order_goes_to_runs(tmp_path):
    """A live stream reaching back past the lookahead stops the merge (OutOfOrder); it
    needs runs of its own, merged with the others again (their files were kept)."""
    ranks = file_ranks(NAMES)
    writer = RunWriter(tmp_path, ranks, chunk_rows=4, lookahead_rows=2)
    first = frame([(t, "raw/a.bin", t) for t in range(0, 40, 2)]).with_row_index("arrival")
    writer.add(first, stream=0)
    runs = writer.close()
    back = [(t, "raw/b.log", i) for i, t in enumerate([*range(20, 40), *range(0, 20)])]
    frames = [
        frame(back[a : a + 5]).with_row_index("arrival", offset=20 + a) for a in range(0, 40, 5)
    ]
    stream = live(iter(frames), ranks, writer.rows, chunk_rows=4, lookahead_rows=2)
    with pytest.raises(OutOfOrder):
        list(merge(runs, tmp_path, ranks, live=stream, keep=True, chunk_rows=4))
    for f in frames:
        writer.add(f, stream=1)
    runs = writer.close()
    got = pl.concat(list(merge(runs, tmp_path, ranks, chunk_rows=4)))
    want = reference([first.drop("arrival"), *(f.drop("arrival") for f in frames)])
    assert got["arrival"].to_list() == want["arrival"].to_list()
    assert not any(tmp_path.iterdir())


@settings(max_examples=100, deadline=None)
@given(st.lists(row, max_size=80), st.lists(st.integers(0, 80), max_size=6))
def test_sort_and_merge_kernels(rows, cuts):
    f = frame(rows).with_columns(pl.Series(SEQ, np.arange(len(rows), dtype=np.uint64)))
    keys = keys_of(f, file_ranks(NAMES))
    want = f.with_row_index("i").sort(list(SORT_KEY), maintain_order=True)["i"].to_list()
    order = sort_order(keys)
    assert (list(range(len(rows))) if order is None else order.tolist()) == want
    # merging sorted segments of the sorted rows gives the sorted rows back
    bounds = np.unique(np.clip([0, *cuts, len(rows)], 0, len(rows)))
    srt = keys[np.array(want, dtype=np.int64)] if rows else keys
    pieces = [srt[a:b] for a, b in pairwise(bounds)]
    shuffled = np.concatenate(pieces[::-1]) if pieces else srt
    lens = [len(p) for p in pieces[::-1]]
    merged = merge_order(shuffled, np.cumsum([0, *lens]))
    assert shuffled[merged].tolist() == srt.tolist()


@pytest.mark.parametrize("name", ["epam-mmio", "suse-grant", "pv-blkif"])
def test_ingest_order_is_the_stable_sort_of_decoded_rows(tmp_path, monkeypatch, name):
    """A stored multi-source bundle: events.parquet is every decoder's rows, stably sorted."""
    src = FIXTURES / "emulated" / name
    bundle = tmp_path / "b"
    shutil.copytree(src / "raw", bundle / "raw")
    decoded = []
    real = ingest_mod._write_events

    def spy(bundle_dir, decoders, *rest):
        for d in decoders:  # decode once more, in the same order, for the reference
            decoded.extend(d.frames())
        return real(bundle_dir, decoders, *rest)

    monkeypatch.setattr(ingest_mod, "_write_events", spy)
    ingest_mod.ingest(bundle, warn=lambda m: None)
    got = pl.read_parquet(bundle / "events.parquet")
    want = pl.concat(decoded).sort(list(SORT_KEY), maintain_order=True)
    assert got.equals(want)
    assert not [
        p for p in bundle.iterdir() if p.name.startswith(".") and p.name != ".lock"
    ]  # no run files left


def test_a_failed_ingest_leaves_no_run_files(tmp_path):
    """Run files live in a hidden directory of the bundle, removed when decoding fails."""
    bundle = tmp_path / "b"
    shutil.copytree(FIXTURES / "emulated" / "pv-blkif" / "raw", bundle / "raw")
    shutil.copy(FIXTURES / "emulated" / "pv-blkif" / "manifest.json", bundle)
    trace = bundle / "raw" / "dom0-trace.txt"
    lines = trace.read_text().splitlines(keepends=True)
    # a line of another trace_clock at the end: the ftrace decoder refuses the file
    bad = lines[-1].replace(lines[-1].split()[3], "12.345678:", 1)
    trace.write_text("".join([*lines, bad]))
    with pytest.raises(ParseError, match="two kinds of timestamp"):
        ingest_mod.ingest(bundle, warn=lambda m: None)
    assert not [p.name for p in bundle.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    assert not (bundle / "events.parquet").exists()


def _ingest_copy(tmp_path, name, raw: Path, tweak=None):
    bundle = tmp_path / name
    shutil.copytree(raw, bundle / "raw")
    shutil.copy(raw.parent / "manifest.json", bundle)
    if tweak:
        tweak(bundle / "raw")
    res = api.ingest(bundle, warn=lambda m: None)  # (which folds the summary as it writes)
    return pl.read_parquet(bundle / "events.parquet"), res.bundle.manifest


@pytest.mark.slow  # (seconds: the real-system stage runs it)
def test_a_live_stream_out_of_order_is_decoded_again_into_runs(tmp_path, monkeypatch):
    """The QEMU log merged live reaches back past the lookahead (its halves swapped): the
    table and the decoders' counts are those of an ingest that wrote every stream to runs."""

    def swap_halves(raw: Path) -> None:
        lines = (raw / "qemu.log").read_bytes().splitlines(keepends=True)
        (raw / "qemu.log").write_bytes(
            b"".join(lines[len(lines) // 2 :] + lines[: len(lines) // 2])
        )

    raw = FIXTURES / "emulated" / "epam-mmio" / "raw"
    # frames of a few lines each, so that the log arrives in pieces
    monkeypatch.setitem(qemu_log.QemuLogDecoder.__init__.__kwdefaults__, "chunk_bytes", 4096)
    monkeypatch.setattr(ingest_mod, "LIVE", ())
    want, want_manifest = _ingest_copy(tmp_path, "runs", raw, swap_halves)
    monkeypatch.setattr(ingest_mod, "LIVE", (qemu_log.QemuLogDecoder, ftrace.FtraceDecoder))
    real, fell_back = sorted_runs.live, []

    def small_live(frames, ranks, first_seq):
        try:
            yield from real(frames, ranks, first_seq, chunk_rows=64, lookahead_rows=8)
        except OutOfOrder:
            fell_back.append(True)
            raise

    monkeypatch.setattr(sorted_runs, "live", small_live)
    got, manifest = _ingest_copy(tmp_path, "live", raw, swap_halves)
    assert fell_back
    assert got.equals(want)
    # the summary folded as the table was written is the second writing's alone
    live = Bundle.open(tmp_path / "live")
    args = {"vendor": live.manifest.hvm_vendor, "cpu_khz": live.cpu_khz}
    with monkeypatch.context() as m:  # served, not computed
        m.setattr(summary, "_sections", lambda *a: pytest.fail("computed, not served"))
        served = summary.Summary.stored(live, live.events(), **args).to_json()
    assert served == summary.Summary.of(live.events(), **args).to_json()
    # the same counts (the second decoding's alone), bar the bundles' own paths and times
    strip = lambda m: [{k: v for k, v in s.items() if k not in ("mtime_ns", "definitions")}  # noqa: E731
                       for s in m["sources"]]  # fmt: skip
    assert strip(manifest) == strip(want_manifest) and manifest["counts"] == want_manifest["counts"]
    # and in order, the live stream needs no second decoding
    fell_back.clear()
    got, _ = _ingest_copy(tmp_path, "in-order", raw)
    assert not fell_back
    monkeypatch.setattr(ingest_mod, "LIVE", ())
    want, _ = _ingest_copy(tmp_path, "in-order-runs", raw)
    assert got.equals(want)
