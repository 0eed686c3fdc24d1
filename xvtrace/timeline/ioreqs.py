"""Each IOREQ the device model handled, joined with the hypervisor's trap for the same access.

A guest access to an emulated MMIO page or IO port leaves two records of one event:
- xentrace: the VM exit (for MMIO an NPF exit on SVM, an EPT violation on VMX), then
  `hvm.mmio_read/write` (gpa, data) or `hvm.ioport_read/write` (port, data), then, once the
  access is emulated, the vCPU's VM entry;
- the device model: `handle_ioreq` (its ioreq_t: slot, type PIO or COPY, direction,
  address, data) when it picks the request up.

Xen emulates many accesses itself (local APIC, HPET, PIT, RTC, ACPI PM timer): only the
addresses the device model ever handled can be matched, and a trap at such an address
must have its IOREQ. Both sides list the accesses of one vCPU, kind, direction and address
in the same order, but not from the same start (xentrace and the device model's trace
events begin at different times): `join` numbers each side per key, takes the shift
between the numberings from where the IOREQs fall on the hypervisor's clock (the
device-model clock fit, `clock.align_device_model`), pairs them by order, and accepts a pair
only when the IOREQ lies inside its trap's exit..entry window widened by the fit's bounds.

The device model's ioreq slots are the vCPUs' entries of the shared ioreq page
(ioreq_t vcpu_ioreq[vcpu]), so slot pointers sort in vCPU order.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from xvtrace.bundle.frame_sink import SPILL_OPTIONS, sink_frames
from xvtrace.parsers import fields
from xvtrace.timeline import hvm
from xvtrace.timeline.asof_runs import AsofRuns
from xvtrace.timeline.clock import Clock, to_device_model
from xvtrace.timeline.log_search import rows_at

IOREQS = "ioreqs.parquet"


def device_model_ioreqs(ev: pl.LazyFrame) -> pl.DataFrame:
    """QEMU's handle_ioreq records: src_file, slot, vcpu (slot order), kind, dir, addr, data,
    size, dm_ns, dm_off. Config-space IOREQs (type 2) and the mapcache's (8) have no trap."""
    return device_model_ioreq_rows(ev).collect()


def device_model_ioreq_rows(ev: pl.LazyFrame) -> pl.LazyFrame:
    """`device_model_ioreqs`, lazily: only the slots are read first (the timeline writes
    the rest as it reads them; collected, with the slots joined, they took 2.2 GB at 5 M
    requests)."""

    def arg(name: str) -> pl.Expr:
        return fields.qemu("handle_ioreq", name)

    # the log's name as a category while the slots are joined (on its string, the join
    # row-encoded it for every IOREQ)
    io = (
        ev.filter(pl.col("event") == "qemu.handle_ioreq")
        .select("ts_ns", pl.col("src_file").cast(pl.Categorical), "src_offset", "addr", "size",
                arg("req").alias("slot"), arg("type"), arg("dir").alias("dir_bit"), arg("data"))
    )  # fmt: skip
    slots = io.select("src_file", "slot").unique().sort("src_file", "slot").collect()
    slots = slots.with_columns(pl.int_range(pl.len()).over("src_file").cast(pl.Int32).alias("vcpu"))
    return (
        io.filter(pl.col("type").is_in([0, 1]))
        .join(slots.lazy(), on=["src_file", "slot"], maintain_order="left")
        .select(
            pl.col("src_file").cast(pl.String), "slot", "vcpu",
            pl.when(pl.col("type") == 1).then(pl.lit("mmio")).otherwise(pl.lit("pio")).cast(hvm.KIND).alias("kind"),
            pl.when(pl.col("dir_bit") == 1).then(pl.lit("read")).otherwise(pl.lit("write")).cast(hvm.DIR).alias("dir"),
            "addr", "data", "size", pl.col("ts_ns").alias("dm_ns"), pl.col("src_offset").alias("dm_off"),
        )
    )  # fmt: skip


class Accesses(NamedTuple):
    """Both records of a bundle's emulated accesses: the device model's IOREQs
    (`device_model_ioreqs`) and the hypervisor's traps (timeline.hvm.accesses), held or
    lazily read from where the timeline spilled them."""

    dm: pl.DataFrame | pl.LazyFrame
    hv: pl.DataFrame | pl.LazyFrame


def accesses(ev: pl.LazyFrame, exits: pl.DataFrame | None = None) -> Accesses:
    """`exits`: the bundle's timeline.hvm.handled, when the caller has them already."""
    return Accesses(
        device_model_ioreqs(ev), hvm.accesses(hvm.handled(ev) if exits is None else exits)
    )


