"""`python -m xvtrace.cli_main` runs the CLI (same as the `xvtrace` script)."""

from xvtrace.cli import main

if __name__ == "__main__":
    main()
