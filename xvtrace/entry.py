"""The `xvtrace` command: allocator settings first (they must precede numpy and polars), then
the CLI."""

from __future__ import annotations

import sys


def main() -> None:
    from xvtrace import allocator

    allocator.tune(sys.argv[1:])
    from xvtrace.cli import main as cli

    cli()
