"""The `xvtrace` command: allocator settings first (they must precede polars), then the CLI."""

from __future__ import annotations


def main() -> None:
    from xvtrace import allocator

    allocator.tune()
    from xvtrace.cli import main as cli

    cli()
