"""ELF/DWARF address lookup against binutils' addr2line and nm as oracles."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from xvtrace.parsers.errors import ParseError
from xvtrace.parsers.symbols import Symbols

SOURCE = """
#include <stdio.h>
static int helper(int x) { int y = x * 3;
  return y + 1; }
int handle_notify(int q) {
  int r = helper(q);
  if (r > 10)
    r -= 10;
  return r;
}
int main(int argc, char **argv) { printf("%d\\n", handle_notify(argc)); return 0; }
"""

pytestmark = pytest.mark.skipif(
    not (shutil.which("gcc") and shutil.which("addr2line")), reason="needs gcc and binutils"
)


@pytest.fixture(scope="module")
def prog(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("elf")
    (d / "backend.c").write_text(SOURCE)
    subprocess.run(
        ["gcc", "-g", "-O0", "-o", str(d / "backend"), str(d / "backend.c")], check=True, cwd=d
    )
    return d / "backend"


def _nm(prog: Path) -> dict[str, int]:
    out = subprocess.run(
        ["nm", "--defined-only", str(prog)], capture_output=True, text=True, check=True
    ).stdout
    return {
        name: int(addr, 16)
        for addr, kind, name in (ln.split() for ln in out.splitlines() if len(ln.split()) == 3)
        if kind in "tT"
    }


def test_functions_match_nm(prog):
    syms = Symbols.load(prog)
    funcs = _nm(prog)
    addrs = np.array(
        [funcs["handle_notify"], funcs["handle_notify"] + 5, funcs["helper"] + 1], dtype=np.uint64
    )
    names, off = syms.functions(addrs)
    assert names.tolist() == ["handle_notify", "handle_notify", "helper"]
    assert off.tolist() == [0, 5, 1]
    assert syms.functions(np.array([1], dtype=np.uint64))[0][0] is None


def test_lines_match_addr2line(prog):
    syms = Symbols.load(prog)
    funcs = _nm(prog)
    addrs = [funcs[f] + d for f in ("handle_notify", "helper", "main") for d in (0, 4, 8, 12)]
    out = subprocess.run(
        ["addr2line", "-e", str(prog), *map(hex, addrs)], capture_output=True, text=True, check=True
    ).stdout.split()
    got = syms.lines(np.array(addrs, dtype=np.uint64))
    for want, have in zip(out, got, strict=True):
        wf, wl = want.rsplit(":", 1)
        hf, hl = have.rsplit(":", 1)
        assert Path(wf).name == Path(hf).name and wl.split()[0] == hl


def test_describe_and_bias(prog):
    syms = Symbols.load(prog, bias=0x1000_0000)
    a = _nm(prog)["helper"] + 0x1000_0000 + 2
    text = syms.describe(np.array([a], dtype=np.uint64))[0]
    assert text.startswith("helper+0x2 (") and "backend.c:" in text


def test_not_an_elf_is_a_clear_error(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"hello")
    with pytest.raises(ParseError, match="ELF"):
        Symbols.load(p)


def test_dump_and_summary_name_guest_rips(prog, tmp_path):
    import polars as pl
    from click.testing import CliRunner

    from xvtrace.cli import cli
    from xvtrace.parsers.xentrace import write_frame

    funcs = _nm(prog)
    rips = [funcs["handle_notify"] + 4] * 3 + [funcs["helper"]] * 2 + [0x10]
    n = len(rips)
    frame = pl.DataFrame(
        {
            "cpu": [0] * n,
            "ts_raw": [1000 * (i + 1) for i in range(n)],
            "has_ts": [True] * n,
            "code": [0x00081002] * n,
            "nargs": [2] * n,
            "arg0": [30] * n,  # VMX exit reason 30: IO instruction
            "arg1": rips,
            **{f"arg{i}": [0] * n for i in range(2, 7)},
        }
    )
    trace = tmp_path / "t.bin"
    write_frame(trace, frame, round_cycles=10**9)
    run = CliRunner().invoke
    out = run(
        cli,
        ["dump", str(trace), "--cpu-khz", "1000000", "--hvm-vendor", "vmx", "--vmlinux", str(prog)],
    )
    assert out.exit_code == 0, out.output
    lines = [ln for ln in out.output.splitlines() if "hvm.vmexit" in ln]
    assert f"rip={rips[0]:#x} <handle_notify+0x4 (backend.c:" in lines[0]
    assert "<helper+0x0" in lines[3] and lines[5].endswith("rip=0x10")
    out = run(
        cli,
        [
            "summary",
            str(trace),
            "--cpu-khz",
            "1000000",
            "--hvm-vendor",
            "vmx",
            "--vmlinux",
            str(prog),
        ],
    )
    assert out.exit_code == 0, out.output
    text = out.output.split("--- HVM exits by guest function ---")[1].splitlines()
    assert text[1].split()[:2] == ["3", "handle_notify"] and text[2].split()[:2] == ["2", "helper"]
    assert text[3].split()[:2] == ["1", "(unknown)"]
