"""The regression gate: statistics, power, false alarms, provenance, CLI exit codes."""

from __future__ import annotations

import json
import re

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from xvtrace import api
from xvtrace.cli import cli
from xvtrace.emulate import EmulateOptions, emulate
from xvtrace.gate import regress

WORKLOAD = "randread-4k-qd1"


def _summary(tmp_path, seed, costs=None, workload=WORKLOAD, name=None):
    out = tmp_path / (name or f"s{seed}")
    emulate(EmulateOptions(transport="epam-mmio", workload=workload, requests=1500, seed=seed,
                           costs_file=costs, out=out))  # fmt: skip
    return regress.summarize(api.ingest(out, warn=lambda m: None).bundle)


def test_mann_whitney_and_holm():
    rng = np.random.default_rng(0)
    x = rng.normal(100, 10, 500)
    assert regress.mann_whitney(x, x.copy()) > 0.9
    assert regress.mann_whitney(x, x + 5) < 1e-6
    assert regress.mann_whitney(np.ones(50), np.ones(50)) == 1.0  # all tied: no evidence
    assert regress.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    ratio, lo, hi = regress.median_ratio(x, x * 1.2, rng)
    assert ratio == pytest.approx(1.2) and lo < 1.2 < hi


def test_a_ten_percent_slower_device_is_caught_in_its_phase(tmp_path):
    slow = tmp_path / "slow.csv"  # the device's 4 KiB read takes 10 % longer
    slow.write_text("key,x86_64,arm64,sigma,source\ndevice.block_read,93500,93500,0.3,test\n")
    base = _summary(tmp_path, 1)
    cand = _summary(tmp_path, 2, costs=slow)
    cmp = regress.compare(base, cand)
    assert set(cmp.regressed["phase"]) == {"device I/O", "total"}  # attributed, nothing else
    dev = cmp.regressed.filter(pl.col("phase") == "device I/O").row(0, named=True)
    assert 1.05 < dev["ratio"] < 1.15 and dev["ci_low"] > 1


@pytest.mark.slow  # twenty emulated reruns, about 20 s
def test_reruns_of_one_configuration_rarely_alarm(tmp_path):
    base = _summary(tmp_path, 100)
    flagged = 0
    for seed in range(20):  # twenty reruns, different seeds
        cmp = regress.compare(base, _summary(tmp_path, seed))
        flagged += int(len(cmp.regressed) + len(cmp.improved) > 0)
    assert flagged <= 1


def test_runs_of_different_workloads_are_refused_unless_forced(tmp_path):
    a = _summary(tmp_path, 1)
    b = _summary(tmp_path, 1, workload="rw=randread,bs=8k,iodepth=1", name="other")
    with pytest.raises(regress.RegressError, match="workload"):
        regress.compare(a, b)
    assert regress.compare(a, b, force=True).problems


def test_cli_exit_codes_formats_and_baseline_update(tmp_path):
    slow = tmp_path / "slow.csv"
    slow.write_text("key,x86_64,arm64,sigma,source\ndevice.block_read,110000,110000,0.3,test\n")
    for name, costs in (("a", None), ("b", None), ("c", slow)):
        emulate(EmulateOptions(transport="epam-mmio", workload=WORKLOAD, requests=1200, seed=ord(name),
                               costs_file=costs, out=tmp_path / name))  # fmt: skip
        api.ingest(tmp_path / name, warn=lambda m: None)
    runner = CliRunner()
    base = tmp_path / "base.json"
    r = runner.invoke(cli, ["regress", "--baseline", str(tmp_path / "a"), "--candidate", str(tmp_path / "b"),
                            "--update-baseline", str(base)])  # fmt: skip
    assert r.exit_code == 0 and "PASS" in r.stdout
    assert json.loads(base.read_text())["provenance"]["transport"] == "epam-mmio"
    r = runner.invoke(
        cli, ["regress", "--baseline", str(base), "--candidate", str(tmp_path / "c"), "--markdown"]
    )
    assert r.exit_code == 1 and "| **regression** |" in r.stdout and "device I/O" in r.stdout
    r = runner.invoke(
        cli, ["regress", "--baseline", str(base), "--candidate", str(tmp_path / "c"), "--json"]
    )
    assert r.exit_code == 1 and json.loads(r.stdout)["outcome"] == "regression"
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    r = runner.invoke(cli, ["regress", "--baseline", str(bad), "--candidate", str(tmp_path / "c")])
    assert r.exit_code == 2 and "not an xvtrace baseline" in r.output


