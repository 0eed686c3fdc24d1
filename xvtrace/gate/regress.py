"""The regression gate: compare a candidate run with a baseline, phase by phase.

A baseline is a summary of a bundle's requests (JSON, small enough to keep in a
repository): its provenance (Xen version, cpu_khz, transport, workload, view) and, per
transport, queue, operation and phase, the phase's distribution as up to SAMPLE evenly
spaced order statistics. Phases are disjoint steps of a request (kick -> pop, pop ->
submission, device I/O, I/O done -> fill, fill -> interrupt), the notify trap (the
hypervisor's side) and the total.

Each phase is tested with a two-sided Mann-Whitney U test (normal approximation with tie
correction; p-values adjusted over all phases with Holm's method) and a bootstrap 95 %
interval of the ratio of medians (candidate / baseline). A phase regressed when the test
rejects, the ratio is at least 1 + threshold and its whole interval lies above 1; improved
symmetrically. Requiring both significance and a minimum effect keeps same-configuration
reruns from raising alarms; `tests/test_regress.py` measures both rates.

Otherwise a phase is the same when its whole interval lies within the threshold (any change
is smaller than it), and unknown when the interval still reaches past the threshold: the
samples are too few to tell (Chromium's Pinpoint says the same three: same, different,
unknown). An unknown phase says how many more runs of each side would decide it, from the
interval's width, which narrows as one over the square root of the samples.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from xvtrace import __version__, timeline
from xvtrace.bundle import atomic_path
from xvtrace.parsers.errors import XvtraceError
from xvtrace.timeline.order_stats import grouped, linear_quantiles

SUMMARY_VERSION = 1
SAMPLE = 1000  # order statistics kept per phase
BOOTSTRAP = 1000
ALPHA = 0.01
THRESHOLD_PCT = 5.0
MORE_RUNS_CAP = 100  # an unknown phase needing more runs than this says "more than" it
PROVENANCE = ("xen_version", "cpu_khz", "transport", "workload", "view")  # must match
PHASES = (  # name, start column, end column
    ("kick -> pop", "kick_ns", "pop_ns"),
    ("pop -> submit", "pop_ns", "handle_ns"),
    ("device I/O", "handle_ns", "io_done_ns"),
    ("I/O done -> fill", "io_done_ns", "fill_ns"),
    ("fill -> irq", "fill_ns", "notify_ns"),
    ("notify trap", "trap_exit_ns", "trap_entry_ns"),
    ("total", "kick_ns", "notify_ns"),
)


class RegressError(XvtraceError, ValueError):
    """Inputs that cannot be compared (the message says what differs or is missing)."""


def summarize(bundle) -> dict:
    """The baseline summary of a bundle (runs its timeline first when needed)."""
    tl = timeline.load(bundle)
    have = tl.scan().collect_schema().names()
    done = tl.scan().filter(pl.col("complete"))
    m = bundle.manifest
    view = done.select(pl.col("view").first()).collect() if "view" in have else None
    prov = {
        "xen_version": m.xen_version,
        "cpu_khz": m.cpu_khz,
        "transport": m.transport,
        "workload": m.workload.get("name"),
        "view": view.item() if view is not None and len(view) else None,
    }
    # one pass, SLICE_ROWS requests at a time: each row's (queue, operation) numbered, each
    # phase's values kept by group and phase in bounded memory (timeline.order_stats; a
    # phase's column of every request and its sorted copy held 0.1 GiB per million
    # requests). The device pointer QEMU logs changes from run to run: queue and operation
    # identify.
    phases = [(name, a, b) for name, a, b in PHASES if a in have and b in have]
    found: dict[tuple, dict[str, dict]] = {}
    if phases:
        spans = [(pl.col(b) - pl.col(a)).alias(name) for name, a, b in phases]
        with grouped(tl.scan(), ["queue", "op"], spans, SLICE_ROWS, pl.col("complete")) as each:
            for key, j, n, select in each:
                found.setdefault(key, {})[phases[j][0]] = {"n": n, "values": _sample(n, select)}
    groups = [
        {"queue": queue, "op": op, "phase": name, **phases[name]}
        for (queue, op), phases in sorted(found.items(), key=lambda kv: str(kv[0]))
        for name, _, _ in PHASES  # a handful of phases per queue and operation
        if name in phases
    ]
    return {"xvtrace_baseline": SUMMARY_VERSION, "tool": f"xvtrace {__version__}",
            "bundle": str(bundle.path), "provenance": prov, "phases": groups}  # fmt: skip


def _sample(n: int, select) -> list[float]:
    """The distribution of n values as at most SAMPLE order statistics (evenly spaced
    quantiles, as np.quantile takes them), from `select` (ranks -> the sorted values)."""
    if n <= SAMPLE:
        v = np.asarray(select(np.arange(n)), np.float64)
    else:
        v = linear_quantiles(n, (np.arange(SAMPLE) + 0.5) / SAMPLE, select)
    return [round(float(x), 1) for x in v]


SLICE_ROWS = 1 << 18  # requests read at a time


def is_baseline_file(source: str | Path) -> bool:
    source = Path(source)
    return source.is_file() and source.suffix == ".json"


def read(source: str | Path) -> dict:
    """A baseline summary from its JSON file (xvtrace.api.baseline also summarizes bundles)."""
    source = Path(source)
    try:
        doc = json.loads(source.read_text())
    except json.JSONDecodeError as e:
        raise RegressError(f"{source}: not JSON ({e.msg} at line {e.lineno})") from e
    except UnicodeDecodeError as e:
        raise RegressError(f"{source}: not JSON (not text at byte {e.start})") from e
    if not isinstance(doc, dict) or doc.get("xvtrace_baseline") != SUMMARY_VERSION:
        raise RegressError(f"{source}: not an xvtrace baseline (version {SUMMARY_VERSION})")
    if problem := schema_problem(doc):
        raise RegressError(f"{source}: {problem}")
    return doc


def schema_problem(doc: dict) -> str | None:
    """What in a baseline summary cannot be compared (the key and why), or None. A phase
    with no values, or values that are not finite numbers, would pass any candidate."""
    if not isinstance(doc.get("provenance"), dict):
        return "provenance: missing or not an object"
    phases = doc.get("phases")
    if not isinstance(phases, list):
        return "phases: missing or not a list"
    if not phases:
        return "phases: none (the run has no complete request)"
    for i, g in enumerate(phases):
        where = f"phases[{i}]"
        if not isinstance(g, dict):
            return f"{where}: not an object"
        for k in ("queue", "op", "phase", "n", "values"):
            if k not in g:
                return f"{where}.{k}: missing"
        if not isinstance(g["phase"], str) or not isinstance(g["op"], (str, type(None))):
            return f"{where}: phase and op must be strings"
        n, v = g["n"], g["values"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            return f"{where}.n: {n!r} is not a positive count"
        if not isinstance(v, list) or not v:
            return f"{where}.values: empty or not a list"
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            return f"{where}.values: not all numbers"
        if not np.isfinite(np.asarray(v, np.float64)).all():
            return f"{where}.values: not all finite"
    return None


def check_settings(threshold_pct: float, alpha: float) -> None:
    """A threshold or level that would switch the gate off (NaN compares false with any
    ratio, so `--threshold nan` passed every regression) is refused."""
    if not (math.isfinite(threshold_pct) and threshold_pct >= 0):
        raise RegressError(f"threshold must be a finite percentage >= 0, not {threshold_pct!r}")
    if not (math.isfinite(alpha) and 0 < alpha < 1):
        raise RegressError(f"alpha must be a level between 0 and 1, not {alpha!r}")


def write(summary: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=1) + "\n")


CPU_KHZ_TOLERANCE = 1e-3  # one host measures its TSC a few kHz apart from boot to boot


def provenance_problems(base: dict, cand: dict) -> list[str]:
    """What differs between two runs' provenance in ways that invalidate a comparison
    (cpu_khz within 0.1 % is the same host: Xen calibrates it afresh at every boot)."""
    a, b = base["provenance"], cand["provenance"]
    return [
        f"{k}: baseline {a.get(k)!r}, candidate {b.get(k)!r}"
        for k in PROVENANCE
        if a.get(k) != b.get(k) and not (k == "cpu_khz" and _same_clock(a.get(k), b.get(k)))
    ]


def _same_clock(a, b) -> bool:
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
    return numbers and a > 0 and b > 0 and abs(a - b) <= CPU_KHZ_TOLERANCE * max(a, b)


@dataclass
class Comparison:
    table: pl.DataFrame  # queue, op, phase, n, medians, ratio, interval, p, verdict
    problems: list[str]  # provenance differences (when forced)

    @property
    def regressed(self) -> pl.DataFrame:
        return self.table.filter(pl.col("verdict") == "regression")

    @property
    def improved(self) -> pl.DataFrame:
        return self.table.filter(pl.col("verdict") == "improvement")

    @property
    def unknown(self) -> pl.DataFrame:
        return self.table.filter(pl.col("verdict") == "unknown")

    def render(self) -> str:
        return render_text(self)

    def render_markdown(self) -> str:
        return render_markdown(self)

    def to_json(self) -> dict:
        return to_json(self)


def compare(base: dict, cand: dict, *, threshold_pct: float = THRESHOLD_PCT, alpha: float = ALPHA,
            force: bool = False, seed: int = 0) -> Comparison:  # fmt: skip
    check_settings(threshold_pct, alpha)
    for name, doc in (("baseline", base), ("candidate", cand)):
        if problem := schema_problem(doc):
            raise RegressError(f"{name}: {problem}")
    problems = provenance_problems(base, cand)
    if problems and not force:
        raise RegressError(
            "runs not comparable (use --force to compare anyway): " + "; ".join(problems)
        )
    key = lambda g: (g["queue"], g["op"], g["phase"])  # noqa: E731
    b, c = {key(g): g for g in base["phases"]}, {key(g): g for g in cand["phases"]}
    common = [k for k in b if k in c]
    if not common:
        raise RegressError("baseline and candidate share no (queue, operation, phase)")
    rng = np.random.default_rng(seed)
    rows = []
    for k in common:  # a few dozen phases
        x, y = np.asarray(b[k]["values"]), np.asarray(c[k]["values"])
        ratio, lo, hi = median_ratio(x, y, rng)
        rows.append({"queue": k[0], "op": k[1], "phase": k[2], "n_base": b[k]["n"], "n_cand": c[k]["n"],
                     "median_base_us": float(np.median(x)) / 1e3, "median_cand_us": float(np.median(y)) / 1e3,
                     "ratio": ratio, "ci_low": lo, "ci_high": hi, "p": mann_whitney(x, y)})  # fmt: skip
    t = pl.DataFrame(rows).with_columns(pl.Series("p_adj", holm([r["p"] for r in rows])))
    up, down = 1 + threshold_pct / 100, 1 - threshold_pct / 100
    sig = pl.col("p_adj") < alpha
    verdict = (
        pl.when(sig & (pl.col("ratio") >= up) & (pl.col("ci_low") > 1)).then(pl.lit("regression"))
        .when(sig & (pl.col("ratio") <= down) & (pl.col("ci_high") < 1)).then(pl.lit("improvement"))
        .when((pl.col("ci_low") > down) & (pl.col("ci_high") < up)).then(pl.lit("same"))
        .otherwise(pl.lit("unknown"))
    )  # fmt: skip
    t = t.with_columns(verdict.alias("verdict"))
    more = [more_runs(r, threshold_pct) if v == "unknown" else None
            for r, v in zip(t.select("ratio", "ci_low", "ci_high").rows(), t["verdict"], strict=True)]  # fmt: skip
    return Comparison(t.with_columns(pl.Series("more_runs", more, pl.Int64)), problems)


def more_runs(ratio_ci: tuple[float, float, float], threshold_pct: float) -> int:
    """How many more runs of each side (as many requests again each) would decide an
    unknown phase: until its interval, narrowing as 1 / sqrt(samples), is half the
    threshold wide on each side, so that no change smaller than the threshold leaves it
    reaching past the threshold and none larger leaves it reaching 1 (the observed ratio is
    too noisy to aim at: it moves toward the true one as the samples grow). At most
    MORE_RUNS_CAP + 1 (more than the cap: no number of runs would settle it soon)."""
    _, lo, hi = ratio_ci
    half, want = (hi - lo) / 2, threshold_pct / 100 / 2
    if not (math.isfinite(half) and half > 0 and want > 0):
        return MORE_RUNS_CAP + 1
    return min(max(math.ceil((half / want) ** 2) - 1, 1), MORE_RUNS_CAP + 1)


def mann_whitney(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p-value of the Mann-Whitney U test (normal approximation, ties corrected)."""
    n1, n2 = len(x), len(y)
    if n1 < 2 or n2 < 2:
        return 1.0
    both = np.concatenate([x, y])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both))
    sorted_vals = both[order]
    # average ranks of ties: first and last position of each distinct value
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_vals)) + 1]
    ends = np.r_[starts[1:], len(both)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[:n1].sum() - n1 * (n1 + 1) / 2
    ties = (ends - starts).astype(np.float64)
    n = n1 + n2
    var = n1 * n2 / 12.0 * ((n + 1) - (ties**3 - ties).sum() / (n * (n - 1)))
    if var <= 0:
        return 1.0
    z = (abs(u - n1 * n2 / 2.0) - 0.5) / math.sqrt(var)  # with continuity correction
    return float(math.erfc(max(z, 0.0) / math.sqrt(2)))


def median_ratio(
    x: np.ndarray, y: np.ndarray, rng, rounds: int = BOOTSTRAP
) -> tuple[float, float, float]:
    """median(y) / median(x) and its bootstrap 95 % interval (percentile method)."""
    mx, my = float(np.median(x)), float(np.median(y))
    if mx <= 0:
        return (1.0, 1.0, 1.0) if my <= 0 else (math.inf, math.inf, math.inf)
    bx = np.median(rng.choice(x, (rounds, len(x))), axis=1)
    by = np.median(rng.choice(y, (rounds, len(y))), axis=1)
    r = by / np.where(bx > 0, bx, np.nan)
    lo, hi = np.nanquantile(r, [0.025, 0.975])
    return my / mx, float(lo), float(hi)


def holm(p: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    m = len(p)
    order = np.argsort(p)
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):  # per phase, a few dozen
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj.tolist()


def render_text(cmp: Comparison) -> str:
    out = [f"provenance differs (forced): {p}" for p in cmp.problems]
    out.append(
        f"{'q':>3} {'op':<6}{'phase':<18}{'base us':>10}{'cand us':>10}{'ratio':>8}{'95% CI':>16}{'p adj':>10}  verdict"
    )
    for r in cmp.table.iter_rows(named=True):
        out.append(f"{r['queue'] if r['queue'] is not None else '?':>3} {r['op']:<6}{r['phase']:<18}"
                   f"{r['median_base_us']:>10.2f}{r['median_cand_us']:>10.2f}{r['ratio']:>8.3f}"
                   f"{r['ci_low']:>8.3f}..{r['ci_high']:<6.3f}{r['p_adj']:>10.2g}  {r['verdict']}")  # fmt: skip
    out.append(_outcome(cmp))
    return "\n".join(out) + "\n"


def render_markdown(cmp: Comparison) -> str:
    head = "| queue | op | phase | baseline µs | candidate µs | ratio | 95 % CI | p (adj.) | verdict |\n|---|---|---|---|---|---|---|---|---|\n"
    rows = "".join(
        f"| {r['queue']} | {r['op']} | {r['phase']} | {r['median_base_us']:.2f} | {r['median_cand_us']:.2f} | "
        f"{r['ratio']:.3f} | {r['ci_low']:.3f}–{r['ci_high']:.3f} | {r['p_adj']:.2g} | "
        f"{'**' + r['verdict'] + '**' if r['verdict'] in ('regression', 'improvement') else r['verdict']} |\n"
        for r in cmp.table.iter_rows(named=True)
    )
    return head + rows + "\n" + _outcome(cmp) + "\n"


def _names(df: pl.DataFrame) -> str:
    return ", ".join(
        f"{r['op']} q{r['queue']} {r['phase']} ({(r['ratio'] - 1) * 100:+.1f} %)"
        for r in df.iter_rows(named=True)
    )


def _unknowns(df: pl.DataFrame) -> str:
    return ", ".join(
        f"{r['op']} q{r['queue']} {r['phase']} ({_runs(r['more_runs'])})"
        for r in df.iter_rows(named=True)
    )


def _runs(n: int) -> str:
    if n > MORE_RUNS_CAP:
        return f"more than {MORE_RUNS_CAP} more runs would decide"
    return f"{n} more run{'s' if n != 1 else ''} of each side would decide"


def _outcome(cmp: Comparison) -> str:
    reg, imp, unk = cmp.regressed, cmp.improved, cmp.unknown
    also = f"; improved: {_names(imp)}" if len(imp) else ""
    also += f"; unknown: {_unknowns(unk)}" if len(unk) else ""
    if len(reg):
        return f"REGRESSION in {len(reg)} phase(s): {_names(reg)}{also}"
    return "PASS" + also


def outcome(cmp: Comparison) -> str:
    """regression (a phase got slower), unknown (none did, but some could not be told
    apart from the threshold) or pass."""
    return "regression" if len(cmp.regressed) else "unknown" if len(cmp.unknown) else "pass"


def to_json(cmp: Comparison) -> dict:
    return {"outcome": outcome(cmp), "provenance_problems": cmp.problems,
            "phases": cmp.table.to_dicts()}  # fmt: skip
