"""pytest plugin: regression tests over captures and baselines (registered as `xvtrace`
through the pytest11 entry point; imports nothing heavy until a fixture is used).

    def test_epam_read_latency(xvtrace_regress):
        xvtrace_regress.check("runs/epam-today/", baseline="baselines/epam.json")

`check` summarizes the candidate (a bundle, a raw capture or a summary), compares it with
the stored baseline and fails with the phase table when a phase regressed. Relative paths
are taken from pytest's rootdir, wherever pytest was started. With
`pytest --xvtrace-update-baselines` it writes the candidate's summary as the baseline
instead (review the diff, commit it).
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_addoption(parser) -> None:
    group = parser.getgroup("xvtrace")
    group.addoption("--xvtrace-update-baselines", action="store_true", default=False,
                    help="Write candidates' summaries as the baselines instead of comparing.")  # fmt: skip
    group.addoption("--xvtrace-threshold", type=float, default=None,
                    help="Smallest change of a phase median that counts, percent (default 5).")  # fmt: skip


class RegressionFailure(AssertionError):
    """A phase regressed; the message is the phase table."""


class Regress:
    """What the `xvtrace_regress` fixture gives a test."""

    def __init__(self, update: bool, threshold_pct: float | None, rootdir: Path | None = None):
        self.update = update
        self.threshold_pct = threshold_pct
        self.rootdir = rootdir

    def path(self, p) -> Path:
        """`p` as given when absolute, else from the rootdir (as pytest names test files)."""
        p = Path(p)
        return p if p.is_absolute() or self.rootdir is None else self.rootdir / p

    def summary(self, source) -> dict:
        from xvtrace import api

        return api.baseline(self.path(source))

    def check(
        self, candidate, *, baseline, threshold_pct: float | None = None, force: bool = False
    ):
        """Compare `candidate` with the baseline file; returns the comparison."""
        from xvtrace import api
        from xvtrace.gate import regress

        baseline = self.path(baseline)
        cand = candidate if isinstance(candidate, dict) else api.baseline(self.path(candidate))
        if self.update:
            regress.write(cand, baseline)
            return None
        if not baseline.exists():
            pytest.fail(
                f"{baseline}: no baseline; run pytest --xvtrace-update-baselines to write it"
            )
        t = threshold_pct if threshold_pct is not None else self.threshold_pct
        cmp = regress.compare(regress.read(baseline), cand, force=force,
                              threshold_pct=regress.THRESHOLD_PCT if t is None else t)  # fmt: skip
        if len(cmp.regressed):
            raise RegressionFailure(f"{baseline}:\n" + regress.render_text(cmp))
        return cmp


@pytest.fixture
def xvtrace_regress(request) -> Regress:
    """Compare captures with stored baselines (see the module doc)."""
    cfg = request.config
    return Regress(
        cfg.getoption("--xvtrace-update-baselines"),
        cfg.getoption("--xvtrace-threshold"),
        Path(cfg.rootpath),
    )


@pytest.fixture
def xvtrace_bundle(request):
    """Open a bundle (or ingest a raw capture into a temporary one): a callable; relative
    paths from pytest's rootdir."""
    from xvtrace import api

    root = Path(request.config.rootpath)
    return lambda path, **kw: api.load(path if Path(path).is_absolute() else root / path, **kw)
