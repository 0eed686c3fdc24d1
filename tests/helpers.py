"""Paths and constants shared by the tests (tests/ is on pythonpath, see pyproject)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
X86_PV = FIXTURES / "xentrace" / "x86-pv-blkfront"
ARM64 = FIXTURES / "xentrace" / "arm64-pvh-blkfront"
X86_KHZ = 2445425  # metadata.json cpu_khz
ARM_KHZ = 62500  # metadata.json counter_hz / 1000
QEMU_PCI = FIXTURES / "qemu" / "q35-virtio-pci"
XEN_PV = FIXTURES / "xen" / "pv-blkfront"  # captured by `python -m xvtrace.capture` in a real dom0


def answered(*argv) -> tuple[int, str]:
    """The CLI run in-process on `argv`: (exit status, output), asserting it ended in an
    answer or a clear error (0 or 2), never a traceback or an internal error."""
    from click.testing import CliRunner

    from xvtrace.cli import cli

    r = CliRunner().invoke(cli, [str(a) for a in argv])
    out = r.output + (r.stderr if r.stderr_bytes is not None else "")
    assert "Traceback" not in out and "internal error" not in out, (argv, out)
    assert r.exit_code in (0, 2), (argv, r.exit_code, out)
    return r.exit_code, out
