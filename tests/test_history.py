"""Many captures: `xvtrace batch` into a run store, `xvtrace history` and its change points
(E-Divisive means), a bundle that fails listed and not fatal."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from xvtrace.cli import cli
from xvtrace.emulate import EmulateOptions, emulate
from xvtrace.history import batch, store
from xvtrace.history.changes import change_points

STEP_AT, RUNS = 7, 12


@pytest.mark.parametrize("seed", range(5))
def test_a_ten_percent_step_is_found_at_its_run_and_a_flat_series_has_none(seed):
    rng = np.random.default_rng(seed)
    flat = rng.normal(100, 2, 40)
    step = flat.copy()
    step[25:] *= 1.10
    (c,) = change_points(step, seed=seed)
    assert c.at == 25 and 0.08 < c.size < 0.12 and c.p <= 0.01
    assert change_points(flat, seed=seed) == []
    # one slow run is no change: the groups on either side are alike
    spike = flat.copy()
    spike[20] *= 1.5
    assert change_points(spike, seed=seed) == []


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Twelve emulated EPAM runs of one workload, the device's 4 KiB read 10 % slower from
    run 7 on, and a folder that is no bundle."""
    root = tmp_path_factory.mktemp("runs")
    slow = root / "slow.csv"
    slow.write_text("key,x86_64,arm64,sigma,source\ndevice.block_read,93500,93500,0.3,test\n")
    for i in range(RUNS):
        emulate(EmulateOptions(transport="epam-mmio", workload="randread-4k-qd1", requests=300, seed=i,
                               costs_file=slow if i >= STEP_AT else None, out=root / f"run{i:02d}"))  # fmt: skip
    (root / "broken").mkdir()
    (root / "broken" / "trace.bin").write_bytes(b"not a capture")
    return root


def test_batch_stores_every_run_and_lists_the_one_that_fails(runs, tmp_path):
    out = tmp_path / "store"
    cmd = ["batch", str(runs / "run*"), str(runs / "broken"), "-o", str(out), "-j", "2"]
    r = CliRunner().invoke(cli, cmd)
    assert r.exit_code == 1, r.output  # one failed: listed, the others stored
    assert f"{RUNS} stored, 0 already stored, 1 failed; 2 worker(s), peak RSS " in r.stdout
    assert f"{runs / 'broken'}: failed: BundleError" in r.stderr
    rows = store.scan(out).collect()
    assert rows["bundle"].n_unique() == RUNS
    assert set(rows["transport"]) == {"epam-mmio"} and set(rows["workload"]) == {"randread-4k-qd1"}
    assert {"xen_version", "kernel", "cpu_khz", "commit", "host", "date", "run_utc"} <= set(
        rows.columns
    )
    assert set(rows["xen_version"]) == {"4.17 (emulated)"} and set(rows["cpu_khz"]) == {2_400_000}
    # the partitions are folders: transport=/host=/date=, a file per bundle
    files = sorted(out.glob("transport=epam-mmio/host=*/date=*/*.parquet"))
    assert len(files) == RUNS
    # again: nothing changed, nothing stored again
    r = CliRunner().invoke(cli, ["batch", str(runs / "run*"), "-o", str(out)])
    assert r.exit_code == 0 and f"0 stored, {RUNS} already stored, 0 failed" in r.stdout


def test_a_changed_capture_is_stored_again_in_place_of_its_old_rows(runs, tmp_path):
    one = tmp_path / "run"
    shutil.copytree(runs / "run00", one)
    out = tmp_path / "store"
    assert batch.run([str(one)], out, workers=1).stored == [str(one)]
    shutil.rmtree(one)
    emulate(EmulateOptions(transport="epam-mmio", workload="randread-4k-qd1", requests=300, seed=99,
                           out=one))  # fmt: skip
    res = batch.run([str(one)], out, workers=1)
    assert res.stored == [str(one)] and not res.skipped
    rows = store.scan(out).collect()
    assert rows["inputs"].n_unique() == 1 and len(list(out.glob("*/*/*/*.parquet"))) == 1


def test_the_pool_and_one_process_store_the_same_rows(runs, tmp_path):
    paths = [str(runs / f"run{i:02d}") for i in range(4)]
    batch.run(paths, tmp_path / "a", workers=1)
    batch.run(paths, tmp_path / "b", workers=2)
    key = ["bundle", "queue", "op", "phase"]
    a, b = (store.scan(tmp_path / s).collect().sort(key) for s in "ab")
    assert a.equals(b.select(a.columns))


