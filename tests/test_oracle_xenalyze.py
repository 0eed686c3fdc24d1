"""Oracle tests: xvtrace's answers against Xen's own xenalyze (Debian xen-utils-4.17).

Counts must agree exactly; times agree within xenalyze's printed precision (2 decimals of
a second) or, for per-record times, within its integer cpu_qhz scale error (<0.05 %).
"""

from __future__ import annotations

import json
import lzma
import re
import subprocess

import polars as pl
import pytest
from helpers import ARM64, ARM_KHZ, FIXTURES, X86_KHZ, X86_PV
from xenalyze_output import assert_runstates_match, our_runstates, parse_dump, parse_summary

from xvtrace import api
from xvtrace.parsers.xentrace import decode_file, write_frame
from xvtrace.testing.synth import hvm_records

pytestmark = pytest.mark.oracle

RUNSTATE_NAMES = {"running", "runnable", "blocked", "lost"}


def xenalyze_text(exe, path, *opts) -> str:
    proc = subprocess.run(
        [exe, *opts, str(path)], capture_output=True, text=True, check=True, timeout=300
    )
    return proc.stdout


@pytest.mark.parametrize(
    ("capture", "khz", "opts"),
    [(X86_PV, X86_KHZ, ["--svm-mode", "--cpu-hz=2445.425M"]), (ARM64, ARM_KHZ, ["--cpu-hz=62.5M"])],
    ids=["x86-pv", "arm64-pvh"],
)
def test_real_capture_summary_matches_xenalyze(xenalyze, capture, khz, opts):
    theirs = parse_summary(xenalyze_text(xenalyze, capture / "trace.bin", *opts, "--summary"))
    summary = api.summarize(capture / "trace.bin", cpu_khz=khz)
    # total time and log volume per pCPU and class
    span = summary.sections["totals"]["span_ns"][0] / 1e9
    assert span == pytest.approx(theirs.total_s, abs=0.0051)
    vol = {
        (r["cpu"], r["class"]): r["bytes"] for r in summary.sections["volume"].iter_rows(named=True)
    }
    assert vol == dict(theirs.volume.items())
    assert_runstates_match(theirs, our_runstates(summary))
    # hypercalls by number per domain (xenalyze folds multicall subcalls into the names)
    hc = summary.sections["hypercalls"].filter(pl.col("kind") != "hvm")
    # (records before any vCPU is known to run go to xenalyze's hidden default domain)
    hc = hc.filter(pl.col("dom").is_not_null())
    ours = {
        (r[0], r[1]): r[2] for r in hc.group_by("dom", "op").agg(pl.col("count").sum()).iter_rows()
    }
    assert ours == theirs.hypercalls
    # xenalyze's PV events section (page faults, privileged-op emulation, ptwr, ...)
    pv = summary.sections["pv_events"].filter(pl.col("dom").is_not_null())
    assert {(r[0], r[1]): r[2] for r in pv.iter_rows()} == theirs.pv_events


@pytest.mark.parametrize(
    ("vendor", "batch_rows"), [("vmx", None), ("svm", None), ("vmx", 997)]
)  # batch_rows 997: exits paired across chunks (summary.CHUNK_ROWS)
def test_hvm_exits_match_xenalyze(xenalyze, tmp_path, vendor, batch_rows, monkeypatch):
    if batch_rows is not None:
        from xvtrace.analysis import summary as summary_module

        monkeypatch.setattr(summary_module, "CHUNK_ROWS", batch_rows)
    path = tmp_path / f"hvm-{vendor}.bin"
    write_frame(path, hvm_records(20000, seed=11, vendor=vendor), round_cycles=2_400_000)
    opts = ["--cpu-hz=2.4G", "--summary"] + (["--svm-mode"] if vendor == "svm" else [])
    theirs = parse_summary(xenalyze_text(xenalyze, path, *opts))
    if batch_rows is not None:  # the table's exit rows, paired a batch at a time
        path = api.ingest(path, tmp_path / "b", cpu_khz=2_400_000, hvm_vendor=vendor).bundle.path
    summary = api.summarize(path, cpu_khz=2_400_000, hvm_vendor=vendor)
    ex = summary.sections["exits"]
    ours = {(r["dom"], r["vcpu"], r["name"]): r for r in ex.iter_rows(named=True)}
    assert theirs.exits
    assert set(theirs.exits) == set(ours)
    for key, (count, _secs, avg_cyc) in theirs.exits.items():
        assert ours[key]["count"] == count, key
        assert ours[key]["unmatched"] == 0
        assert ours[key]["mean_ns"] * 2.4 == pytest.approx(avg_cyc, rel=0.005, abs=2), key
    assert_runstates_match(theirs, our_runstates(summary))


