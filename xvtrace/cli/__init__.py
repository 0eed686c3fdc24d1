"""The `xvtrace` command: a thin layer over the library (xvtrace.api and friends)."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from pathlib import Path

import click

from xvtrace import __version__, api
from xvtrace.bundle import atomic_path
from xvtrace.emulate.workload import PRESETS
from xvtrace.parsers.errors import is_users
from xvtrace.replay.transports import NAMES as TRANSPORT_NAMES


class UserError(click.ClickException):
    """A clear one-line error, exit status 2 (bad input, as opposed to 1 = regression)."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"xvtrace: error: {self.format_message()}", err=True)


class InternalError(click.ClickException):
    """An unexpected failure (a bug), reported in one line with exit status 3."""

    exit_code = 3

    def show(self, file=None) -> None:
        click.echo(f"xvtrace: internal error: {self.format_message()}", err=True)


class _Seconds(click.ParamType):
    """A time window's bound: finite seconds within a trace's int64 ns (FloatRange lets NaN
    through, and 1e300 overflowed the conversion)."""

    name = "seconds"

    def convert(self, value, param, ctx):
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not (0 <= v <= 1e9):  # false for NaN too
            self.fail(f"{value!r} is not between 0 and 1e9 seconds", param, ctx)
        return v


SECONDS = _Seconds()


class Terminated(Exception):
    """SIGTERM, raised in the main thread: the stack unwinds, so every atomic write removes
    its temporary file (killed outright, `emulate` left its .part files behind)."""


def _on_sigterm(signum, frame):
    raise Terminated


DAMAGED = (
    "a bundle's table cannot be read, damaged after it was written ({e});"
    " `xvtrace ingest` makes it again from the raw capture"
)


def _damaged_table(e: BaseException) -> bool:
    """polars failed inside a parquet file it was reading: bad input, not a bug (what it
    raises for a damaged page, footer or thrift header names the format)."""
    text = str(e).lower()
    return type(e).__name__ in ("ComputeError", "PanicException") and (
        "parquet" in text or "thrift" in text
    )


def _bug(e: BaseException) -> Exception:
    """A bug, for the user in one line (exit 3); the traceback with XVTRACE_DEBUG=1."""
    if os.environ.get("XVTRACE_DEBUG"):
        raise e
    return InternalError(
        f"{type(e).__name__}: {e} (a bug in xvtrace; rerun with XVTRACE_DEBUG=1 for the traceback)"
    )


def _guard(fn):
    """Turn the library's input errors into one-line messages instead of tracebacks."""

    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:  # Ctrl-C: 130 as shells report it (1 would read "regression")
            click.echo("xvtrace: interrupted; no partial output kept", err=True)
            sys.exit(130)
        except Terminated:
            click.echo("xvtrace: terminated (SIGTERM); no partial output kept", err=True)
            sys.exit(143)
        except BrokenPipeError:  # `xvtrace dump ... | head`: the reader left, not an error
            # Python flushes stdout again at exit; point it at /dev/null so that is quiet.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return None
        except click.ClickException:
            raise
        except BaseException as e:  # the user's to fix, or a bug (the traceback on request)
            # a compiled library's panic (pyo3's PanicException) is a BaseException too
            if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
                raise  # SystemExit and the like
            if is_users(e):
                raise UserError(str(e)) from e
            if _damaged_table(e):
                raise UserError(DAMAGED.format(e=e)) from e
            raise _bug(e) from e

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _progress_bar(enabled: bool):
    """A tqdm counter of each stage's progress on stderr, only when stderr is a terminal (or
    forced)."""
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=0, unit="B", unit_scale=True, desc="decode", file=sys.stderr, leave=False)

    def update(stage: str, done: int, total: int) -> None:
        if bar.desc != stage:  # "decode" counts bytes; "merge" (several sources) rows
            bar.set_description_str(stage, refresh=False)
            bar.unit = "B" if stage == "decode" else " rows"
            bar.reset(total)
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