JOIN_CHUNK_ROWS = 1 << 18  # IOREQs written, requests matched, at a time
TRAP_COLUMNS = ["dom", "cpu", "trap_exit_ns", "trap_entry_ns", "trap_off"]


def join(
    acc: Accesses, clock: Clock | None, spill: Path
) -> tuple[pl.LazyFrame | None, dict | None]:
    """(one row per device-model IOREQ with its trap's dom, cpu, exit_ns and entry_ns on the
    device model's clock (fitted by the timeline), or nulls, written to the parquet file
    `spill` and scanned from it; counts: ioreqs, joined, ioreqs without a trap and how many
    of them came before the hypervisor's trace began, traps at device-model addresses
    without an IOREQ), or Nones without a clock or without IOREQs on both sides. Written,
    not held: the timeline reads a few of its columns, and it is as large as the requests.

    The guest's traps are written beside `spill` first, on the device model's clock, and
    both sides are read from disk a slice at a time: the pairing holds a few narrow numbers
    per IOREQ and trap; the IOREQs' other columns and their traps' are then read, joined
    and written JOIN_CHUNK_ROWS at a time (whole, the IOREQs and their joined copy held
    2.4 GB at 5 M requests; the traps' columns held through the write, 0.45 GB)."""
    if clock is None:
        return None, None
    dm_rows, hv_rows = acc.dm.lazy(), acc.hv.lazy()
    if (
        not dm_rows.select(pl.len()).collect().item()
        or not hv_rows.select(pl.len()).collect().item()
    ):
        return None, None
    addrs = dm_rows.select(pl.col("addr").unique()).collect()["addr"].implode()
    dom = hv_rows.filter(pl.col("addr").is_in(addrs)).select("dom").collect()["dom"].mode()
    guest = hv_rows.filter(pl.col("dom") == (dom[0] if len(dom) else -1))  # the traced one
    traps_at = spill.with_name(spill.stem + "-traps.parquet")
    try:
        guest.select(
            *JOIN_KEY, "dom", "cpu",
            to_device_model(pl.col("exit_ns"), clock).alias("trap_exit_ns"),
            to_device_model(pl.col("entry_ns"), clock).alias("trap_entry_ns"),
            pl.col("src_offset").alias("trap_off"),
        ).sink_parquet(traps_at, row_group_size=TRAP_STEP, **SPILL_OPTIONS)  # fmt: skip
        return _joined(dm_rows, pl.scan_parquet(traps_at), addrs, clock, spill)
    finally:
        traps_at.unlink(missing_ok=True)


JOIN_KEY = ["vcpu", "kind", "dir", "addr"]  # kind and dir: enums (hvm.KIND, hvm.DIR)
TRAP_STEP = 1 << 16  # traps read at a time for a chunk of IOREQs (a row group of their file)


