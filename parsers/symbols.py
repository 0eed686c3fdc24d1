"""ELF symbols and DWARF line tables (pyelftools): address -> function+offset and file:line.

Used to name guest RIPs in VM-exit records (`--vmlinux`: the guest kernel's vmlinux) and
backend PCs (`--elf`: a device model or backend binary). Tables are loaded once into sorted
numpy arrays; lookups are vectorized binary searches, so naming a million exits costs a
searchsorted, not a million dictionary walks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xvtrace.parsers.errors import ParseError


@dataclass
class Symbols:
    path: Path
    starts: np.ndarray  # u64 function start addresses, sorted
    ends: np.ndarray  # u64 one past the end (start + size; next start when size is 0)
    names: np.ndarray  # object: function names
    line_addrs: np.ndarray  # u64 line-table row addresses, sorted
    line_files: np.ndarray  # object
    line_nums: np.ndarray  # i64
    bias: int = 0  # added to every address of the file (a relocated load)

    @classmethod
    def load(cls, path: str | os.PathLike, *, bias: int = 0, lines: bool = True) -> Symbols:
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile
        from elftools.elf.sections import SymbolTableSection

        path = Path(path)
        try:
            with path.open("rb") as fh:
                elf = ELFFile(fh)
                funcs: dict[int, tuple[int, str]] = {}
                for sec in elf.iter_sections():
                    if not isinstance(sec, SymbolTableSection):
                        continue
                    for sym in sec.iter_symbols():  # once per symbol, at load
                        if sym["st_info"]["type"] == "STT_FUNC" and sym["st_value"] and sym.name:
                            funcs.setdefault(sym["st_value"], (sym["st_size"], sym.name))
                la, lf, ln = _line_table(elf) if lines and elf.has_dwarf_info() else ([], [], [])
        except (ELFError, OSError, ValueError, KeyError) as e:
            raise ParseError(str(path), 0, f"cannot read ELF symbols: {e}") from e
        if not funcs:
            raise ParseError(str(path), 0, "no function symbols (a stripped binary?)")
        starts = np.array(sorted(funcs), dtype=np.uint64)
        sizes = np.array([funcs[int(s)][0] for s in starts], dtype=np.uint64)
        nxt = np.append(starts[1:], np.uint64(2**64 - 1))
        ends = np.where(sizes > 0, starts + sizes, nxt)
        names = np.array([funcs[int(s)][1] for s in starts], dtype=object)
        order = np.argsort(np.array(la, dtype=np.uint64), kind="stable")
        return cls(
            path, starts, ends, names,
            np.array(la, dtype=np.uint64)[order], np.array(lf, dtype=object)[order],
            np.array(ln, dtype=np.int64)[order], bias,
        )  # fmt: skip

    def functions(self, addrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(name or None, offset into it) for each address."""
        a = np.asarray(addrs, dtype=np.uint64) - np.uint64(self.bias)
        i = np.searchsorted(self.starts, a, side="right") - 1
        ok = (i >= 0) & (a < self.ends[np.clip(i, 0, None)])
        i = np.clip(i, 0, None)
        names = np.where(ok, self.names[i], None)
        return names, np.where(ok, a - self.starts[i], 0).astype(np.uint64)

    def lines(self, addrs: np.ndarray) -> np.ndarray:
        """'file:line' of the line-table row covering each address (None without DWARF)."""
        a = np.asarray(addrs, dtype=np.uint64) - np.uint64(self.bias)
        if not len(self.line_addrs):
            return np.full(len(a), None, dtype=object)
        i = np.searchsorted(self.line_addrs, a, side="right") - 1
        ok = i >= 0
        i = np.clip(i, 0, None)
        text = np.char.add(
            np.char.add(self.line_files[i].astype(str), ":"), self.line_nums[i].astype(str)
        )
        names, _ = self.functions(addrs)
        return np.where(ok & (names != None), text.astype(object), None)  # noqa: E711 (object array)

    def describe(self, addrs: np.ndarray) -> np.ndarray:
        """`func+0xoff (file:line)` per address; '' where the address is not in the file."""
        names, off = self.functions(addrs)
        lines = self.lines(addrs)
        out = np.full(len(names), "", dtype=object)
        has = names != None  # noqa: E711
        out[has] = names[has] + "+" + np.char.mod("%#x", off[has]).astype(object)
        withline = has & (lines != None)  # noqa: E711
        out[withline] = out[withline] + " (" + lines[withline] + ")"
        return out


def _line_table(elf) -> tuple[list[int], list[str], list[int]]:
    """Rows of every DWARF line program (state machine rows, as addr2line uses them)."""
    addrs, files, nums = [], [], []
    dwarf = elf.get_dwarf_info()
    for cu in dwarf.iter_CUs():
        prog = dwarf.line_program_for_CU(cu)
        if prog is None:
            continue
        header = prog.header
        names = [f.name.decode(errors="replace") for f in header["file_entry"]]
        base = 1 if header["version"] < 5 else 0
        for entry in prog.get_entries():
            st = entry.state
            if st is None or st.end_sequence:
                continue
            idx = st.file - base
            addrs.append(st.address)
            files.append(names[idx] if 0 <= idx < len(names) else "?")
            nums.append(st.line)
    return addrs, files, nums
