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

from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from xvtrace.parsers import fields
from xvtrace.timeline import hvm
from xvtrace.timeline.clock import Clock, to_device_model

IOREQS = "ioreqs.parquet"


def device_model_ioreqs(ev: pl.LazyFrame) -> pl.DataFrame:
    """QEMU's handle_ioreq records: src_file, slot, vcpu (slot order), kind, dir, addr, data,
    size, dm_ns, dm_off. Config-space IOREQs (type 2) and the mapcache's (8) have no trap."""

    def arg(name: str) -> pl.Expr:
        return fields.qemu("handle_ioreq", name)

    # the log's name as a category while the slots are joined (on its string, the join
    # row-encoded it for every IOREQ)
    io = (
        ev.filter(pl.col("event") == "qemu.handle_ioreq")
        .select("ts_ns", pl.col("src_file").cast(pl.Categorical), "src_offset", "addr", "size",
                arg("req").alias("slot"), arg("type"), arg("dir").alias("dir_bit"), arg("data"))
        .collect()
    )  # fmt: skip
    slots = io.select("src_file", "slot").unique().sort("src_file", "slot")
    slots = slots.with_columns(pl.int_range(pl.len()).over("src_file").cast(pl.Int32).alias("vcpu"))
    return (
        io.filter(pl.col("type").is_in([0, 1]))
        .join(slots, on=["src_file", "slot"])
        .select(
            pl.col("src_file").cast(pl.String), "slot", "vcpu",
            pl.when(pl.col("type") == 1).then(pl.lit("mmio")).otherwise(pl.lit("pio")).cast(hvm.KIND).alias("kind"),
            pl.when(pl.col("dir_bit") == 1).then(pl.lit("read")).otherwise(pl.lit("write")).cast(hvm.DIR).alias("dir"),
            "addr", "data", "size", pl.col("ts_ns").alias("dm_ns"), pl.col("src_offset").alias("dm_off"),
        )
    )  # fmt: skip


class Accesses(NamedTuple):
    """Both records of a bundle's emulated accesses, read once: the device model's IOREQs
    (`device_model_ioreqs`) and the hypervisor's traps (timeline.hvm.accesses)."""

    dm: pl.DataFrame
    hv: pl.DataFrame


def accesses(ev: pl.LazyFrame, exits: pl.DataFrame | None = None) -> Accesses:
    """`exits`: the bundle's timeline.hvm.handled, when the caller has them already."""
    return Accesses(
        device_model_ioreqs(ev), hvm.accesses(hvm.handled(ev) if exits is None else exits)
    )