def _joined(
    dm_rows: pl.LazyFrame, traps: pl.LazyFrame, addrs: pl.Series, clock: Clock, spill: Path
) -> tuple[pl.LazyFrame, dict]:
    """`join`, with the guest's traps (`traps`: JOIN_KEY, dom, cpu, trap_exit_ns,
    trap_entry_ns, trap_off) on disk."""
    slack_low = clock.offset_ns - clock.lower_ns  # how far off the clock may be
    slack_up = clock.upper_ns - clock.offset_ns
    res = clock.device_model_resolution_ns - 1  # a stamp truncated to its tick

    # Both sides list the same accesses in the same order per key: number them, find for each
    # IOREQ the last trap the clock allows it to follow, and take the most common index difference
    # per key as that key's shift (the traps before the device model's trace began). Order,
    # not nearest time, then pairs them, so windows that overlap within the clock's bounds
    # cannot swap two neighbours; time only checks each pair. (On arrays of a few columns,
    # 4-byte numbers where they fit: a hash join of every IOREQ and trap on their keys held
    # twice the two tables; 8-byte numbers, the IOREQs' frame and the traps' key columns
    # held through the pairing, 1.6 GB at 15 M IOREQs.)
    dm_key, hv_key, keys = _key_ids(dm_rows, traps, JOIN_KEY)
    dm_ns = dm_rows.select("dm_ns")
    lo, hi = dm_ns.select(pl.col("dm_ns").min().alias("lo"), pl.col("dm_ns").max()).collect().row(0)
    # the IOREQs in time order (as the device model's log lists them, mostly: no copy then),
    # and in the order they are stored: the log's, file by file (one log's IOREQs in time
    # order are)
    by_time = None
    if not _time_ordered(dm_rows):
        by_time = _rows(dm_rows.select(pl.arg_sort_by("dm_ns", "dm_off")).collect())
    stored_at = None  # the row of the i-th IOREQ in file order, None: the i-th
    if not _in_file_order(dm_rows):
        by_file = dm_rows.select(pl.arg_sort_by(pl.col("src_file").cast(pl.String), "dm_off"))
        stored_at = _rows(by_file.collect())
    numbered = _Numbered(
        hv_key, traps.select("trap_exit_ns").collect().to_series().to_numpy(), keys
    )
    del hv_key  # (the traps' columns are read again, in the same order, once paired)
    if by_time is not None:
        dm_key = dm_key[by_time]
    di = _numbers(dm_key, keys)  # each IOREQ's number within its key, in time order

    n = len(dm_key)

    def reaches():  # (each IOREQ's reach, in time order, a slice at a time)
        if by_time is None:
            for start in range(0, n, KEY_SLICE):
                yield dm_ns.slice(start, KEY_SLICE).collect().to_series()
        else:
            ns = dm_ns.collect().to_series()[by_time]
            for start in range(0, n, KEY_SLICE):
                yield ns.slice(start, KEY_SLICE)

    shift = numbered.shifts(dm_key, di, (ns + (res + slack_up) for ns in reaches()))
    row = numbered.rows(dm_key, di, shift)  # each IOREQ's trap by order, or -1 (in time order)
    del numbered, di, shift, dm_key
    if by_time is not None:  # (by row, then in file order)
        row[by_time] = row.copy()
        del by_time
    if stored_at is not None:
        row = row[stored_at]
    in_place = stored_at is None  # (out of file order, the order sorted is no identity)
    # the traps in the device model's trace window at its addresses (those left without an
    # IOREQ are counted)
    in_window = (
        traps.select(
            pl.col("addr").is_in(addrs)
            & (pl.col("trap_entry_ns").fill_null(hi) >= lo)
            & (pl.col("trap_exit_ns") <= hi)
        )
        .collect()
        .to_series()
        .fill_null(False)  # (a trap without an address or exit is in no window)
        .to_numpy()
    )
    trap_cols = traps.select(TRAP_COLUMNS)
    used = np.zeros(len(in_window), bool)  # the traps an IOREQ joined
    first_trap = traps.select(pl.col("trap_exit_ns").min()).collect().item()
    before_trace = None if first_trap is None else first_trap - slack_up - res
    counts = {"joined": 0, "unjoined": 0, "before": 0}
    inside = (
        (pl.col("dm_ns") + res >= pl.col("trap_exit_ns") - slack_up)
        # no entry: the vCPU never came back (the guest's power-off write)
        & (pl.col("dm_ns") <= pl.col("trap_entry_ns") + slack_low).fill_null(True)
    )

    def joined_frames():
        # (IOREQs stored in no file order, e.g. interleaved logs: gathered from all of them)
        every = None if in_place else dm_rows.collect()
        for start in range(0, len(row), JOIN_CHUNK_ROWS):
            rows = row[start : start + JOIN_CHUNK_ROWS]
            if in_place:
                part = dm_rows.slice(start, len(rows)).collect()
            else:
                part = every[stored_at[start : start + JOIN_CHUNK_ROWS]]
            part = (
                part.hstack(rows_at(trap_cols, rows, TRAP_STEP).get_columns())
                .with_columns(inside.fill_null(False).alias("joined"))
                .with_columns([pl.when(pl.col("joined")).then(pl.col(c)).alias(c) for c in TRAP_COLUMNS])
            )  # fmt: skip
            ok = part["joined"].to_numpy()
            used[rows[ok]] = True
            counts["joined"] += int(ok.sum())
            counts["unjoined"] += int((~ok).sum())
            if before_trace is not None:
                counts["before"] += int(
                    part.filter(~pl.col("joined"))["dm_ns"].lt(before_trace).sum()
                )
            yield part.with_columns(pl.col("kind", "dir").cast(pl.String))  # as stored

    schema = (
        dm_rows.head(0).collect().hstack(trap_cols.head(0).collect().get_columns())
        .with_columns(pl.lit(False).alias("joined"), pl.col("kind", "dir").cast(pl.String))
        .schema
    )  # fmt: skip
    sink_frames(joined_frames, schema, spill)
    left = int(np.count_nonzero(in_window & ~used))
    return pl.scan_parquet(spill), {
        "ioreqs": n,
        "joined": counts["joined"],
        "ioreqs_without_trap": counts["unjoined"],
        # an IOREQ before the guest's first traced trap (less the clock's reach) was handled
        # before the hypervisor's trace began: it has no trap to find
        "ioreqs_before_trace": counts["before"],
        "traps_without_ioreq": int(left),
        "method": "IOREQs and traps of each vCPU, kind, direction and address paired in order"
        " (aligned where the IOREQ stamps fall), each inside its trap's exit..entry window"
        " (clock bounds added)",
    }


