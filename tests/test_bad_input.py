"""Bad input through the CLI: one-line errors with file and offset (exit 2), or warnings
with decoded/skipped counts; never a traceback, never a partial bundle left behind."""

from __future__ import annotations

import errno
import itertools
import json
import shutil
import struct

import pytest
from click.testing import CliRunner
from helpers import X86_KHZ, X86_PV

from xvtrace.cli import cli

GOOD = (X86_PV / "trace.bin").read_bytes()


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def ingest(tmp_path, data: bytes, name="t.bin"):
    src = tmp_path / name
    src.write_bytes(data)
    out = tmp_path / "out.xvt"
    return run("ingest", src, "-o", out, "--cpu-khz", X86_KHZ, "--json"), out


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "byte 0: empty file"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "byte 0: not a recognised capture format"),
        (
            struct.pack("<IiI", 0x2001F003, 70000, 16) + bytes(16),
            "byte 0: first CPU_CHANGE names cpu 70000",
        ),
        (
            struct.pack("<IiI", 0x2001F003, -3, 16) + bytes(16),
            "byte 0: first CPU_CHANGE names cpu -3",
        ),
        (
            struct.pack("<IiI", 0x2001F003, 0, 13) + bytes(16),
            "byte 0: first CPU_CHANGE declares 13 bytes, not a whole number of 32-bit words",
        ),
    ],
)
def test_fatal_inputs_exit_2_with_file_and_offset(tmp_path, data, message):
    result, out = ingest(tmp_path, data)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert f"t.bin: {message}" in result.output
    assert not (out / "events.parquet").exists()
    assert not (out / "manifest.json").exists()


def _counts(result):
    return json.loads(result.stdout)["sources"][0]


def test_truncated_tail_warns_and_keeps_whole_records(tmp_path):
    result, out = ingest(tmp_path, GOOD[:3_000_001])
    assert result.exit_code == 0, result.output
    assert "warning" in result.stderr
    assert "skipped" in result.stderr
    src = _counts(result)
    assert src["decoded"] == 145885
    assert 0 < src["skipped_bytes"] < 64
    assert (out / "manifest.json").is_file()


def test_garbage_in_the_middle_resynchronises(tmp_path):
    data = bytearray(GOOD)
    data[200_000:200_400] = b"\xff" * 400
    result, _ = ingest(tmp_path, bytes(data))
    assert result.exit_code == 0
    src = _counts(result)
    assert src["first_problems"][0]["kind"] == "bad-record"
    assert src["first_problems"][0]["offset"] == 200_004
    assert (
        src["decoded"] + src["skipped_bytes"] // 40
        < 273329
        < src["decoded"] + src["skipped_bytes"] // 4
    )


def test_all_zero_region_skips_to_next_window(tmp_path):
    data = bytearray(GOOD)
    data[1_000_000:1_100_000] = bytes(100_000)
    result, _ = ingest(tmp_path, bytes(data))
    assert result.exit_code == 0
    src = _counts(result)
    kinds = {p["kind"] for p in src["first_problems"]}
    assert kinds & {"resync", "bad-record"}
    assert src["skipped_bytes"] >= 100_000
    assert 250_000 < src["decoded"] < 273329


def test_impossible_cpu_in_a_later_window_resynchronises(tmp_path):
    data = bytearray(GOOD)
    second = 12 + struct.unpack_from("<I", data, 8)[0]  # offset of the second window header
    struct.pack_into("<i", data, second + 4, 99999)
    result, _ = ingest(tmp_path, bytes(data))
    assert result.exit_code == 0
    src = _counts(result)
    assert src["first_problems"][0] == {
        "offset": second,
        "kind": "resync",
        "message": "expected a CPU_CHANGE window header; skipped garbage to the next one",
    }
    assert src["decoded"] < 273329


def test_missing_source_and_non_bundle_directory(tmp_path):
    result = run("summary", tmp_path)
    assert result.exit_code == 2
    assert "not a bundle" in result.output
    result = run("ingest", tmp_path / "nope.bin")
    assert result.exit_code == 2


def test_a_folder_of_captures_ingests_like_a_bundle(tmp_path):
    from helpers import FIXTURES

    result = run("ingest", FIXTURES / "qemu" / "live-microvm-mmio", "-o", tmp_path / "b")
    assert result.exit_code == 0, result.output
    formats = {
        s["format"] for s in json.loads((tmp_path / "b" / "manifest.json").read_text())["sources"]
    }
    assert {"qemu-log", "pcap", "qmp-virtqueues"} <= formats
    # said, not silent, and once for the folder (the list of formats was printed per file)
    assert "console.txt, metadata.json: not a recognised capture format" in result.output
    assert result.output.count("not a recognised capture format") == 1
    (tmp_path / "empty").mkdir()
    result = run("ingest", tmp_path / "empty")
    assert result.exit_code == 2 and "empty directory" in result.output


