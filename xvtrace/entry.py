"""The `xvtrace` command: allocator settings first (they must precede numpy and polars), then
the CLI."""

from __future__ import annotations

import gc
import sys


def main() -> None:
    from xvtrace import allocator

    allocator.tune(sys.argv[1:])
    # no collector passes over what the imports make (35 ms of the 430 ms start): off while
    # they run, then their objects are set aside for good (emulate() keeps it off for its run)
    gc.disable()
    from xvtrace.cli import main as cli

    gc.freeze()
    gc.enable()
    cli()