def _index_type(n: int) -> type:
    """The narrowest of int32 and int64 numbering `n` rows (and -1)."""
    return np.int32 if n < 1 << 31 else np.int64


def _rows(order: pl.DataFrame) -> np.ndarray:
    """A one-column frame of row numbers as an array of `_index_type`."""
    rows = order.to_series().to_numpy()
    return rows.astype(_index_type(len(rows)), copy=False)


# rows whose key ids are found, or whose order is checked, at a time (whole, the key
# columns of both sides and their ids were held together: 1.4 GB at 15 M IOREQs)
KEY_SLICE = 1 << 20


def _key_ids(
    dm: pl.LazyFrame | pl.DataFrame, hv: pl.LazyFrame | pl.DataFrame, key: list[str]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Each IOREQ's and each trap's `key` as a dense id, the same on both sides (-1: a key
    with a null, which pairs with nothing), and how many keys there are: the distinct keys
    of both sides numbered in order, then each side's rows looked up KEY_SLICE at a time."""
    sides = [dm.lazy().select(key), hv.lazy().select(key)]
    known = pl.all_horizontal(pl.col(key).is_not_null())
    found = pl.concat([s.filter(known).unique() for s in sides], how="vertical_relaxed")
    found = found.unique().sort(key).collect()
    found = found.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("_id"))
    narrow = _index_type(len(found))
    ids = []
    for side in sides:
        out = np.empty(side.select(pl.len()).collect().item(), narrow)
        for lo in range(0, len(out), KEY_SLICE):
            part = side.slice(lo, KEY_SLICE).collect().cast(found.drop("_id").schema)
            part = part.join(found, on=key, how="left", maintain_order="left")["_id"]
            out[lo : lo + len(part)] = part.fill_null(-1).to_numpy()
        ids.append(out)
    return ids[0], ids[1], len(found)


def _holds_throughout(rows: pl.LazyFrame | pl.DataFrame, test: pl.Expr) -> bool:
    """Whether `test` (of a row and those before it) holds on every slice of KEY_SLICE rows
    and the next one's first, so across the slices' edges too."""
    rows = rows.lazy()
    return all(
        rows.slice(lo, KEY_SLICE + 1).select(test).collect().item()
        for lo in range(0, rows.select(pl.len()).collect().item(), KEY_SLICE)
    )


def _time_ordered(dm: pl.LazyFrame | pl.DataFrame) -> bool:
    """Whether the rows are in order of (dm_ns, dm_off), a null time in order with any (at
    15 M IOREQs the whole columns' differences held 137 MiB of temporaries)."""
    ordered = (
        (pl.col("dm_ns").diff() > 0)
        | ((pl.col("dm_ns").diff() == 0) & (pl.col("dm_off") >= pl.col("dm_off").shift()))
    ).fill_null(True).all()  # fmt: skip
    return _holds_throughout(dm.lazy().select("dm_ns", "dm_off"), ordered)


def _in_file_order(dm: pl.LazyFrame | pl.DataFrame) -> bool:
    """Whether the IOREQs are in order of (file, offset), as the stored table lists them."""
    f, o = pl.col("src_file").cast(pl.String), pl.col("dm_off")
    later = (f > f.shift()) | ((f == f.shift()) & (o >= o.shift()))
    return _holds_throughout(dm.lazy().select("src_file", "dm_off"), later.fill_null(True).all())


def _numbers(key: np.ndarray, groups: int) -> np.ndarray:
    """Each row's number among the rows of its key (of `groups`) before it (-1: no key),
    KEY_SLICE rows at a time, counting on from the slices before."""
    out = np.empty(len(key), _index_type(len(key)))
    seen = np.zeros(groups + 1, np.int64)  # per key, rows so far (the last: no key)
    for lo in range(0, len(key), KEY_SLICE):
        part = key[lo : lo + KEY_SLICE]
        part = np.where(part < 0, groups, part)
        order, ranked, first, end = _key_runs(part)
        within = np.arange(len(ranked)) - np.repeat(first, end - first)
        out[lo + order] = within + seen[ranked]
        seen[ranked[first]] += end - first
    out[key < 0] = -1
    return out


