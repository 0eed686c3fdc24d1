"""Replay against real systems (xvtrace validate): the host calibrated on workload W1's real
captures, each W2 capture replayed as every real transport and compared with that
transport's own W2 capture (tests/xen/guest-init: W1 is one process of 4 KiB and 64 KiB
sequential requests, W2 four processes of 16 KiB random reads).

The fast suite runs it on the stored captures of one boot each (fixtures/xen/validation);
the xen stage boots the six scenarios afresh and checks the same matrix can be made.

A second matrix sets VirtIO-SuSE, with grants per request and with persistent grants,
against VirtIO-EPAM on one guest kernel (ours, with and without grant DMA for virtio, all
PV-on-HVM; tests/xen/grant): fitted on their own W1 captures, as the other three are on
Debian's kernel without PV drivers."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import FIXTURES

from xvtrace import api
from xvtrace.cli import cli

STORED = FIXTURES / "xen" / "validation"
W1 = ("pv", "hvm-epam", "hvm-virtio")
W2 = ("pv-w2", "hvm-epam-w2", "hvm-virtio-w2")
TRANSPORT = {"pv": "pv-blkif", "hvm-epam": "epam-mmio", "hvm-virtio": "qemu-virtio-pci",
             "hvm-epam-pvhvm": "epam-mmio", "hvm-suse-grant": "suse-grant",
             "hvm-suse-grant-persistent": "suse-grant-persistent",
             "hvm-stratos": "stratos-vhost-user"}  # fmt: skip
# one guest kernel: without grants, with grants per request, with persistent grants
GRANT_W1 = ("hvm-epam-pvhvm", "hvm-suse-grant", "hvm-suse-grant-persistent")
GRANT_W2 = ("hvm-epam-pvhvm-w2", "hvm-suse-grant-w2", "hvm-suse-grant-persistent-w2")
# EPAM against Linaro Stratos (tests/xen/stratos), one boot each back to back
STRATOS_W1 = ("stratos/hvm-epam", "stratos/hvm-stratos")
STRATOS_W2 = ("stratos/hvm-epam-w2", "stratos/hvm-stratos-w2")


def _validate(root, *extra, w1=W1, w2=W2) -> dict:
    r = CliRunner().invoke(
        cli,
        ["validate", *(str(root / s) for s in w2), *(a for s in w1 for a in ("-c", str(root / s))),
         "--json", *extra],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _ingested_copy(capture: Path, to: Path) -> Path:
    """A copy of `capture` at `to`, ingested there (timelines are written beside it)."""
    shutil.copytree(capture, to)
    api.ingest(to, warn=lambda m: None)
    return to


def _stored_matrix(root, w1, w2):
    """A copy of the stored captures `w1` and `w2` in `root`, and their matrix."""
    for s in (*w1, *w2):
        _ingested_copy(STORED / s, root / s)
    return root, _validate(root, w1=w1, w2=w2)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    return _stored_matrix(tmp_path_factory.mktemp("validation"), W1, W2)


def test_every_source_is_predicted_as_every_real_transport(stored):
    _, v = stored
    pairs = {(m["source"], m["target"]) for m in v["matrix"]}
    assert pairs == {(s, TRANSPORT[t.removesuffix("-w2")]) for s in W2 for t in W2}
    # fitted on W1 alone: the W2 captures are only predicted and compared with
    assert sorted(p.rsplit("/", 1)[1] for p in v["calibrated_on"]) == sorted(W1)
    for row in v["intervals"]:
        assert row["requests"] >= 100, row
        assert row["real_p50_us"] > 0 and row["pred_p50_us"] >= 0, row
        assert all(
            map(math.isfinite, (row["pred_p90_us"], row["err_p50"] if row["pred_p50_us"] else 0))
        ), row


def test_epam_predicted_from_its_w1_calibration_within_the_target(stored):
    """EPAM's W2 from its W1 costs: the backend's completion work (I/O done -> fill: the
    buffers unmapped, the status written) and the ISR's traps are in the model; without
    them the whole request was 18 % short at p50 and 51 % at p90."""
    _, v = stored
    (cell,) = [
        m for m in v["matrix"] if m["source"] == "hvm-epam-w2" and m["target"] == "epam-mmio"
    ]
    assert abs(cell["err_p50"]) <= v["targets"]["p50"], cell
    steps = [
        r for r in v["intervals"] if r["source"] == "hvm-epam-w2" and r["target"] == "epam-mmio"
    ]
    done_to_fill = next(r for r in steps if r["interval"] == "I/O done -> fill")
    # within 35 %: W2's load alone makes a 4 KiB request's completion 2.4x slower than on
    # W1 (3.6 ms against 1.5 ms), which no W1 fit can know (docs/replay.md)
    assert abs(done_to_fill["err_p50"]) <= 0.35, done_to_fill


def test_each_transport_predicted_from_itself_and_the_misses_named(stored):
    """Each transport's W2 from its own W2 stream and the W1 costs: within the target at
    p50 (PV's kick, submission, completion and response are all on the host's side now),
    and PV's from every source. Across backends the device interval carries the source
    backend's own I/O path, which calibrate fits from the W1 captures of all three (QEMU's
    thread pool 2.4 ms over EPAM's pread): without it virtio-pci's W2 as pv-blkif was 4x
    too slow at p50 (+297 %); with it the p50 holds and the p90 keeps QEMU's tail."""
    _, v = stored
    for m in v["matrix"]:
        if TRANSPORT[m["source"].removesuffix("-w2")] == m["target"]:
            # and at p90: the fitted spreads and the host's slowdown (before them, fitted on
            # means alone, EPAM's own p90 was 55 % short)
            assert abs(m["err_p50"]) <= v["targets"]["p50"], m
            assert abs(m["err_p90"]) <= v["targets"]["p90"], m
        if m["target"] == "pv-blkif":
            assert abs(m["err_p50"]) <= v["targets"]["p50"], m
    fits = {r["key"]: r for r in v["calibration"]}
    assert fits["dm.io_path"]["ns"] > 1e6  # QEMU's I/O path under nested TCG: milliseconds


