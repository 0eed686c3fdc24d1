"""The `xvtrace` command: allocator settings first (they must precede numpy and polars), then
the CLI."""

from __future__ import annotations

import gc
import sys


def main() -> None:
    from xvtrace import allocator

    allocator.tune(sys.argv[1:])
    if sys.argv[1:2] and sys.argv[1] in allocator.COMMANDS:
        # one bounded run, of arrays more than objects: no collector passes over what the
        # imports make (35 ms of the 430 ms start)
        gc.disable()
    from xvtrace.cli import main as cli

    cli()
