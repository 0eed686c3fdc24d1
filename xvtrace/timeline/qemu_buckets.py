"""The device model's requests (timeline.qemu) built a share of the elements at a time.

An element's row comes from its own events (qemu.ELEMENT_EVENTS, keyed by its pointer) and
from its queue's kicks and notifies. So the elements, put into buckets by pointer, are
paired one bucket at a time, each bucket's rows written in (src_file, pop_off) order; the
buckets are then merged in that order a slice at a time, each slice given its queues' kicks
and notifies from the runs of them on disk its offsets fall in (`_queue_runs`) and written.
What is held is one bucket's pairing and a slice, not the whole capture's pairing (2.2 GB
at 5 M requests, built at once).

QEMU reuses a few element pointers (the emulated 5 M request capture pops from 7, one of
them 1.55 M times), so a pointer's hash alone filled one bucket of five with 2.7 M pops;
the pointers popped most are dealt out by count instead (`_bucket_of`). A pointer popped
more than half a bucket (at queue depth 1, QEMU pops one element for every request: 2 M
times in a 2 M request capture) is dealt out in pieces of its pops, cut where it owes no
fill (`_pieces`), so no bucket holds much more than ELEMENTS_PER_BUCKET pops.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl

from xvtrace.bundle import file_order
from xvtrace.bundle.frame_sink import SPILL_OPTIONS, sink_frames
from xvtrace.timeline import qemu
from xvtrace.timeline.asof_runs import AsofRuns

ELEMENTS_PER_BUCKET = 1_000_000  # pops paired at a time
SLICE_ROWS = 1 << 16  # requests merged, joined and written at a time (1 << 18: 0.3 GiB more)
FILE_SPAN = file_order.FILE_SPAN  # merge key = file rank * this + offset


def write_requests(ev: pl.LazyFrame, spill: Path, path: Path) -> None:
    """qemu.requests(ev), written to the parquet file `path` (`spill`: a directory for the
    buckets)."""
    # the events the build reads, once (each bucket then reads this, not the whole table)
    events = spill / "dm_events.parquet"
    ev.filter((pl.col("source") == "qemu") & pl.col("event").is_in(qemu.EVENTS)).sink_parquet(
        events, **SPILL_OPTIONS
    )
    q = qemu.events_of(pl.scan_parquet(events))
    in_bucket, buckets = _bucket_of(q, spill / "dm_pieces.parquet")
    parts = []
    for b in range(buckets):
        other = pl.col("event").is_in(qemu.ELEMENT_EVENTS) & ~in_bucket(b)
        part = spill / f"dm_elements_{b}.parquet"
        qemu.element_requests(q.filter(~other)).sink_parquet(part, **SPILL_OPTIONS)
        parts.append(pl.scan_parquet(part))
    queues = qemu.QueueEvents.of(q)
    schema = qemu.with_queue_events(parts[0].head(0), queues).collect_schema()
    runs = [spill / f"dm{off}_runs" for _, _, off in qemu.QUEUE_EVENTS]
    try:
        kicks, irqs = (
            _queue_runs(q, *side, at) for side, at in zip(qemu.QUEUE_EVENTS, runs, strict=True)
        )
        sink_frames(lambda: _merged(parts, partial(_requests, kicks, irqs)), schema, path,
                    **SPILL_OPTIONS)  # fmt: skip
    finally:  # (the spill directory goes at the build's end; these can go now)
        for b in range(buckets):
            (spill / f"dm_elements_{b}.parquet").unlink(missing_ok=True)
        events.unlink(missing_ok=True)
        for at in runs:
            shutil.rmtree(at, ignore_errors=True)


def _queue_runs(q: pl.LazyFrame, names: list[str], ns: str, off: str, directory: Path) -> AsofRuns:
    """A queue's kicks or notifies (qemu.queue_events) that have a queue and an offset, with
    their device's epoch, in sorted runs per queue (qemu.QUEUE) by their offset `off`, in
    `directory`: each slice of elements reads the runs its pops or fills fall in (held,
    their keys and times were 0.2 GB at 5 M requests; collected and sorted at once, 0.4 GB
    more). Read a log at a time in its file order, a batch at a time (file_order)."""
    directory.mkdir()
    runs = AsofRuns(directory, "run", qemu.QUEUE, off)
    since = qemu.epochs(q.filter(pl.col("event").is_in(qemu.RESETS)).collect().lazy())
    events = qemu.queue_events(q, names, ns, "src_offset")
    known = pl.all_horizontal(pl.col(qemu.QUEUE).is_not_null()) & pl.col(off).is_not_null()
    runs.add(since(events.head(0).rename({"src_offset": off}), off).collect())  # (none: no rows)
    logs = events.select(pl.col("src_file").drop_nulls().unique()).collect().to_series()
    for log in logs.cast(pl.String).sort().to_list():
        mine = events.filter(pl.col("src_file") == log)
        for batch in file_order.batches(mine, directory / "log.parquet"):
            batch = since(batch.lazy().rename({"src_offset": off}), off).collect()
            runs.add(batch.filter(known))
    return runs.seal()


def _requests(kicks: AsofRuns, irqs: AsofRuns, elements: pl.DataFrame, first: int) -> pl.DataFrame:
    """qemu.with_queue_events(elements.lazy(), the queues, first).collect(), the queues'
    kicks and notifies in sorted runs (`_queue_runs`)."""
    req = kicks.asof(elements.sort("pop_off", nulls_last=True), "pop_off", "backward")
    req = irqs.asof(
        req.rename({"_koff": "kick_off"}).sort("fill_off", nulls_last=True), "fill_off", "forward"
    )
    return qemu.as_requests(req.drop("_noff").lazy(), first).collect()


def _bucket_of(
    q: pl.LazyFrame, scratch: Path | None = None
) -> tuple[Callable[[int], pl.Expr], int]:
    """Whether an element event is in bucket b (a function of b), and how many buckets:
    about ELEMENTS_PER_BUCKET pops each (`q`: the QEMU events, qemu.events_of). A pointer
    popped more than an eighth of that goes whole to the bucket with the fewest pops so
    far, most popped first, and one popped more than half of it in pieces (`_pieces`)
    likewise; the others (many, each popped a few times) by their hash, counted first."""
    pops = q.filter(pl.col("event") == "qemu.virtqueue_pop")
    per_addr = pops.group_by("addr").len().collect()
    total = int(per_addr["len"].sum())
    buckets = max(1, -(-total // ELEMENTS_PER_BUCKET))
    hashed = pl.col("addr").hash(seed=0) % buckets
    named = pl.col("addr").is_not_null()
    heavy = named & (pl.col("len") > ELEMENTS_PER_BUCKET // 8)
    load = np.zeros(buckets, np.int64)
    light = per_addr.filter(~heavy).group_by(hashed.alias("b")).agg(pl.col("len").sum())
    np.add.at(load, light["b"].to_numpy().astype(np.int64), light["len"].to_numpy())
    hot = per_addr.filter(named & (pl.col("len") > ELEMENTS_PER_BUCKET // 2))
    # (a pointer's pieces by file and offset: the files' order by their category ids, not
    # their names, as only these expressions compare them; casting to names took 2 s a pass)
    log = pl.col("src_file").to_physical().cast(pl.Int64)
    key = log * FILE_SPAN + file_order.int_offset(pl.col("src_offset"))
    pieces = (
        _pieces(q, dict(hot.iter_rows()), key, ELEMENTS_PER_BUCKET // 4, scratch)
        if len(hot)
        else {}
    )
    # the units dealt out, most pops first: (pops, pointer, piece)
    units = [(n, a, i) for a, (_, sizes) in pieces.items() for i, n in enumerate(sizes)]
    units += [(n, a, 0) for a, n in per_addr.filter(heavy).select("addr", "len").iter_rows()
              if a not in pieces]  # fmt: skip
    to: dict[tuple[int, int], int] = {}
    for n, a, i in sorted(units, key=lambda u: (-u[0], u[1], u[2])):  # (at most 8 a bucket)
        to[a, i] = int(load.argmin())
        load[to[a, i]] += n
    whole = {a: b for (a, i), b in to.items() if a not in pieces}
    bucket = hashed
    if whole:
        bucket = pl.col("addr").replace_strict(list(whole), list(whole.values()), default=hashed,
                                               return_dtype=pl.UInt64)  # fmt: skip

    def in_bucket(b: int) -> pl.Expr:
        # (elementwise, so the scan reads only the bucket's rows: a search of the cuts per
        # row kept every row of the capture in memory)
        mine = bucket == b
        for a, (cuts, _) in pieces.items():
            bounds = [None, *cuts, None]  # piece i: its bounds[i] <= key < bounds[i + 1]
            spans = [
                (key >= lo if lo is not None else pl.lit(True)) & (key < hi if hi is not None else pl.lit(True))
                for i, (lo, hi) in enumerate(itertools.pairwise(bounds)) if to[a, i] == b
            ]  # fmt: skip
            here = pl.any_horizontal(spans) if spans else pl.lit(False)
            mine = pl.when(pl.col("addr") == a).then(here).otherwise(mine)
        return mine

    return in_bucket, buckets


def _merge_key(frame: pl.LazyFrame, offset: str) -> pl.Expr:
    """A row's place among all logs' rows: its log's rank (logs in the order of their names,
    the requests' order) * FILE_SPAN + its `offset` column (`frame`: has the logs' names)."""
    files = frame.select(pl.col("src_file").cast(pl.String).unique()).collect()["src_file"].sort()
    rank = (
        pl.col("src_file")
        .cast(pl.String)
        .replace_strict(files.to_list(), list(range(len(files))), return_dtype=pl.Int64)
    )
    return rank * FILE_SPAN + file_order.int_offset(pl.col(offset))


def _pieces(
    q: pl.LazyFrame, hot: dict[int, int], key: pl.Expr, size: int, scratch: Path | None = None
) -> dict[int, tuple[list[int], list[int]]]:
    """Each pointer of `hot` (-> its pops) cut into pieces of about `size` pops: (the `key`
    of the pop each piece after the first starts at, the pops of each piece; `key`: an
    event's place in its log, the logs apart, rising with its offset). A piece starts only
    at a pop before which every (log, device, queue, epoch) of the pointer has had as many
    fills as pops: the k-th pop is paired with the k-th fill (qemu.element_requests), so
    each piece pairs alone as it would with the others. A pointer with no such pop (a fill
    lost), or with an event of no log or offset, stays whole: (no cuts, its pops).

    The pops and fills are read a log at a time in `key` order, a batch at a time
    (file_order.batches, through the file `scratch`), what is owed carried from batch to
    batch (sorted and summed whole, the 10 M pops and fills of a 5 M request capture at
    queue depth 1 held 0.5-0.7 GiB)."""
    pop = pl.col("event") == "qemu.virtqueue_pop"
    events = q.filter(
        pl.col("event").is_in(["qemu.virtqueue_pop", "qemu.virtqueue_fill"])
        & pl.col("addr").is_in(list(hot))
    ).select(*qemu.KEY, "src_offset", key.alias("key"), pop.alias("pop"))
    # (an event without a place, its log or offset null, would be in no piece)
    unplaced = set(
        q.filter(pl.col("event").is_in(qemu.ELEMENT_EVENTS) & pl.col("addr").is_in(list(hot))
                 & key.is_null())
        .select(pl.col("addr").unique()).collect()["addr"]
    )  # fmt: skip
    logs = (
        events.filter(pl.col("key").is_not_null())
        .group_by("src_file")
        .agg(pl.col("key").min())
        .sort("key")
        .collect()["src_file"]
    )
    since = qemu.epochs(q.filter(pl.col("event").is_in(qemu.RESETS)).collect().lazy())
    owing = _Owing(size, hot)
    for log in logs:
        mine = events.filter((pl.col("src_file") == log) & pl.col("key").is_not_null())
        for batch in file_order.batches(mine, scratch):
            owing.add(since(batch.lazy(), "src_offset").collect())
    return {
        a: ([], [total]) if a in unplaced else owing.pieces(a, total) for a, total in hot.items()
    }


OWED_BY = [*qemu.KEY, "epoch"]  # what a pop is owed a fill by: its queue in one device life


class _Owing:
    """`_pieces`' count of what each pointer owes, over its pops and fills in order a batch
    at a time: per (log, device, queue, epoch) the pops not yet filled, per pointer how many
    of those owe and how many pops came before; and the pops each piece starts at, the first
    owing nothing after each `size` pops."""

    def __init__(self, size: int, hot: dict[int, int]):
        self.size, self.hot = size, hot
        self.owed = pl.DataFrame()  # per group, what it owes after the batches so far
        self.owing: dict[int, int] = {}
        self.popped: dict[int, int] = {}
        self.next = dict.fromkeys(hot, size)  # per pointer, the count of pops to cut at next
        self.cuts: dict[int, list[tuple[int, int]]] = {a: [] for a in hot}  # (key, pops before)

    def add(self, batch: pl.DataFrame) -> None:
        step = pl.when("pop").then(1).otherwise(-1).cast(pl.Int64)
        if len(self.owed):
            batch = batch.join(self.owed, on=OWED_BY, how="left", nulls_equal=True,
                               maintain_order="left")  # fmt: skip
        else:
            batch = batch.with_columns(pl.lit(None, pl.Int64).alias("_owed"))
        # after the event (from what its group owed after the batches before)
        owed = pl.col("_owed").fill_null(0) + step.cum_sum().over(OWED_BY)
        # how many of the pointer's groups owe fills: +1 as one starts to
        opens = (owed != 0).cast(pl.Int64) - ((owed - step) != 0).cast(pl.Int64)
        batch = batch.with_columns(owed.alias("owed"), opens.alias("opens"))
        carried = pl.col("addr").replace_strict(self.owing, default=0, return_dtype=pl.Int64)
        popped = pl.col("addr").replace_strict(self.popped, default=0, return_dtype=pl.Int64)
        pops = pl.col("pop").cast(pl.Int64)
        starts = (
            batch.with_columns(
                ((pl.col("opens").cum_sum() - pl.col("opens")).over("addr") + carried).alias("owing"),
                ((pops.cum_sum() - pops).over("addr") + popped).alias("before"),
            )
            .filter(pl.col("pop") & (pl.col("owing") == 0))
            .select("addr", "key", "before")
        )  # fmt: skip
        sums = batch.group_by("addr").agg(pl.col("opens").sum(), pl.col("pop").sum())
        for a, opened, pops in sums.iter_rows():
            self.owing[a] = self.owing.get(a, 0) + opened
            self.popped[a] = self.popped.get(a, 0) + pops
        last = batch.group_by(OWED_BY, maintain_order=True).agg(pl.col("owed").last())
        last = last.rename({"owed": "_owed"})
        self.owed = (
            last if not len(self.owed) else
            pl.concat([self.owed, last]).unique(OWED_BY, keep="last", maintain_order=True)
        )  # fmt: skip
        for (a,), mine in starts.partition_by("addr", as_dict=True).items():
            self._cut(a, mine["key"].to_numpy(), mine["before"].to_numpy())

    def _cut(self, a: int, keys: np.ndarray, before: np.ndarray) -> None:
        """The first start at or after each multiple of `size` pops among these (the
        multiples before were found in earlier batches)."""
        top = min(int(before[-1]), self.hot[a] - 1)
        marks = np.arange(self.next[a], top + 1, self.size)
        if not len(marks):
            return
        at = np.unique(np.searchsorted(before, marks))
        at = at[before[at] > 0]
        self.cuts[a] += list(zip(keys[at].tolist(), before[at].tolist(), strict=True))
        self.next[a] = int(marks[-1]) + self.size

    def pieces(self, a: int, total: int) -> tuple[list[int], list[int]]:
        cuts = self.cuts[a]
        return [k for k, _ in cuts], np.diff([0, *(b for _, b in cuts), total]).tolist()


def _merged(
    parts: list[pl.LazyFrame], join: Callable[[pl.DataFrame, int], pl.DataFrame]
) -> Iterator[pl.DataFrame]:
    """The buckets' rows in (src_file, pop_off) order, SLICE_ROWS at a time, as requests
    (`join`: a slice of elements, the first's number -> its requests)."""
    key = _merge_key(pl.concat([p.select("src_file") for p in parts]), "pop_off")
    keys = [p.select(key).collect().to_series().to_numpy() for p in parts]
    # each element's place among all buckets' (bucket b's rows from starts[b]): its bucket
    # and row there follow from it (no array of either held)
    starts = np.cumsum([0, *(len(k) for k in keys)])
    order = np.argsort(np.concatenate(keys), kind="stable")
    del keys
    order = order.astype(np.int32) if len(order) < 1 << 31 else order
    for lo in range(0, len(order), SLICE_ROWS):
        at = order[lo : lo + SLICE_ROWS]
        whose = np.searchsorted(starts, at, side="right") - 1
        rows = at - starts[whose]
        pieces, place, start = [], np.empty(len(at), np.int64), 0
        for b in np.unique(whose):
            mine = whose == b
            # (a bucket's rows in the slice: one run, as each bucket is in this order)
            first, last = int(rows[mine].min()), int(rows[mine].max())
            pieces.append(parts[b].slice(first, last - first + 1).collect())
            place[mine] = start + rows[mine] - first
            start += last - first + 1
        elements = pl.concat(pieces)[place]
        yield join(elements, lo)
