"""Live capture on a test host into a bundle's raw/: xentrace (on a Xen dom0), QEMU trace
events and virtqueue state through each VM's QMP socket, and packets.

Every source is started, polled and stopped by one loop; a source that fails is recorded in
the manifest with its error and the others go on. Nothing here runs a shell: every external
program is started from an argument list.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from xvtrace import __version__
from xvtrace.bundle import RAW, lock, new_manifest, write_manifest
from xvtrace.capture.qmp import QMP, QMPError
from xvtrace.parsers.errors import XvtraceError

META = "meta"  # bundle/meta/: host facts captured alongside (xl info, QMP answers)
TRACE_EVENTS_ALL = Path("/usr/share/qemu/trace-events-all")  # Debian qemu-system-common
DEFAULT_PATTERNS = (
    "virtio_*",
    "virtqueue_*",
    "handle_ioreq*",
    "cpu_ioreq_*",
    "xen_map_cache*",
    "xen_remap_bucket",
)


class CaptureError(XvtraceError):
    """Capture cannot start (nothing to capture, bundle exists, bad option)."""


def is_dom0() -> bool:
    try:
        return "control_d" in Path("/proc/xen/capabilities").read_text()
    except OSError:
        return False


def clock_reading(label: str) -> dict:
    """The host clocks read back to back, for aligning sources later."""
    return {
        "label": label,
        "realtime_ns": time.clock_gettime_ns(time.CLOCK_REALTIME),
        "monotonic_ns": time.clock_gettime_ns(time.CLOCK_MONOTONIC),
        "realtime_after_ns": time.clock_gettime_ns(time.CLOCK_REALTIME),
    }


# --- sources --------------------------------------------------------------------------


@dataclass
class Source:
    """One thing being captured; `entry` ends up in manifest.capture.sources."""

    kind: str
    entry: dict = field(default_factory=dict)
    finished: bool = False

    def start(self) -> None: ...

    def poll(self) -> None: ...

    def stop(self) -> None: ...

    def fail(self, error: str) -> None:
        self.entry["ok"] = False
        self.entry["error"] = error
        self.finished = True


DOMAIN_POLL_S = 3.0  # how often the capture looks for new domains to record


class XentraceSource(Source):
    """`xentrace -D -e MASK FILE` in dom0, plus `xl info` / `xl list` for the host facts."""

    def __init__(self, bundle: Path, mask: str):
        super().__init__("xentrace", {"kind": "xentrace", "file": f"{RAW}/xentrace.bin"})
        self.bundle, self.mask = bundle, mask
        self.proc: subprocess.Popen | None = None
        self.facts: dict = {}
        self.domains: dict = {}  # domid -> `xl list -l` entry
        self.next_domains = 0.0

    def start(self) -> None:
        exe = shutil.which("xentrace")
        if not exe:
            return self.fail("xentrace not found (Debian: apt-get install xen-utils-4.17)")
        for name in ("info", "list", "dmesg"):
            try:
                out = subprocess.run(
                    ["xl", name], capture_output=True, text=True, timeout=30, check=True
                ).stdout
            except (OSError, subprocess.SubprocessError) as e:
                self.entry.setdefault("warnings", []).append(f"xl {name}: {e}")
                continue
            (self.bundle / META / f"xl-{name}.txt").write_text(out)
            if name == "info":
                self.facts.update(parse_xl_info(out))
            elif name == "dmesg":  # the HVM exit-reason table: Xen says which one it enabled
                vendor = hvm_vendor_from_dmesg(out)
                if vendor:
                    self.facts.update(hvm_vendor=vendor, hvm_vendor_source="xl dmesg")
        self.err = (self.bundle / META / "xentrace.stderr").open("wb")
        self.proc = subprocess.Popen(
            # -S: 256 pages of trace buffer per pCPU (the default loses records under I/O)
            [exe, "-D", "-S", "256", "-e", self.mask, str(self.bundle / self.entry["file"])],
            stdout=subprocess.DEVNULL,
            stderr=self.err,
        )
        self.entry.update(ok=True, mask=self.mask, argv=self.proc.args)
        self._wait_for_mask()
        self._record_domains()

    def _wait_for_mask(self, timeout: float = 30.0) -> None:
        """Return once xentrace says it set the event mask, so records from here on are
        in the trace (bounded: a slow dom0 takes seconds to start it; a silent one warns)."""
        err = self.bundle / META / "xentrace.stderr"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if b"evtmask" in err.read_bytes():
                return
            time.sleep(0.05)
        if self.proc.poll() is None:
            self.entry.setdefault("warnings", []).append(
                f"xentrace did not confirm its event mask within {timeout:.0f} s"
            )

    def poll(self) -> None:
        if self.proc and self.proc.poll() is not None and not self.finished:
            self.fail(f"xentrace exited early with status {self.proc.returncode}")
        if self.proc and time.monotonic() >= self.next_domains:
            self._record_domains()

    def _record_domains(self) -> None:
        """Each domain's configuration (`xl list -l`) as it first appears, into
        meta/domains.json: guests created during the capture are recorded too. Every few
        seconds only: each `xl` call costs dom0 CPU the traced run shares."""
        self.next_domains = time.monotonic() + DOMAIN_POLL_S
        try:
            out = subprocess.run(["xl", "list", "-l"], capture_output=True, text=True, timeout=30,
                                 check=True).stdout  # fmt: skip
            domains = json.loads(out or "[]")
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            self.entry.setdefault("warnings", []).append(f"xl list -l: {e}")
            self.next_domains = float("inf")  # not again: it will not get better
            return
        new = [d for d in domains if isinstance(d, dict) and d.get("domid") not in self.domains]
        for d in new:
            self.domains[d.get("domid")] = d
        if new:
            path = self.bundle / META / "domains.json"
            path.write_text(json.dumps(list(self.domains.values()), indent=1))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # xentrace flushes its buffers on SIGINT
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.entry["warnings"] = [*self.entry.get("warnings", []), "killed after 30 s"]
        if self.proc:
            self.err.close()


def hvm_vendor_from_dmesg(text: str) -> str | None:
    """ "HVM: SVM enabled" (AMD) or "HVM: VMX enabled" (Intel) from Xen's boot log."""
    for vendor in ("svm", "vmx"):
        if f"HVM: {vendor.upper()} enabled" in text:
            return vendor
    return None


