"""Build and boot a real Xen 4.17 test host under QEMU TCG, from Debian packages only.

    python tests/xen/build_host.py build            # cached in .cache/xenhost (make test-assets)
    python tests/xen/build_host.py run pv OUT_DIR   # boot, run the scenario, bundle in OUT_DIR

The host: Debian's Xen hypervisor (multiboot, gunzipped) with Debian's 6.1 kernel as a PV
dom0 whose root is a small busybox initramfs (the Xen kernel modules, 9p). Everything else
dom0 runs comes from this machine's own root, shared read-only over virtio-9p: xl,
xenstored, xentrace, Python and xvtrace itself, so nothing is copied and xvtrace runs in
dom0 exactly as installed here. A second, writable 9p share brings the capture back.

QEMU: -M q35 -accel tcg -cpu qemu64,+svm,+npt -smp 2 -m 3072 (nested SVM + NPT: Xen runs
HVM guests too). Every wait is bounded; a failure says what (missing package, timeout).

It installs nothing: the Debian packages (APT below and the guest kernel's linux-headers)
come from `make apt`. The two commands download what is not cached yet (Debian's kernel and
hypervisor packages, unpacked, never installed); the tests call `run` with fetch=False, so
there a missing download is an error naming `make test-assets`, which runs `build` first.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from elftools.elf.elffile import ELFFile

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CACHE = ROOT / ".cache" / "xenhost"
GUEST = ROOT / ".cache" / "guest"  # tests/guest/build-guest.sh: Debian's kernel, unpacked
XEN_GZ = Path("/boot/xen-4.17-amd64.gz")
DOM0_MODULES = ("xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-privcmd", "xenfs", "xen-blkback",
                "loop", "virtio_pci", "9pnet_virtio", "9p")  # fmt: skip
# PV (blkfront) and HVM (virtio-blk-pci, PIIX IDE, virtio-mmio) disks: the guest loads what
# it has, and tests/xen/epam's module (built here) registers the EPAM device when asked
GUEST_MODULES = ("xen-blkfront", "virtio_pci", "virtio_blk", "ata_piix", "sd_mod", "virtio_mmio")
EPAM = HERE / "epam"
# VirtIO-SuSE's guest: Linux with grant DMA for virtio, built from Debian's source (Debian's
# own kernels have CONFIG_XEN_VIRTIO off) by tests/xen/grant/build-kernel.sh
GRANT = HERE / "grant"
LINUX_SOURCE = Path("/usr/src/linux-source-6.1.tar.xz")  # Debian's linux-source-6.1
# qemu64 with SVM + NPT, for Xen's HVM guests (`-cpu max` crashes the PV dom0). It lacks
# SSE4/AVX: dom0 runs `python -m xvtrace.capture`, which imports no polars
CPU = "qemu64,+svm,+npt"
# the hypervisor is unpacked, not installed; qemu-system-xen is the HVM guests' device model;
# make and gcc build the EPAM guest module (with linux-headers for the guest's kernel).
# The Makefile's `apt` target installs them all, before pytest starts
APT = (
    "xen-utils-4.17",
    "qemu-system-xen",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "make",
    "gcc",
    # the grant-DMA guest kernel's build (tests/xen/grant/build-kernel.sh)
    "linux-source-6.1",
    "bc",
    "bison",
    "flex",
    "libelf-dev",
    "libssl-dev",
)


SCENARIOS = (
    "pv",
    "hvm-virtio",
    "hvm-ide",
    "hvm-epam",
    "hvm-epam-smp",
    "hvm-suse-grant",
    "hvm-suse-grant-persistent",
    "hvm-epam-pvhvm",
    "hvm-stratos",
)  # dom0-run.sh
# the same scenarios with the guest running workload W2 (replay's validation: tests/xen/guest-init)
W2_SCENARIOS = ("pv-w2", "hvm-virtio-w2", "hvm-epam-w2", "hvm-suse-grant-w2",
                "hvm-suse-grant-persistent-w2", "hvm-epam-pvhvm-w2", "hvm-stratos-w2")  # fmt: skip


class HostError(RuntimeError):
    """The test host cannot be built or did not finish (the message says why)."""


# the hosts running now, so a caller booting several at once can stop them (`stop_all`)
_RUNNING: set[subprocess.Popen] = set()
_STOPPED = threading.Event()


def stop_all() -> None:
    """Kill every test host running now or started from now on (a test session ending)."""
    _STOPPED.set()
    for proc in list(_RUNNING):
        proc.kill()


def _installed(package: str) -> bool:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", package],
                          capture_output=True, text=True)  # fmt: skip
    return proc.returncode == 0 and proc.stdout == "installed"


def check_packages(extra=()) -> None:
    """Every Debian package the host needs is installed (by `make apt`), else HostError."""
    missing = [p for p in (*APT, *extra) if not _installed(p)]
    if missing:
        raise HostError(
            f"missing Debian packages: {' '.join(missing)}; `make apt` installs them "
            f"(or: sudo apt-get install --no-install-recommends {' '.join(missing)})"
        )


def kernel_tree(*, fetch: bool = False) -> tuple[Path, Path]:
    """Debian's kernel image and its unpacked module tree (tests/guest/build-guest.sh)."""
    if not (GUEST / "vmlinuz").exists():
        if not fetch:
            raise HostError(
                f"no Debian kernel in {GUEST}: `make test-assets` (or build_host.py build) fetches it"
            )
        subprocess.run(
            ["sh", str(ROOT / "tests" / "guest" / "build-guest.sh"), str(GUEST)], check=True
        )
    (mods,) = (GUEST / "kpkg" / "root" / "lib" / "modules").iterdir()
    return GUEST / "vmlinuz", mods


