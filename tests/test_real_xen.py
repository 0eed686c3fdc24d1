"""Real Xen 4.17 under QEMU TCG (tests/xen/build_host.py): `python -m xvtrace.capture` runs
in dom0 while a PV guest does O_DIRECT I/O through blkfront/blkback; the bundle comes back
over 9p and goes through ingest, summary and the xenalyze oracle.

About two minutes (dom0 is up ~40 s after QEMU starts); runs in CI."""

from __future__ import annotations

import json
import shutil
import subprocess

import polars as pl
import pytest
from build_host import run
from helpers import XEN_PV
from xenalyze_output import assert_runstates_match, our_runstates, parse_summary

from xvtrace import api


@pytest.fixture(scope="module", params=[pytest.param("boot", marks=pytest.mark.xen), "stored"])
def pv(request, tmp_path_factory):
    """The PV scenario booted now (marked xen), and the stored capture of an earlier boot
    (fixtures/xen/pv-blkfront: the same checks in the fast suite)."""
    out = tmp_path_factory.mktemp("xenhost")
    if request.param == "boot":
        bundle = run("pv", out, timeout=900)
    else:
        bundle = out / "pv"
        shutil.copytree(XEN_PV, bundle)
        (out / "console").mkdir()
        shutil.copy(XEN_PV / "meta" / "guest-console.log", out / "console" / "guest-pvguest.log")
    return out, bundle, api.ingest(bundle, out / "b", warn=lambda m: None)


def test_the_guest_did_its_io_on_real_xen(pv):
    out, _, _ = pv
    (log,) = (out / "console").glob("guest-*.log")
    said = [
        ln.split("] ", 1)[-1] for ln in log.read_text(errors="replace").splitlines() if "XVT " in ln
    ]
    assert {"XVT write bs=4096 count=64", "XVT read bs=4096 count=64", "XVT read bs=65536 count=16",
            "XVT done"} <= set(said), said  # fmt: skip


def test_capture_in_dom0_recorded_xentrace_and_the_block_layer(pv):
    _, bundle, res = pv
    m = json.loads((bundle / "manifest.json").read_text())
    sources = {s["kind"]: s for s in m["capture"]["sources"]}
    assert sources["xentrace"]["ok"] and sources["ftrace"]["ok"]
    assert sources["ftrace"]["clock"] == "x86-tsc"  # the TSC xentrace stamps
    host = res.bundle.manifest["host"]
    assert host["xen_version"].startswith("4.17") and host["cpu_khz"] > 1_000_000
    assert host["hvm_vendor"] == "svm"  # the emulated CPU is AMD-style (SVM)
    stats = {s["format"]: s for s in res.bundle.manifest["sources"]}
    assert stats["xentrace"]["skipped"] == 0 and stats["ftrace"]["skipped"] == 0


def test_every_guest_request_reached_dom0s_block_layer_and_completed(pv):
    _, _, res = pv
    blk = res.bundle.events().filter(pl.col("source") == "ftrace").collect()
    issue = blk.filter(pl.col("event") == "block.rq_issue").with_columns(
        pl.int_range(pl.len()).over("addr").alias("n")
    )
    done = blk.filter(pl.col("event") == "block.rq_complete").with_columns(
        pl.int_range(pl.len()).over("addr").alias("n")
    )
    pairs = issue.join(done, on=["dev", "addr", "n"], suffix="_done")
    assert len(pairs) == len(issue) and (pairs["ts_ns_done"] > pairs["ts_ns"]).all()
    writes = pairs.filter((pl.col("arg0") == 1) & (pl.col("size") == 4096))
    reads = pairs.filter(pl.col("arg0") == 0)
    assert len(writes) == 64  # one blkback request per 4 KiB O_DIRECT write
    assert (reads["size"] == 65536).sum() == 16 and (reads["size"] == 4096).sum() >= 64


def test_real_trace_summary_matches_xenalyze(pv, xenalyze):
    _, bundle, res = pv
    khz = res.bundle.manifest["host"]["cpu_khz"]
    text = subprocess.run([xenalyze, "--svm-mode", f"--cpu-hz={khz / 1000}M", "--summary",
                           str(bundle / "raw" / "xentrace.bin")], capture_output=True, text=True,
                          timeout=300).stdout  # fmt: skip
    theirs = parse_summary(text)
    ours = api.summarize(res.bundle.path)
    vol = {
        (r["cpu"], r["class"]): r["bytes"] for r in ours.sections["volume"].iter_rows(named=True)
    }
    assert vol == dict(theirs.volume.items())
    assert_runstates_match(theirs, our_runstates(ours))
    assert ours.sections["totals"]["span_ns"][0] / 1e9 == pytest.approx(theirs.total_s, abs=0.0051)


def test_block_layer_requests_feed_timeline_replay_and_regress(pv):
    from xvtrace import regress, replaying, timeline
    from xvtrace.replay.transports import get

    _, _, res = pv
    req = timeline.build(res.bundle)
    # a PV guest's event-channel sends also serve its timers and console: the kicks cannot be
    # matched, so the requests are dom0's block layer's, each with its device time
    assert res.bundle.manifest["timeline"]["view"].startswith("dom0 block layer only")
    assert len(req) >= 144 and req["complete"].all() and (req["io_ns"] > 0).all()
    result = replaying.replay_bundle(res.bundle, [get("pv-blkif"), get("epam-mmio")])
    assert len(result.stream) == len(req) and result.summary["p50_us"].min() > 0
    summary = regress.summarize(res.bundle)
    cmp = regress.compare(summary, summary)
    assert "device I/O" in set(cmp.table["phase"]) and not len(cmp.regressed)
