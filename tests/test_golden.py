"""Golden files: `xvtrace dump` and `summary` output on the real captures, byte for byte."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from helpers import ARM64, FIXTURES, X86_PV

from xvtrace.cli import cli


@pytest.mark.parametrize(
    ("capture", "name"), [(X86_PV, "x86-pv-blkfront"), (ARM64, "arm64-pvh-blkfront")]
)
def test_dump_head_and_summary_golden(golden, capture, name):
    runner = CliRunner()
    dump = runner.invoke(
        cli, ["dump", str(capture / "trace.bin"), "--limit", "400"], catch_exceptions=False
    )
    assert dump.exit_code == 0
    golden(dump.stdout, FIXTURES / "xentrace" / f"{name}.dump-head.golden.txt")
    summary = runner.invoke(cli, ["summary", str(capture / "trace.bin")], catch_exceptions=False)
    assert summary.exit_code == 0
    golden(summary.stdout, FIXTURES / "xentrace" / f"{name}.summary.golden.txt")