@pytest.mark.parametrize(
    "name", ["hvm-virtio", "hvm-epam", "hvm-ide", "hvm-ide-drift", "hvm-epam-smp"]
)
def test_real_hvm_exits_match_xenalyze(xenalyze, tmp_path, name):
    """The stored real HVM captures (Xen 4.17, AMD): every exit reason's count per vCPU
    exactly, and its time as xenalyze counts it: an exit ends at its vCPU's re-entry (on any
    pCPU), or at its wake-up when that comes first (the wait for a pCPU is not the exit's
    cost). Before, HLT, IOIO and NPF were 3-7 % long on these captures, and IOIO 0.02-0.2 %
    short (an exit whose vCPU re-entered on another pCPU had no end). Likewise the
    nested-page-fault exits split by handler (mmio / npf) and the exits by IO port."""
    src = FIXTURES / "xen" / name
    trace = tmp_path / "xentrace.bin"
    trace.write_bytes(lzma.decompress((src / "raw" / "xentrace.bin.xz").read_bytes()))
    host = json.loads((src / "manifest.json").read_text())["host"]
    opts = [f"--cpu-hz={host['cpu_khz'] * 1000}", "--summary", "--svm-mode"]
    theirs = parse_summary(xenalyze_text(xenalyze, trace, *opts))
    summary = api.summarize(trace, cpu_khz=host["cpu_khz"], hvm_vendor="svm")
    ours = {
        (r["dom"], r["vcpu"], r["name"]): r for r in summary.sections["exits"].iter_rows(named=True)
    }
    assert theirs.exits and set(theirs.exits) <= set(ours)

    def same_times(ours_row, count, avg_cyc, key):
        # an exit with no end (its guest was destroyed in it) is one xenalyze never counts
        assert ours_row["count"] - ours_row["unmatched"] == count, key
        cycles = ours_row["total_ns"] * host["cpu_khz"] / 1e6 / count
        assert cycles == pytest.approx(avg_cyc, rel=1e-4, abs=2), key

    for key, (count, _secs, avg_cyc) in theirs.exits.items():
        same_times(ours[key], count, avg_cyc, key)
    split = summary.sections["exit_handlers"]
    handlers = {
        (r["dom"], r["vcpu"], r["name"], r["handler"]): r for r in split.iter_rows(named=True)
    }
    # xenalyze prints a handler's line only under the first vCPU that met it (a static flag
    # per call site in hvm_set_summary_handler), or none if that was its hidden domain's
    theirs_npf = {k: v for k, v in theirs.exit_handlers.items() if k[2] == "VMEXIT_NPF"}
    assert theirs_npf and set(theirs_npf) <= set(handlers)
    for key, (count, _secs, avg_cyc) in theirs_npf.items():
        same_times(handlers[key], count, avg_cyc, key)
    io = summary.sections["io_exits"]
    ports = {(r["dom"], r["vcpu"], r["port"], r["dir"]): r for r in io.iter_rows(named=True)}
    assert set(ports) == set(theirs.io_ports) and ports
    for key, (count, _secs, avg_cyc) in theirs.io_ports.items():
        same_times(ports[key], count, avg_cyc, key)
    assert_runstates_match(theirs, our_runstates(summary))
    span = summary.sections["totals"]["span_ns"][0] / 1e9
    assert span == pytest.approx(theirs.total_s, abs=0.0051)
    hc = summary.sections["hypercalls"].filter(
        (pl.col("kind") != "hvm") & pl.col("dom").is_not_null()
    )
    calls = {
        (r[0], r[1]): r[2] for r in hc.group_by("dom", "op").agg(pl.col("count").sum()).iter_rows()
    }
    assert calls == theirs.hypercalls


def test_record_level_values_match_dump_all(xenalyze, tmp_path):
    path = tmp_path / "hvm.bin"
    write_frame(path, hvm_records(4000, seed=5), round_cycles=2_400_000)
    theirs = parse_dump(xenalyze_text(xenalyze, path, "--cpu-hz=2.4G", "--dump-all"))
    npf = [
        (ns, d, v, int(m.group(1), 16))
        for ns, d, v, text in theirs
        if (m := re.match(r"npf gpa (\w+)", text))
    ]
    io = [
        (ns, d, v, int(m.group(1), 16), int(m.group(2), 16))
        for ns, d, v, text in theirs
        if (m := re.match(r"io read port (\w+) val (\w+)", text))
    ]
    df, _ = decode_file(path, cpu_khz=2_400_000)
    our_npf = df.filter(pl.col("event") == "hvm.npf").select("ts_ns", "dom", "vcpu", "addr").rows()
    our_io = (
        df.filter(pl.col("event") == "hvm.ioport_read")
        .select("ts_ns", "dom", "vcpu", "addr", "arg1")
        .rows()
    )
    assert len(npf) == len(our_npf) > 100
    assert len(io) == len(our_io) > 100

    def per_vcpu(rows):  # cross-pCPU ties in TSC may merge in either order
        out = {}
        for r in rows:
            out.setdefault((r[1], r[2]), []).append(r)
        return out

    theirs_v, ours_v = per_vcpu(npf + io), per_vcpu(our_npf + our_io)
    assert set(theirs_v) == set(ours_v)
    t0, o0 = npf[0][0], our_npf[0][0]
    for key, rows in theirs_v.items():
        mine = ours_v[key]
        assert [r[1:] for r in rows] == [tuple(r[1:]) for r in mine]
        # times: same offsets from the first record, up to xenalyze's integer-qhz scaling
        for (t, *_), (o, *_) in zip(rows, mine, strict=True):
            assert abs((t - t0) - (o - o0)) <= 2 + 0.0005 * abs(o - o0)


def test_lost_records_are_counted_like_xenalyze(xenalyze, tmp_path):
    path = tmp_path / "lost.bin"
    src = hvm_records(6000, seed=2, lost_every=3)
    write_frame(path, src, round_cycles=2_400_000)
    summary = api.summarize(path, cpu_khz=2_400_000)
    lost = summary.sections["lost_records"]
    expected = src.filter(pl.col("code") == 0x0001F001)
    assert lost["markers"].sum() == len(expected)
    assert lost["lost"].sum() == expected["arg0"].sum()
    theirs = parse_summary(xenalyze_text(xenalyze, path, "--cpu-hz=2.4G", "--summary"))
    assert any(name == "lost" for (_, _, name) in theirs.runstates)
    assert any(state == "lost" for (_, _, state) in our_runstates(summary))
