"""End-to-end through the CLI, as a user runs it."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import polars as pl
import pytest
from click.testing import CliRunner
from helpers import ARM64, X86_PV

from xvtrace import __version__
from xvtrace.bundle import Bundle
from xvtrace.cli import cli
from xvtrace.parsers.schema import SCHEMA_VERSION


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def x86_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "pv.xvt"
    result = run("ingest", X86_PV / "trace.bin", "-o", out)
    assert result.exit_code == 0, result.output
    return out


def test_version_and_help_on_every_command():
    assert run("--version").output.strip() == f"xvtrace, version {__version__}"
    top = run("--help")
    assert top.exit_code == 0
    for cmd in ("ingest", "summary", "dump"):
        assert cmd in top.output
        help_text = run(cmd, "--help").output
        assert (
            "Usage: cli " + cmd in help_text
            or f"Usage: xvtrace {cmd}" in help_text
            or cmd in help_text
        )
        assert "--cpu-khz" in help_text


def test_ingest_writes_a_complete_bundle(x86_bundle):
    b = Bundle.open(x86_bundle)
    m = b.manifest
    assert m["schema_version"] == SCHEMA_VERSION == 2
    assert m["tool_version"] == __version__
    assert m["host"]["cpu_khz"] == 2445425  # from the capture's metadata.json
    assert m["host"]["hvm_vendor"] is None if "hvm_vendor" in m["host"] else True
    src = m["sources"][0]
    assert src["file"] == "raw/trace.bin"
    assert src["format"] == "xentrace"
    assert (src["decoded"], src["skipped_bytes"], src["lost"], src["windows"]) == (
        273329,
        0,
        0,
        210,
    )
    assert (x86_bundle / "raw" / "trace.bin").read_bytes() == (X86_PV / "trace.bin").read_bytes()
    ev = b.events()
    assert ev.select(pl.len()).collect().item() == 273329
    assert (
        ev.select(pl.col("ts_ns").is_sorted()).collect().item()
        if False
        else ev.collect()["ts_ns"].is_sorted()
    )
    assert not list(x86_bundle.glob(".*.part"))


def test_atomic_path_leaves_the_file_to_its_writer_and_nothing_on_failure(tmp_path):
    from xvtrace.bundle import atomic_path

    final = tmp_path / "d" / "x.txt"
    with atomic_path(final) as tmp:
        assert not tmp.exists()  # the writer creates it: no empty file truncated on open
        tmp.write_text("hi")
    assert final.read_text() == "hi"
    with atomic_path(tmp_path / "empty"):
        pass  # a writer that wrote nothing
    assert (tmp_path / "empty").read_bytes() == b""

    def fail_half_way():
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError

    with pytest.raises(RuntimeError):
        fail_half_way()
    assert final.read_text() == "hi" and not list(final.parent.glob(".*.part"))


def test_reingest_of_a_bundle_is_identical(x86_bundle, tmp_path):
    before = pl.read_parquet(x86_bundle / "events.parquet")
    result = run("ingest", x86_bundle, "-o", tmp_path / "again.xvt")
    assert result.exit_code == 0, result.output
    after = pl.read_parquet(tmp_path / "again.xvt" / "events.parquet")
    assert before.equals(after)


def test_summary_text_and_json(x86_bundle):
    text = run("summary", x86_bundle).output
    assert "|-- Domain 1 --|" in text
    assert "Hypercalls:" in text
    assert "running:    1743" in text  # xenalyze: d0v0 running 1743
    data = json.loads(run("summary", x86_bundle, "--json").output)
    assert data["cpu_khz"] == 2445425
    vol = {(r["cpu"], r["class"]): r["bytes"] for r in data["volume"]}
    assert vol[(0, "sched")] == 1057536
    assert vol[(1, "pv")] == 2668336


def test_dump_filters_and_names_fields(x86_bundle):
    out = run("dump", x86_bundle, "-e", "sched.runstate_change", "--limit", "3").output.splitlines()
    assert len(out) == 3
    assert out[0].split()[1:] == [
        "cpu0",
        "d?v?",
        "sched.runstate_change",
        "dom=0",
        "vcpu=0",
        "old=running(0)",
        "new=blocked(2)",
    ]
    hc = run(
        "dump", x86_bundle, "--code", "0x0020100d", "--dom", "1", "--from", "5", "--to", "6"
    ).output.splitlines()
    assert hc
    assert all(line.split()[2:4] == ["d1v0", "pv.hypercall"] for line in hc)
    assert all(5.0 <= float(line.split()[0]) < 6.0 for line in hc)
    glob = run("dump", x86_bundle, "-e", "mem.*", "--cpu", "0").output.splitlines()
    assert len(glob) == 202
    assert all("mem.grant_" in line for line in glob)


def test_summary_of_a_raw_file_and_arm_capture():
    text = run("summary", ARM64 / "trace.bin").output
    assert text.startswith("Total time: 10.380380 s (6.25e-05 GHz)") or "10.380380 s" in text
    assert "Exit reasons" not in text


def test_dump_pipes_into_head():
    proc = subprocess.run(
        f"{sys.executable} -m xvtrace dump {X86_PV / 'trace.bin'} | head -n 2",
        shell=True,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0
    assert len(proc.stdout.splitlines()) == 2
    assert "Traceback" not in proc.stderr


def _command(*args: str, tmp: os.PathLike) -> subprocess.CompletedProcess:
    """`xvtrace ARGS` as a user runs it (the entry point's own exit), stdout a pipe (so it
    is block-buffered) and temporary files under `tmp`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    cmd = [sys.executable, "-m", "xvtrace", *args]
    env["TMPDIR"] = str(tmp)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)


