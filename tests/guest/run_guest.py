"""Boot the tiny test guest under QEMU TCG and record it with `xvtrace capture`.

    python tests/guest/run_guest.py --machine q35|microvm -o BUNDLE [--hold]

QEMU starts paused (-S) with a QMP socket; `xvtrace capture --cont` turns the trace events on,
points QEMU's log at the bundle, adds a filter-dump on the NIC and resumes the guest. The
guest (tests/guest/init) does O_DIRECT disk I/O and pings the host, announcing each step on
its console as `XVT ...`, then powers off, which ends the capture. With --hold the guest
stays up after its work; the capture is stopped with SIGTERM once the console says
`XVT done`, and dumps guest memory first (--dump-memory).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CACHE = Path(os.environ.get("XVT_GUEST_CACHE", ROOT / ".cache" / "guest"))
MACHINES = {
    # virtio-pci on q35 (ioeventfd: the main loop handles kicks)
    "q35": (["-M", "q35"], "virtio-blk-pci", "virtio-net-pci", ""),
    # virtio-mmio on microvm, the transport the EPAM approach uses; under TCG the kernel
    # needs tsc_early_khz or it hangs calibrating its TSC
    "microvm": (
        ["-M", "microvm"],
        "virtio-blk-device",
        "virtio-net-device",
        " tsc_early_khz=2000000",
    ),
}


@dataclass
class GuestRun:
    bundle: Path
    console: str
    issued: list[str]  # the guest's `XVT ...` lines
    qemu_argv: list[str]
    capture_output: str


def build_guest(*, fetch: bool = False) -> tuple[Path, Path]:
    """The kernel and initramfs (tests/guest/build-guest.sh). Without `fetch` (the tests)
    a kernel not yet downloaded, or a missing Debian package, is an error naming the fix:
    `make test` fetches and installs everything before pytest starts."""
    argv = ["sh", str(HERE / "build-guest.sh"), *([] if fetch else ["--no-fetch"]), str(CACHE)]
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip() or f"{' '.join(argv)} failed ({proc.returncode})")
    return CACHE / "vmlinuz", CACHE / "initramfs.cpio.gz"


def run(
    machine: str, bundle: Path, *, hold: bool = False, timeout: float = 300, fetch: bool = False
) -> GuestRun:
    kernel, initrd = build_guest(fetch=fetch)
    mach, blk, net, extra = MACHINES[machine]
    work = Path(tempfile.mkdtemp(prefix="xvt-guest-"))
    try:
        disk = work / "disk.raw"
        with disk.open("wb") as fh:
            fh.truncate(64 << 20)
        sock, console = work / "qmp.sock", work / "console.txt"
        append = "console=ttyS0 panic=-1 loglevel=4" + extra + (" xvt.hold=1" if hold else "")
        argv = [
            shutil.which("qemu-system-x86_64") or "qemu-system-x86_64", *mach, "-accel", "tcg",
            "-smp", "1", "-m", "128M", "-display", "none", "-no-reboot", "-S",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
            "-drive", f"file={disk},format=raw,if=none,id=d0", "-device", f"{blk},drive=d0,id=vblk0",
            "-netdev", "user,id=n0,ipv6=off", "-device", f"{net},netdev=n0,id=vnet0",
            "-msg", "timestamp=on", "-qmp", f"unix:{sock},server=on,wait=off",
            "-serial", f"file:{console}",
        ]  # fmt: skip
        qemu = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_for(lambda: sock.exists() or qemu.poll() is not None, 30, "the QMP socket")
            if qemu.poll() is not None:
                raise RuntimeError(f"QEMU failed: {qemu.stderr.read().decode(errors='replace')}")
            cmd = [sys.executable, "-m", "xvtrace", "capture", "-o", str(bundle), "--qmp", str(sock),
                   "--dump-netdev", "n0", "--cont", "--duration", str(timeout), "--no-progress"]  # fmt: skip
            if hold:
                cmd.append("--dump-memory")
            cap = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if hold:
                _wait_for(lambda: "XVT done" in _read(console) or cap.poll() is not None,
                          timeout, "the guest to finish")  # fmt: skip
                cap.send_signal(signal.SIGTERM)
            out, _ = cap.communicate(timeout=timeout + 60)
            if cap.returncode != 0:
                raise RuntimeError(f"xvtrace capture failed ({cap.returncode}):\n{out}")
        finally:
            if qemu.poll() is None:
                qemu.kill()
            qemu.wait()
            qemu.stderr.close()
        text = _read(console)
        issued = [line.strip() for line in text.splitlines() if line.startswith("XVT ")]
        return GuestRun(bundle, text, issued, argv, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _wait_for(cond, timeout: float, what: str) -> None:
    """Poll a condition of an external process (QEMU, the guest): not a timing assertion."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machine", choices=sorted(MACHINES), default="q35")
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--hold", action="store_true")
    args = ap.parse_args()
    r = run(args.machine, args.output, hold=args.hold, fetch=True)
    print(r.capture_output)
    print("\n".join(r.issued))


if __name__ == "__main__":
    main()
