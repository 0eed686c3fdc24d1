"""The transports of the Xen "Virtio On Xen" work, one module each (see base.Transport).

Adding a transport means adding a module here that defines TRANSPORT; it is found by name.
"""

from __future__ import annotations

import importlib
import pkgutil

from xvtrace.parsers.errors import XvtraceError
from xvtrace.replay.transports.base import Transport


def _load() -> dict[str, Transport]:
    found = {}
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name in ("base", "ops"):
            continue
        t = importlib.import_module(f"{__name__}.{mod.name}").TRANSPORT
        found[t.name] = t
    return found


TRANSPORTS: dict[str, Transport] = _load()
NAMES = tuple(TRANSPORTS)


def get(name: str) -> Transport:
    try:
        return TRANSPORTS[name]
    except KeyError:
        raise XvtraceError(f"unknown transport {name!r}; valid: {', '.join(NAMES)}") from None