def parse_xl_info(text: str) -> dict:
    facts = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        facts[key.strip()] = value.strip()
    out = {}
    if facts.get("cpu_mhz"):
        with contextlib.suppress(ValueError):
            out["cpu_khz"] = round(float(facts["cpu_mhz"]) * 1000)
    if facts.get("xen_major"):
        out["xen_version"] = (
            f"{facts['xen_major']}.{facts.get('xen_minor', '?')}{facts.get('xen_extra', '')}"
        )
    for key in ("nr_cpus", "xen_caps", "xen_scheduler"):
        if key in facts:
            out[key] = facts[key]
    return out


class QemuSource(Source):
    """One VM's QMP socket: trace events on into raw/qemu-N.log, virtqueue state polled
    into raw/virtqueues-N.jsonl, and optionally packet dumps of its netdevs.

    Only x-query-virtio-queue-status is polled. x-query-virtio-queue-element is not: on
    QEMU 7.2 asking for an element whose chain the guest is rewriting ends in virtio_error
    ("Desc next is 65535"), which marks the device broken and hangs the guest's I/O (seen
    here on a live virtio-blk-pci guest)."""

    def __init__(self, bundle: Path, index: int, socket: Path, patterns, netdevs, resume,
                 dump_memory=False):  # fmt: skip
        name = f"qemu-{index}"
        super().__init__(
            "qemu",
            {
                "kind": "qemu",
                "qmp": str(socket),
                "trace_log": f"{RAW}/{name}.log",
                "virtqueues": f"{RAW}/virtqueues-{index}.jsonl",
            },
        )
        self.bundle, self.index, self.socket = bundle, index, socket
        self.patterns, self.netdevs, self.resume = patterns, netdevs, resume
        self.dump_memory = dump_memory
        self.qmp: QMP | None = None
        self.queues: list[tuple[str, int]] = []
        self.jsonl = None
        self.polls = 0

    def start(self) -> None:
        try:
            self.qmp = QMP(self.socket)
            self.entry["qemu_version"] = self.qmp.qemu_version
            status = self.qmp.execute("query-status")
            devices = self._devices()
            log = self.bundle / self.entry["trace_log"]
            log.touch()
            self.qmp.hmp(f"logfile {log}")
            enabled = []
            for pat in self.patterns:
                try:
                    self.qmp.execute("trace-event-set-state", name=pat, enable=True)
                    enabled.append(pat)
                except QMPError as e:
                    self.entry.setdefault("warnings", []).append(str(e))
            self.entry["trace_patterns"] = enabled
            self.entry["devices"] = devices
            dumps = []
            for nd in self.netdevs:
                f = f"{RAW}/{self.index}-{nd}.pcap"
                try:
                    self.qmp.execute(
                        "object-add",
                        **{"qom-type": "filter-dump", "id": f"xvt-dump-{nd}", "netdev": nd,
                           "file": str(self.bundle / f)},
                    )  # fmt: skip
                    dumps.append(f)
                except QMPError as e:
                    self.entry.setdefault("warnings", []).append(str(e))
            self.entry["pcaps"] = dumps
            self.jsonl = (self.bundle / self.entry["virtqueues"]).open("w")
            self.entry["ok"] = True
            self.entry["status_at_start"] = status.get("status")
            if self.resume and not status.get("running"):
                self.qmp.execute("cont")
                self.entry["resumed"] = True
        except (QMPError, OSError) as e:
            self.fail(str(e))

    def _devices(self) -> list[dict]:
        assert self.qmp is not None
        try:
            devices = self.qmp.execute("x-query-virtio") or []
        except QMPError as e:  # older QEMU: no virtqueue introspection
            self.entry.setdefault("warnings", []).append(str(e))
            return []
        for d in devices:
            try:
                st = self.qmp.execute("x-query-virtio-status", path=d["path"])
                d["num_vqs"] = st.get("num-vqs", 0)
                d["device_id"] = st.get("device-id")
            except QMPError:
                d["num_vqs"] = 0
            self.queues.extend((d["path"], q) for q in range(d["num_vqs"]))
        return devices

    def poll(self) -> None:
        if self.finished or self.qmp is None:
            return
        try:
            now = time.clock_gettime_ns(time.CLOCK_REALTIME)
            for path, q in self.queues:
                st = self.qmp.execute("x-query-virtio-queue-status", path=path, queue=q)
                rec = {"xvtrace": "qmp-virtqueue-status", "t_ns": now, "path": path, "queue": q,
                       "status": st}  # fmt: skip
                self.jsonl.write(json.dumps(rec) + "\n")
            self.polls += 1
        except QMPError:
            # The VM has gone (a guest powering off ends QEMU): its files are complete.
            self.finished = True
            self.entry["ended"] = "VM exited"

    def stop(self) -> None:
        self.entry["polls"] = self.polls
        if self.jsonl:
            self.jsonl.close()
        if self.qmp is None:
            return
        if not self.finished:
            try:
                for pat in self.entry.get("trace_patterns", []):
                    self.qmp.execute("trace-event-set-state", name=pat, enable=False)
                for f in self.entry.get("pcaps", []):
                    nd = f.split("-", 1)[1].removesuffix(".pcap")
                    self.qmp.execute("object-del", id=f"xvt-dump-{nd}")
                self.qmp.hmp("logfile /dev/null")  # closes (flushes) the trace log
                if self.dump_memory:
                    # Guest memory as an ELF core: the rings as the guest left them.
                    f = f"{RAW}/memory-{self.index}.elf"
                    self.qmp.execute("stop")
                    self.qmp.execute(
                        "dump-guest-memory", paging=False, protocol=f"file:{self.bundle / f}"
                    )
                    self.entry["memory_dump"] = f
                    self.qmp.execute("cont")
            except QMPError as e:
                self.entry.setdefault("warnings", []).append(f"at stop: {e}")
        self.qmp.close()


