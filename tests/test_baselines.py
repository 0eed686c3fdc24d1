"""The project's own regression gate, through its pytest plugin: stored bundles (real QEMU
captures, one emulated run per transport) against their stored baselines (fixtures/).

After a change that is meant to move these numbers: `pytest tests/test_baselines.py
--xvtrace-update-baselines`, review the JSON diff, commit it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import FIXTURES

from xvtrace import api
from xvtrace.emulate import EmulateOptions, emulate
from xvtrace.replay.transports import NAMES

BASELINES = FIXTURES / "baselines"
STORED = {
    "qemu-q35-virtio-pci": FIXTURES / "qemu" / "q35-virtio-pci" / "trace.log",
    "qemu-live-q35-pci": FIXTURES / "qemu" / "live-q35-pci",
    "qemu-live-microvm-mmio": FIXTURES / "qemu" / "live-microvm-mmio",
    "xen-pv-blkfront": FIXTURES / "xen" / "pv-blkfront",
    "xen-hvm-virtio": FIXTURES / "xen" / "hvm-virtio",
    "xen-hvm-ide": FIXTURES / "xen" / "hvm-ide",
    "xen-hvm-epam": FIXTURES / "xen" / "hvm-epam",
    **{f"emulated-{t}": FIXTURES / "emulated" / t for t in NAMES},
}


@pytest.mark.parametrize("name", sorted(STORED))
def test_stored_bundle_matches_its_baseline(xvtrace_regress, xvtrace_bundle, tmp_path, name):
    src = STORED[name]
    if (src / "raw").is_dir():  # a stored bundle: decode a copy, the fixture stays as it is
        shutil.copytree(src, tmp_path / "b")
        src = tmp_path / "b"
    bundle = api.ingest(src, tmp_path / "b", warn=lambda m: None).bundle
    assert xvtrace_bundle(bundle.path).manifest["counts"]["events"] > 0
    xvtrace_regress.check(bundle.path, baseline=BASELINES / f"{name}.json")


@pytest.mark.parametrize("transport", NAMES)
def test_the_emulator_still_makes_the_stored_runs(xvtrace_regress, tmp_path, transport):
    if xvtrace_regress.update:
        pytest.skip("updating baselines")
    out = tmp_path / "b"
    emulate(
        EmulateOptions(
            transport=transport, workload="randread-4k-qd1", requests=300, seed=0, out=out
        )
    )
    api.ingest(out, warn=lambda m: None)
    cmp = xvtrace_regress.check(out, baseline=BASELINES / f"emulated-{transport}.json")
    assert not len(cmp.improved)  # nothing moved either way


def test_a_regression_fails_with_the_phase_table(xvtrace_regress, tmp_path):
    from xvtrace.gate.pytest_plugin import RegressionFailure

    if xvtrace_regress.update:
        pytest.skip("updating baselines")
    slow = tmp_path / "slow.csv"
    slow.write_text("key,x86_64,arm64,sigma,source\ndevice.block_read,110000,110000,0.3,test\n")
    out = tmp_path / "b"
    emulate(EmulateOptions(transport="epam-mmio", workload="randread-4k-qd1", requests=300, seed=0,
                           costs_file=slow, out=out))  # fmt: skip
    api.ingest(out, warn=lambda m: None)
    with pytest.raises(RegressionFailure, match=r"device I/O .* regression"):
        xvtrace_regress.check(out, baseline=BASELINES / "emulated-epam-mmio.json")


def test_the_plugin_takes_relative_paths_from_the_rootdir(xvtrace_regress, monkeypatch, tmp_path):
    """Run from another directory (as CI jobs do), a test's relative paths still resolve:
    they were taken from the current directory."""
    monkeypatch.chdir(tmp_path)
    base = "fixtures/baselines/qemu-live-q35-pci.json"
    assert not Path(base).exists()  # not from here
    cand = xvtrace_regress.summary(base)  # a baseline file is a candidate too
    assert xvtrace_regress.check(cand, baseline=base) is not None