cpu_khz_option = click.option(
    "--cpu-khz",
    type=click.IntRange(min=1),
    help="TSC frequency of the traced host in kHz (xl info: cpu_mhz x 1000). "
    "Default: the bundle manifest, a metadata.json beside the capture, then this machine.",
)
vendor_option = click.option(
    "--hvm-vendor",
    type=click.Choice(["vmx", "svm"]),
    help="Exit-reason table: vmx (Intel) or svm (AMD, like xenalyze --svm-mode). "
    "Default: the manifest, else inferred from the exit codes.",
)


def elf_options(fn):
    """--vmlinux (guest kernels) and --elf (backend binaries): name code addresses."""
    fn = click.option(
        "--elf", "elf_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
        help="A backend or device-model ELF binary whose symbols name backend PCs (repeatable).",
    )(fn)  # fmt: skip
    return click.option(
        "--vmlinux", "vmlinux_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
        help="The guest kernel's vmlinux (with symbols, ideally DWARF) to name guest RIPs "
        "in VM-exit records (repeatable).",
    )(fn)  # fmt: skip


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xvtrace")
def cli() -> None:
    """Capture (live or emulated), decode, summarize and reconstruct virtio requests on Xen.

    Get a bundle with `xvtrace capture --qmp SOCK -o run/` on a test host, `xvtrace emulate
    -t all -o run/` without one, or `xvtrace ingest trace.bin -o run/` from files you have;
    then `xvtrace summary run/`, `xvtrace timeline run/` or `xvtrace dump run/ -e 'hvm.*'`.
    Every command that reads a bundle also accepts a raw capture file directly.
    """


@cli.command("ingest")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Bundle directory to write (default: ./<name>.xvt, or SOURCE itself when it is a bundle).",
)
@cpu_khz_option
@vendor_option
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar on stderr (default: when stderr is a terminal).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON instead of text.")
@click.option("--summary/--no-summary", "summarize", default=True, show_default=True,
              help="Fold the summary from the rows as they are written and store it (the"
                   " first `xvtrace summary` is then served; it adds a third to a xentrace"
                   " file's ingest on 2 cores).")  # fmt: skip
@click.option("--unpack-limit", type=click.FloatRange(min=0, min_open=True), metavar="GIB",
              help="Most a .gz/.xz capture may unpack to, in GiB (default: 100x the archive,"
                   " at least 1 GiB).")  # fmt: skip
@_guard
def ingest_cmd(source, output, cpu_khz, hvm_vendor, progress, as_json, summarize, unpack_limit):
    """Decode a raw capture (or a bundle's raw/) into a bundle with events.parquet.

    SOURCE is a xentrace binary file or a bundle directory. Files are recognised by content.
    Prints what was decoded, skipped and lost per source file.
    """
    show = sys.stderr.isatty() if progress is None else progress
    update, close = _progress_bar(show)
    try:
        if unpack_limit is not None and not math.isfinite(unpack_limit):
            raise click.BadParameter("a finite number of GiB", param_hint="--unpack-limit")
        limit = None if unpack_limit is None else int(unpack_limit * (1 << 30))
        result = api.ingest(source, output, cpu_khz=cpu_khz, hvm_vendor=hvm_vendor,
                            progress=update, unpack_limit=limit, summarize=summarize)  # fmt: skip
    finally:
        close()
    _show(result, as_json)


@cli.command("summary")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@cpu_khz_option
@vendor_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar on stderr while a raw capture decodes (default: when stderr is a terminal).",
)
@elf_options
@_guard
def summary_cmd(source, cpu_khz, hvm_vendor, as_json, progress, elf_files, vmlinux_files):
    """Per-domain and per-vCPU summary, like `xenalyze --summary`.

    Runstate times, HVM exits by reason with time spent and percentiles, hypercalls by
    name, IO port and MMIO accesses by address, interrupts, grant operations, log volume
    per pCPU and lost records. SOURCE is a bundle (its summary is stored in it) or a raw
    capture (a xentrace file is summarized as it decodes, with no table written).
    """
    update, close = _progress_bar(sys.stderr.isatty() if progress is None else progress)
    try:
        summary = api.summarize(source, cpu_khz=cpu_khz, hvm_vendor=hvm_vendor,
                                elf_files=(*vmlinux_files, *elf_files), progress=update)  # fmt: skip
    finally:
        close()
    _show(summary, as_json)


