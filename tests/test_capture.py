"""`xvtrace capture` pieces that need no VM: interface sniffing, host facts, refusals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import polars as pl
import pytest
from click.testing import CliRunner

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
