"""Per-request timelines from a bundle's events (see timeline.pipeline for the views)."""

from xvtrace.timeline.pipeline import (
    IOREQS,
    REQUESTS,
    Timeline,
    build,
    current_key,
    load,
    reconstruct,
)
from xvtrace.timeline.qemu import requests as qemu_requests

__all__ = [
    "IOREQS",
    "REQUESTS",
    "Timeline",
    "build",
    "current_key",
    "load",
    "qemu_requests",
    "reconstruct",
]
