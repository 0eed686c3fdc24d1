"""Perfetto / chrome://tracing export: the trace-event JSON structure."""

from __future__ import annotations

import json
from collections import Counter

from click.testing import CliRunner
from helpers import QEMU_PCI

from xvtrace import api
from xvtrace.cli import cli
from xvtrace.emulate import EmulateOptions, emulate


def _load(path):
    data = json.loads(path.read_text())
    return data["traceEvents"]


def test_emulated_bundle_exports_slices_tracks_and_flows(tmp_path):
    r = emulate(
        EmulateOptions(
            transport="epam-mmio", workload="randrw-16k-qd8", requests=300, out=tmp_path / "b"
        )
    )
    api.ingest(r.bundle)
    out = tmp_path / "trace.json"
    res = CliRunner().invoke(cli, ["export", "perfetto", str(r.bundle), "-o", str(out)])
    assert res.exit_code == 0, res.output
    ev = _load(out)
    kinds = Counter((e["ph"], e["name"]) for e in ev)
    for name in ("element (pop -> fill)", "device I/O", "fill -> interrupt", "interrupt"):
        assert kinds[("X", name)] == 300
    assert kinds[("X", "notify trap")] == 600  # on the guest's vCPU and on the pCPU
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in ev if e["ph"] == "X")
    chain = {p: {e["id"]: e for e in ev if e["ph"] == p} for p in "stf"}
    assert chain["s"].keys() == chain["t"].keys() == chain["f"].keys() and len(chain["s"]) == 300
    # kick (vCPU) -> pop (backend) -> interrupt (vCPU), in time order
    assert all(
        chain["s"][i]["ts"] <= chain["t"][i]["ts"] <= chain["f"][i]["ts"] for i in chain["s"]
    )
    assert {e["pid"] for e in chain["s"].values()} == {e["pid"] for e in chain["f"].values()} != {
        e["pid"] for e in chain["t"].values()}  # fmt: skip
    names = {e["args"]["name"] for e in ev if e["ph"] == "M"}
    assert {
        "device model (QEMU)",
        "guest vCPUs",
        "vCPU 0",
        "physical CPUs (Xen)",
        "pCPU 1",
    } <= names


def test_backend_without_log_exports_the_hypervisor_view(tmp_path):
    r = emulate(
        EmulateOptions(
            transport="pv-blkif", workload="randrw-16k-qd8", requests=200, out=tmp_path / "b"
        )
    )
    api.ingest(r.bundle)
    out = tmp_path / "trace.json"
    res = CliRunner().invoke(cli, ["export", "perfetto", str(r.bundle), "-o", str(out)])
    assert res.exit_code == 0, res.output
    ev = _load(out)
    names = {e["args"]["name"] for e in ev if e["ph"] == "M"}
    assert {"backend (dom0 block layer)", "vCPU 0", "vCPU 1", "pCPU 1", "pCPU 2"} <= names
    assert sum(1 for e in ev if e["ph"] == "f") == 200


def test_real_capture_exports_without_a_hypervisor_side(tmp_path):
    runner = CliRunner()
    assert (
        runner.invoke(
            cli, ["ingest", str(QEMU_PCI / "trace.log"), "-o", str(tmp_path / "b")]
        ).exit_code
        == 0
    )
    out = tmp_path / "t.json"
    res = runner.invoke(cli, ["export", "perfetto", str(tmp_path / "b"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    ev = _load(out)
    assert sum(1 for e in ev if e["ph"] == "X" and e["name"] == "element (pop -> fill)") == 1321
    assert not any(e["ph"] in "sf" for e in ev)
    tracks = {e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "thread_name"}
    assert len(tracks) == 4  # blk queue 0, net rx/tx/ctrl


def test_the_trace_is_the_same_however_its_rows_are_streamed(tmp_path, monkeypatch):
    """Slices are written WRITE_ROWS rows at a time: cut into 7-row pieces, the trace is the
    same events in the same order, and the count returned is the events written."""
    from xvtrace.output import perfetto

    r = emulate(EmulateOptions(transport="epam-mmio", workload="randrw-16k-qd8", requests=50,
                               out=tmp_path / "b"))  # fmt: skip
    api.ingest(r.bundle)
    whole, cut = tmp_path / "whole.json", tmp_path / "cut.json"
    n = api.export_perfetto(r.bundle, whole)
    monkeypatch.setattr(perfetto, "WRITE_ROWS", 7)
    assert api.export_perfetto(r.bundle, cut) == n
    assert _load(cut) == _load(whole) and len(_load(whole)) == n
    assert json.loads(cut.read_text())["displayTimeUnit"] == "ns"


def test_the_exits_drawn_are_the_earliest_however_the_fold_bounds_them(tmp_path, monkeypatch):
    """At most HOST_LIMIT VM exits are drawn, the earliest: kept bounded as the exits close
    (in chunks of 50 rows here, so the set is cut down many times), they are the first of
    every exit drawn without a limit."""
    from xvtrace.analysis import summary
    from xvtrace.output import perfetto

    r = emulate(EmulateOptions(transport="epam-mmio", workload="randrw-16k-qd8", requests=200,
                               out=tmp_path / "b"))  # fmt: skip
    api.ingest(r.bundle)

    def exits(limit: int) -> list[tuple]:
        monkeypatch.setattr(perfetto, "HOST_LIMIT", limit)
        out = tmp_path / f"{limit}.json"
        api.export_perfetto(r.bundle, out)
        return sorted(
            (e["ts"], e["tid"], e["dur"], e["name"])
            for e in _load(out)
            if e["ph"] == "X" and e["pid"] == perfetto.PID_EXITS
        )

    every = exits(10**9)
    monkeypatch.setattr(summary, "CHUNK_ROWS", 50)
    first = exits(37)
    assert len(every) > 3 * 37
    assert first == every[:37]


def test_requests_left_out_of_the_trace_are_left_out_of_every_slice(monkeypatch):
    """A piece of the trace is made a slice of the requests at a time, the requests it
    does not draw (no pop, no trap) filtered out within each slice: cut into slices of 3,
    the events are those of the requests drawn, in order, as made from all at once."""
    import io

    import polars as pl

    from xvtrace.output import perfetto

    n, unseen = 10, {2, 3, 7}
    pop = [None if i in unseen else 1_000 * i for i in range(n)]
    req = pl.LazyFrame({
        "request": list(range(n)), "op": ["write"] * n, "bytes": [4096] * n,
        "dev": ["virtio-blk"] * n, "queue": [0] * n,
        "kick_ns": [1_000 * i - 100 for i in range(n)], "pop_ns": pop,
        "handle_ns": [p and p + 10 for p in pop], "io_done_ns": [p and p + 500 for p in pop],
        "fill_ns": [p and p + 600 for p in pop], "notify_ns": [1_000 * i + 700 for i in range(n)],
    }, schema_overrides=dict.fromkeys(("kick_ns", "pop_ns", "handle_ns", "io_done_ns",
                                       "fill_ns", "notify_ns"), pl.Int64))  # fmt: skip

    def written(rows: int) -> list[dict]:
        monkeypatch.setattr(perfetto, "WRITE_ROWS", rows)
        out = io.StringIO()
        perfetto.write_trace(out, perfetto.trace_events(req))
        return json.loads(out.getvalue())["traceEvents"]

    cut = written(3)
    assert cut == written(1000)
    drawn = [e["args"]["request"] for e in cut if e.get("name") == "element (pop -> fill)"]
    assert drawn == [i for i in range(n) if i not in unseen]
    assert (
        not {e["args"]["request"] for e in cut if "args" in e and "request" in e["args"]} & unseen
    )