def test_the_prompt_exit_flushes_the_answer_and_runs_the_exit_handlers(tmp_path):
    """entry.leave skips the interpreter's teardown: what the command printed must still
    reach the pipe whole, and the temporary bundle of a raw capture must still go."""
    proc = _command("timeline", str(X86_PV / "trace.bin"), "--json",
                    "--cpu-khz", "2445425", tmp=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "views" in json.loads(proc.stdout)  # the whole document, parsed
    assert list(tmp_path.iterdir()) == []  # api's exit handler removed the bundle
    args = ("summary", str(X86_PV / "trace.bin"), "--json", "--cpu-khz", "2445425")
    proc = _command(*args, tmp=tmp_path)
    assert proc.returncode == 0 and len(proc.stdout) > 8192  # more than one buffer's worth
    assert proc.stdout == run(*args).output  # all of it, as the command printed it


def test_the_prompt_exit_keeps_a_failing_commands_status(tmp_path):
    proc = _command("summary", str(tmp_path / "missing.bin"), tmp=tmp_path)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes(range(256)) * 16)
    proc = _command("summary", str(bad), "--cpu-khz", "1000", tmp=tmp_path)
    assert proc.returncode == 2 and f"{bad}: byte 0: not a recognised" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_the_cli_loads_the_timeline_only_for_the_commands_that_use_it():
    """`summary` and `dump` start without the timeline's modules (60 ms of imports)."""
    script = "import sys, xvtrace.cli; print(sorted(m for m in sys.modules if 'timeline' in m))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.stdout == "[]\n", proc.stderr