def test_the_matrix_is_the_stored_one(stored, golden):
    """Every error of the stored captures' matrix, to the per mille: a change of the model,
    the calibration or the timeline shows here (rewrite with --update-golden once reviewed)."""
    _, v = stored
    golden(_error_rows(v, 14, 16), STORED / "matrix.golden.txt")


def _error_rows(v, source_width: int, target_width: int) -> str:
    """Every interval's p50 and p90 error, one line each, as the golden files keep them."""
    return "".join(
        f"{r['source']:<{source_width}}{r['target']:<{target_width}}{r['interval']:<26}"
        f"{r['err_p50']:+.3f} {r['err_p90']:+.3f}\n"
        for r in v["intervals"]
    )


def test_the_text_matrix_says_what_misses(stored):
    root, _ = stored
    r = CliRunner().invoke(
        cli, ["validate", *(str(root / s) for s in W2), "-c", str(root / "hvm-epam")]
    )
    assert r.exit_code == 0, r.output
    assert "calibrated on hvm-epam (epam-mmio)" in r.stdout
    assert "host-observed request" in r.stdout
    assert "pv-w2 as epam-mmio" in r.stdout


def test_captures_without_a_transport_are_left_out_by_name(stored, tmp_path):
    """The older stored PV capture predates `capture --transport`: named as left out."""
    root, _ = stored
    old = _ingested_copy(FIXTURES / "xen" / "pv-blkfront", tmp_path / "pv-blkfront")
    r = CliRunner().invoke(
        cli, ["validate", str(root / "hvm-epam-w2"), str(old), "-c", str(root / "hvm-epam")]
    )
    assert r.exit_code == 0, r.output
    assert f"left out: {old}: its transport is unknown" in r.stdout
    r = CliRunner().invoke(cli, ["validate", str(root / "hvm-epam-w2"), "-c", str(old)])
    assert r.exit_code == 2 and "no --calibrate capture names its transport" in r.output


@pytest.mark.xen
@pytest.mark.boots(*W1, *W2, *GRANT_W1)
def test_the_matrix_from_fresh_boots(xen_boot, tmp_path):
    """The scenarios booted now (CI re-records them): each capture says its workload and
    transport, and the matrix is made from them. The grant matrix is calibrated on the grant
    scenarios' fresh W1 boots (test_real_xen's) and replays their stored W2 captures: their
    own three boots would add 10 of CI's 90 minutes."""
    for s in (*W1, *W2, *GRANT_W1):
        booted = xen_boot(s)
        (console,) = (booted.parent / "console").glob("guest-*.log")
        assert "XVT-GUEST data ok" in console.read_text(errors="replace")
        _ingested_copy(booted, tmp_path / s)
        m = json.loads((tmp_path / s / "manifest.json").read_text())
        assert m["transport"] == TRANSPORT[s.removesuffix("-w2")]
        assert m["workload"]["name"] == ("W2" if s.endswith("-w2") else "W1")
    for s in GRANT_W2:
        _ingested_copy(STORED / s, tmp_path / s)
    v = _validate(tmp_path)
    assert len(v["matrix"]) == 9
    assert all(r["requests"] >= 100 for r in v["intervals"])
    grants = _validate(tmp_path, w1=GRANT_W1, w2=GRANT_W2)
    assert len(grants["matrix"]) == 9 and all(r["requests"] >= 100 for r in grants["intervals"])
    # the PV guest's kick and response were recorded in dom0 (blkback's IRQ, the probe)
    pv = {r["interval"] for r in v["intervals"] if r["target"] == "pv-blkif"}
    assert {"kick -> submit", "I/O done -> fill"} <= pv, pv


@pytest.fixture(scope="module")
def grants(tmp_path_factory):
    """EPAM, SuSE and SuSE with persistent grants on one guest kernel: their W1 and W2
    captures, and their matrix."""
    return _stored_matrix(tmp_path_factory.mktemp("grants"), GRANT_W1, GRANT_W2)


