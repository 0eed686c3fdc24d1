"""`xvtrace capture` on its own: importable without polars, numpy or numba, so it runs in a
minimal dom0 (or on a CPU polars' wheels do not support) as `python -m xvtrace.capture`;
`xvtrace capture` is the same command. Decoding (--ingest) imports the rest on demand."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from xvtrace.parsers.errors import is_users
from xvtrace.replay.transports import NAMES as TRANSPORT_NAMES


def guard(fn):
    """Input errors as one line and exit status 2 (the light twin of the CLI's guard)."""

    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except Exception as e:
            if is_users(e):  # XvtraceError (CaptureError, QMPError, ...) or a path's OSError
                click.echo(f"xvtrace: error: {e}", err=True)
                sys.exit(2)
            if os.environ.get("XVTRACE_DEBUG"):
                raise
            click.echo(f"xvtrace: internal error: {type(e).__name__}: {e}", err=True)
            sys.exit(3)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@click.command("capture")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="New bundle directory to write (must not exist or be empty).",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop after S seconds. Default: when every traced VM exits, or Ctrl-C.",
)
@click.option(
    "--qmp",
    "qmp",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="A QEMU QMP unix socket (repeatable): trace its virtio/ioreq events and "
    "poll its virtqueues.",
)
@click.option(
    "--iface",
    "ifaces",
    multiple=True,
    help="Sniff this host interface to pcap (repeatable; needs root).",
)
@click.option(
    "--dump-netdev",
    "netdevs",
    multiple=True,
    help="Dump this QEMU -netdev id to pcap through QMP filter-dump (repeatable).",
)
@click.option(
    "--xentrace/--no-xentrace", default=None, help="Run xentrace. Default: when this is a Xen dom0."
)
@click.option("--xentrace-mask", default="all", show_default=True, help="xentrace -e event mask.")
@click.option("--block-trace/--no-block-trace", default=None,
              help="Record dom0's block layer (tracefs block_rq_insert/issue/complete on the TSC): "
              "the per-request view of backends that log nothing (blkback, vhost-user, Argo). "
              "Default: with xentrace.")  # fmt: skip
@click.option("--log", "logs", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A trace log another program writes, e.g. the device model libxl starts with "
              "device_model_args = ['-D', FILE, '-trace', 'virtio_*', ...]: copied in when the capture "
              "stops (repeatable).")  # fmt: skip
@click.option("--tracefs", type=click.Path(file_okay=False, path_type=Path),
              help="tracefs mount (default: /sys/kernel/tracing).")  # fmt: skip
@click.option(
    "--trace",
    "patterns",
    multiple=True,
    help="QEMU trace-event pattern to enable (repeatable). Default: virtio_*, "
    "virtqueue_*, handle_ioreq*, cpu_ioreq_*, xen_map_cache*, xen_remap_bucket.",
)
@click.option(
    "--cont",
    "resume",
    is_flag=True,
    help="Resume VMs that are paused once tracing is set up (start QEMU with -S to "
    "trace from the first instruction).",
)
@click.option(
    "--dump-memory",
    is_flag=True,
    help="At the end, dump each still-running VM's memory (ELF core) so the virtqueue rings "
    "can be decoded as the guest left them.",
)
@click.option(
    "--transport",
    type=click.Choice(TRANSPORT_NAMES),
    help="The transport the guest's virtio device runs on, recorded in the manifest so that "
    "replay and calibrate take it as the capture's own.",
)
@click.option("--workload", "workload_name", metavar="NAME",
              help="A name for the workload the guest runs (regress compares runs of one workload).")  # fmt: skip
@click.option("--jobs", "numjobs", type=click.IntRange(min=1), metavar="N",
              help="Processes (fio numjobs) the guest's workload runs: replay's closed loop.")  # fmt: skip
@click.option("--iodepth", type=click.IntRange(min=1), metavar="N",
              help="Requests each of those keeps in flight (fio iodepth). The capture sees the "
                   "depth only where the backend does not serialize the requests.")  # fmt: skip
@click.option(
    "--ingest/--no-ingest",
    default=True,
    show_default=True,
    help="Decode the bundle when the capture ends.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a status line (default: when stderr is a terminal).",
)
@guard
def capture_cmd(output, duration, qmp, ifaces, netdevs, xentrace, xentrace_mask, block_trace, logs, tracefs,
                patterns, resume, dump_memory, transport, workload_name, numjobs, iodepth, ingest,
                progress):  # fmt: skip
    """Capture a live run into a new bundle: xentrace on a Xen dom0, QEMU trace events and
    virtqueue state over QMP, packets.

    Start QEMU with `-qmp unix:/path/sock,server=on,wait=off -msg timestamp=on` (the
    timestamps cannot be turned on later), then run this. It stops after --duration, when
    every traced VM exits, or on Ctrl-C / SIGTERM, with every file flushed; the manifest says
    what was captured and what failed.
    """
    import signal

    from xvtrace.capture import DEFAULT_PATTERNS, CaptureOptions, capture, default_status

    stop = []

    def on_signal(signum, frame):
        stop.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    show = sys.stderr.isatty() if progress is None else progress

    def announce(kinds: list[str]) -> None:  # scripts wait for this line to start the workload
        click.echo(f"capturing: {', '.join(kinds) or 'nothing'} (Ctrl-C stops)", err=True)

    opts = CaptureOptions(
        out=output, duration=duration, qmp=qmp, ifaces=ifaces, netdevs=netdevs,
        xentrace=xentrace, xentrace_mask=xentrace_mask, block_trace=block_trace, tracefs=tracefs, logs=logs,
        patterns=tuple(patterns) or DEFAULT_PATTERNS, resume=resume, dump_memory=dump_memory,
        transport=transport,
        workload={k: v for k, v in (("name", workload_name), ("numjobs", numjobs), ("iodepth", iodepth))
                  if v is not None},
    )  # fmt: skip
    try:
        manifest = capture(
            opts, status=default_status(show), stop_flag=lambda: bool(stop), recording=announce
        )
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if show:
            click.echo("", err=True)
    cap = manifest["capture"]
    click.echo(f"bundle: {output} (stopped: {cap['stop_reason']})")
    for src in cap["sources"]:
        state = "ok" if src.get("ok") else f"FAILED: {src.get('error')}"
        click.echo(f"  {src['kind']}: {state}")
        for w in src.get("warnings", []):
            click.echo(f"    warning: {w}")
    for name, size in cap["files"].items():
        click.echo(f"  {name}: {size} bytes")
    if ingest:
        from xvtrace import api

        result = api.ingest(output, None)
        click.echo(f"  events.parquet: {result.bundle.manifest['counts']['events']} events")