GOOD = {"xvtrace_baseline": regress.SUMMARY_VERSION, "provenance": {"transport": "epam-mmio"},
        "phases": [{"queue": 0, "op": "read", "phase": "total", "n": 3, "values": [1.0, 2.0, 3.0]}]}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"values": []}, "phases[0].values: empty"),
        ({"values": [1.0, float("nan")]}, "phases[0].values: not all finite"),
        ({"values": [1.0, "2"]}, "phases[0].values: not all numbers"),
        ({"values": 5}, "phases[0].values: empty or not a list"),
        ({"n": "3"}, "phases[0].n: '3' is not a positive count"),
        ({"n": 0}, "phases[0].n: 0 is not a positive count"),
        ({"phase": None}, "phases[0]: phase and op must be strings"),
    ],
)
def test_a_baseline_that_would_pass_anything_is_refused_naming_the_key(tmp_path, change, says):
    """Empty or non-finite distributions, missing keys and wrong types: a clear error naming
    the file and the key (exit 2), never a pass, a KeyError or a numpy error."""
    doc = json.loads(json.dumps(GOOD))
    doc["phases"][0].update(change)
    path = tmp_path / "base.json"
    path.write_text(json.dumps(doc, allow_nan=True))
    with pytest.raises(regress.RegressError, match=re.escape(f"{path}: {says}")):
        regress.read(path)
    r = CliRunner().invoke(cli, ["regress", "--baseline", str(path), "--candidate", str(path)])
    assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("doc", [{"phases": []}, {"provenance": []}, {"phases": [{"queue": 0}]}])
def test_baselines_missing_their_parts_are_refused(tmp_path, doc):
    path = tmp_path / "base.json"
    path.write_text(json.dumps({**GOOD, **doc}))
    r = CliRunner().invoke(cli, ["regress", "--baseline", str(path), "--candidate", str(path)])
    assert r.exit_code == 2 and str(path) in r.output


@pytest.mark.parametrize(
    ("option", "value"), [("--threshold", "nan"), ("--threshold", "inf"), ("--alpha", "nan")]
)
def test_the_gate_cannot_be_switched_off_by_its_settings(tmp_path, option, value):
    """`--threshold nan` compared false with every ratio and passed a regression."""
    path = tmp_path / "base.json"
    path.write_text(json.dumps(GOOD))
    r = CliRunner().invoke(
        cli, ["regress", "--baseline", str(path), "--candidate", str(path), option, value]
    )
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    with pytest.raises(regress.RegressError):
        regress.compare(
            GOOD, GOOD, **{option.strip("-") + ("_pct" if "thr" in option else ""): float(value)}
        )


def test_ctrl_c_exits_130_not_1(tmp_path, monkeypatch):
    """1 means "regression" to the scripts that run the gate; an interrupted run is 130."""

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(regress, "compare", interrupted)
    path = tmp_path / "base.json"
    path.write_text(json.dumps(GOOD))
    r = CliRunner().invoke(cli, ["regress", "--baseline", str(path), "--candidate", str(path)])
    assert r.exit_code == 130 and "interrupted" in r.output


@pytest.mark.parametrize(
    ("khz", "same"), [(2_400_002, True), (2_402_400, True), (2_402_403, False)]
)
def test_one_host_measuring_its_clock_kilohertz_apart_is_the_same_host(khz, same):
    """Xen calibrates the TSC at each boot: two captures of one host differed by 2 kHz and
    were refused as different hosts. Within 0.1 % they are one."""
    a = {"provenance": {"cpu_khz": 2_400_000, "transport": "epam-mmio"}}
    b = {"provenance": {"cpu_khz": khz, "transport": "epam-mmio"}}
    assert (regress.provenance_problems(a, b) == []) == same
    b["provenance"]["transport"] = "pv-blkif"
    assert regress.provenance_problems(a, b)  # other keys still must match


def _phase_doc(values) -> dict:
    return {"xvtrace_baseline": regress.SUMMARY_VERSION, "provenance": {},
            "phases": [{"queue": 0, "op": "read", "phase": "total", "n": len(values),
                        "values": [float(v) for v in values]}]}  # fmt: skip


def _lognormal(rng, n: int, scale: float = 1.0):
    return scale * rng.lognormal(np.log(1e5), 0.3, n)  # a phase of 100 us, sigma 0.3


