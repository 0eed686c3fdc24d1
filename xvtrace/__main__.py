"""`python -m xvtrace` runs the CLI."""

from xvtrace.cli import main

main()
