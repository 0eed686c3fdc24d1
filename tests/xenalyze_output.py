"""Parse the parts of `xenalyze --summary` / `--dump-all` text the oracle tests compare."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import polars as pl
import pytest


@dataclass
class XenalyzeSummary:
    total_s: float = 0.0
    volume: dict[tuple[int, str], int] = field(default_factory=dict)
    runstates: dict[tuple[int, int, str], tuple[int, float]] = field(default_factory=dict)
    exits: dict[tuple[int, int, str], tuple[int, float, int]] = field(default_factory=dict)
    hypercalls: dict[tuple[int, int], int] = field(default_factory=dict)
    pv_events: dict[tuple[int, str], int] = field(default_factory=dict)
    # (dom, vcpu, exit reason, handler) -> (count, seconds, average cycles)
    exit_handlers: dict[tuple[int, int, str, str], tuple[int, float, int]] = field(
        default_factory=dict
    )
    # (dom, vcpu, port, "read" | "write") -> (count, seconds, average cycles)
    io_ports: dict[tuple[int, int, int, str], tuple[int, float, int]] = field(default_factory=dict)


TIMES = r"\s+(\d+)\s+([\d.]+)s\s+[\d.]+%\s+(\d+) cyc"  # PRINT_SUMMARY: count, s, %, average


def _times(m: re.Match, first: int) -> tuple[int, float, int]:
    return int(m.group(first)), float(m.group(first + 1)), int(m.group(first + 2))


def parse_summary(text: str) -> XenalyzeSummary:
    out = XenalyzeSummary()
    cpu = dom = vcpu = exit_name = None
    section = "volume"
    for line in text.splitlines():
        if m := re.match(r"Total time: ([\d.]+) seconds", line):
            out.total_s = float(m.group(1))
        elif m := re.match(r" - cpu (\d+) -$", line):
            cpu = int(m.group(1))
        elif m := re.match(r"\|-- Domain (\d+) --\|", line):
            dom, vcpu, section = int(m.group(1)), None, "domain"
        elif m := re.match(r"-- v(\d+) --$", line):
            vcpu, section = int(m.group(1)), "vcpu"
        elif line.startswith(" Runstates:"):
            section = "runstates" if vcpu is not None else "domain"
        elif line.startswith("Exit reasons:"):
            section = "exits"
        elif line.startswith("PV events:"):
            section = "pv"
        elif line.startswith("IO address summary"):
            section = "io"
        elif line.startswith(("Guest interrupt counts:", "MMIO address summary", " cpu affinity")):
            section = "other"
        elif section == "volume" and (m := re.match(r" (\w+)\s*:\s+(\d+)$", line)):
            out.volume[(cpu, m.group(1))] = int(m.group(2))
        elif section == "runstates" and (m := re.match(r"\s+(\w+):\s+(\d+)\s+([\d.]+)s", line)):
            out.runstates[(dom, vcpu, m.group(1))] = (int(m.group(2)), float(m.group(3)))
        elif section == "exits" and (m := re.match(r" (\w+)" + TIMES, line)):
            exit_name = m.group(1)
            out.exits[(dom, vcpu, exit_name)] = _times(m, 2)
        elif section == "exits" and (m := re.match(r"   (\S.*?)" + TIMES, line)):
            out.exit_handlers[(dom, vcpu, exit_name, m.group(1))] = _times(m, 2)
        elif section == "io" and (m := re.match(r"\s+([0-9a-f]+):\[([rw])\]" + TIMES, line)):
            direction = {"r": "read", "w": "write"}[m.group(2)]
            out.io_ports[(dom, vcpu, int(m.group(1), 16), direction)] = _times(m, 3)
        elif section == "pv" and (m := re.match(r"  ([a-z_/()4 ]+?)  (\d+)$", line)):
            out.pv_events[(dom, m.group(1))] = int(m.group(2))
        elif section == "pv" and (m := re.match(r"\s+\S+\s+\[\s*(\d+)\]:\s+(\d+)$", line)):
            key = (dom, int(m.group(1)))
            out.hypercalls[key] = out.hypercalls.get(key, 0) + int(m.group(2))
    return out


# "   0.000457665  x d2v0 npf ..." -- the pCPU activity column ('x', '|', '-', '.', ' ') sits
# between the time and the vCPU;
# lines xenalyze marks with a leading ']' are records it printed while post-processing.
DUMP_LINE = re.compile(r"^[\s\]]*(\d+)\.(\d{9})\s[^d]*?\sd(\d+)v(\d+) (.*)$")


def parse_dump(text: str) -> list[tuple[int, int, int, str]]:
    """(ns, dom, vcpu, description) of every timed, attributed --dump-all line."""
    rows = []
    for line in text.splitlines():
        if m := DUMP_LINE.match(line):
            ns = int(m.group(1)) * 1_000_000_000 + int(m.group(2))
            rows.append((ns, int(m.group(3)), int(m.group(4)), m.group(5)))
    return rows


def our_runstates(summary) -> dict:
    rs = summary.sections["runstates"]
    ours = {}
    for (dom, vcpu, state), grp in rs.group_by("dom", "vcpu", "state"):
        ours[(dom, vcpu, state)] = (int(grp["count"].sum()), grp["total_ns"].sum() / 1e9)
    for r in rs.filter(pl.col("entered_by").is_not_null()).iter_rows(named=True):
        ours[(r["dom"], r["vcpu"], r["entered_by"])] = (r["count"], r["total_ns"] / 1e9)
    return ours


def assert_runstates_match(theirs, ours, *, rel: float = 0.0):
    """Counts exactly; times to xenalyze's printed 0.01 s (and `rel` of the time: on one real
    HVM capture xenalyze's running time for the guest's vCPU exceeded ours by 9 ms of 3.19 s
    with equal counts, not yet explained)."""
    assert theirs.runstates, "xenalyze printed no runstates"
    for key, (count, secs) in theirs.runstates.items():
        assert key in ours, f"xenalyze has {key}, xvtrace does not"
        assert ours[key][0] == count, (key, ours[key], count)
        assert ours[key][1] == pytest.approx(secs, abs=0.0051, rel=rel), (key, ours[key], secs)