class IfaceSource(Source):
    """Packets of a host interface into raw/IFACE.pcap (scapy; needs CAP_NET_RAW)."""

    def __init__(self, bundle: Path, iface: str):
        super().__init__("pcap", {"kind": "iface", "iface": iface, "file": f"{RAW}/{iface}.pcap"})
        self.bundle, self.iface = bundle, iface
        self.sniffer = None
        self.writer = None

    def start(self) -> None:
        try:
            from scapy.sendrecv import AsyncSniffer
            from scapy.utils import PcapWriter

            self.writer = PcapWriter(str(self.bundle / self.entry["file"]), sync=True)
            self.sniffer = AsyncSniffer(iface=self.iface, prn=self.writer.write, store=False)
            self.sniffer.start()
            self.entry["ok"] = True
        except (OSError, ImportError, ValueError) as e:
            self.fail(f"cannot sniff {self.iface}: {e}")

    def stop(self) -> None:
        if self.sniffer is not None:
            try:
                self.sniffer.stop()
            except Exception as e:  # scapy raises bare Exceptions from its thread
                self.entry.setdefault("warnings", []).append(str(e))
        if self.writer is not None:
            self.writer.close()


class BlockTraceSource(Source):
    """dom0's block layer (block_rq_insert / issue / complete) through tracefs into
    raw/dom0-trace.txt: the per-request view of backends that log nothing themselves
    (blkback, vhost-user, Argo), with the entries of blkback's event-channel interrupt (a
    PV guest's kicks as dom0 takes them). A private trace instance keeps the global buffer
    alone; its clock is x86-tsc where the kernel has it (the TSC xentrace stamps), else
    mono."""

    EVENTS = ("block_rq_insert", "block_rq_issue", "block_rq_complete")
    # (subsystem, event, filter): a backend's interrupt by the name its driver binds it with
    # (xen-blkback: bind_interdomain_evtchn_to_irqhandler_lateeoi(..., "blkif-backend", ...))
    IRQS = (("irq", "irq_handler_entry", 'name == "blkif-backend"'),)
    # the backend's answer: a dynamic probe on the kernel function a PV backend calls to send
    # the guest its event (drivers/xen/events/events_base.c notify_remote_via_irq, exported,
    # so never inlined), with its IRQ (the one its handler runs on)
    KPROBE = ("xvtrace", "notify_remote_via_irq",
              ("notify_remote_via_irq irq=$arg1:s32", "notify_remote_via_irq irq=%di:s32"))  # fmt: skip
    FILE = "dom0-trace.txt"

    def __init__(self, bundle: Path, tracefs: Path, buffer_kb: int = 16384):
        super().__init__("ftrace", {"kind": "ftrace", "file": f"{RAW}/{self.FILE}"})
        self.bundle, self.tracefs, self.buffer_kb = bundle, tracefs, buffer_kb
        self.inst = tracefs / "instances" / "xvtrace"
        self.proc: subprocess.Popen | None = None
        self.kprobe = False  # ours to remove at the end

    def start(self) -> None:
        try:
            self.inst.mkdir(exist_ok=True)  # tracefs creates the instance's files
            clocks = (
                (self.inst / "trace_clock").read_text().replace("[", " ").replace("]", " ").split()
            )
            clock = "x86-tsc" if "x86-tsc" in clocks else "mono"
            (self.inst / "trace_clock").write_text(clock)
            (self.inst / "buffer_size_kb").write_text(str(self.buffer_kb))
            for ev in self.EVENTS:
                (self.inst / "events" / "block" / ev / "enable").write_text("1")
        except OSError as e:
            return self.fail(f"tracefs at {self.tracefs}: {e} (needs root and tracefs mounted)")
        events = list(self.EVENTS)
        for system, ev, condition in self.IRQS:  # optional: the block events are the source
            d = self.inst / "events" / system / ev
            try:
                (d / "filter").write_text(condition)
                (d / "enable").write_text("1")
                events.append(f"{ev} if {condition}")
            except OSError as e:
                self.entry.setdefault("warnings", []).append(f"{system}/{ev}: {e}")
        group, name, probes = self.KPROBE
        failed = []
        for probe in probes:  # the portable argument syntax first ($argN: Linux 4.20)
            try:  # the probe is the kernel's (tracefs root), its event enabled in our instance
                _append(self.tracefs / "kprobe_events", f"p:{group}/{name} {probe}\n")
                self.kprobe = True
                (self.inst / "events" / group / name / "enable").write_text("1")
                events.append(f"{name} (kprobe: {probe})")
                break
            except OSError as e:  # the kernel says why in its error log
                log = ""
                with contextlib.suppress(OSError):
                    log = (self.tracefs / "error_log").read_text().strip().splitlines()[-2:]
                failed.append(f"{probe!r}: {e} {' '.join(log)}".strip())
        else:
            self.entry.setdefault("warnings", []).append(f"kprobe {name}: {'; '.join(failed)}")
        try:
            (self.inst / "tracing_on").write_text("1")
        except OSError as e:
            return self.fail(f"tracefs at {self.tracefs}: {e} (needs root and tracefs mounted)")
        self.out = (self.bundle / self.entry["file"]).open("wb")
        self.proc = subprocess.Popen(["cat", str(self.inst / "trace_pipe")], stdout=self.out,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
        self.entry.update(ok=True, clock=clock, events=events, instance=str(self.inst))
        if clock != "x86-tsc":
            self.entry.setdefault("warnings", []).append(
                "no x86-tsc trace clock: dom0's block events keep their own clock (mono)"
            )

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            (self.inst / "tracing_on").write_text("0")
        time.sleep(0.2)  # let trace_pipe hand over what the buffer still holds
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.out.close()
        with contextlib.suppress(OSError):
            for ev in self.EVENTS:
                (self.inst / "events" / "block" / ev / "enable").write_text("0")
            for system, ev, _ in self.IRQS:
                (self.inst / "events" / system / ev / "enable").write_text("0")
                (self.inst / "events" / system / ev / "filter").write_text("0")
        with contextlib.suppress(OSError):
            if self.kprobe:
                group, name, _ = self.KPROBE
                (self.inst / "events" / group / name / "enable").write_text("0")
                _append(self.tracefs / "kprobe_events", f"-:{group}/{name}\n")
        with contextlib.suppress(OSError):
            self.inst.rmdir()


def _append(path: Path, text: str) -> None:
    """One unbuffered appending write: tracefs' definition files take a line per write and
    refuse the seek to their end that Python's append mode makes (EINVAL)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


class FileSource(Source):
    """A log another program writes (a device model libxl started with `-D FILE -trace ...`
    in device_model_args): copied into raw/ when the capture stops."""

    def __init__(self, bundle: Path, path: Path):
        super().__init__("file", {"kind": "file", "path": str(path), "file": f"{RAW}/{path.name}"})
        self.bundle, self.path = bundle, path

    def start(self) -> None:
        self.entry["ok"] = True
        self.finished = True  # nothing to watch: the copy happens at the end

    def stop(self) -> None:
        if not self.path.is_file():
            self.entry.update(ok=False, error=f"{self.path}: no such file when the capture stopped")
            return
        shutil.copyfile(self.path, self.bundle / self.entry["file"])


def find_tracefs() -> Path | None:
    for p in (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing")):
        if (p / "instances").is_dir():
            return p
    return None


# --- the session ----------------------------------------------------------------------


@dataclass
class CaptureOptions:
    out: Path
    duration: float | None = None
    qmp: tuple[Path, ...] = ()
    ifaces: tuple[str, ...] = ()
    netdevs: tuple[str, ...] = ()
    xentrace: bool | None = None  # None: when running in dom0
    xentrace_mask: str = "all"
    block_trace: bool | None = None  # dom0's block layer via tracefs; None: with xentrace
    tracefs: Path | None = None  # None: /sys/kernel/tracing (or debug/tracing)
    logs: tuple[Path, ...] = ()  # trace logs other programs write, copied in at the end
    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    resume: bool = False
    dump_memory: bool = False
    transport: str | None = None  # what the guest's device uses, if known (replay/calibrate)
    workload: dict = field(default_factory=dict)  # name, numjobs, iodepth: what the user says
    interval: float = 0.05  # main loop tick (stop conditions)
    poll_interval: float = 0.5  # virtqueue state polls: QMP commands take QEMU's main loop


def capture(
    opts: CaptureOptions,
    status: Callable[[str], None] | None = None,
    stop_flag: Callable[[], bool] = lambda: False,
    recording: Callable[[list[str]], None] | None = None,
) -> dict:
    """Run a capture until the duration passes, every traced VM exits, or `stop_flag()`
    (set by SIGINT/SIGTERM in the CLI); return the manifest written to the bundle.
    `recording(kinds)` is called once every source is recording (what a script waits for
    before it starts the workload). The bundle is held for writing meanwhile."""
    if lock.occupied(opts.out):
        raise CaptureError(f"{opts.out}: exists and is not empty; choose a new bundle directory")
    with lock.writing(opts.out):
        if lock.occupied(opts.out):  # another command wrote there since
            raise CaptureError(
                f"{opts.out}: exists and is not empty; choose a new bundle directory"
            )
        return _capture(opts, status, stop_flag, recording)


def _capture(
    opts: CaptureOptions,
    status: Callable[[str], None] | None,
    stop_flag: Callable[[], bool],
    recording: Callable[[list[str]], None] | None,
) -> dict:
    out = opts.out
    use_xentrace = is_dom0() if opts.xentrace is None else opts.xentrace
    use_blocks = use_xentrace if opts.block_trace is None else opts.block_trace
    if not (use_xentrace or use_blocks or opts.qmp or opts.ifaces or opts.logs):
        raise CaptureError(
            "nothing to capture: not a Xen dom0 (no xentrace), and no --qmp or --iface given"
        )
    (out / RAW).mkdir(parents=True, exist_ok=True)
    (out / META).mkdir(exist_ok=True)
    sources: list[Source] = []
    if use_xentrace:
        sources.append(XentraceSource(out, opts.xentrace_mask))
    if use_blocks:
        tracefs = opts.tracefs or find_tracefs()
        if tracefs is None:
            raise CaptureError(
                "no tracefs (mount -t tracefs nodev /sys/kernel/tracing), or --no-block-trace"
            )
        sources.append(BlockTraceSource(out, tracefs))
    sources += [
        QemuSource(out, i, Path(s), opts.patterns, opts.netdevs, opts.resume, opts.dump_memory)
        for i, s in enumerate(opts.qmp)
    ]
    sources += [IfaceSource(out, i) for i in opts.ifaces]
    sources += [FileSource(out, Path(p)) for p in opts.logs]

    manifest = new_manifest()
    manifest["host"].update(
        hostname=platform.node(), kernel=platform.release(), machine=platform.machine()
    )
    clocks = [clock_reading("start")]
    started = datetime.now(UTC)
    t0 = time.monotonic()
    for s in sources:
        s.start()
    if recording:
        recording([s.entry["kind"] for s in sources if s.entry.get("ok")])
    reason = "duration"
    next_poll = 0.0
    try:
        while True:
            elapsed = time.monotonic() - t0
            if elapsed >= next_poll:
                next_poll = elapsed + opts.poll_interval
                for s in sources:
                    s.poll()
            if status:
                status(_status_line(elapsed, out))
            if stop_flag():
                reason = "signal"
                break
            if opts.duration is not None and elapsed >= opts.duration:
                break
            qemus = [s for s in sources if isinstance(s, QemuSource)]
            if qemus and all(s.finished for s in qemus):
                reason = "every traced VM exited"
                break
            if all(s.finished for s in sources if not isinstance(s, FileSource)):
                reason = "every source stopped"
                break
            time.sleep(opts.interval)
    finally:
        for s in sources:
            s.stop()
        clocks.append(clock_reading("stop"))
    _keep_definitions(out, opts.patterns if opts.qmp else ())
    for s in sources:
        if isinstance(s, XentraceSource) and s.facts:
            manifest["host"].update(s.facts)
            if "cpu_khz" in s.facts:
                manifest["host"]["cpu_khz_source"] = "xl info cpu_mhz"
    if opts.transport:
        manifest["transport"] = opts.transport
    if opts.workload:
        manifest["workload"] = dict(opts.workload)
    manifest["capture"] = {
        "tool": f"xvtrace {__version__}",
        "argv": sys.argv,
        "started_utc": started.isoformat(),
        "stopped_utc": datetime.now(UTC).isoformat(),
        "stop_reason": reason,
        "clock_readings": clocks,
        "sources": [s.entry for s in sources],
        "files": {
            str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()
        },
    }
    write_manifest(out, manifest)
    return manifest


def _keep_definitions(out: Path, patterns) -> None:
    """Copy the definitions of the traced QEMU events beside the capture, so it decodes
    the same way anywhere (the layout of a trace line depends on them)."""
    if not patterns:
        return
    if TRACE_EVENTS_ALL.is_file():
        src, text = TRACE_EVENTS_ALL, TRACE_EVENTS_ALL.read_text(errors="replace")
    else:
        from importlib import resources

        from xvtrace.parsers.trace_events import DEFAULT_FILE

        src = Path(DEFAULT_FILE)
        text = resources.files("xvtrace.parsers").joinpath("data", DEFAULT_FILE).read_text()
    keep = [f"# QEMU trace-event definitions of the traced events, from {src}"]
    for line in text.splitlines():
        name = line.split("(", 1)[0].split()[-1] if "(" in line and not line.startswith("#") else ""
        if name and any(fnmatch.fnmatchcase(name, p) for p in patterns):
            keep.append(line)
    (out / RAW / "trace-events").write_text("\n".join(keep) + "\n")


def _status_line(elapsed: float, out: Path) -> str:
    files = [p for p in (out / RAW).iterdir() if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    return f"capturing {elapsed:6.1f} s: {len(files)} files, {total / 1e6:.1f} MB in {out / RAW}"


def default_status(enabled: bool) -> Callable[[str], None] | None:
    if not enabled:
        return None
    last = [0.0]

    def show(line: str) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5:
            last[0] = now
            print(f"\r{line}", end="", file=sys.stderr, flush=True)

    return show


__all__ = ["CaptureError", "CaptureOptions", "capture", "default_status", "is_dom0"]
