"""The grant-based transport with persistent grants: the backend keeps each granted page
mapped after first use (as blkback does), so a request costs a lookup instead of a map and
an unmap with its TLB flush."""

from dataclasses import replace

from xvtrace.replay.transports.base import op
from xvtrace.replay.transports.suse_grant import TRANSPORT as _GRANT

_LOOKUP = op(
    "persistent_lookup", "map", "backend_thread", "backend", "dm.persistent_grant_lookup", "page"
)


def _persistent(path):
    out = []
    for o in path:
        if o.name == "grant_map":
            out.append(_LOOKUP)
        elif o.name not in ("grant_unmap", "guest_grant"):
            out.append(o)
    return tuple(out)


TRANSPORT = replace(
    _GRANT,
    name="suse-grant-persistent",
    title="VirtIO with persistent grants",
    summary=__doc__,
    block=_persistent(_GRANT.block),
    net_tx=_persistent(_GRANT.net_tx),
    net_rx=_persistent(_GRANT.net_rx),
)