def module_files(mods: Path, names) -> list[Path]:
    """The .ko files of `names` and everything they depend on, dependencies first (read
    from each module's .modinfo section: no depmod needed)."""
    index = {p.name[:-3].replace("_", "-"): p for p in mods.rglob("*.ko")}
    order: list[Path] = []

    def add(name: str) -> None:
        path = index.get(name.replace("_", "-"))
        if path is None:
            raise HostError(f"kernel module {name} not in {mods}")
        if path in order:
            return
        with path.open("rb") as fh:
            info = ELFFile(fh).get_section_by_name(".modinfo").data().split(b"\0")
        deps = next((f[8:].decode() for f in info if f.startswith(b"depends=")), "")
        for dep in filter(None, deps.split(",")):
            add(dep)
        order.append(path)

    for n in names:
        add(n)
    return order


def initramfs(out: Path, init: Path, modules: list[Path]) -> Path:
    """A gzipped newc cpio of busybox, the modules (in load order) and `init`, built aside
    and renamed into place whole: a host booting now may be reading the old one (a boot
    that read one being rewritten under it failed: "Initramfs unpacking failed")."""
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=out.name + ".") as tmp:
        root = Path(tmp) / "root"
        for d in ("bin", "lib/modules", "dev", "proc", "sys", "tmp", "host", "new"):
            (root / d).mkdir(parents=True)
        shutil.copy("/bin/busybox", root / "bin" / "busybox")
        for i, m in enumerate(modules):
            shutil.copy(m, root / "lib" / "modules" / f"{i:02d}-{m.name}")
        shutil.copy(init, root / "init")
        (root / "init").chmod(0o755)
        (Path(tmp) / "new").write_bytes(gzip.compress(_cpio(root), compresslevel=1))
        (Path(tmp) / "new").replace(out)
    return out


def _cpio(root: Path) -> bytes:
    names = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    return subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=names,
                          capture_output=True, check=True).stdout  # fmt: skip


