"""Replay: re-executing a captured request stream through every transport's path, and
comparing transports (xvtrace replay / compare).

The tests on emulated bundles are the emulator's self-consistency (`test_self_consistency_*`):
the emulator runs the same engine with the same cost table, so they check the plumbing
(the stream taken out of a bundle, calibration's arithmetic, the accounting), not whether
the model predicts a real host. tests/test_validation.py checks that, against real
captures of two workloads on the real Xen test host."""

import json
import shutil

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from helpers import QEMU_PCI

from xvtrace import api, replaying, timeline
from xvtrace.cli import cli
from xvtrace.emulate import EmulateOptions, emulate
from xvtrace.replay import costs as cost_table
from xvtrace.replay.accounting import counters
from xvtrace.replay.stream import in_flight_depth
from xvtrace.replay.transports import NAMES, get

# every transport's bundle reconstructs per request (QEMU's events, or xentrace and dom0's
# block layer for backends that log nothing), so every one can be replayed
RECONSTRUCTED = NAMES
WORKLOADS = ("randread-4k-qd1", "randwrite-4k-qd32", "rw=read,bs=1m,iodepth=4")
N = 2000


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each reconstructed transport emulated on each workload: (truth latencies, replay of
    its bundle against all of them). About 25 s on 2 cores: the tests on it are marked slow."""
    out = {}
    for w in WORKLOADS:
        for t in RECONSTRUCTED:
            d = tmp_path_factory.mktemp("replay")
            r = emulate(EmulateOptions(transport=t, workload=w, requests=N, seed=3, out=d / "b"))
            bundle = api.ingest(r.bundle, warn=lambda m: None).bundle
            timeline.build(bundle)
            res = replaying.replay_bundle(bundle, [get(x) for x in RECONSTRUCTED], seed=1)
            cal = replaying.calibrate_bundle(bundle)
            profile, rows = cal.profile, cal.rows
            fitted = rows.filter(pl.col("fitted_ns").is_not_null())
            cost_table.write_toml(d / "costs.toml", profile, [
                {"key": r["key"], "ns": r["fitted_ns"], "sigma": r["fitted_sigma"], "source": "test"}
                for r in fitted.iter_rows(named=True)])  # fmt: skip
            own = (replaying.replay_bundle(bundle, [get(t)], seed=1, costs_file=d / "costs.toml")
                   if len(fitted) else res)  # fmt: skip
            out[t, w] = (r.truth["latency_ns"].to_numpy(), res, own, rows)
    return out


def _errors(predicted: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    return tuple(np.percentile(predicted, q) / np.percentile(measured, q) - 1 for q in (50, 99))


@pytest.mark.slow
@pytest.mark.parametrize("workload", WORKLOADS)
@pytest.mark.parametrize("transport", RECONSTRUCTED)
def test_self_consistency_replay_against_its_own_transport_reproduces_the_latencies(
    runs, transport, workload
):
    truth, res, calibrated, _ = runs[transport, workload]
    assert res.source == transport and len(res.stream) == N
    for r in (res, calibrated):  # with the table's costs, and with the capture's fitted ones
        lat = r.requests.filter(pl.col("transport") == transport).collect()["latency_ns"].to_numpy()
        e50, e99 = _errors(lat, truth)
        assert abs(e50) < 0.05 and abs(e99) < 0.15, (e50, e99)


@pytest.mark.slow
@pytest.mark.parametrize("workload", WORKLOADS)
@pytest.mark.parametrize("transport", RECONSTRUCTED)
def test_self_consistency_calibration_recovers_the_backend_costs_the_emulator_used(
    runs, transport, workload
):
    *_, rows = runs[transport, workload]
    fitted = rows.filter(pl.col("fitted_ns").is_not_null())
    # the backend's own operations lie between two device-model stamps: close fits
    backend = fitted.filter(~pl.col("interval").str.contains("trap_"))
    assert ((backend["fitted_ns"] / backend["ns"] - 1).abs() < 0.1).all(), backend.rows()
    assert len(fitted) >= 1 or workload == "randwrite-4k-qd32"  # there queueing can hide all
    # the guest's completion after the ACK is stamped by nothing: not constrained
    assert rows.filter(pl.col("key") == "guest.ring_complete")["fitted_ns"].is_null().all()


@pytest.mark.slow
def test_self_consistency_calibration_recovers_the_emulators_jitter_and_no_slowdown(runs):
    """The emulator draws each step's jitter independently (the table's sigma, 0.2-0.4) and
    no per-request slowdown: the spreads calibrate fits are those."""
    rows = pl.concat([r for *_, r in runs.values()]).filter(pl.col("fitted_ns").is_not_null())
    steps = rows.filter((pl.col("key") != cost_table.SLOWDOWN) & (pl.col("requests") >= 500))
    off = (steps["fitted_sigma"] - steps["sigma"]).abs()
    assert off.median() < 0.1 and (off < 0.25).mean() >= 0.8, steps.rows()
    slowdown = rows.filter(pl.col("key") == cost_table.SLOWDOWN)["fitted_sigma"]
    assert len(slowdown) and slowdown.max() < 0.2, slowdown.to_list()


@pytest.mark.slow
def test_self_consistency_calibration_fits_the_isr_traps_from_their_exits_and_entries(runs):
    *_, rows = runs["epam-mmio", "randread-4k-qd1"]
    isr = rows.filter(pl.col("key") == "epam.isr_trap")
    # both traps' exit..entry intervals, on the hypervisor's clock: a close fit
    assert abs(isr["fitted_ns"][0] / isr["ns"][0] - 1) < 0.1, isr.rows()
    assert "isr_read_trap_exit_ns -> isr_read_trap_entry_ns" in isr["interval"][0]


@pytest.mark.slow
def test_self_consistency_calibration_intervals_cover_the_emulators_costs(runs):
    rows = pl.concat([r for *_, r in runs.values()]).filter(pl.col("fitted_ns").is_not_null())
    covered = (rows["ci_low"] <= rows["ns"]) & (rows["ns"] <= rows["ci_high"])
    # 95 % intervals, on some 60 fits, with the model's own simplifications: most, not all
    assert covered.mean() >= 0.85, rows.filter(~covered).rows()


@pytest.mark.slow
@pytest.mark.parametrize("workload", WORKLOADS)
@pytest.mark.parametrize("source", RECONSTRUCTED)
def test_self_consistency_prediction_for_another_transport_matches_emulating_it(
    runs, source, workload
):
    _, res, *_ = runs[source, workload]
    for target in RECONSTRUCTED:
        if target == source:
            continue
        truth, *_ = runs[target, workload]
        lat = res.requests.filter(pl.col("transport") == target).collect()["latency_ns"].to_numpy()
        e50, e99 = _errors(lat, truth)
        assert abs(e50) < 0.05 and abs(e99) < 0.15, (target, e50, e99)


@pytest.mark.slow
def test_the_captured_queue_depth_is_used_not_the_one_the_backend_sees(runs):
    _, res, *_ = runs["epam-mmio", "randwrite-4k-qd32"]
    # the vCPU is the bottleneck: the backend never has 32 in flight, the workload does
    assert res.stream.iodepth == 32


@pytest.mark.parametrize("transport", NAMES)
def test_accounting_matches_the_records_the_emulator_writes(tmp_path, transport):
    n = 100
    r = emulate(EmulateOptions(transport=transport, workload="rw=randread,bs=16k,iodepth=1",
                               requests=n, out=tmp_path / "b"))  # fmt: skip
    c = {
        k: float(v.mean())
        for k, v in counters(get(transport).block, np.full(n, 4.0), np.full(n, 16384.0)).items()
    }
    exits = r.expected["guest_exits"]
    trap_exits = (exits.get(48, 0) + exits.get(18, 0)) / n  # EPT violations and VMCALLs
    assert c["vm_exits"] == trap_exits
    dom0 = sum(r.expected["dom0_hypercalls"].values()) / n
    assert c["hypercalls"] == dom0 + exits.get(18, 0) / n  # dom0's own plus the guest's VMCALLs


def test_in_flight_depth():
    assert in_flight_depth(np.array([0, 1, 2, 10]), np.array([5, 3, 4, 11])) == 3
    assert in_flight_depth(np.array([0, 5]), np.array([5, 6])) == 1  # an end frees before a start
    assert in_flight_depth(np.array([]), np.array([])) == 0


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "b"
    emulate(
        EmulateOptions(
            transport="suse-grant", workload="rw=randrw,bs=16k,iodepth=1", requests=600, out=d
        )
    )
    api.ingest(d, warn=lambda m: None)
    return d


def test_cli_replay_then_compare(small_bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(small_bundle, b)
    runner = CliRunner()
    r = runner.invoke(cli, ["replay", str(b), "--target", "all"])  # builds the timeline it needs
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert "baseline: suse-grant (the captured transport)" in lines[0]
    assert [ln.split()[0] for ln in lines[2 : 2 + len(NAMES)]] == list(NAMES)
    # every cost is the table's estimate: nothing calibrated, nothing to warn about
    assert lines[2 + len(NAMES)].startswith("calib:") and len(lines) == 3 + len(NAMES)
    r = runner.invoke(cli, ["compare", str(b), "--json", "--html", str(tmp_path / "c.html")])
    assert r.exit_code == 0, r.output
    facts = json.loads(r.stdout)
    rows = {t["transport"]: t for t in facts["transports"]}
    assert rows["suse-grant"]["p50_ratio"] == 1.0
    # persistent grants take the per-page map and unmap out of the path
    assert rows["suse-grant-persistent"]["pages_mapped"] == 0 < rows["suse-grant"]["pages_mapped"]
    assert rows["suse-grant-persistent"]["p50_us"] < rows["suse-grant"]["p50_us"]
    assert "unmap" in rows["suse-grant-persistent"]["differs_in_us"]
    assert all(t["saturation_iops"] >= t["iops"] * 0.99 for t in facts["transports"])
    html = (tmp_path / "c.html").read_text()
    assert html.count('class="plotly-graph-div"') == 2 and "suse-grant-persistent" in html


def test_cli_replay_of_a_real_qemu_capture(tmp_path):
    b = tmp_path / "b"
    runner = CliRunner()
    assert runner.invoke(cli, ["ingest", str(QEMU_PCI / "trace.log"), "-o", str(b)]).exit_code == 0
    assert runner.invoke(cli, ["timeline", str(b)]).exit_code == 0
    r = runner.invoke(
        cli, ["replay", str(b), "--target", "epam-mmio,pv-blkif", "-o", str(tmp_path / "r.parquet")]
    )
    assert r.exit_code == 0, r.output
    assert "baseline: pv-blkif" in r.stdout and "captured transport" not in r.stdout
    pred = pl.read_parquet(tmp_path / "r.parquet")
    assert set(pred["transport"]) == {"epam-mmio", "pv-blkif"}
    assert pred["latency_ns"].min() > 0
    r = runner.invoke(cli, ["compare", str(tmp_path / "r.parquet")])
    assert r.exit_code == 0 and "pv-blkif" in r.stdout


def test_bad_replay_input(small_bundle, tmp_path):
    runner = CliRunner()
    b = tmp_path / "b"
    shutil.copytree(small_bundle, b)
    runner.invoke(cli, ["timeline", str(b)])

    def err(*args):
        r = runner.invoke(cli, list(args))
        assert r.exit_code == 2, r.output
        return r.output

    assert "unknown transport 'nope'" in err("replay", str(b), "--target", "epam-mmio,nope")
    neg = tmp_path / "neg.csv"
    neg.write_text("key,x86_64,arm64,sigma,source\nxen.mmio_trap,-1,900,0.3,me\n")
    assert "xen.mmio_trap" in err("replay", str(b), "--costs", str(neg))
    cols = tmp_path / "cols.csv"
    cols.write_text("key,x86_64\nxen.mmio_trap,1\n")
    assert "missing column(s) arm64, sigma, source" in err("replay", str(b), "--costs", str(cols))
    toml = tmp_path / "c.toml"
    toml.write_text(
        'profile = "x86_64"\n[costs."xen.mmio_trap"]\nsigma = 0.2\n[costs."bogus.key"]\nns = 1\n'
    )
    assert "unknown cost key(s) bogus.key" in err("replay", str(b), "--costs", str(toml))
    toml.write_text('profile = "x86_64"\n[costs."epam.isr_traps"]\nns = 14400\n')  # an old fit
    assert "epam.isr_traps is now epam.isr_trap" in err("replay", str(b), "--costs", str(toml))
    toml.write_text('profile = "x86_64"\n[costs."xen.mmio_trap"]\nsigma = 0.2\n')
    assert "missing, negative or non-numeric value for xen.mmio_trap" in err(
        "replay", str(b), "--costs", str(toml)
    )
    assert "no replay.parquet" in err("compare", str(small_bundle))


def test_cost_file_round_trip(tmp_path):
    path = tmp_path / "c.toml"
    cost_table.write_toml(path, "arm64", [{"key": "xen.grant_map", "ns": 1234.5, "sigma": 0.1,
                                          "ci_low": 1200.0, "ci_high": 1270.0, "source": 'fit "quoted"'}])  # fmt: skip
    t = cost_table.load(path)
    row = t.filter(pl.col("key") == "xen.grant_map").row(0, named=True)
    assert row["arm64"] == 1234.5 and row["sigma"] == 0.1 and row["source"] == 'fit "quoted"'
    assert (
        row["x86_64"]
        == cost_table.default_table().filter(pl.col("key") == "xen.grant_map")["x86_64"][0]
    )


def test_cli_calibrate_then_replay_with_the_fitted_costs(small_bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(small_bundle, b)
    runner = CliRunner()
    assert runner.invoke(cli, ["timeline", str(b)]).exit_code == 0
    costs = tmp_path / "fit.toml"
    r = runner.invoke(cli, ["calibrate", str(b), "-o", str(costs)])
    assert r.exit_code == 0, r.output
    assert "transport suse-grant" in r.stdout and "not constrained by this capture" in r.stdout
    fitted = cost_table.load(costs).filter(pl.col("source").str.starts_with("calibrated from"))
    assert {"xen.grant_map", "xen.grant_unmap", "epam.virtqueue_pop"} <= set(fitted["key"])
    r = runner.invoke(cli, ["replay", str(b), "--target", "suse-grant,pv-blkif",
                            "--costs", str(costs), "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    facts = json.loads(r.stdout)
    share = {t["transport"]: t["calibrated_share"] for t in facts["transports"]}
    # the capture's own transport is mostly fitted; blkif's path shares no key with it
    assert share["suse-grant"] > 0.5 and share["pv-blkif"] == 0.0
    assert len(facts["warnings"]) == 1 and "suse-grant" in facts["warnings"][0]
    assert (
        "warning: suse-grant's modelled costs are" in runner.invoke(cli, ["compare", str(b)]).stdout
    )
    # where each predicted request's time comes from adds up to its latency
    req = pl.read_parquet(b / replaying.REPLAY)
    parts = sum(req[f"from_{o}_ns"] for o in ("calibrated", "estimated", "captured", "waiting"))
    assert (parts - req["latency_ns"]).abs().max() < 1e-6 * req["latency_ns"].max()


def test_calibrate_needs_to_know_the_transport(tmp_path):
    b = tmp_path / "b"
    runner = CliRunner()
    runner.invoke(cli, ["ingest", str(QEMU_PCI / "trace.log"), "-o", str(b)])
    runner.invoke(cli, ["timeline", str(b)])
    r = runner.invoke(cli, ["calibrate", str(b), "-o", str(tmp_path / "c.toml")])
    assert r.exit_code == 2 and "--transport" in r.output
    assert not (tmp_path / "c.toml").exists()
    # told the transport, a plain QEMU capture still constrains the backend's own steps
    r = runner.invoke(
        cli, ["calibrate", str(b), "-t", "qemu-virtio-pci", "-o", str(tmp_path / "c.toml")]
    )
    assert r.exit_code == 0, r.output
    assert "dm.virtqueue_pop" in set(cost_table.load(tmp_path / "c.toml").filter(
        pl.col("source").str.starts_with("calibrated"))["key"])  # fmt: skip


def test_emit_bundle_writes_what_the_replay_predicted(small_bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(small_bundle, b)
    runner = CliRunner()
    runner.invoke(cli, ["timeline", str(b)])
    out = tmp_path / "emitted"
    r = runner.invoke(
        cli, ["replay", str(b), "--target", "epam-mmio,pv-blkif", "--emit-bundle", str(out)]
    )
    assert r.exit_code == 0, r.output
    pred = pl.read_parquet(b / "replay.parquet")
    for name in ("epam-mmio", "pv-blkif"):
        truth = pl.read_parquet(out / name / "truth.parquet").sort("request")
        mine = pred.filter(pl.col("transport") == name).sort("request")
        # the same engine, stream, costs and seed: the emulated host did what replay said
        assert np.allclose(truth["latency_ns"].to_numpy(), mine["latency_ns"].to_numpy())
    # and the emitted bundle goes through the pipeline like a capture
    assert runner.invoke(cli, ["timeline", str(out / "epam-mmio")]).exit_code == 0
    req = pl.read_parquet(out / "epam-mmio" / "requests.parquet")
    assert (
        len(req) == len(pred.filter(pl.col("transport") == "epam-mmio")) and req["complete"].all()
    )


def test_think_time_delays_a_jobs_next_request_and_follows_the_response_time_law():
    """`--arrivals think`: a closed loop whose jobs wait between a response and their next
    request. The engine issues each request its think time after the job's previous one is
    done; the stream's think time is N / X - R (two jobs, a request every 10 us, 5 us each:
    each job thinks 15 us)."""
    from xvtrace.replay import engine
    from xvtrace.replay.stream import response_ns, think_time
    from xvtrace.replay.transports.base import op

    path = (op("work", "io", "backend_thread", "backend", "k"),)
    n = 4
    sim = engine.simulation([path], np.zeros(n, np.int64), np.full((1, n), 10.0).T,
                            np.zeros(n, np.int64), np.zeros(n), iodepth=1, njobs=1,
                            think=np.full(n, 5.0))  # fmt: skip
    assert sim.run().issue.tolist() == [0.0, 15.0, 30.0, 45.0]
    done = pl.DataFrame({"pop_ns": [0.0, 10e3, 20e3, 30e3], "fill_ns": [5e3, 15e3, 25e3, 35e3]})
    arrival = done["pop_ns"].to_numpy()
    response = done.select(response_ns(done.columns)).to_series()
    assert response.to_list() == [5e3] * 4  # pop to fill: the only stamps there are
    assert think_time(response, arrival, inflight=2) == pytest.approx(15e3)
    assert think_time(response, arrival, inflight=1) == pytest.approx(5e3)
    assert think_time(response.head(1), arrival[:1], inflight=2) == 0.0


def test_io_path_excess_over_the_fastest_backend_leaves_out_paths_without_the_step():
    """Each backend's I/O path is its mean excess over the fastest at one workload; a
    transport whose path has no such step (argo, stratos: no key) is not a backend of it
    (it once came out as a cost key "" that no cost file could load)."""
    from xvtrace.replay.calibrate import io_path_excess

    x = np.full(40, 100.0)
    rows = io_path_excess([("a", "blkback.io_path", "W1", x), ("b", "dm.io_path", "W1", x + 50),
                           ("c", "", "W1", x - 90), ("d", "epam.io_path", "W2", x)])  # fmt: skip
    assert dict(zip(rows["key"], rows["ns"], strict=True)) == {"blkback.io_path": 0.0,
                                                               "dm.io_path": 50.0}  # fmt: skip


def test_the_host_slowdown_spreads_whole_requests_and_keeps_their_mean():
    """host.slowdown: one factor per request on every step but the device's, of mean 1; at
    sigma 0 (the table's default) the draws are exactly those without it."""
    from xvtrace.replay import engine

    path = get("epam-mmio").path("block")
    table = cost_table.costs_for(cost_table.load(), "x86_64")
    n = 200_000
    pages, nbytes, device = np.ones(n), np.full(n, 4096.0), np.full(n, 50_000.0)

    def draw(sigma):
        costs = table | {cost_table.SLOWDOWN: (1.0, sigma)}
        return engine.durations(path, costs, pages, nbytes, device, np.random.default_rng(7))

    plain = engine.durations(path, table, pages, nbytes, device, np.random.default_rng(7))
    assert np.array_equal(draw(0.0), plain)
    slow = draw(0.5)
    dev = [k for k, o in enumerate(path) if o.resource == "device"]
    assert np.array_equal(slow[:, dev], plain[:, dev])  # the device's time is the capture's
    host = [k for k, o in enumerate(path) if o.resource != "device"]
    a, b = plain[:, host].sum(axis=1), slow[:, host].sum(axis=1)
    assert abs(b.mean() / a.mean() - 1) < 0.02
    # the steps move together: the whole request's log spread grows by about sigma^2
    assert 0.2 < np.log(b).var() - np.log(a).var() < 0.3


def test_a_groups_spread_follows_the_measured_one():
    from xvtrace.replay.calibrate import SIGMA_BOUNDS, _fitted_sigma, spread

    rng = np.random.default_rng(1)
    wide, narrow = rng.lognormal(0, 0.9, 50_000), rng.lognormal(0, 0.3, 50_000)
    assert abs(spread(wide) - 1.2816 * 0.9) < 0.03  # log(p90 / p50) of a lognormal
    up = _fitted_sigma(0.3, [wide], [narrow])
    assert 0.3 < up <= 0.3 * np.sqrt(2) + 1e-9  # widened, damped (at most x2, halved in logs)
    assert _fitted_sigma(0.9, [narrow], [wide]) < 0.9
    assert abs(_fitted_sigma(0.3, [narrow], [narrow]) - 0.3) < 1e-9
    flat = np.full(100, 5.0)  # a measured interval with no spread at all says nothing
    assert _fitted_sigma(0.3, [flat], [narrow]) == 0.3
    assert _fitted_sigma(SIGMA_BOUNDS[1], [wide * wide], [narrow]) == SIGMA_BOUNDS[1]
