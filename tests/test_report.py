"""`xvtrace report`: phase percentiles and per-request hypervisor work."""

from __future__ import annotations

import json

import polars as pl
from click.testing import CliRunner
from helpers import QEMU_PCI

from xvtrace import api
from xvtrace.cli import cli
from xvtrace.emulate import EmulateOptions, emulate
from xvtrace.output.report import Report


def test_emulated_report_counts_the_work_the_emulator_did(tmp_path):
    r = emulate(EmulateOptions(transport="suse-grant", workload="rw=randread,bs=16k,iodepth=1", requests=400,
                               out=tmp_path / "b"))  # fmt: skip
    rep = Report.of(api.ingest(r.bundle).bundle)
    work = dict(zip(rep.per_request["what"], rep.per_request["per_request"], strict=True))
    assert work["VM exits: EPT_VIOLATION"] == 3.0  # notify + InterruptStatus + InterruptACK
    assert work["IOREQs handled by QEMU"] == 3.0
    # 16 KiB = 4 pages, and the header and status descriptors
    assert work["grant maps"] == work["grant unmaps"] == 6.0
    assert work["dom0 hypercalls: grant_table_op"] == 2.0  # one map, one unmap batch
    io = rep.phases.filter(pl.col("phase") == "device I/O")
    # QEMU's view of device I/O runs from handle_* (logged once the buffers are mapped,
    # before the submission) to rw_complete
    qemu_view = r.truth["device_io_end_ns"] - r.truth["grant_map_end_ns"]
    truth_p50 = qemu_view.quantile(0.5, "nearest") / 1e3
    assert abs(io["p50_us"][0] - truth_p50) <= 1.0  # microsecond log timestamps
    assert rep.facts["clocks"]["device_model_clock"]["consistent"]


def test_real_capture_report_and_json(tmp_path):
    runner = CliRunner()
    assert (
        runner.invoke(
            cli, ["ingest", str(QEMU_PCI / "trace.log"), "-o", str(tmp_path / "b")]
        ).exit_code
        == 0
    )
    text = runner.invoke(cli, ["report", str(tmp_path / "b")])
    assert text.exit_code == 0, text.output
    assert "1321 requests" in text.output.splitlines()[0]
    data = json.loads(runner.invoke(cli, ["report", str(tmp_path / "b"), "--json"]).output)
    reads = [p for p in data["phases"] if p["op"] == "read" and p["phase"] == "pop -> fill"]
    assert reads[0]["requests"] == 50 and reads[0]["p50_us"] > 0
    assert data["per_request"] == []  # no hypervisor trace in a QEMU-only capture