@pytest.mark.parametrize(
    ("code", "status", "stderr"), [("0", 0, ""), ("3", 3, ""), ("'no bundle'", 1, "no bundle\n")]
)
def test_leave_flushes_what_is_still_buffered(code, status, stderr):
    """Output a command printed without flushing (block-buffered into a pipe) is not lost to
    the prompt exit; a status that is not a number exits the usual way."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    script = f"import sys; from xvtrace.entry import leave; print('x' * 5000); leave({code})"
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (status, "x" * 5000 + "\n", stderr)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator settings")
def test_emulate_reuses_a_freed_large_block_without_faulting_it_in_again():
    """glibc maps blocks over 32 MiB on their own and unmaps them when freed, so the next one
    is faulted in afresh (the kernel zeroes every page); emulate keeps one heap instead."""
    count = (
        "import resource, sys; from xvtrace import allocator; allocator.tune(sys.argv[1:]); "
        "import numpy as np; a = np.ones(6_250_000); del a; "  # 50 MB, touched, freed
        "f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; b = np.ones(6_250_000); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("GLIBC_TUNABLES", None)
    env["NUMPY_MADVISE_HUGEPAGE"] = "0"  # 4 KiB pages in both: the counts are comparable

    def faults(*argv: str) -> int:
        cmd = [sys.executable, "-c", count, *argv]
        return int(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)

    assert faults("emulate") < 1000  # the freed 50 MB is reused
    assert faults("summary") < 1000  # (its heap too, jemalloc aside)
    assert faults("timeline") > 10_000  # 12k pages faulted in again


def test_emulate_keeps_freed_memory_unless_the_user_says_otherwise():
    from xvtrace import allocator

    show = (
        "import sys; from xvtrace import allocator; allocator.tune(sys.argv[1:]); import os; "
        "print(*(os.environ.get(k) for k in sys.argv[-1].split(',')))"
    )
    keys = ("_RJEM_MALLOC_CONF", "NUMPY_MADVISE_HUGEPAGE", "OPENBLAS_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in keys}

    def settings(*argv: str) -> str:
        cmd = [sys.executable, "-c", show, *argv, ",".join(keys)]
        return subprocess.run(cmd, env=env, capture_output=True, text=True).stdout.strip()

    assert settings("emulate", "-t", "argo") == f"{allocator.JEMALLOC_CONF} 0 1"
    # other commands give freed memory back within a second, numpy's settings untouched
    assert settings("timeline", "b") == f"{allocator.RETURNING_CONF} None None"
    # the summary (which may ingest through polars' threads): numpy's, jemalloc's returning
    assert settings("summary", "t.bin") == f"{allocator.RETURNING_CONF} 0 1"
    env["_RJEM_MALLOC_CONF"] = "narenas:2"
    env["OPENBLAS_NUM_THREADS"] = "2"
    assert settings("emulate") == "narenas:2 0 2"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["-e", "nosuch.*"], "no record matches -e nosuch.*"),
        (["--dom", "77", "--cpu", "3"], "no record matches --dom 77 --cpu 3"),
        (["--from", "900", "--to", "901"], "no record matches --from 900 --to 901"),
    ],
)
def test_a_filter_that_selects_nothing_says_so(x86_bundle, args, says):
    """`dump -e nosuch.*` printed nothing and exited 0, as if the trace had no such record
    by design: now the empty answer is said (exit 0; it is an answer)."""
    r = CliRunner().invoke(cli, ["dump", str(x86_bundle), *args])
    assert r.exit_code == 0 and r.stdout == "" and says in r.stderr, r.output


def test_an_impossible_time_window_is_refused(x86_bundle):
    r = CliRunner().invoke(cli, ["dump", str(x86_bundle), "--from", "5", "--to", "2"])
    assert r.exit_code == 2 and "not after --from 5: an empty window" in r.output


def test_a_bundle_is_not_retimed_silently(x86_bundle):
    """--cpu-khz and --hvm-vendor are taken wherever a raw capture is; for a bundle timed
    otherwise the commands that read its stored tables say how to re-time it."""
    for cmd in ("timeline", "report", "export perfetto -o /dev/null"):
        r = CliRunner().invoke(cli, [*cmd.split(), str(x86_bundle), "--cpu-khz", "1000000"])
        assert r.exit_code == 2 and "ingested with --cpu-khz 2445425" in r.output, (cmd, r.output)
        assert f"xvtrace ingest {x86_bundle} --cpu-khz 1000000" in r.output
    ok = CliRunner().invoke(cli, ["timeline", str(x86_bundle), "--cpu-khz", "2445425"])
    assert ok.exit_code == 0, ok.output
    raw = CliRunner().invoke(cli, ["timeline", str(X86_PV / "trace.bin"), "--cpu-khz", "1000000"])
    assert raw.exit_code == 0, raw.output  # a raw capture is ingested at that rate
