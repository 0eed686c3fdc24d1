"""The `xvtrace` command: allocator settings first (they must precede numpy and polars), then
the CLI, then a prompt exit."""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading


def main() -> None:
    from xvtrace import allocator

    allocator.tune(sys.argv[1:])
    # no collector passes over what the imports make (35 ms of the 430 ms start): off while
    # they run, then their objects are set aside for good (emulate() keeps it off for its run)
    gc.disable()
    from xvtrace.cli import main as cli

    gc.freeze()
    gc.enable()
    try:
        cli()  # click ends with SystemExit, its code the command's status
    except SystemExit as done:
        leave(done.code)
    leave(0)


def leave(code) -> None:
    """Exit with `code` once stdout and stderr are flushed and the exit handlers have run,
    without tearing the interpreter down: undoing numba's, llvmlite's and polars' ~700
    modules one by one took 0.1-0.15 s of every run (of the 0.8 s a small capture's
    summary took). Our files are written and closed by then (bundle.atomic_path); a status
    that is not a number, or a thread of our own still running, exits the usual way."""
    alone = all(t.daemon or t is threading.main_thread() for t in threading.enumerate())
    if not (code is None or isinstance(code, int)) or not alone:
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # the reader left (`| head`), or closed
            code = code or (120 if stream is sys.stdout else 0)
    os._exit(code or 0)