def hypervisor_image(*, fetch: bool = False) -> Path:
    """Debian's Xen image: installed, or downloaded and unpacked (never installed here, so
    this machine's boot loader is left alone)."""
    if XEN_GZ.exists():
        return XEN_GZ
    pkg = CACHE / "xenpkg"
    found = list(pkg.glob("root/boot/xen-4.17-amd64.gz"))
    if not found and not fetch:
        raise HostError(
            f"xen-hypervisor-4.17-amd64 is not unpacked in {pkg}: `make test-assets` "
            "(or build_host.py build) downloads it"
        )
    if not found:
        pkg.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(["apt-get", "download", "xen-hypervisor-4.17-amd64"], cwd=pkg, check=True,
                           capture_output=True, timeout=300)  # fmt: skip
        except (OSError, subprocess.SubprocessError) as e:
            raise HostError(
                f"cannot download xen-hypervisor-4.17-amd64 ({e}); apt-get update first?"
            ) from e
        (deb,) = pkg.glob("*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(pkg / "root")], check=True)
        found = list(pkg.glob("root/boot/xen-4.17-amd64.gz"))
    if not found:
        raise HostError(
            f"no boot/xen-4.17-amd64.gz in the xen-hypervisor-4.17-amd64 package ({pkg})"
        )
    return found[0]


def guest_module(kver: str) -> Path:
    """tests/xen/epam/virtio_mmio_dev.ko, built against Debian's headers for the guest's
    kernel (linux-headers-KVER); rebuilt when its source changes."""
    ko = CACHE / "epam" / "virtio_mmio_dev.ko"
    src = [EPAM / "virtio_mmio_dev.c", EPAM / "Kbuild"]
    if ko.exists() and all(f.stat().st_mtime <= ko.stat().st_mtime for f in src):
        return ko
    headers = Path(f"/usr/src/linux-headers-{kver}")
    if not headers.is_dir():
        raise HostError(f"no {headers}: `make apt` installs linux-headers-{kver}")
    work = ko.parent
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for f in src:
        shutil.copy(f, work / f.name)
    try:
        subprocess.run(["make", "-C", str(headers), f"M={work}", "modules"], check=True,
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    except subprocess.CalledProcessError as e:
        raise HostError(f"building the guest module failed: {e.stderr[-800:]}") from None
    return ko


def grant_kernels() -> Path:
    """The grant-DMA guest kernel (bzImage) and the same without grants (bzImage-nogrant),
    built once per configuration: cached under the hash of tests/xen/grant's config and
    script and of the source package's version; their folder."""
    if not LINUX_SOURCE.exists():
        raise HostError(f"no {LINUX_SOURCE}: `make apt` installs linux-source-6.1")
    config, script = GRANT / "guest.config", GRANT / "build-kernel.sh"
    patch = GRANT / "persistent-grants.patch"
    digest = hashlib.sha256()
    for f in (config, script, patch):
        digest.update(f.read_bytes())
    digest.update(f"{LINUX_SOURCE.stat().st_size}:{LINUX_SOURCE.stat().st_mtime_ns}".encode())
    out = CACHE / f"grant-kernel-{digest.hexdigest()[:12]}"
    if not (out / "bzImage-nogrant").exists():
        for old in CACHE.glob("grant-kernel-*"):  # an earlier configuration's
            shutil.rmtree(old, ignore_errors=True)
        print(f"building the grant-DMA guest kernel into {out} (minutes)", file=sys.stderr)
        try:
            subprocess.run(["sh", str(script), str(LINUX_SOURCE), str(config), str(patch), str(out)],
                           check=True, capture_output=True, text=True, timeout=3600)  # fmt: skip
        except subprocess.CalledProcessError as e:
            raise HostError(
                f"building the grant-DMA guest kernel failed: {e.stderr[-1500:]}"
            ) from None
    return out


def build(*, fetch: bool = False) -> dict[str, Path]:
    """The host's parts, cached; `fetch` downloads Debian's kernel and hypervisor packages
    when they are not (the tests do not: `make test-assets` has)."""
    kernel, mods = kernel_tree(fetch=fetch)
    check_packages([f"linux-headers-{mods.name}"])
    CACHE.mkdir(parents=True, exist_ok=True)
    xen = CACHE / "xen-4.17-amd64"
    if not xen.exists():  # QEMU's multiboot loader wants the ELF, not the gzip
        xen.write_bytes(gzip.decompress(hypervisor_image(fetch=fetch).read_bytes()))
    dom0 = initramfs(CACHE / "dom0.cpio.gz", HERE / "dom0-init", module_files(mods, DOM0_MODULES))
    guest = initramfs(
        CACHE / "guest.cpio.gz",
        HERE / "guest-init",
        [*module_files(mods, GUEST_MODULES), guest_module(mods.name)],
    )
    # the grant guest: its own kernel, everything built in, so no modules in its initramfs
    grant_guest = initramfs(CACHE / "guest-grant.cpio.gz", HERE / "guest-init", [])
    kernels = grant_kernels()
    return {"xen": xen, "kernel": kernel, "dom0": dom0, "guest": guest, "grant_guest": grant_guest,
            "grant_kernel": kernels / "bzImage", "nogrant_kernel": kernels / "bzImage-nogrant"}  # fmt: skip


def run(
    scenario: str,
    out: Path,
    *,
    timeout: float = 900,
    fetch: bool = False,
    parts: dict | None = None,
) -> Path:
    """Boot the host, run `scenario` in dom0 (tests/xen/dom0-run.sh), return the bundle.
    `parts`: build()'s, when the caller built them once for several boots at a time."""
    parts = parts or build(fetch=fetch)
    out.mkdir(parents=True, exist_ok=True)
    console = out / "host-console.log"
    # tsc=reliable: under TCG the kernel's watchdog finds the TSC skewed against Xen's clock
    # and switches to that one mid-run, a step of milliseconds in every dom0 timestamp (the
    # device models' logs); dom0 keeps the TSC, as on a host with an invariant TSC
    guest, guest_kernel = parts["guest"], parts["kernel"]  # Debian's
    if scenario.startswith("hvm-suse"):  # our kernel, with grant DMA for virtio
        guest, guest_kernel = parts["grant_guest"], parts["grant_kernel"]
    elif scenario.startswith("hvm-epam-pvhvm"):  # the same kernel without it
        guest, guest_kernel = parts["grant_guest"], parts["nogrant_kernel"]
    dom0_args = (f"console=hvc0 earlyprintk=xen tsc=reliable rdinit=/init xvt_repo={ROOT} "
                 f"xvt_scenario={scenario} xvt_guest={guest} xvt_kernel={guest_kernel}")  # fmt: skip
    cmd = [
        shutil.which("qemu-system-x86_64") or "qemu-system-x86_64",
        "-M", "q35", "-accel", "tcg", "-cpu", CPU, "-smp", "2", "-m", "3072",
        "-kernel", str(parts["xen"]),
        "-append", "console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus=1 noreboot",
        "-initrd", f"{parts['kernel']} {dom0_args},{parts['dom0']}",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on",
        "-virtfs", f"local,path={out},mount_tag=out,security_model=none",
        "-display", "none", "-serial", f"file:{console}", "-no-reboot",
    ]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _RUNNING.add(proc)
    if _STOPPED.is_set():
        proc.kill()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise HostError(
            f"the Xen host did not finish within {timeout:.0f} s; console: {console}"
        ) from None
    finally:
        _RUNNING.discard(proc)
    if proc.returncode:
        raise HostError(f"qemu exited with {proc.returncode}: {err.decode()[-500:]}")
    text = console.read_text(errors="replace") if console.exists() else ""
    if "XVT-HOST done" not in text or not (out / scenario / "manifest.json").exists():
        tail = "\n".join(text.splitlines()[-15:])
        raise HostError(
            f"dom0 did not complete the scenario ({time.monotonic() - t0:.0f} s); console tail:\n{tail}"
        )
    return out / scenario


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build")
    r = sub.add_parser("run")
    r.add_argument("scenario", choices=SCENARIOS + W2_SCENARIOS)
    r.add_argument("out", type=Path)
    r.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    try:
        if args.cmd == "build":
            for k, v in build(fetch=True).items():
                print(f"{k}: {v}")
        else:
            print(run(args.scenario, args.out.resolve(), timeout=args.timeout, fetch=True))
    except HostError as e:
        sys.exit(f"xen test host: {e}")


if __name__ == "__main__":
    main()
