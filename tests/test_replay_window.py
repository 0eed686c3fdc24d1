"""A replay a window of requests at a time: the engine's ring of per-operation rows
(engine.Simulation with a window), the durations drawn to disk (replay.columns_file) and
the predicted rows spilled in parts give, row for row and bit for bit, what the whole
replay gives."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from helpers import QEMU_PCI
from hypothesis import given, settings
from hypothesis import strategies as st

from xvtrace import api, replaying, timeline
from xvtrace.emulate import EmulateOptions, emulate
from xvtrace.replay import costs as cost_table
from xvtrace.replay import engine, execute
from xvtrace.replay import stream as replay_stream
from xvtrace.replay.columns_file import ColumnFile, Constant, DiskColumn, Mapped
from xvtrace.replay.stream import READS, Stream
from xvtrace.replay.transports import get


def _loaded(out) -> tuple:
    """An ingested bundle and its profile's costs."""
    b = api.load(out)
    return b, cost_table.costs_for(cost_table.load(), replaying.profile_of(b))


def _stream(bundle_of, **options) -> tuple[Stream, dict]:
    """The stream of the bundle (`options`: bundle_stream's, e.g. a spill) and its costs."""
    b, costs = bundle_of
    req = timeline.load(b).columns(*READS, lazy=True)
    return replaying.bundle_stream(b, req, replaying.source_transport(b), costs, **options), costs


@pytest.fixture(scope="module")
def three_jobs_bundle(tmp_path_factory):
    """Three jobs of eight requests in flight each: requests finish out of their order."""
    out = tmp_path_factory.mktemp("jobs") / "b"
    emulate(EmulateOptions(transport="epam-mmio", workload="rw=randrw,bs=16k,iodepth=8,numjobs=3",
                           requests=600, out=out))  # fmt: skip
    api.ingest(out)
    return _loaded(out)


@pytest.fixture(scope="module")
def net_bundle(tmp_path_factory):
    """A real QEMU capture's network requests: two paths (receive and transmit) in one run."""
    out = tmp_path_factory.mktemp("net") / "b"
    api.ingest(QEMU_PCI / "trace.log", out)
    return _loaded(out)


@pytest.fixture(scope="module")
def three_jobs(three_jobs_bundle):
    return _stream(three_jobs_bundle)


@pytest.fixture(scope="module")
def rx_and_tx(net_bundle):
    return _stream(net_bundle)


@pytest.mark.parametrize("window", [1, 8, 64])
@pytest.mark.parametrize("arrivals", ["closed", "think", "open"])
@pytest.mark.parametrize("streams", ["three_jobs", "rx_and_tx"])
@pytest.mark.parametrize("transport", ["epam-mmio", "argo", "stratos-vhost-user"])
def test_a_windowed_replay_is_the_whole_replay(
    request, tmp_path, streams, transport, arrivals, window
):
    stream, costs = request.getfixturevalue(streams)
    t = get(transport)
    whole = execute.replay(stream, t, costs, seed=5, arrivals=arrivals)
    chunks = list(execute.replay_chunks(stream, t, costs, seed=5, arrivals=arrivals,
                                        window=window, spill=tmp_path))  # fmt: skip
    assert len(chunks) > 1  # (the ring was full, and grew for the requests in flight)
    assert pl.concat(chunks).equals(whole)
    assert not list(tmp_path.iterdir())  # the durations' file is gone


def test_the_durations_file_goes_when_the_replay_is_left_unfinished(three_jobs, tmp_path):
    stream, costs = three_jobs
    chunks = execute.replay_chunks(stream, get("epam-mmio"), costs, window=8, spill=tmp_path)
    next(chunks)
    assert [p.suffix for p in tmp_path.iterdir()] == [".f8"]
    chunks.close()
    assert not list(tmp_path.iterdir())