@pytest.mark.parametrize(("true_ratio", "decided"), [(1.0, "same"), (1.15, "regression")])
def test_too_few_requests_are_unknown_and_say_how_many_more_runs_decide(true_ratio, decided):
    """40 requests a side cannot tell a 5 % change from none: unknown, with the runs that
    would decide. With that many runs more (each of 40 requests) the phase is decided, and
    rightly: the same where nothing changed, a regression where the phase is 15 % slower."""
    right = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        first = regress.compare(
            _phase_doc(_lognormal(rng, 40)), _phase_doc(_lognormal(rng, 40, true_ratio)), seed=seed
        ).table.row(0, named=True)
        if first["verdict"] != "unknown":
            assert first["verdict"] == decided and first["more_runs"] is None
            right += 1
            continue
        k = first["more_runs"]
        assert 1 <= k <= regress.MORE_RUNS_CAP
        n = 40 * (k + 1)
        again = regress.compare(
            _phase_doc(_lognormal(rng, n)), _phase_doc(_lognormal(rng, n, true_ratio)), seed=seed
        ).table.row(0, named=True)
        right += again["verdict"] == decided
    assert right >= 8, right


def test_the_same_phase_measured_well_is_the_same_and_an_unknown_one_is_named(tmp_path):
    rng = np.random.default_rng(7)
    big = regress.compare(_phase_doc(_lognormal(rng, 3000)), _phase_doc(_lognormal(rng, 3000)))
    row = big.table.row(0, named=True)
    assert row["verdict"] == "same" and row["more_runs"] is None
    assert regress.outcome(big) == "pass" and regress.render_text(big).rstrip().endswith("PASS")
    few = tmp_path / "few.json"
    few.write_text(json.dumps(_phase_doc(_lognormal(rng, 30))))
    base = tmp_path / "base.json"
    base.write_text(json.dumps(_phase_doc(_lognormal(rng, 30))))
    r = CliRunner().invoke(
        cli, ["regress", "--baseline", str(base), "--candidate", str(few), "--json"]
    )
    assert r.exit_code == 0, r.output  # unknown is no regression
    doc = json.loads(r.stdout)
    assert doc["outcome"] == "unknown" and doc["phases"][0]["verdict"] == "unknown"
    r = CliRunner().invoke(cli, ["regress", "--baseline", str(base), "--candidate", str(few)])
    assert r.exit_code == 0 and re.search(
        r"PASS; unknown: read q0 total \(\d+ more runs? of each side would decide\)", r.stdout
    ), r.stdout


def test_a_summary_read_a_few_requests_at_a_time_with_runs_on_disk_is_the_same(
    tmp_path, monkeypatch
):
    """summarize's slices and its order statistics' runs (timeline.order_stats) change no
    value of the baseline: 1500 requests read 7 at a time, with 50 values held, equal them
    read at once and held whole; and equal each phase's values sorted and sampled whole."""
    from xvtrace.timeline import order_stats

    whole = _summary(tmp_path, 3, workload="randrw-16k-qd8", name="whole")
    monkeypatch.setattr(regress, "SLICE_ROWS", 7)
    monkeypatch.setattr(order_stats, "HELD_VALUES", 50)
    monkeypatch.setattr(order_stats, "MERGE_VALUES", 16)
    monkeypatch.setattr(order_stats, "MIN_CHUNK", 2)
    bundle = api.load(tmp_path / "whole")
    assert regress.summarize(bundle) == whole
    # against the phase's values gathered and sampled whole, as numpy does
    req = api.timeline(tmp_path / "whole").requests.filter(pl.col("complete"))
    ops = {g["op"] for g in whole["phases"]}
    assert ops >= {"read", "write"}  # two operations, so the groups are told apart
    for g in whole["phases"]:
        name, a, b = next(p for p in regress.PHASES if p[0] == g["phase"])
        mine = req.filter((pl.col("queue") == g["queue"]) & (pl.col("op") == g["op"]))
        v = np.sort((mine[b] - mine[a]).drop_nulls().to_numpy().astype(np.float64))
        if len(v) > regress.SAMPLE:
            v = np.quantile(v, (np.arange(regress.SAMPLE) + 0.5) / regress.SAMPLE)
        assert g["n"] == len(mine[b] - mine[a]) - (mine[b] - mine[a]).null_count()
        assert g["values"] == [round(float(x), 1) for x in v], name