@pytest.mark.parametrize("suffix", [".gz", ".xz"])
def test_compressed_captures_ingest_like_plain_ones(tmp_path, suffix):
    import gzip
    import lzma

    from xvtrace import api

    raw = X86_PV / "trace.bin"
    plain = api.ingest(raw, tmp_path / "plain", cpu_khz=X86_KHZ, warn=lambda m: None)
    packed = tmp_path / (raw.name + suffix)
    packed.write_bytes((gzip if suffix == ".gz" else lzma).compress(GOOD))
    res = api.ingest(packed, tmp_path / "packed", cpu_khz=X86_KHZ, warn=lambda m: None)
    a = plain.bundle.events().drop("src_file").collect()
    b = res.bundle.events().drop("src_file").collect()
    assert len(a) > 1000 and a.equals(b)


def test_a_truncated_compressed_capture_decodes_up_to_the_damage(tmp_path):
    """Cut mid-stream: what decoded before the cut is ingested, with a warning naming the
    archive (like any capture cut short); cut before anything decodes: a clear error."""
    import lzma

    bad = tmp_path / "xentrace.bin.xz"
    packed = lzma.compress(GOOD)
    bad.write_bytes(packed[: len(packed) // 2])
    r = run("ingest", bad, "-o", tmp_path / "b", "--cpu-khz", X86_KHZ, "--json")
    assert r.exit_code == 0 and "xentrace.bin.xz: compressed stream damaged after" in r.output
    (src,) = json.loads(r.stdout)["sources"]
    whole = run(
        "ingest", X86_PV / "trace.bin", "-o", tmp_path / "w", "--cpu-khz", X86_KHZ, "--json"
    )
    assert 0 < src["decoded"] < json.loads(whole.stdout)["sources"][0]["decoded"]
    bad.write_bytes(packed[:20])  # the header alone
    r = run("ingest", bad, "-o", tmp_path / "c")
    assert (
        r.exit_code == 2 and "xentrace.bin.xz" in r.output and "cannot decompress (xz)" in r.output
    )
    assert "Traceback" not in r.output
    assert not list((tmp_path / "c").rglob("xentrace.bin")) and not list(
        (tmp_path / "c").rglob("*.part")
    )


def test_a_compression_bomb_stops_at_the_limit_and_leaves_nothing(tmp_path):
    """A 9.4 MB gzip of zeros wrote 2 GB before failing, and left it behind."""
    import gzip

    bomb = tmp_path / "trace.bin.gz"
    with gzip.open(bomb, "wb") as f:
        for _ in range(64):
            f.write(bytes(1 << 20))
    r = run("ingest", bomb, "-o", tmp_path / "b", "--unpack-limit", "0.01")
    assert r.exit_code == 2 and "unpacks to more than 10,737,418 bytes" in r.output, r.output
    assert not (tmp_path / "b").exists()  # a new bundle that failed is not left behind
    assert "Traceback" not in r.output
    bundle = tmp_path / "kept"  # a bundle that was there: its raw copy stays, not unpacked
    assert run("ingest", X86_PV / "trace.bin", "-o", bundle, "--cpu-khz", X86_KHZ).exit_code == 0
    shutil.copy(bomb, bundle / "raw" / "big.bin.gz")
    assert run("ingest", bundle, "--unpack-limit", "0.01").exit_code == 2
    assert (bundle / "manifest.json").is_file() and (bundle / "raw" / "big.bin.gz").is_file()
    assert not [p for p in bundle.rglob("*") if p.name == "big.bin" or p.suffix == ".part"]


def test_a_damaged_event_name_is_said_and_yields_no_backwards_request(tmp_path):
    """One corrupted event name in a real QEMU log (`virtqueue_pop` -> `virvqueue_pop` on
    line 61) ingested with "skipped 0" and gave complete requests with negative phases
    (pop -> fill p50 -309 us). Now ingest names the line's event and offset, and no
    request is complete whose stamps go back in time; the damaged ones are counted."""
    import shutil

    import polars as pl
    from helpers import FIXTURES

    from xvtrace import api, timeline
    from xvtrace.timeline.pipeline import PATH

    src = tmp_path / "capture"
    shutil.copytree(FIXTURES / "qemu" / "live-q35-pci", src)
    log = src / "qemu-0.log"
    lines = log.read_bytes().split(b"\n")
    assert b"virtqueue_pop" in lines[60]
    offset = sum(len(ln) + 1 for ln in lines[:60])
    lines[60] = lines[60].replace(b"virtqueue_pop", b"virvqueue_pop")
    log.write_bytes(b"\n".join(lines))
    said = []
    bundle = api.ingest(src, tmp_path / "b", warn=said.append).bundle
    assert any("virvqueue_pop" in w and str(offset) in w and "qemu-0.log" in w for w in said), said
    req = timeline.build(bundle)
    done = req.filter(pl.col("complete"))
    for a, b in itertools.pairwise(PATH):
        assert (done[b] >= done[a]).fill_null(True).all(), (a, b)
    facts = bundle.manifest["timeline"]
    assert facts["complete"] == len(done) < facts["requests"]
    rep = api.report(bundle.path)  # what the user reads: no phase of any request negative
    assert (
        len(rep.phases) and (rep.phases["p50_us"] >= 0).all() and (rep.phases["max_us"] >= 0).all()
    )
    assert rep.facts["incomplete"]["stamps out of causal order (a corrupt or misread log?)"] > 0


def test_sigterm_stops_emulate_with_a_message_and_no_partial_files(tmp_path):
    """Killed by SIGTERM, `emulate` exited 143 silently and left raw/.*.part files behind.
    Now it says so and every atomic write removes its temporary file as the stack unwinds."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "b"
    proc = subprocess.Popen(
        [sys.executable, "-m", "xvtrace", "emulate", "-t", "epam-mmio", "-n", "1000000",
         "--no-ingest", "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("raw/.*.part")) and proc.poll() is None:  # until it writes
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:  # never left running (or its pipe open) into the next test
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == 143 and b"terminated" in err, err
    assert not list(out.rglob("*.part")), list(out.rglob("*"))


@pytest.mark.parametrize("value", ["nan", "1e300", "-1", "inf"])
def test_a_time_window_beyond_any_trace_is_refused(value):
    """`dump --from 1e300` ended in an OverflowError (exit 3)."""
    result = run("dump", X86_PV / "trace.bin", "--cpu-khz", X86_KHZ, "--from", value)
    assert result.exit_code == 2 and "--from" in result.output, result.output


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ([1, 2], "not a manifest (a JSON object), a list"),
        ({"host": {"cpu_khz": "2400000"}}, "host.cpu_khz: '2400000' is not a clock rate"),
        ({"host": {"cpu_khz": True}}, "host.cpu_khz: True"),
        ({"host": {"cpu_khz": -5}}, "host.cpu_khz: -5"),
        ({"host": {"cpu_khz": 1e30}}, "host.cpu_khz: 1e+30"),
        ({"host": [1]}, "host: not an object"),
        ({"sources": {}}, "sources: not a list"),
    ],
)
def test_a_damaged_manifest_is_refused_naming_the_key(tmp_path, doc, says):
    """A manifest that is a JSON list, or holds cpu_khz as a string, a list, `true`, -5 or
    1e30, ended in AttributeErrors or answers on a nonsense clock."""
    import shutil

    from helpers import FIXTURES

    bundle = tmp_path / "b"
    shutil.copytree(FIXTURES / "emulated" / "argo", bundle)
    assert run("ingest", bundle).exit_code == 0
    manifest = bundle / "manifest.json"
    if isinstance(doc, dict):
        doc = {**json.loads(manifest.read_text()), **doc}
    manifest.write_text(json.dumps(doc))
    for cmd in ("summary", "timeline", "report"):
        result = run(cmd, bundle)
        assert result.exit_code == 2 and f"{manifest}: {says}" in result.output, result.output


@pytest.mark.parametrize(
    ("raised", "code", "says"),
    [
        (OSError(errno.EIO, "Input/output error"), 3, "a bug in xvtrace"),
        (ValueError("an analysis bug"), 3, "a bug in xvtrace"),
        (KeyError("column"), 3, "a bug in xvtrace"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "x.json"), 2, "x.json"),
        (PermissionError(errno.EACCES, "Permission denied", "out.html"), 2, "out.html"),
    ],
)
def test_only_the_projects_errors_and_the_users_files_are_bad_input(
    monkeypatch, raised, code, says
):
    """Every ValueError and OSError used to be reported as bad input (exit 2), so bugs looked
    like the user's fault and XVTRACE_DEBUG=1 could not show them: now only XvtraceError and
    the OSErrors of a path, a permission or a full disk are exit 2; the rest exit 3."""
    from xvtrace import api

    def fails(*a, **k):
        raise raised

    monkeypatch.setattr(api, "summarize", fails)
    result = run("summary", X86_PV / "trace.bin")
    assert result.exit_code == code and says in result.output, result.output


def test_a_compiled_librarys_panic_is_a_bug_not_a_crash(monkeypatch):
    """pyo3's PanicException derives from BaseException: it went past the handler (a
    traceback, exit 1)."""
    from xvtrace import api

    class PanicException(BaseException):  # as pyo3 names it
        pass

    def panics(*a, **k):
        raise PanicException("called `Option::unwrap()` on a `None` value")

    monkeypatch.setattr(api, "summarize", panics)
    result = run("summary", X86_PV / "trace.bin")
    assert result.exit_code == 3 and "PanicException" in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("81606512006", "9" * 24),
        ("[000]", "[" + "9" * 20 + "]"),
        (" 0 + 8", " " + "9" * 23 + " + 8"),
    ],
    ids=["stamp", "cpu", "sector"],
)
def test_an_ftrace_number_too_large_for_its_column_skips_that_line(tmp_path, old, new):
    """A dom0 block-trace stamp, CPU or sector past u64 ended in a failed cast (exit 3)."""
    from helpers import FIXTURES

    lines = (FIXTURES / "xen" / "pv-blkfront" / "raw" / "dom0-trace.txt").read_text().splitlines()
    assert old in lines[0]
    lines[0] = lines[0].replace(old, new, 1)
    path = tmp_path / "dom0-trace.txt"
    path.write_text("\n".join(lines[:50]) + "\n")
    r = run("ingest", path, "-o", tmp_path / "b", "--cpu-khz", X86_KHZ, "--json")
    assert r.exit_code == 0 and "1 block_rq_issue line(s) with a number out of range" in r.output
    assert json.loads(r.stdout)["sources"][0]["decoded"] == 49


def test_a_trace_events_file_naming_arguments_otherwise_still_ingests(tmp_path):
    """A trace-events definition whose arguments are named unlike QEMU's (`dev` for `vdev`)
    ended in ColumnNotFoundError "vdev_text" (exit 3): the role is now unknown, not a crash."""
    import shutil

    from helpers import FIXTURES

    src = tmp_path / "capture"
    shutil.copytree(FIXTURES / "qemu" / "live-q35-pci", src)
    defs = src / "trace-events"
    text = defs.read_text()
    old = 'virtio_queue_notify(void *vdev, int n, void *vq) "vdev %p n %d vq %p"'
    assert old in text
    defs.write_text(text.replace(old, old.replace("void *vdev", "void *dev")))
    assert run("ingest", src, "-o", tmp_path / "b").exit_code == 0
    r = run("timeline", tmp_path / "b")
    assert r.exit_code == 0 and "requests: 50" in r.output, r.output


def test_a_qemu_log_without_timestamps_says_how_to_get_them(tmp_path):
    """QEMU started without `-msg timestamp=on`: the log decoded silently, the summary said
    pops 0, and `timeline` (the capture has a pcap) stopped on "cannot convert float NaN to
    integer". Now ingest and timeline both say what is missing and how to add it."""
    import re
    import shutil

    from helpers import FIXTURES

    src = tmp_path / "capture"
    shutil.copytree(FIXTURES / "qemu" / "live-q35-pci", src)
    log = src / "qemu-0.log"
    log.write_text(re.sub(r"(?m)^\d+@\d+\.\d+:", "", log.read_text()))
    r = run("ingest", src, "-o", tmp_path / "b")
    assert r.exit_code == 0 and "qemu-0.log" in r.output and "-msg timestamp=on" in r.output
    r = run("timeline", tmp_path / "b")
    assert r.exit_code == 0, r.output
    assert "0 complete" in r.output and "50 no timestamps" in r.output


def test_untimed_qemu_beside_a_real_xentrace_gives_no_clock_and_no_error(tmp_path):
    """The real EPAM capture with its device model's stamps removed: every clock pair has
    one side only (was "cannot convert float NaN to integer", exit 3)."""
    import lzma
    import re
    import shutil

    from helpers import FIXTURES

    src = tmp_path / "capture"
    shutil.copytree(FIXTURES / "xen" / "hvm-epam", src)
    packed = src / "raw" / "epam.log.xz"
    text = lzma.decompress(packed.read_bytes()).decode()
    (src / "raw" / "epam.log").write_text(re.sub(r"(?m)^\d+@\d+\.\d+:", "", text))
    packed.unlink()
    assert run("ingest", src, "-o", tmp_path / "b").exit_code == 0
    for cmd in (["timeline"], ["report"], ["export", "perfetto", "-o", str(tmp_path / "p.json")]):
        r = run(*cmd, tmp_path / "b")
        assert r.exit_code == 0 and "Traceback" not in r.output, (cmd, r.output)
    assert "no timestamps" in run("timeline", tmp_path / "b").output