def test_a_replay_spilled_in_parts_summarizes_as_one_held_whole(monkeypatch, tmp_path):
    """replay_bundle with a spill: the rows written in parts of 100 and their summary read
    from them, a slice at a time, equal the replay held in memory, to the last bit."""
    out = tmp_path / "b"
    emulate(EmulateOptions(transport="epam-mmio", workload="randrw-16k-qd8", requests=500,
                           out=out))  # fmt: skip
    api.ingest(out)
    bundle = api.load(out)
    chosen = replaying.parse_transports("epam-mmio,pv-blkif")
    held = replaying.replay_bundle(bundle, chosen)
    monkeypatch.setattr(execute, "WINDOW", 16)
    monkeypatch.setattr(replaying, "PART_ROWS", 100)
    spill = tmp_path / "spill"
    spill.mkdir()
    # (replay_chunks' default window is bound when it is defined: pass the patched one)
    real = execute.replay_chunks
    monkeypatch.setattr(replaying, "replay_chunks",
                        lambda *a, **k: real(*a, **k, window=execute.WINDOW))  # fmt: skip
    parted = replaying.replay_bundle(bundle, chosen, spill=spill)
    assert len(list(spill.glob("*.parquet"))) >= 2 * 3  # (parts of 100 rows or more)
    assert parted.summary.equals(held.summary)
    assert parted.requests.collect().equals(held.requests.collect())


def test_a_column_file_reads_back_what_was_written(tmp_path):
    table = ColumnFile(tmp_path / "t.f8", 5, 3)
    assert table.shape == (5, 3) and not table[0:5].any()  # all zeros at first
    table[:, 1] = np.arange(5.0)
    table[:, 2] = 7.0  # a scalar fills the column
    table[2:4, 0] = [1.5, 2.5]  # rows of a column
    want = np.array([[0, 0, 7], [0, 1, 7], [1.5, 2, 7], [2.5, 3, 7], [0, 4, 7]])
    assert np.array_equal(table[0:5], want)
    assert np.array_equal(table[1:3], want[1:3])
    assert np.array_equal(table[:, 1], want[:, 1])
    assert np.array_equal(table[3:5, 2], [7.0, 7.0])
    table.close()
    assert not (tmp_path / "t.f8").exists()


def _two_jobs_one_after_the_other(n: int) -> Stream:
    """Job 0 has the first half of the requests, job 1 the second: their first requests are
    n / 2 apart (the ring starts with room for both), and job 1's device is 5000 times faster,
    so its requests run ahead of job 0's by more than the ring holds."""
    rng = np.random.default_rng(2)
    half = np.arange(n) >= n // 2
    device = np.where(half, 1.0, 5000.0) * rng.lognormal(8, 0.2, n)
    return Stream(np.full(n, "write"), np.full(n, 4096.0), np.ones(n), half.astype(np.int64),
                  device, np.zeros(n), 8, 2)  # fmt: skip


def test_a_ring_grows_no_larger_than_a_row_per_request(monkeypatch):
    stream, costs = _two_jobs_one_after_the_other(3000), _costs()
    largest = []
    grow = engine.Simulation._grow

    def watched(sim):
        grow(sim)
        largest.append(len(sim._work[0]))

    monkeypatch.setattr(engine.Simulation, "_grow", watched)
    t = get("epam-mmio")
    chunks = list(execute.replay_chunks(stream, t, costs, window=4))
    assert largest and max(largest) <= len(stream)  # it grew, to a row per request at most
    assert pl.concat(chunks).equals(execute.replay(stream, t, costs))


def test_two_replays_can_share_a_spill_directory(three_jobs, tmp_path):
    stream, costs = three_jobs
    t = get("pv-blkif")
    a = execute.replay_chunks(stream, t, costs, window=8, spill=tmp_path)
    b = execute.replay_chunks(stream, t, costs, window=8, seed=1, spill=tmp_path)
    got_a, got_b = [next(a)], [next(b)]  # both files exist, side by side
    got_a += list(a)
    got_b += list(b)
    assert pl.concat(got_a).equals(execute.replay(stream, t, costs))
    assert pl.concat(got_b).equals(execute.replay(stream, t, costs, seed=1))
    assert not list(tmp_path.iterdir())


