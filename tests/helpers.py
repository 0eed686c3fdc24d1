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
