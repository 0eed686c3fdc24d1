"""The per-bundle pipeline over many bundles at once: each bundle is ingested if it has no
table yet, its timeline reconstructed and its phases' distributions (the regression gate's
summary) written to the run store (xvtrace.history.store). A process pool on this machine,
or a Dask distributed cluster (`scheduler`: its address; `pip install xvtrace[dask]`), runs
the bundles in parallel through the same function (`one`); a bundle that fails is counted
and listed with its error and never stops the batch (as Perfetto's batch trace processor
does). On a cluster the bundles and the store must be at the same paths on every worker (a
shared file system)."""

from __future__ import annotations

import glob
import os
import resource
import socket
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from xvtrace.bundle import Bundle
from xvtrace.bundle.ingest import ingest
from xvtrace.history import store as run_store
from xvtrace.parsers.errors import XvtraceError


@dataclass
class BatchResult:
    stored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # stored already, inputs unchanged
    failed: list[tuple[str, str]] = field(default_factory=list)  # (bundle, error)
    peak_rss: dict[str, int] = field(default_factory=dict)  # worker (host:pid) -> bytes

    def line(self) -> str:
        text = (f"{len(self.stored)} stored, {len(self.skipped)} already stored, "
                f"{len(self.failed)} failed")  # fmt: skip
        if self.peak_rss:
            mib = sorted(v >> 20 for v in self.peak_rss.values())
            text += f"; {len(mib)} worker(s), peak RSS {mib[0]}-{mib[-1]} MiB"
        return text


def expand(patterns) -> list[str]:
    """The bundles named: paths as given, glob patterns expanded (sorted); a pattern that
    matches nothing stays, to fail by name."""
    out: list[str] = []
    for p in patterns:
        hits = sorted(glob.glob(str(p))) if glob.has_magic(str(p)) else [str(p)]  # noqa: PTH207
        out.extend(hits or [str(p)])
    return list(dict.fromkeys(out))


def one(path: str, store: str) -> tuple[str, str, str, str, int]:
    """Run one bundle into the store: (path, "stored" | "skipped" | "failed", detail, the
    worker, its peak RSS so far). Runs in a worker: every error becomes its result."""
    status = _one(path, store)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    return (*status, worker, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _one(path: str, store: str) -> tuple[str, str, str]:
    try:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{path}: no such bundle or capture")
        if p.is_dir():
            if (p / "raw").is_dir() and not (p / "events.parquet").exists():
                ingest(p, p, warn=lambda m: None)  # a bundle not decoded yet, in place
            return _stored(p, Bundle.open(p), Path(store))
        with tempfile.TemporaryDirectory(prefix="xvtrace-batch-") as tmp:  # a raw capture file
            return _stored(
                p, ingest(p, Path(tmp) / "bundle", warn=lambda m: None).bundle, Path(store)
            )
    except Exception as e:
        return path, "failed", f"{type(e).__name__}: {e}"


def _stored(source: Path, bundle: Bundle, store: Path) -> tuple[str, str, str]:
    """The bundle of `source` into the store, unless stored already from the same inputs."""
    from xvtrace.gate import regress

    bid = run_store.bundle_id(source)
    if run_store.inputs_key(bundle) in run_store.stored_inputs(store, bid)[1]:
        return str(source), "skipped", ""
    frame = run_store.rows(bundle, regress.summarize(bundle), source)
    if not len(frame):
        raise ValueError(f"{source}: no complete request to store")
    run_store.write(store, bid, frame)
    return str(source), "stored", f"{len(frame)} phases"


def run(paths: list[str], store: str | Path, *, workers: int | None = None,
        scheduler: str | None = None,
        progress: Callable[[int, int], None] | None = None) -> BatchResult:  # fmt: skip
    """Every bundle of `paths` into `store` with `workers` processes (default: one per CPU;
    1: in this process), or on the Dask cluster whose scheduler is at `scheduler`."""
    result, store = BatchResult(), str(store)
    Path(store).mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1

    def take(got: tuple[str, str, str, str, int], done: int) -> None:
        path, status, detail, worker, rss = got
        result.peak_rss[worker] = max(rss, result.peak_rss.get(worker, 0))
        if status == "stored":
            result.stored.append(path)
        elif status == "skipped":
            result.skipped.append(path)
        else:
            result.failed.append((path, detail))
        if progress:
            progress(done, len(paths))

    if scheduler:
        for i, got in enumerate(_on_cluster(paths, store, scheduler)):
            take(got, i + 1)
        return result
    if workers == 1 or len(paths) <= 1:
        for i, p in enumerate(paths):
            take(one(p, store), i + 1)
        return result
    # spawned, not forked: a fork of a process with polars' thread pool can hang
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(one, p, store) for p in paths]
        for i, f in enumerate(as_completed(futures)):
            take(f.result(), i + 1)
    return result


def _on_cluster(paths: list[str], store: str, scheduler: str):
    """`one` of each bundle on a Dask distributed cluster, results as they come."""
    try:
        from distributed import Client
        from distributed import as_completed as finished
    except ImportError:
        raise XvtraceError(
            "--scheduler needs Dask's distributed scheduler: pip install 'xvtrace[dask]'"
        ) from None
    try:
        client = Client(scheduler, timeout="30s")
    except OSError as e:
        raise XvtraceError(f"no Dask scheduler at {scheduler}: {e}") from None
    with client:
        futures = client.map(one, paths, store=store, pure=False)
        for f in finished(futures):
            yield f.result()
