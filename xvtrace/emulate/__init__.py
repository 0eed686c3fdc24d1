"""The emulated Xen host (xvtrace.emulate.host): run a workload through a transport's request
path and write what a real host would, as a bundle.

    from xvtrace.emulate import EmulateOptions, emulate

The host's names are loaded on first use: it compiles its writers with numba, which the
commands that only read bundles (and `--help`) should not wait for. The workload's parser
(xvtrace.emulate.workload) and the package's other modules import as usual.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    host = importlib.import_module("xvtrace.emulate.host")  # (a `from` import would recurse)
    try:
        return getattr(host, name)
    except AttributeError:
        raise AttributeError(f"module 'xvtrace.emulate' has no attribute {name!r}") from None