def test_history_finds_the_step_at_its_run_in_its_phases_only(runs, tmp_path):
    out = tmp_path / "store"
    batch.run([str(runs / f"run{i:02d}") for i in range(RUNS)], out, workers=2)
    r = CliRunner().invoke(cli, ["history", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    found = pl.DataFrame(doc["changes"])
    # the device's read: its own phase and the total, at the first slow run, nothing else
    assert sorted(found["phase"]) == ["device I/O", "total"], found
    assert (found["run"] == STEP_AT).all() and (found["runs"] == RUNS).all()
    assert set(found["first_after"]) == {str((runs / f"run{STEP_AT:02d}").resolve())}
    assert set(found["last_before"]) == {str((runs / f"run{STEP_AT - 1:02d}").resolve())}
    dev = found.filter(pl.col("phase") == "device I/O").row(0, named=True)
    assert 7 < dev["change_pct"] < 13 and dev["confidence"] >= 0.99
    assert doc["series"] >= 5  # every phase of the runs was looked at
    r = CliRunner().invoke(cli, ["history", str(out), "--phase", "pop -> submit"])
    assert r.exit_code == 0 and r.stdout.startswith("1 series, 0 change point(s)"), r.stdout
    text = CliRunner().invoke(cli, ["history", str(out), "--transport", "epam-mmio"]).stdout
    assert "device I/O: +" in text and f"at run {STEP_AT} of {RUNS}" in text
    # the page: every series drawn (those with a change first), each change marked on it
    page = tmp_path / "history.html"
    r = CliRunner().invoke(cli, ["history", str(out), "--html", str(page)])
    assert r.exit_code == 0 and page.exists(), r.output
    html = page.read_text()
    assert html.count('class="plotly-graph-div"') == doc["series"]
    assert html.count(f"{dev['change_pct']:+.1f} %") >= 2  # in the table and on the figure
    assert "<script" in html and "<script src" not in html  # plotly inlined: opens offline


def test_a_dask_cluster_of_two_workers_stores_what_the_pool_stores(runs, tmp_path):
    """The same per-bundle function on a Dask LocalCluster (two worker processes) through
    --scheduler: the same rows as the process pool; a failing bundle listed there too."""
    distributed = pytest.importorskip("distributed")
    paths = [str(runs / f"run{i:02d}") for i in range(4)]
    batch.run(paths, tmp_path / "pool", workers=2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:  # fmt: skip
        r = CliRunner().invoke(cli, ["batch", *paths, str(runs / "broken"), "-o", str(tmp_path / "dask"),
                                     "--scheduler", cluster.scheduler_address])  # fmt: skip
    assert r.exit_code == 1 and "4 stored, 0 already stored, 1 failed" in r.stdout, r.output
    key = ["bundle", "queue", "op", "phase"]
    a, b = (store.scan(tmp_path / s).collect().sort(key) for s in ("pool", "dask"))
    assert len(a) and a.equals(b.select(a.columns))


@pytest.mark.slow  # Dask tries to connect for its 30 s
def test_no_scheduler_at_the_address_is_an_error_naming_it(runs, tmp_path):
    pytest.importorskip("distributed")
    r = CliRunner().invoke(cli, ["batch", str(runs / "run00"), "-o", str(tmp_path / "s"),
                                 "--scheduler", "tcp://127.0.0.1:9"])  # fmt: skip
    assert r.exit_code == 2 and "no Dask scheduler at tcp://127.0.0.1:9" in r.output, r.output


def test_a_damaged_file_of_the_store_is_an_error_naming_it(runs, tmp_path):
    out = tmp_path / "store"
    batch.run([str(runs / "run00")], out, workers=1)
    bad = out / "transport=x" / "host=y" / "date=z" / "junk.parquet"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not parquet")
    r = CliRunner().invoke(cli, ["history", str(out)])
    assert r.exit_code == 2 and f"{bad}: not a file of the run store" in r.output, r.output


def test_the_python_api_runs_a_batch_and_reads_the_store_and_its_history(runs, tmp_path):
    from xvtrace import api

    res = api.batch([str(runs / "run*")], tmp_path / "store", workers=1)
    assert len(res.stored) == RUNS and not res.failed
    lf = api.runs(tmp_path / "store")
    assert isinstance(lf, pl.LazyFrame)
    per_run = lf.filter(pl.col("phase") == "device I/O").select("bundle", "p50_us").collect()
    assert len(per_run) == RUNS
    found = api.history(tmp_path / "store", phase="device I/O")
    assert found["run"].to_list() == [STEP_AT]