def _parse_code(ctx, param, values):
    try:
        return tuple(int(v, 0) for v in values)
    except ValueError as e:
        raise click.BadParameter(f"not a number: {e}") from e


@cli.command("dump")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option(
    "-e",
    "--event",
    "events",
    multiple=True,
    help="Event name or glob, e.g. 'hvm.vmexit' or 'sched.*' (repeatable).",
)
@click.option(
    "--code",
    "codes",
    multiple=True,
    callback=_parse_code,
    help="Raw event id, e.g. 0x00081102 (repeatable).",
)
@click.option(
    "--dom",
    "doms",
    multiple=True,
    type=int,
    help="Only records attributed to this domain (repeatable).",
)
@click.option(
    "--cpu", "cpus", multiple=True, type=int, help="Only records from this pCPU (repeatable)."
)
@click.option(
    "--from", "start", type=SECONDS, help="Start of the time window, seconds from the trace origin."
)
@click.option("--to", "end", type=SECONDS, help="End of the time window (exclusive), seconds.")
@click.option(
    "-l",
    "--limit",
    type=click.IntRange(min=0),
    help="Stop after N lines (-n is the request count in emulate).",
)
@cpu_khz_option
@vendor_option
@elf_options
@_guard
def dump_cmd(
    source,
    events,
    codes,
    doms,
    cpus,
    start,
    end,
    limit,
    cpu_khz,
    hvm_vendor,
    elf_files,
    vmlinux_files,
):
    """One line per record, with named fields (the replacement for xentrace_format).

    Lines are `seconds.ns cpuN dDvV event field=value ...` in time order; d?v? means no
    vCPU was known to be running on that pCPU yet.
    """
    if start is not None and end is not None and end <= start:
        raise click.BadParameter(f"--to {end:g} is not after --from {start:g}: an empty window",
                                 param_hint="--to")  # fmt: skip
    chunks = api.dump_chunks(
        source,
        events=events,
        codes=codes,
        doms=doms,
        cpus=cpus,
        start_ns=None if start is None else round(start * 1e9),
        end_ns=None if end is None else round(end * 1e9),
        limit=limit,
        cpu_khz=cpu_khz,
        hvm_vendor=hvm_vendor,
        elf_files=(*vmlinux_files, *elf_files),
    )
    sys.stdout.flush()
    out = sys.stdout.buffer  # bytes straight through: no per-line Python strings
    wrote = False
    for chunk in chunks:
        out.write(chunk)
        out.flush()  # a reader such as `head` sees each batch as soon as it is rendered
        wrote = wrote or len(chunk) > 0
    if not wrote and limit != 0:
        chosen = [f"{flag} {v}" for flag, vs in (("-e", events), ("--code", [hex(c) for c in codes]),
                  ("--dom", doms), ("--cpu", cpus)) for v in vs]  # fmt: skip
        chosen += [
            f"{flag} {v:g}" for flag, v in (("--from", start), ("--to", end)) if v is not None
        ]
        what = "no record matches " + " ".join(chosen) if chosen else "no records"
        click.echo(f"xvtrace: {source}: {what}", err=True)


@cli.command("timeline")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Per-queue table as JSON on stdout.")
@cpu_khz_option
@vendor_option
@_guard
def timeline_cmd(source, as_json, cpu_khz, hvm_vendor):
    """Reconstruct every request into BUNDLE/requests.parquet and print where time goes.

    This stage follows requests through the device model's trace (QEMU events: kick, pop,
    block handling, fill, interrupt), matching reused element pointers as QEMU reports them.
    Requests missing events are kept and flagged; the manifest counts them.
    """
    with api.reading(source):  # the stored requests are read as they are printed
        _show(api.timeline(source, cpu_khz=cpu_khz, hvm_vendor=hvm_vendor), as_json)


@cli.command("report")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="The report as JSON on stdout.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a self-contained HTML report (plots inline, works offline).")  # fmt: skip
@cpu_khz_option
@vendor_option
@_guard
def report_cmd(source, as_json, html_file, cpu_khz, hvm_vendor):
    """Where each request's time goes: per-phase p50/p90/p99/max per device queue and
    operation, clock alignment bounds, incomplete requests, and the VM exits, dom0
    hypercalls, IOREQs and grant operations per request. Runs `timeline` when needed."""
    with api.reading(source):  # the page's plots read the stored requests
        rep = api.report(source, cpu_khz=cpu_khz, hvm_vendor=hvm_vendor)
        if html_file:
            _write(html_file, rep.render_html())
    _show(rep, as_json)


