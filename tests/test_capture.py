"""`xvtrace capture` pieces that need no VM: interface sniffing, host facts, refusals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import polars as pl
import pytest
from click.testing import CliRunner
from helpers import FIXTURES

from xvtrace import api
from xvtrace.capture import parse_xl_info
from xvtrace.cli import cli

XL_INFO = """host                   : xenhost
release                : 6.1.0-28-amd64
nr_cpus                : 2
cpu_mhz                : 2445.426
xen_major              : 4
xen_minor              : 17
xen_extra              : .5
xen_caps               : xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_64
xen_scheduler          : credit2
"""


def test_xl_info_facts():
    facts = parse_xl_info(XL_INFO)
    assert facts["cpu_khz"] == 2445426 and facts["xen_version"] == "4.17.5"
    assert facts["xen_scheduler"] == "credit2" and facts["nr_cpus"] == "2"


def test_refuses_when_there_is_nothing_to_capture(tmp_path):
    r = CliRunner().invoke(cli, ["capture", "-o", str(tmp_path / "b"), "--no-xentrace"])
    assert r.exit_code == 2 and "nothing to capture" in r.output


def test_refuses_a_non_empty_bundle_directory(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("keep me")
    r = CliRunner().invoke(cli, ["capture", "-o", str(tmp_path / "b"), "--iface", "lo"])
    assert r.exit_code == 2 and "not empty" in r.output
    assert (tmp_path / "b" / "x").read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() != 0, reason="sniffing needs root (CAP_NET_RAW)")
def test_iface_sniffing_until_sigterm(tmp_path):
    bundle = tmp_path / "b"
    cap = subprocess.Popen(
        [sys.executable, "-m", "xvtrace", "capture", "-o", str(bundle), "--iface", "lo",
         "--no-xentrace", "--duration", "120", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    pcap = bundle / "raw" / "lo.pcap"
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a listener: no ICMP unreachable
    sink.bind(("127.0.0.1", 0))
    port = sink.getsockname()[1]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    deadline = time.monotonic() + 60
    # Send until the sniffer has written several of our datagrams (it starts asynchronously).
    while (
        not pcap.exists() or pcap.stat().st_size < 24 + 5 * (16 + 14 + 20 + 8 + 123)
    ) and time.monotonic() < deadline:
        sock.sendto(b"x" * 123, ("127.0.0.1", port))
        sent += 1
        time.sleep(0.05)  # pacing the sender, not measuring time
    sock.close()
    sink.close()
    cap.send_signal(signal.SIGTERM)
    out, _ = cap.communicate(timeout=60)
    assert cap.returncode == 0, out
    assert "stopped: signal" in out
    ev = api.load(bundle).events().collect()
    ours = ev.filter((pl.col("event") == "net.packet") & (pl.col("arg5") % 65536 == port))
    # on lo every datagram is seen leaving and arriving
    assert 5 <= len(ours) <= 2 * sent
    assert (ours["size"] == 14 + 20 + 8 + 123).all() and (ours["arg2"] == 17).all()


def _fake_tracefs(root, lines: str):
    """The files a tracefs instance has (a real one creates them on mkdir)."""
    inst = root / "instances" / "xvtrace"
    for ev in ("block_rq_insert", "block_rq_issue", "block_rq_complete"):
        (inst / "events" / "block" / ev).mkdir(parents=True)
        (inst / "events" / "block" / ev / "enable").write_text("0")
    (inst / "events" / "irq" / "irq_handler_entry").mkdir(parents=True)
    (inst / "events" / "irq" / "irq_handler_entry" / "enable").write_text("0")
    (inst / "events" / "irq" / "irq_handler_entry" / "filter").write_text("none\n")
    (inst / "trace_clock").write_text("[local] global counter uptime perf mono x86-tsc\n")
    (inst / "buffer_size_kb").write_text("1408")
    (inst / "tracing_on").write_text("0")
    (inst / "trace_pipe").write_text(lines)
    return inst


def test_block_trace_through_a_tracefs_instance(tmp_path):
    lines = (
        "          <idle>-0       [000] d.h1. 1000000012000: irq_handler_entry: irq=57 name=blkif-backend\n"
        "  blkback.1.xvda-311     [000] ..... 1000000024000: block_rq_issue: 259,0 R 4096 () 64 + 8 [blkback.1.xvda]\n"
        "          <idle>-0       [000] ..... 1000000048000: block_rq_complete: 259,0 R () 64 + 8 [0]\n"
    )
    inst = _fake_tracefs(tmp_path / "tracefs", lines)
    bundle = tmp_path / "b"
    r = CliRunner().invoke(cli, ["capture", "-o", str(bundle), "--no-xentrace", "--block-trace",
                                 "--tracefs", str(tmp_path / "tracefs"), "--duration", "0.3",
                                 "--no-ingest", "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "capturing: ftrace (Ctrl-C stops)" in r.output  # what scripts wait for
    assert (inst / "trace_clock").read_text() == "x86-tsc"  # the TSC xentrace stamps
    assert all((inst / "events" / "block" / ev / "enable").read_text() == "0"  # left as found
               for ev in ("block_rq_insert", "block_rq_issue", "block_rq_complete"))  # fmt: skip
    irq = inst / "events" / "irq" / "irq_handler_entry"  # blkback's interrupt, filtered
    assert irq.joinpath("enable").read_text() == "0" and irq.joinpath("filter").read_text() == "0"
    m = json.loads((bundle / "manifest.json").read_text())
    (src,) = [s for s in m["capture"]["sources"] if s["kind"] == "ftrace"]
    assert 'irq_handler_entry if name == "blkif-backend"' in src["events"]
    assert (bundle / "raw" / "dom0-trace.txt").read_text() == lines
    got = api.ingest(bundle, cpu_khz=2_400_000, warn=lambda m: None).bundle.events().collect()
    assert got["event"].to_list() == ["irq.handler_entry", "block.rq_issue", "block.rq_complete"]
    assert got["ts_ns"].to_list() == [0, 5_000, 15_000]
    assert got["dev"][0] == "blkif-backend" and got["arg0"][0] == 57


def test_block_trace_without_tracefs_fails_that_source_only(tmp_path):
    r = CliRunner().invoke(cli, ["capture", "-o", str(tmp_path / "b"), "--no-xentrace", "--block-trace",
                                 "--tracefs", str(tmp_path / "none"), "--duration", "5", "--no-ingest",
                                 "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    (src,) = m["capture"]["sources"]
    assert src["kind"] == "ftrace" and src["ok"] is False and "tracefs" in src["error"]
    assert m["capture"]["stop_reason"] == "every source stopped"  # not the full 5 s


def test_api_capture_of_a_log_gives_a_decoded_bundle(tmp_path):
    """api.capture runs the capture session and ingests its bundle: a QEMU log written by
    another program, copied in at the end, reconstructs into its requests."""
    log = FIXTURES / "qemu" / "q35-virtio-pci" / "trace.log"
    bundle = api.capture(
        tmp_path / "b", xentrace=False, block_trace=False, logs=[log], duration=0.1
    )
    assert [s["format"] for s in bundle.manifest.sources] == ["qemu-log"]
    assert api.timeline(tmp_path / "b").facts["requests"] == 1321
