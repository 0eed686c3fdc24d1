"""The bundle's derived data (xvtrace.bundle.derived): computed on demand, stored under a key that
covers its inputs, never served stale."""

from __future__ import annotations

import json
import lzma
import os
import shutil

import polars as pl
import pytest
from click.testing import CliRunner
from helpers import FIXTURES

from xvtrace import api, timeline
from xvtrace.bundle import Bundle, BundleError
from xvtrace.cli import cli

EPAM = FIXTURES / "emulated" / "epam-mmio"  # emulated at 2.4 GHz: TSC -> ns needs cpu_khz


def _report(runner, bundle) -> dict:
    r = runner.invoke(cli, ["report", str(bundle), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    out.pop("bundle")
    return out


def _ingest(runner, src, *args) -> None:
    r = runner.invoke(cli, ["ingest", str(src), *args])
    assert r.exit_code == 0, r.output


@pytest.fixture
def epam(tmp_path):
    shutil.copytree(EPAM, tmp_path / "b")
    return tmp_path / "b"


def test_reingest_with_another_cpu_khz_then_report_is_not_stale(epam, tmp_path):
    runner = CliRunner()
    _ingest(runner, epam)
    before = _report(runner, epam)  # builds and stores the timeline
    _ingest(runner, epam, "--cpu-khz", "1200000")  # half the clock: every trap twice as long
    after = _report(runner, epam)
    fresh = tmp_path / "fresh"
    shutil.copytree(EPAM, fresh)
    _ingest(runner, fresh, "--cpu-khz", "1200000")
    assert after == _report(runner, fresh)  # as if the stale timeline had never existed
    trap = {
        (r["queue"], r["op"], r["phase"]): r["p50_us"]
        for r in before["phases"]
        if r["phase"].startswith("notify trap")
    }
    assert trap
    for r in after["phases"]:
        if (r["queue"], r["op"], r["phase"]) in trap:
            # twice the time, as fitted again on the device model's clock
            assert 1.8 < r["p50_us"] / trap[r["queue"], r["op"], r["phase"]] < 2.2


def test_timeline_is_stored_once_and_rebuilt_when_its_inputs_change(epam):
    bundle = api.ingest(epam).bundle
    first = timeline.load(bundle)
    assert first.computed and (epam / timeline.REQUESTS).exists()
    again = timeline.load(Bundle.open(epam))
    assert not again.computed and again.requests.equals(first.requests)
    assert again.facts["key"] == first.facts["key"] == timeline.current_key(Bundle.open(epam))
    bundle = api.ingest(epam).bundle  # the same capture decoded again: the same table
    assert timeline.current_key(bundle) == first.facts["key"]
    assert not timeline.load(bundle).computed
    bundle = api.ingest(epam, hvm_vendor="svm").bundle  # another decoding: another key
    assert timeline.current_key(bundle) is None
    assert timeline.load(bundle).computed


def test_a_derived_file_changed_behind_the_bundle_is_computed_again(epam):
    bundle = api.ingest(epam).bundle
    good = timeline.load(bundle).requests
    pl.DataFrame({"request": [0]}).write_parquet(epam / timeline.REQUESTS)  # someone's edit
    tl = timeline.load(Bundle.open(epam))
    assert tl.computed and tl.requests.equals(good)


def test_manifest_edit_of_the_ingest_facts_changes_the_key(epam):
    bundle = api.ingest(epam).bundle
    key = timeline.load(bundle).facts["key"]
    m = json.loads((epam / "manifest.json").read_text())
    m["host"]["hvm_vendor"] = "svm"
    (epam / "manifest.json").write_text(json.dumps(m))
    assert timeline.current_key(Bundle.open(epam)) is None
    assert timeline.load(Bundle.open(epam)).facts["key"] != key


def test_a_raw_capture_changed_after_ingest_is_refused(epam):
    runner = CliRunner()
    _ingest(runner, epam)
    log = next(p for p in (epam / "raw").iterdir() if p.name.startswith("qemu"))
    with log.open("ab") as fh:
        fh.write(b"\n")
    for cmd in (["report"], ["timeline"], ["summary"], ["dump"]):
        r = runner.invoke(cli, [*cmd, str(epam)])
        assert r.exit_code == 2, (cmd, r.output)
        assert str(log) in r.output and "bytes when ingested" in r.output
        assert f"run `xvtrace ingest {epam}`" in r.output
    _ingest(runner, epam)  # what the message says to do
    assert runner.invoke(cli, ["report", str(epam)]).exit_code == 0


def test_events_decoded_with_another_event_catalogue_are_refused(epam):
    """A table written before this xvtrace knew some event names (an older release's
    bundle): its enum lacks them, so a filter on one fails inside polars, and the capture's
    records of them were decoded as something else. Refused, naming the names and the fix."""
    runner = CliRunner()
    _ingest(runner, epam)
    events = epam / "events.parquet"
    table = pl.read_parquet(events)
    older = pl.Enum(table.schema["event"].categories.to_list()[:-2])
    kept = table.filter(pl.col("event").is_in(older.categories.to_list()))
    kept.with_columns(pl.col("event").cast(pl.String).cast(older)).write_parquet(events)
    for cmd in (["report"], ["timeline"], ["summary"], ["dump"]):
        r = runner.invoke(cli, [*cmd, str(epam)])
        assert r.exit_code == 2, (cmd, r.output)
        assert f"{events}: its event names are not this xvtrace's (without " in r.output
        assert "qemu.vu_message" in r.output and f"run `xvtrace ingest {epam}`" in r.output
    _ingest(runner, epam)  # what the message says to do
    assert runner.invoke(cli, ["report", str(epam)]).exit_code == 0


def test_compare_refuses_a_replay_of_requests_the_bundle_no_longer_has(epam):
    runner = CliRunner()
    _ingest(runner, epam)
    assert runner.invoke(cli, ["replay", str(epam), "--target", "epam-mmio"]).exit_code == 0
    assert runner.invoke(cli, ["compare", str(epam)]).exit_code == 0
    _ingest(runner, epam, "--cpu-khz", "1200000")
    r = runner.invoke(cli, ["compare", str(epam)])
    assert r.exit_code == 2 and f"run `xvtrace replay {epam}` again" in r.output


def test_a_replaced_archive_is_unpacked_again(tmp_path):
    src = FIXTURES / "xentrace" / "x86-pv-blkfront"
    raw = (src / "trace.bin").read_bytes()
    b = tmp_path / "b" / "raw"
    b.mkdir(parents=True)
    shutil.copy(src / "metadata.json", b / "metadata.json")  # its cpu_khz
    archive = b / "trace.bin.xz"
    archive.write_bytes(lzma.compress(raw))
    bundle = api.ingest(tmp_path / "b").bundle
    n = bundle.manifest["counts"]["events"]
    cut = raw[: len(raw) // 2]  # a shorter capture under the same archive name
    archive.write_bytes(lzma.compress(cut))
    st = archive.stat()
    os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))  # older: the content tells
    with pytest.raises(BundleError, match=r"trace\.bin\.xz: \d+ bytes when ingested"):
        Bundle.open(tmp_path / "b").events()
    bundle = api.ingest(tmp_path / "b").bundle
    assert 0 < bundle.manifest["counts"]["events"] < n
    assert (b / "trace.bin").stat().st_size == len(cut)


def test_temporary_files_in_raw_are_not_captures(epam):
    bundle = api.ingest(epam).bundle
    sources = [s["file"] for s in bundle.manifest["sources"]]
    log = next(p for p in (epam / "raw").iterdir() if p.name.startswith("qemu"))
    shutil.copy(log, epam / "raw" / f".{log.name}.123-abc.part")  # a writer's leftover
    again = api.ingest(epam).bundle
    assert [s["file"] for s in again.manifest["sources"]] == sources


def test_a_copied_bundle_keeps_its_derived_data(epam, tmp_path):
    """A copy gives every file new times (cp -r): the fingerprints are of content, so the
    copy's events are not refused and its stored timeline and summary are served."""
    runner = CliRunner()
    _ingest(runner, epam)
    assert runner.invoke(cli, ["summary", str(epam)]).exit_code == 0
    tl = timeline.load(Bundle.open(epam))
    for p in epam.rglob("*"):
        if p.is_file():
            st = p.stat()
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))
    again = timeline.load(Bundle.open(epam))
    assert not again.computed and again.requests.equals(tl.requests)
    stored = Bundle.open(epam).manifest["summary"]["key"]
    r = runner.invoke(cli, ["summary", str(epam)])
    assert r.exit_code == 0 and Bundle.open(epam).manifest["summary"]["key"] == stored


