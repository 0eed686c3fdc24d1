"""Bad input through the CLI: one-line errors with file and offset (exit 2), or warnings
with decoded/skipped counts; never a traceback, never a partial bundle left behind."""

from __future__ import annotations

import json
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
    assert "console.txt: not a recognised capture format" in result.output  # said, not silent
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


def test_a_truncated_compressed_capture_names_the_file(tmp_path):
    import lzma

    bad = tmp_path / "xentrace.bin.xz"
    bad.write_bytes(lzma.compress(GOOD)[:2000])  # cut mid-stream
    r = run("ingest", bad, "-o", tmp_path / "b")
    assert (
        r.exit_code == 2 and "xentrace.bin.xz" in r.output and "cannot decompress (xz)" in r.output
    )
    assert "Traceback" not in r.output
    assert not list((tmp_path / "b" / "raw").glob(".*.part"))  # no half-written plain copy