def join(
    acc: Accesses, clock: Clock | None, spill: Path
) -> tuple[pl.LazyFrame | None, dict | None]:
    """(one row per device-model IOREQ with its trap's dom, cpu, exit_ns and entry_ns on the
    device model's clock (fitted by the timeline), or nulls, written to the parquet file
    `spill` and scanned from it; counts: ioreqs, joined, ioreqs without a trap and how many
    of them came before the hypervisor's trace began, traps at device-model addresses
    without an IOREQ), or Nones without a clock or without IOREQs on both sides. Written,
    not held: the timeline reads a few of its columns, and it is as large as the requests."""
    dm, hv = acc
    del acc  # the caller hands them over: each original goes when its copy is made
    if clock is None or not len(dm) or not len(hv):
        return None, None
    dom = hv.filter(pl.col("addr").is_in(dm["addr"].unique().to_list()))["dom"].mode()
    hv = hv.filter(pl.col("dom") == (dom[0] if len(dom) else -1))  # the traced guest
    key = ["vcpu", "kind", "dir", "addr"]  # kind and dir: enums (hvm.KIND, hvm.DIR)
    hv = hv.with_columns(
        to_device_model(pl.col("exit_ns"), clock).alias("trap_exit_ns"),
        to_device_model(pl.col("entry_ns"), clock).alias("trap_entry_ns"),
        pl.col("src_offset").alias("trap_off"),
    ).drop("exit_ns", "entry_ns", "src_offset")
    slack_low = clock.offset_ns - clock.lower_ns  # how far off the clock may be
    slack_up = clock.upper_ns - clock.offset_ns
    res = clock.device_model_resolution_ns - 1  # a stamp truncated to its tick

    # Both sides list the same accesses in the same order per key: number them, find for each
    # IOREQ the last trap the clock allows it to follow, and take the most common index difference
    # per key as that key's shift (the traps before the device model's trace began). Order,
    # not nearest time, then pairs them, so windows that overlap within the clock's bounds
    # cannot swap two neighbours; time only checks each pair. (On arrays of a few columns:
    # a hash join of every IOREQ and trap on their keys held twice the two tables.)
    in_order = dm.select(  # as the device model's log lists them, mostly: no copy then
        ((pl.col("dm_ns").diff() > 0) | ((pl.col("dm_ns").diff() == 0) & (pl.col("dm_off").diff() >= 0)))
        .fill_null(True).all()
    ).item()  # fmt: skip
    if not in_order:
        dm = dm.sort("dm_ns", "dm_off")
    dm_key, hv_key, keys = _key_ids(dm, hv, key)
    traps = _Numbered(hv_key, hv["trap_exit_ns"].to_numpy(), keys)
    di = _Numbered(dm_key, np.arange(len(dm)), keys).index
    reach = dm.select(pl.col("dm_ns") + res + slack_up).to_series()
    shift = traps.shifts(dm_key, di, reach.fill_null(0).to_numpy(), reach.is_not_null().to_numpy())
    row = traps.rows(dm_key, di, shift)  # each IOREQ's trap by order, or -1
    del traps, di, shift, dm_key, hv_key
    at = pl.Series(row).set(pl.Series(row < 0), None)
    trap_cols = ["dom", "cpu", "trap_exit_ns", "trap_entry_ns", "trap_off"]
    inside = (
        (pl.col("dm_ns") + res >= pl.col("trap_exit_ns") - slack_up)
        # no entry: the vCPU never came back (the guest's power-off write)
        & (pl.col("dm_ns") <= pl.col("trap_entry_ns") + slack_low).fill_null(True)
    )
    joined = (
        dm.hstack([hv[c].gather(at) for c in trap_cols])
        .with_columns(inside.fill_null(False).alias("joined"))
        .with_columns([pl.when(pl.col("joined")).then(pl.col(c)).alias(c) for c in trap_cols])
    )
    del at, row
    if not _in_file_order(dm):  # (one log's IOREQs in time order are: no copy to sort then)
        joined = joined.sort("src_file", "dm_off")
    joined.with_columns(pl.col("kind", "dir").cast(pl.String)).write_parquet(spill)  # as stored
    joined = pl.scan_parquet(spill)
    # traps in the device model's trace window at its addresses, left without an IOREQ
    lo, hi = dm["dm_ns"].min(), dm["dm_ns"].max()
    window = hv.filter(
        pl.col("addr").is_in(dm["addr"].unique().to_list())
        & (pl.col("trap_entry_ns").fill_null(hi) >= lo)
        & (pl.col("trap_exit_ns") <= hi)
    )
    used, unjoined, n_joined = pl.collect_all([
        joined.filter(pl.col("joined")).select("trap_off"),
        joined.filter(~pl.col("joined")).select("dm_ns"),
        joined.select(pl.col("joined").sum()),
    ])  # fmt: skip
    used = used["trap_off"]
    # an IOREQ before the guest's first traced trap (less the clock's reach) was handled
    # before the hypervisor's trace began: it has no trap to find
    first_trap = hv["trap_exit_ns"].min()
    before = (
        0 if first_trap is None else int((unjoined["dm_ns"] < first_trap - slack_up - res).sum())
    )
    counts = {
        "ioreqs": len(dm),
        "joined": n_joined.item(),
        "ioreqs_without_trap": len(unjoined),
        "ioreqs_before_trace": before,
        "traps_without_ioreq": int((~window["trap_off"].is_in(used.implode())).sum()),
        "method": "IOREQs and traps of each vCPU, kind, direction and address paired in order"
        " (aligned where the IOREQ stamps fall), each inside its trap's exit..entry window"
        " (clock bounds added)",
    }
    return joined, counts