def test_calibrations_trial_costs_scale_the_durations_on_disk_too(three_jobs, tmp_path):
    stream, costs = three_jobs
    t = get("epam-mmio")
    scale = {"block": np.linspace(0.5, 2.0, len(t.path("block")))}
    options = {"seed": 4, "arrivals": "closed", "device_servers": 8, "scale": scale}
    _, _, whole = execute._simulation(stream, t, costs, **options)
    _, _, ring = execute._simulation(stream, t, costs, **options, window=8,
                                     spill=tmp_path)  # fmt: skip
    want = whole.run()
    got = list(ring.chunks())
    assert len(got) > 1
    for name in ("issue", "done", "start", "end", "wait"):
        assert np.array_equal(np.concatenate([getattr(s, name) for _, s in got]),
                              getattr(want, name))  # fmt: skip
    with pytest.raises(ValueError, match="chunks"):
        ring.run()  # (a windowed simulation has no whole schedule to give)


def _costs():
    return cost_table.costs_for(cost_table.load(), "x86_64")


@pytest.mark.parametrize("options", [{}, {"njobs": 2}, {"iodepth": 4}])
@pytest.mark.parametrize("bundle_of", ["three_jobs_bundle", "net_bundle"])
@pytest.mark.parametrize("piece", [1, 7, 1000])
def test_a_stream_made_a_piece_at_a_time_on_disk_is_the_stream_held(
    request, monkeypatch, tmp_path, bundle_of, piece, options
):
    """from_requests with a spill: its columns written PIECE_ROWS requests at a time (the
    depth swept a piece at a time, with each job's requests still open carried over) and
    read back are the held stream's, and so are depth, jobs and think time."""
    b, costs = request.getfixturevalue(bundle_of)
    req = timeline.load(b).columns(*READS, lazy=True)
    src = get(replaying.source_transport(b) or "epam-mmio")
    held = replay_stream.from_requests(req, source=src, costs=costs, **options)
    monkeypatch.setattr(replay_stream, "PIECE_ROWS", piece)
    spilled = replay_stream.from_requests(req, source=src, costs=costs, spill=tmp_path, **options)
    assert isinstance(spilled.op, DiskColumn) and len(spilled) == len(held) > 100
    for name in ("op", "nbytes", "pages", "job", "device_ns", "arrival_ns"):
        got, want = getattr(spilled, name)[:], getattr(held, name)
        assert got.dtype == want.dtype and np.array_equal(got, want), name
    assert (spilled.iodepth, spilled.njobs, spilled.think_ns) == (held.iodepth, held.njobs,
                                                                  held.think_ns)  # fmt: skip
    assert held.iodepth > 1 or options  # (measured: the sweep across pieces counted)
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".parquet"]  # its sink is gone


@pytest.mark.parametrize("arrivals", ["closed", "think", "open"])
@pytest.mark.parametrize("bundle_of", ["three_jobs_bundle", "net_bundle"])
def test_a_replay_of_a_stream_on_disk_is_the_replay_of_it_held(
    request, monkeypatch, tmp_path, bundle_of, arrivals
):
    """A stream whose columns are on disk, replayed a window at a time with its durations
    drawn 5 requests at a time into a table per path (two for receive and transmit) and
    its jobs counted 3 at a time, gives the whole replay of the stream held, bit for bit."""
    b, costs = request.getfixturevalue(bundle_of)
    monkeypatch.setattr(replay_stream, "PIECE_ROWS", 11)
    monkeypatch.setattr(execute, "PIECE", 5)
    monkeypatch.setattr(engine, "JOB_ROWS", 3)
    spilled, _ = _stream((b, costs), spill=tmp_path)
    held = spilled.take(slice(None))
    for t in (get("epam-mmio"), get("argo")):
        whole = execute.replay(held, t, costs, seed=3, arrivals=arrivals)
        chunks = list(execute.replay_chunks(spilled, t, costs, seed=3, arrivals=arrivals,
                                            window=16, spill=tmp_path))  # fmt: skip
        assert len(chunks) > 1 and pl.concat(chunks).equals(whole)
    assert all(p.name.startswith("stream-") for p in tmp_path.iterdir())  # (only the stream's)