def test_summary_is_stored_and_answers_the_same(tmp_path):
    shutil.copytree(FIXTURES / "xentrace" / "x86-pv-blkfront", tmp_path / "raw")
    runner = CliRunner()
    _ingest(runner, tmp_path / "raw" / "trace.bin", "-o", str(tmp_path / "b"))
    first = runner.invoke(cli, ["summary", str(tmp_path / "b"), "--json"])
    assert (tmp_path / "b" / "derived").is_dir()
    second = runner.invoke(cli, ["summary", str(tmp_path / "b"), "--json"])
    assert first.exit_code == second.exit_code == 0 and first.stdout == second.stdout
    other = runner.invoke(cli, ["summary", str(tmp_path / "b"), "--cpu-khz", "1200000", "--json"])
    assert other.exit_code == 0 and other.stdout != first.stdout  # another key, not the stored


def test_a_timeline_whose_stored_requests_were_rebuilt_refuses_to_read_them(epam):
    """A Timeline served from the bundle reads its requests when they are asked for; if
    another build replaced them meanwhile, its facts and clocks are no longer theirs."""
    runner = CliRunner()
    _ingest(runner, epam)
    timeline.build(api.load(epam))
    served = api.timeline(epam)
    assert not served.computed and served.columns("request").height > 0
    _ingest(runner, epam, "--cpu-khz", "1000000")
    timeline.build(api.load(epam))
    for read in (served.scan, lambda: served.requests, lambda: served.columns("pop_ns")):
        with pytest.raises(BundleError, match="rebuilt since this timeline was read"):
            read()
    assert api.timeline(epam).columns("request").height > 0  # loaded again: served


def test_a_read_only_bundle_answers_without_storing_and_replay_says_where_to_write(
    epam, monkeypatch
):
    """On a read-only bundle polars' own write error carries no errno (it was reported as
    an internal error): the bundle is seen to be read-only first."""
    runner = CliRunner()
    _ingest(runner, epam)
    real = os.access

    def access(path, mode, **kw):  # the bundle's directory is not writable
        return not (mode & os.W_OK and os.fspath(path) == os.fspath(epam)) and real(
            path, mode, **kw
        )

    monkeypatch.setattr(os, "access", access)
    r = runner.invoke(cli, ["timeline", str(epam)])
    assert r.exit_code == 0, r.output
    assert not (epam / "requests.parquet").exists() and "timeline" not in Bundle.open(epam).manifest
    r = runner.invoke(cli, ["replay", str(epam)])
    assert (
        r.exit_code == 2 and f"{epam}: not writable (read-only?); give replay -o FILE" in r.output
    )
