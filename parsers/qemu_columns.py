"""The compiled QEMU log scan's values as the event table's columns: which conversion of
each event fills which column (parsers.qemu_events' roles), with the nulls and casts the
regex path (parsers.qemu_log._event_rows) gives the same lines."""

from __future__ import annotations

import numpy as np
import polars as pl

from xvtrace.parsers import qemu_scan
from xvtrace.parsers.qemu_events import Roles, event_name, roles_for
from xvtrace.parsers.schema import N_ARGS
from xvtrace.parsers.trace_events import TraceEvents


class ScanPlan:
    """The events the compiled scan reads, and how its values become the columns
    _event_rows makes of the same lines (roles, nulls, casts)."""

    COLUMNS = (*(f"arg{i}" for i in range(N_ARGS)), "dev", "queue", "_vq", "addr", "size")

    def __init__(self, defs: TraceEvents | None, only: dict[str, Roles] | None = None):
        """only: these events, with these roles (default: all, with qemu_events' roles)."""
        events, rows = [], []
        for name, ev in (defs.events if defs else {}).items():
            t = qemu_scan.template(ev)
            if t is None or event_name(name) == "unknown" or (only and name not in only):
                continue  # uncatalogued events keep their counts on the regex path
            roles = only[name] if only else roles_for(name, tuple(a.name for a in ev.args))
            want = {"dev": roles.dev if roles.dev != "vq" else None,
                    "queue": roles.queue if roles.queue != "vq" else None,
                    "_vq": "vq" if "vq" in (roles.dev, roles.queue) else None,
                    "addr": roles.addr, "size": roles.size}  # fmt: skip
            if any(a is not None and a not in t.args for a in want.values()):
                continue  # a role without its argument: the regex path fails as before
            col = [i if i < len(t.kinds) else -1 for i in range(N_ARGS)]
            col += [t.args.index(a) if a else -1 for a in want.values()]
            dev = col[N_ARGS]
            if dev >= 0 and t.kinds[dev] not in (qemu_scan.PTR, qemu_scan.ALTX):
                continue  # the device is a pointer's text; others have none
            events.append((name, t, dev))
            rows.append((ev.number, len(t.kinds), roles.size_scale, *col))
        self.catalog = qemu_scan.Catalog(events)
        self.names = self.catalog.names
        table = np.array(rows or [(0, 0, 1) + (-1,) * len(self.COLUMNS)], np.int64)
        self.code, self.nconv, self.scale = table[:, 0], table[:, 1], table[:, 2]
        self.colmap = np.ascontiguousarray(table[:, 3:])
        self.event = pl.Series("event", [event_name(n) for n in self.names] or ["unknown"])

    def beyond_7(self, name: str) -> bool:
        return self.nconv[self.names.index(name)] > N_ARGS

    def scan(self, body: np.ndarray, starts: np.ndarray, ends: np.ndarray, base: int) -> dict:
        """The scan's rows (arrays) and `_slow`, the lines left to the regexes."""
        status, ev, tid, sec, usec, stamped, values, fits = self.catalog.scan(body, starts, ends)
        rows, out, state = qemu_scan.columns(status, ev, values, fits, self.colmap)
        return {
            "_slow": status == qemu_scan.SLOW,
            "src_offset": starts[rows].astype(np.uint64) + np.uint64(base),
            "ev": ev[rows], "tid": tid[rows], "sec": sec[rows], "usec": usec[rows],
            "stamped": stamped[rows], "out": out, "state": state,
        }  # fmt: skip

    def counts(self, fast: dict) -> dict[str, tuple[int, int]]:
        """Per event read: (offset of its first line, lines)."""
        first, n = qemu_scan.first_and_count(fast["ev"], len(self.names))
        offs = fast["src_offset"]
        return {self.names[e]: (int(offs[first[e]]), int(n[e])) for e in np.flatnonzero(n)}

    def frame(self, fast: dict) -> pl.DataFrame:
        ev, stamped = fast["ev"], fast["stamped"]
        value = dict(zip(self.COLUMNS, fast["out"], strict=True))
        state = dict(zip(self.COLUMNS, fast["state"], strict=True))
        ok = {c: s == qemu_scan.VALUE for c, s in state.items()}
        ts = fast["sec"] * 1_000_000_000 + fast["usec"] * 1_000
        raw = (fast["sec"] * 1_000_000 + fast["usec"]).astype(np.uint64)
        cols = {
            "src_offset": pl.Series(fast["src_offset"]),
            "ts_ns": _nullable(ts, stamped, pl.Int64),
            "ts_raw": _nullable(raw, stamped, pl.UInt64),
            "has_ts": pl.Series(stamped),
            "thread": _nullable(fast["tid"].astype(np.uint32), stamped, pl.UInt32),
            "event": self.event.gather(ev),
            "code": pl.Series(self.code[ev].astype(np.uint32)),
            "nargs": pl.Series(np.minimum(self.nconv[ev], N_ARGS).astype(np.uint8)),
        }
        for i in range(N_ARGS):  # absent: null; too large for 64 bits: 0 (fill_null(0))
            a = f"arg{i}"
            cols[a] = _nullable(np.where(ok[a], value[a], 0), state[a] != qemu_scan.ABSENT,
                                pl.UInt64)  # fmt: skip
        cols["dev"] = _pointer_text(value["dev"], ok["dev"])
        q = value["queue"]
        cols["queue"] = _nullable(q.astype(np.uint16), ok["queue"] & (q <= 0xFFFF), pl.UInt16)
        cols["_vq"] = _nullable(value["_vq"], ok["_vq"], pl.UInt64)
        cols["addr"] = _nullable(value["addr"], ok["addr"], pl.UInt64)
        size = value["size"] * self.scale[ev].astype(np.uint64)  # wraps, as polars' UInt64 product
        cols["size"] = _nullable(
            size.astype(np.uint32), ok["size"] & (size <= 0xFFFFFFFF), pl.UInt32
        )
        return pl.DataFrame({k: s.alias(k) for k, s in cols.items()})


def _nullable(values: np.ndarray, valid: np.ndarray, dtype: pl.DataType) -> pl.Series:
    return _masked(pl.Series(values, dtype=dtype), valid)


def _masked(s: pl.Series, valid: np.ndarray) -> pl.Series:
    """s, null where not valid."""
    return s if valid.all() else pl.select(pl.when(pl.lit(valid)).then(pl.lit(s))).to_series()


def _pointer_text(values: np.ndarray, valid: np.ndarray) -> pl.Series:
    """'0x..' texts of pointer values, null where not valid (a text per distinct value: a
    log names a few devices)."""
    codes, uniq, few = qemu_scan.small_codes(values, valid, 256)
    if few:
        texts = pl.Series([f"{int(v):#x}" for v in uniq] or [""], dtype=pl.String)
        return _masked(texts.gather(np.maximum(codes, 0)), valid)
    s = pl.Series(values)
    uniq = s.unique()
    texts = pl.Series([f"{v:#x}" for v in uniq.to_list()], dtype=pl.String)
    return _masked(s.replace_strict(uniq, texts), valid)
