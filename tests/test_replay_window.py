"""A replay a window of requests at a time: the engine's ring of per-operation rows
(engine.Simulation with a window), the durations drawn to disk (replay.columns_file) and
the predicted rows spilled in parts give, row for row and bit for bit, what the whole
replay gives."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from helpers import QEMU_PCI

from xvtrace import api, replaying, timeline
from xvtrace.emulate import EmulateOptions, emulate
from xvtrace.replay import costs as cost_table
from xvtrace.replay import engine, execute
from xvtrace.replay.columns_file import ColumnFile
from xvtrace.replay.stream import READS, Stream
from xvtrace.replay.transports import get


def _stream(bundle):
    b = api.load(bundle)
    costs = cost_table.costs_for(cost_table.load(), replaying.profile_of(b))
    req = timeline.load(b).columns(*READS)
    return replaying.bundle_stream(b, req, replaying.source_transport(b), costs), costs


@pytest.fixture(scope="module")
def three_jobs(tmp_path_factory):
    """Three jobs of eight requests in flight each: requests finish out of their order."""
    out = tmp_path_factory.mktemp("jobs") / "b"
    emulate(EmulateOptions(transport="epam-mmio", workload="rw=randrw,bs=16k,iodepth=8,numjobs=3",
                           requests=600, out=out))  # fmt: skip
    api.ingest(out)
    return _stream(out)


@pytest.fixture(scope="module")
def rx_and_tx(tmp_path_factory):
    """A real QEMU capture's network requests: two paths (receive and transmit) in one run."""
    out = tmp_path_factory.mktemp("net") / "b"
    api.ingest(QEMU_PCI / "trace.log", out)
    return _stream(out)


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
    from them, a column at a time, equal the replay held in memory, to the last bit."""
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
    table.where(np.array([True, False, True, False, False]))[:, 0] = [1.5, 2.5]
    want = np.array([[1.5, 0, 7], [0, 1, 7], [2.5, 2, 7], [0, 3, 7], [0, 4, 7]])
    assert np.array_equal(table[0:5], want)
    assert np.array_equal(table[1:3], want[1:3])
    assert np.array_equal(table[:, 1], want[:, 1])
    assert np.array_equal(table.where(want[:, 0] > 0)[:, 2], [7.0, 7.0])
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
                                     on_disk=tmp_path / "d.f8")  # fmt: skip
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