def _key_runs(key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The rows sorted by `key` (ties in row order), their keys in that order, and where
    each key's run of them starts and ends."""
    order = np.argsort(key, kind="stable")
    ranked = key[order]
    starts = np.flatnonzero(np.r_[len(ranked) > 0, ranked[1:] != ranked[:-1]])
    return order, ranked, starts, np.append(starts[1:], len(ranked))[: len(starts)]


class _Numbered:
    """Rows numbered per key (of `groups`) in the order of `by` (ties in row order), sorted
    by key then number, to find a key's k-th row."""

    def __init__(self, key: np.ndarray, by: np.ndarray, groups: int):
        from xvtrace.timeline import ioreq_kernel  # numba only to build (hvm_kernel's note)

        # the rows of each key in row order (a counting sort into 4-byte row numbers: a
        # lexsort's 8-byte order and its keys' copy held 12 bytes a trap more), then each
        # key's rows put in order of `by` where they are not already (ties in row order)
        self.start = np.zeros(groups + 1, np.int64)  # where each key's rows begin, + the end
        self.order = np.empty(int(np.count_nonzero(key >= 0)), _index_type(len(key)))
        ioreq_kernel.rows_by_key(key, self.start, self.order)
        self.by = by[self.order]
        for a, b in zip(self.start[:-1].tolist(), self.start[1:].tolist(), strict=True):
            mine = self.by[a:b]
            if not (mine[1:] >= mine[:-1]).all():  # (a NaN, a time not known, sorts last)
                o = np.argsort(mine, kind="stable")
                self.order[a:b] = self.order[a:b][o]
                self.by[a:b] = mine[o]

    def shifts(self, key: np.ndarray, index: np.ndarray, reaches: Iterator[pl.Series]):
        """Per key, the most common difference (the least of several) between the number of
        the last of these rows at or before each time of that key (`reaches`: those of the
        rows of `key`, in slices of KEY_SLICE in order; null: a time that is not known) and
        its `index` there. None where no key has one."""
        if not len(self.by):
            return None
        # per key, how many of this side's rows lie at or before each time (a row at that
        # very time first): a search in the key's own run of `by`, sorted; the differences
        # are counted per key a slice at a time. (One search over both sides' times ranked
        # together held 1.5 GB more at 15 M IOREQs.)
        tallies: dict[int, dict[int, int]] = {}
        for lo, reach in zip(range(0, len(key), KEY_SLICE), reaches, strict=True):
            part, number = key[lo : lo + len(reach)], index[lo : lo + len(reach)]
            use = (part >= 0) & reach.is_not_null().to_numpy()
            t = reach.fill_null(0).to_numpy()[use]
            part, number = part[use], number[use]
            by_key, ranked, firsts, ends = _key_runs(part)
            for k, a, b in zip(ranked[firsts], firsts, ends, strict=True):
                rows = by_key[a:b]
                mine = self.by[self.start[k] : self.start[k + 1]]
                before = np.searchsorted(mine, t[rows], side="right")
                found = before > 0
                if found.any():
                    diffs, counts = np.unique(
                        before[found] - 1 - number[rows][found], return_counts=True
                    )
                    tally = tallies.setdefault(int(k), {})
                    for d, c in zip(diffs.tolist(), counts.tolist(), strict=True):
                        tally[d] = tally.get(d, 0) + c
        if not tallies:
            return None
        shift = np.zeros(len(self.start) - 1, np.int64)
        has = np.zeros(len(self.start) - 1, bool)
        for k, tally in tallies.items():  # (the most common, then the least)
            shift[k] = min(tally, key=lambda d: (-tally[d], d))
            has[k] = True
        return shift, has

    def rows(self, key: np.ndarray, index: np.ndarray, shift) -> np.ndarray:
        """The original row of the (index + key's shift)-th row of each key, or -1 (a
        JOIN_CHUNK_ROWS slice at a time: each row's answer is its own)."""
        out = np.full(len(key), -1, _index_type(len(self.order)))
        if shift is None:
            return out
        shift, has = shift
        sizes = self.start[1:] - self.start[:-1]
        for lo in range(0, len(key), JOIN_CHUNK_ROWS):
            part = key[lo : lo + JOIN_CHUNK_ROWS]
            ok = part >= 0
            ok[ok] = has[part[ok]]
            k = index[lo : lo + JOIN_CHUNK_ROWS][ok] + shift[part[ok]]
            inside = (k >= 0) & (k < sizes[part[ok]])
            where = np.flatnonzero(ok)[inside]
            out[lo + where] = self.order[self.start[part[where]] + k[inside]]
        return out


def sequence_pairs(acc: Accesses, *, run: int = 2000) -> pl.DataFrame | None:
    """IOREQs paired with their traps by order, for a clock fit when no other pairs exist
    (no virtio queue notify: an emulated disk, a device model that logs only IOREQs).

    Per vCPU, the device model's IOREQs and the traps at the addresses it handles are the
    same sequence of (kind, direction, address), except at the edges of the two traces
    (either may begin first): the offset where one side's first accesses reappear in the
    other aligns them, and only the run that agrees access for access from there is kept
    (`run` bounds the comparisons that choose among the offsets). Columns as
    `clock.notify_pairs` (last_ns = handle_ns: only the IOREQ's first record is sure to come
    before its completion). None when nothing aligns."""
    dm = acc.dm.lazy().collect()
    if not len(dm):
        return None
    hv = acc.hv.lazy().filter(pl.col("addr").is_in(dm["addr"].unique().to_list())).collect()
    token = pl.concat_str(pl.col("kind", "dir").cast(pl.Utf8), pl.col("addr").cast(pl.Utf8)).hash()
    out = []
    for (vcpu,), d in dm.with_columns(token.alias("t")).sort("dm_off").group_by("vcpu"):
        for _, h in (
            hv.filter(pl.col("vcpu") == vcpu)
            .with_columns(token.alias("t"))
            .sort("exit_ns")
            .group_by("dom")
        ):
            dt, ht = d["t"].to_numpy(), h["t"].to_numpy()
            found = _align(dt, ht, d["dm_ns"].to_numpy(), h["exit_ns"].to_numpy(), run)
            if found is None:
                continue
            i, j, k = found  # dm[i:i+k] are the traps hv[j:j+k]
            out.append(
                pl.concat(
                    [
                        h.slice(j, k).select("dom", "vcpu", "cpu", "exit_ns", "entry_ns"),
                        d.slice(i, k).select(
                            pl.col("dm_off").alias("handle_off"),
                            pl.col("dm_ns").alias("handle_ns"),
                            pl.col("dm_ns").alias("last_ns"),
                        ),
                    ],
                    how="horizontal",
                )
            )
    pairs = pl.concat(out).filter(pl.col("entry_ns").is_not_null()) if out else None
    return pairs if pairs is not None and len(pairs) else None


def _align(dt, ht, dm_ns, hv_ns, run: int):
    """(i, j, k): the device model's accesses dt[i:i+k] are the traps ht[j:j+k]. Candidates
    start where one side's first token reappears in the other (either side may have begun
    first); among those that agree longest (to 90 %, up to `run`), the one whose gaps
    between accesses match best on both clocks wins: a device's accesses repeat (every
    virtio-mmio request is the same QueueNotify, InterruptStatus, InterruptACK), so order
    alone cannot place them, but their timing can. One vectorized comparison per candidate
    offset, not per record. None when nothing agrees."""
    import numpy as np

    def agree(i: int, j: int, cap: int = run) -> int:
        n = min(len(dt) - i, len(ht) - j, cap)
        same = dt[i : i + n] == ht[j : j + n]
        return n if same.all() else int(same.argmin())

    def misfit(i: int, j: int, k: int) -> float:
        if k < 3:
            return float("inf")
        return float(np.median(np.abs(np.diff(dm_ns[i : i + k]) - np.diff(hv_ns[j : j + k]))))

    if not len(dt) or not len(ht):
        return None
    starts = [(0, int(j)) for j in np.flatnonzero(ht == dt[0])]  # the traps began first
    starts += [(int(i), 0) for i in np.flatnonzero(dt == ht[0])]  # the device model did
    scored = [(i, j, agree(i, j)) for i, j in starts]
    longest = max((k for _, _, k in scored), default=0)
    if not longest:
        return None
    i, j, _ = min((c for c in scored if c[2] >= 0.9 * longest), key=lambda c: misfit(*c))
    # the chosen alignment as far as it agrees: pairs that span the whole trace show the
    # clocks' drift, which the first `run` accesses (a few seconds) can hide in the
    # exit..entry windows (a nested host drifted 200 ppm: 1.5 ms by the end)
    return i, j, agree(i, j, len(dt))


SEQUENCE_METHOD = (
    "IOREQs (QEMU handle_ioreq) inside their traps' exit..entry (xentrace), paired in order"
)


def kick_traps(keys: pl.DataFrame, joined: pl.LazyFrame | pl.DataFrame) -> pl.DataFrame:
    """Each request's kick trap (trap_exit_ns, trap_entry_ns, trap_dom, trap_vcpu,
    trap_cpu), in request order: the joined IOREQ in whose handling the device model logged
    the request's kick (the last one at or before `kick_off` in its log). `keys`: the
    requests' request, src_file and kick_off.

    Found by binary search in each log's joined IOREQs' offsets, then only those IOREQs'
    columns read, a slice at a time (sorted and as-of joined by log, every joined IOREQ's
    columns were copied three times: 1.9 GiB at 15 M IOREQs)."""
    scan = joined.lazy()
    logs = sorted(set(keys["src_file"].drop_nulls().unique().to_list()))
    where = scan.select(_log_rank("src_file", logs), "dm_off", "joined").collect()
    usable = where["joined"].fill_null(False) & where["dm_off"].is_not_null()
    io_log = where["log"].fill_null(-1).to_numpy()
    io_off = where["dm_off"].fill_null(0).cast(pl.UInt64).to_numpy()
    usable = usable.to_numpy()
    del where
    mine = keys.with_columns(_log_rank("src_file", logs))  # (a column of every key's row)
    kick_log = mine["log"].fill_null(-1).to_numpy()
    # (both offsets as uint64: numpy compares uint64 with int64 as floats)
    kick_off = mine["kick_off"].fill_null(0).cast(pl.UInt64).to_numpy()
    timed = mine["kick_off"].is_not_null().to_numpy()
    at = np.full(len(keys), -1, np.int64)  # each request's IOREQ, a row of `joined`
    for log in range(len(logs)):  # (a few logs: one search each)
        rows = np.flatnonzero(usable & (io_log == log))
        rows = rows[np.argsort(io_off[rows], kind="stable")]
        asked = np.flatnonzero((kick_log == log) & timed)
        last = np.searchsorted(io_off[rows], kick_off[asked], side="right") - 1
        at[asked] = np.where(last >= 0, rows[last.clip(0)] if len(rows) else -1, -1)
    del io_log, io_off, usable
    traps = scan.select(
        "trap_exit_ns", "trap_entry_ns",
        pl.col("dom").alias("trap_dom"), pl.col("vcpu").alias("trap_vcpu"), pl.col("cpu").alias("trap_cpu"),
    )  # fmt: skip
    return in_request_order(keys.select("request"), rows_at(traps, at, JOIN_CHUNK_ROWS))


def _log_rank(column: str, logs: list[str]) -> pl.Expr:
    """A log's place among `logs` (by name; null for another): a chain of whens, which
    streams (replace_strict held every row)."""
    rank = pl.lit(None, pl.Int64)
    for i, name in enumerate(logs):
        rank = pl.when(pl.col(column) == name).then(pl.lit(i, pl.Int64)).otherwise(rank)
    return rank.alias("log")


ISR_OFFSET, ACK_OFFSET, NOTIFY_OFFSET = 0x60, 0x64, 0x50  # virtio-mmio registers


def interrupt_acks(
    keys: pl.LazyFrame | pl.DataFrame, joined: pl.LazyFrame | pl.DataFrame, path: Path
) -> pl.LazyFrame:
    """For virtio-mmio devices, the guest's side of each request's interrupt, in request
    order (`keys`: the requests' request, src_file, kick_off and notify_ns, read a chunk at
    a time when it is a scan of them in request order): the first
    InterruptStatus read after the device's notify (isr_read_ns, isr_read_trap_exit_ns,
    isr_read_trap_entry_ns) and the first InterruptACK write after that (ack_ns,
    ack_trap_exit_ns, ack_trap_entry_ns), from the joined IOREQs (device-model clock),
    written to the parquet file `path` and scanned from it. Requests of other devices get
    nulls. The window is the kick IOREQ's address less the QueueNotify offset. The IOREQs
    (in their file order, as `join` writes them) are read a slice at a time, only the rows
    and columns kept; the requests are matched and written JOIN_CHUNK_ROWS at a time (each
    request's match is its own; concatenated, the answers of 5 M requests held 0.24 GB)."""
    # the log's name as a category on both sides (the joins' keys: as strings, a join on
    # two keys row-encoded them for every request)
    log = pl.col("src_file").cast(pl.Categorical)
    # each IOREQ's window when it is a QueueNotify write (null otherwise): a kick's is that of
    # the last IOREQ before it, so of a run of IOREQs with the same one only the first is kept
    # (an IOREQ per request of three at 5 M requests)
    base = pl.when(pl.col("addr") % 0x1000 == NOTIFY_OFFSET).then(pl.col("addr") - NOTIFY_OFFSET)
    mmio = pl.col("joined") & (pl.col("kind") == "mmio")
    first = pl.col("_base").ne_missing(pl.col("_base").shift().over("src_file"))

    registers = {"isr_read": (ISR_OFFSET, "read"), "ack": (ACK_OFFSET, "write")}
    with tempfile.TemporaryDirectory(prefix="acks-", dir=path.parent) as runs:
        kicks = AsofRuns(Path(runs), "kicks", ["src_file"], "kick_io_off")
        found = {p: AsofRuns(Path(runs), p, ["src_file", "_base"], f"{p}_ns") for p in registers}
        last = None
        columns = [log, "dm_off", "addr", "dir", "dm_ns", "trap_exit_ns", "trap_entry_ns"]
        for part in _slices(joined, mmio, columns):  # (one pass over the IOREQs for all three)
            for prefix, (offset, direction) in registers.items():
                found[prefix].add(_register(part, offset, direction, prefix))
            part = part.select(
                "src_file", pl.col("dm_off").alias("kick_io_off"), base.alias("_base")
            )
            both = part if last is None else pl.concat([last, part])  # (its run may go on)
            kicks.add(part.filter(both.select(first).to_series().slice(len(both) - len(part))))
            last = part.tail(1) if len(part) else last
        kicks.seal()
        isr, ack = (found[prefix].seal() for prefix in registers)
        _match_acks(keys, kicks, isr, ack, path)
    return pl.scan_parquet(path)


def _match_acks(keys, kicks: AsofRuns, isr: AsofRuns, ack: AsofRuns, path: Path) -> None:
    """interrupt_acks' answers from its three tables, JOIN_CHUNK_ROWS requests at a time."""
    log = pl.col("src_file").cast(pl.Categorical)

    def after(frame, on, regs):
        return regs.asof(frame.sort(on, nulls_last=True), on, "forward")

    def matched(part: pl.DataFrame) -> pl.DataFrame:
        part = part.with_columns(log)
        out = kicks.asof(part.sort("kick_off", nulls_last=True), "kick_off", "backward")
        out = after(after(out, "notify_ns", isr), "isr_read_ns", ack)
        found = out.drop(*part.columns, "kick_io_off", "_base")
        return in_request_order(out.select("request"), found)

    keys = keys.lazy()
    if keys.select((pl.col("request").diff() < 0).any()).collect().item():
        keys = keys.sort("request").collect().lazy()  # (the chunks' answers go in order)
    n = keys.select(pl.len()).collect().item()

    def answers():
        for lo in range(0, n, JOIN_CHUNK_ROWS):
            yield matched(keys.slice(lo, JOIN_CHUNK_ROWS).collect())

    sink_frames(answers, matched(keys.head(0).collect()).schema, path, **SPILL_OPTIONS)


def _register(part: pl.DataFrame, offset: int, direction: str, prefix: str) -> pl.DataFrame:
    """Of joined MMIO IOREQs, the reads or writes (`direction`) of a virtio-mmio register
    (`offset`): the device's window (_base) and the IOREQ's and its trap's times."""
    return part.filter((pl.col("addr") % 0x1000 == offset) & (pl.col("dir") == direction)).select(
        "src_file",
        (pl.col("addr") - offset).alias("_base"),
        pl.col("dm_ns").alias(f"{prefix}_ns"),
        pl.col("trap_exit_ns").alias(f"{prefix}_trap_exit_ns"),
        pl.col("trap_entry_ns").alias(f"{prefix}_trap_entry_ns"),
    )


def _slices(
    rows: pl.LazyFrame | pl.DataFrame, keep: pl.Expr, columns: list[pl.Expr]
) -> Iterator[pl.DataFrame]:
    """`rows.filter(keep).select(columns)`, in order, read JOIN_CHUNK_ROWS rows of `rows`
    at a time (collected whole, the scan's streaming held 0.3 GB more at 15 M IOREQs)."""
    rows = rows.lazy()  # (one slice at least: the columns' types of no rows)
    for lo in range(0, max(rows.select(pl.len()).collect().item(), 1), JOIN_CHUNK_ROWS):
        yield rows.slice(lo, JOIN_CHUNK_ROWS).filter(keep).select(columns).collect()


def in_request_order(ids: pl.DataFrame, found: pl.DataFrame) -> pl.DataFrame:
    """`found` (a row per request, `ids` naming each row's request) in request order."""
    return found.select(pl.all().gather(ids["request"].arg_sort()))