def test_the_median_of_a_column_on_disk_is_numpys(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    for n in (1, 2, 5, 1000, 1001):
        values = np.round(rng.lognormal(3, 1, n), 1)  # (ties too)
        column = DiskColumn(tmp_path / f"{n}.f8", np.float64)
        for a in range(0, n, 97):
            column.append(values[a : a + 97])
        assert replaying._median(column) == np.median(values)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 50), st.integers(0, 30)),
                min_size=1, max_size=60), st.integers(1, 9))  # fmt: skip
def test_the_depth_swept_a_piece_at_a_time_is_the_depth_of_all(rows, piece):
    """_Depth over pieces (requests in pop order: job, pop, time to fill, ties included)
    is the largest in_flight_depth of any job's requests, however they are cut."""
    rows = sorted(rows, key=lambda r: r[1])
    job = np.array([r[0] for r in rows])
    pop = np.array([r[1] for r in rows])
    fill = pop + np.array([r[2] for r in rows])
    depth = replay_stream._Depth(3)
    for a in range(0, len(rows), piece):
        depth.add(job[a : a + piece], pop[a : a + piece], fill[a : a + piece])
    want = max(replay_stream.in_flight_depth(pop[job == j], fill[job == j]) for j in range(3))
    assert depth.best == want


def test_columns_read_as_rows(tmp_path):
    column = DiskColumn(tmp_path / "c.u1", np.uint8)
    column.append([3, 1])
    column.append(np.array([2], np.int64))  # (kept in the column's type)
    assert len(column) == 3 and column[:].tolist() == [3, 1, 2] and column[1:].dtype == np.uint8
    assert Mapped(column, np.array([10, 11, 12, 13]))[0:2].tolist() == [13, 11]
    assert Constant(2.5, 4)[1:3].tolist() == [2.5, 2.5] and len(Constant(0.0, 9)) == 9
    with pytest.raises(IndexError):
        column[::2]
    column.close()
    assert not (tmp_path / "c.u1").exists()


def test_a_summary_read_a_slice_at_a_time_has_numpys_percentiles_and_the_means(
    three_jobs, monkeypatch
):
    """summarize, 7 predicted requests at a time: its percentiles are np.percentile's of
    every latency, to the last bit; its means and rates those of the whole columns."""
    stream, costs = three_jobs
    rows = execute.replay(stream, get("epam-mmio"), costs, seed=2)
    monkeypatch.setattr(replaying, "SUMMARY_ROWS", 7)
    got = replaying.summarize(rows.lazy())
    lat = rows["latency_ns"].to_numpy() / 1e3
    for q in (50, 90, 99):
        assert got[f"p{q}_us"] == np.percentile(lat, q)
    span = (rows["done_ns"].max() - rows["issue_ns"].min()) / 1e9
    assert got["requests"] == len(rows) and got["iops"] == pytest.approx(len(rows) / span)
    assert got["mean_us"] == pytest.approx(lat.mean(), rel=1e-12)
    assert got["cpu_guest_vcpu_us"] == pytest.approx(rows["cpu_guest_vcpu_ns"].mean() / 1e3,
                                                     rel=1e-12)  # fmt: skip
    assert got["mb_per_s"] == pytest.approx(rows["bytes"].sum() / span / 1e6, rel=1e-12)