def _show(result, as_json: bool) -> None:
    """A command's result on stdout: as JSON for scripts, else as text."""
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, default=str))
    else:
        click.echo(result.render(), nl=False)


def _write(path: Path, text: str) -> None:
    """A page or document written atomically, said on stderr (stdout stays for the data)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    click.echo(f"{path}: written", err=True)


@cli.group("export")
def export_group() -> None:
    """Export a bundle for other tools."""


@export_group.command("perfetto")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Trace JSON to write (open it in ui.perfetto.dev or chrome://tracing).")  # fmt: skip
@cpu_khz_option
@vendor_option
@_guard
def export_perfetto_cmd(source, output, cpu_khz, hvm_vendor):
    """Requests as Chrome trace-event JSON: a track per device queue (element pop -> fill,
    device I/O, fill -> interrupt), a track per guest vCPU (the kick's trap) and flows from
    each kick to the element it made QEMU pop. Runs `timeline` first when needed."""
    n = api.export_perfetto(source, output, cpu_khz=cpu_khz, hvm_vendor=hvm_vendor)
    click.echo(f"{output}: {n} trace events")


@cli.command("emulate")
@click.option(
    "-t",
    "--transport",
    default="all",
    show_default=True,
    help="A transport, a comma-separated list, or 'all'. Valid: " + ", ".join(TRANSPORT_NAMES),
)
@click.option(
    "-w",
    "--workload",
    default="randread-4k-qd1",
    show_default=True,
    help="A preset (" + ", ".join(PRESETS) + ") or fio-style pairs, e.g. "
    "rw=randwrite,bs=4k,iodepth=32,numjobs=2,rate=0.",
)
@click.option(
    "-n", "--requests", type=click.IntRange(min=1), help="Requests to run (default 10000)."
)
@click.option(
    "--runtime",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds of emulated time to run instead of a request count.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same bundle)."
)
@click.option(
    "--profile",
    type=click.Choice(["x86_64", "arm64"]),
    default="x86_64",
    show_default=True,
    help="Cost profile and host kind (arm64: generic-timer clock, no VM-exit records).",
)
@click.option(
    "--hvm-vendor",
    "vendor",
    type=click.Choice(["vmx", "svm"]),
    default="vmx",
    show_default=True,
    help="Exit-reason encoding of the emulated x86 host.",
)
@click.option(
    "--clock-offset-ns", type=float, default=0.0, help="Device-model clock minus hypervisor clock."
)
@click.option(
    "--drop-rate",
    type=float,
    default=0.0,
    help="Fraction of xentrace records to lose (bursts + LOST_RECORDS).",
)
@click.option("--clock-drift-ppm", type=float, default=0.0, help="Device-model clock drift.")
@click.option(
    "--costs",
    "costs_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV of cost rows (key,x86_64,arm64,sigma,source) replacing the defaults by key.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Bundle directory (with several transports: one sub-directory each).",
)
@click.option("--ingest/--no-ingest", default=True, show_default=True, help="Decode each bundle.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar (default: when stderr is a terminal).",
)
@_guard
def emulate_cmd(transport, workload, requests, runtime, seed, profile, vendor, clock_offset_ns,
                clock_drift_ppm, drop_rate, costs_file, output, ingest, progress):  # fmt: skip
    """Emulate a Xen host running a block or network workload over virtio transports,
    writing what a real host would (xentrace, QEMU trace lines, pcap, the ring in guest
    memory) plus the truth of every request.

    Prints one line per transport: requests, latency p50/p99, IOPS, and the VM exits and
    dom0 hypercalls per request that its xentrace records hold.
    """
    names = (
        list(TRANSPORT_NAMES) if transport == "all" else [t.strip() for t in transport.split(",")]
    )
    for name in names:
        if name not in TRANSPORT_NAMES:
            raise UserError(f"unknown transport {name!r}; valid: {', '.join(TRANSPORT_NAMES)}, all")
    if requests is None and runtime is None:
        requests = 10_000
    if requests is not None and runtime is not None:
        raise UserError("give --requests or --runtime, not both")
    show = sys.stderr.isatty() if progress is None else progress
    bars = []

    def bar_for(name: str):
        if not show:
            return None
        for bar in bars:  # the previous transport's run is done
            bar.close()
        bars.append(_request_bar(name))
        return bars[-1].update_to

    try:
        summary = api.emulate(
            names, output, decode=ingest, progress=bar_for, warn=_warn, workload=workload,
            requests=requests, runtime=runtime, seed=seed, profile=profile, vendor=vendor,
            clock_offset_ns=clock_offset_ns, clock_drift_ppm=clock_drift_ppm,
            drop_rate=drop_rate, costs_file=costs_file,
        )  # fmt: skip
    finally:
        for bar in bars:
            bar.close()
    click.echo(summary.render(), nl=False)


def _warn(message: str) -> None:
    click.echo(f"xvtrace: warning: {message}", err=True)


def _request_bar(name: str):
    from tqdm import tqdm

    bar = tqdm(total=0, unit="req", unit_scale=True, desc=name, file=sys.stderr, leave=False)

    def update_to(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    bar.update_to = update_to
    return bar


@cli.command("replay")
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--target", default="all", show_default=True, metavar="T[,T...]|all",
              help=f"Transports to replay against: {', '.join(TRANSPORT_NAMES)}, or all.")  # fmt: skip
@click.option("--costs", "costs_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Cost file (TOML from `xvtrace calibrate`, or CSV rows) replacing defaults by key.")  # fmt: skip
@click.option("--arrivals", type=click.Choice(["closed", "think", "open"]), default="closed",
              show_default=True,
              help="closed: each job keeps the captured queue depth in flight; think: closed, each "
              "job waiting the think time the capture implies between a response and its next "
              "request; open: requests arrive at their captured times whatever the transport's "
              "speed.")  # fmt: skip
@click.option("-t", "--transport", type=click.Choice(TRANSPORT_NAMES),
              help="The transport the capture ran on (default: the manifest's; unknown for a "
              "plain QEMU capture). Its own operations are taken out of the device time.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the cost jitter.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help=f"Predicted requests (parquet; facts beside it as .json). Default: BUNDLE/{'replay.parquet'}.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option("--emit-bundle", "emit_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write a full bundle per transport (DIR/<transport>/, real formats, "
              "decoded) from the emulated host running the replayed stream, for timeline and report.")  # fmt: skip
@_guard
def replay_cmd(source, target, costs_file, arrivals, transport, seed, output, as_json, emit_dir):
    """Re-execute a bundle's captured request stream through each transport's request path:
    what this workload would cost on another virtio-on-Xen transport.

    Needs the bundle's timeline (`xvtrace timeline BUNDLE`). Prints, per transport, latency
    p50/p99, IOPS at the captured depth and at saturation, CPU time and VM exits,
    hypercalls, IOREQs, pages mapped and bytes copied per request, and the phases that
    differ most from the baseline. `xvtrace compare` shows the result again (or as HTML).
    """
    from xvtrace import replaying  # the replay engine (numba) only for this command

    out = output or Path(source) / replaying.REPLAY
    cmp = api.replay(source, target, output=out, emit_dir=emit_dir, warn=_warn,
                     costs_file=costs_file, seed=seed, arrivals=arrivals,
                     source=transport)  # fmt: skip
    _show(cmp, as_json)
    click.echo(f"{out}: {cmp.predicted} predicted requests", err=True)
    for d in cmp.emitted:
        click.echo(f"{d}: bundle written (try `xvtrace report {d}`)", err=True)


@cli.command("calibrate")
@click.argument("sources", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))  # fmt: skip
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Cost file to write (TOML; give it to replay or emulate with --costs).")  # fmt: skip
@click.option("-t", "--transport", type=click.Choice(TRANSPORT_NAMES),
              help="The transport the captures ran on (default: each one's manifest).")  # fmt: skip
@click.option("--costs", "costs_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Start from this cost file instead of the defaults.")  # fmt: skip
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the Monte Carlo and bootstrap."
)
@_guard
def calibrate_cmd(sources, output, transport, costs_file, seed):
    """Fit the cost table to captures of one host: each group of operations a capture's
    timestamps bracket gets the factor that matches its measured intervals, with a 95 %
    interval. With several captures (e.g. one per transport), each fits its own
    transport's costs and a key more than one constrains (the host's traps, IOREQs,
    interrupts) gets their random-effects mean, naming every capture and interval behind
    it. Prints every cost and says which ones no capture constrains (they stay the table's
    estimates). Needs each bundle's timeline."""
    cal = api.calibrate(*sources, transport=transport, costs_file=costs_file, seed=seed)
    cal.write(output)
    click.echo(cal.render(), nl=False)
    click.echo(f"{output}: written", err=True)


