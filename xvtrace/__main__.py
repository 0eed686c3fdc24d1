"""`python -m xvtrace` runs the CLI."""

from xvtrace.entry import main

main()