def _key_ids(
    dm: pl.DataFrame, hv: pl.DataFrame, key: list[str]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Each IOREQ's and each trap's `key` as a dense id, the same on both sides (-1: a key
    with a null, which pairs with nothing), and how many keys there are."""
    keys = (
        pl.concat([dm.select(key).unique(), hv.select(key).unique()])
        .unique()
        .drop_nulls()
        .with_row_index("_id")
    )

    def ids(side: pl.DataFrame) -> np.ndarray:
        found = side.select(key).join(keys, on=key, how="left", maintain_order="left")["_id"]
        return found.cast(pl.Int64).fill_null(-1).to_numpy()

    return ids(dm), ids(hv), len(keys)


class _Numbered:
    """Rows numbered per key (of `groups`) in the order of `by` (ties in row order): `index`
    (-1 where the key is -1), and the rows sorted by key then number, to find a key's k-th
    row."""

    def __init__(self, key: np.ndarray, by: np.ndarray, groups: int):
        order = np.lexsort((by, key))
        skip = int(np.searchsorted(key[order], 0))  # the rows of no key sort first
        self.order, self.key, self.by = order[skip:], key[order[skip:]], by[order[skip:]]
        self.start = np.searchsorted(self.key, np.arange(groups + 1))  # + the end
        self.index = np.full(len(key), -1, np.int64)
        self.index[self.order] = np.arange(len(self.order)) - self.start[self.key]

    def shifts(self, key: np.ndarray, index: np.ndarray, t: np.ndarray, timed: np.ndarray):
        """Per key, the most common difference (the least of several) between the number of
        the last of these rows at or before each `t` of that key and its `index` there;
        `timed` False: a time that is not known. None where no key has one."""
        use = (key >= 0) & timed
        key, index, t = key[use], index[use], t[use]
        if not len(self.key) or not len(key):
            return None
        # per key, how many of this side's rows lie at or before each time (a row at that
        # very time first): a search in the key's own run of `by`, sorted. (One search over
        # both sides' times ranked together held 1.5 GB more at 15 M IOREQs.)
        before = np.empty(len(key), np.int64)
        by_key = np.argsort(key, kind="stable")
        keys, firsts = np.unique(key[by_key], return_index=True)
        for k, lo, hi in zip(keys, firsts, [*firsts[1:], len(key)], strict=True):
            rows = by_key[lo:hi]
            mine = self.by[self.start[k] : self.start[k + 1]]
            before[rows] = np.searchsorted(mine, t[rows], side="right")
        del by_key
        found = before > 0
        key, diff = key[found], before[found] - 1 - index[found]
        if not len(key):
            return None
        order = np.lexsort((diff, key))  # runs of one (key, difference), smallest first
        key, diff = key[order], diff[order]
        run = np.flatnonzero(np.r_[True, (key[1:] != key[:-1]) | (diff[1:] != diff[:-1])])
        count = np.diff(np.r_[run, len(key)])
        rkey, rdiff = key[run], diff[run]
        best = np.lexsort((rdiff, -count, rkey))  # per key: most common, then smallest
        first = best[np.r_[True, rkey[best][1:] != rkey[best][:-1]]]
        shift = np.zeros(len(self.start) - 1, np.int64)
        has = np.zeros(len(self.start) - 1, bool)
        shift[rkey[first]], has[rkey[first]] = rdiff[first], True
        return shift, has

    def rows(self, key: np.ndarray, index: np.ndarray, shift) -> np.ndarray:
        """The original row of the (index + key's shift)-th row of each key, or -1."""
        out = np.full(len(key), -1, np.int64)
        if shift is None:
            return out
        shift, has = shift
        ok = key >= 0
        ok[ok] = has[key[ok]]
        k = index[ok] + shift[key[ok]]
        size = (self.start[1:] - self.start[:-1])[key[ok]]
        inside = (k >= 0) & (k < size)
        where = np.flatnonzero(ok)[inside]
        out[where] = self.order[self.start[key[where]] + k[inside]]
        return out


def _in_file_order(dm: pl.DataFrame) -> bool:
    """Whether the IOREQs are in order of (file, offset), as the stored table lists them."""
    f, o = pl.col("src_file"), pl.col("dm_off")
    later = (f > f.shift()) | ((f == f.shift()) & (o >= o.shift()))
    return dm.select(later.fill_null(True).all()).item()


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
    dm = acc.dm
    if not len(dm):
        return None
    hv = acc.hv.filter(pl.col("addr").is_in(dm["addr"].unique().to_list()))
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
    requests' request, src_file and kick_off."""
    traps_ = (
        joined.lazy()
        .filter(pl.col("joined"))
        .select(
            "src_file", "dm_off", "trap_exit_ns", "trap_entry_ns",
            pl.col("dom").alias("trap_dom"), pl.col("vcpu").alias("trap_vcpu"), pl.col("cpu").alias("trap_cpu"),
        )
        .sort("dm_off")
        .collect()
    )  # fmt: skip
    out = keys.sort("kick_off", nulls_last=True).join_asof(
        traps_, left_on="kick_off", right_on="dm_off", by="src_file", strategy="backward",
        check_sortedness=False,
    )  # fmt: skip
    return in_request_order(out.select("request"), out.drop(*keys.columns, "dm_off"))


ISR_OFFSET, ACK_OFFSET, NOTIFY_OFFSET = 0x60, 0x64, 0x50  # virtio-mmio registers


def interrupt_acks(keys: pl.DataFrame, joined: pl.LazyFrame | pl.DataFrame) -> pl.DataFrame:
    """For virtio-mmio devices, the guest's side of each request's interrupt, in request
    order (`keys`: the requests' request, src_file, kick_off and notify_ns): the first
    InterruptStatus read after the device's notify (isr_read_ns, isr_read_trap_exit_ns,
    isr_read_trap_entry_ns) and the first InterruptACK write after that (ack_ns,
    ack_trap_exit_ns, ack_trap_entry_ns), from the joined IOREQs (device-model clock).
    Requests of other devices get nulls. The window is the kick IOREQ's address less the
    QueueNotify offset."""
    # the log's name as a category on both sides (the joins' keys: as strings, a join on
    # two keys row-encoded them for every request)
    log = pl.col("src_file").cast(pl.Categorical)
    io = (
        joined.lazy()
        .filter(pl.col("joined") & (pl.col("kind") == "mmio"))
        .select(log, "dm_off", "addr", "dir", "dm_ns", "trap_exit_ns", "trap_entry_ns")
        .collect()
    )
    keys = keys.with_columns(log)
    kicks = io.select(
        "src_file", pl.col("dm_off").alias("kick_io_off"), pl.col("addr").alias("kick_addr")
    )
    out = keys.sort("kick_off", nulls_last=True).join_asof(
        kicks.sort("kick_io_off"), left_on="kick_off", right_on="kick_io_off", by="src_file",
        strategy="backward", check_sortedness=False,
    )  # fmt: skip
    base = pl.when(pl.col("kick_addr") % 0x1000 == NOTIFY_OFFSET).then(
        pl.col("kick_addr") - NOTIFY_OFFSET
    )
    out = out.with_columns(base.alias("_base"))

    def after(frame, on, offset, direction, prefix):
        regs = io.filter((pl.col("addr") % 0x1000 == offset) & (pl.col("dir") == direction)).select(
            "src_file",
            (pl.col("addr") - offset).alias("_base"),
            pl.col("dm_ns").alias(f"{prefix}_ns"),
            pl.col("trap_exit_ns").alias(f"{prefix}_trap_exit_ns"),
            pl.col("trap_entry_ns").alias(f"{prefix}_trap_entry_ns"),
        )
        return (
            frame.sort(on, nulls_last=True)
            .join_asof(regs.sort(f"{prefix}_ns"), left_on=on, right_on=f"{prefix}_ns",
                       by=["src_file", "_base"], strategy="forward", check_sortedness=False)
        )  # fmt: skip

    out = after(out, "notify_ns", ISR_OFFSET, "read", "isr_read")
    out = after(out, "isr_read_ns", ACK_OFFSET, "write", "ack")
    found = out.drop(*keys.columns, "kick_io_off", "kick_addr", "_base")
    return in_request_order(out.select("request"), found)


def in_request_order(ids: pl.DataFrame, found: pl.DataFrame) -> pl.DataFrame:
    """`found` (a row per request, `ids` naming each row's request) in request order."""
    return found.select(pl.all().gather(ids["request"].arg_sort()))


def by_request(req: pl.DataFrame, ids: pl.DataFrame, found: pl.DataFrame) -> pl.DataFrame:
    """`req` sorted by request, with `found`'s columns (one row per request, `ids` naming
    each row's request) appended: computed on a narrow frame, added without copying `req`'s
    columns more than once."""
    found = in_request_order(ids, found)
    if not req["request"].is_sorted():
        req = req.sort("request")
    return req.hstack(found.get_columns())