@cli.command("validate")
@click.argument("tests", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))  # fmt: skip
@click.option("-c", "--calibrate", "train", multiple=True, required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A capture of the same host running another workload (repeatable): the "
                   "costs are fitted to these alone.")  # fmt: skip
@click.option("--costs", "costs_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Start from this cost file instead of the defaults.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the cost jitter.")
@click.option("--arrivals", type=click.Choice(["open", "think", "closed"]), default="open",
              show_default=True,
              help="Replay each source at its captured arrival times (open: the guest's own "
                   "pacing), closed-loop at its workload's jobs and depth with the think time "
                   "the capture implies (think), or without (closed).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="The matrix and every interval as JSON.")
@_guard
def validate_cmd(tests, train, costs_file, seed, arrivals, as_json):
    """Check replay against real captures: fit the host's costs to the --calibrate
    captures, replay each TEST capture as the transport of every TEST capture, and
    compare each prediction with that capture, interval by interval on what the host
    observes (kick trap, pop, submission, I/O, fill, interrupt, ISR traps), at p50 and
    p90. Prints the error matrix (source x target) of the whole host-observed request,
    then each interval's. Every capture must name its transport (`capture --transport`)."""
    v = api.validate(tests, train, costs_file=costs_file, seed=seed, arrivals=arrivals)
    _show(v, as_json)


@cli.command("compare")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="The comparison as JSON on stdout.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a self-contained HTML page (latency CDFs, phase bars).")  # fmt: skip
@_guard
def compare_cmd(source, as_json, html_file):
    """Transports side by side from a replay (a bundle after `xvtrace replay`, or the
    replay's parquet file): p50/p99 latency and its ratio to the baseline, IOPS at the
    captured depth and at saturation, CPU per request, work per request and the phases
    that make the difference."""
    cmp = api.compare(source)
    if html_file:
        _write(html_file, cmp.render_html())
    _show(cmp, as_json)


