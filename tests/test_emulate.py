"""The emulated host: real formats (xenalyze and our decoders as oracles), ground truth,
determinism, and bad parameters."""

from __future__ import annotations

import subprocess

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from xenalyze_output import parse_summary

from xvtrace import api
from xvtrace.cli import cli
from xvtrace.emulate import EmulateOptions, emulate
from xvtrace.emulate.workload import PRESETS, WorkloadError, parse
from xvtrace.parsers import qemu_log, xen_events
from xvtrace.replay import costs as cost_table
from xvtrace.replay.transports import NAMES, get

VMX_NAMES = {1: "EXTERNAL_INTERRUPT", 12: "HLT", 18: "VMCALL", 48: "EPT_VIOLATION"}
SVM_NAMES = {96: "VMEXIT_INTR", 120: "VMEXIT_HLT", 129: "VMEXIT_VMMCALL", 1024: "VMEXIT_NPF"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for name in NAMES:
        d = tmp_path_factory.mktemp(name)
        out[name] = emulate(EmulateOptions(transport=name, workload="rw=randrw,bs=16k,iodepth=4,numjobs=2",
                                           requests=400, seed=7, out=d / "b"))  # fmt: skip
    return out


@pytest.mark.parametrize("workload", sorted(PRESETS))
def test_every_preset_runs_on_every_transport_through_ingest(tmp_path, workload):
    """A stream job sends only: its receive path has no request (that once crashed)."""
    for name in NAMES:
        r = emulate(EmulateOptions(transport=name, workload=workload, requests=120, seed=3,
                                   out=tmp_path / name))  # fmt: skip
        assert r.requests == 120 and len(r.truth) == 120
        res = api.ingest(r.bundle, warn=lambda m: None)
        assert res.bundle.manifest["counts"]["events"] > 0


@pytest.mark.oracle
@pytest.mark.parametrize("name", NAMES)
def test_xenalyze_accepts_and_counts_agree(runs, xenalyze, name):
    r = runs[name]
    proc = subprocess.run([xenalyze, "--cpu-hz=2400M", "--summary", str(r.bundle / "raw" / "xentrace.bin")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "error" not in proc.stderr.lower() and "TSC skew" not in proc.stdout
    s = parse_summary(proc.stdout)
    got_exits = {}
    for (dom, _vcpu, reason), (count, _, _) in s.exits.items():
        assert dom == 1
        got_exits[reason] = got_exits.get(reason, 0) + count
    want = {VMX_NAMES[k]: v for k, v in r.expected["guest_exits"].items()}
    assert got_exits == want
    assert "skew" not in proc.stdout.lower()
    got_hc = {xen_events.hypercall_name(op): c for (dom, op), c in s.hypercalls.items() if dom == 0}
    assert got_hc == r.expected["dom0_hypercalls"]


@pytest.mark.oracle
def test_svm_host_reads_with_svm_mode(xenalyze, tmp_path):
    r = emulate(EmulateOptions(transport="epam-mmio", workload="randread-4k-qd1", requests=200, vendor="svm",
                               out=tmp_path / "b"))  # fmt: skip
    proc = subprocess.run([xenalyze, "--svm-mode", "--cpu-hz=2400M", "--summary", str(r.bundle / "raw" / "xentrace.bin")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    s = parse_summary(proc.stdout)
    got = {reason: c for (_, _, reason), (c, _, _) in s.exits.items()}
    assert got == {SVM_NAMES[k]: v for k, v in r.expected["guest_exits"].items()}


@pytest.mark.parametrize("name", NAMES)
def test_qemu_lines_decode_with_the_definitions(runs, name):
    r = runs[name]
    log = r.bundle / "raw" / "qemu.log"
    if get(name).backend != "qemu":
        assert not log.exists()
        return
    df, stats = qemu_log.decode_file(log)
    assert not stats.problems and stats.decoded == r.expected["qemu_lines"]
    counts = dict(df.group_by("event").len().iter_rows())
    assert counts["qemu.virtqueue_pop"] == counts["qemu.virtqueue_fill"] == r.requests
    reads = (r.truth["op"] == "read").sum()
    assert counts.get("qemu.virtio_blk_handle_read", 0) == reads
    # pops and fills pair up by element pointer exactly as on a live QEMU
    vq = api.virtqueues(df.lazy())
    assert vq["in_flight"].to_list() == [0] and vq["pops"].to_list() == [r.requests]


@pytest.mark.parametrize("name", NAMES)
def test_truth_is_consistent(runs, name):
    t = runs[name].truth
    path = get(name).block
    assert (t["latency_ns"] > 0).all()
    for i, o in enumerate(path):
        assert (t[f"{o.name}_end_ns"] >= t[f"{o.name}_start_ns"]).all()
        if i:  # operations of one request follow each other
            assert (t[f"{o.name}_start_ns"] >= t[f"{path[i - 1].name}_end_ns"] - 1e-6).all()
    assert np.allclose(t["done_ns"], t[f"{path[-1].name}_end_ns"])


def test_ingest_puts_every_source_in_one_table(runs):
    r = runs["suse-grant"]
    ev = (
        api.load(r.bundle).events()
        if (r.bundle / "events.parquet").exists()
        else api.ingest(r.bundle).bundle.events()
    )
    ev = ev.collect()
    assert set(ev["source"].unique()) == {"xentrace", "qemu", "virtqueue", "ftrace"}
    grants = ev.filter(pl.col("event") == "mem.grant_map")
    # one per buffer the backend maps: each data page, the header and the status
    assert len(grants) == int((r.truth["bytes"] // 4096 + 2).sum())
    # the ring left in guest memory carries grant references, not guest addresses
    descs = ev.filter((pl.col("event") == "virtqueue.desc") & (pl.col("size") > 0))
    assert len(descs) == r.expected["ring_descriptors"] and (descs["arg2"] == 1).all()


def test_non_grant_transports_leave_guest_physical_addresses(runs):
    ev = api.ingest(runs["epam-mmio"].bundle).bundle.events().collect()
    descs = ev.filter((pl.col("event") == "virtqueue.desc") & (pl.col("size") > 0))
    assert len(descs) > 0 and (descs["arg2"] == 0).all()


def test_same_seed_same_bundle_other_seed_differs(tmp_path):
    def run(seed, d):
        emulate(
            EmulateOptions(
                transport="epam-mmio", workload="randwrite-4k-qd32", requests=300, seed=seed, out=d
            )
        )
        return [(d / "raw" / f).read_bytes() for f in ("xentrace.bin", "qemu.log")]

    a, b, c = run(1, tmp_path / "a"), run(1, tmp_path / "b"), run(2, tmp_path / "c")
    assert a == b and a != c


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-t", "nope"], "valid: argo"),
        (["-w", "nope"], "presets: randread-4k-qd1"),
        (["-w", "rw=randread,bs=0"], "bs=0"),
        (["-w", "rw=randread,iodepth=300"], "iodepth=300: must be 1..256"),
        (["-w", "rw=randread,rate=-5"], "rate=-5.0: must be >= 0"),
        (["-w", "rw=sideways"], "valid values are read, write"),
        (["-w", "rw=read,colour=red"], "unknown workload keys"),
    ],
)
def test_bad_parameters_are_usage_errors(tmp_path, args, message):
    r = CliRunner().invoke(cli, ["emulate", *args, "-n", "10", "-o", str(tmp_path / "b")])
    assert r.exit_code == 2, r.output
    assert message in r.output


def test_cli_prints_a_side_by_side_table(tmp_path):
    r = CliRunner().invoke(
        cli,
        [
            "emulate",
            "-t",
            "pv-blkif,epam-mmio",
            "-n",
            "200",
            "-o",
            str(tmp_path / "b"),
            "--no-ingest",
        ],
    )
    assert r.exit_code == 0, r.output
    first, phases = r.output.split("mean us per phase")
    rows = {ln.split()[0]: ln.split() for ln in first.splitlines()[2:]}
    phase_rows = {ln.split()[0]: ln.split() for ln in phases.splitlines()[2:]}
    assert set(phase_rows) == {"pv-blkif", "epam-mmio"}
    assert set(rows) == {"pv-blkif", "epam-mmio"}
    # notify + interrupt + two ISR traps per request, and a HLT while the device works
    assert float(rows["epam-mmio"][5]) == 5.0
    assert float(rows["pv-blkif"][5]) == 3.0  # event-channel hypercall + upcall + HLT


def test_cli_decodes_each_bundle_unless_told_not_to(tmp_path):
    """`emulate` ingests what it wrote (the bundles are ready for summary and timeline);
    `--no-ingest` leaves the raw files alone, and a refused directory is refused first."""
    r = CliRunner().invoke(
        cli, ["emulate", "-t", "argo,pv-blkif", "-n", "50", "-o", str(tmp_path / "b")]
    )
    assert r.exit_code == 0, r.output
    assert all((tmp_path / "b" / t / "events.parquet").is_file() for t in ("argo", "pv-blkif"))
    r = CliRunner().invoke(
        cli, ["emulate", "-t", "argo", "-n", "50", "-o", str(tmp_path / "c"), "--no-ingest"]
    )
    assert r.exit_code == 0 and not (tmp_path / "c" / "events.parquet").exists()
    r = CliRunner().invoke(
        cli, ["emulate", "-t", "argo,pv-blkif", "-n", "50", "-o", str(tmp_path / "b")]
    )
    assert r.exit_code == 2 and "exists and is not empty" in r.output


def test_workload_parsing():
    w = parse("rw=randwrite,bs=1m,iodepth=32,numjobs=2,rate=1000")
    assert (w.bs, w.pages, w.iodepth, w.numjobs, w.rate) == (1 << 20, 256, 32, 2, 1000.0)
    with pytest.raises(WorkloadError, match="multiples of 512"):
        parse("rw=read,bs=1000")


@pytest.mark.oracle
def test_dropped_records_are_reported_as_lost(xenalyze, tmp_path):
    r = emulate(EmulateOptions(transport="epam-mmio", workload="randread-4k-qd1", requests=2000, drop_rate=0.02,
                               out=tmp_path / "b"))  # fmt: skip
    assert r.expected["lost_records"] > 0
    proc = subprocess.run([xenalyze, "--cpu-hz=2400M", "--summary", str(r.bundle / "raw" / "xentrace.bin")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0 and "skew" not in proc.stdout.lower()
    m = api.ingest(r.bundle).bundle.manifest
    (xen,) = [s for s in m["sources"] if s["format"] == "xentrace"]
    assert xen["lost"] == r.expected["lost_records"]
    # fewer exits survive than the run made; the truth keeps every request
    assert sum(r.expected["guest_exits"].values()) < 5 * 2000 and len(r.truth) == 2000


@pytest.fixture(scope="module")
def net_runs(tmp_path_factory):
    out = {}
    for name in NAMES:
        d = tmp_path_factory.mktemp("net-" + name)
        out[name] = emulate(EmulateOptions(transport=name, workload="net=rr,bs=200,iodepth=1,numjobs=2",
                                           requests=300, seed=3, out=d / "b"))  # fmt: skip
    return out


@pytest.mark.oracle
@pytest.mark.parametrize("name", NAMES)
def test_network_runs_pass_the_xenalyze_oracle(net_runs, xenalyze, name):
    r = net_runs[name]
    proc = subprocess.run([xenalyze, "--cpu-hz=2400M", "--summary", str(r.bundle / "raw" / "xentrace.bin")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0 and "skew" not in proc.stdout.lower()
    got = {}
    for (_, _, reason), (count, _, _) in parse_summary(proc.stdout).exits.items():
        got[reason] = got.get(reason, 0) + count
    assert got == {VMX_NAMES[k]: v for k, v in r.expected["guest_exits"].items()}


@pytest.mark.parametrize("name", NAMES)
def test_network_runs_write_packets_that_match_the_queues(net_runs, name):
    r = net_runs[name]
    from xvtrace.parsers import pcap

    pk, stats = pcap.decode_file(r.bundle / "raw" / "net.pcap")
    assert not stats.problems and len(pk) == r.requests == r.expected["packets"]
    tx = pk.filter(pl.col("addr") == 0x525400123456)
    assert len(tx) == (r.truth["op"] == "tx").sum() and (pk["size"] == 200 + 42).all()
    assert (pk["arg2"] == 17).all()  # UDP
    if get(name).backend == "qemu":
        df, _ = qemu_log.decode_file(r.bundle / "raw" / "qemu.log")
        vq = api.virtqueues(df.lazy())
        rx = vq.filter(pl.col("queue") == 0).row(0, named=True)
        # every received frame fills one rx buffer: frame + the 12-byte virtio_net_hdr
        assert rx["fills"] == len(pk) - len(tx) and rx["bytes_filled"] == rx["fills"] * (242 + 12)
        assert vq.filter(pl.col("queue") == 1)["pops"].item() == len(tx)


@pytest.mark.parametrize(
    "workload", ["rw=randrw,bs=16k,iodepth=4,numjobs=2", "net=rr,bs=64,numjobs=2"]
)
def test_chunked_writing_equals_one_pass(tmp_path, monkeypatch, workload, xenalyze):
    import xvtrace.emulate.host as em

    opts = {"transport": "epam-mmio", "workload": workload, "requests": 700, "seed": 5}
    whole = emulate(EmulateOptions(**opts, out=tmp_path / "whole"))
    monkeypatch.setattr(em, "CHUNK", 64)
    parts = emulate(EmulateOptions(**opts, out=tmp_path / "parts"))
    assert parts.expected == whole.expected
    a = sorted((tmp_path / "whole" / "raw" / "qemu.log").read_text().splitlines())
    b = sorted((tmp_path / "parts" / "raw" / "qemu.log").read_text().splitlines())
    assert a == b
    cols = ["cpu", "ts_raw", "code", "arg0", "arg1", "arg2"]
    da, _ = xentrace_decode(tmp_path / "whole" / "raw" / "xentrace.bin")
    db, _ = xentrace_decode(tmp_path / "parts" / "raw" / "xentrace.bin")
    assert da.select(cols).sort(cols).equals(db.select(cols).sort(cols))
    # per pCPU, the record sequence is the same (only the window framing differs)
    for c in da["cpu"].unique():
        assert (
            da.filter(pl.col("cpu") == c)["code"].to_list()
            == db.filter(pl.col("cpu") == c)["code"].to_list()
        )
    proc = subprocess.run([xenalyze, "--cpu-hz=2400M", "--summary", str(tmp_path / "parts" / "raw" / "xentrace.bin")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    got = {}
    for (_, _, reason), (count, _, _) in parse_summary(proc.stdout).exits.items():
        got[reason] = got.get(reason, 0) + count
    assert got == {VMX_NAMES[int(k)]: v for k, v in parts.expected["guest_exits"].items()}


def xentrace_decode(path):
    from xvtrace.parsers.xentrace import decode_file

    return decode_file(path, cpu_khz=2_400_000)


def test_runtime_bounded_run_writes_only_the_requests_it_issued(tmp_path):
    r = emulate(
        EmulateOptions(
            transport="epam-mmio", workload="randwrite-4k-qd32", runtime=0.02, out=tmp_path / "b"
        )
    )
    assert (r.truth["issue_ns"] < 0.02e9).all() and r.requests == len(r.truth) > 100
    df, _ = qemu_log.decode_file(r.bundle / "raw" / "qemu.log")
    assert (df["event"] == "qemu.virtqueue_pop").sum() == r.requests
    assert r.expected["guest_exits"][48] == 3 * r.requests  # notify + two ISR traps each


def test_a_failed_run_leaves_no_truth_or_manifest(tmp_path, monkeypatch):
    """The truth table is written beside the streams; when they fail, it goes too."""
    import xvtrace.emulate.host as em

    def broken(*args, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(em, "_write_streams", broken)
    with pytest.raises(OSError, match="disk full"):
        emulate(EmulateOptions(transport="pv-blkif", workload="randread-4k-qd1", requests=500,
                               out=tmp_path / "b"))  # fmt: skip
    assert not (tmp_path / "b" / "truth.parquet").exists()
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_qemu_texts_are_shared_per_argument_tuple_and_equal_every_line_rendered():
    from xvtrace.emulate import qemu_lines as ql
    from xvtrace.emulate.pending import Texts
    from xvtrace.parsers.trace_events import TraceEvents, render_lines

    defs, rng, n = TraceEvents.default(), np.random.default_rng(1), 500
    t = rng.random(n) * 1e6
    elem = ql.ELEM_BASE + rng.integers(0, 8, n).astype(np.uint64) * np.uint64(0x140)
    args = {
        "virtqueue_pop": {"vq": ql.VQ, "elem": elem, "in_num": rng.integers(1, 3, n), "out_num": 1},
        "virtio_blk_handle_write": {"vdev": ql.VDEV, "req": elem, "nsectors": 8,
                                    "sector": rng.integers(0, 2**40, n, dtype=np.uint64)},
        "virtqueue_flush": {"vq": ql.VQ, "count": 1},
        "virtio_mmio_setting_irq": {"level": np.ones(n)},
    }  # fmt: skip
    lines = ql.Lines(defs)
    want = []
    for event, a in args.items():
        lines.add(event, t, 0.0, **a)
        cols = {k: np.broadcast_to(np.asarray(v), n).astype(np.uint64) for k, v in a.items()}
        want += Texts(*render_lines(defs.events[event], cols, n)).to_list()  # a line per row
    from xvtrace.emulate.pending import Pending

    p, rest = lines.cut(Pending.empty(), float("inf"))
    assert len(rest) == 0
    order = np.argsort(np.tile(t, 4), kind="stable")  # all at order 0: by time, then as added
    assert p.texts.gather(p.ids).to_list() == [want[i] for i in order]
    # 16 (elem x in_num) + 500 (every sector differs) + 1 + 1 texts for 2000 lines
    assert len(p.texts) == 16 + n + 2


def test_batch_cut_in_time_order_and_carry_their_texts():
    from xvtrace.emulate.pending import Batch, Pending

    first = Batch()
    first.add_group(np.array([5.0]), 0.2, np.array([0]), pl.Series(["a"]))
    first.add_group(np.array([1.0, 5.0]), 0.1, np.array([0, 1]), pl.Series(["b", "c"]))
    now, later = first.cut(Pending.empty(), 5.0)
    assert now.texts.gather(now.ids).to_list() == ["b"]
    assert later.texts.to_list() == ["c", "a"]  # t=5: order 0.1 before 0.2
    assert later.order.tolist() == [0.1, 0.2]
    second = Batch()
    second.add_group(np.array([5.0, 4.0]), 0.1, np.array([0, 0]), pl.Series(["d"]))
    second.add_group(np.array([5.0]), 0.0, np.array([0]), pl.Series(["e"]))
    now, rest = second.cut(later, float("inf"))
    # ties in time: by order, then the carried lines first, then as added
    assert now.texts.gather(now.ids).to_list() == ["d", "e", "c", "d", "a"]
    assert len(rest) == 0


@settings(max_examples=80, deadline=None)
@given(
    groups=st.lists(
        st.tuples(st.sampled_from([-0.1, 0.0, 0.1, 0.2]), st.lists(st.integers(0, 6), max_size=9)),
        max_size=6,
    ),
    marks=st.lists(st.integers(0, 7), min_size=1, max_size=4),
)
def test_batch_cut_equals_one_sort_by_time_order_and_arrival(groups, marks):
    """Lines cut chunk after chunk come out as one sort of all of them by (time, tie order,
    the chunk they came in, the order they were added) gives, whatever the marks."""
    from xvtrace.emulate.pending import Batch, Pending

    carry, got, lines, prev = Pending.empty(), [], [], 0
    for c, mark in enumerate(np.cumsum(marks)):
        batch = Batch()  # a chunk's lines are at or after the last chunk's mark
        for g, (order, offsets) in enumerate(groups):
            times = [prev + o for o in offsets]
            texts = [f"{c}.{g}.{i}" for i in range(len(times))]
            batch.add_group(np.array(times, float), order, np.arange(len(times)), pl.Series(texts))
            lines += [(t, order, c, g, i, texts[i]) for i, t in enumerate(times)]
        now, carry = batch.cut(carry, float(mark))
        prev = mark
        got += now.texts.gather(now.ids).to_list()
    got += carry.texts.gather(carry.ids).to_list()
    assert got == [x[-1] for x in sorted(lines)]


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.text(min_size=0, max_size=40), min_size=1, max_size=8),
    picks=st.lists(st.integers(0, 7), min_size=1, max_size=60),
    us=st.lists(st.integers(0, 10**19), min_size=60, max_size=60),
    block=st.sampled_from([64, 200, 1 << 20]),
)
def test_pending_write_is_python_formatting_of_each_line(texts, picks, us, block):
    """The compiled line writer against f-strings: any text (UTF-8, empty), stamps with any
    number of second digits, and write blocks smaller than a few lines."""
    import io

    from xvtrace.emulate import pending

    ids = np.array([p % len(texts) for p in picks])
    lines = pending.Pending(
        np.zeros(len(ids)), np.zeros(len(ids)), ids, pl.Series(texts, dtype=pl.String)
    )
    stamps = np.sort(np.array(us[: len(ids)], np.uint64)).astype(np.int64) % 10**18
    plain, stamped = io.BytesIO(), io.BytesIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pending, "WRITE_BLOCK", block)
        assert lines.write(plain) == len(ids)
        assert lines.write(stamped, b"4242@", stamps) == len(ids)
    assert plain.getvalue() == "".join(texts[i] + "\n" for i in ids).encode()
    want = "".join(
        f"4242@{u // 10**6}.{u % 10**6:06d}:{texts[i]}\n" for i, u in zip(ids, stamps, strict=True)
    )
    assert stamped.getvalue() == want.encode()


def test_pending_write_writes_a_missing_text_as_an_empty_line():
    import io

    from xvtrace.emulate.pending import Pending

    out = io.BytesIO()
    assert Pending.of(np.zeros(3), pl.Series(["abc", None, "de"])).write(out) == 3
    assert out.getvalue() == b"abc\n\nde\n"


def test_pending_write_refuses_negative_stamps():
    import io

    from xvtrace.emulate.pending import Pending

    lines = Pending.of(np.zeros(2), pl.Series(["a", "b"]))
    with pytest.raises(ValueError, match="non-negative"):
        lines.write(io.BytesIO(), b"1@", np.array([1, -1]))


@pytest.mark.parametrize("chunk", [10_000, 100_000])
def test_runs_longer_than_an_hour_of_tsc_stay_in_order(tmp_path, monkeypatch, xenalyze, chunk):
    """4000 s of emulated time is 9.6e12 cycles, past the 2^43 a packed sort key holds: with
    10k-request chunks each sort spans 1000 s, with 100k requests one sort spans it all."""
    import xvtrace.emulate.host as em

    monkeypatch.setattr(em, "CHUNK", chunk)
    w = "rw=randread,bs=4k,iodepth=1,rate=10"
    r = emulate(
        EmulateOptions(transport="pv-blkif", workload=w, requests=40_000, out=tmp_path / "b")
    )
    assert r.truth["issue_ns"].max() > 3990e9
    df, _ = xentrace_decode(r.bundle / "raw" / "xentrace.bin")
    per_cpu = df.group_by("cpu").agg((pl.col("ts_raw").diff() < 0).sum().alias("back"))
    assert per_cpu["back"].sum() == 0
    proc = subprocess.run([xenalyze, "--cpu-hz=2400M", "--summary", str(r.bundle / "raw" / "xentrace.bin")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and "skew" not in proc.stdout, proc.stdout[-500:]


def test_records_lost_at_the_end_of_a_pcpu_are_reported_on_that_pcpu():
    from xvtrace.emulate import xen_records as xr
    from xvtrace.parsers.xen_events import TRC_LOST_RECORDS

    rec = xr.Records()
    rec.add(np.array([0, 0, 0, 1, 1]), np.array([10.0, 20, 30, 15, 25]), 0.0, 0x0002F001, ((7,),))
    table = rec.columns(1_000_000, 0)  # 1 cycle per ns
    table = table.take(xr.time_order(table))

    class Burst:  # a burst of 2 starting at the second record of pCPU 0
        def random(self, n):
            return np.where(np.arange(n) == 1, 0.0, 1.0)

    out = xr.drop_bursts(table, 0.5, Burst(), burst=2)
    lost = out.code == TRC_LOST_RECORDS
    assert out.cpu[lost].tolist() == [0] and out.args[lost, 0].tolist() == [2]
    assert out.tsc[lost].tolist() == [30]  # pCPU 0 has nothing later: its last lost record
    assert out.cpu.tolist() == [0, 0, 1, 1]  # in pCPU 0's place, before pCPU 1's records
    assert xr.expected_counts(out)["lost_records"] == 2


def test_an_empty_chunk_of_records_writes_nothing():
    import io

    from xvtrace.emulate import xen_records as xr

    rec = xr.Records()
    rec.add(0, np.array([5.0]), 0.0, 0x0002F001, ((1,),))
    empty = rec.columns(2_400_000, 10**9).take(np.zeros(1, bool))
    assert empty.write(io.BytesIO(), round_cycles=1000) == 0


def _stretch_gaps(paths, path_of, sched, job):
    """The reference definition of a vCPU's idle stretches: per job, its busy stretches
    (an operation on the vCPU not inside another's hold, to the end of its own hold) in
    order of start, and the gaps over MIN_IDLE_NS between consecutive ones."""
    from xvtrace.emulate.xen_records import MIN_IDLE_NS
    from xvtrace.replay.transports.base import held

    busy_s, busy_e, jobs = [], [], []
    for i, path in enumerate(paths):
        m = path_of == i
        names = [o.name for o in path]
        for k, o in enumerate(path):
            if o.resource != "vcpu" or k in held(path):
                continue
            until = names.index(o.hold_until) if o.hold_until else k
            busy_s.append(sched.start[m, k])
            busy_e.append(sched.end[m, until])
            jobs.append(job[m])
    s, e, j = (np.concatenate(x) for x in (busy_s, busy_e, jobs))
    order = np.lexsort((s, j))
    s, e, j = s[order], e[order], j[order]
    same = np.r_[j[1:] == j[:-1], False]
    gap_s, gap_e = e, np.r_[s[1:], 0.0]
    idle = same & (gap_e - gap_s > MIN_IDLE_NS)
    return gap_s[idle], gap_e[idle], j[idle]


@pytest.mark.parametrize("transport", NAMES)
@pytest.mark.parametrize(
    "workload", ["randread-4k-qd1", "rw=randrw,iodepth=8,numjobs=3,rate=20000", "net-stream-1k"]
)
def test_the_event_loop_records_exactly_the_vcpu_idle_stretches(transport, workload):
    """The engine notes a vCPU's idle stretches as it runs (the emulator writes them per
    chunk without waiting for the whole run): the same as the busy stretches define."""
    import xvtrace.emulate.host as em
    from xvtrace.emulate.xen_records import MIN_IDLE_NS
    from xvtrace.replay import engine

    w = parse(workload)
    paths = [
        get(transport).path(k) for k in (["block"] if w.kind == "block" else ["net_tx", "net_rx"])
    ]
    req, dur, path_of = em._requests(
        EmulateOptions(transport=transport, workload=workload, requests=3000, out=None),
        w,
        paths,
        cost_table.costs_for(cost_table.load(None), "x86_64"),
    )
    sim = engine.simulation(paths, path_of, dur, req.job, req.not_before, iodepth=w.iodepth,
                            njobs=w.numjobs)  # fmt: skip
    while not sim.advance(997):  # slices that end anywhere
        pass
    s, e, j = sim.gaps()
    keep = e - s > MIN_IDLE_NS
    s, e, j = s[keep], e[keep], j[keep]
    order = np.lexsort((s, j))
    want = _stretch_gaps(paths, path_of, sim.schedule(), req.job)
    assert len(want[0]) > 0 or workload == "net-stream-1k"
    for got, ref in zip((s[order], e[order], j[order]), want, strict=True):
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize(
    ("transport", "workload"),
    [("epam-mmio", "randread-4k-qd1"), ("pv-blkif", "rw=randrw,iodepth=4,numjobs=3,rate=30000"),
     ("gsoc-xenbus", "net-rr-64")],
)  # fmt: skip
def test_a_bundle_does_not_depend_on_how_far_the_event_loop_ran_ahead(
    tmp_path, monkeypatch, transport, workload
):
    """Chunks are written while the event loop still runs: with 37-event slices (the writers
    wait at almost every step) and with the whole loop in one slice, every file is the same."""
    import hashlib

    import xvtrace.emulate.host as em
    from xvtrace.emulate import loop

    monkeypatch.setattr(em, "CHUNK", 700)

    def files(slice_events: int, name: str) -> dict:
        monkeypatch.setattr(loop.EventLoop, "SLICE", slice_events)
        b = tmp_path / name
        emulate(EmulateOptions(transport=transport, workload=workload, requests=4000, out=b,
                               drop_rate=0.01))  # fmt: skip
        return {f.relative_to(b): hashlib.md5(f.read_bytes()).digest()
                for f in b.rglob("*") if f.is_file() and f.name != "manifest.json"}  # fmt: skip

    small, whole = files(37, "small"), files(1 << 40, "whole")
    assert len(small) >= 5 and small == whole


def test_a_chunk_waits_until_its_mark_and_idle_stretches_are_final():
    """What the writers wait for, on a loop's state as it stands between two slices."""
    from types import SimpleNamespace

    from xvtrace.emulate.loop import EventLoop

    inf = np.inf
    # requests 0-3 done, 4 issued at 50 ns, 5 not issued yet
    sim = SimpleNamespace(n=6, issue=np.array([0, 1, 2, 3, 50, inf]),
                          gaps=lambda first, stop: (np.zeros(0),) * 3)  # fmt: skip
    p = EventLoop(sim)
    assert p._final(4) is None  # nothing has run yet

    def seen(now, low=4, idle=(-1.0, -1.0), remaining=(1, 1)):
        p.seen = (now, low, 0, np.array(idle), np.array(remaining))

    seen(now=60.0, low=3)
    assert p._final(4) is None  # request 3 is not done
    seen(now=40.0)
    assert p._final(4) is None  # 5 may still be issued before 50
    seen(now=60.0)
    assert p._final(4) == 50.0
    seen(now=60.0, idle=(-1.0, 45.0))
    assert p._final(4) is None  # job 1 idle since 45: the stretch is not closed yet
    seen(now=60.0, idle=(-1.0, 45.0), remaining=(1, 0))
    assert p._final(4) == 50.0  # ... and never closes: job 1 has nothing left
    seen(now=60.0, idle=(-1.0, 55.0))
    assert p._final(4) == 50.0  # idle since after the mark: a later chunk's
    assert p._final(6) is None  # the last chunk waits for the end of the run
    p.finished = True
    assert p._final(6) == inf and p._final(4) == 50.0


def test_kernels_loaded_ahead_are_the_ones_the_run_uses(tmp_path):
    """The kernels loaded while the requests are drawn take the run's argument types: a
    second specialization would be compiled (seconds) or loaded (time) for nothing. In a
    process of its own: other tests call the same kernels with other types."""
    import sys

    script = f"""
from pathlib import Path
from xvtrace.emulate import EmulateOptions, emulate, pending
from xvtrace.parsers import line_render, xentrace_scan
from xvtrace.replay import engine
for t in ("epam-mmio", "pv-blkif"):
    emulate(EmulateOptions(transport=t, workload="randread-4k-qd1", requests=300,
                           out=Path({str(tmp_path)!r}) / t, drop_rate=0.01))
print([len(k.signatures) for k in (engine._advance, engine._begin, pending._fill,
                                   pending._gather, line_render._render,
                                   xentrace_scan.layout_windows)])
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[1,", "1,", "1,", "1,", "1,", "1]"]


@pytest.mark.parametrize(
    ("transport", "workload"),
    [("epam-mmio", "randread-4k-qd1"), ("pv-blkif", "rw=randrw,iodepth=4,numjobs=3,rate=30000"),
     ("gsoc-xenbus", "net-rr-64"), ("suse-grant", "randrw-16k-qd8")],
)  # fmt: skip
def test_what_a_chunk_gets_while_the_loop_runs_is_what_the_finished_run_says(transport, workload):
    """The loop three events at a time; whenever the next chunk is final by EventLoop's
    rules, its requests, mark and idle stretches are those of the run once finished."""
    import xvtrace.emulate.host as em
    from xvtrace.emulate.loop import EventLoop
    from xvtrace.emulate.xen_records import MIN_IDLE_NS
    from xvtrace.replay import engine

    w = parse(workload)
    paths = [
        get(transport).path(k) for k in (["block"] if w.kind == "block" else ["net_tx", "net_rx"])
    ]
    n = 600
    req, dur, path_of = em._requests(
        EmulateOptions(transport=transport, workload=workload, requests=n, out=None),
        w,
        paths,
        cost_table.costs_for(cost_table.load(None), "x86_64"),
    )

    def simulation():
        return engine.simulation(paths, path_of, dur, req.job, req.not_before, iodepth=w.iodepth,
                                 njobs=w.numjobs, min_idle=MIN_IDLE_NS)  # fmt: skip

    ref = simulation()
    ref.run()
    later = np.minimum.accumulate(ref.issue[::-1])[::-1]  # the earliest issue from i on
    gs, ge, gj = ref.gaps()
    loop = EventLoop(simulation())
    bounds, prev, early = [*range(50, n, 50), n], -np.inf, 0
    for k, c1 in enumerate(bounds):
        while loop._final(c1) is None:
            loop.step(3)
        early += not loop.finished
        mark, gaps = loop.wait(c1, prev)
        assert mark == (later[c1] if c1 < n else np.inf)
        rows = slice(bounds[k - 1] if k else 0, c1)
        for a in ("done", "start", "end", "wait"):
            np.testing.assert_array_equal(getattr(loop.sim, a)[rows], getattr(ref, a)[rows])
        pick = (gs >= prev) & (gs < mark)
        order = np.lexsort((gs[pick], gj[pick]))
        for got, want in zip(
            gaps, (gs[pick][order], ge[pick][order], gj[pick][order]), strict=True
        ):
            np.testing.assert_array_equal(got, want)
        prev = mark
    assert early >= len(bounds) // 2  # most chunks were taken while the loop still ran


def test_lanes_feed_every_writer_every_item_in_order_two_at_a_time():
    import threading

    from xvtrace.emulate.lanes import Lanes

    lock, running, peak, seen = threading.Lock(), [0], [0], {i: [] for i in range(3)}
    gate = threading.Barrier(2)  # the first two writers must run at the same time

    def writer(i):
        def write(k, item):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            if k == 0 and i < 2:
                gate.wait(timeout=30)
            seen[i].append((k, item))
            with lock:
                running[0] -= 1
            return {"n": k}

        return write

    lanes = Lanes([writer(i) for i in range(3)], width=2, ahead=2)
    for k in range(20):
        lanes.put(k, f"item{k}")
        assert len(lanes.items) <= 2  # dropped once every writer is past it
    results = lanes.close(20)
    assert peak[0] == 2
    assert all(seen[i] == [(k, f"item{k}") for k in range(20)] for i in range(3))
    assert results == [[{"n": k} for k in range(20)]] * 3


def test_lanes_raise_a_writers_error_and_stop_the_others():
    from xvtrace.emulate.lanes import Lanes

    calls = []

    def ok(k, item):
        calls.append(k)
        return {}

    def bad(k, item):
        if k == 3:
            raise OSError("disk full")
        return {}

    lanes = Lanes([ok, bad], width=2, ahead=2)

    def feed():
        for k in range(50):
            lanes.put(k, k)
        lanes.close(50)

    with pytest.raises(OSError, match="disk full"):
        feed()
    assert max(calls) < 10  # the other writer stopped too
    assert all(not job.running() for job in lanes.jobs)


@settings(max_examples=60, deadline=None)
@given(
    groups=st.lists(st.lists(st.text(max_size=12), max_size=6), min_size=1, max_size=4),
    picks=st.lists(st.integers(0, 100), max_size=20),
)
def test_texts_concatenated_and_gathered_are_the_strings(groups, picks):
    from xvtrace.emulate.pending import Texts

    every = [s for g in groups for s in g]
    texts = Texts.concat([Texts.of(pl.Series(g, dtype=pl.String)) for g in groups])
    assert texts.to_list() == every and len(texts) == len(every)
    ids = np.array([p % len(every) for p in picks] if every else [], np.int64)
    assert texts.gather(ids).to_list() == [every[i] for i in ids]


def test_pending_write_refuses_offsets_outside_the_text_buffer():
    import io

    from xvtrace.emulate.pending import Pending, Texts

    bad = Texts(np.frombuffer(b"abc", np.uint8), np.array([0, 2, 9]))  # 9 > 3 bytes
    with pytest.raises(ValueError, match="offsets"):
        Pending.of(np.zeros(2), bad).write(io.BytesIO())


def test_manifest_counts_keep_their_order(tmp_path):
    """xentrace's counts, then the block trace's, then QEMU's, whichever writer ran first."""
    import json

    emulate(EmulateOptions(transport="epam-mmio", workload="randread-4k-qd1", requests=300,
                           out=tmp_path / "b"))  # fmt: skip
    expected = json.loads((tmp_path / "b" / "manifest.json").read_text())["emulation"]["expected"]
    assert list(expected) == ["guest_exits", "dom0_hypercalls", "records", "lost_records",
                              "block_events", "qemu_lines", "ring_descriptors"]  # fmt: skip
