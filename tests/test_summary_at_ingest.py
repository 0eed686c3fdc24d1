"""The summary folded while ingest writes the table (`xvtrace ingest`, on by default):
stored with the bundle and served by its first `summary`, the same answer as the summary
computed from the table afterwards (`ingest --no-summary`, then `summary`)."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from helpers import FIXTURES, X86_KHZ, X86_PV

from xvtrace.analysis import summary
from xvtrace.bundle import Bundle
from xvtrace.cli import cli


def _ingest(src, out, *args) -> None:
    r = CliRunner().invoke(cli, ["ingest", str(src), "-o", str(out), *args])
    assert r.exit_code == 0, r.output


def _summary(bundle) -> dict:
    r = CliRunner().invoke(cli, ["summary", str(bundle), "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


# a plain xentrace file; a real Xen capture (xentrace, QEMU log, dom0 ftrace merged);
# an emulated one whose QEMU log is merged live
SOURCES = {
    "xentrace": (X86_PV / "trace.bin", ["--cpu-khz", str(X86_KHZ)]),
    "xen-hvm-epam": (FIXTURES / "xen" / "hvm-epam", []),
    "emulated-epam-mmio": (FIXTURES / "emulated" / "epam-mmio", []),
}


@pytest.mark.parametrize("fold_rows", [summary.FOLD_ROWS, 7])
@pytest.mark.parametrize("name", SOURCES)
def test_the_summary_folded_at_ingest_is_the_tables(name, fold_rows, tmp_path, monkeypatch):
    """Folded whole, and a few rows at a time (7: an exit and its end in different folds)."""
    monkeypatch.setattr(summary, "FOLD_ROWS", fold_rows)
    src, args = SOURCES[name]
    if src.is_dir():  # ingest writes into a bundle given as its source: copies
        src = shutil.copytree(src, tmp_path / "src")
    _ingest(src, tmp_path / "folded", *args)
    _ingest(src, tmp_path / "plain", *args, "--no-summary")
    assert "summary" in Bundle.open(tmp_path / "folded").manifest
    assert "summary" not in Bundle.open(tmp_path / "plain").manifest
    from_table = _summary(tmp_path / "plain")
    with monkeypatch.context() as m:  # served: the table is not folded again
        m.setattr(summary, "_sections", lambda *a: pytest.fail("computed, not served"))
        served = _summary(tmp_path / "folded")
    assert served == from_table
    assert from_table["totals"][0]["records"] > 0


def test_a_summary_that_cannot_be_stored_leaves_the_ingest_whole(tmp_path, monkeypatch):
    """The table and manifest are written when the summary is stored: a full disk then
    is a warning, and the summary is computed when asked for."""
    src, args = SOURCES["xentrace"]

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(summary, "_store", full)
    r = CliRunner().invoke(cli, ["ingest", str(src), "-o", str(tmp_path / "b"), *args])
    assert r.exit_code == 0, r.output
    assert "the summary was not stored ([Errno 28] No space left on device)" in r.stderr
    assert "summary" not in Bundle.open(tmp_path / "b").manifest
    monkeypatch.undo()
    _ingest(src, tmp_path / "plain", *args, "--no-summary")
    assert _summary(tmp_path / "b") == _summary(tmp_path / "plain")


@pytest.mark.parametrize("trace", ["x86-pv", "hvm-epam"])
def test_a_xentrace_files_records_folded_a_few_at_a_time_are_the_tables(trace, tmp_path):
    """A table of one xentrace file is folded from the records as the decoder hands them
    over, not from its frames: in chunks of 4 KiB (exits and their ends in different
    chunks, rows held back for later chunks), the answer of the table's summary."""
    import lzma

    from xvtrace import api

    src = X86_PV / "trace.bin"
    if trace == "hvm-epam":  # (an HVM guest's exits, IOREQs and grant operations)
        src = tmp_path / "xentrace.bin"
        src.write_bytes(
            lzma.decompress((FIXTURES / "xen" / trace / "raw" / "xentrace.bin.xz").read_bytes())
        )
    api.ingest(src, tmp_path / "folded", cpu_khz=X86_KHZ, chunk_bytes=4096)
    _ingest(src, tmp_path / "plain", "--cpu-khz", str(X86_KHZ), "--no-summary")
    served = _summary(tmp_path / "folded")
    assert served == _summary(tmp_path / "plain")
    assert served["totals"][0]["records"] > 1000


def _fold_failing_at(monkeypatch, chunk: int | None, calls: list) -> None:
    """Fold.add_records counting its calls in `calls`, failing at call `chunk`."""
    from xvtrace.analysis import xen_fold

    original = xen_fold.Fold.add_records

    def counted(self, records, *a):
        calls.append(len(records.order))
        if len(calls) == chunk:
            raise MemoryError(f"fold: out of memory in chunk {chunk}")
        return original(self, records, *a)

    monkeypatch.setattr(xen_fold.Fold, "add_records", counted)


def test_a_fold_that_fails_fails_the_ingest_and_leaves_no_table(tmp_path, monkeypatch):
    """The records are folded on a thread of their own (bundle.stages.aside): its error is
    the ingest's, raised on the caller's thread, and no events.parquet is left behind."""
    from xvtrace import api

    calls = []
    _fold_failing_at(monkeypatch, 3, calls)
    with pytest.raises(MemoryError, match="chunk 3"):
        api.ingest(X86_PV / "trace.bin", tmp_path / "b", cpu_khz=X86_KHZ, chunk_bytes=4096)
    assert len(calls) == 3  # it stopped at the failure
    assert not (tmp_path / "b" / "events.parquet").exists()


def test_a_fold_that_fails_on_the_last_chunk_leaves_the_bundle_as_it_was(tmp_path, monkeypatch):
    """The fold is waited for before the new table is put in place: a bundle ingested again
    (here with another clock rate) keeps its table and manifest when the fold fails last."""
    from xvtrace import api

    bundle = tmp_path / "b"
    calls = []
    with monkeypatch.context() as m:
        _fold_failing_at(m, None, calls)
        api.ingest(X86_PV / "trace.bin", bundle, cpu_khz=X86_KHZ, chunk_bytes=4096)
    table, manifest = (bundle / "events.parquet").read_bytes(), Bundle.open(bundle).manifest
    assert len(calls) > 10
    _fold_failing_at(monkeypatch, len(calls), [])
    with pytest.raises(MemoryError, match=f"chunk {len(calls)}"):
        api.ingest(bundle, bundle, cpu_khz=2 * X86_KHZ, chunk_bytes=4096)
    assert (bundle / "events.parquet").read_bytes() == table
    assert Bundle.open(bundle).manifest == manifest