def _own(v, source: str) -> dict:
    """The per-interval p50 errors of `source` replayed as its own transport."""
    target = TRANSPORT[source.removesuffix("-w2")]
    return {r["interval"]: r["err_p50"] for r in v["intervals"]
            if r["source"] == source and r["target"] == target}  # fmt: skip


def test_suse_and_epam_predicted_from_each_other(grants, golden):
    """Each W2 capture replayed as every transport of the three and compared with that
    transport's own W2 capture; SuSE's grant maps are fitted from its W1 capture (the
    others have none in their requests), every other key from all three. The errors are
    stored, as the main matrix's are.

    What the matrix shows (docs/replay.md): the three share the backend's pop and
    completion keys (the same backend), whose stretches also hold each transport's own map
    work (EPAM's foreign maps, SuSE's grant maps, persistent's lookups, per buffer with
    the header and status descriptors). Each capture alone scales a stretch's costs by one
    factor, keeping the table's split, so the shared pop fitted none of them (persistent
    +115 % and EPAM -48 % in pop -> submit); the joint fit over the three captures and
    their request sizes sets the pop where persistent's short stretch allows and each
    transport's map work beside it: every pair within both targets."""
    _, v = grants
    pairs = {(m["source"], m["target"]): m for m in v["matrix"]}
    assert set(pairs) == {(s, TRANSPORT[t.removesuffix("-w2")]) for s in GRANT_W2 for t in GRANT_W2}
    fits = {r["key"]: r for r in v["calibration"]}
    assert "hvm-suse-grant" in fits["xen.grant_map"]["source"]
    assert "hvm-epam-pvhvm" not in fits["xen.grant_map"]["source"]
    # SuSE's own W2 from the W1 costs; each transport's own p90 (the spreads fitted)
    assert abs(pairs[("hvm-suse-grant-w2", "suse-grant")]["err_p50"]) <= v["targets"]["p50"]
    for s in GRANT_W2:
        own = pairs[(s, TRANSPORT[s.removesuffix("-w2")])]
        assert abs(own["err_p90"]) <= v["targets"]["p90"], own
    # the host's slowdown, fitted from each W1 capture's whole requests, pooled
    assert 0.2 < fits["host.slowdown"]["sigma"] < 0.6, fits["host.slowdown"]
    assert all(m["within"] for m in v["matrix"]), v["matrix"]
    shared = {"pop -> submit", "I/O done -> fill"}  # the stretches of the shared keys
    for s in ("hvm-suse-grant-persistent-w2", "hvm-epam-pvhvm-w2"):
        own = _own(v, s)
        assert all(abs(own[k]) <= v["targets"]["p50"] for k in shared), (s, own)
    # the pop under persistent's whole 4 KiB pop -> submit (182 us), the maps beside it
    assert fits["epam.virtqueue_pop"]["ns"] < 182_000 < fits["epam.buffer_map"]["ns"]
    golden(_error_rows(v, 29, 22), STORED / "grants.golden.txt")


def test_persistent_grants_fitted_alone_predict_their_own_w2(tmp_path):
    """The persistent path itself is right: fitted on its own W1 capture only, its W2 is
    predicted within the targets (the joint fit's miss is the shared keys', above)."""
    _, v = _stored_matrix(
        tmp_path, ("hvm-suse-grant-persistent",), ("hvm-suse-grant-persistent-w2",)
    )
    (m,) = v["matrix"]
    assert abs(m["err_p50"]) <= v["targets"]["p50"] and abs(m["err_p90"]) <= v["targets"]["p90"], m


def test_epam_and_stratos_predicted_from_each_other(tmp_path, golden):
    """EPAM's device and the same device split into a vhost-user front-end and back-end
    process, on one host back to back: each W2 replayed as both, fitted on both W1s, every
    pair within both targets. The whole request holds though two of Stratos's stretches are
    off (docs/replay.md): the path puts the vCPU's re-entry after the kick before the
    back-end's pop, where on the host the back-end has done the request before the vCPU
    runs again, so the call eventfd's hop is not fitted (the table's 2 us against 650 us)."""
    _, v = _stored_matrix(tmp_path, STRATOS_W1, STRATOS_W2)
    pairs = {(m["source"], m["target"]): m for m in v["matrix"]}
    assert set(pairs) == {(s.split("/")[1], TRANSPORT[t.split("/")[1].removesuffix("-w2")])
                          for s in STRATOS_W2 for t in STRATOS_W2}  # fmt: skip
    assert all(m["within"] for m in v["matrix"]), v["matrix"]
    fits = {r["key"]: r for r in v["calibration"]}
    assert "hvm-stratos" in fits["vhost.eventfd_kick"]["source"]
    # the kick's hop, fitted from its own interval, predicts the W2 one within 30 %
    own = _own(v, "hvm-stratos-w2")
    assert abs(own["kick -> back-end"]) <= 0.3, own
    golden(_error_rows(v, 16, 20), STORED / "stratos" / "stratos.golden.txt")