@cli.command("regress")
@click.option("--baseline", "baseline", required=True, type=click.Path(exists=True, path_type=Path),
              help="A baseline summary (.json) or a bundle / raw capture to summarize.")  # fmt: skip
@click.option("--candidate", "candidate", required=True, type=click.Path(exists=True, path_type=Path),
              help="The run to judge: a bundle, raw capture or baseline summary.")  # fmt: skip
@click.option("--threshold", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Smallest change of a phase's median (percent) that counts.")  # fmt: skip
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True), default=0.01, show_default=True,
              help="Significance level of the Mann-Whitney test (Holm-adjusted over phases).")  # fmt: skip
@click.option("--force", is_flag=True, help="Compare runs whose provenance differs.")
@click.option("--json", "as_json", is_flag=True, help="The comparison as JSON.")
@click.option("--markdown", "as_markdown", is_flag=True, help="The comparison as a Markdown table.")
@click.option("--update-baseline", "update", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the candidate's summary here as the new baseline (and still compare).")  # fmt: skip
@cpu_khz_option
@vendor_option
@_guard
def regress_cmd(baseline, candidate, threshold, alpha, force, as_json, as_markdown, update,
                cpu_khz, hvm_vendor):  # fmt: skip
    """Did this change make requests slower, and in which phase? Compares every phase of
    every queue and operation (Mann-Whitney U + bootstrap interval of the median ratio +
    a minimum effect): each is a regression, an improvement, the same (any change is under
    the threshold) or unknown (too few requests to tell: it says how many more runs of each
    side would decide). Exit status: 0 pass (unknown phases included), 1 regression, 2
    error (including runs whose Xen version, cpu_khz, transport or workload differ, unless
    --force)."""
    from xvtrace.gate import regress

    clock = {"cpu_khz": cpu_khz, "hvm_vendor": hvm_vendor}
    base, cand = api.baseline(baseline, **clock), api.baseline(candidate, **clock)
    if update:
        regress.write(cand, update)
        click.echo(f"{update}: baseline written", err=True)
    cmp = regress.compare(base, cand, threshold_pct=threshold, alpha=alpha, force=force)
    if as_json:
        click.echo(json.dumps(cmp.to_json(), indent=2))
    elif as_markdown:
        click.echo(cmp.render_markdown(), nl=False)
    else:
        click.echo(cmp.render(), nl=False)
    if len(cmp.regressed):
        sys.exit(1)


@cli.command("batch")
@click.argument("bundles", nargs=-1, required=True)
@click.option("-o", "--output", "store", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The run store (a folder: one Parquet file per bundle, partitioned by "
                   "transport=/host=/date=); made when missing.")  # fmt: skip
@click.option("-j", "--workers", type=click.IntRange(min=1),
              help="Processes at once (default: one per CPU; 1: in this process).")  # fmt: skip
@click.option("--scheduler", metavar="ADDRESS",
              help="Run on this Dask distributed cluster instead (tcp://host:8786; pip install "
                   "'xvtrace[dask]'): the bundles and the store at the same paths on its workers.")  # fmt: skip
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: when stderr is a terminal).")  # fmt: skip
@_guard
def batch_cmd(bundles, store, workers, scheduler, progress):
    """Run many bundles into a run store: each one ingested when it has no table yet, its
    timeline reconstructed and its phases' distributions stored with the run's provenance
    (Xen version, kernel, transport, workload, cpu_khz). BUNDLES are folders or glob
    patterns ('runs/*'). A bundle stored before is skipped unless its capture changed; one
    that fails is listed with its error and the batch goes on. Exit status 1 when any
    failed. Read the store with `xvtrace history` or xvtrace.history.store.scan."""
    from xvtrace.history import batch

    paths = batch.expand(bundles)
    bar = _request_bar("batch") if (sys.stderr.isatty() if progress is None else progress) else None
    if bar is not None:
        bar.unit = " bundles"
    try:
        res = batch.run(paths, store, workers=workers, scheduler=scheduler,
                        progress=bar.update_to if bar else None)  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    for path, error in res.failed:
        click.echo(f"xvtrace: {path}: failed: {error}", err=True)
    click.echo(f"{store}: {len(paths)} bundles: {res.line()}")
    if res.failed:
        sys.exit(1)


@cli.command("history")
@click.argument("store", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-t", "--transport", help="Only this transport's series.")
@click.option("-p", "--phase", help="Only this phase's series (e.g. 'device I/O', 'total').")
@click.option("--json", "as_json", is_flag=True, help="The change points as JSON.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a self-contained page: each series with its change points drawn.")  # fmt: skip
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the permutation tests."
)
@_guard
def history_cmd(store, transport, phase, as_json, html_out, seed):
    """When did which phase get slower? For each series of a run store (transport,
    workload, queue, operation, phase; its runs in capture order, each run's median), the
    change points E-Divisive means finds (Matteson and James 2014, as MongoDB's and Apache
    Otava's performance CI use), each with its size, confidence and the runs on either
    side."""
    import polars as pl

    from xvtrace.history import report

    found, looked = report.changes(store, transport=transport, phase=phase, seed=seed)
    if html_out:
        from xvtrace.bundle import atomic_path

        runs = report.series(store, transport=transport, phase=phase)
        with atomic_path(html_out) as tmp:
            tmp.write_text(report.render_html(runs, found, looked))
        click.echo(f"{html_out}: written", err=True)
    if as_json:
        rows = found.with_columns(pl.col("first_after_utc").cast(pl.String)).to_dicts()
        click.echo(json.dumps({"series": looked, "changes": rows}, indent=2))
    else:
        click.echo(report.render(found, looked), nl=False)


from xvtrace.capture.command import capture_cmd  # noqa: E402  (defined apart: no polars)

cli.add_command(capture_cmd)


def main() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    cli.main(prog_name="xvtrace")
